//! Lab tests of snapshots, retention and replication (issue 6): first full send, incremental after
//! new mail with equal guids on both sides and a read-only replica, a foreign snapshot survives
//! pruning, a diverged replica blocks the plan (exit 3), a link cut during a send leaves the
//! replica at its previous snapshot and the next apply completes.
//! Needs root and the lab: run by `cargo xtask ci`
//! (`cargo test --test lab_replication -- --ignored --test-threads=1`).

mod common;

use common::sk::*;
use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const DATASETS: [&str; 2] = ["zdata/imap/students", "zdata/imap/staff"];

/// Snapshot `name\tguid` pairs of the instance datasets on `host`.
fn instance_snaps(host: &str) -> Vec<(String, String)> {
    snapshot_guids(host, "zdata/imap")
}

fn snaps_of(all: &[(String, String)], dataset: &str) -> Vec<String> {
    all.iter()
        .filter_map(|(n, _)| n.strip_prefix(&format!("{dataset}@")))
        .map(String::from)
        .collect()
}

/// Every spoolkeeper snapshot of node-a is on node-b with the same guid, and vice versa.
fn assert_replica_matches(what: &str) {
    let a = instance_snaps("node-a");
    let b = instance_snaps("node-b");
    let sk = |v: &[(String, String)]| -> BTreeSet<(String, String)> {
        v.iter()
            .filter(|(n, _)| n.contains("@sk_"))
            .cloned()
            .collect()
    };
    assert!(!sk(&a).is_empty(), "{what}: node-a has no sk_ snapshot");
    // node-b may still hold an old base that node-a pruned in the same run (the passive
    // prunes it on the next run): what must hold is every node-a snapshot on node-b, same guid
    assert!(
        sk(&a).is_subset(&sk(&b)),
        "{what}: node-a's snapshots are not all on node-b with equal guids\nnode-a {a:?}\nnode-b {b:?}"
    );
    for ds in DATASETS {
        assert_eq!(zfs_prop("node-b", ds, "readonly"), "on", "{what}: {ds}");
    }
}

/// Waits past the spec's `every: 10s` so that the next plan takes a snapshot.
fn next_snapshot_due() {
    std::thread::sleep(Duration::from_secs(11));
}

fn apply_ok(state: &Path, spec: &Path, what: &str) -> Run {
    let t = Instant::now();
    let r = sk(state, spec, &["apply"]);
    eprintln!("apply ({what}): {:?}", t.elapsed());
    assert_eq!(r.code, Some(0), "apply ({what}): {r}");
    r
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn lab_snapshots_replication_retention_divergence_and_cut() {
    let _lab = Lab::fresh();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    // snapshots every 10 s (rpo 10m stays above it)
    let spec = spec_variant(dir.path(), "lab-10s.yaml", &[("every: 1m", "every: 10s")]);

    // --- first apply: full streams, equal guids, read-only replica
    let first = apply_ok(&state, &spec, "fresh lab");
    assert!(first.stdout.contains("(full stream)"), "{first}");
    assert_replica_matches("after the first apply");
    let before = instance_snaps("node-b");

    // --- new mail, a new snapshot due: an incremental stream, guids equal again
    let ids: BTreeSet<String> = send("students", "dora@students.lab", 5)
        .into_iter()
        .collect();
    assert_eq!(ids.len(), 5);
    wait_for_mailbox(
        "students",
        "dora@students.lab",
        &ids,
        Duration::from_secs(60),
    );
    next_snapshot_due();
    let plan = sk_expect(&state, &spec, &["plan"], 2);
    assert!(plan.stdout.contains("incremental from @sk_"), "{plan}");
    // the lab's nodes have zstd (a lab package): the stream is compressed on the wire, and
    // the replica still matches the source snapshot for snapshot, guid for guid
    assert!(
        plan.stdout.contains("| zstd -1 -T0 -q -c | ssh")
            && plan.stdout.contains("zstd -d -q -c | zfs receive"),
        "{plan}"
    );
    apply_ok(&state, &spec, "incremental");
    assert_replica_matches("after the incremental");
    let after = instance_snaps("node-b");
    assert!(
        snaps_of(&after, "zdata/imap/students").len()
            > snaps_of(&before, "zdata/imap/students").len(),
        "no new replicated snapshot of students: {after:?}"
    );

    // --- a foreign snapshot survives pruning; spoolkeeper's own are pruned (the lab policy
    // keeps the newest snapshot of each hour, the replication base and the newest: snapshots
    // every 10 s within one hour leave older sk_ snapshots to prune)
    let own = |v: &[(String, String)]| -> BTreeSet<String> {
        snaps_of(v, "zdata/imap/staff")
            .into_iter()
            .filter(|s| s.starts_with("sk_"))
            .collect()
    };
    let mut seen = own(&before);
    seen.extend(own(&instance_snaps("node-a")));
    exec_ok("node-a", &["zfs", "snapshot", "zdata/imap/staff@manual"]);
    for round in ["third snapshot", "fourth snapshot"] {
        next_snapshot_due();
        apply_ok(&state, &spec, round);
        seen.extend(own(&instance_snaps("node-a")));
    }
    let a = instance_snaps("node-a");
    let now_own = own(&a);
    let pruned: Vec<&String> = seen.difference(&now_own).collect();
    assert!(
        seen.len() >= 3 && !pruned.is_empty(),
        "nothing was pruned on node-a (seen {seen:?}): {a:?}"
    );
    assert!(
        snaps_of(&a, "zdata/imap/staff").contains(&"manual".to_string()),
        "the foreign snapshot was destroyed on node-a: {a:?}"
    );
    let b = instance_snaps("node-b");
    for p in &pruned {
        assert!(
            !b.iter().any(|(n, _)| n == &format!("zdata/imap/staff@{p}")),
            "@{p} pruned on node-a but kept on node-b: {b:?}"
        );
    }
    if snaps_of(&b, "zdata/imap/staff").contains(&"manual".to_string()) {
        eprintln!("@manual was replicated to node-b and kept there");
    }
    assert_replica_matches("after pruning");

    // --- a diverged replica blocks the plan, and nothing is rolled back
    exec_ok("node-b", &["zfs", "snapshot", "zdata/imap/staff@oops"]);
    next_snapshot_due();
    let blocked = sk(&state, &spec, &["apply"]);
    assert_eq!(blocked.code, Some(3), "{blocked}");
    assert!(
        format!("{}{}", blocked.stdout, blocked.stderr).contains("diverged"),
        "{blocked}"
    );
    assert!(
        snaps_of(&instance_snaps("node-b"), "zdata/imap/staff").contains(&"oops".to_string()),
        "the diverged snapshot was rolled back"
    );
    // the operator resolves it; the next apply goes on
    exec_ok("node-b", &["zfs", "destroy", "zdata/imap/staff@oops"]);
    apply_ok(&state, &spec, "after resolving the divergence");
    assert_replica_matches("after resolving the divergence");

    // --- a link cut during a big incremental: replica stays at its previous snapshot
    exec_ok(
        "node-a",
        &[
            "dd",
            "if=/dev/urandom",
            "of=/zdata/imap/students/blob",
            "bs=1M",
            "count=200",
            "status=none",
        ],
    );
    let b_before = snaps_of(&instance_snaps("node-b"), "zdata/imap/students");
    next_snapshot_due();
    let journal_len = journal(&state).len();
    let child = sk_spawn(&state, &spec, &["apply"]);
    let sending = eventually(Duration::from_secs(60), || {
        journal(&state)
            .iter()
            .skip(journal_len)
            .any(|r| {
                r["phase"] == "start"
                    && r["action"]
                        .as_str()
                        .is_some_and(|a| a.contains("replicate:zdata/imap/students"))
            })
            .then_some(())
    });
    lab_ok(&["cut", "node-b"]);
    let t = Instant::now();
    let cut_run: Run = child.wait_with_output().expect("wait apply").into();
    eprintln!("apply with the link cut ended after {:?}", t.elapsed());
    lab_ok(&["heal", "node-b"]);
    assert!(
        sending.is_some(),
        "the students send never started: {cut_run}"
    );
    assert_eq!(
        cut_run.code,
        Some(1),
        "the cut must fail the send (did it finish before the cut?): {cut_run}"
    );
    let back = eventually(Duration::from_secs(60), || {
        ssh(NODE_B, &["true"]).status.success().then_some(())
    });
    assert!(back.is_some(), "node-b unreachable after heal");
    // consistent: exactly the snapshots it had, no partial one, guids still node-a's
    assert_eq!(
        snaps_of(&instance_snaps("node-b"), "zdata/imap/students"),
        b_before,
        "node-b's replica moved during a cut send"
    );
    let a_guids: BTreeSet<(String, String)> = instance_snaps("node-a").into_iter().collect();
    for s in instance_snaps("node-b")
        .into_iter()
        .filter(|(n, _)| n.starts_with("zdata/imap/students@sk_"))
    {
        assert!(a_guids.contains(&s), "{s:?} on node-b is not node-a's");
    }
    // the receive that lost its sender ends once its ssh session sees the EOF
    let idle = eventually(Duration::from_secs(90), || {
        // `-x zfs`: the process name only (`-f` would match the exec wrapper's own argv)
        (!exec("node-b", &["pgrep", "-x", "zfs"]).status.success()).then_some(())
    });
    assert!(
        idle.is_some(),
        "a zfs receive still runs on node-b after heal"
    );
    apply_ok(&state, &spec, "after heal");
    assert_replica_matches("after the cut and heal");
}

/// The relay transport: the stream flows through the controller (nodes need not trust each
/// other); full then incremental, guids equal, replica read-only, the plan says so.
#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn relay_replication_goes_through_the_controller() {
    let _lab = Lab::fresh();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let spec = spec_variant(
        dir.path(),
        "relay.yaml",
        &[
            ("transport: direct", "transport: relay"),
            ("every: 1m", "every: 10s"),
        ],
    );
    let plan = sk_expect(&state, &spec, &["plan"], 2);
    assert!(
        plan.stdout.contains("through the controller") && plan.stdout.contains("on controller:"),
        "{plan}"
    );
    // relayed, the stream crosses the controller compressed: zstd on both ends' halves
    assert!(
        plan.stdout.contains("| zstd -1 -T0 -q -c") && plan.stdout.contains("zstd -d -q -c |"),
        "{plan}"
    );
    apply_ok(&state, &spec, "relay: first full streams");
    assert_replica_matches("after a relayed full send");
    send("students", "relay@students.lab", 2);
    next_snapshot_due();
    let r = apply_ok(&state, &spec, "relay: incremental");
    assert!(r.stdout.contains("incremental from @sk_"), "{r}");
    assert_replica_matches("after a relayed incremental");
}
