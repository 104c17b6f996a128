//! Replication decisions: which stream to send next, when to refuse, and where the holds go.
//!
//! Pure: source and target snapshots (as observed) in, a [`ReplicationStep`] out. Snapshots are
//! matched across sides by `guid` only (a name can be reused; a guid survives send/receive and
//! identifies the same data). A refusal is a typed [`Conflict`] carrying the snapshots that prove
//! it, so the operator's message, the JSON plan and the exit code come from one value (the shape
//! of zrepl's `replication/logic/diff`). Nothing here ever proposes `zfs receive -F`: a replica
//! that holds anything the source does not is the operator's call (guarantee 4 of docs/DOMAIN.md).

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::decide::retention::age_order;
use crate::model::Snapshot;

/// What the next replication run of one dataset does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum ReplicationStep {
    /// The target already holds the newest source snapshot; `base` is that snapshot (as the
    /// source lists it), which stays the replication base.
    UpToDate { base: Snapshot },
    /// The target dataset does not exist: send a full stream of `to` (received unmounted).
    Full { to: Snapshot },
    /// Send one `-I base to` stream: every source snapshot after `base` up to `to`.
    Incremental { base: Snapshot, to: Snapshot },
    /// Replicating would lose or overwrite something: the plan is blocked.
    Conflict(Conflict),
}

/// Why replication of a dataset is refused. Each variant carries the evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "conflict", rename_all = "snake_case")]
pub enum Conflict {
    /// The target has snapshots after the replication base that the source does not have
    /// (someone snapshotted the replica, or it was briefly the active).
    Diverged {
        base: Snapshot,
        target_only: Vec<Snapshot>,
    },
    /// The target dataset exists but shares no snapshot with the source, so no incremental
    /// stream can apply and a full one would need to overwrite it.
    NoCommonSnapshot {
        source_newest: Snapshot,
        target_snapshots: Vec<Snapshot>,
    },
    /// The target was written to after its newest snapshot (its `written` property is not 0):
    /// receiving would need a rollback that discards those writes.
    TargetWritten { base: Snapshot, written_bytes: u64 },
    /// The source has no snapshot: nothing can be sent until one is taken.
    SourceEmpty,
}

impl Conflict {
    /// A stable machine name for JSON output and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Conflict::Diverged { .. } => "diverged",
            Conflict::NoCommonSnapshot { .. } => "no_common_snapshot",
            Conflict::TargetWritten { .. } => "target_written",
            Conflict::SourceEmpty => "source_empty",
        }
    }

    /// What was found and what the operator can do, for the plan and `apply`'s exit-3 message.
    /// Never suggests a forced receive: the point is that the operator decides, knowingly, what
    /// is thrown away.
    pub fn operator_message(&self) -> String {
        self.to_string()
    }
}

fn list_names(snaps: &[Snapshot]) -> String {
    const SHOWN: usize = 5;
    let shown: Vec<&str> = snaps.iter().take(SHOWN).map(|s| s.name.as_str()).collect();
    let more = snaps.len().saturating_sub(SHOWN);
    let mut out = shown.join(", ");
    if more > 0 {
        out.push_str(&format!(" and {more} more"));
    }
    out
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::Diverged { base, target_only } => write!(
                f,
                "the replica has diverged: after the common snapshot {base} it has {n} \
                 snapshot(s) the source does not have ({names}). Replicating now would destroy \
                 them, so spoolkeeper will not. Inspect them on the passive node (`zfs list -t \
                 snapshot`, `zfs diff`); if they hold mail that is not on the active node, copy \
                 it back first. Then destroy those snapshots explicitly (`zfs destroy \
                 <dataset>@<snapshot>`), or rename the replica dataset aside (`zfs rename`) to \
                 let spoolkeeper send a fresh full copy, and apply again.",
                base = base.name,
                n = target_only.len(),
                names = list_names(target_only),
            ),
            Conflict::NoCommonSnapshot {
                source_newest,
                target_snapshots,
            } => {
                if target_snapshots.is_empty() {
                    write!(
                        f,
                        "the replica dataset already exists but has no snapshot, so it shares \
                         nothing with the source (newest source snapshot {src}); a full send \
                         would overwrite it, so spoolkeeper will not. Check what it holds; if it \
                         is not needed, destroy it or rename it aside (`zfs rename`) and apply \
                         again to send a full copy.",
                        src = source_newest.name,
                    )
                } else {
                    write!(
                        f,
                        "the replica dataset exists with {n} snapshot(s) ({names}) but none of \
                         them is a snapshot of the source (matched by guid; newest source \
                         snapshot {src}); no incremental stream can apply and a full send would \
                         overwrite it, so spoolkeeper will not. Check that the spec names the \
                         right dataset and pool; if the replica's content is not needed, rename \
                         it aside (`zfs rename`) or destroy it, and apply again to send a full \
                         copy.",
                        n = target_snapshots.len(),
                        names = list_names(target_snapshots),
                        src = source_newest.name,
                    )
                }
            }
            Conflict::TargetWritten {
                base,
                written_bytes,
            } => write!(
                f,
                "the replica was modified after its newest snapshot {base} ({written_bytes} \
                 bytes written); receiving would roll those changes back, so spoolkeeper will \
                 not. The replica should be read-only: find what wrote to it (a jail started on \
                 the passive node? `readonly=off`?). Inspect the changes (`zfs diff \
                 <dataset>@{base}`); copy anything worth keeping elsewhere, then roll back \
                 explicitly (`zfs rollback <dataset>@{base}`) and apply again.",
                base = base.name,
            ),
            Conflict::SourceEmpty => f.write_str(
                "the source dataset has no snapshot yet, so there is nothing to replicate. \
                 spoolkeeper takes one when `snapshots.every` is due; check that the active \
                 node's dataset exists and that snapshots are not failing.",
            ),
        }
    }
}

impl std::error::Error for Conflict {}

/// The newest source snapshot (in source age order) whose guid the target also has: the
/// replication base, and the point the replica is known to hold (what `status` reports as the
/// newest replicated snapshot). `None` when nothing is shared.
pub fn common_base<'a>(source: &'a [Snapshot], target: &[Snapshot]) -> Option<&'a Snapshot> {
    let on_target: HashSet<u64> = target.iter().map(|s| s.guid).collect();
    source
        .iter()
        .filter(|s| on_target.contains(&s.guid))
        .max_by(|a, b| age_order(a, b))
}

/// Decide the next replication step of one dataset.
///
/// `target` is `None` when the target dataset does not exist. `target_written_since_newest` is
/// the target's `written` property (bytes written since its newest snapshot) where the host
/// reports it; `None` means unknown, and then the receive itself refuses a modified target
/// (we never pass `-F`), so the check is a better message, not the only guard.
///
/// Order of checks: source empty, target absent (full), no common snapshot, target-only
/// snapshots after the base (diverged), writes after the newest target snapshot, then
/// up-to-date or incremental. Divergence is checked before writes because `written` is relative
/// to the target's newest snapshot, which is then one of the target-only ones.
pub fn replication_step(
    source: &[Snapshot],
    target: Option<&[Snapshot]>,
    target_written_since_newest: Option<u64>,
) -> ReplicationStep {
    let Some(source_newest) = source.iter().max_by(|a, b| age_order(a, b)) else {
        return ReplicationStep::Conflict(Conflict::SourceEmpty);
    };
    let Some(target) = target else {
        return ReplicationStep::Full {
            to: source_newest.clone(),
        };
    };
    let Some(base) = common_base(source, target) else {
        let mut target_snapshots = target.to_vec();
        target_snapshots.sort_by(age_order);
        return ReplicationStep::Conflict(Conflict::NoCommonSnapshot {
            source_newest: source_newest.clone(),
            target_snapshots,
        });
    };

    let on_source: HashSet<u64> = source.iter().map(|s| s.guid).collect();
    // The base as the target lists it: its createtxg is the target's own.
    let target_base = target
        .iter()
        .filter(|t| t.guid == base.guid)
        .max_by(|a, b| age_order(a, b));
    let mut target_only: Vec<Snapshot> = target
        .iter()
        .filter(|t| !on_source.contains(&t.guid))
        .filter(|t| target_base.is_some_and(|b| age_order(t, b).is_gt()))
        .cloned()
        .collect();
    if !target_only.is_empty() {
        target_only.sort_by(age_order);
        return ReplicationStep::Conflict(Conflict::Diverged {
            base: base.clone(),
            target_only,
        });
    }

    if let Some(written_bytes) = target_written_since_newest.filter(|w| *w > 0) {
        return ReplicationStep::Conflict(Conflict::TargetWritten {
            base: base.clone(),
            written_bytes,
        });
    }

    if base.guid == source_newest.guid {
        ReplicationStep::UpToDate { base: base.clone() }
    } else {
        ReplicationStep::Incremental {
            base: base.clone(),
            to: source_newest.clone(),
        }
    }
}

/// Hold changes on one side when the replication base moves to `new_base`.
///
/// Apply `hold` before `release`: the side then has a held base at every instant, so a crash
/// between the two leaves two held snapshots (harmless, fixed on the next run) and never none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldMoves {
    /// Snapshots to release (tag `spoolkeeper`), in age order.
    pub release: Vec<Snapshot>,
    /// The snapshot to hold, when it is not held yet.
    pub hold: Option<Snapshot>,
}

/// What `other` holds that `copy` never had: its snapshots newer than the newest snapshot the
/// two share (all of them when they share none). Old snapshots that `copy` pruned and `other`
/// still keeps are not "ahead".
pub fn ahead(copy: &[Snapshot], other: &[Snapshot]) -> Vec<Snapshot> {
    let on_copy: HashSet<u64> = copy.iter().map(|s| s.guid).collect();
    let base = other
        .iter()
        .filter(|s| on_copy.contains(&s.guid))
        .max_by(|a, b| age_order(a, b));
    let mut out: Vec<Snapshot> = other
        .iter()
        .filter(|s| !on_copy.contains(&s.guid))
        .filter(|s| base.is_none_or(|b| age_order(s, b).is_gt()))
        .cloned()
        .collect();
    out.sort_by(age_order);
    out
}

/// Where the `spoolkeeper` hold goes on one side: release it from every snapshot that carries it
/// and is not `new_base`, hold `new_base` if it does not carry it yet. Matching is by guid.
///
/// `held` is every snapshot of the dataset carrying our hold tag (usually the old base; more
/// than one after an interrupted move; empty the first time). With `new_base = None` (no base
/// any more) nothing is released: a hold is only ever moved, never dropped, so the last known
/// base stays protected until a new one exists.
pub fn hold_moves(held: &[Snapshot], new_base: Option<&Snapshot>) -> HoldMoves {
    let Some(new_base) = new_base else {
        return HoldMoves::default();
    };
    let mut release: Vec<Snapshot> = held
        .iter()
        .filter(|s| s.guid != new_base.guid)
        .cloned()
        .collect();
    release.sort_by(age_order);
    release.dedup_by_key(|s| s.guid);
    let hold = (!held.iter().any(|s| s.guid == new_base.guid)).then(|| new_base.clone());
    HoldMoves { release, hold }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    /// A snapshot with creation `hour` hours after an epoch, guid `guid`, txg from the hour.
    fn s(name: &str, guid: u64, hour: i64) -> Snapshot {
        Snapshot {
            name: name.to_owned(),
            guid,
            creation: Timestamp::from_second(1_798_761_600 + hour * 3600).unwrap(),
            createtxg: Some(hour as u64 * 10 + 5),
            userrefs: 0,
            used: 0,
            written: None,
        }
    }

    /// The same snapshot as received on the other side: same guid, name and creation, the
    /// target's own createtxg.
    fn received(x: &Snapshot, txg: u64) -> Snapshot {
        Snapshot {
            createtxg: Some(txg),
            ..x.clone()
        }
    }

    #[test]
    fn ahead_is_what_follows_the_newest_shared_snapshot() {
        let (a, b, c, d) = (s("a", 1, 1), s("b", 2, 2), s("c", 3, 3), s("d", 4, 4));
        // the copy pruned `a`; the other still has it: not ahead
        assert!(ahead(&[b.clone(), c.clone()], &[a.clone(), b.clone(), c.clone()]).is_empty());
        // the other has `d` after the shared `c`: ahead by d
        assert_eq!(
            ahead(&[b.clone(), c.clone()], &[a.clone(), c.clone(), d.clone()]),
            vec![d.clone()]
        );
        // nothing shared: all of it
        assert_eq!(
            ahead(std::slice::from_ref(&a), std::slice::from_ref(&b)),
            vec![b.clone()]
        );
        assert!(ahead(std::slice::from_ref(&a), &[]).is_empty());
    }

    #[test]
    fn step_table() {
        let a = s("sk_a", 11, 1);
        let b = s("sk_b", 22, 2);
        let c = s("sk_c", 33, 3);
        let src = vec![c.clone(), a.clone(), b.clone()];
        let ra = received(&a, 500);
        let rb = received(&b, 600);
        let rc = received(&c, 700);
        // A target-only snapshot after b, with a source-like name (names do not match, guids do).
        let x = Snapshot {
            createtxg: Some(650),
            ..s("sk_c", 99, 4)
        };
        // A target-only snapshot older than the base: harmless (e.g. pruned on the source).
        let old = Snapshot {
            createtxg: Some(400),
            ..s("manual", 77, 0)
        };

        /// (why, source, target, target written, expected step)
        type Case = (
            &'static str,
            Vec<Snapshot>,
            Option<Vec<Snapshot>>,
            Option<u64>,
            ReplicationStep,
        );
        let cases: Vec<Case> = vec![
            (
                "source empty",
                vec![],
                None,
                None,
                ReplicationStep::Conflict(Conflict::SourceEmpty),
            ),
            (
                "target absent",
                src.clone(),
                None,
                None,
                ReplicationStep::Full { to: c.clone() },
            ),
            (
                "up to date",
                src.clone(),
                Some(vec![ra.clone(), rb.clone(), rc.clone()]),
                Some(0),
                ReplicationStep::UpToDate { base: c.clone() },
            ),
            (
                "incremental from newest common",
                src.clone(),
                Some(vec![rb.clone(), ra.clone()]),
                None,
                ReplicationStep::Incremental {
                    base: b.clone(),
                    to: c.clone(),
                },
            ),
            (
                "older target-only snapshot is fine",
                src.clone(),
                Some(vec![old.clone(), ra.clone()]),
                Some(0),
                ReplicationStep::Incremental {
                    base: a.clone(),
                    to: c.clone(),
                },
            ),
            (
                "only the oldest is common",
                src.clone(),
                Some(vec![ra.clone()]),
                None,
                ReplicationStep::Incremental {
                    base: a.clone(),
                    to: c.clone(),
                },
            ),
            (
                "diverged",
                src.clone(),
                Some(vec![ra.clone(), rb.clone(), x.clone()]),
                Some(0),
                ReplicationStep::Conflict(Conflict::Diverged {
                    base: b.clone(),
                    target_only: vec![x.clone()],
                }),
            ),
            (
                "diverged wins over written",
                src.clone(),
                Some(vec![ra.clone(), rb.clone(), x.clone()]),
                Some(4096),
                ReplicationStep::Conflict(Conflict::Diverged {
                    base: b.clone(),
                    target_only: vec![x.clone()],
                }),
            ),
            (
                "written after newest",
                src.clone(),
                Some(vec![ra.clone(), rb.clone()]),
                Some(4096),
                ReplicationStep::Conflict(Conflict::TargetWritten {
                    base: b.clone(),
                    written_bytes: 4096,
                }),
            ),
            (
                "written while up to date",
                src.clone(),
                Some(vec![rc.clone()]),
                Some(1),
                ReplicationStep::Conflict(Conflict::TargetWritten {
                    base: c.clone(),
                    written_bytes: 1,
                }),
            ),
            (
                "no common, with snapshots",
                src.clone(),
                Some(vec![x.clone(), old.clone()]),
                None,
                ReplicationStep::Conflict(Conflict::NoCommonSnapshot {
                    source_newest: c.clone(),
                    target_snapshots: vec![old.clone(), x.clone()],
                }),
            ),
            (
                "exists without snapshots",
                src.clone(),
                Some(vec![]),
                None,
                ReplicationStep::Conflict(Conflict::NoCommonSnapshot {
                    source_newest: c.clone(),
                    target_snapshots: vec![],
                }),
            ),
        ];
        for (why, source, target, written, expect) in cases {
            assert_eq!(
                replication_step(&source, target.as_deref(), written),
                expect,
                "{why}"
            );
        }
    }

    #[test]
    fn name_collision_is_not_a_match() {
        // Same name on both sides but different guids: nothing in common.
        let src = vec![s("sk_a", 1, 1)];
        let tgt = vec![s("sk_a", 2, 1)];
        assert!(matches!(
            replication_step(&src, Some(&tgt), None),
            ReplicationStep::Conflict(Conflict::NoCommonSnapshot { .. })
        ));
        assert_eq!(common_base(&src, &tgt), None);
    }

    #[test]
    fn messages_explain_and_never_force() {
        let b = s("sk_b", 22, 2);
        let conflicts = vec![
            Conflict::Diverged {
                base: b.clone(),
                target_only: (0..8)
                    .map(|i| s(&format!("t{i}"), 100 + i, 3 + i as i64))
                    .collect(),
            },
            Conflict::NoCommonSnapshot {
                source_newest: b.clone(),
                target_snapshots: vec![s("other", 5, 1)],
            },
            Conflict::NoCommonSnapshot {
                source_newest: b.clone(),
                target_snapshots: vec![],
            },
            Conflict::TargetWritten {
                base: b.clone(),
                written_bytes: 123,
            },
            Conflict::SourceEmpty,
        ];
        for c in &conflicts {
            let m = c.operator_message();
            assert!(!m.contains("-F"), "{m}");
            assert!(!m.contains("force"), "{m}");
        }
        let m = conflicts[0].operator_message();
        assert!(
            m.contains("sk_b")
                && m.contains("8 snapshot(s)")
                && m.contains("t0, t1, t2, t3, t4 and 3 more"),
            "{m}"
        );
        assert!(conflicts[1].operator_message().contains("other"));
        assert!(conflicts[3].operator_message().contains("123 bytes"));
        let kinds: Vec<&str> = conflicts.iter().map(Conflict::kind).collect();
        assert_eq!(
            kinds,
            [
                "diverged",
                "no_common_snapshot",
                "no_common_snapshot",
                "target_written",
                "source_empty"
            ]
        );
    }

    #[test]
    fn holds_move() {
        let a = s("sk_a", 1, 1);
        let b = s("sk_b", 2, 2);
        let c = s("sk_c", 3, 3);
        // First time: nothing held.
        assert_eq!(
            hold_moves(&[], Some(&a)),
            HoldMoves {
                release: vec![],
                hold: Some(a.clone())
            }
        );
        // Base moved a -> b.
        assert_eq!(
            hold_moves(std::slice::from_ref(&a), Some(&b)),
            HoldMoves {
                release: vec![a.clone()],
                hold: Some(b.clone())
            }
        );
        // Unchanged.
        assert_eq!(
            hold_moves(std::slice::from_ref(&b), Some(&b)),
            HoldMoves::default()
        );
        // Interrupted move left two holds, base now c.
        assert_eq!(
            hold_moves(&[b.clone(), a.clone()], Some(&c)),
            HoldMoves {
                release: vec![a.clone(), b.clone()],
                hold: Some(c.clone())
            }
        );
        // Interrupted move, base is one of them: release the other only.
        assert_eq!(
            hold_moves(&[a.clone(), b.clone()], Some(&b)),
            HoldMoves {
                release: vec![a.clone()],
                hold: None
            }
        );
        // No base: never drop the last hold.
        assert_eq!(
            hold_moves(std::slice::from_ref(&a), None),
            HoldMoves::default()
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// A replica that received any subset of the source (in order) and nothing else is
            /// never a conflict: up to date or incremental from the newest shared snapshot.
            /// Adding one snapshot of its own after that makes it diverged.
            #[test]
            fn received_subset_then_own_snapshot(
                n in 1usize..30,
                keep in prop::collection::vec(any::<bool>(), 30),
            ) {
                let src: Vec<Snapshot> =
                    (0..n).map(|i| s(&format!("sk_{i}"), 1000 + i as u64, i as i64)).collect();
                let mut tgt: Vec<Snapshot> = src
                    .iter()
                    .zip(&keep)
                    .enumerate()
                    .filter(|(_, (_, k))| **k)
                    .map(|(i, (x, _))| received(x, 9000 + i as u64))
                    .collect();
                let step = replication_step(&src, Some(&tgt), Some(0));
                let Some(last) = tgt.last() else {
                    let no_common = matches!(
                        step,
                        ReplicationStep::Conflict(Conflict::NoCommonSnapshot { .. })
                    );
                    prop_assert!(no_common);
                    return Ok(());
                };
                let newest = src[n - 1].clone();
                let base = src.iter().find(|x| x.guid == last.guid).cloned();
                prop_assert!(base.is_some());
                let base = base.unwrap_or_else(|| newest.clone());
                let expect = if base.guid == newest.guid {
                    ReplicationStep::UpToDate { base: base.clone() }
                } else {
                    ReplicationStep::Incremental { base: base.clone(), to: newest }
                };
                prop_assert_eq!(step, expect);
                let own = Snapshot { createtxg: Some(99_999), ..s("mine", 1, 100) };
                tgt.push(own.clone());
                prop_assert_eq!(
                    replication_step(&src, Some(&tgt), Some(0)),
                    ReplicationStep::Conflict(Conflict::Diverged {
                        base,
                        target_only: vec![own],
                    })
                );
            }
        }
    }
}
