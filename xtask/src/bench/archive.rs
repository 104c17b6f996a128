//! `cargo xtask bench archive [--held N[,N…]]`: `observe`, `plan` and the purge with N held
//! copies on smtp-arch, wall time and peak resident memory of each `spoolkeeper` process.
//!
//! 1. The lab is converged (schedules held); every measurement first runs once with no bench
//!    copy on the archive (the baseline), so the growth per copy is read off two runs.
//! 2. N copies are held on smtp-arch for the archive addresses of [`USERS`] students.lab
//!    mailboxes (`skb-arc-NN=students.lab@archive.lab`): up to [`SMTP_MAX`] over one SMTP
//!    session from the root namespace, as a spool's BCC copies arrive (smtp-arch's
//!    `check_recipient_access … HOLD` holds each); beyond that, the SMTP copies' queue files
//!    are cloned straight into smtp-arch's hold directory under new queue ids (SMTP at about
//!    1,000 msg/s would take a quarter of an hour for a million). The report says which.
//! 3. Once the newest copy is older than the archive margin: `observe --output json` and
//!    `plan` with the schedules due (snapshot, replication and the purge of every copy), then
//!    `apply` with the same spec, which purges them (the report gives the purge actions' own
//!    time beside the whole apply's). Every bench copy must be gone afterwards.
//! 4. Cleanup: any bench copy left on smtp-arch is deleted.
//!
//! Goal (issue 17): plan with 1,000,000 held copies in ≤ 10 s and ≤ 256 MB, growth linear.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xtask::lab::smtp::{message_text, new_message_id};
use xtask::lab::{Host, LAB_DIR};

use super::common::{Sk, SkRun, Smtp, host_ok, kind_secs, poll, require_lab, secs};

/// Held copies of a default run.
pub const DEFAULT_HELD: &[u32] = &[10_000, 100_000];
/// Copies injected over SMTP at most; more are cloned queue files.
pub const SMTP_MAX: u32 = 100_000;
/// Mailboxes the copies are spread over.
pub const USERS: u32 = 500;
/// The goal for `plan` at a million copies.
const PLAN_GOAL_SECS: f64 = 10.0;
const PLAN_GOAL_MIB: f64 = 256.0;

const SENDER: &str = "bench@upstream.lab";
const ARCHIVE_SMTP: &str = "10.77.0.13:25";
const MARKER: &str = "skb-arc-";

fn user(n: u32) -> String {
    format!("{MARKER}{:03}", n % USERS)
}

/// smtp-arch's hold directory, seen from the root namespace.
fn hold_dir() -> PathBuf {
    Path::new(LAB_DIR).join("hosts/smtp-arch/spool-postfix/hold")
}

/// The queue ids of the bench copies on smtp-arch (any queue).
fn bench_ids() -> Result<Vec<String>, String> {
    let out = host_ok(Host::SmtpArch, &["postqueue", "-j"], None)?;
    Ok(out
        .stdout
        .lines()
        .filter(|l| l.contains(MARKER))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["queue_id"].as_str().map(str::to_owned))
        .collect())
}

fn cleanup() -> Result<(), String> {
    let ids = bench_ids()?;
    for chunk in ids.chunks(50_000) {
        let stdin: String = chunk.iter().map(|i| format!("{i}\n")).collect();
        host_ok(
            Host::SmtpArch,
            &["postsuper", "-d", "-"],
            Some(stdin.as_bytes()),
        )?;
    }
    Ok(())
}

/// Files in smtp-arch's hold directory.
fn held_files() -> Result<usize, String> {
    let d = hold_dir();
    Ok(std::fs::read_dir(&d)
        .map_err(|e| format!("{}: {e}", d.display()))?
        .count())
}

pub fn run(held: Option<Vec<u32>>) -> Result<(), String> {
    let sizes = held.unwrap_or_else(|| DEFAULT_HELD.to_vec());
    require_lab()?;
    let sk = Sk::new("archive")?;
    let lab = super::common::lab_spec_text()?;
    let held_spec = sk.write_spec(
        "held.yaml",
        &super::common::with_schedules(&lab, "3650d", "3650d")?,
    )?;
    let due_spec = sk.write_spec(
        "due.yaml",
        &super::common::with_schedules(&lab, "1m", "1m")?,
    )?;
    cleanup()?;
    eprintln!("==> bench archive: converge the lab (schedules held)");
    sk.apply(&held_spec)?;
    let base = Measure::take(&sk, &held_spec, &due_spec, 0)?;
    let mut report = format!(
        "bench archive: observe, plan and purge with N held copies on smtp-arch (release build; \
         peak RSS of each spoolkeeper process)\n  {}\n",
        base.line(None)
    );
    let mut result = Ok(());
    for n in sizes {
        match one(&sk, &held_spec, &due_spec, n, &base) {
            Ok(line) => report.push_str(&format!("  {line}\n")),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let cleaned = cleanup();
    result?;
    cleaned?;
    println!("{report}");
    Ok(())
}

fn one(sk: &Sk, held: &Path, due: &Path, n: u32, base: &Measure) -> Result<String, String> {
    let before = held_files()?;
    let how = inject(n)?;
    poll(Duration::from_secs(600), Duration::from_secs(2), || {
        Ok((held_files()? >= before + n as usize).then_some(()))
    })?
    .ok_or(format!(
        "the {n} copies never were all on hold on smtp-arch"
    ))?;
    // the purge proves a copy is in the replica only when it arrived a margin before the
    // snapshot: wait out the lab's margin (1m)
    std::thread::sleep(Duration::from_secs(65));
    let m = Measure::take(sk, held, due, n)?;
    let left = bench_ids()?.len();
    if left > 0 {
        return Err(format!(
            "{left} of {n} bench copies are still held after the purging apply (see {})",
            sk.dir.display()
        ));
    }
    Ok(format!("{} [{how}]", m.line(Some(base))))
}

/// Hold `n` bench copies on smtp-arch; says how.
fn inject(n: u32) -> Result<String, String> {
    let by_smtp = n.min(SMTP_MAX);
    eprintln!("==> {by_smtp} copies over one SMTP session");
    let t = Instant::now();
    let mut smtp = Smtp::open(ARCHIVE_SMTP)?;
    for k in 0..by_smtp {
        let u = user(k);
        let text = message_text(
            SENDER,
            &format!("{u}@students.lab"),
            &new_message_id(),
            k + 1,
            by_smtp,
        );
        smtp.send(SENDER, &format!("{u}=students.lab@archive.lab"), &text)?;
    }
    let _ = smtp.expect(Some("QUIT"), 221);
    let smtp_secs = t.elapsed();
    if n == by_smtp {
        return Ok(format!("SMTP, {} msg/s", rate(n, smtp_secs)));
    }
    // wait for the SMTP copies, then clone their queue files under new ids
    let ids = poll(Duration::from_secs(600), Duration::from_secs(2), || {
        let ids = bench_ids()?;
        Ok((ids.len() >= by_smtp as usize).then_some(ids))
    })?
    .ok_or("the SMTP copies never were all on hold")?;
    let cloned = n - by_smtp;
    eprintln!("==> {cloned} more as cloned queue files in smtp-arch's hold directory");
    let t = Instant::now();
    clone_files(&ids, cloned)?;
    Ok(format!(
        "{by_smtp} over SMTP at {} msg/s, {cloned} cloned queue files at {} files/s",
        rate(by_smtp, smtp_secs),
        rate(cloned, t.elapsed())
    ))
}

fn rate(n: u32, d: Duration) -> String {
    format!("{:.0}", f64::from(n) / d.as_secs_f64().max(1e-9))
}

/// `count` copies of the held files `ids`, named `SKB` + 12 hex digits (a valid Postfix queue
/// id: alphanumeric), owner and mode as the originals.
fn clone_files(ids: &[String], count: u32) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = hold_dir();
    let mut sources = Vec::new();
    for id in ids.iter().take(USERS as usize) {
        let p = dir.join(id);
        let meta = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        sources.push((bytes, meta.uid(), meta.gid(), meta.mode()));
    }
    if sources.is_empty() {
        return Err("no held bench copy to clone".into());
    }
    for k in 0..count {
        let (bytes, uid, gid, mode) = &sources[k as usize % sources.len()];
        let p = dir.join(format!("SKB{k:012X}"));
        std::fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))?;
        std::os::unix::fs::chown(&p, Some(*uid), Some(*gid))
            .map_err(|e| format!("{}: {e}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode & 0o7777))
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// One round of measurements.
struct Measure {
    n: u32,
    /// `postqueue -j` run on smtp-arch by itself, its whole output read: the floor of any
    /// observation of that queue.
    listing: Duration,
    observe: SkRun,
    plan: SkRun,
    /// Copies the plan purges.
    planned: u64,
    apply: Option<SkRun>,
}

impl Measure {
    /// observe and plan; with copies, the purging apply too.
    fn take(sk: &Sk, held: &Path, due: &Path, n: u32) -> Result<Measure, String> {
        let (held_s, due_s) = (held.to_string_lossy(), due.to_string_lossy());
        eprintln!("==> N={n}: postqueue -j on smtp-arch by itself");
        let t = Instant::now();
        host_ok(Host::SmtpArch, &["postqueue", "-j"], None)?;
        let listing = t.elapsed();
        eprintln!("==> N={n}: observe");
        let observe = sk.run(&["observe", "-f", &held_s, "--output", "json"], false)?;
        let seen = observe.stdout.matches(&format!("\"{MARKER}")).count();
        if observe.code != Some(0) || seen < n as usize {
            return Err(format!(
                "observe exited {:?} and listed {seen} of {n} bench copies: {}",
                observe.code,
                observe.errors()
            ));
        }
        eprintln!("==> N={n}: plan");
        let plan = sk.run(&["plan", "-f", &due_s, "--output", "json"], true)?;
        let planned = purged_in(&plan.stdout)?;
        if n > 0 && planned < u64::from(n) {
            return Err(format!(
                "the plan purges {planned} of the {n} bench copies (exit {:?}): {}",
                plan.code,
                plan.errors()
            ));
        }
        let apply = if n > 0 {
            eprintln!("==> N={n}: apply (the purge)");
            Some(sk.apply(due)?)
        } else {
            None
        };
        Ok(Measure {
            n,
            listing,
            observe,
            plan,
            planned,
            apply,
        })
    }

    fn line(&self, base: Option<&Measure>) -> String {
        let mib = |r: &SkRun| r.peak_rss_kib as f64 / 1024.0;
        let per = |r: &SkRun, b: &SkRun| {
            if self.n == 0 {
                String::new()
            } else {
                let bytes = (r.peak_rss_kib.saturating_sub(b.peak_rss_kib) * 1024) as f64
                    / f64::from(self.n);
                format!(", +{bytes:.0} B/copy")
            }
        };
        let mut s = format!("N={:>9}: ", self.n);
        match base {
            None => {
                s.push_str(&format!(
                    "postqueue -j alone {}; observe {} {:.0} MiB, plan {} (CPU {}) {:.0} MiB (baseline: no bench copy)",
                    secs(self.listing),
                    secs(self.observe.wall),
                    mib(&self.observe),
                    secs(self.plan.wall),
                    secs(self.plan.cpu),
                    mib(&self.plan)
                ));
            }
            Some(b) => {
                s.push_str(&format!(
                    "postqueue -j alone {}; observe {} {:.0} MiB{}, plan {} (CPU {}) {:.0} MiB{} ({} purged in {} batch(es))",
                    secs(self.listing),
                    secs(self.observe.wall),
                    mib(&self.observe),
                    per(&self.observe, &b.observe),
                    secs(self.plan.wall),
                    secs(self.plan.cpu),
                    mib(&self.plan),
                    per(&self.plan, &b.plan),
                    self.planned,
                    self.planned.div_ceil(50_000)
                ));
                if let Some(a) = &self.apply {
                    let purge = kind_secs(&a.actions(), "purge_archive").unwrap_or(0.0);
                    s.push_str(&format!(
                        ", apply {} {:.0} MiB (purge actions {purge:.1} s)",
                        secs(a.wall),
                        mib(a)
                    ));
                }
                if self.n >= 1_000_000 {
                    // the goal is the controller's: its own CPU time, and its memory
                    let (t, m) = (self.plan.cpu.as_secs_f64(), mib(&self.plan));
                    let met = t <= PLAN_GOAL_SECS && m <= PLAN_GOAL_MIB;
                    s.push_str(&format!(
                        "; goal plan ≤ {PLAN_GOAL_SECS:.0} s on the controller and ≤ {PLAN_GOAL_MIB:.0} MiB: {} (wall {} = the archive's own listing {} + the rest)",
                        if met { "met" } else { "MISSED" },
                        secs(self.plan.wall),
                        secs(self.listing)
                    ));
                }
            }
        }
        s
    }
}

/// The copies a plan's JSON purges (sum over its `purge_archive` actions).
fn purged_in(plan_json: &str) -> Result<u64, String> {
    let v: serde_json::Value =
        serde_json::from_str(plan_json).map_err(|e| format!("plan printed no JSON: {e}"))?;
    let actions = v["actions"].as_array().cloned().unwrap_or_default();
    Ok(actions
        .iter()
        .filter(|a| a["kind"] == "purge_archive")
        .map(|a| {
            a["args"]["queue_ids"]
                .as_array()
                .map_or(0, |q| q.len() as u64)
        })
        .sum())
}
