//! `drill`, the pure part: which snapshot a rehearsal starts from, what each probe mailbox
//! must hold in the rehearsed copy, and the verdict. The shell is `crate::apply::drill`.
//!
//! A probe's expectation is what a failover to that node would have to give its user: every
//! message the live mailbox received before the snapshot was taken (a message deleted since is
//! not expected; one received in the snapshot's second is left out, the two clocks being the
//! same node's but of seconds precision), plus every held archive copy the replay delivers to
//! it. Found is what the probe sees over IMAP in the drill copy; a drill passes when nothing
//! expected is missing for any probe, the copy served IMAP, and every replay was accepted.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde::Serialize;

use crate::decide::recover::RestorePoint;

/// The newest snapshot of the drill node's replica that the active node also holds (so it
/// came by replication, and a failover would start from it); the newest on the node when the
/// active one was not observed.
pub fn drill_point<'a>(
    points: &'a [RestorePoint],
    node: &str,
    active: &str,
    active_observed: bool,
) -> Option<&'a RestorePoint> {
    points.iter().rev().find(|p| {
        p.nodes.iter().any(|n| n == node)
            && (!active_observed || p.nodes.iter().any(|n| n == active))
    })
}

/// The Message-IDs a probe must find: received (unix seconds) strictly before the snapshot's
/// second, plus those the replay delivered to it.
pub fn expected(
    live: &[(i64, String)],
    snapshot: Timestamp,
    replayed: &[String],
) -> BTreeSet<String> {
    let cut = snapshot.as_second();
    live.iter()
        .filter(|(t, _)| *t < cut)
        .map(|(_, id)| id.clone())
        .chain(replayed.iter().cloned())
        .collect()
}

/// One probe mailbox's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub user: String,
    pub expected: usize,
    pub found: usize,
    /// Expected and not found (the first 20).
    pub missing: Vec<String>,
    pub missing_count: usize,
    /// Why it could not be checked (login refused, IMAP error).
    pub error: Option<String>,
}

impl Probe {
    /// Compare the expectation with what IMAP showed.
    pub fn check(user: &str, expected: &BTreeSet<String>, found: &BTreeSet<String>) -> Probe {
        let missing: Vec<String> = expected.difference(found).cloned().collect();
        Probe {
            user: user.to_owned(),
            expected: expected.len(),
            found: found.intersection(expected).count(),
            missing_count: missing.len(),
            missing: missing.into_iter().take(20).collect(),
            error: None,
        }
    }

    /// Passed: checked, nothing missing.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.missing_count == 0
    }
}

/// Pass or fail, with the reasons of a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
}

/// The verdict: the copy served IMAP, every probe found what it must, every replay was taken.
pub fn verdict(served: bool, probes: &[Probe], replay_failed: usize) -> (Verdict, Vec<String>) {
    let mut why = Vec::new();
    if !served {
        why.push("the drill copy never served IMAP".to_owned());
    }
    for p in probes {
        if let Some(e) = &p.error {
            why.push(format!("probe {}: {e}", p.user));
        } else if p.missing_count > 0 {
            why.push(format!(
                "probe {}: {} of {} expected messages missing",
                p.user, p.missing_count, p.expected
            ));
        }
    }
    if replay_failed > 0 {
        why.push(format!(
            "{replay_failed} held archive copies were refused by the drill copy"
        ));
    }
    if probes.is_empty() {
        why.push("no probe mailbox was checked".into());
    }
    (
        if why.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        why,
    )
}

/// Per instance, from the journal: (last drill that passed, last drill that ran).
pub fn last_drills(
    records: &[crate::plan::history::Record],
) -> BTreeMap<String, (Option<Timestamp>, Option<Timestamp>)> {
    use crate::plan::history::Phase;
    let mut out: BTreeMap<String, (Option<Timestamp>, Option<Timestamp>)> = BTreeMap::new();
    for r in records {
        let Some(inst) = r.action.strip_prefix("drill:") else {
            continue;
        };
        let e = out.entry(inst.to_owned()).or_default();
        match r.phase {
            Phase::Done => {
                e.0 = e.0.max(Some(r.at));
                e.1 = e.1.max(Some(r.at));
            }
            Phase::Failed => e.1 = e.1.max(Some(r.at)),
            _ => {}
        }
    }
    out
}

/// `check`'s drill results: per instance with a drill block, WARNING when no drill passed
/// within its `warn_after` (or none ever did), with the age as perfdata.
pub fn checks(
    spec: &crate::spec::Spec,
    records: &[crate::plan::history::Record],
    now: Timestamp,
    prefix: &str,
) -> Vec<crate::decide::rpo::CheckResult> {
    use crate::decide::rpo::{CheckResult, CheckState};
    let last = last_drills(records);
    let mut out = Vec::new();
    for (name, inst) in &spec.spec.instances {
        let Some(d) = &inst.drill else {
            continue;
        };
        let warn = d.warn_after.as_secs();
        let label = format!("{prefix}drill_age_{name}");
        let (pass, ran) = last.get(name.as_str()).copied().unwrap_or_default();
        let r = match pass {
            Some(t) => {
                let age = now.as_second().saturating_sub(t.as_second()).max(0);
                let ok = u64::try_from(age).unwrap_or(0) <= warn;
                CheckResult {
                    state: if ok {
                        CheckState::Ok
                    } else {
                        CheckState::Warning
                    },
                    summary: if ok {
                        format!("last drill of {name} passed {}h ago", age / 3600)
                    } else {
                        format!(
                            "no drill of {name} passed for {}d (last pass {t}; run `spoolkeeper drill`)",
                            age / 86_400
                        )
                    },
                    perfdata: format!("{label}={age}s;{warn};;0;"),
                    age_seconds: None,
                }
            }
            None => CheckResult {
                state: CheckState::Warning,
                summary: match ran {
                    Some(t) => format!("no drill of {name} ever passed (the last, {t}, failed)"),
                    None => format!("no drill of {name} has run yet (`spoolkeeper drill`)"),
                },
                perfdata: format!("{label}=U;{warn};;0;"),
                age_seconds: None,
            },
        };
        out.push(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pt(name: &str, s: i64, nodes: &[&str]) -> RestorePoint {
        RestorePoint {
            snapshot: name.into(),
            guid: s as u64,
            creation: Timestamp::from_second(s).unwrap(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn the_drill_starts_from_the_newest_replicated_snapshot() {
        let pts = vec![
            pt("s1", 1, &["a", "b"]),
            pt("s2", 2, &["a", "b"]),
            pt("s3", 3, &["a"]),
            pt("x", 4, &["b"]),
        ];
        assert_eq!(drill_point(&pts, "b", "a", true).unwrap().snapshot, "s2");
        assert_eq!(drill_point(&pts, "b", "a", false).unwrap().snapshot, "x");
        assert!(drill_point(&pts, "c", "a", true).is_none());
    }

    #[test]
    fn the_snapshot_second_is_not_expected() {
        let live = vec![
            (99, "<a>".to_string()),
            (100, "<b>".into()),
            (101, "<c>".into()),
        ];
        let e = expected(&live, Timestamp::from_second(100).unwrap(), &["<d>".into()]);
        assert_eq!(e, ["<a>", "<d>"].iter().map(|s| s.to_string()).collect());
    }

    fn rec(
        action: &str,
        phase: crate::plan::history::Phase,
        at: &str,
    ) -> crate::plan::history::Record {
        crate::plan::history::Record {
            at: at.parse().unwrap(),
            run: "r".into(),
            action: action.into(),
            phase,
            detail: None,
            done: None,
        }
    }

    #[test]
    fn check_warns_when_no_drill_passed_within_warn_after() {
        use crate::decide::rpo::CheckState;
        use crate::plan::history::Phase;
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/lab.yaml"))
                .unwrap();
        let spec = crate::spec::parse(std::path::Path::new("lab.yaml"), text.as_bytes()).unwrap();
        let now: Timestamp = "2026-12-10T00:00:00Z".parse().unwrap();
        let never = checks(&spec, &[], now, "");
        assert_eq!(never.len(), 1, "only students has a drill block");
        assert_eq!(never[0].state, CheckState::Warning);
        let recent = vec![
            rec("drill:students", Phase::Done, "2026-12-08T00:00:00Z"),
            rec("drill:students", Phase::Failed, "2026-12-09T00:00:00Z"),
        ];
        let c = checks(&spec, &recent, now, "");
        assert_eq!(c[0].state, CheckState::Ok, "{}", c[0].summary);
        assert!(
            c[0].perfdata
                .starts_with("drill_age_students=172800s;604800;")
        );
        let old = vec![rec("drill:students", Phase::Done, "2026-12-01T00:00:00Z")];
        assert_eq!(checks(&spec, &old, now, "")[0].state, CheckState::Warning);
        let failed = vec![rec("drill:students", Phase::Failed, "2026-12-09T00:00:00Z")];
        let f = checks(&spec, &failed, now, "");
        assert!(f[0].summary.contains("failed"), "{}", f[0].summary);
    }

    proptest! {
        /// A probe passes exactly when it found everything expected; extra messages never
        /// fail it, and one missing message always does.
        #[test]
        fn one_missing_message_fails_the_drill(
            exp in prop::collection::btree_set("[a-e]{1,2}", 0..10),
            extra in prop::collection::btree_set("[f-j]{1,2}", 0..5),
            drop in any::<prop::sample::Index>(),
        ) {
            let found: BTreeSet<String> = exp.union(&extra).cloned().collect();
            let p = Probe::check("u", &exp, &found);
            prop_assert!(p.ok());
            prop_assert_eq!(verdict(true, &[p], 0).0, Verdict::Pass);
            if !exp.is_empty() {
                let gone = exp.iter().nth(drop.index(exp.len())).unwrap().clone();
                let mut less = found.clone();
                less.remove(&gone);
                let p = Probe::check("u", &exp, &less);
                prop_assert!(!p.ok());
                prop_assert_eq!(p.missing.clone(), vec![gone]);
                prop_assert_eq!(verdict(true, &[p], 0).0, Verdict::Fail);
            }
            prop_assert_eq!(verdict(false, &[], 0).0, Verdict::Fail);
        }
    }
}
