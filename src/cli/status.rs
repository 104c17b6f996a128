//! `spoolkeeper status` and `spoolkeeper check`: observe, judge with
//! `crate::decide::status`, print.

use std::path::Path;

use jiff::Timestamp;

use crate::decide::rpo::{CheckResult, CheckState};
use crate::decide::status::{Status, check_labeled, status, text};

/// `spoolkeeper status -f FILE [--output json] [--state-dir DIR]`: exit 0, 1 on a bad spec.
pub fn status_main(file: &Path, json: bool, state_dir: &Path) -> u8 {
    let specs = match super::load::specs(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("invalid spec: nothing was contacted");
            return 1;
        }
    };
    let Some(rt) = super::runtime() else { return 1 };
    let all: Vec<Status> = rt.block_on(async {
        let mut all = Vec::new();
        for s in &specs {
            let conns = crate::observe::connect(s).await;
            let o = crate::observe::observe(s, &conns).await;
            tracing::info!(cluster = %s.name, round_trips = ?conns.trips.snapshot(), "observed");
            let journal = crate::state::journal::Journal::read(state_dir, s.name.as_str());
            all.push(status(s, &o, &journal, Timestamp::now()));
        }
        all
    });
    if json {
        let v = if all.len() == 1 {
            serde_json::to_value(&all[0])
        } else {
            serde_json::to_value(&all)
        };
        match v.and_then(|v| serde_json::to_string_pretty(&v)) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("cannot render the status: {e}");
                return 1;
            }
        }
    } else {
        for (k, st) in all.iter().enumerate() {
            if k > 0 {
                println!();
            }
            print!("{}", text(st));
        }
    }
    0
}

/// `spoolkeeper check -f FILE`: one Nagios line on stdout, exit 0/1/2/3. A bad spec or a
/// failure to observe is UNKNOWN (3) with a message, as monitoring plugins do.
pub fn check_main(file: &Path, state_dir: &Path) -> u8 {
    let r = check_files(file, state_dir);
    println!("{}", r.line());
    u8::try_from(r.state.exit_code()).unwrap_or(3)
}

fn unknown(summary: String) -> CheckResult {
    CheckResult {
        state: CheckState::Unknown,
        summary,
        perfdata: String::new(),
        age_seconds: None,
    }
}

fn check_files(file: &Path, state_dir: &Path) -> CheckResult {
    let specs = match super::load::specs(file) {
        Ok(s) => s,
        Err(e) => {
            let first = e.0.first().map_or_else(
                || "invalid spec".to_owned(),
                |d| {
                    format!(
                        "{}:{}:{}: {}",
                        d.file.display(),
                        d.pos.line,
                        d.pos.col,
                        d.message
                    )
                },
            );
            // Nagios reads the first line: keep it one line.
            return unknown(format!(
                "invalid spec ({} problem(s)): {}",
                e.0.len(),
                first.replace('\n', " ")
            ));
        }
    };
    let Some(rt) = super::runtime() else {
        return unknown("cannot start the async runtime".to_owned());
    };
    let several = specs.len() > 1;
    let results: Vec<CheckResult> = rt.block_on(async {
        let mut out = Vec::new();
        for s in &specs {
            let conns = crate::observe::connect(s).await;
            let o = crate::observe::observe(s, &conns).await;
            let prefix = if several {
                format!("{}_", s.name)
            } else {
                String::new()
            };
            let now = Timestamp::now();
            let r = check_labeled(s, &o, now, &prefix);
            let records = crate::state::journal::Journal::read(state_dir, s.name.as_str());
            let mut parts = vec![r];
            parts.extend(crate::decide::drill::checks(s, &records, now, &prefix));
            let mut r = CheckResult::combine(&parts);
            if several {
                r.summary = format!("{}: {}", s.name, r.summary);
            }
            out.push(r);
        }
        out
    });
    CheckResult::combine(&results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_files_reports_a_bad_spec_as_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.yaml");
        std::fs::write(&f, "apiVersion: spoolkeeper/v1\nkind: Nope\n").unwrap();
        let r = check_files(&f, dir.path());
        assert_eq!(r.state, CheckState::Unknown);
        assert!(r.summary.starts_with("invalid spec"), "{}", r.summary);
        assert!(!r.line().contains('\n'));
        assert_eq!(check_main(&f, dir.path()), 3);
        assert_eq!(status_main(&f, false, dir.path()), 1);
    }
}
