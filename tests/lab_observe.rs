//! Lab tests for the SSH transport. Need the lab (root, `cargo xtask lab up`).

use spoolkeeper::host::{AnyHost, Host, RoundTrips, SshConfig, SshHost};

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
];

fn lab_config() -> SshConfig {
    let mut c = SshConfig::new("10.77.0.11");
    c.user = Some("root".into());
    c.known_hosts = Some("/var/lib/sk-lab/ssh/known_hosts".into());
    c.identity = Some("/var/lib/sk-lab/ssh/id_ed25519".into());
    c
}

#[tokio::test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
async fn ssh_argv_arrives_intact() {
    let ssh = SshHost::connect(lab_config())
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
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect();
    assert_eq!(parts.pop().as_deref(), Some(""));
    assert_eq!(parts, AWKWARD);
    // Same control master for the second command: the counter counts commands.
    let out = host.run(&["true".to_string()]).await.unwrap();
    assert!(out.success());
    assert_eq!(trips.snapshot()["node-a"], 2);
}

#[tokio::test]
#[ignore = "needs the lab (root): run by cargo xtask ci"]
async fn unknown_host_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("known_hosts");
    std::fs::write(&empty, "").unwrap();
    let mut c = lab_config();
    c.known_hosts = Some(empty);
    let err = SshHost::connect(c)
        .await
        .expect_err("must not accept an unknown key");
    assert_eq!(
        err.unreachable_kind(),
        Some(spoolkeeper::observed::UnreachableKind::HostKey),
        "{err}"
    );
}
