//! `cargo xtask demo`: the main job on the lab, end to end, as an operator would do it.
//!
//! Lab up → validate → plan → apply (datasets, snapshots, replication, archive BCC) → mail
//! flows and is read back → a switchover (one-line edit: active: node-b) → a power loss of
//! the active node and a fenced failover back to node-a (arch-restore replays what the
//! replica lacked) → the old node boots and is resynced → status → the controller on
//! second-scale schedules, its metrics, a clean stop → lab down.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use xtask::lab::{self, Host, Instance, smtp::SendOptions};

use crate::util::{cargo, root, run};

fn step(title: &str) {
    eprintln!("\n=============== {title}");
}

fn spoolkeeper(bin: &Path, args: &[&str], state: &Path) -> Result<i32, String> {
    eprintln!("$ spoolkeeper {}", args.join(" "));
    let st = Command::new(bin)
        .args(args)
        .env("SPOOLKEEPER_STATE_DIR", state)
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run spoolkeeper: {e}"))?;
    Ok(st.code().unwrap_or(1))
}

fn expect(code: i32, want: &[i32], what: &str) -> Result<(), String> {
    if want.contains(&code) {
        Ok(())
    } else {
        Err(format!("{what}: exit {code}, expected {want:?}"))
    }
}

fn send(instance: Instance, to: &str, count: u32) -> Result<Vec<String>, String> {
    let opts = SendOptions {
        instance,
        to: to.into(),
        from: "sender@upstream.lab".into(),
        count,
        rate: None,
        deadline: Duration::from_secs(120),
    };
    let mut sink = Vec::new();
    lab::send(&opts, &mut sink).map_err(|e| e.to_string())
}

fn read_back(instance: Instance, user: &str, want: &[String]) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let have = lab::imap_message_ids(instance, user).map_err(|e| e.to_string())?;
        let missing: Vec<&String> = want.iter().filter(|m| !have.contains(m)).collect();
        let dup = have.len() != have.iter().collect::<std::collections::BTreeSet<_>>().len();
        if missing.is_empty() {
            eprintln!(
                "  {user}: all {} message(s) present{}",
                want.len(),
                if dup {
                    ", BUT SOME TWICE"
                } else {
                    ", none twice"
                }
            );
            return if dup {
                Err(format!("{user}: duplicates"))
            } else {
                Ok(())
            };
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "{user}: {} message(s) missing after 60 s",
                missing.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Wait until the host's Postfix queue is empty (its archive copies relayed), at most 60 s.
fn wait_queue_empty(host: Host) -> Result<(), String> {
    let started = Instant::now();
    let probe: Vec<String> = ["sh", "-c", "test -z \"$(postqueue -j)\""]
        .iter()
        .map(|s| s.to_string())
        .collect();
    loop {
        if lab::exec(host, &probe).map_err(|e| e.to_string())? == 0 {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "{}: the Postfix queue did not drain in 60 s",
                host.name()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn spec_with_active(state: &Path, active: &str, fenced: &[&str]) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(root().join("examples/lab.yaml"))
        .map_err(|e| format!("examples/lab.yaml: {e}"))?;
    let mut text = text
        .replace("active: node-a", &format!("active: {active}"))
        .replace("../specs/", &format!("{}/specs/", root().display()));
    if !fenced.is_empty() {
        text = text.replace("fenced: []", &format!("fenced: [{}]", fenced.join(", ")));
    }
    let p = state.join(format!("lab-{active}.yaml"));
    std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(p)
}

pub fn main(keep: bool) -> Result<(), String> {
    let started = Instant::now();
    step("build");
    run(
        "build",
        &cargo(),
        &["build", "--quiet", "--bin", "spoolkeeper"],
    )?;
    let bin = root().join("target/debug/spoolkeeper");
    let state = std::env::temp_dir().join(format!("spoolkeeper-demo-{}", std::process::id()));
    std::fs::create_dir_all(&state).map_err(|e| e.to_string())?;
    let st = state.as_path();

    step("1. the specs validate (no host is touched)");
    expect(
        spoolkeeper(&bin, &["validate", "-f", "examples/univ.yaml"], st)?,
        &[0],
        "validate",
    )?;
    expect(
        spoolkeeper(&bin, &["validate", "-f", "examples/lab.yaml"], st)?,
        &[0],
        "validate",
    )?;

    step("2. the lab: node-a (active), node-b (empty), smtp-arch");
    // The tour starts from an empty lab: one left up (an interrupted demo, `lab up` by hand)
    // is taken down first.
    lab::down().map_err(|e| e.to_string())?;
    lab::up().map_err(|e| e.to_string())?;
    let result = tour(&bin, st);
    if keep {
        eprintln!("\nlab left up (--keep): `cargo xtask lab down` when done");
    } else {
        step("lab down");
        lab::down().map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_dir_all(&state);
    eprintln!(
        "\ndemo {} in {:.0?}",
        if result.is_ok() { "finished" } else { "FAILED" },
        started.elapsed()
    );
    result
}

fn tour(bin: &Path, st: &Path) -> Result<(), String> {
    let a = spec_with_active(st, "node-a", &[])?;
    let a = a.to_str().unwrap_or("examples/lab.yaml");

    step("3. plan: what spoolkeeper would do (exit 2: changes)");
    expect(spoolkeeper(bin, &["plan", "-f", a], st)?, &[2], "plan")?;

    step("4. apply: datasets, first snapshots, full replication to node-b, archive BCC");
    expect(spoolkeeper(bin, &["apply", "-f", a], st)?, &[0], "apply")?;
    expect(
        spoolkeeper(bin, &["plan", "-f", a], st)?,
        &[0, 2],
        "plan after apply",
    )?;

    step("5. mail flows; every copy is held on smtp-arch");
    let s1 = send(Instance::Students, "alice@students.lab", 5)?;
    let f1 = send(Instance::Staff, "bob@staff.lab", 5)?;
    read_back(Instance::Students, "alice@students.lab", &s1)?;
    read_back(Instance::Staff, "bob@staff.lab", &f1)?;
    expect(
        spoolkeeper(bin, &["observe", "-f", a], st)?,
        &[0],
        "observe",
    )?;
    expect(spoolkeeper(bin, &["status", "-f", a], st)?, &[0], "status")?;
    expect(
        spoolkeeper(bin, &["check", "-f", a], st)?,
        &[0, 1, 2, 3],
        "check",
    )?;

    step(
        "6. restore: carol deletes her mail; restore --list, --dry-run, restore, a rerun adds nothing",
    );
    let c1 = send(Instance::Students, "carol@students.lab", 4)?;
    read_back(Instance::Students, "carol@students.lab", &c1)?;
    // a snapshot now (this demo's spec variant takes one every second), replicated
    let due = st.join("lab-due.yaml");
    let text = std::fs::read_to_string(a).map_err(|e| e.to_string())?;
    std::fs::write(
        &due,
        text.replace("    every: 1m\n    keep:", "    every: 1s\n    keep:"),
    )
    .map_err(|e| e.to_string())?;
    let due = due.to_str().unwrap_or_default();
    std::thread::sleep(Duration::from_secs(1));
    expect(
        spoolkeeper(bin, &["apply", "-f", due], st)?,
        &[0],
        "apply (snapshot)",
    )?;
    expect(
        spoolkeeper(bin, &["apply", "-f", a], st)?,
        &[0],
        "apply (replication)",
    )?;
    let expunge: Vec<String> = [
        "doveadm",
        "expunge",
        "-u",
        "carol@students.lab",
        "mailbox",
        "*",
        "ALL",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    lab::exec(Host::NodeA, &expunge).map_err(|e| e.to_string())?;
    eprintln!("  carol's mailbox emptied on node-a (the live spool)");
    let carol = ["--instance", "students", "--mailbox", "carol@students.lab"];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut v = vec!["restore", "-f", a];
        v.extend(carol);
        v.extend(extra);
        v
    };
    expect(
        spoolkeeper(bin, &with(&["--list"]), st)?,
        &[0],
        "restore --list",
    )?;
    expect(
        spoolkeeper(bin, &with(&["--dry-run"]), st)?,
        &[0],
        "restore --dry-run",
    )?;
    let t = Instant::now();
    expect(spoolkeeper(bin, &with(&[]), st)?, &[0], "restore")?;
    eprintln!(
        "  restored in {:.1?} (read on node-b through a clone, imported on node-a)",
        t.elapsed()
    );
    read_back(Instance::Students, "carol@students.lab", &c1)?;
    expect(
        spoolkeeper(bin, &with(&[]), st)?,
        &[0],
        "restore again (nothing new)",
    )?;
    read_back(Instance::Students, "carol@students.lab", &c1)?;

    step(
        "7. drill: rehearse a failover on a clone on node-b, check probe mailboxes over IMAP, tear down",
    );
    expect(spoolkeeper(bin, &["drill", "-f", a], st)?, &[0], "drill")?;
    expect(
        spoolkeeper(bin, &["drill", "-f", a, "--output", "markdown"], st)?,
        &[0],
        "drill (markdown report)",
    )?;
    expect(
        spoolkeeper(bin, &["check", "-f", a], st)?,
        &[0, 1, 2, 3],
        "check (reads the last drill)",
    )?;

    step("8. switchover: one-line edit `active: node-b`, plan, apply");
    let b = spec_with_active(st, "node-b", &[])?;
    let b = b.to_str().unwrap_or_default();
    expect(
        spoolkeeper(bin, &["plan", "-f", b], st)?,
        &[2],
        "plan switchover",
    )?;
    let t = Instant::now();
    expect(
        spoolkeeper(bin, &["apply", "-f", b], st)?,
        &[0],
        "apply switchover",
    )?;
    eprintln!("  switchover applied in {:.1?}", t.elapsed());
    read_back(Instance::Students, "alice@students.lab", &s1)?;
    let s2 = send(Instance::Students, "alice@students.lab", 3)?;
    let mut all: Vec<String> = s1.iter().chain(&s2).cloned().collect();
    read_back(Instance::Students, "alice@students.lab", &all)?;
    expect(
        spoolkeeper(bin, &["apply", "-f", b], st)?,
        &[0],
        "apply: replication node-b -> node-a",
    )?;

    step("9. power loss of node-b (the active); mail keeps arriving; failover to node-a");
    let s3 = send(Instance::Students, "alice@students.lab", 3)?;
    all.extend(s3);
    // The BCC copy of a message leaves node-b's queue for the archive host a moment after
    // the message is accepted; cut the power once it has, so that the archive holds them.
    // (A copy still queued on a node that dies is not lost: it is handed over when the node
    // returns, step 10; the read-back below checks the failover alone.)
    wait_queue_empty(Host::NodeB)?;
    lab::kill(Host::NodeB).map_err(|e| e.to_string())?;
    eprintln!("  node-b killed: its last messages are only in the archive now");
    let back = spec_with_active(st, "node-a", &[])?;
    let back = back.to_str().unwrap_or_default();
    expect(
        spoolkeeper(bin, &["plan", "-f", back], st)?,
        &[2],
        "plan failover (fence first)",
    )?;
    let t = Instant::now();
    expect(
        spoolkeeper(bin, &["apply", "-f", back], st)?,
        &[0],
        "apply failover",
    )?;
    eprintln!("  failover applied in {:.1?}", t.elapsed());
    read_back(Instance::Students, "alice@students.lab", &all)?;

    step("10. node-b boots: it stays passive, its writes are preserved, it is resynced");
    lab::boot(Host::NodeB).map_err(|e| e.to_string())?;
    expect(
        spoolkeeper(bin, &["apply", "-f", back], st)?,
        &[0],
        "apply resync",
    )?;
    expect(
        spoolkeeper(bin, &["apply", "-f", back], st)?,
        &[0],
        "apply drain",
    )?;
    read_back(Instance::Students, "alice@students.lab", &all)?;
    expect(
        spoolkeeper(bin, &["observe", "-f", back], st)?,
        &[0],
        "observe",
    )?;
    expect(
        spoolkeeper(bin, &["status", "-f", back], st)?,
        &[0],
        "status",
    )?;
    expect(
        spoolkeeper(bin, &["check", "-f", back], st)?,
        &[0, 1, 2, 3],
        "check",
    )?;
    controller(bin, Path::new(back), st)
}

/// `GET path` on the controller's metrics server; the body.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// Step 11, the controller: the same cluster reconciled on second-scale schedules while
/// mail flows, its metrics scraped, then a clean stop.
fn controller(bin: &Path, spec: &Path, st: &Path) -> Result<(), String> {
    step(
        "11. the controller: schedules (snapshots every 15s, replication every 30s), metrics, clean stop",
    );
    let text = std::fs::read_to_string(spec).map_err(|e| e.to_string())?;
    let fast = text
        .replace("    every: 1m\n    keep:", "    every: 15s\n    keep:")
        .replace("    every: 1m\n    rpo: 10m", "    every: 30s\n    rpo: 2m")
        .replace("    margin: 1m", "    margin: 5s");
    let dir = st.join("clusters");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("lab.yaml"), fast).map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())?;
    let addr = format!("127.0.0.1:{port}");
    eprintln!(
        "$ spoolkeeper controller -f {} --metrics-addr {addr} --resync 30s",
        dir.display()
    );
    let log = st.join("controller.log");
    let logf = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut child = Command::new(bin)
        .args(["-v", "controller", "-f"])
        .arg(&dir)
        .args(["--metrics-addr", &addr, "--resync", "30s"])
        .env("SPOOLKEEPER_STATE_DIR", st)
        .stderr(logf)
        .spawn()
        .map_err(|e| format!("cannot start the controller: {e}"))?;
    let t = Instant::now();
    let sent = send(Instance::Students, "carol@students.lab", 30)?;
    eprintln!(
        "  {} messages accepted while the controller runs",
        sent.len()
    );
    std::thread::sleep(Duration::from_secs(40).saturating_sub(t.elapsed()));
    let metrics = http_get(port, "/metrics").unwrap_or_default();
    eprintln!(
        "$ curl -s http://{addr}/metrics | grep -E 'reconciles|rpo_age|at_risk|archive_held|reachable|next_reconcile'"
    );
    for l in metrics.lines().filter(|l| {
        !l.starts_with('#')
            && [
                "reconciles_total",
                "rpo_age_seconds",
                "mail_at_risk_messages",
                "archive_held",
                "node_reachable",
                "next_reconcile",
            ]
            .iter()
            .any(|k| l.contains(k))
    }) {
        eprintln!("  {l}");
    }
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let code = child.wait().map_err(|e| e.to_string())?.code();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let turns = text.matches("reconcile done").count();
    let snapshots = text.matches("snapshot zdata/imap/").count();
    eprintln!(
        "  {turns} reconciles in {:.0?} ({snapshots} snapshot steps started), SIGTERM: exit {code:?} (log: {})",
        t.elapsed(),
        log.display()
    );
    read_back(Instance::Students, "carol@students.lab", &sent)?;
    if code != Some(0) || !metrics.contains("spoolkeeper_reconciles_total") {
        return Err(format!(
            "the controller did not run as it should (exit {code:?}); see {}",
            log.display()
        ));
    }
    Ok(())
}
