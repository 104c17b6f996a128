//! `cargo xtask ci`: every check and every test, in the order that fails fastest.
//!
//! Lab tests (real ZFS, Postfix, Dovecot, sshd in network namespaces) need root; they run
//! one at a time after the unit and integration tests. Set `SK_SKIP_LAB=1` to leave them
//! out knowingly (the run then says so); without root and without that variable, ci fails.
//! The long lab sweeps (kills at every action boundary) run a fixed sample of their cases;
//! `--full` (or `SK_LAB_FULL=1`) runs them whole.

use std::time::Instant;

use crate::util::{cargo, is_root, root, run};

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
    // type-checked, not linked: its own workspace would rebuild every dependency in full
    run(
        "fuzz target compiles",
        &cargo,
        &["check", "--manifest-path", "xtask/fuzz/Cargo.toml"],
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
    // The ignored tests of the crates themselves need root and real programs (Postfix's
    // postmap, tcsh, a real Postfix for SMTP).
    run(
        "root tests of the crates",
        &cargo,
        &[
            "test",
            "--workspace",
            "--lib",
            "--bins",
            "--",
            "--ignored",
            "--test-threads=1",
        ],
    )?;
    lab_tests(&cargo, full)
}

/// Lab tests that only `--full` runs (`file` for a whole file, `file::test` for one test):
/// CI must end well inside its 90 minutes on a slower machine than this one, so it runs one
/// lab test per capability and leaves out the longest, each named with what in CI (or the
/// simulator) still checks its guarantees. A run lists what it left out. The whole lab suite
/// took 45 minutes here on 2026-12-04, CI's share about 15.
const FULL_ONLY: &[&str] = &[
    // the controller killed at every action boundary: the simulator kills it at every boundary
    // of every plan it makes, by seed; CI's lab_drills runs the failover with a snapshot due
    "lab_drills::the_controller_killed_at_every_boundary",
    // power loss mid-send: lab_replication cuts the link during a send, lab_failover and
    // lab_own_postfix pull the active's plug under load
    "lab_drills::power_loss_of_the_active_in_the_middle_of_a_large_send",
    // held copies and a cut archive host: arch_restore (in CI) checks the held copies it
    // replays; the simulator cuts and powers off the archive host by seed
    "lab_archive::mail_accepted_by_a_spool_is_held_on_the_archive_host",
    "lab_archive::with_the_archive_host_cut_mail_is_accepted_and_the_copies_arrive_after_heal",
    "lab_archive::a_purge_deletes_only_copies_the_replica_holds",
    // the relayed stream: the direct one is in CI, and both share the planner's steps
    "lab_replication::relay_replication_goes_through_the_controller",
    // the controller's schedule, metrics, backoff and second controller: its switchover and
    // stops are in CI, the lock between controllers in lab_lock
    "lab_controller::the_controller_keeps_the_schedule_and_its_metrics_agree_with_status",
    "lab_controller::a_cut_node_grows_the_backoff_and_controllers_never_act_at_once",
    // drill, restore and the GitOps pipeline on the lab: their planning is unit- and
    // property-tested, the saved plan's staleness is in lab_engine
    "lab_drill",
    "lab_restore",
    "lab_gitops",
];

/// Every `tests/lab_*.rs`, one cargo run each (they share the lab: one at a time), each
/// timed; every file runs even when an earlier one fails, and the end lists them all.
fn lab_tests(cargo: &str, full: bool) -> Result<(), String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join("tests"))
        .map_err(|e| format!("cannot list tests/: {e}"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".rs").map(str::to_owned))
        .filter(|n| n.starts_with("lab_"))
        .collect();
    files.sort();
    let started = Instant::now();
    let mut rows = Vec::new();
    for f in &files {
        if !full && FULL_ONLY.contains(&f.as_str()) {
            rows.push((f.clone(), None, "left out (--full runs it)".to_owned()));
            continue;
        }
        let skipped: Vec<&str> = if full {
            Vec::new()
        } else {
            FULL_ONLY
                .iter()
                .filter_map(|e| e.strip_prefix(f.as_str())?.strip_prefix("::"))
                .collect()
        };
        let mut args = vec![
            "test",
            "--package",
            "spoolkeeper",
            "--test",
            f,
            "--",
            "--ignored",
            "--test-threads=1",
        ];
        for t in &skipped {
            args.extend(["--skip", t]);
        }
        let t = Instant::now();
        let ok = run(&format!("lab test {f}"), cargo, &args).is_ok();
        let mut what = if ok { "ok" } else { "FAILED" }.to_owned();
        if !skipped.is_empty() {
            what.push_str(&format!(
                " (left out, --full runs them: {})",
                skipped.join(", ")
            ));
        }
        rows.push((f.clone(), Some(t.elapsed()), what));
    }
    eprintln!(
        "==> lab tests: {} files in {:.0} s",
        files.len(),
        started.elapsed().as_secs_f64()
    );
    for (f, took, what) in &rows {
        match took {
            Some(d) => eprintln!("    {f:<20} {:>6.0} s  {what}", d.as_secs_f64()),
            None => eprintln!("    {f:<20} {:>8}  {what}", "-"),
        }
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.2.starts_with("FAILED"))
        .map(|r| r.0.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("lab tests failed: {}", failed.join(", ")))
    }
}
