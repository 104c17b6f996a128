//! RPO monitoring: how old is the newest replicated snapshot, judged by the Nagios convention.
//!
//! Pure: the newest replicated instant, the RPO target and `now` in, a [`CheckResult`] out
//! (state, one human line, perfdata). `spoolkeeper check` prints [`CheckResult::line`] and exits
//! with [`CheckState::exit_code`]; `status` can show the same summary.
//!
//! Thresholds: WARNING once the age is past `rpo`, CRITICAL past 2×`rpo` or when a node is
//! unreachable (the replica may be all we have, and we cannot even see it), UNKNOWN when the age
//! cannot be told (no replicated snapshot known, or one dated after `now`: clocks disagree).

use std::fmt;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// A Nagios/Icinga service state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckState {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl CheckState {
    /// The plugin exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    pub fn exit_code(self) -> i32 {
        match self {
            CheckState::Ok => 0,
            CheckState::Warning => 1,
            CheckState::Critical => 2,
            CheckState::Unknown => 3,
        }
    }

    /// Severity for combining several results: CRITICAL > WARNING > UNKNOWN > OK. UNKNOWN
    /// outranks OK because "cannot tell" for one instance must not hide behind another's OK.
    fn severity(self) -> u8 {
        match self {
            CheckState::Ok => 0,
            CheckState::Unknown => 1,
            CheckState::Warning => 2,
            CheckState::Critical => 3,
        }
    }
}

impl fmt::Display for CheckState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckState::Ok => "OK",
            CheckState::Warning => "WARNING",
            CheckState::Critical => "CRITICAL",
            CheckState::Unknown => "UNKNOWN",
        })
    }
}

/// The outcome of a check: its state, a human summary, and Nagios perfdata
/// (`label=value[UOM];warn;crit;min;max`, several separated by spaces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub state: CheckState,
    pub summary: String,
    pub perfdata: String,
    /// The age in whole seconds, when known (for `status` and JSON output).
    pub age_seconds: Option<i64>,
}

impl CheckResult {
    /// The plugin's output line: `RPO <STATE> - <summary> | <perfdata>`.
    pub fn line(&self) -> String {
        format!("RPO {} - {} | {}", self.state, self.summary, self.perfdata)
    }

    /// Combine per-instance results into one: the most severe state, summaries joined with
    /// `; `, perfdata concatenated. Nothing to combine is UNKNOWN.
    pub fn combine(results: &[CheckResult]) -> CheckResult {
        let Some(state) = results.iter().map(|r| r.state).max_by_key(|s| s.severity()) else {
            return CheckResult {
                state: CheckState::Unknown,
                summary: "no instance to check".to_owned(),
                perfdata: String::new(),
                age_seconds: None,
            };
        };
        CheckResult {
            state,
            summary: results
                .iter()
                .map(|r| r.summary.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            perfdata: results
                .iter()
                .map(|r| r.perfdata.as_str())
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
            age_seconds: results.iter().filter_map(|r| r.age_seconds).max(),
        }
    }
}

/// [`rpo_status_labeled`] with the perfdata label `rpo_age`.
pub fn rpo_status(
    newest_replicated: Option<Timestamp>,
    rpo: Duration,
    now: Timestamp,
    any_node_unreachable: bool,
) -> CheckResult {
    rpo_status_labeled("rpo_age", newest_replicated, rpo, now, any_node_unreachable)
}

/// Judge the replication lag of one instance.
///
/// `newest_replicated` is the creation of the newest snapshot present on both sides (see
/// `replication::common_base`); `None` means none is known: never replicated yet, or the
/// replica could not be observed. Both are UNKNOWN here, since this function cannot tell them
/// apart; a caller that knows the replica was observed and holds nothing can say so in its own
/// summary. `label` is the perfdata label (e.g. `students_rpo_age`), made of `[a-z0-9_-]` by the
/// spec's naming rules, so it needs no quoting.
///
/// The perfdata is `label=<age>s;<rpo>;<2×rpo>;0;` in whole seconds, or `label=U;…` when the age
/// is unknown (the Nagios way to say "no value").
pub fn rpo_status_labeled(
    label: &str,
    newest_replicated: Option<Timestamp>,
    rpo: Duration,
    now: Timestamp,
    any_node_unreachable: bool,
) -> CheckResult {
    let warn = SignedDuration::try_from(rpo).unwrap_or(SignedDuration::MAX);
    let crit = warn.checked_mul(2).unwrap_or(SignedDuration::MAX);
    let warn_s = warn.as_secs();
    let crit_s = crit.as_secs();
    let rpo_text = humantime::format_duration(rpo);

    let age = newest_replicated.map(|t| (t, now.duration_since(t)));
    let (value, age_seconds) = match age {
        Some((_, a)) if !a.is_negative() => (format!("{}s", a.as_secs()), Some(a.as_secs())),
        _ => ("U".to_owned(), None),
    };
    let perfdata = format!("{label}={value};{warn_s};{crit_s};0;");

    let (mut state, mut summary) = match age {
        None => (
            CheckState::Unknown,
            "no replicated snapshot known (never replicated, or the replica could not be \
             observed)"
                .to_owned(),
        ),
        Some((t, a)) if a.is_negative() => (
            CheckState::Unknown,
            format!(
                "newest replicated snapshot is dated {t}, after now ({now}): clocks disagree, \
                 age unknown"
            ),
        ),
        Some((t, a)) => {
            let age_text = humantime::format_duration(Duration::from_secs(
                u64::try_from(a.as_secs()).unwrap_or(0),
            ));
            let state = if a > crit {
                CheckState::Critical
            } else if a > warn {
                CheckState::Warning
            } else {
                CheckState::Ok
            };
            let verdict = match state {
                CheckState::Critical => "past twice the RPO",
                CheckState::Warning => "past the RPO",
                _ => "within the RPO",
            };
            (
                state,
                format!(
                    "newest replicated snapshot is {age_text} old ({t}), {verdict} of {rpo_text}"
                ),
            )
        }
    };
    if any_node_unreachable {
        state = CheckState::Critical;
        summary = format!("a node is unreachable; {summary}");
    }
    CheckResult {
        state,
        summary,
        perfdata,
        age_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn nagios_table() {
        let now = ts("2026-11-28T18:00:00Z");
        let hour = Duration::from_secs(3600);
        // (newest replicated, unreachable, state, perfdata)
        let cases: &[(Option<&str>, bool, CheckState, &str)] = &[
            (
                Some("2026-11-28T17:57:57Z"),
                false,
                CheckState::Ok,
                "rpo_age=123s;3600;7200;0;",
            ),
            (
                Some("2026-11-28T17:00:00Z"),
                false,
                CheckState::Ok,
                "rpo_age=3600s;3600;7200;0;",
            ),
            (
                Some("2026-11-28T16:59:59Z"),
                false,
                CheckState::Warning,
                "rpo_age=3601s;3600;7200;0;",
            ),
            (
                Some("2026-11-28T16:00:00Z"),
                false,
                CheckState::Warning,
                "rpo_age=7200s;3600;7200;0;",
            ),
            (
                Some("2026-11-28T15:59:59Z"),
                false,
                CheckState::Critical,
                "rpo_age=7201s;3600;7200;0;",
            ),
            (
                Some("2026-11-28T17:59:00Z"),
                true,
                CheckState::Critical,
                "rpo_age=60s;3600;7200;0;",
            ),
            (None, false, CheckState::Unknown, "rpo_age=U;3600;7200;0;"),
            (None, true, CheckState::Critical, "rpo_age=U;3600;7200;0;"),
            (
                Some("2026-11-28T18:00:01Z"),
                false,
                CheckState::Unknown,
                "rpo_age=U;3600;7200;0;",
            ),
        ];
        for (newest, unreachable, state, perf) in cases {
            let r = rpo_status(newest.map(ts), hour, now, *unreachable);
            assert_eq!(
                (r.state, r.perfdata.as_str()),
                (*state, *perf),
                "{newest:?}"
            );
        }
    }

    #[test]
    fn line_and_exit_codes() {
        let now = ts("2026-11-28T18:00:00Z");
        let r = rpo_status_labeled(
            "students_rpo_age",
            Some(ts("2026-11-28T16:29:00Z")),
            Duration::from_secs(3600),
            now,
            false,
        );
        assert_eq!(
            r.line(),
            "RPO WARNING - newest replicated snapshot is 1h 31m old (2026-11-28T16:29:00Z), \
             past the RPO of 1h | students_rpo_age=5460s;3600;7200;0;"
        );
        assert_eq!(r.age_seconds, Some(5460));
        let codes: Vec<i32> = [
            CheckState::Ok,
            CheckState::Warning,
            CheckState::Critical,
            CheckState::Unknown,
        ]
        .iter()
        .map(|s| s.exit_code())
        .collect();
        assert_eq!(codes, [0, 1, 2, 3]);
        let u = rpo_status(None, Duration::from_secs(60), now, true);
        assert!(
            u.summary.starts_with("a node is unreachable"),
            "{}",
            u.summary
        );
    }

    #[test]
    fn huge_rpo_does_not_overflow() {
        let r = rpo_status(
            Some(ts("2000-01-01T00:00:00Z")),
            Duration::MAX,
            ts("2026-01-01T00:00:00Z"),
            false,
        );
        assert_eq!(r.state, CheckState::Ok);
    }

    #[test]
    fn combine_takes_the_worst() {
        let mk = |state, perf: &str| CheckResult {
            state,
            summary: format!("{state}"),
            perfdata: perf.to_owned(),
            age_seconds: None,
        };
        let table: &[(&[CheckState], CheckState)] = &[
            (&[CheckState::Ok, CheckState::Ok], CheckState::Ok),
            (&[CheckState::Ok, CheckState::Unknown], CheckState::Unknown),
            (
                &[CheckState::Unknown, CheckState::Warning],
                CheckState::Warning,
            ),
            (
                &[CheckState::Critical, CheckState::Warning, CheckState::Ok],
                CheckState::Critical,
            ),
            (&[], CheckState::Unknown),
        ];
        for (states, expect) in table {
            let rs: Vec<CheckResult> = states.iter().map(|s| mk(*s, "a=1s")).collect();
            assert_eq!(CheckResult::combine(&rs).state, *expect, "{states:?}");
        }
        let c = CheckResult::combine(&[mk(CheckState::Ok, "a=1s"), mk(CheckState::Ok, "b=2s")]);
        assert_eq!(c.perfdata, "a=1s b=2s");
        assert_eq!(c.summary, "OK; OK");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any input gives an answer (no panic), and an older replica is never judged
            /// better than a younger one under the same RPO.
            #[test]
            fn older_is_never_better(
                a in -1_000_000_000i64..1_000_000_000,
                b in -1_000_000_000i64..1_000_000_000,
                rpo in any::<u64>(),
                unreachable in any::<bool>(),
            ) {
                let now = Timestamp::from_second(1_798_761_600).unwrap();
                let at = |d: i64| Timestamp::from_second(1_798_761_600 - d).unwrap();
                let (young, old) = if a <= b { (a, b) } else { (b, a) };
                let rpo = Duration::from_secs(rpo);
                let ry = rpo_status(Some(at(young)), rpo, now, unreachable);
                let ro = rpo_status(Some(at(old)), rpo, now, unreachable);
                if young >= 0 {
                    prop_assert!(ro.state.severity() >= ry.state.severity());
                    prop_assert!(ry.state != CheckState::Unknown);
                }
                if unreachable {
                    prop_assert_eq!(ro.state, CheckState::Critical);
                }
            }
        }
    }
}
