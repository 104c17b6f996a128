//! The lab itself: mail round trip on both instances, a network cut, a power loss.
//! Needs root and the lab's packages: run by `cargo xtask ci`
//! (`cargo test --test 'lab_*' -- --ignored --test-threads=1`).

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(90);

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn lab_mail_round_trip_cut_and_power_loss() {
    let lab_guard = Lab::fresh();

    // --- 20 messages over the two instances, read back over IMAP
    let students = send("students", "alice@students.lab", 12);
    let staff = send("staff", "bob@staff.lab", 8);
    assert_eq!(
        students.len(),
        12,
        "every students message gets one accepted Message-ID"
    );
    assert_eq!(
        staff.len(),
        8,
        "every staff message gets one accepted Message-ID"
    );
    let students: BTreeSet<String> = students.into_iter().collect();
    let staff: BTreeSet<String> = staff.into_iter().collect();
    assert_eq!(students.len() + staff.len(), 20, "Message-IDs are unique");
    assert!(students.is_disjoint(&staff));
    wait_for_mailbox("students", "alice@students.lab", &students, PATIENCE);
    wait_for_mailbox("staff", "bob@staff.lab", &staff, PATIENCE);
    // the mail lives on node-a's instance dataset
    let files = exec_ok(
        "node-a",
        &[
            "find",
            "/zdata/imap/students/alice/Maildir",
            "-type",
            "f",
            "-path",
            "*/new/*",
        ],
    );
    assert_eq!(
        lines(&files).len(),
        12,
        "12 Maildir files on node-a: {files}"
    );
    // nobody else's mailbox got them
    assert_eq!(imap_ids("students", "carol@students.lab"), Ok(vec![]));

    // --- site routing: archive.lab goes from the node to smtp-arch, which holds it
    let archived = send("students", "alice=students.lab@archive.lab", 1);
    assert_eq!(archived.len(), 1);
    let held = eventually(PATIENCE, || {
        let q = String::from_utf8_lossy(&ssh(SMTP_ARCH, &["postqueue", "-j"]).stdout).into_owned();
        q.lines()
            .any(|l| {
                l.contains("\"queue_name\": \"hold\"")
                    && l.contains("alice=students.lab@archive.lab")
            })
            .then_some(())
    });
    assert!(
        held.is_some(),
        "smtp-arch never put the archive.lab message on hold"
    );

    // --- network cut of node-a
    assert!(
        ssh(NODE_A, &["zfs", "list"]).status.success(),
        "node-a answers ssh before the cut"
    );
    lab_ok(&["cut", "node-a"]);
    assert!(
        !tcp_open(NODE_A, 22, Duration::from_secs(3)),
        "node-a:22 reachable while cut"
    );
    assert!(
        !ssh(NODE_A, &["true"]).status.success(),
        "ssh to node-a works while cut"
    );
    assert!(
        ssh(NODE_B, &["true"]).status.success(),
        "cutting node-a must not cut node-b"
    );
    lab_ok(&["heal", "node-a"]);
    let back = eventually(PATIENCE, || {
        ssh(NODE_A, &["zfs", "list", "-H", "-o", "name"])
            .status
            .success()
            .then_some(())
    });
    assert!(back.is_some(), "node-a unreachable after heal");

    // --- power loss of node-b: pool and committed data survive
    exec_ok("node-b", &["zfs", "create", "zdata/scratch"]);
    exec_ok(
        "node-b",
        &[
            "sh",
            "-c",
            "echo survived-the-power-loss > /zdata/scratch/proof",
        ],
    );
    // a snapshot commits the transaction group: the file is on disk before the plug is pulled
    exec_ok("node-b", &["zfs", "snapshot", "zdata/scratch@before-kill"]);
    lab_ok(&["kill", "node-b"]);
    assert!(
        !ssh(NODE_B, &["true"]).status.success(),
        "node-b answers ssh after kill"
    );
    let left = std::process::Command::new("ip")
        .args(["netns", "pids", "sk-node-b"])
        .output()
        .expect("ip netns pids");
    assert!(
        left.stdout.is_empty(),
        "processes of node-b survive the kill: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    lab_ok(&["boot", "node-b"]);
    let up = eventually(PATIENCE, || {
        ssh(NODE_B, &["true"]).status.success().then_some(())
    });
    assert!(up.is_some(), "node-b unreachable after boot");
    let health = ssh(NODE_B, &["zpool", "list", "-H", "-o", "name,health"]);
    assert_eq!(
        String::from_utf8_lossy(&health.stdout).trim(),
        "zdata\tONLINE"
    );
    let proof = ssh(NODE_B, &["cat", "/zdata/scratch/proof"]);
    assert_eq!(
        String::from_utf8_lossy(&proof.stdout).trim(),
        "survived-the-power-loss"
    );
    let snaps = ssh(
        NODE_B,
        &["zfs", "list", "-H", "-t", "snapshot", "-o", "name"],
    );
    assert!(
        lines(&String::from_utf8_lossy(&snaps.stdout))
            .contains(&"zdata/scratch@before-kill".to_string())
    );
    // node-a kept serving all along
    wait_for_mailbox("students", "alice@students.lab", &students, PATIENCE);

    // --- down leaves nothing behind
    drop(lab_guard);
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains("sk-"),
        "namespaces left behind"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    assert!(
        !mounts.contains("sk-lab") && !mounts.contains("/zdata"),
        "mounts left behind:\n{mounts}"
    );
    assert!(
        !std::path::Path::new("/var/lib/sk-lab").exists(),
        "lab folder left behind"
    );
}
