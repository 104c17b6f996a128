//! `cargo xtask bench [observe|noop|replication|prune|all] [options]`.
//!
//! The measured code is always optimised: when this xtask is a debug build, it re-runs itself
//! as `cargo run --release -p xtask -- bench …` (same arguments), and benches that run the
//! `spoolkeeper` binary build it with `--release` first.
//!
//! - `observe`: parse a synthetic 4M-snapshot `zfs get` listing (see `bench_observe.rs`).
//! - `noop`: on the lab (`cargo xtask lab up`, cluster converged by `spoolkeeper apply -f
//!   examples/lab.yaml`), time N runs of `spoolkeeper reconcile -f examples/lab.yaml` that find
//!   nothing to do; print the median wall time and the SSH round trips per host. Round trips are
//!   counted from the binary's own JSON debug log: every remote command passes the one door
//!   (`host::Host::run`/`spawn`), which opens a `cmd` span naming the host and logs one
//!   `command finished`/`command failed` event per command, so the count is exactly the
//!   transport's round-trip counter. A run that executed an action (an `action` span in its
//!   log) is not a no-op: the bench says so and fails.
//!
//!   Options: `--runs N` (default 10); `--spec PATH` (default `examples/lab.yaml`);
//!   `--dry-run` times `reconcile --dry-run` instead (read-only: the same connect, observe and
//!   plan path, safe on a lab others use; changes in the plan are reported, not applied);
//!   `--hold-schedules` runs against a copy of the spec whose `every:` schedules are set to
//!   `3650d`, so that a converged lab stays converged for the whole bench (the lab spec takes a
//!   snapshot every minute, which makes a ten-run no-op bench impossible otherwise).
//! - `replication`, `prune`, `arch-restore`, `failover`: on the lab (up; the benches converge
//!   it themselves, each with its own state directory under `target/bench/<name>/`), against
//!   the peers of issues 6, 7 and 8 on the same data in the same run; see `bench/*.rs`. They
//!   print times and ratios; nothing asserts on time. Each cleans up what it created.
//!   `--count N` changes their size (files: 20,000; snapshots: 5,000; held messages: 5,000).
//!   `--link RATE` (`replication`): node-b's link shaped to RATE (`100mbit`) for the bench,
//!   as two sites are; every contender crosses it.
//! - `all`: every bench above in turn; fails if any failed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{cargo, root, run};

mod arch_restore;
mod archive;
mod common;
mod failover;
mod prune;
mod replication;

const USAGE: &str = "usage: cargo xtask bench \
                     [observe|noop|replication|prune|arch-restore|archive|failover|all] \
                     [--runs N] [--spec PATH] [--dry-run] [--hold-schedules] [--count N] \
                     [--link RATE] [--held N[,N…]]";

/// One bench of `all`.
type Bench<'a> = dyn Fn() -> Result<(), String> + 'a;

/// Set in the environment of the release re-run, so it never re-runs itself again.
const INNER: &str = "SK_BENCH_INNER";

pub fn main(args: &[String]) -> Result<(), String> {
    if cfg!(debug_assertions) && std::env::var_os(INNER).is_none() {
        return rerun_release(args);
    }
    let which = args.first().map(String::as_str).unwrap_or("all");
    let opts = Options::parse(args.get(1..).unwrap_or(&[]))?;
    match which {
        "observe" => crate::bench_observe::run(),
        "noop" => noop(&opts),
        "replication" => replication::run(opts.count, opts.link.as_deref()),
        "prune" => prune::run(opts.count),
        "arch-restore" => arch_restore::run(opts.count),
        "archive" => archive::run(opts.held.clone()),
        "failover" => failover::run(),
        "all" => {
            let mut failed = Vec::new();
            let benches: [(&str, &Bench); 7] = [
                ("observe", &crate::bench_observe::run),
                ("noop", &|| noop(&opts)),
                ("replication", &|| {
                    replication::run(opts.count, opts.link.as_deref())
                }),
                ("prune", &|| prune::run(opts.count)),
                ("arch-restore", &|| arch_restore::run(opts.count)),
                ("archive", &|| archive::run(opts.held.clone())),
                ("failover", &failover::run),
            ];
            for (name, bench) in benches {
                // one after the other: each bench needs the lab to itself
                if let Err(e) = bench() {
                    eprintln!("bench {name}: {e}");
                    failed.push(name);
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(format!("benches failed: {}", failed.join(", ")))
            }
        }
        "-h" | "--help" | "help" => {
            eprintln!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown bench `{other}`\n{USAGE}")),
    }
}

/// Run this same command from a release build of xtask.
fn rerun_release(args: &[String]) -> Result<(), String> {
    let mut a: Vec<&str> = vec!["run", "--quiet", "--release", "-p", "xtask", "--", "bench"];
    a.extend(args.iter().map(String::as_str));
    eprintln!("==> release build: cargo {}", a.join(" "));
    let status = Command::new(cargo())
        .args(&a)
        .env(INNER, "1")
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("bench failed ({status})"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    runs: usize,
    spec: PathBuf,
    dry_run: bool,
    hold_schedules: bool,
    /// Size of replication (files), prune (snapshots), arch-restore (messages).
    count: Option<u32>,
    /// `replication`: the rate node-b's link is shaped to for the bench (`tc … tbf`), e.g.
    /// `100mbit`; unshaped without it.
    link: Option<String>,
    /// `archive`: the numbers of held copies to measure with, in order.
    held: Option<Vec<u32>>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            runs: 10,
            spec: PathBuf::from("examples/lab.yaml"),
            dry_run: false,
            hold_schedules: false,
            count: None,
            link: None,
            held: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--runs" => {
                    o.runs = it
                        .next()
                        .and_then(|v| v.parse().ok())
                        .filter(|n| *n > 0)
                        .ok_or("--runs needs a positive number")?;
                }
                "--spec" => {
                    o.spec = it.next().map(PathBuf::from).ok_or("--spec needs a path")?;
                }
                "--count" => {
                    o.count = Some(
                        it.next()
                            .and_then(|v| v.parse().ok())
                            .filter(|n| *n > 0)
                            .ok_or("--count needs a positive number")?,
                    );
                }
                "--link" => {
                    let rate = it.next().ok_or("--link needs a rate such as 100mbit")?;
                    let digits = rate.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                    let unit = &rate[digits.len()..];
                    if digits.is_empty()
                        || !digits.chars().all(|c| c.is_ascii_digit())
                        || !["kbit", "mbit", "gbit"].contains(&unit)
                    {
                        return Err(format!("--link {rate}: a rate such as 100mbit, 1gbit"));
                    }
                    o.link = Some(rate.clone());
                }
                "--held" => {
                    let list = it.next().ok_or("--held needs N or N,N,…")?;
                    let sizes: Option<Vec<u32>> = list
                        .split(',')
                        .map(|n| n.trim().replace('_', "").parse().ok().filter(|n| *n > 0))
                        .collect();
                    o.held = Some(sizes.ok_or(format!(
                        "--held {list}: positive numbers separated by commas, such as 10000,100000"
                    ))?);
                }
                "--dry-run" => o.dry_run = true,
                "--hold-schedules" => o.hold_schedules = true,
                other => return Err(format!("unknown option `{other}`\n{USAGE}")),
            }
        }
        Ok(o)
    }
}

/// What one run's JSON log says.
#[derive(Debug, Default, PartialEq, Eq)]
struct RunLog {
    /// Remote commands per host label.
    round_trips: BTreeMap<String, u64>,
    /// Actions the executor started (ids).
    actions: Vec<String>,
}

/// Read a `--log-format json -vv` log: count one round trip per finished (or failed) command
/// under its `cmd` span's host, and collect executed actions.
fn parse_log(stderr: &str) -> RunLog {
    let mut log = RunLog::default();
    for line in stderr.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let message = v["fields"]["message"].as_str().unwrap_or("");
        let span = &v["span"];
        match (span["name"].as_str(), message) {
            (Some("cmd"), "command finished" | "command failed") => {
                let host = span["host"].as_str().unwrap_or("?").to_owned();
                *log.round_trips.entry(host).or_default() += 1;
            }
            (Some("action"), "start") => {
                log.actions
                    .push(span["id"].as_str().unwrap_or("?").to_owned());
            }
            _ => {}
        }
    }
    log
}

/// The spec with every `every:` schedule set to ten years (see the module documentation), and
/// the `rpo:` too (validation refuses an RPO shorter than the replication interval).
fn hold_schedules(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        let key = ["every:", "rpo:"]
            .into_iter()
            .find_map(|k| trimmed.strip_prefix(k).map(|rest| (k, rest)));
        if let Some((key, rest)) = key {
            let indent = &line[..line.len() - trimmed.len()];
            // Keep a trailing comment, if any.
            let comment = rest.find('#').map_or("", |i| &rest[i..]);
            out.push_str(format!("{indent}{key} 3650d {comment}").trim_end());
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    let n = v.len();
    if n == 0 {
        Duration::ZERO
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn lab_is_up() -> bool {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some("sk-node-a"))
        })
        .unwrap_or(false)
}

fn noop(o: &Options) -> Result<(), String> {
    if !lab_is_up() {
        return Err(
            "the lab is not up (no sk-node-a namespace): run `cargo xtask lab up` and \
                    `spoolkeeper apply -f examples/lab.yaml` first"
                .into(),
        );
    }
    run(
        "release build",
        &cargo(),
        &["build", "--quiet", "--release", "--bin", "spoolkeeper"],
    )?;
    let bin = root().join("target/release/spoolkeeper");
    let spec = if o.hold_schedules {
        let src = root().join(&o.spec);
        let text = std::fs::read_to_string(&src)
            .map_err(|e| format!("cannot read {}: {e}", src.display()))?;
        let dir = root().join("target/bench");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // The lab spec's paths are absolute, so the copy reads the same keys and files.
        let p = dir.join("noop-held-schedules.yaml");
        std::fs::write(&p, hold_schedules(&text)).map_err(|e| format!("{}: {e}", p.display()))?;
        p
    } else {
        o.spec.clone()
    };
    let mode = if o.dry_run {
        "reconcile --dry-run"
    } else {
        "reconcile"
    };
    eprintln!(
        "==> bench noop: {} x `spoolkeeper {mode} -f {}`",
        o.runs,
        spec.display()
    );
    let mut times = Vec::with_capacity(o.runs);
    let mut trips: Vec<BTreeMap<String, u64>> = Vec::with_capacity(o.runs);
    let mut not_noop = Vec::new();
    for i in 0..o.runs {
        let mut cmd = Command::new(&bin);
        cmd.args(["--log-format", "json", "-vv", "reconcile"]);
        if o.dry_run {
            cmd.arg("--dry-run");
        }
        cmd.arg("-f")
            .arg(&spec)
            .env_remove("RUST_LOG")
            .current_dir(root());
        let t = Instant::now();
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let wall = t.elapsed();
        let log = parse_log(&String::from_utf8_lossy(&out.stderr));
        let code = out.status.code();
        eprintln!(
            "  run {:>2}: {:>8.1} ms, exit {:?}, round trips {:?}",
            i + 1,
            wall.as_secs_f64() * 1000.0,
            code,
            log.round_trips
        );
        // reconcile: 0 converged; --dry-run: 0 no changes, 2 changes.
        match (code, o.dry_run) {
            (Some(0), _) if log.actions.is_empty() => {}
            (Some(0), false) => not_noop.push(format!(
                "run {} executed {} action(s): {}",
                i + 1,
                log.actions.len(),
                log.actions.join(", ")
            )),
            (Some(2), true) => not_noop.push(format!("run {} planned changes", i + 1)),
            _ => {
                return Err(format!(
                    "run {} exited {:?}: {}",
                    i + 1,
                    code,
                    String::from_utf8_lossy(&out.stdout).trim()
                ));
            }
        }
        times.push(wall);
        trips.push(log.round_trips);
    }
    let mut sorted = times.clone();
    let med = median(&mut sorted);
    let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
    let hosts: std::collections::BTreeSet<&String> = trips.iter().flat_map(|t| t.keys()).collect();
    let per_host: Vec<String> = hosts
        .iter()
        .map(|h| {
            let counts: Vec<u64> = trips
                .iter()
                .map(|t| t.get(*h).copied().unwrap_or(0))
                .collect();
            let lo = counts.iter().min().copied().unwrap_or(0);
            let hi = counts.iter().max().copied().unwrap_or(0);
            if lo == hi {
                format!("{h}={lo}")
            } else {
                format!("{h}={lo}..{hi}")
            }
        })
        .collect();
    println!(
        "bench noop: {} runs of `spoolkeeper {mode}`: median {:.1} ms (min {:.1}, max {:.1}); \
         round trips per host per run: {}",
        o.runs,
        med.as_secs_f64() * 1000.0,
        min.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0,
        per_host.join(" ")
    );
    if not_noop.is_empty() {
        Ok(())
    } else {
        let msg = format!(
            "{} of {} runs were not no-ops (the lab is not converged, or a schedule came due: \
             try --hold-schedules after `spoolkeeper apply`): {}",
            not_noop.len(),
            o.runs,
            not_noop.join("; ")
        );
        if o.dry_run {
            // Read-only timing is still the observe + plan path; say so, do not fail.
            println!("bench noop: note: {msg}");
            Ok(())
        } else {
            Err(msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_counts_commands_per_host_and_actions() {
        let log = r#"{"timestamp":"t","level":"DEBUG","fields":{"message":"command finished","duration_ms":12,"status":"Some(0)"},"target":"spoolkeeper::transport::host","span":{"argv":"[\"sh\"]","host":"node-a","name":"cmd"},"spans":[{"argv":"[\"sh\"]","host":"node-a","name":"cmd"}]}
{"timestamp":"t","level":"DEBUG","fields":{"message":"command finished","duration_ms":3},"target":"spoolkeeper::transport::host","span":{"argv":"[]","host":"node-a","name":"cmd"},"spans":[]}
{"timestamp":"t","level":"DEBUG","fields":{"message":"command failed","error":"x"},"target":"spoolkeeper::transport::host","span":{"argv":"[]","host":"archive","name":"cmd"},"spans":[]}
{"timestamp":"t","level":"INFO","fields":{"message":"observed"},"target":"spoolkeeper::cli"}
{"timestamp":"t","level":"INFO","fields":{"message":"start","summary":"snapshot"},"target":"spoolkeeper::apply","span":{"host":"node-a","id":"node-a:snapshot:students","name":"action"},"spans":[]}
not json at all
{"timestamp":"t","level":"DEBUG","fields":{"message":"command finished"},"target":"spoolkeeper::transport::host","span":{"host":"node-b","name":"other"},"spans":[]}"#;
        let got = parse_log(log);
        let want: BTreeMap<String, u64> = [("archive".to_owned(), 1), ("node-a".to_owned(), 2)]
            .into_iter()
            .collect();
        assert_eq!(got.round_trips, want);
        assert_eq!(got.actions, ["node-a:snapshot:students"]);
    }

    #[test]
    fn schedules_are_held_and_nothing_else_changes() {
        let spec = "spec:\n  snapshots:\n    prefix: sk\n    every: 1m\n  replication:\n    every: 1h   # often\n    rpo: 10m\n";
        assert_eq!(
            hold_schedules(spec),
            "spec:\n  snapshots:\n    prefix: sk\n    every: 3650d\n  replication:\n    every: 3650d # often\n    rpo: 3650d\n"
        );
    }

    #[test]
    fn options_and_median() {
        let a: Vec<String> = ["--runs", "3", "--dry-run"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = Options::parse(&a).unwrap();
        assert_eq!((o.runs, o.dry_run, o.hold_schedules), (3, true, false));
        assert!(Options::parse(&["--runs".into(), "0".into()]).is_err());
        let c = Options::parse(&["--count".into(), "500".into()]).unwrap();
        assert_eq!((c.count, c.runs), (Some(500), 10));
        assert!(Options::parse(&["--count".into(), "x".into()]).is_err());
        assert!(Options::parse(&["--bogus".into()]).is_err());
        let h = Options::parse(&["--held".into(), "10_000,1000000".into()]).unwrap();
        assert_eq!(h.held, Some(vec![10_000, 1_000_000]));
        assert!(Options::parse(&["--held".into(), "10,0".into()]).is_err());
        assert!(Options::parse(&["--held".into(), "10,".into()]).is_err());
        let ms = Duration::from_millis;
        assert_eq!(median(&mut [ms(5), ms(1), ms(3)]), ms(3));
        assert_eq!(
            median(&mut [ms(4), ms(1), ms(3), ms(2)]),
            Duration::from_micros(2500)
        );
    }
}
