//! The controller's Prometheus metrics (text format through `prometheus-client`), names in
//! docs/CONTRACT.md. Per-cluster state gauges are rewritten after each reconcile from the
//! same pure `decide::status` that `spoolkeeper status` prints, so a scrape and `status`
//! agree on one observation.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::decide::status::Status;

type Labels = Vec<(String, String)>;
type FGauge = Gauge<f64, AtomicU64>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

/// Every family the controller exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<Labels, Counter>,
    pub reconcile_duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub errors: Family<Labels, Counter>,
    pub backoff_seconds: Family<Labels, FGauge>,
    pub consecutive_failures: Family<Labels, Gauge>,
    pub blocked: Family<Labels, Gauge>,
    pub action_duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub replication_bytes: Family<Labels, Counter>,
    pub node_reachable: Family<Labels, Gauge>,
    pub active_unreachable: Family<Labels, Gauge>,
    pub rpo_age: Family<Labels, FGauge>,
    pub rpo_target: Family<Labels, FGauge>,
    pub newest_replicated: Family<Labels, FGauge>,
    pub at_risk_messages: Family<Labels, Gauge>,
    pub at_risk_bytes: Family<Labels, Gauge>,
    pub archive_held: Family<Labels, Gauge>,
    pub last_success: Family<Labels, FGauge>,
    pub next_reconcile: Family<Labels, FGauge>,
    pub lock_waits: Family<Labels, Counter>,
    pub spec_valid: Family<Labels, Gauge>,
    pub send_progress_bytes: Family<Labels, Gauge>,
    pub drill_last_success: Family<Labels, FGauge>,
    /// The label sets each cluster set last time, to drop the ones that vanished.
    state_labels: Mutex<BTreeMap<String, Vec<(&'static str, Labels)>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("spoolkeeper");
        let m = Metrics {
            reconciles: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_histogram),
            errors: Family::default(),
            backoff_seconds: Family::default(),
            consecutive_failures: Family::default(),
            blocked: Family::default(),
            action_duration: Family::new_with_constructor(duration_histogram),
            replication_bytes: Family::default(),
            node_reachable: Family::default(),
            active_unreachable: Family::default(),
            rpo_age: Family::default(),
            rpo_target: Family::default(),
            newest_replicated: Family::default(),
            at_risk_messages: Family::default(),
            at_risk_bytes: Family::default(),
            archive_held: Family::default(),
            last_success: Family::default(),
            next_reconcile: Family::default(),
            lock_waits: Family::default(),
            spec_valid: Family::default(),
            send_progress_bytes: Family::default(),
            drill_last_success: Family::default(),
            state_labels: Mutex::new(BTreeMap::new()),
            registry: Registry::default(),
        };
        r.register(
            "reconciles",
            "Reconciles by cluster and result (converged, changed, blocked, lock_busy, failed)",
            m.reconciles.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile (observe, plan, apply)",
            m.reconcile_duration.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconciles that ended in an error",
            m.errors.clone(),
        );
        r.register(
            "backoff_seconds",
            "The delay before the next attempt after consecutive errors (0 after a success)",
            m.backoff_seconds.clone(),
        );
        r.register(
            "consecutive_failures",
            "Reconciles failed in a row (reset by the first success)",
            m.consecutive_failures.clone(),
        );
        r.register(
            "blocked",
            "1 while a safety rule blocks the cluster's plan (label rule)",
            m.blocked.clone(),
        );
        r.register(
            "action_duration_seconds",
            "Duration of executed actions by kind and result",
            m.action_duration.clone(),
        );
        r.register(
            "replication_bytes",
            "Bytes of the streams of completed replications (counted on the way)",
            m.replication_bytes.clone(),
        );
        r.register(
            "node_reachable",
            "1 when the host answered the last observation",
            m.node_reachable.clone(),
        );
        r.register(
            "active_unreachable",
            "1 while the spec's active node does not answer: failover is the operator's one-line edit",
            m.active_unreachable.clone(),
        );
        r.register(
            "rpo_age_seconds",
            "Age of the newest snapshot the replica on `node` holds (the RPO achieved)",
            m.rpo_age.clone(),
        );
        r.register(
            "rpo_target_seconds",
            "replication.rpo of the spec",
            m.rpo_target.clone(),
        );
        r.register(
            "newest_replicated_timestamp_seconds",
            "Creation time of the newest snapshot the replica on `node` holds",
            m.newest_replicated.clone(),
        );
        r.register(
            "mail_at_risk_messages",
            "Messages accepted since the newest snapshot every replica holds: only the archive protects them",
            m.at_risk_messages.clone(),
        );
        r.register(
            "mail_at_risk_bytes",
            "Bytes of the messages only the archive protects",
            m.at_risk_bytes.clone(),
        );
        r.register(
            "archive_held",
            "Copies on hold on the archive host for the instance",
            m.archive_held.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "When a reconcile of the cluster last succeeded",
            m.last_success.clone(),
        );
        r.register(
            "next_reconcile_timestamp_seconds",
            "When the next reconcile is scheduled (label due: snapshot, replication, prune, resync, backoff, ...)",
            m.next_reconcile.clone(),
        );
        r.register(
            "lock_waits",
            "Reconciles that found the cluster lock held by another apply or controller",
            m.lock_waits.clone(),
        );
        r.register(
            "spec_valid",
            "1 when the spec file last read is valid, 0 when it is not (the last good spec keeps running)",
            m.spec_valid.clone(),
        );
        r.register(
            "send_progress_bytes",
            "Bytes of a replication stream sent so far, while it runs (label action)",
            m.send_progress_bytes.clone(),
        );
        r.register(
            "drill_last_success_timestamp_seconds",
            "When a drill of the instance last passed (from the journal; absent before the first)",
            m.drill_last_success.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The last passed drill of each instance of `cluster`, from its journal.
    pub fn set_drills(&self, cluster: &str, records: &[crate::state::journal::Record]) {
        for (inst, (pass, _)) in crate::decide::drill::last_drills(records) {
            if let Some(t) = pass {
                self.drill_last_success
                    .get_or_create(&labels(&[("cluster", cluster), ("instance", &inst)]))
                    .set(t.as_millisecond() as f64 / 1000.0);
            }
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        // sends in flight, as of now
        self.send_progress_bytes.clear();
        for s in crate::apply::progress::in_flight() {
            self.send_progress_bytes
                .get_or_create(&labels(&[("action", &s.action)]))
                .set(i64::try_from(s.bytes).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Rewrite the state gauges of one cluster from its status; label sets the cluster no
    /// longer has are removed.
    pub fn set_status(&self, st: &Status) {
        let c = st.cluster.as_str();
        let mut now: Vec<(&'static str, Labels)> = Vec::new();
        let mut set_g = |name: &'static str, f: &Family<Labels, Gauge>, l: Labels, v: i64| {
            f.get_or_create(&l).set(v);
            now.push((name, l));
        };
        for n in &st.nodes {
            let up = i64::from(n.reachability.is_reachable());
            set_g(
                "node_reachable",
                &self.node_reachable,
                labels(&[("cluster", c), ("node", &n.name)]),
                up,
            );
        }
        let archive_up = st
            .archive
            .as_ref()
            .map(|a| i64::from(a.reachability.is_reachable()));
        if let Some(up) = archive_up {
            set_g(
                "node_reachable",
                &self.node_reachable,
                labels(&[("cluster", c), ("node", "archive")]),
                up,
            );
        }
        let active_down = st
            .nodes
            .iter()
            .any(|n| n.name == st.active && !n.reachability.is_reachable());
        set_g(
            "active_unreachable",
            &self.active_unreachable,
            labels(&[("cluster", c), ("node", &st.active)]),
            i64::from(active_down),
        );
        let mut float: Vec<(&'static str, &Family<Labels, FGauge>, Labels, f64)> = vec![(
            "rpo_target",
            &self.rpo_target,
            labels(&[("cluster", c)]),
            st.rpo_seconds as f64,
        )];
        for i in &st.instances {
            for r in &i.replicas {
                let l = labels(&[("cluster", c), ("instance", &i.name), ("node", &r.to)]);
                if let Some(age) = r.age_seconds {
                    float.push(("rpo_age", &self.rpo_age, l.clone(), age as f64));
                }
                if let Some(b) = &r.newest_replicated {
                    float.push((
                        "newest_replicated",
                        &self.newest_replicated,
                        l,
                        b.creation.as_millisecond() as f64 / 1000.0,
                    ));
                }
            }
            let l = labels(&[("cluster", c), ("instance", &i.name)]);
            if let Some(n) = i.archive_held {
                set_g(
                    "archive_held",
                    &self.archive_held,
                    l.clone(),
                    i64::try_from(n).unwrap_or(i64::MAX),
                );
            }
            if let Some(r) = i.mail_at_risk {
                set_g(
                    "at_risk_messages",
                    &self.at_risk_messages,
                    l.clone(),
                    i64::try_from(r.messages).unwrap_or(i64::MAX),
                );
                set_g(
                    "at_risk_bytes",
                    &self.at_risk_bytes,
                    l,
                    i64::try_from(r.bytes).unwrap_or(i64::MAX),
                );
            }
        }
        for (name, f, l, v) in float {
            f.get_or_create(&l).set(v);
            now.push((name, l));
        }
        let mut last = self.state_labels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(before) = last.get(c) {
            for (name, l) in before {
                if !now.iter().any(|(n, x)| n == name && x == l) {
                    self.remove(name, l);
                }
            }
        }
        last.insert(c.to_owned(), now);
    }

    fn remove(&self, name: &str, l: &Labels) {
        match name {
            "node_reachable" => self.node_reachable.remove(l),
            "active_unreachable" => self.active_unreachable.remove(l),
            "archive_held" => self.archive_held.remove(l),
            "at_risk_messages" => self.at_risk_messages.remove(l),
            "at_risk_bytes" => self.at_risk_bytes.remove(l),
            "rpo_age" => self.rpo_age.remove(l),
            "rpo_target" => self.rpo_target.remove(l),
            "newest_replicated" => self.newest_replicated.remove(l),
            _ => false,
        };
    }

    /// Mark which rules block the cluster now (the others are removed).
    pub fn set_blocked(&self, cluster: &str, rules: &[String]) {
        let mut last = self.state_labels.lock().unwrap_or_else(|e| e.into_inner());
        let key = format!("{cluster}\u{0}blocked");
        for (_, l) in last.remove(&key).unwrap_or_default() {
            self.blocked.remove(&l);
        }
        let mut now = Vec::new();
        for r in rules {
            let l = labels(&[("cluster", cluster), ("rule", r)]);
            self.blocked.get_or_create(&l).set(1);
            now.push(("blocked", l));
        }
        last.insert(key, now);
    }

    /// Forget a cluster whose spec file was removed.
    pub fn forget(&self, cluster: &str) {
        self.set_blocked(cluster, &[]);
        let mut last = self.state_labels.lock().unwrap_or_else(|e| e.into_inner());
        for (name, l) in last.remove(cluster).unwrap_or_default() {
            self.remove(name, &l);
        }
    }
}

/// The label set of one cluster (and more pairs).
pub fn cluster(c: &str, more: &[(&str, &str)]) -> Labels {
    let mut l = labels(&[("cluster", c)]);
    l.extend(labels(more));
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::history::{Phase, Record};

    #[test]
    fn the_last_passed_drill_is_exported_failed_ones_are_not() {
        let rec = |phase, at: &str| Record {
            at: at.parse().unwrap(),
            run: "r".into(),
            action: "drill:students".into(),
            phase,
            detail: None,
            done: None,
        };
        let m = Metrics::new();
        m.set_drills("lab", &[rec(Phase::Failed, "2026-12-01T00:00:00Z")]);
        assert!(!m.render().contains("drill_last_success_timestamp_seconds{"));
        m.set_drills(
            "lab",
            &[
                rec(Phase::Done, "2026-12-01T00:00:00Z"),
                rec(Phase::Failed, "2026-12-02T00:00:00Z"),
            ],
        );
        let text = m.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("spoolkeeper_drill_last_success_timestamp_seconds{"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("instance=\"students\""), "{line}");
        assert!(line.ends_with(" 1796083200.0"), "{line}");
    }
}
