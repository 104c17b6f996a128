//! Lab tests of the engine (issue 5): plan → apply → plan converges, the four renderers show the
//! same plan, a saved plan goes stale, the cluster lock refuses a second apply, and an apply
//! killed with SIGKILL after its first action is resumed by the next one.
//! Needs root and the lab: run by `cargo xtask ci`
//! (`cargo test --test lab_engine -- --ignored --test-threads=1`).

mod common;

use common::sk::*;
use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The lab spec with hourly schedules: no snapshot falls due during the test, so "converged"
/// is a stable answer and not a race with the clock.
fn hourly_spec(dir: &std::path::Path) -> std::path::PathBuf {
    spec_variant(
        dir,
        "lab-hourly.yaml",
        &[("every: 1m", "every: 1h"), ("rpo: 10m", "rpo: 2h")],
    )
}

/// (step, host) of every action in each rendering, plus the fingerprint each one shows.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    fingerprint: String,
    steps: Vec<(usize, String)>,
}

fn json_shape(json: &str) -> (Shape, Vec<(usize, String)>) {
    let v: serde_json::Value = serde_json::from_str(json).expect("plan --output json is JSON");
    let mut steps = Vec::new();
    let mut ids = Vec::new();
    for a in v["actions"].as_array().expect("actions[]") {
        let step = a["step"].as_u64().expect("step") as usize;
        let host = match a["host"]["type"].as_str() {
            Some("node") => a["host"]["name"].as_str().expect("node name").to_string(),
            Some(other) => other.to_string(),
            None => panic!("action without host: {a}"),
        };
        steps.push((step, host));
        ids.push((step, untimed(a["id"].as_str().expect("id"))));
    }
    steps.sort();
    ids.sort();
    let fingerprint = v["fingerprint"].as_str().expect("fingerprint").to_string();
    (Shape { fingerprint, steps }, ids)
}

fn text_shape(text: &str) -> Shape {
    let mut fingerprint = String::new();
    let mut host = String::new();
    let mut steps = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("Cluster lab (observed state ") {
            fingerprint = rest.trim_end_matches("):").to_string();
        } else if let Some(h) = l
            .trim()
            .strip_prefix("on ")
            .and_then(|h| h.strip_suffix(':'))
        {
            host = h.to_string();
        } else if let Some((n, _)) = l.trim_start().split_once(". ")
            && let Ok(n) = n.parse::<usize>()
        {
            steps.push((n, host.clone()));
        }
    }
    steps.sort();
    Shape { fingerprint, steps }
}

fn markdown_shape(md: &str) -> Shape {
    let mut fingerprint = String::new();
    let mut steps = Vec::new();
    for l in md.lines() {
        if let Some(rest) = l.strip_prefix("Observed state `") {
            fingerprint = rest.trim_end_matches("`.").to_string();
        } else if l.starts_with("| ") {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            if let Ok(n) = cells[1].parse::<usize>() {
                steps.push((n, cells[2].to_string()));
            }
        }
    }
    steps.sort();
    Shape { fingerprint, steps }
}

/// `s` with each snapshot timestamp (`sk_YYYYMMDDTHHMMSSZ`) replaced by `sk_<now>`: two
/// `plan` runs a second apart name the snapshot they would take differently.
fn untimed(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("sk_") {
        out.push_str(&rest[..i + 3]);
        let tail = &rest[i + 3..];
        let stamp = tail.get(..16).unwrap_or("");
        let is_stamp = stamp.len() == 16
            && stamp.char_indices().all(|(k, c)| match k {
                8 => c == 'T',
                15 => c == 'Z',
                _ => c.is_ascii_digit(),
            });
        if is_stamp {
            out.push_str("<now>");
            rest = &tail[16..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// (step, id) of every node of the dot graph.
fn dot_ids(dot: &str) -> Vec<(usize, String)> {
    let mut ids = Vec::new();
    for l in dot.lines() {
        let l = l.trim();
        if let Some((id, label)) = l
            .strip_prefix('"')
            .and_then(|r| r.split_once("\" [label=\""))
            && let Some((n, _)) = label.split_once(". ")
            && let Ok(n) = n.parse::<usize>()
        {
            ids.push((n, untimed(id)));
        }
    }
    ids.sort();
    ids
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn lab_plan_apply_converge_stale_lock_and_kill() {
    let _lab = Lab::fresh();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let spec = hourly_spec(dir.path());

    // --- a fresh lab has work to do; the four renderers show the same plan
    let text = sk_expect(&state, &spec, &["plan", "--output", "text"], 2).stdout;
    let json = sk_expect(&state, &spec, &["plan", "--output", "json"], 2).stdout;
    let md = sk_expect(&state, &spec, &["plan", "--output", "markdown"], 2).stdout;
    let dot = sk_expect(&state, &spec, &["plan", "--output", "dot"], 2).stdout;
    let (json_s, json_ids) = json_shape(&json);
    assert!(
        json_s.steps.len() >= 4,
        "a fresh lab needs snapshots, replication, read-only replicas: {json}"
    );
    assert_eq!(text_shape(&text), json_s, "text vs json:\n{text}\n{json}");
    assert_eq!(
        markdown_shape(&md),
        json_s,
        "markdown vs json:\n{md}\n{json}"
    );
    assert_eq!(dot_ids(&dot), json_ids, "dot vs json:\n{dot}\n{json}");
    let ids: BTreeSet<&String> = json_ids.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), json_ids.len(), "action ids are unique: {json}");
    // reconcile --dry-run is exactly plan
    let dry = sk_expect(
        &state,
        &spec,
        &["reconcile", "--dry-run", "--output", "json"],
        2,
    );
    assert_eq!(json_shape(&dry.stdout).0, json_s);

    // --- a saved plan goes stale when a host changes
    let saved = dir.path().join("plan.json");
    let saved_s = saved.to_str().expect("utf-8 path");
    sk_expect(&state, &spec, &["plan", "--out", saved_s], 2);
    assert!(saved.exists(), "plan --out wrote nothing");
    exec_ok(
        "node-a",
        &["/var/lib/sk-lab/bin/sk-instance", "stop", "staff"],
    );
    let stale = sk_expect(&state, &spec, &["apply", "--plan", saved_s], 1);
    assert!(stale.stderr.contains("stale plan"), "{stale}");
    assert!(
        journal(&state).is_empty(),
        "a stale plan ran actions: {:?}",
        journal(&state)
    );
    // the refused plan did not start staff again
    let st = exec(
        "node-a",
        &["/var/lib/sk-lab/bin/sk-instance", "status", "staff"],
    );
    assert_eq!(st.status.code(), Some(3), "staff restarted by a stale plan");

    // --- a lock held by another controller refuses apply, naming the holder
    let lock = "/var/run/spoolkeeper.lab.lock";
    exec_ok(
        "node-a",
        &[
            "ln",
            "-s",
            "spoolkeeper:other-controller:4242:1800000000",
            lock,
        ],
    );
    let refused = sk_expect(&state, &spec, &["apply"], 1);
    assert!(
        refused.stderr.contains("other-controller") && refused.stderr.contains("4242"),
        "the refusal must name the holder: {refused}"
    );
    assert!(journal(&state).is_empty(), "actions ran without the lock");
    assert_eq!(
        exec_ok("node-a", &["readlink", lock]).trim(),
        "spoolkeeper:other-controller:4242:1800000000",
        "the foreign lock was touched"
    );

    // --- --force-unlock breaks it; SIGKILL the apply right after its first completed action
    let started = Instant::now();
    let mut child = sk_spawn(&state, &spec, &["apply", "--force-unlock"]);
    let first_done = eventually(Duration::from_secs(60), || {
        journal(&state)
            .into_iter()
            .find(|r| r["phase"] == "done")
            .map(|r| r["action"].as_str().unwrap_or_default().to_string())
    });
    child.kill().expect("SIGKILL apply");
    let killed = child.wait_with_output().expect("wait apply");
    let first_done = first_done
        .unwrap_or_else(|| panic!("no action completed in 60 s: {}", Run::from(killed.clone())));
    assert_eq!(killed.status.code(), None, "apply was killed by a signal");
    let records = journal(&state);
    let done: Vec<&serde_json::Value> = records.iter().filter(|r| r["phase"] == "done").collect();
    let total = json_s.steps.len();
    assert!(
        done.len() < total,
        "the kill came too late to test a resume ({} of {total} actions done)",
        done.len()
    );
    eprintln!(
        "killed apply after {:?}: {} done (first {first_done})",
        started.elapsed(),
        done.len()
    );
    // the dead apply's lock is still there: ours (this machine), pid of the dead process
    let held = exec_ok("node-a", &["readlink", lock]);
    assert!(
        held.contains(&format!(":{}:", killed_pid_hint(&records))),
        "lock after the kill: {held}"
    );

    // --- apply again: takes over the stale lock, converges without redoing completed steps
    let t = Instant::now();
    let again = sk(&state, &spec, &["apply", "-v"]);
    eprintln!("resumed apply: {:?}", t.elapsed());
    assert_eq!(again.code, Some(0), "{again}");
    assert!(
        again.stderr.contains("breaking the cluster lock"),
        "the stale lock of the dead apply was not reported as taken over: {again}"
    );
    let converged = sk_expect(&state, &spec, &["plan"], 0);
    assert!(converged.stdout.contains("No changes"), "{converged}");
    assert!(
        !exec_ok("node-a", &["ls", "/var/run"]).contains("spoolkeeper.lab.lock"),
        "apply left its lock behind"
    );
    // each action the killed run completed ran once: no second `done` for the same snapshot
    let records = journal(&state);
    let snaps_done: Vec<String> = records
        .iter()
        .filter(|r| r["phase"] == "done" && r["done"]["kind"] == "snapshot")
        .map(|r| r["done"].to_string())
        .collect();
    let unique: BTreeSet<&String> = snaps_done.iter().collect();
    assert_eq!(unique.len(), snaps_done.len(), "a snapshot was taken twice");
    // and the lab really converged: staff runs again on node-a only, replicas read-only
    let st = exec(
        "node-a",
        &["/var/lib/sk-lab/bin/sk-instance", "status", "staff"],
    );
    assert_eq!(st.status.code(), Some(0), "staff not running on node-a");
    for ds in ["zdata/imap/students", "zdata/imap/staff"] {
        assert_eq!(zfs_prop("node-b", ds, "readonly"), "on", "{ds} on node-b");
    }

    // --- a no-op reconcile: figures for the report
    let t = Instant::now();
    let noop = sk(&state, &spec, &["reconcile", "-v"]);
    let wall = t.elapsed();
    assert_eq!(noop.code, Some(0), "{noop}");
    let trips = noop
        .stderr
        .lines()
        .find(|l| l.contains("round_trips="))
        .unwrap_or_else(|| panic!("reconcile -v logs no round_trips=: {noop}"))
        .to_string();
    assert!(
        noop.stdout.contains("No changes"),
        "a no-op reconcile changed something: {noop}"
    );
    eprintln!("no-op reconcile: {wall:?}; {trips}");
}

/// The pid in the `run` of the killed apply's journal records (`<epoch>-<pid>`).
fn killed_pid_hint(records: &[serde_json::Value]) -> String {
    records
        .first()
        .and_then(|r| r["run"].as_str())
        // `START-PID-N`
        .and_then(|r| r.split('-').nth(1))
        .map(str::to_string)
        .unwrap_or_default()
}
