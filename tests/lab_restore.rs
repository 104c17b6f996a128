//! `spoolkeeper restore` against the real lab: a whole mailbox, one folder and a date range,
//! from a snapshot on the passive (the default reader) and from one only the active or only
//! the passive holds; the live folders keep the same messages and flags; a rerun restores
//! nothing new; every bad input is refused with nothing changed; no scratch clone or staged
//! copy is left behind.
//!
//! Ignored by plain `cargo test`: `cargo xtask ci` runs it as root, one lab test at a time.

mod common;

use std::path::Path;
use std::time::Duration;

use common::sk::*;
use common::*;

const USER: &str = "alice@students.lab";

/// The lab spec with hour-scale schedules: only the applies the test runs take snapshots.
fn quiet_spec(dir: &Path) -> std::path::PathBuf {
    spec_variant(
        dir,
        "lab.yaml",
        &[
            ("    every: 1m\n    keep:", "    every: 1h\n    keep:"),
            ("    every: 1m\n    rpo: 10m", "    every: 1h\n    rpo: 2h"),
        ],
    )
}

/// Every message of the live mailbox outside the restore folders: (folder, Message-ID, flags).
fn live(user: &str) -> Vec<(String, String, String)> {
    let out = exec_ok(
        "node-a",
        &[
            "doveadm",
            "-f",
            "tab",
            "fetch",
            "-u",
            user,
            "mailbox flags hdr.message-id",
            "ALL",
        ],
    );
    let mut v: Vec<(String, String, String)> = out
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.splitn(3, '\t').collect();
            (f.len() == 3).then(|| (f[0].to_owned(), f[2].trim().to_owned(), f[1].to_owned()))
        })
        .filter(|(m, _, _)| !m.starts_with("Restored"))
        .collect();
    v.sort();
    v
}

/// The Message-IDs (sorted, duplicates kept) and flags of one folder.
fn folder(user: &str, mailbox: &str) -> Vec<(String, String)> {
    let out = exec_ok(
        "node-a",
        &[
            "doveadm",
            "-f",
            "tab",
            "fetch",
            "-u",
            user,
            "hdr.message-id flags",
            "mailbox",
            mailbox,
        ],
    );
    let mut v: Vec<(String, String)> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, fl)| (id.trim().to_owned(), fl.to_owned()))
        .collect();
    v.sort();
    v
}

fn ids(v: &[(String, String)]) -> Vec<String> {
    v.iter().map(|(i, _)| i.clone()).collect()
}

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {r}"))
}

/// No scratch left: no `_restore_` dataset on either node, nothing staged.
fn no_scratch() {
    for n in ["node-a", "node-b"] {
        let all = exec_ok(n, &["zfs", "list", "-H", "-t", "all", "-o", "name"]);
        assert!(
            !all.contains("_restore_"),
            "a scratch clone is left on {n}:\n{all}"
        );
        let staged = exec(n, &["sh", "-c", "ls -A /var/tmp/spoolkeeper 2>/dev/null"]);
        assert_eq!(
            String::from_utf8_lossy(&staged.stdout).trim(),
            "",
            "a staged copy is left on {n}"
        );
    }
}

/// Writes a message straight into the Maildir with an old delivery date (Dovecot's received
/// date of a Maildir message is its file's mtime), as the mail user.
fn old_message(n: u32) -> String {
    let id = format!("<old-{n}@restore.lab>");
    let script = format!(
        "f=/zdata/imap/students/alice/Maildir/cur/15790{n}.M1P1.node-a:2,; \
         printf 'From: a@lab\\nMessage-ID: {id}\\nSubject: old {n}\\n\\nold\\n' > $f; \
         chown 5000:5000 $f; touch -d '2020-01-15 12:00:00' $f"
    );
    exec_ok("node-a", &["sh", "-c", &script]);
    id
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn restore_brings_back_a_mailbox_a_folder_and_a_date_range_exactly_once() {
    let _lab = Lab::fresh();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let spec = quiet_spec(dir.path());

    // --- a mailbox with an INBOX (recent and old mail) and a Work folder, one message seen
    let inbox: Vec<String> = send("students", USER, 5);
    wait_for_mailbox(
        "students",
        USER,
        &inbox.iter().cloned().collect(),
        Duration::from_secs(60),
    );
    let old: Vec<String> = (1..=3).map(old_message).collect();
    exec_ok(
        "node-a",
        &["doveadm", "mailbox", "create", "-u", USER, "Work"],
    );
    let mut work = Vec::new();
    for i in 0..2 {
        let id = format!("<work-{i}@restore.lab>");
        let msg = format!("From: b@lab\nMessage-ID: {id}\nSubject: work {i}\n\nwork\n");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '{}' | /var/lib/sk-lab/bin/sk-lab exec node-a doveadm save -u {USER} -m Work",
                msg.replace('\n', "\\n")
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        work.push(id);
    }
    exec_ok(
        "node-a",
        &[
            "doveadm", "flags", "add", "-u", USER, "\\Seen", "mailbox", "Work", "ALL",
        ],
    );
    // the snapshot, replicated to node-b
    sk_expect(&state, &spec, &["apply"], 0);
    let snaps = snapshot_guids("node-b", "zdata/imap/students");
    assert_eq!(snaps.len(), 1, "one replicated snapshot: {snaps:?}");

    // --- the user deletes everything, then new mail arrives
    exec_ok(
        "node-a",
        &["doveadm", "expunge", "-u", USER, "mailbox", "*", "ALL"],
    );
    let fresh: Vec<String> = send("students", USER, 2);
    wait_for_mailbox(
        "students",
        USER,
        &fresh.iter().cloned().collect(),
        Duration::from_secs(60),
    );
    let before = live(USER);
    assert_eq!(before.len(), 2);

    // --- --list: the one restore point, on both nodes
    let l = json(&sk_expect(
        &state,
        &spec,
        &[
            "restore",
            "--instance",
            "students",
            "--mailbox",
            USER,
            "--list",
            "--output",
            "json",
        ],
        0,
    ));
    assert_eq!(l["points"].as_array().unwrap().len(), 1, "{l}");
    assert_eq!(
        l["points"][0]["nodes"],
        serde_json::json!(["node-a", "node-b"])
    );
    assert_eq!(l["path"], "alice/Maildir");

    let base = [
        "restore",
        "--instance",
        "students",
        "--mailbox",
        USER,
        "--output",
        "json",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = |extra: &[&str], code: i32| -> Run {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sk_expect(&state, &spec, &args, code)
    };

    // --- dry run: counts, nothing imported
    let d = json(&run(&["--dry-run"], 0));
    assert_eq!(d["messages"], 10, "{d}");
    assert_eq!(d["read_on"], "node-b", "the passive reads by default: {d}");
    assert_eq!(d["read_through"], "clone");
    let root = d["folder"].as_str().unwrap().to_owned();
    assert!(root.starts_with("Restored."), "{root}");
    assert_eq!(live(USER), before);
    assert!(folder(USER, &format!("{root}.INBOX")).is_empty());
    no_scratch();

    // --- one folder: Work only, its flags kept
    let w = json(&run(&["--folder", "Work"], 0));
    assert_eq!(w["messages"], 2, "{w}");
    let got = folder(USER, &format!("{root}.Work"));
    let mut want = work.clone();
    want.sort();
    assert_eq!(ids(&got), want);
    assert!(
        got.iter().all(|(_, f)| f.contains("\\Seen")),
        "flags kept: {got:?}"
    );
    assert!(folder(USER, &format!("{root}.INBOX")).is_empty());

    // --- a date range: only the old messages (received 2020-01-15)
    let r = json(&run(&["--since", "2020-01-01", "--until", "2020-01-31"], 0));
    assert_eq!(r["messages"], 3, "{r}");
    let mut want = old.clone();
    want.sort();
    assert_eq!(ids(&folder(USER, &format!("{root}.INBOX"))), want);

    // --- the whole mailbox: the rest of INBOX, nothing twice
    let all = json(&run(&[], 0));
    assert_eq!(all["messages"], 5, "the 5 recent INBOX messages: {all}");
    assert_eq!(
        all["already"], 5,
        "Work (2) and the old (3) are there: {all}"
    );
    let mut want: Vec<String> = inbox.iter().chain(&old).cloned().collect();
    want.sort();
    assert_eq!(ids(&folder(USER, &format!("{root}.INBOX"))), want);
    assert_eq!(live(USER), before, "live folders untouched");

    // --- a rerun adds nothing
    let again = json(&run(&[], 0));
    assert_eq!(again["messages"], 0, "{again}");
    assert_eq!(again["already"], 10);
    assert_eq!(ids(&folder(USER, &format!("{root}.INBOX"))), want);
    no_scratch();

    // --- from the active's copy
    let a = json(&run(&["--node", "node-a", "--dry-run"], 0));
    assert_eq!(a["read_on"], "node-a", "{a}");
    assert_eq!(a["already"], 10);

    // --- bad inputs: refused, nothing changes
    let restored_before = ids(&folder(USER, &format!("{root}.INBOX")));
    let bad = |extra: &[&str], says: &str| {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = sk_expect(&state, &spec, &args, 1);
        assert!(
            r.stderr.contains(says),
            "`{says}` expected for {extra:?}: {r}"
        );
    };
    bad(&["--folder", "Nope"], "has no folder `Nope`");
    bad(&["--at", "2020-01-01T00:00:00Z"], "nearest:");
    bad(&["--snapshot", "sk_19990101T000000Z"], "no snapshot named");
    bad(
        &["--since", "2026-12-31", "--until", "2026-01-01"],
        "is after",
    );
    bad(&["--node", "node-c"], "no reachable node named node-c");
    let nobody = sk(
        &state,
        &spec,
        &[
            "restore",
            "--instance",
            "students",
            "--mailbox",
            "nobody@students.lab",
        ],
    );
    assert_eq!(nobody.code, Some(1), "{nobody}");
    assert!(
        nobody.stderr.contains("has no mail in snapshot"),
        "{nobody}"
    );
    let noinst = sk(
        &state,
        &spec,
        &["restore", "--instance", "nope", "--mailbox", USER],
    );
    assert_eq!(noinst.code, Some(1));
    assert!(noinst.stderr.contains("no cluster"), "{noinst}");

    // --- a snapshot only the passive holds, then the passive unreachable
    let (name, _) = &snaps[0];
    let short = name.split('@').nth(1).unwrap().to_owned();
    // a second snapshot, replicated (a spec whose snapshot is due at once)
    let due = spec_variant(
        dir.path(),
        "due.yaml",
        &[
            ("    every: 1m\n    keep:", "    every: 1s\n    keep:"),
            ("    every: 1m\n    rpo: 10m", "    every: 1s\n    rpo: 2h"),
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    sk_expect(&state, &due, &["apply"], 0);
    assert_eq!(snapshot_guids("node-b", "zdata/imap/students").len(), 2);
    // (its replication hold released first: an operator's destroy, not retention's)
    let full = format!("zdata/imap/students@{short}");
    exec_ok(
        "node-a",
        &[
            "sh",
            "-c",
            "zfs release spoolkeeper \"$1\"; zfs destroy \"$1\"",
            "sh",
            &full,
        ],
    );
    let p = json(&run(&["--snapshot", &short, "--dry-run"], 0));
    assert_eq!(p["read_on"], "node-b", "{p}");
    assert_eq!(p["already"], 10, "{p}");
    bad(
        &["--snapshot", &short, "--node", "node-a"],
        "no reachable node named node-a",
    );
    lab_ok(&["cut", "node-b"]);
    bad(&["--snapshot", &short], "node-b unreachable");
    // the newest snapshot is on the active too: read there while the passive is cut
    let fallback = json(&run(&["--dry-run"], 0));
    assert_eq!(fallback["read_on"], "node-a", "{fallback}");
    lab_ok(&["heal", "node-b"]);

    assert_eq!(
        ids(&folder(USER, &format!("{root}.INBOX"))),
        restored_before
    );
    assert_eq!(live(USER), before, "live folders untouched");
    no_scratch();
}
