//! The seed's topology on the lab (issue 15): the staff instance has its own Postfix
//! (multi-instance, `mail: { in: runtime, postfix: { config_directory: /etc/postfix/staff } }`,
//! its queue on the instance's dataset, so replicated with the mail). Mail it accepts is BCC'd
//! and held; deliveries still queued when the active loses power arrive on the promoted
//! replica as queue files, and the failover delivers each exactly once (queue files plus the
//! archive replay); the returning node is resynced and a switchover back loses nothing.
//!
//! Ignored by plain `cargo test`: `cargo xtask ci` runs it as root, alone.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::sk::*;
use common::*;

const USER: &str = "carol@staff.lab";
const OWN: &str = "/etc/postfix/staff";

/// The lab spec with `active`, snapshots and replication every `every`.
fn spec(dir: &Path, active: &str, every: &str) -> PathBuf {
    spec_variant(
        dir,
        &format!("lab-{active}-{every}.yaml"),
        &[
            ("active: node-a", &format!("active: {active}")),
            (
                "prefix: sk\n    every: 1m",
                &format!("prefix: sk\n    every: {every}"),
            ),
            (
                "replication:\n    every: 1m",
                &format!("replication:\n    every: {every}"),
            ),
            ("rpo: 10m", "rpo: 7d"),
        ],
    )
}

fn converge(state: &Path, spec: &Path, max: usize) {
    for _ in 0..max {
        sk_expect(state, spec, &["apply"], 0);
        if sk(state, spec, &["plan"]).code == Some(0) {
            return;
        }
    }
    panic!(
        "not converged after {max} applies: {}",
        sk(state, spec, &["plan"])
    );
}

/// Held copies on smtp-arch for USER's archive address.
fn held() -> usize {
    exec_ok("smtp-arch", &["postqueue", "-j"])
        .lines()
        .filter(|l| l.contains("\"queue_name\": \"hold\"") || l.contains("\"queue_name\":\"hold\""))
        .filter(|l| l.contains("carol=staff.lab@archive.lab"))
        .count()
}

/// Queue ids of USER's deliveries still queued in staff's own Postfix on `node`.
fn queued_on(node: &str) -> Vec<String> {
    exec_ok(node, &["postqueue", "-c", OWN, "-j"])
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["recipients"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["address"] == USER))
        })
        .filter_map(|v| v["queue_id"].as_str().map(str::to_owned))
        .collect()
}

fn runs_on(node: &str) -> bool {
    exec(
        node,
        &["/var/lib/sk-lab/bin/sk-instance", "status", "staff"],
    )
    .status
    .code()
        == Some(0)
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn an_instance_with_its_own_postfix_is_archived_and_fails_over_with_its_queue() {
    let _lab = Lab::fresh();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let st = state.as_path();
    let hourly_a = spec(dir.path(), "node-a", "1h");
    let hourly_b = spec(dir.path(), "node-b", "1h");
    converge(st, &hourly_a, 4);
    // the plan wrote the instance's own BCC table, through its config_directory
    let bcc = exec_ok(
        "node-a",
        &["postconf", "-c", OWN, "-h", "recipient_bcc_maps"],
    );
    assert!(bcc.contains("/etc/postfix/staff/"), "{bcc}");
    let node_bcc = exec_ok("node-a", &["cat", "/etc/postfix/spoolkeeper-bcc.regexp"]);
    assert!(!node_bcc.contains("staff"), "the node's table: {node_bcc}");

    // 1. accepted by the instance's own Postfix: delivered and held
    let mut accepted: BTreeSet<String> = send("staff", USER, 5).into_iter().collect();
    exactly_once("staff", USER, &accepted, Duration::from_secs(60));
    assert!(
        eventually(Duration::from_secs(60), || (held() >= 5).then_some(())).is_some(),
        "{} held copies for {USER}",
        held()
    );

    // 2. deliveries that cannot happen yet stay queued on the dataset, are snapshotted and
    // replicated as queue files; then node-a loses power
    exec_ok(
        "node-a",
        &["postconf", "-c", OWN, "-e", "defer_transports=lmtp"],
    );
    exec_ok("node-a", &["postfix", "-c", OWN, "reload"]);
    let queued: BTreeSet<String> = send("staff", USER, 6).into_iter().collect();
    let files = eventually(Duration::from_secs(30), || {
        let q = queued_on("node-a");
        (q.len() >= 6).then_some(q)
    })
    .unwrap_or_else(|| panic!("queued on node-a: {:?}", queued_on("node-a")));
    accepted.extend(queued);
    let every_second = spec(dir.path(), "node-a", "1s");
    sk_expect(st, &every_second, &["apply"], 0); // snapshot + replication of the queue files
    lab_ok(&["kill", "node-a"]);

    // 3. the one-line edit: node-b's copy of staff comes up with the queue files and delivers
    // them; the replay adds nothing twice
    let fo = sk(st, &hourly_b, &["apply"]);
    assert_eq!(fo.code, Some(0), "failover: {fo}");
    assert!(runs_on("node-b"));
    exactly_once("staff", USER, &accepted, Duration::from_secs(120));
    // the queue files came with the replica: node-b's own Postfix delivered them under the
    // queue ids node-a gave them (nothing replayed in their place)
    let log = exec_ok("node-b", &["cat", "/var/log/postfix-staff.log"]);
    for id in &files {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("{id}: to=<{USER}>")) && l.contains("status=sent")),
            "queue file {id} was not delivered on node-b:\n{log}"
        );
    }

    // 4. node-a returns: resynced from node-b, its own Postfix does not run there
    lab_ok(&["boot", "node-a"]);
    // (the deferral was node-a's own configuration, kept across the power loss)
    exec_ok("node-a", &["postconf", "-c", OWN, "-X", "defer_transports"]);
    converge(st, &hourly_b, 6);
    assert!(!runs_on("node-a"));
    assert_eq!(zfs_prop("node-a", "zdata/imap/staff", "readonly"), "on");
    exactly_once("staff", USER, &accepted, Duration::from_secs(60));

    // 5. switchover back under the instance's own Postfix
    accepted.extend(send("staff", USER, 4));
    converge(st, &hourly_a, 6);
    assert!(runs_on("node-a") && !runs_on("node-b"));
    accepted.extend(send("staff", USER, 3));
    exactly_once("staff", USER, &accepted, Duration::from_secs(90));
}
