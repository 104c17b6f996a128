//! Running the real `spoolkeeper` binary against the lab, with a private state directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// `examples/lab.yaml`, absolute.
pub fn lab_spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lab.yaml")
}

/// A copy of the lab spec in `dir` with each `(from, to)` line fragment replaced; panics when a
/// fragment is not in the spec (the test would silently test the original spec otherwise).
pub fn spec_variant(dir: &Path, name: &str, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(lab_spec()).expect("read examples/lab.yaml");
    for (from, to) in edits {
        assert!(
            text.contains(from),
            "examples/lab.yaml has no `{from}` any more"
        );
        text = text.replace(from, to);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write spec variant");
    path
}

/// The binary with `--state-dir` set: `sk(state, spec, &["plan"])`.
pub fn sk_command(state: &Path, spec: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spoolkeeper"));
    c.args(args)
        .arg("-f")
        .arg(spec)
        .arg("--state-dir")
        .arg(state)
        .env_remove("RUST_LOG");
    // SK_TEST_LOG=spoolkeeper=debug: the binary's log in a failing run's stderr
    if let Ok(filter) = std::env::var("SK_TEST_LOG") {
        c.env("RUST_LOG", filter);
    }
    c
}

/// Result of one run: exit code (None when killed by a signal), stdout, stderr.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn sk(state: &Path, spec: &Path, args: &[&str]) -> Run {
    sk_command(state, spec, args)
        .output()
        .expect("run spoolkeeper")
        .into()
}

/// Runs and asserts the exit code; returns the run.
pub fn sk_expect(state: &Path, spec: &Path, args: &[&str], code: i32) -> Run {
    let r = sk(state, spec, args);
    assert_eq!(r.code, Some(code), "spoolkeeper {args:?}: {r}");
    r
}

/// Starts the binary in the background, output captured.
pub fn sk_spawn(state: &Path, spec: &Path, args: &[&str]) -> Child {
    sk_command(state, spec, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spoolkeeper")
}

/// The journal records (as JSON values) of the `lab` cluster under `state`.
pub fn journal(state: &Path) -> Vec<serde_json::Value> {
    let path = state.join("lab").join("journal.jsonl");
    spoolkeeper::state::lines::read::<serde_json::Value>(&path)
        .ok()
        .flatten()
        .map(|(records, _)| records)
        .unwrap_or_default()
}

/// `name\tguid` of every snapshot under `root` on `host` (via `lab exec`), sorted.
pub fn snapshot_guids(host: &str, root: &str) -> Vec<(String, String)> {
    let out = super::exec_ok(
        host,
        &["zfs", "get", "-Hp", "-o", "name,value", "guid", "-r", root],
    );
    let mut v: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(n, _)| n.contains('@'))
        .map(|(n, g)| (n.to_string(), g.trim().to_string()))
        .collect();
    v.sort();
    v
}

/// One property of one dataset on `host`, `-Hp -o value`.
pub fn zfs_prop(host: &str, dataset: &str, prop: &str) -> String {
    super::exec_ok(host, &["zfs", "get", "-Hp", "-o", "value", prop, dataset])
        .trim()
        .to_string()
}

/// The binary without `--state-dir` (commands that keep no state: `observe`, `validate`).
pub fn sk_stateless(spec: &Path, args: &[&str]) -> Run {
    Command::new(env!("CARGO_BIN_EXE_spoolkeeper"))
        .args(args)
        .arg("-f")
        .arg(spec)
        .env_remove("RUST_LOG")
        .output()
        .expect("run spoolkeeper")
        .into()
}
