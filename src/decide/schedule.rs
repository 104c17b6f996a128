//! When the controller reconciles next: the earliest instant at which the plan for the
//! current observation stops being empty.
//!
//! The planner is the truth of what is due (a snapshot once `snapshots.every` elapsed since the
//! newest owned name, a replication once the replica's newest replicated snapshot is
//! `replication.every` old, retention when a calendar bucket closes). This module names the
//! instants at which those time-driven decisions can change for an observation that does not
//! change otherwise; every other change (a node coming back, mail arriving, a spec edit) is
//! an observation or spec change, caught by the periodic resync or the spec watcher.
//!
//! Property checked by the simulator (`schedule_never_late`) and by the tests below: for a
//! converged observation (the plan at `now` is empty), the plan stays empty at every instant
//! before [`next_wake`]. Waking early is harmless (the plan is empty, nothing runs); waking
//! late would miss a snapshot, so every rule here errs early.
//!
//! The archive purge is not time-driven: its watermark moves only when a replication lands,
//! and that replication is itself one of the dues below, with the purge in the same plan.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp, ToSpan, civil::Weekday, tz::Offset};
use serde::Serialize;

use crate::decide::replication::common_base;
use crate::decide::retention::{Keep, parse_owned};
use crate::model::{Dataset, Observation};
use crate::spec::Spec;

/// What a wake-up is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Due {
    /// `snapshots.every` elapses for an instance on the active node.
    Snapshot { instance: String, node: String },
    /// `replication.every` elapses for an instance's replica on `node`.
    Replication { instance: String, node: String },
    /// A retention bucket closes (or a snapshot dated in the future becomes placeable).
    Prune { instance: String, node: String },
    /// A scratch clone (`restore`, `drill`) on `node` outlives
    /// [`crate::plan::SCRATCH_STALE`]: its run is gone and the teardown is due.
    Scratch { clone: String, node: String },
    /// Nothing time-driven sooner: the periodic resync.
    Resync,
}

impl Due {
    /// A short label (`snapshot`, `replication`, `prune`, `resync`) for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Due::Snapshot { .. } => "snapshot",
            Due::Replication { .. } => "replication",
            Due::Prune { .. } => "prune",
            Due::Scratch { .. } => "scratch",
            Due::Resync => "resync",
        }
    }
}

impl std::fmt::Display for Due {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Due::Snapshot { instance, node } => write!(f, "snapshot of {instance} on {node}"),
            Due::Replication { instance, node } => {
                write!(f, "replication of {instance} to {node}")
            }
            Due::Prune { instance, node } => write!(f, "retention of {instance} on {node}"),
            Due::Scratch { clone, node } => write!(f, "teardown of stale {clone} on {node}"),
            Due::Resync => f.write_str("periodic resync"),
        }
    }
}

/// The next reconcile: when, and the due that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Wake {
    pub at: Timestamp,
    pub due: Due,
}

/// Every time-driven due of the observation, soonest first (ties by kind and name). Dues
/// already past are reported at `now`.
pub fn dues(spec: &Spec, obs: &Observation, now: Timestamp) -> Vec<Wake> {
    let s = &spec.spec;
    let active = s.active.as_str();
    let prefix = s.snapshots.prefix.as_str();
    let mut out = Vec::new();
    let mut push = |at: Timestamp, due: Due| {
        out.push(Wake {
            at: at.max(now),
            due,
        })
    };
    let copy = |node: &str, dataset: &str| -> Option<&Dataset> {
        let n = obs.nodes.get(node)?;
        if !n.reachability.is_reachable() {
            return None;
        }
        let pool = s.nodes.iter().find(|(k, _)| k.as_str() == node)?.1;
        n.dataset(&format!("{}/{dataset}", pool.pool))
    };
    for (name, inst) in &s.instances {
        let name = name.as_str();
        let source = copy(active, inst.dataset.as_str());
        // the snapshot: the newest owned name + every (none yet: now)
        let writable = source.is_some_and(|d| d.readonly == Some(false));
        let next_snapshot = source.filter(|_| writable).map(|d| {
            d.snapshots
                .iter()
                .filter_map(|x| parse_owned(prefix, &x.name))
                .max()
                .map_or(now, |t| add(t, s.snapshots.every.as_signed()))
        });
        if let Some(at) = next_snapshot {
            push(
                at,
                Due::Snapshot {
                    instance: name.into(),
                    node: active.into(),
                },
            );
        }
        // replications: the replica's base creation + every; an up-to-date replica waits for
        // the next snapshot as well
        if let Some(src) = source.filter(|_| writable) {
            for (node, _) in s.nodes.iter().filter(|(n, _)| n.as_str() != active) {
                let node = node.as_str();
                if !obs
                    .nodes
                    .get(node)
                    .is_some_and(|n| n.reachability.is_reachable())
                {
                    continue;
                }
                let target = copy(node, inst.dataset.as_str());
                let at = match target.and_then(|t| common_base(&src.snapshots, &t.snapshots)) {
                    None => now,
                    Some(base) => {
                        let due = add(base.creation, s.replication.every.as_signed());
                        let newest_is_base = src
                            .snapshots
                            .iter()
                            .max_by(|a, b| crate::decide::retention::age_order(a, b))
                            .is_some_and(|n| n.guid == base.guid);
                        match (newest_is_base, next_snapshot) {
                            (true, Some(snap)) => due.max(snap),
                            _ => due,
                        }
                    }
                };
                push(
                    at,
                    Due::Replication {
                        instance: name.into(),
                        node: node.into(),
                    },
                );
            }
        }
        // retention, on every copy
        for node in s.nodes.keys() {
            let node = node.as_str();
            let Some(d) = copy(node, inst.dataset.as_str()) else {
                continue;
            };
            let keep = if node == active {
                s.snapshots.keep
            } else {
                s.snapshots.keep_passive.unwrap_or(s.snapshots.keep)
            };
            if let Some(at) = next_prune(&keep, prefix, d, now) {
                push(
                    at,
                    Due::Prune {
                        instance: name.into(),
                        node: node.into(),
                    },
                );
            }
        }
    }
    // scratch clones: torn down once older than SCRATCH_STALE (the planner's `age >` test:
    // the first instant after the deadline). One with no recorded start is due now.
    for (node, n) in &obs.nodes {
        if !n.reachability.is_reachable() {
            continue;
        }
        for c in &n.scratch {
            let at = c.since.map_or(now, |t| {
                add(
                    add(t, crate::plan::SCRATCH_STALE),
                    SignedDuration::from_nanos(1),
                )
            });
            push(
                at,
                Due::Scratch {
                    clone: c.name.clone(),
                    node: node.clone(),
                },
            );
        }
    }
    out.sort_by(|a, b| (a.at, &a.due).cmp(&(b.at, &b.due)));
    out
}

/// The next reconcile for a converged observation: the soonest due, or the periodic resync
/// when that is sooner.
pub fn next_wake(spec: &Spec, obs: &Observation, now: Timestamp, resync: Duration) -> Wake {
    let resync_at = add(
        now,
        SignedDuration::try_from(resync).unwrap_or(SignedDuration::MAX),
    );
    match dues(spec, obs, now).into_iter().next() {
        Some(w) if w.at <= resync_at => w,
        _ => Wake {
            at: resync_at,
            due: Due::Resync,
        },
    }
}

fn add(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// When retention of one copy can decide differently: the next close of the finest enabled
/// calendar bucket, or the `creation` of a snapshot dated after `now` (never pruned until
/// then). `None` when at most one owned snapshot exists (the newest is never pruned).
fn next_prune(keep: &Keep, prefix: &str, d: &Dataset, now: Timestamp) -> Option<Timestamp> {
    let owned: Vec<_> = d
        .snapshots
        .iter()
        .filter(|x| parse_owned(prefix, &x.name).is_some())
        .collect();
    if owned.len() < 2 {
        return None;
    }
    let future = owned
        .iter()
        .map(|x| x.creation)
        .filter(|c| *c > now)
        .min()
        // the first instant the creation is no longer after `now`
        .map(|c| add(c, SignedDuration::from_nanos(1)));
    [bucket_close(keep, now), future]
        .into_iter()
        .flatten()
        .min()
}

/// The next UTC instant after `now` at which the finest enabled bucket of `keep` closes.
fn bucket_close(keep: &Keep, now: Timestamp) -> Option<Timestamp> {
    let dt = Offset::UTC.to_datetime(now);
    let day = dt.date();
    let at = |d: jiff::civil::Date| {
        Offset::UTC
            .to_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
            .ok()
    };
    if keep.hourly > 0 {
        let hour = dt
            .with()
            .minute(0)
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?;
        return Offset::UTC
            .to_timestamp(hour.checked_add(1.hour()).ok()?)
            .ok();
    }
    if keep.daily > 0 {
        return at(day.tomorrow().ok()?);
    }
    if keep.weekly > 0 {
        let mut d = day.tomorrow().ok()?;
        while d.weekday() != Weekday::Monday {
            d = d.tomorrow().ok()?;
        }
        return at(d);
    }
    if keep.monthly > 0 {
        return at(day.first_of_month().checked_add(1.month()).ok()?);
    }
    if keep.yearly > 0 {
        return at(day.first_of_year().checked_add(1.year()).ok()?);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::retention::snapshot_name;
    use crate::model::Snapshot;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn bucket_closes_are_calendar_boundaries() {
        let now = ts("2026-12-02T15:47:12Z"); // a Wednesday
        let k = |h, d, w, m, y| Keep {
            hourly: h,
            daily: d,
            weekly: w,
            monthly: m,
            yearly: y,
        };
        assert_eq!(
            bucket_close(&k(1, 1, 1, 1, 1), now),
            Some(ts("2026-12-02T16:00:00Z"))
        );
        assert_eq!(
            bucket_close(&k(0, 1, 1, 1, 1), now),
            Some(ts("2026-12-03T00:00:00Z"))
        );
        assert_eq!(
            bucket_close(&k(0, 0, 1, 0, 0), now),
            Some(ts("2026-12-07T00:00:00Z"))
        );
        assert_eq!(
            bucket_close(&k(0, 0, 0, 1, 0), now),
            Some(ts("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            bucket_close(&k(0, 0, 0, 0, 1), now),
            Some(ts("2027-01-01T00:00:00Z"))
        );
        assert_eq!(bucket_close(&k(0, 0, 0, 0, 0), now), None);
        // exactly on a boundary: the next one
        assert_eq!(
            bucket_close(&k(1, 0, 0, 0, 0), ts("2026-12-02T16:00:00Z")),
            Some(ts("2026-12-02T17:00:00Z"))
        );
    }

    #[test]
    fn a_future_snapshot_wakes_when_it_can_be_placed() {
        let now = ts("2026-12-02T15:00:00Z");
        let snap = |at: &str| Snapshot {
            name: snapshot_name("sk", ts(at)),
            guid: 1,
            creation: ts(at),
            createtxg: None,
            userrefs: 0,
            used: 0,
            written: None,
        };
        let d = Dataset {
            name: "zdata/x".into(),
            kind: crate::model::DatasetKind::Filesystem,
            creation: None,
            guid: None,
            used: None,
            readonly: Some(false),
            mounted: None,
            mountpoint: None,
            createtxg: None,
            receive_resume_token: None,
            user_properties: Default::default(),
            other_properties: Default::default(),
            snapshots: vec![snap("2026-12-02T14:00:00Z"), snap("2026-12-02T15:20:00Z")],
        };
        let none = Keep::default();
        let at = next_prune(&none, "sk", &d, now).unwrap();
        assert!(at > ts("2026-12-02T15:20:00Z") && at < ts("2026-12-02T15:20:01Z"));
        // one owned snapshot: nothing to prune ever
        let one = Dataset {
            snapshots: vec![snap("2026-12-02T14:00:00Z")],
            ..d
        };
        assert_eq!(
            next_prune(&Keep { hourly: 2, ..none }, "sk", &one, now),
            None
        );
    }
}
