//! `cargo xtask bench prune`: spoolkeeper's pruning of [`DEFAULT_COUNT`] snapshots against
//! `sanoid --prune-snapshots` with the equivalent policy, same pool, same run.
//!
//! - `zdata/sksanoid` gets [`DEFAULT_COUNT`] snapshots in sanoid's naming
//!   (`autosnap_<date>_frequently`), `zdata/imap/skprune` as many in spoolkeeper's
//!   (`sk_YYYYMMDDTHHMMSSZ`, one hour apart back from now), each set by one `sh` loop.
//! - The newest `sk_` snapshot is sent to node-b by hand (read-only replica, equal guid), so
//!   that spoolkeeper's plan is the pruning and the holds on that base, not a first send.
//! - spoolkeeper: `apply` with a spec copy that adds the instance `skprune` and keeps
//!   `{ hourly: 1 }`. Both tools bucket by the snapshot's real `creation` (spoolkeeper's rules
//!   and sanoid's ages alike), and every snapshot here was created within minutes, so the
//!   equivalent policies keep exactly one, the newest: spoolkeeper's current-hour bucket, and
//!   sanoid's `frequently = 1` with `frequent_period = 1` (the one newest, everything older
//!   than a minute may go). The bench waits until the sanoid snapshots are over a minute old.
//! - sanoid runs with its own `--configdir`, `--cache-dir` and `--run-dir` in a scratch
//!   directory, as its users run it (its per-snapshot "is a send running?" check included).
//!
//! Ratio: sanoid's time per destroyed snapshot / spoolkeeper's (above 1: spoolkeeper faster).

use std::time::{Duration, Instant};

use xtask::lab::Host;

use super::common::{
    Sk, destroy_datasets, host_ok, host_run, host_sh, kind_secs, lab_spec_text, list_actions,
    ratio, require_lab, secs, with_extra_instance, with_keep, with_schedules, with_students_domain,
};

/// Snapshots per dataset.
pub const DEFAULT_COUNT: usize = 5_000;

const SK_DS: &str = "zdata/imap/skprune";
const SANOID_DS: &str = "zdata/sksanoid";
/// The bench instance's mail domain (nobody sends there).
const DOMAIN: &str = "skprune.lab";

const SNAPSHOT_LOOP: &str = r#"ds=$1; while read -r n; do zfs snapshot "$ds@$n" || exit 1; done"#;

pub fn run(count: Option<u32>) -> Result<(), String> {
    let count = count.map_or(DEFAULT_COUNT, |c| c as usize);
    require_lab()?;
    let sk = Sk::new("prune")?;
    let lab = lab_spec_text()?;
    let held_text = with_schedules(&lab, "3650d", "3650d")?;
    let held = sk.write_spec("held.yaml", &with_students_domain(&held_text, DOMAIN)?)?;
    let bench = sk.write_spec(
        "prune.yaml",
        &with_keep(
            &with_extra_instance(&held_text, "skprune", "imap/skprune", DOMAIN)?,
            "{ hourly: 1 }",
        )?,
    )?;
    sk.validate(&bench)?;
    cleanup()?;
    eprintln!("==> bench prune: converge the lab (schedules held)");
    sk.apply(&held)?;
    let result = measure(&sk, &bench, count);
    let cleaned = cleanup();
    let report = result?;
    cleaned?;
    println!("{report}");
    Ok(())
}

fn cleanup() -> Result<(), String> {
    destroy_datasets(Host::NodeB, &[SK_DS])?;
    destroy_datasets(Host::NodeA, &[SK_DS, SANOID_DS])
}

/// sanoid 2.1.0 lists snapshots with `zfs get -Hrpt snapshot creation`; zfs-fuse has no
/// `-t` there, the listing fails silently and sanoid prunes nothing. The bench runs a copy that
/// lists `zfs get -Hrp creation` (every dataset and snapshot; sanoid's own pattern keeps the
/// snapshot lines). `false` when the installed sanoid lists otherwise (used as it is).
fn sanoid_copy(dir: &std::path::Path) -> Result<(String, bool), String> {
    const LISTING: &str = "$zfs get -Hrpt snapshot creation |";
    let text = std::fs::read_to_string("/usr/sbin/sanoid")
        .map_err(|e| format!("/usr/sbin/sanoid: {e} (is the sanoid package installed?)"))?;
    if !text.contains(LISTING) {
        return Ok(("/usr/sbin/sanoid".into(), false));
    }
    let p = dir.join("sanoid");
    std::fs::write(&p, text.replace(LISTING, "$zfs get -Hrp creation |"))
        .map_err(|e| format!("{}: {e}", p.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", p.display()))?;
    Ok((p.to_string_lossy().into_owned(), true))
}

fn snapshot_count(host: Host, ds: &str) -> Result<usize, String> {
    let out = host_ok(
        host,
        &[
            "zfs", "list", "-H", "-r", "-t", "snapshot", "-o", "name", ds,
        ],
        None,
    )?;
    Ok(out
        .stdout
        .lines()
        .filter(|l| l.starts_with(&format!("{ds}@")))
        .count())
}

fn sanoid_conf() -> String {
    format!(
        "# spoolkeeper bench: keep the one newest, prune anything older than a minute\n\
         [{SANOID_DS}]\n\
         \tfrequently = 1\n\tfrequent_period = 1\n\thourly = 0\n\tdaily = 0\n\tweekly = 0\n\
         \tmonthly = 0\n\tyearly = 0\n\tautosnap = no\n\tautoprune = yes\n"
    )
}

fn measure(sk: &Sk, bench: &std::path::Path, count: usize) -> Result<String, String> {
    let now = jiff::Timestamp::now();
    let hour = jiff::SignedDuration::from_hours(1);
    // oldest first, so that createtxg follows the names
    let instants: Vec<jiff::Timestamp> = (0..count).rev().map(|i| now - hour * i as i32).collect();
    let sk_names: String = instants
        .iter()
        .map(|t| spoolkeeper::decide::retention::snapshot_name("sk", *t) + "\n")
        .collect();
    let sanoid_names: String = instants
        .iter()
        .map(|t| format!("autosnap_{}_frequently\n", t.strftime("%Y-%m-%d_%H:%M:%S")))
        .collect();
    let newest_sk = spoolkeeper::decide::retention::snapshot_name("sk", now);

    for ds in [SANOID_DS, SK_DS] {
        host_ok(Host::NodeA, &["zfs", "create", ds], None)?;
    }
    eprintln!("==> {count} snapshots on {SANOID_DS} (sanoid naming)");
    let made_sanoid = host_ok(
        Host::NodeA,
        &["sh", "-c", SNAPSHOT_LOOP, "sh", SANOID_DS],
        Some(sanoid_names.as_bytes()),
    )?
    .wall;
    let sanoid_ready = Instant::now() + Duration::from_secs(62);
    eprintln!("==> {count} snapshots on {SK_DS} (spoolkeeper naming)");
    let made_sk = host_ok(
        Host::NodeA,
        &["sh", "-c", SNAPSHOT_LOOP, "sh", SK_DS],
        Some(sk_names.as_bytes()),
    )?
    .wall;
    for (ds, want) in [(SANOID_DS, count), (SK_DS, count)] {
        let n = snapshot_count(Host::NodeA, ds)?;
        if n != want {
            return Err(format!("{ds} has {n} snapshots, expected {want}"));
        }
    }
    eprintln!("==> the newest to node-b by hand (the replication base)");
    host_sh(
        Host::NodeA,
        r#"zfs send "$1" | ssh -o BatchMode=yes root@10.77.0.12 zfs receive -u -d zdata"#,
        &[&format!("{SK_DS}@{newest_sk}")],
    )?;
    host_ok(Host::NodeB, &["zfs", "set", "readonly=on", SK_DS], None)?;

    eprintln!("==> spoolkeeper apply (keep {{ hourly: 1 }})");
    let r = sk.apply(bench)?;
    let actions = r.actions();
    let destroy_secs = kind_secs(&actions, "destroy_snapshots");
    let sk_left = snapshot_count(Host::NodeA, SK_DS)?;
    let sk_destroyed = count - sk_left.min(count);
    if destroy_secs.is_none() || sk_destroyed == 0 {
        return Err(format!(
            "spoolkeeper pruned nothing ({sk_left} left): {}\n{}",
            list_actions(&actions),
            r.stdout
        ));
    }

    eprintln!(
        "==> spoolkeeper: destroyed {sk_destroyed} ({sk_left} left) in {} (destroy_snapshots \
         action {:.2} s)",
        super::common::secs(r.wall),
        destroy_secs.unwrap_or(0.0)
    );
    // sanoid: its config, defaults, cache and run dirs in a scratch directory; /tmp is the
    // same file system inside the lab hosts.
    let dir = std::env::temp_dir().join(format!("sk-bench-sanoid-{}", std::process::id()));
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("cache")).map_err(io)?;
    std::fs::create_dir_all(dir.join("run")).map_err(io)?;
    std::fs::write(dir.join("sanoid.conf"), sanoid_conf()).map_err(io)?;
    std::fs::copy(
        "/usr/share/sanoid/sanoid.defaults.conf",
        dir.join("sanoid.defaults.conf"),
    )
    .map_err(|e| format!("sanoid.defaults.conf: {e} (is the sanoid package installed?)"))?;
    let (sanoid_bin, patched) = sanoid_copy(&dir)?;
    let wait = sanoid_ready.saturating_duration_since(Instant::now());
    if !wait.is_zero() {
        eprintln!(
            "==> waiting {} until every sanoid snapshot is over a minute old",
            secs(wait)
        );
        std::thread::sleep(wait);
    }
    eprintln!("==> sanoid --prune-snapshots");
    let d = dir.to_string_lossy().into_owned();
    let sanoid = host_run(
        Host::NodeA,
        &[
            &sanoid_bin,
            "--configdir",
            &d,
            "--cache-dir",
            &format!("{d}/cache"),
            "--run-dir",
            &format!("{d}/run"),
            "--prune-snapshots",
        ],
        None,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let sanoid = sanoid?;
    if !sanoid.ok() {
        return Err(format!(
            "sanoid exited {:?}: {}{}",
            sanoid.code, sanoid.stdout, sanoid.stderr
        ));
    }
    let sanoid_left = snapshot_count(Host::NodeA, SANOID_DS)?;
    let sanoid_destroyed = count - sanoid_left.min(count);
    if sanoid_destroyed == 0 {
        return Err(format!(
            "sanoid pruned nothing ({sanoid_left} left): {}{}",
            sanoid.stdout, sanoid.stderr
        ));
    }

    let per = |d: f64, n: usize| d / n.max(1) as f64;
    let sk_apply = r.wall.as_secs_f64();
    let patched_note = if patched {
        "\n  (sanoid: a copy of /usr/sbin/sanoid listing snapshots with `zfs get -Hrp creation`: \
         zfs-fuse has no `zfs get -t`, with which the original lists nothing and prunes nothing)"
    } else {
        ""
    };
    let sk_action = destroy_secs.unwrap_or(sk_apply);
    let sa = sanoid.wall.as_secs_f64();
    Ok(format!(
        "bench prune: {count} snapshots per dataset (created in {} for sanoid, {} for spoolkeeper)\n  \
         spoolkeeper apply: destroyed {sk_destroyed} ({sk_left} left) in {} (destroy_snapshots action {:.2} s, {:.1} ms/snapshot)\n  \
         sanoid --prune-snapshots: destroyed {sanoid_destroyed} ({sanoid_left} left) in {} ({:.1} ms/snapshot)\n  \
         time per destroyed snapshot, sanoid/spoolkeeper: {} (whole apply), {} (destroy action alone)\n  \
         actions: {}{patched_note}",
        secs(made_sanoid),
        secs(made_sk),
        secs(r.wall),
        sk_action,
        per(sk_action, sk_destroyed) * 1000.0,
        secs(sanoid.wall),
        per(sa, sanoid_destroyed) * 1000.0,
        ratio(per(sa, sanoid_destroyed), per(sk_apply, sk_destroyed)),
        ratio(per(sa, sanoid_destroyed), per(sk_action, sk_destroyed)),
        list_actions(&actions),
    ))
}
