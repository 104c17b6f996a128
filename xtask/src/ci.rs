//! `cargo xtask ci`: every check and every test, in the order that fails fastest.
//!
//! Lab tests (real ZFS, Postfix, Dovecot, sshd in network namespaces) need root; they run
//! one at a time after the unit and integration tests. Set `SK_SKIP_LAB=1` to leave them
//! out knowingly (the run then says so); without root and without that variable, ci fails.
//! The long lab sweeps (kills at every action boundary) run a fixed sample of their cases;
//! `--full` (or `SK_LAB_FULL=1`) runs them whole.

use crate::util::{cargo, is_root, run};

pub fn main(no_lab: bool, full: bool) -> Result<(), String> {
    let cargo = cargo();
    if full {
        // SAFETY: set before any thread of ours starts; the test processes inherit it
        unsafe { std::env::set_var("SK_LAB_FULL", "1") };
    }
    let skip_lab = std::env::var("SK_SKIP_LAB").is_ok_and(|v| v == "1") || no_lab;
    run("format", &cargo, &["fmt", "--all", "--", "--check"])?;
    run(
        "lint",
        &cargo,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    run("tests", &cargo, &["test", "--workspace"])?;
    // A fixed sample (seeds 0-299, 200 steps each: about 30 s in a debug build); longer
    // sweeps: `cargo xtask simulate --seeds N --steps M`.
    run(
        "simulator (fixed sample)",
        &cargo,
        &[
            "run",
            "--quiet",
            "--package",
            "sk-sim",
            "--",
            "--seeds",
            "300",
            "--steps",
            "200",
        ],
    )?;
    run(
        "fuzz target builds",
        &cargo,
        &["build", "--manifest-path", "xtask/fuzz/Cargo.toml"],
    )?;
    if skip_lab {
        eprintln!("==> lab tests: SKIPPED (SK_SKIP_LAB=1 or --no-lab)");
        return Ok(());
    }
    if !is_root() {
        return Err(
            "lab tests need root (network namespaces, zfs-fuse); run as root or set SK_SKIP_LAB=1"
                .into(),
        );
    }
    // Install what the root tests need (a fresh machine has no zfs-fuse, Postfix, Dovecot):
    // bringing the lab up does, and proves it builds; the tests bring up their own.
    eprintln!("==> lab packages and a trial run: lab up, lab down");
    xtask::lab::up().map_err(|e| format!("lab up: {e}"))?;
    xtask::lab::down().map_err(|e| format!("lab down: {e}"))?;
    // Every ignored test needs root and real components: the lab tests (tests/lab_*.rs)
    // and the real-Postfix SMTP test. One at a time: they share the lab.
    run(
        "lab and root tests",
        &cargo,
        // every lab test file runs even when an earlier one fails: one CI run shows them all
        &[
            "test",
            "--workspace",
            "--no-fail-fast",
            "--",
            "--ignored",
            "--test-threads=1",
        ],
    )
}
