//! The cluster lock on the real lab: it serialises controllers that hold different spec
//! revisions, and of many controllers racing to take a stale lock over, never two act at
//! once (the journal's runs never overlap).
//!
//! Ignored by plain `cargo test`: `cargo xtask ci` runs it as root, one lab test at a time.

mod common;

use std::collections::BTreeMap;

use common::sk::*;
use common::*;

const LOCK: &str = "/var/run/spoolkeeper.lab.lock";

/// A pid of this machine that no longer runs.
fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().expect("spawn");
    let pid = c.id();
    c.wait().expect("wait");
    pid
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn the_lock_serialises_spec_revisions_and_racing_takers() {
    let _lab = Lab::fresh();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let on_a = lab_spec();
    let on_b = spec_variant(
        dir.path(),
        "lab-b.yaml",
        &[("active: node-a", "active: node-b")],
    );
    for _ in 0..4 {
        if sk(&state, &on_a, &["apply"]).code == Some(0)
            && sk(&state, &on_a, &["plan"]).code == Some(0)
        {
            break;
        }
    }

    // --- a controller holding the old revision (active: node-a) is applying: its lock, with
    // a live lease, is on node-a. A controller with the new revision (active: node-b) must
    // wait, although its own active node is another one.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let other = format!("spoolkeeper2:ctl-old:b00t:4242:{now}:{}", now + 3600);
    exec_ok("node-a", &["ln", "-s", &other, LOCK]);
    let refused = sk(&state, &on_b, &["apply"]);
    assert_eq!(refused.code, Some(1), "{refused}");
    assert!(
        refused.stderr.contains("ctl-old") && refused.stderr.contains("node-a"),
        "the refusal must name the holder and where: {refused}"
    );
    assert!(
        !journal(&state).iter().any(|r| r["action"]
            .as_str()
            .is_some_and(|a| a.contains("stop_instance"))),
        "the switchover started under another controller's lock"
    );
    assert_eq!(exec_ok("node-a", &["readlink", LOCK]).trim(), other);
    // nothing was left behind on the hosts it did lock before refusing
    for h in ["node-b", "smtp-arch"] {
        assert!(
            !exec(h, &["test", "-L", LOCK]).status.success(),
            "a lock was left on {h}"
        );
    }
    exec_ok("node-a", &["rm", "-f", LOCK]);

    // --- a stale lock (a dead process of this controller) on every host, and eight
    // controllers racing to take it over, each with a plan to run (the instances stopped)
    // this controller as the lock records it (the same reading the binary makes)
    let me = spoolkeeper::state::lock::local();
    let stale = format!(
        "spoolkeeper2:{}:{}:{}:{now}:{}",
        me.host,
        me.boot,
        dead_pid(),
        now + 3600
    );
    for h in ["node-a", "node-b", "smtp-arch"] {
        exec_ok(h, &["ln", "-s", &stale, LOCK]);
    }
    for i in ["students", "staff"] {
        exec_ok("node-a", &["/var/lib/sk-lab/bin/sk-instance", "stop", i]);
    }
    let before = journal(&state).len();
    let racers: Vec<_> = (0..8)
        .map(|_| sk_spawn(&state, &on_a, &["apply"]))
        .collect();
    let outs: Vec<Run> = racers
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait").into())
        .collect();
    let winners = outs.iter().filter(|r| r.code == Some(0)).count();
    assert!(winners >= 1, "nobody took the stale lock over: {}", outs[0]);
    for r in outs.iter().filter(|r| r.code != Some(0)) {
        assert!(
            r.stderr.contains("holds the lock"),
            "a loser must say who holds the lock: {r}"
        );
    }
    // never two at once: the runs' journal records never interleave in time
    let mut spans: BTreeMap<String, (jiff::Timestamp, jiff::Timestamp)> = BTreeMap::new();
    for r in &journal(&state)[before..] {
        let run = r["run"].as_str().unwrap_or_default().to_string();
        let at: jiff::Timestamp = r["at"].as_str().unwrap_or_default().parse().expect("time");
        let e = spans.entry(run).or_insert((at, at));
        e.0 = e.0.min(at);
        e.1 = e.1.max(at);
    }
    assert!(!spans.is_empty(), "no run acted");
    let mut v: Vec<&(jiff::Timestamp, jiff::Timestamp)> = spans.values().collect();
    v.sort();
    for w in v.windows(2) {
        assert!(
            w[0].1 < w[1].0,
            "two applies acted at once: {:?} and {:?}",
            w[0],
            w[1]
        );
    }
    // the instances run again, and no lock is left
    for i in ["students", "staff"] {
        assert_eq!(
            exec("node-a", &["/var/lib/sk-lab/bin/sk-instance", "status", i])
                .status
                .code(),
            Some(0)
        );
    }
    for h in ["node-a", "node-b", "smtp-arch"] {
        assert!(
            !exec(h, &["test", "-L", LOCK]).status.success(),
            "a lock was left on {h}"
        );
    }
}
