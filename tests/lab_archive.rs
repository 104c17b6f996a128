//! Lab tests for the archive (issue 7): copies held on smtp-arch, and `arch-restore` after a
//! simulated loss brings back exactly the lost messages, once. Need the lab (root,
//! `cargo xtask lab up`); run by `cargo xtask ci`.
//!
//! Every test uses its own mailbox (a fresh local part), so tests of other engineers sharing
//! the lab do not disturb the counts. Waiting is polling with a deadline (mail delivery is
//! asynchronous); no assertion is about time.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use spoolkeeper::decide::restore::{self, MessageAction, Report};
use spoolkeeper::spec::Spec;

const DEADLINE: Duration = Duration::from_secs(180);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn lab_spec() -> Spec {
    let mut specs =
        spoolkeeper::cli::load::specs(&root().join("examples/lab.yaml")).expect("lab spec");
    specs.remove(0)
}

/// `cargo xtask lab ARGS…`: (exit code, stdout). Panics when cargo cannot be started.
fn lab(args: &[&str]) -> (i32, String) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args(["xtask", "lab"])
        .args(args)
        .output()
        .expect("run cargo xtask lab");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn lab_ok(args: &[&str]) -> String {
    let (code, out) = lab(args);
    assert_eq!(code, 0, "cargo xtask lab {args:?} failed: {out}");
    out
}

fn exec(host: &str, argv: &[&str]) -> String {
    let mut a = vec!["exec", host, "--"];
    a.extend_from_slice(argv);
    lab_ok(&a)
}

/// A mailbox nobody else uses.
fn fresh_user(tag: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("sk-{tag}-{}-{n}@students.lab", std::process::id())
}

fn send(to: &str, count: u32) -> Vec<String> {
    let n = count.to_string();
    let out = lab_ok(&["send", "--instance", "students", "--to", to, "--count", &n]);
    let ids: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(
        ids.len(),
        count as usize,
        "not every message accepted: {out}"
    );
    ids
}

/// Message-ID -> how many times the mailbox holds it.
fn imap(user: &str) -> BTreeMap<String, usize> {
    let out = lab_ok(&["imap", "--instance", "students", "--user", user, "--list"]);
    let mut m = BTreeMap::new();
    for l in out.lines().filter(|l| !l.is_empty()) {
        *m.entry(l.to_owned()).or_insert(0) += 1;
    }
    m
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Message-ID -> held copies on smtp-arch for the archive address of `user`.
fn held_for(user: &str) -> BTreeMap<String, usize> {
    let spec = lab_spec();
    let tpl = &spec.spec.archive.as_ref().expect("archive").address;
    let (local, domain) = user.split_once('@').expect("address");
    let archived = tpl.encode(local, domain);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let conns = spoolkeeper::observe::connect(&spec).await;
        let obs = spoolkeeper::observe::observe(&spec, &conns).await;
        let arch = conns.archive().expect("archive host reachable");
        let held: Vec<String> = obs
            .archive
            .as_ref()
            .and_then(|a| a.postfix.as_ref())
            .map(|p| {
                p.held()
                    .filter(|e| e.recipients.iter().any(|r| *r.address == *archived))
                    .map(|e| e.queue_id.to_string())
                    .collect()
            })
            .unwrap_or_default();
        let mut m = BTreeMap::new();
        for id in held {
            let argv = spoolkeeper::adapters::postfix_cmd::postcat_argv([id.as_str()]).expect("id");
            let out = arch.run(&argv).await.expect("postcat");
            if let Ok(d) = spoolkeeper::adapters::postfix_cmd::parse_postcat(&out.stdout) {
                for msg in d.messages {
                    if let Some(mid) = msg.message_id {
                        *m.entry(mid).or_insert(0) += 1;
                    }
                }
            }
        }
        m
    })
}

fn arch_restore(state: &Path) -> Report {
    let spec = lab_spec();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let conns = spoolkeeper::observe::connect(&spec).await;
        let obs = spoolkeeper::observe::observe(&spec, &conns).await;
        spoolkeeper::apply::replay::run(
            &spec,
            &conns,
            &obs,
            Some("students"),
            restore::Target::ACTIVE,
            false,
            state,
        )
        .await
        .expect("arch-restore runs")
    })
}

/// Configure the BCC maps and the archive host (the planner's job), with a private journal.
fn apply(state: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_spoolkeeper"))
        .current_dir(root())
        .args(["apply", "-f", "examples/lab.yaml", "--state-dir"])
        .arg(state)
        .output()
        .expect("run spoolkeeper apply");
    assert_eq!(
        out.status.code(),
        Some(0),
        "spoolkeeper apply: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn mail_accepted_by_a_spool_is_held_on_the_archive_host() {
    let _lab = common::Lab::fresh();
    let state = tempfile::tempdir().expect("tempdir");
    apply(state.path());
    let user = fresh_user("held");
    let ids = send(&user, 3);
    let held = wait_for("the BCC copies on smtp-arch", || {
        let h = held_for(&user);
        ids.iter().all(|i| h.contains_key(i)).then_some(h)
    });
    for i in &ids {
        assert_eq!(held[i], 1, "{i} held {} times", held[i]);
    }
    assert_eq!(
        held.len(),
        ids.len(),
        "held copies of unknown messages: {held:?}"
    );
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn arch_restore_brings_back_exactly_the_lost_messages_once() {
    let _lab = common::Lab::fresh();
    let state = tempfile::tempdir().expect("tempdir");
    apply(state.path());
    let user = fresh_user("loss");
    let ds = "zdata/imap/students";

    // before the snapshot: in the replica-to-be
    let before = send(&user, 2);
    wait_for("the first messages in the mailbox", || {
        let m = imap(&user);
        before.iter().all(|i| m.contains_key(i)).then_some(())
    });
    let snap = format!(
        "{ds}@restoretest-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    exec("node-a", &["zfs", "snapshot", &snap]);

    // after the snapshot: delivered and held, then lost
    let after = send(&user, 3);
    wait_for("the later messages delivered and held", || {
        let m = imap(&user);
        let h = held_for(&user);
        after
            .iter()
            .all(|i| m.contains_key(i) && h.contains_key(i))
            .then_some(())
    });
    let sk = "/var/lib/sk-lab/bin/sk-instance";
    exec("node-a", &[sk, "stop", "students"]);
    exec("node-a", &["zfs", "rollback", "-r", &snap]);
    exec("node-a", &[sk, "start", "students"]);
    let lost = imap(&user);
    for i in &after {
        assert!(
            !lost.contains_key(i),
            "{i} survived the rollback: no loss simulated"
        );
    }
    for i in &before {
        assert_eq!(lost.get(i), Some(&1), "{i} should be in the snapshot");
    }

    // restore
    let report = arch_restore(state.path());
    assert!(report.ok(), "{}", report.text());
    let mine: Vec<_> = report
        .messages
        .iter()
        .filter(|m| m.recipient == user)
        .collect();
    let mut replayed: Vec<String> = mine
        .iter()
        .filter(|m| m.action == MessageAction::Replayed)
        .filter_map(|m| m.message_id.clone())
        .collect();
    replayed.sort();
    let mut want = after.clone();
    want.sort();
    assert_eq!(replayed, want, "{}", report.text());
    for m in mine
        .iter()
        .filter(|m| before.contains(m.message_id.as_ref().unwrap_or(&String::new())))
    {
        assert_eq!(m.action, MessageAction::SkippedPresent, "{}", report.text());
    }

    // every message exactly once, read over IMAP
    let all = wait_for("the replayed messages in the mailbox", || {
        let m = imap(&user);
        after.iter().all(|i| m.contains_key(i)).then_some(m)
    });
    for i in before.iter().chain(&after) {
        assert_eq!(all.get(i), Some(&1), "{i} in the mailbox: {all:?}");
    }
    assert_eq!(all.len(), before.len() + after.len(), "{all:?}");

    // a rerun replays nothing (the replays' own archive copies included)
    let again = arch_restore(state.path());
    assert!(again.ok(), "{}", again.text());
    let replayed_again: Vec<_> = again
        .messages
        .iter()
        .filter(|m| m.recipient == user && m.action == MessageAction::Replayed)
        .collect();
    assert!(replayed_again.is_empty(), "{}", again.text());
    let all = imap(&user);
    for i in before.iter().chain(&after) {
        assert_eq!(all.get(i), Some(&1), "{i} after the rerun: {all:?}");
    }
    // leave no stray snapshot behind (it is the newest: nothing depends on it)
    let _ = lab(&["exec", "node-a", "--", "zfs", "destroy", &snap]);
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn with_the_archive_host_cut_mail_is_accepted_and_the_copies_arrive_after_heal() {
    let _lab = common::Lab::fresh();
    let state = tempfile::tempdir().expect("tempdir");
    apply(state.path());
    lab_ok(&["cut", "smtp-arch"]);
    let user = fresh_user("cut");
    let ids = send(&user, 3);
    // Delivered to the spool while the archive is away: nothing waits for it.
    wait_for("delivery while the archive host is cut", || {
        let m = imap(&user);
        ids.iter().all(|i| m.get(i) == Some(&1)).then_some(())
    });
    lab_ok(&["heal", "smtp-arch"]);
    // The copies waited in node-a's queue (deferred); let Postfix retry now.
    exec("node-a", &["postqueue", "-f"]);
    let held = wait_for("the BCC copies after heal", || {
        let h = held_for(&user);
        ids.iter().all(|i| h.contains_key(i)).then_some(h)
    });
    for i in &ids {
        assert_eq!(held[i], 1, "{i} held {} times", held[i]);
    }
}

/// apply with a spec file, private journal.
fn apply_spec(state: &Path, spec: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_spoolkeeper"))
        .current_dir(root())
        .args(["apply", "-f"])
        .arg(spec)
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("run spoolkeeper apply");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "spoolkeeper apply: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn a_purge_deletes_only_copies_the_replica_holds() {
    let _lab = common::Lab::fresh();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    // Short schedules and margin so the test takes seconds, not hours.
    let text = std::fs::read_to_string(root().join("examples/lab.yaml"))
        .expect("lab spec")
        .replace("every: 1m", "every: 10s")
        .replace("margin: 1m", "margin: 5s");
    let spec = dir.path().join("lab-fast.yaml");
    std::fs::write(&spec, text).expect("write spec");

    apply_spec(&state, &spec); // datasets, first snapshot, full replication, BCC
    let user = fresh_user("purge");
    let before = send(&user, 3);
    wait_for("copies of the first batch", || {
        let h = held_for(&user);
        before.iter().all(|i| h.contains_key(i)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(12));
    // One apply: a snapshot after the first batch, its replication, and the purge that this
    // replication makes possible (ordered after it).
    let out = apply_spec(&state, &spec);
    assert!(out.contains("held copie(s)"), "no purge planned:\n{out}");
    let held = held_for(&user);
    for i in &before {
        assert!(
            !held.contains_key(i),
            "{i} is in the replicated snapshot but still held: {held:?}"
        );
    }
    // A batch after that snapshot stays held until a replica covers it.
    let after = send(&user, 3);
    wait_for("copies of the second batch", || {
        let h = held_for(&user);
        after.iter().all(|i| h.contains_key(i)).then_some(())
    });
    // (no snapshot can be due in this apply: the schedules are an hour)
    let slow = dir.path().join("lab-slow.yaml");
    std::fs::write(
        &slow,
        std::fs::read_to_string(root().join("examples/lab.yaml"))
            .expect("lab spec")
            .replace("every: 1m", "every: 1h")
            .replace("rpo: 10m", "rpo: 2h")
            .replace("margin: 1m", "margin: 5s"),
    )
    .expect("write spec");
    apply_spec(&state, &slow);
    let held = held_for(&user);
    for i in &after {
        assert_eq!(
            held.get(i),
            Some(&1),
            "{i} must stay held until a replica covers it: {held:?}"
        );
    }
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn an_owed_replay_waits_for_the_copies_still_queued_on_the_spool() {
    // simulator seed 1472: the copies of mail accepted while the archive host was away wait in
    // the spool's queue; a replay that read the archive before they reached it found nothing,
    // its debt was cleared, and the mail (in a copy since rolled back) was lost
    let _lab = common::Lab::fresh();
    let state = tempfile::tempdir().expect("tempdir");
    apply(state.path());
    let user = fresh_user("owed");
    let ds = "zdata/imap/students";
    let name = format!(
        "owedtest-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    let snap = format!("{ds}@{name}");
    exec("node-a", &["zfs", "snapshot", &snap]);

    // accepted and delivered while the archive host is cut: the copies wait in node-a's queue
    lab_ok(&["cut", "smtp-arch"]);
    let after = send(&user, 3);
    wait_for("delivery while the archive host is cut", || {
        let m = imap(&user);
        after.iter().all(|i| m.get(i) == Some(&1)).then_some(())
    });
    // the copy that served them is rolled back (a resync would), and a replay from the
    // snapshot is owed, as a failover records it
    let sk = "/var/lib/sk-lab/bin/sk-instance";
    exec("node-a", &[sk, "stop", "students"]);
    exec("node-a", &["zfs", "rollback", "-r", &snap]);
    exec("node-a", &[sk, "start", "students"]);
    let lost = imap(&user);
    assert!(
        after.iter().all(|i| !lost.contains_key(i)),
        "no loss simulated: {lost:?}"
    );
    exec(
        "node-a",
        &["zfs", "set", &format!("spoolkeeper:replay={name}"), ds],
    );
    lab_ok(&["heal", "smtp-arch"]);

    // the plan flushes node-a's queue and waits for those copies before the replay reads the
    // archive; the replay then brings every message back, once, and the debt is cleared
    let out = apply_spec(state.path(), &root().join("examples/lab.yaml"));
    let all = wait_for("the replayed messages in the mailbox", || {
        let m = imap(&user);
        after.iter().all(|i| m.contains_key(i)).then_some(m)
    });
    assert!(
        out.contains("reached the archive host"),
        "no wait for the queued copies in the plan:\n{out}"
    );
    for i in &after {
        assert_eq!(all.get(i), Some(&1), "{i} in the mailbox: {all:?}");
    }
    let owed = exec(
        "node-a",
        &["zfs", "get", "-H", "-o", "value", "spoolkeeper:replay", ds],
    );
    assert_eq!(
        owed.trim(),
        "-",
        "the replay is still owed after it completed"
    );
    let _ = lab(&["exec", "node-a", "--", "zfs", "destroy", &snap]);
}
