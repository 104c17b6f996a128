//! Failover drills on the real lab, mirroring the simulator: a failover with a snapshot due on
//! the replica that lags several snapshots (the seed's hourly-snapshot, daily-replication
//! shape, compressed to seconds), power loss of the active in the middle of a large send, and
//! the controller killed (SIGKILL) at every action boundary of a switchover, a failover and a
//! resync plan, each rerun converging with every accepted message read back exactly once.
//! CI kills at a fixed sample of the boundaries (the middle of each plan:
//! `common::next_boundary`); `SK_LAB_FULL=1` kills at every one (the simulator explores every
//! boundary of every plan it makes, by seed).
//!
//! Ignored by plain `cargo test`: `cargo xtask ci` runs them as root, one at a time.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::sk::*;
use common::*;

const USER: &str = "drill@students.lab";

/// The lab spec with `active`, snapshots every `snap`, replication every `repl`.
fn spec(dir: &Path, active: &str, snap: &str, repl: &str) -> PathBuf {
    spec_variant(
        dir,
        &format!("lab-{active}-{snap}-{repl}.yaml"),
        &[
            ("active: node-a", &format!("active: {active}")),
            (
                "prefix: sk\n    every: 1m",
                &format!("prefix: sk\n    every: {snap}"),
            ),
            (
                "replication:\n    every: 1m",
                &format!("replication:\n    every: {repl}"),
            ),
            ("rpo: 10m", "rpo: 7d"),
        ],
    )
}

fn apply(state: &Path, spec: &Path) -> Run {
    sk(state, spec, &["apply"])
}

fn apply_ok(state: &Path, spec: &Path) -> Run {
    sk_expect(state, spec, &["apply"], 0)
}

/// Apply until the plan is empty (every run exit 0).
fn converge(state: &Path, spec: &Path, max: usize) {
    for _ in 0..max {
        apply_ok(state, spec);
        if sk(state, spec, &["plan"]).code == Some(0) {
            return;
        }
    }
    let p = sk(state, spec, &["plan"]);
    panic!("not converged after {max} applies: {p}");
}

/// `plan --output json`: the number of actions.
fn plan_len(state: &Path, spec: &Path) -> usize {
    let r = sk(state, spec, &["plan", "--output", "json"]);
    let v: serde_json::Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r}"));
    v["actions"].as_array().map_or(0, Vec::len)
}

/// apply, SIGKILLed by the test hook after `k` actions ended.
fn apply_killed_after(state: &Path, spec: &Path, k: usize) -> Run {
    sk_command(state, spec, &["apply"])
        .env("SPOOLKEEPER_TEST_KILL_AFTER_ACTIONS", k.to_string())
        .output()
        .expect("run spoolkeeper")
        .into()
}

fn runs_on(node: &str, instance: &str) -> bool {
    exec(
        node,
        &["/var/lib/sk-lab/bin/sk-instance", "status", instance],
    )
    .status
    .code()
        == Some(0)
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn failover_with_a_snapshot_due_on_a_replica_several_snapshots_behind() {
    let _lab = Lab::fresh();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let st = state.as_path();
    // Snapshots every 5s, replication every hour: at failover time the replica is several
    // snapshots behind and a snapshot is due on it.
    let on_a = spec(dir.path(), "node-a", "5s", "1h");
    let on_b = spec(dir.path(), "node-b", "5s", "1h");
    // Converging is "a plan with nothing to do": with snapshots every 5s that depends on how
    // fast each apply runs, so the cluster is set up and settled under hourly snapshots.
    converge(st, &spec(dir.path(), "node-a", "1h", "1h"), 4);
    let load = Load::start("students", USER, 150, 10, "180s");
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(5));
        apply_ok(st, &on_a); // a snapshot each time, none replicated
    }
    lab_ok(&["kill", "node-a"]);
    // The one-line edit; the fencing command fences node-a (already off).
    let fo = apply(st, &on_b);
    assert_eq!(fo.code, Some(0), "failover: {fo}");
    assert!(fo.stdout.contains("replay archived mail"), "{}", fo.stdout);
    let accepted: BTreeSet<String> = load.accepted().into_iter().collect();
    assert!(accepted.len() >= 100, "only {} accepted", accepted.len());
    exactly_once("students", USER, &accepted, Duration::from_secs(90));
    assert!(runs_on("node-b", "students"));
    // node-a comes back: preserved, resynced, nothing delivered twice.
    lab_ok(&["boot", "node-a"]);
    converge(st, &spec(dir.path(), "node-b", "1h", "1h"), 6);
    assert!(!runs_on("node-a", "students"));
    assert_eq!(zfs_prop("node-a", "zdata/imap/students", "readonly"), "on");
    exactly_once("students", USER, &accepted, Duration::from_secs(60));
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn power_loss_of_the_active_in_the_middle_of_a_large_send() {
    let _lab = Lab::fresh();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let st = state.as_path();
    let on_a = spec(dir.path(), "node-a", "5s", "5s");
    let on_b = spec(dir.path(), "node-b", "5s", "5s");
    converge(st, &spec(dir.path(), "node-a", "1h", "1h"), 4);
    let mut accepted: BTreeSet<String> = send("students", USER, 20).into_iter().collect();
    // 300 MB the replica lacks (incompressible), then a replication of it, cut by power loss.
    exec_ok(
        "node-a",
        &[
            "dd",
            "if=/dev/urandom",
            "of=/zdata/imap/students/bulk",
            "bs=1M",
            "count=300",
            "status=none",
        ],
    );
    std::thread::sleep(Duration::from_secs(6));
    let mut running = sk_spawn(st, &on_a, &["apply"]);
    let receiving = eventually(Duration::from_secs(60), || {
        let out = exec("node-b", &["pgrep", "-f", "zfs receive"]);
        out.status.success().then_some(())
    });
    assert!(receiving.is_some(), "the send never started");
    std::thread::sleep(Duration::from_millis(500));
    lab_ok(&["kill", "node-a"]);
    let interrupted = running.wait().expect("apply ends");
    assert!(
        !interrupted.success(),
        "the apply cut by power loss reported success"
    );
    let fo = apply(st, &on_b);
    assert_eq!(fo.code, Some(0), "failover after the cut send: {fo}");
    accepted.extend(send("students", USER, 10));
    exactly_once("students", USER, &accepted, Duration::from_secs(90));
    lab_ok(&["boot", "node-a"]);
    converge(st, &spec(dir.path(), "node-b", "1h", "1h"), 6);
    exactly_once("students", USER, &accepted, Duration::from_secs(60));
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn the_controller_killed_at_every_boundary_of_a_switchover_a_failover_and_a_resync() {
    let _lab = Lab::fresh();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let st = state.as_path();
    // Hourly schedules: no snapshot falls due during a sweep, so each plan is the move alone.
    let specs = [
        ("node-a", spec(dir.path(), "node-a", "1h", "1h")),
        ("node-b", spec(dir.path(), "node-b", "1h", "1h")),
    ];
    let other = |i: usize| (i + 1) % 2;
    let mut cur = 0usize;
    converge(st, &specs[cur].1, 4);
    let mut accepted: BTreeSet<String> = BTreeSet::new();
    let mut covered = Vec::new();

    // Switchover: every boundary (a fixed sample of them in CI), moving back and forth.
    let mut k = 0;
    let mut killed_at = Vec::new();
    loop {
        let to = other(cur);
        let n = plan_len(st, &specs[to].1);
        if k == 0 {
            k = first_boundary(n);
        }
        if k >= n {
            covered.push(format!(
                "switchover: killed after {killed_at:?} of {n} actions"
            ));
            break;
        }
        killed_at.push(k);
        accepted.extend(send("students", USER, 3));
        let killed = apply_killed_after(st, &specs[to].1, k);
        assert_eq!(
            killed.code, None,
            "switchover with kill after {k}: not killed: {killed}"
        );
        converge(st, &specs[to].1, 4);
        assert!(runs_on(specs[to].0, "students") && !runs_on(specs[cur].0, "students"));
        exactly_once_ctx(
            "students",
            USER,
            &accepted,
            Duration::from_secs(60),
            &format!("switchover to {} killed after {k}", specs[to].0),
        );
        cur = to;
        k = next_boundary(k, &[n]);
    }

    // Failover (power loss of the active), then the resync of the node that comes back: every
    // boundary of both plans (in CI: after the first action, then the middle of each).
    let mut k = 1;
    let (mut fo_done, mut rs_done) = (false, false);
    let (mut fo_at, mut rs_at) = (Vec::new(), Vec::new());
    while !(fo_done && rs_done) {
        let to = other(cur);
        accepted.extend(send("students", USER, 3));
        lab_ok(&["kill", specs[cur].0]);
        let n = plan_len(st, &specs[to].1);
        if k < n {
            fo_at.push(k);
            let killed = apply_killed_after(st, &specs[to].1, k);
            assert_eq!(
                killed.code, None,
                "failover with kill after {k}: not killed: {killed}"
            );
        } else if !fo_done {
            fo_done = true;
            covered.push(format!("failover: killed after {fo_at:?} of {n} actions"));
        }
        apply_ok(st, &specs[to].1);
        exactly_once_ctx(
            "students",
            USER,
            &accepted,
            Duration::from_secs(90),
            &format!("failover to {} killed after {k} of {n}", specs[to].0),
        );
        lab_ok(&["boot", specs[cur].0]);
        let m = plan_len(st, &specs[to].1);
        if k < m {
            rs_at.push(k);
            let killed = apply_killed_after(st, &specs[to].1, k);
            assert_eq!(
                killed.code, None,
                "resync with kill after {k}: not killed: {killed}"
            );
        } else if !rs_done {
            rs_done = true;
            covered.push(format!("resync: killed after {rs_at:?} of {m} actions"));
        }
        converge(st, &specs[to].1, 6);
        assert!(runs_on(specs[to].0, "students") && !runs_on(specs[cur].0, "students"));
        exactly_once_ctx(
            "students",
            USER,
            &accepted,
            Duration::from_secs(60),
            &format!("resync of {} killed after {k} of {m}", specs[cur].0),
        );
        cur = to;
        k = next_boundary(k, &[n, m]);
    }
    eprintln!("covered: {}", covered.join("; "));
}
