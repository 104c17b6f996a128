//! `cargo xtask bench observe`: parse a synthetic `zfs get -Hp -r` listing of 40,000
//! datasets × 100 snapshots (~4M snapshots, 10 properties each) into the observed model,
//! and print rows/s and peak RSS. Goal: ≤ 2 s and ≤ 1 GiB peak (release build).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::Instant;

const DATASETS: usize = 40_000;
const SNAPSHOTS: usize = 100;

/// Generate the listing into a temporary file, parse it streaming, report.
pub fn run() -> Result<(), String> {
    let path = std::env::temp_dir().join(format!("sk-bench-observe-{}.txt", std::process::id()));
    let result = run_at(&path);
    let _ = std::fs::remove_file(&path);
    result
}

fn run_at(path: &std::path::Path) -> Result<(), String> {
    let t0 = Instant::now();
    let (rows, bytes) =
        generate(path).map_err(|e| format!("generating {}: {e}", path.display()))?;
    eprintln!(
        "generated {rows} rows ({:.1} MiB) in {:.2?}",
        bytes as f64 / (1024.0 * 1024.0),
        t0.elapsed()
    );
    let hwm_before = peak_rss_kib();
    let file = File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let t1 = Instant::now();
    let datasets = spoolkeeper::adapters::zfs::parse_listing(file).map_err(|e| e.to_string())?;
    let elapsed = t1.elapsed();
    let snaps: usize = datasets.iter().map(|d| d.snapshots.len()).sum();
    if datasets.len() != DATASETS || snaps != DATASETS * SNAPSHOTS {
        return Err(format!(
            "parsed {} datasets / {snaps} snapshots, expected {DATASETS} / {}",
            datasets.len(),
            DATASETS * SNAPSHOTS
        ));
    }
    let secs = elapsed.as_secs_f64();
    let peak = peak_rss_kib();
    println!(
        "bench observe: {rows} rows, {} datasets, {snaps} snapshots parsed in {secs:.3} s \
         = {:.0} rows/s ({:.0} MiB/s); peak RSS {} MiB (before parse {} MiB)",
        datasets.len(),
        rows as f64 / secs,
        bytes as f64 / (1024.0 * 1024.0) / secs,
        peak.map_or("?".into(), |k| (k / 1024).to_string()),
        hwm_before.map_or("?".into(), |k| (k / 1024).to_string()),
    );
    drop(datasets);
    Ok(())
}

pub(crate) fn generate(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut rows = 0u64;
    let mut bytes = 0u64;
    let mut txg = 100u64;
    let mut guid = 0x9e37_79b9_7f4a_7c15u64;
    let mut line = |w: &mut BufWriter<File>, s: std::fmt::Arguments| -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(96);
        buf.write_fmt(s)?;
        bytes += buf.len() as u64;
        rows += 1;
        w.write_all(&buf)
    };
    for d in 0..DATASETS {
        let name = format!("zdata/imap/box{d:05}");
        guid = guid
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let props: [(&str, String); 10] = [
            ("type", "filesystem".into()),
            ("creation", "1700000000".into()),
            ("guid", guid.to_string()),
            ("used", "123456789".into()),
            ("userrefs", "-".into()),
            ("readonly", "off".into()),
            ("mounted", "yes".into()),
            ("mountpoint", format!("/{name}")),
            ("createtxg", txg.to_string()),
            ("spoolkeeper:role", "active".into()),
        ];
        for (p, v) in &props {
            line(&mut w, format_args!("{name}\t{p}\t{v}\n"))?;
        }
        for s in 0..SNAPSHOTS {
            txg += 1;
            guid = guid
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let creation = 1_700_000_000 + s as u64 * 3600;
            let snap = format!("{name}@sk-{creation}");
            let props: [(&str, String); 10] = [
                ("type", "snapshot".into()),
                ("creation", creation.to_string()),
                ("guid", guid.to_string()),
                ("used", "4096".into()),
                ("userrefs", "0".into()),
                ("readonly", "-".into()),
                ("mounted", "-".into()),
                ("mountpoint", "-".into()),
                ("createtxg", txg.to_string()),
                ("spoolkeeper:role", "active".into()),
            ];
            for (p, v) in &props {
                line(&mut w, format_args!("{snap}\t{p}\t{v}\n"))?;
            }
        }
    }
    w.flush()?;
    Ok((rows, bytes))
}

/// VmHWM (peak resident set) of this process, KiB.
fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
