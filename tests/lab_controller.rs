//! The controller on the real lab, with second-scale schedules: it keeps the schedule under
//! mail load, its metrics agree with `status`, an `active:` edit in the watched file switches
//! over losing nothing, an invalid edit keeps the last good spec, SIGTERM lets the running
//! actions finish, kill -9 then a restart converges, a cut node makes the backoff grow and a
//! heal resets it, and a second controller waits on the lock and never acts at once.
//!
//! Ignored by plain `cargo test`: `cargo xtask ci` runs it as root, one lab test at a time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::sk::*;
use common::*;

const USER: &str = "ctl@students.lab";

/// The lab spec with second-scale schedules, in `dir/lab.yaml` (the watched directory).
fn fast_spec(dir: &Path, active: &str) -> PathBuf {
    spec_every(dir, active, "10s", "20s")
}

/// The lab spec with `active`, snapshots every `snap` and replication every `repl` (RPO
/// 1m, purge margin 5s). A controller converges (a turn with nothing to do) only when a
/// snapshot turn and the replication turn after it fit inside `snap`: on this 2-core
/// machine the pair takes about 17 s, so the 10 s schedule keeps the controller busy
/// for good and a test that waits for convergence uses 30 s.
fn spec_every(dir: &Path, active: &str, snap: &str, repl: &str) -> PathBuf {
    let text = std::fs::read_to_string(lab_spec())
        .unwrap()
        .replace("active: node-a", &format!("active: {active}"))
        .replace(
            "    every: 1m\n    keep:",
            &format!("    every: {snap}\n    keep:"),
        )
        .replace(
            "    every: 1m\n    rpo: 10m",
            &format!("    every: {repl}\n    rpo: 1m"),
        )
        .replace("    margin: 1m", "    margin: 5s");
    assert!(
        text.contains(&format!("every: {snap}"))
            && text.contains(&format!("every: {repl}"))
            && text.contains("margin: 5s")
    );
    let p = dir.join("lab.yaml");
    // written as an editor would: a temporary file renamed over the old one
    let tmp = dir.join(".lab.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    p
}

/// What a controller's turns ended with (one line each), then the end of its log: the
/// failure message of a test that waited for a turn.
fn turns_and_tail(log: &str) -> String {
    let turns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reconcile done"))
        .collect();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(80)..].join("\n");
    format!(
        "{} turns:\n{}\n--- the last 80 lines of the log:\n{tail}",
        turns.len(),
        turns.join("\n")
    )
}

/// A free local port for the metrics server.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A controller process, its log in a file (never a pipe that could fill and block it).
struct Ctl {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Ctl {
    /// Wait until the controller reloaded an edited spec.
    fn wait_reload(&self) {
        assert!(
            eventually(Duration::from_secs(30), || self
                .log()
                .contains("spec changed")
                .then_some(()))
            .is_some(),
            "the edited spec was not loaded:\n{}",
            self.log()
        );
    }

    fn start(state: &Path, specs: &Path, name: &str) -> Ctl {
        let port = free_port();
        let log = state.parent().unwrap().join(format!("{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_spoolkeeper"))
            .args(["-v", "controller", "-f"])
            .arg(specs)
            .arg("--state-dir")
            .arg(state)
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args([
                "--resync",
                "30s",
                "--backoff-base",
                "2s",
                "--backoff-cap",
                "16s",
            ])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("controller starts");
        let c = Ctl { child, log, port };
        assert!(
            eventually(Duration::from_secs(30), || c
                .get("/healthz")
                .filter(|b| b.contains("ok")))
            .is_some(),
            "the controller never served /healthz:\n{}",
            c.log()
        );
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
    }

    fn metrics(&self) -> String {
        self.get("/metrics").unwrap_or_default()
    }

    /// The value of the first sample of `name` whose labels contain every `label="value"`.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        sample(&self.metrics(), name, labels)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// SIGTERM and the exit code.
    fn stop(mut self) -> Option<i32> {
        self.signal("-TERM");
        let code = self.child.wait().unwrap().code();
        std::mem::forget(self);
        code
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Done records of `kind` actions (e.g. `snapshot`) in the journal, with their time.
fn done(state: &Path, kind: &str) -> Vec<(String, jiff::Timestamp)> {
    journal(state)
        .iter()
        .filter(|r| r["phase"] == "done")
        .filter_map(|r| {
            let a = r["action"].as_str()?;
            (a.split(':').nth(1) == Some(kind)).then(|| {
                (
                    a.to_owned(),
                    r["at"].as_str().unwrap_or_default().parse().expect("time"),
                )
            })
        })
        .collect()
}

/// The owned snapshot names of a dataset on a host, oldest first.
fn owned_snapshots(host: &str, ds: &str) -> Vec<String> {
    exec_ok(
        host,
        &[
            "zfs",
            "list",
            "-H",
            "-o",
            "name",
            "-t",
            "snapshot",
            "-s",
            "createtxg",
            "-r",
            ds,
        ],
    )
    .lines()
    .filter_map(|l| l.split_once('@').map(|(_, s)| s.to_owned()))
    .filter(|s| spoolkeeper::decide::retention::parse_owned("sk", s).is_some())
    .collect()
}

/// The owned snapshot name a journaled action carries (any string field `sk_…`).
fn owned_name_in(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => {
            spoolkeeper::decide::retention::parse_owned("sk", s).map(|_| s.clone())
        }
        serde_json::Value::Array(a) => a.iter().find_map(owned_name_in),
        serde_json::Value::Object(o) => o.values().find_map(owned_name_in),
        _ => None,
    }
}

/// Every run's journal records span a time interval; no two intervals overlap.
fn runs_never_overlap(state: &Path, from: usize) -> usize {
    let mut spans: BTreeMap<String, (jiff::Timestamp, jiff::Timestamp)> = BTreeMap::new();
    for r in &journal(state)[from..] {
        let run = r["run"].as_str().unwrap_or_default().to_string();
        let at: jiff::Timestamp = r["at"].as_str().unwrap_or_default().parse().expect("time");
        let e = spans.entry(run).or_insert((at, at));
        e.0 = e.0.min(at);
        e.1 = e.1.max(at);
    }
    let mut v: Vec<&(jiff::Timestamp, jiff::Timestamp)> = spans.values().collect();
    v.sort();
    for w in v.windows(2) {
        assert!(
            w[0].1 < w[1].0,
            "two runs acted at once: {:?} and {:?}",
            w[0],
            w[1]
        );
    }
    spans.len()
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn the_controller_keeps_the_schedule_and_its_metrics_agree_with_status() {
    let _lab = Lab::fresh();
    let dir = tempfile::tempdir().unwrap();
    let specs = dir.path().join("specs");
    std::fs::create_dir(&specs).unwrap();
    let state = dir.path().join("state");
    // converged first on a schedule a turn pair fits in, then the fast one
    spec_every(&specs, "node-a", "30s", "30s");
    let ctl = Ctl::start(&state, &specs, "ctl");
    // converged: the first reconcile brings the lab to the spec
    assert!(
        eventually(Duration::from_secs(120), || {
            ctl.metric("spoolkeeper_reconciles_total", &[("result", "converged")])
                .filter(|n| *n >= 1.0)
        })
        .is_some(),
        "never converged:\n{}",
        turns_and_tail(&ctl.log())
    );
    let spec = fast_spec(&specs, "node-a");
    ctl.wait_reload();

    // --- mail at 4 msg/s for 60 s; the schedule keeps running
    let t0 = jiff::Timestamp::now();
    let load = Load::start("students", USER, 240, 4, "120s");
    let accepted: BTreeSet<String> = load.accepted().into_iter().collect();
    let t1 = jiff::Timestamp::now();
    assert!(
        accepted.len() >= 200,
        "the sender got only {} accepted",
        accepted.len()
    );
    exactly_once("students", USER, &accepted, Duration::from_secs(60));

    // snapshots: never more often than `every` (10 s), and not far behind it
    // (from the journal: retention keeps one snapshot per hour, so the pool does not show
    // them all)
    let snaps: Vec<String> = journal(&state)
        .iter()
        .filter(|r| r["phase"] == "done" && r["action"] == "node-a:snapshot:zdata/imap/students")
        .filter_map(|r| owned_name_in(&r["done"]))
        .collect();
    let mut times: Vec<jiff::Timestamp> = snaps
        .iter()
        .filter_map(|s| spoolkeeper::decide::retention::parse_owned("sk", s))
        .filter(|t| *t >= t0 && *t <= t1)
        .collect();
    times.sort();
    // retention prunes within the hour, and it must be what the spec says: the newest stays
    assert!(owned_snapshots("node-a", "zdata/imap/students").len() <= 3);
    let window = t1.duration_since(t0).as_secs();
    assert!(
        times.len() as i64 >= window / 20 && times.len() as i64 <= window / 10 + 1,
        "{} snapshots in {window} s with snapshots.every 10s: {snaps:?}",
        times.len()
    );
    for w in times.windows(2) {
        let gap = w[1].duration_since(w[0]).as_secs();
        assert!(
            gap >= 10,
            "two snapshots {gap} s apart with every 10s: {times:?}"
        );
    }
    // replications: never more often than every 20 s, and some happened
    let repl: Vec<jiff::Timestamp> = done(&state, "replicate")
        .into_iter()
        .filter(|(a, t)| a.contains("students") && *t >= t0 && *t <= t1)
        .map(|(_, t)| t)
        .collect();
    assert!(
        repl.len() as i64 >= window / 40 && repl.len() as i64 <= window / 20 + 1,
        "{} replications in {window} s with replication.every 20s",
        repl.len()
    );
    // the archive is purged as replication proves copies are in the replica
    assert!(
        !done(&state, "purge_archive").is_empty(),
        "no purge of the archive in {window} s:\n{}",
        ctl.log()
    );

    // --- metrics and status, once the purges caught up with the last message
    let settled = eventually(Duration::from_secs(120), || {
        (ctl.metric(
            "spoolkeeper_mail_at_risk_messages",
            &[("instance", "students")],
        ) == Some(0.0)
            && ctl.metric("spoolkeeper_archive_held", &[("instance", "students")]) == Some(0.0))
        .then_some(())
    });
    assert!(
        settled.is_some(),
        "the archive never drained:\n{}",
        ctl.metrics()
    );
    let before = ctl.metrics();
    let st = sk_expect(&state, &spec, &["status", "--output", "json"], 0);
    let after = ctl.metrics();
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let students = st["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "students")
        .unwrap();
    assert_eq!(students["archive_held"], 0);
    assert_eq!(students["mail_at_risk"]["messages"], 0);
    let status_newest: jiff::Timestamp = students["replicas"][0]["newest_replicated"]["creation"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let labels = [("instance", "students"), ("node", "node-b")];
    let m0 = sample(
        &before,
        "spoolkeeper_newest_replicated_timestamp_seconds",
        &labels,
    )
    .unwrap();
    let m1 = sample(
        &after,
        "spoolkeeper_newest_replicated_timestamp_seconds",
        &labels,
    )
    .unwrap();
    let s = status_newest.as_second() as f64;
    assert!(
        m0 <= s && s <= m1.max(m0) + 20.0 + 1.0,
        "status' newest replicated snapshot ({status_newest}) is not the one the metrics saw ({m0} .. {m1})"
    );
    assert_eq!(
        sample(&after, "spoolkeeper_rpo_target_seconds", &[]),
        Some(60.0)
    );
    for n in ["node-a", "node-b", "archive"] {
        assert_eq!(
            sample(&after, "spoolkeeper_node_reachable", &[("node", n)]),
            Some(1.0),
            "{n}"
        );
    }
    assert_eq!(
        sample(&after, "spoolkeeper_active_unreachable", &[]),
        Some(0.0)
    );
    assert!(sample(&after, "spoolkeeper_replication_bytes_total", &labels).unwrap_or(0.0) > 0.0);
    assert!(
        sample(
            &after,
            "spoolkeeper_action_duration_seconds_count",
            &[("kind", "snapshot")]
        )
        .unwrap_or(0.0)
            > 0.0
    );

    // --- an invalid edit: reported with file:line:col, the last good spec keeps running
    let good = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, good.replace("every: 10s", "every: 10 parsecs")).unwrap();
    let reported = eventually(Duration::from_secs(30), || {
        let log = ctl.log();
        (log.contains("invalid spec") && log.contains("line=")).then_some(log)
    });
    assert!(
        reported.is_some(),
        "the invalid edit was not reported:\n{}",
        ctl.log()
    );
    assert_eq!(
        ctl.metric("spoolkeeper_spec_valid", &[("cluster", "lab")]),
        Some(0.0)
    );
    let n = done(&state, "snapshot").len();
    assert!(
        eventually(Duration::from_secs(60), || (done(&state, "snapshot").len()
            > n)
            .then_some(()))
        .is_some(),
        "no snapshot after the invalid edit: the last good spec must keep running"
    );
    std::fs::write(&spec, &good).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || {
            (ctl.metric("spoolkeeper_spec_valid", &[("cluster", "lab")]) == Some(1.0)).then_some(())
        })
        .is_some()
    );
    assert_eq!(ctl.stop(), Some(0));
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn an_active_edit_switches_over_and_stops_are_clean() {
    let _lab = Lab::fresh();
    let dir = tempfile::tempdir().unwrap();
    let specs = dir.path().join("specs");
    std::fs::create_dir(&specs).unwrap();
    let state = dir.path().join("state");
    spec_every(&specs, "node-a", "30s", "30s");
    let ctl = Ctl::start(&state, &specs, "ctl");
    assert!(
        eventually(Duration::from_secs(120), || {
            ctl.metric("spoolkeeper_reconciles_total", &[("result", "converged")])
        })
        .is_some(),
        "never converged:\n{}",
        turns_and_tail(&ctl.log())
    );

    // --- the one-line edit under load: the watcher sees it, the switchover loses nothing
    let load = Load::start("students", USER, 200, 5, "180s");
    std::thread::sleep(Duration::from_secs(10));
    spec_every(&specs, "node-b", "30s", "30s");
    let accepted: BTreeSet<String> = load.accepted().into_iter().collect();
    assert!(accepted.len() >= 150, "only {} accepted", accepted.len());
    let switched = eventually(Duration::from_secs(120), || {
        (exec(
            "node-b",
            &["/var/lib/sk-lab/bin/sk-instance", "status", "students"],
        )
        .status
        .code()
            == Some(0)
            && zfs_prop("node-b", "zdata/imap/students", "readonly") == "off"
            && zfs_prop("node-a", "zdata/imap/students", "readonly") == "on")
            .then_some(())
    });
    assert!(
        switched.is_some(),
        "no switchover after the edit:\n{}",
        ctl.log()
    );
    exactly_once("students", USER, &accepted, Duration::from_secs(120));

    // --- SIGTERM during a send: it exits 0 after the send, nothing half done. A large
    // write makes the next replication long enough to be caught running.
    let mnt = zfs_prop("node-b", "zdata/imap/students", "mountpoint");
    exec_ok(
        "node-b",
        &[
            "dd",
            "if=/dev/urandom",
            &format!("of={mnt}/ballast"),
            "bs=1M",
            "count=150",
            "status=none",
        ],
    );
    let sending = eventually(Duration::from_secs(120), || {
        ctl.log()
            .lines()
            .any(|l| l.contains("replicate:zdata/imap/students") && l.contains(": start"))
            .then_some(())
    });
    assert!(sending.is_some(), "no replication started:\n{}", ctl.log());
    let log_at_term = ctl.log();
    assert_eq!(ctl.stop(), Some(0), "a SIGTERM'd controller exits 0");
    let recs = journal(&state);
    let mut open: BTreeMap<String, &str> = BTreeMap::new();
    for r in &recs {
        let key = format!("{}|{}", r["run"], r["action"]);
        open.insert(key, r["phase"].as_str().unwrap_or_default());
    }
    let half: Vec<&String> = open
        .iter()
        .filter(|(_, p)| **p == "start")
        .map(|(k, _)| k)
        .collect();
    assert!(
        half.is_empty(),
        "actions left started and never ended: {half:?}\n{log_at_term}"
    );
    assert!(
        open.iter()
            .any(|(k, p)| k.contains("replicate:zdata/imap/students") && *p == "done"),
        "the send running at SIGTERM did not finish"
    );
    for h in ["node-a", "node-b", "smtp-arch"] {
        assert!(
            !exec(h, &["test", "-L", "/var/run/spoolkeeper.lab.lock"])
                .status
                .success(),
            "a stopped controller left its lock on {h}"
        );
    }

    // --- kill -9 in the middle, then a restart converges
    let ctl = Ctl::start(&state, &specs, "ctl2");
    let _ = send("students", USER, 10);
    let n = journal(&state).len();
    let acting = eventually(Duration::from_secs(60), || {
        (journal(&state).len() > n).then_some(())
    });
    assert!(
        acting.is_some(),
        "the restarted controller did nothing:\n{}",
        ctl.log()
    );
    ctl.signal("-KILL");
    drop(ctl);
    let ctl = Ctl::start(&state, &specs, "ctl3");
    let converged = eventually(Duration::from_secs(180), || {
        ctl.metric("spoolkeeper_reconciles_total", &[("result", "converged")])
    });
    assert!(
        converged.is_some(),
        "no convergence after kill -9:\n{}",
        turns_and_tail(&ctl.log())
    );
    assert_eq!(ctl.stop(), Some(0));
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn a_cut_node_grows_the_backoff_and_controllers_never_act_at_once() {
    let _lab = Lab::fresh();
    let dir = tempfile::tempdir().unwrap();
    let specs = dir.path().join("specs");
    std::fs::create_dir(&specs).unwrap();
    let state = dir.path().join("state");
    // converged first on a schedule a turn pair fits in, then the fast one
    spec_every(&specs, "node-a", "30s", "30s");
    let ctl = Ctl::start(&state, &specs, "ctl");
    assert!(
        eventually(Duration::from_secs(120), || {
            ctl.metric("spoolkeeper_reconciles_total", &[("result", "converged")])
        })
        .is_some(),
        "never converged:\n{}",
        turns_and_tail(&ctl.log())
    );
    fast_spec(&specs, "node-a");
    ctl.wait_reload();

    // --- node-b cut: consecutive failures and the backoff grow; the active keeps its
    // snapshots; after the heal both reset
    lab_ok(&["cut", "node-b"]);
    let grew = eventually(Duration::from_secs(180), || {
        ctl.metric("spoolkeeper_consecutive_failures", &[("cluster", "lab")])
            .filter(|n| *n >= 3.0)
    });
    assert!(grew.is_some(), "the backoff never grew:\n{}", ctl.metrics());
    assert!(
        ctl.metric("spoolkeeper_backoff_seconds", &[("cluster", "lab")])
            .unwrap_or(0.0)
            >= 2.0
    );
    assert_eq!(
        ctl.metric("spoolkeeper_node_reachable", &[("node", "node-b")]),
        Some(0.0)
    );
    let n = done(&state, "snapshot").len();
    assert!(
        eventually(Duration::from_secs(60), || (done(&state, "snapshot").len()
            > n)
            .then_some(()))
        .is_some(),
        "no snapshot on the active while the passive is cut"
    );
    lab_ok(&["heal", "node-b"]);
    let reset = eventually(Duration::from_secs(120), || {
        (ctl.metric("spoolkeeper_consecutive_failures", &[("cluster", "lab")]) == Some(0.0)
            && ctl.metric("spoolkeeper_backoff_seconds", &[("cluster", "lab")]) == Some(0.0))
        .then_some(())
    });
    assert!(
        reset.is_some(),
        "the backoff did not reset after the heal:\n{}",
        ctl.metrics()
    );

    // --- another holder's live lock: the controller waits and acts on nothing
    let now = jiff::Timestamp::now().as_second();
    let other = format!("spoolkeeper2:ctl-other:b00t:4242:{now}:{}", now + 3600);
    let waits = ctl
        .metric("spoolkeeper_lock_waits_total", &[("cluster", "lab")])
        .unwrap_or(0.0);
    // placed between two runs of the controller (ln fails while it holds the lock itself)
    let placed = eventually(Duration::from_secs(30), || {
        exec(
            "node-a",
            &["ln", "-s", &other, "/var/run/spoolkeeper.lab.lock"],
        )
        .status
        .success()
        .then_some(())
    });
    assert!(placed.is_some());
    let before = journal(&state).len();
    let waited = eventually(Duration::from_secs(60), || {
        ctl.metric("spoolkeeper_lock_waits_total", &[("cluster", "lab")])
            .filter(|n| *n > waits)
    });
    assert!(
        waited.is_some(),
        "the controller never met the lock:\n{}",
        ctl.log()
    );
    assert_eq!(
        journal(&state).len(),
        before,
        "it acted under another holder's lock"
    );
    exec_ok("node-a", &["rm", "-f", "/var/run/spoolkeeper.lab.lock"]);

    // --- a second controller on the same cluster and journal: never two runs at once
    let from = journal(&state).len();
    let ctl2 = Ctl::start(&state, &specs, "ctl-second");
    let load = Load::start("students", USER, 120, 4, "90s");
    let _ = load.accepted();
    std::thread::sleep(Duration::from_secs(20));
    let runs = runs_never_overlap(&state, from);
    assert!(
        runs >= 2,
        "only {runs} run(s) acted in a minute of 10 s schedules"
    );
    assert_eq!(ctl2.stop(), Some(0));
    assert_eq!(ctl.stop(), Some(0));
}
