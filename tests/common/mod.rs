//! Helpers for the lab integration tests (`tests/lab_*.rs`): drive `cargo xtask lab ...`, talk to
//! the lab hosts over SSH/TCP, and wait for eventual outcomes.
//!
//! The xtask binary is `$SK_XTASK` when set (the `ci` task can point it at itself), otherwise
//! `cargo run -p xtask` from the workspace root. Set `SK_LAB_KEEP=1` to leave the lab up after a
//! test (for a post-mortem with `cargo xtask lab status` / `exec`).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub mod sk;

pub const SSH_IDENTITY: &str = "/var/lib/sk-lab/ssh/id_ed25519";
pub const SSH_KNOWN_HOSTS: &str = "/var/lib/sk-lab/ssh/known_hosts";
pub const NODE_A: &str = "10.77.0.11";
pub const NODE_B: &str = "10.77.0.12";
pub const SMTP_ARCH: &str = "10.77.0.13";

/// The command that runs the xtask binary.
pub fn xtask() -> Command {
    match std::env::var_os("SK_XTASK") {
        Some(bin) => Command::new(bin),
        None => {
            let cargo = option_env!("CARGO").unwrap_or("cargo");
            let mut c = Command::new(cargo);
            c.args(["run", "--quiet", "--package", "xtask", "--"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            c
        }
    }
}

/// `xtask lab ARGS...`, output captured.
pub fn lab(args: &[&str]) -> Output {
    xtask()
        .arg("lab")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run xtask lab {args:?}: {e}"))
}

/// `xtask lab ARGS...` that must succeed; returns its stdout.
pub fn lab_ok(args: &[&str]) -> String {
    let out = lab(args);
    assert!(
        out.status.success(),
        "xtask lab {args:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lab, up for the lifetime of the value; brought down on drop (even when the test panics)
/// unless `SK_LAB_KEEP` is set.
pub struct Lab(());

impl Lab {
    /// The lab as `up` leaves it, whatever an earlier test did to it: down, then up.
    pub fn fresh() -> Lab {
        lab_ok(&["down"]);
        Lab::up()
    }

    /// The lab up; an already running lab is reused as it is.
    pub fn up() -> Lab {
        lab_ok(&["up"]);
        Lab(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("SK_LAB_KEEP").is_none() {
            let out = lab(&["down"]);
            if !out.status.success() && !std::thread::panicking() {
                panic!("lab down failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

/// Sends `count` messages to `to` through the instance's service address; returns the
/// Message-IDs the server accepted (one per message, in order).
pub fn send(instance: &str, to: &str, count: u32) -> Vec<String> {
    let count_text = count.to_string();
    let stdout = lab_ok(&[
        "send",
        "--instance",
        instance,
        "--to",
        to,
        "--count",
        &count_text,
    ]);
    lines(&stdout)
}

/// The Message-IDs of every folder of `user`, over IMAP; `Err` carries xtask's stderr.
pub fn imap_ids(instance: &str, user: &str) -> Result<Vec<String>, String> {
    let out = lab(&["imap", "--instance", instance, "--user", user, "--list"]);
    if out.status.success() {
        Ok(lines(&String::from_utf8_lossy(&out.stdout)))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Waits until `user`'s mailbox holds exactly `expected` (as a set, and no duplicate); panics
/// with the last observation after `timeout`.
pub fn wait_for_mailbox(
    instance: &str,
    user: &str,
    expected: &BTreeSet<String>,
    timeout: Duration,
) {
    let mut last = Err(String::from("not read yet"));
    let seen = eventually(timeout, || {
        last = imap_ids(instance, user);
        match &last {
            Ok(ids)
                if ids.len() == expected.len()
                    && ids.iter().cloned().collect::<BTreeSet<_>>() == *expected =>
            {
                Some(())
            }
            _ => None,
        }
    });
    assert!(
        seen.is_some(),
        "{user} on {instance} never held exactly the {} sent messages; last IMAP read: {last:?}",
        expected.len()
    );
}

/// `xtask lab exec HOST -- CMD...`, output captured.
pub fn exec(host: &str, cmd: &[&str]) -> Output {
    let mut args = vec!["exec", host, "--"];
    args.extend_from_slice(cmd);
    lab(&args)
}

/// `exec` that must succeed; returns stdout.
pub fn exec_ok(host: &str, cmd: &[&str]) -> String {
    let out = exec(host, cmd);
    assert!(
        out.status.success(),
        "exec on {host} {cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` as root on `addr` through the real ssh client, strict host key checking on.
pub fn ssh(addr: &str, cmd: &[&str]) -> Output {
    Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=3",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={SSH_KNOWN_HOSTS}"))
        .args(["-i", SSH_IDENTITY])
        .arg(format!("root@{addr}"))
        .args(cmd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ssh: {e}"))
}

/// Whether a TCP connection to `addr:port` opens within `timeout`.
pub fn tcp_open(addr: &str, port: u16, timeout: Duration) -> bool {
    match format!("{addr}:{port}").parse::<SocketAddr>() {
        Ok(sa) => TcpStream::connect_timeout(&sa, timeout).is_ok(),
        Err(_) => false,
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Non-empty lines of `text`.
pub fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// An upstream MTA sending to an instance at a steady rate in the background, retrying what
/// is refused (`xtask lab send --rate`); [`Load::accepted`] waits for it and returns the
/// Message-IDs it saw accepted with 250.
pub struct Load(std::process::Child);

impl Load {
    pub fn start(instance: &str, to: &str, count: u32, rate: u32, deadline: &str) -> Load {
        let child = xtask()
            .args(["lab", "send", "--instance", instance, "--to", to])
            .args(["--count", &count.to_string(), "--rate", &rate.to_string()])
            .args(["--deadline", deadline])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sender starts");
        Load(child)
    }

    pub fn accepted(mut self) -> Vec<String> {
        use std::io::BufRead;
        let Some(out) = self.0.stdout.take() else {
            return Vec::new();
        };
        let ids: Vec<String> = std::io::BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        let _ = self.0.wait();
        ids
    }
}

/// Every accepted message is in `user`'s mailbox on `instance`, none twice (waits for
/// delivery up to `timeout`).
pub fn exactly_once(instance: &str, user: &str, accepted: &BTreeSet<String>, timeout: Duration) {
    exactly_once_ctx(instance, user, accepted, timeout, "")
}

/// [`exactly_once`], naming `ctx` (the step of a test) when it fails.
pub fn exactly_once_ctx(
    instance: &str,
    user: &str,
    accepted: &BTreeSet<String>,
    timeout: Duration,
    ctx: &str,
) {
    let mut last = Vec::new();
    let ok = eventually(timeout, || {
        last = imap_ids(instance, user).ok()?;
        let set: BTreeSet<String> = last.iter().cloned().collect();
        accepted.is_subset(&set).then_some(())
    });
    let set: BTreeSet<String> = last.iter().cloned().collect();
    let missing: Vec<&String> = accepted.difference(&set).collect();
    assert!(
        ok.is_some(),
        "{ctx}: {} of {} accepted message(s) missing for {user}: {missing:?}",
        missing.len(),
        accepted.len()
    );
    assert_eq!(
        last.len(),
        set.len(),
        "{ctx}: some message is in {user}'s mailbox twice"
    );
}

/// Whether the long lab sweeps run whole (`SK_LAB_FULL=1`, or `cargo xtask ci --full`); CI
/// runs a fixed sample of them so that it stays well inside its time.
pub fn full_sweeps() -> bool {
    std::env::var_os("SK_LAB_FULL").is_some_and(|v| v == "1")
}

/// The first kill boundary of a sweep over a plan of `n` actions: see [`next_boundary`].
pub fn first_boundary(n: usize) -> usize {
    if full_sweeps() { 1 } else { (n / 2).max(1) }
}

/// The next kill boundary of a sweep after `k` over plans of `lens` actions: every boundary
/// with [`full_sweeps`], else a fixed sample: the middle of each plan (the simulator kills at
/// every boundary of every plan it makes). Returns a value past every plan when none is left.
pub fn next_boundary(k: usize, lens: &[usize]) -> usize {
    let end = lens.iter().copied().max().unwrap_or(0);
    if full_sweeps() {
        return k + 1;
    }
    lens.iter()
        .map(|&n| (n / 2).max(1))
        .filter(|&b| b > k)
        .min()
        .unwrap_or(end.max(k + 1))
}
