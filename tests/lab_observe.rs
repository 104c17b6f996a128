//! Lab tests of observation and of the SSH transport (issue 4): `observe` sees the lab as it is,
//! argv survives real SSH byte for byte, a wrong host key is refused, a cut node is reported
//! unreachable without failing the command.
//! Needs root and the lab: run by `cargo xtask ci`
//! (`cargo test --test lab_observe -- --ignored --test-threads=1`).

mod common;

use common::sk::*;
use common::*;
use spoolkeeper::transport::host::{AnyHost, Host, RoundTrips, SshConfig, SshHost};
use std::time::{Duration, Instant};

const AWKWARD: &[&str] = &[
    "with space",
    "it's",
    "\"double\"",
    "$HOME",
    "$(id)",
    "`id`",
    "a;b",
    "*",
    "back\\slash",
    "new\nline",
    "bang!",
    "",
    "tab\there",
    "  leading and trailing  ",
    "a|b&c>d<e",
    "~root",
    "{a,b}",
    "ü ✓",
];

fn lab_config(addr: &str) -> SshConfig {
    let mut c = SshConfig::new(addr);
    c.user = Some("root".into());
    c.known_hosts = Some(SSH_KNOWN_HOSTS.into());
    c.identity = Some(SSH_IDENTITY.into());
    c
}

async fn argv_arrives_intact() {
    let ssh = SshHost::connect(lab_config(NODE_A))
        .await
        .expect("connect to node-a");
    let trips = RoundTrips::default();
    let host = Host::new("node-a", AnyHost::Ssh(ssh), &trips);
    let mut argv: Vec<String> = vec!["printf".into(), "%s\\0".into()];
    argv.extend(AWKWARD.iter().map(|s| s.to_string()));
    let out = host.run(&argv).await.expect("run printf");
    assert!(out.success(), "stderr: {}", out.stderr_text());
    let mut parts: Vec<String> = out
        .stdout
        .split(|&b| b == 0)
        .map(|b| String::from_utf8(b.to_vec()).expect("utf-8 back"))
        .collect();
    assert_eq!(parts.pop().as_deref(), Some(""));
    assert_eq!(parts, AWKWARD);
    // the same control master serves the next command; the counter counts commands
    let out = host.run(&["true".to_string()]).await.expect("run true");
    assert!(out.success());
    assert_eq!(trips.snapshot()["node-a"], 2);
}

/// A master that exited while its host was idle (ControlPersist) is opened again for the next
/// command: before, that command failed as "the remote process has terminated" (an apply
/// whose observation of another host outlasted the minute could not take the lock).
async fn an_idle_master_is_opened_again() {
    let mut c = lab_config(NODE_A);
    c.master_idle = Duration::from_secs(1);
    let ssh = SshHost::connect(c).await.expect("connect to node-a");
    let trips = RoundTrips::default();
    let host = Host::new("node-a", AnyHost::Ssh(ssh), &trips);
    let t = ["true".to_string()];
    assert!(host.run(&t).await.expect("first command").success());
    // ssh -O check answers "Master running" until the master's idle time is up
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out = host
        .run(&t)
        .await
        .expect("a command after the master's idle time");
    assert!(out.success(), "{}", out.stderr_text());
    let AnyHost::Ssh(ssh) = host.transport() else {
        unreachable!()
    };
    assert_eq!(ssh.reopened(), 1, "the master was not found gone");
}

async fn host_key_refused(known_hosts: &str, what: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("known_hosts");
    std::fs::write(&path, known_hosts).expect("write known_hosts");
    let mut c = lab_config(NODE_A);
    c.known_hosts = Some(path);
    match SshHost::connect(c).await {
        Ok(_) => panic!("{what}: the connection was accepted"),
        Err(err) => assert_eq!(
            err.unreachable_kind(),
            Some(spoolkeeper::model::UnreachableKind::HostKey),
            "{what}: {err}"
        ),
    }
}

fn observe_json(spec: &std::path::Path) -> (Run, serde_json::Value) {
    let r = sk_stateless(spec, &["observe", "--output", "json"]);
    assert_eq!(r.code, Some(0), "observe: {r}");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("observe JSON");
    (r, v)
}

#[test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
fn lab_observe_transport_and_cut_node() {
    let _lab = Lab::fresh();
    let spec = lab_spec();

    // one message on hold at the archive host, so that its queue has something to show
    let archived = send("students", "alice=students.lab@archive.lab", 1);
    assert_eq!(archived.len(), 1);
    let held = eventually(Duration::from_secs(60), || {
        let q = String::from_utf8_lossy(&ssh(SMTP_ARCH, &["postqueue", "-j"]).stdout).into_owned();
        q.contains("\"queue_name\": \"hold\"").then_some(())
    });
    assert!(held.is_some(), "smtp-arch never held the archive message");

    // --- observe sees both pools, the datasets, the instances and the archive queue
    let (_, v) = observe_json(&spec);
    let o = &v["observation"];
    for node in ["node-a", "node-b"] {
        assert_eq!(
            o["nodes"][node]["reachability"]["status"], "reachable",
            "{node}: {v}"
        );
        assert_eq!(
            o["nodes"][node]["capabilities"]["zfs"]["flavour"], "zfs_fuse",
            "{node}"
        );
    }
    let names: Vec<&str> = o["nodes"]["node-a"]["datasets"]
        .as_array()
        .expect("datasets")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert!(
        names.contains(&"zdata/imap/students") && names.contains(&"zdata/imap/staff"),
        "node-a datasets: {names:?}"
    );
    let ds = o["nodes"]["node-a"]["datasets"]
        .as_array()
        .expect("datasets")
        .iter()
        .find(|d| d["name"] == "zdata/imap/students")
        .expect("students dataset");
    assert_eq!(ds["mounted"], true);
    assert_eq!(ds["readonly"], false);
    assert_eq!(ds["mountpoint"], "/zdata/imap/students");
    assert!(ds["guid"].as_u64().is_some_and(|g| g > 0), "{ds}");
    // node-b's pool is there, without the instance datasets
    let missing = o["nodes"]["node-b"]["missing_datasets"].to_string();
    assert!(
        missing.contains("zdata/imap/students") && missing.contains("zdata/imap/staff"),
        "node-b: {missing}"
    );
    for inst in ["students", "staff"] {
        assert_eq!(
            o["nodes"]["node-a"]["instances"][inst]["state"], "running",
            "{inst} on node-a: {v}"
        );
        assert_eq!(
            o["nodes"]["node-b"]["instances"][inst]["state"], "stopped",
            "{inst} on node-b"
        );
    }
    let arch = &o["archive"];
    assert_eq!(arch["reachability"]["status"], "reachable");
    let queue = arch["postfix"]["queue"].as_array().expect("archive queue");
    assert!(
        queue
            .iter()
            .any(|m| m.to_string().contains("alice=students.lab@archive.lab")),
        "archive queue: {queue:?}"
    );
    // the text view says the same in short
    let text = sk_stateless(&spec, &["observe"]);
    assert_eq!(text.code, Some(0), "{text}");
    assert!(text.stdout.contains("node-a (active): reachable"), "{text}");
    assert!(
        text.stdout.contains("node-b (passive): reachable"),
        "{text}"
    );

    // --- real SSH: argv intact, wrong or unknown host keys refused
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(argv_arrives_intact());
    rt.block_on(an_idle_master_is_opened_again());
    let known = std::fs::read_to_string(SSH_KNOWN_HOSTS).expect("lab known_hosts");
    let b_key = known
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{NODE_B} ")))
        .expect("node-b in known_hosts");
    rt.block_on(host_key_refused(
        &format!("{NODE_A} {b_key}\n"),
        "node-b's key under node-a's address",
    ));
    rt.block_on(host_key_refused("", "empty known_hosts"));

    // --- node-b cut: reported unreachable, observe still exits 0, node-a still seen
    lab_ok(&["cut", "node-b"]);
    let t = Instant::now();
    let (r, v) = observe_json(&spec);
    eprintln!("observe with node-b cut: {:?}", t.elapsed());
    let b = &v["observation"]["nodes"]["node-b"]["reachability"];
    assert_eq!(b["status"], "unreachable", "{r}");
    assert!(
        b["kind"].as_str().is_some_and(|k| !k.is_empty())
            && b["message"].as_str().is_some_and(|m| !m.is_empty()),
        "unreachable without a reason: {b}"
    );
    assert_eq!(
        v["observation"]["nodes"]["node-a"]["reachability"]["status"], "reachable",
        "cutting node-b hid node-a"
    );
    let text = sk_stateless(&spec, &["observe"]);
    assert_eq!(text.code, Some(0), "{text}");
    assert!(
        text.stdout.contains("node-b (passive): UNREACHABLE"),
        "{text}"
    );
    lab_ok(&["heal", "node-b"]);
}
