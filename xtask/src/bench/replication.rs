//! `cargo xtask bench replication`: spoolkeeper's replication of a dataset of many small files
//! against the raw pipe and syncoid, same snapshot, same lab, same run.
//!
//! 1. The lab is converged with `examples/lab.yaml` whose schedules are held (nothing due) and
//!    whose archive BCC map already names the bench instance's domain.
//! 2. On node-a, `zdata/imap/skbench` gets [`DEFAULT_FILES`] Maildir-like files of 2–8 KB (one perl
//!    process) and one snapshot `sk_<now>`.
//! 3. A warm-up `zfs send … | wc -c` (stream size; every contender then reads a warm cache).
//! 4. Full: (a) `spoolkeeper apply` with a spec copy whose only difference is one more
//!    instance `skbench` on that dataset and `replication.every: 1s`: the plan is the full
//!    send to node-b (plus its read-only flag and the holds); (b) `zfs send | ssh node-b zfs
//!    receive -u zdata/skraw` on node-a; (c) `syncoid --no-sync-snap` into `zdata/sksyncoid`.
//! 5. a tenth as many files, a second snapshot, the incremental of each contender.
//! 6. The guids on node-b are checked against node-a's; the extra datasets are destroyed.
//!
//! spoolkeeper is timed twice: the whole `apply` (connect, observe, plan, lock, actions) and
//! its `replicate` action alone (from its JSON log). Ratios are throughputs: raw time /
//! spoolkeeper time (goal ≥ 0.95) and syncoid time / spoolkeeper time (goal ≥ 1.0).

use std::time::Duration;

use xtask::lab::Host;

use super::common::{
    Sk, destroy_datasets, host_ok, host_sh, kind_secs, lab_spec_text, list_actions, ratio,
    require_lab, secs, with_extra_instance, with_schedules, with_students_domain,
};

/// Files in the first snapshot (a tenth as many are added before the incremental).
pub const DEFAULT_FILES: u32 = 20_000;

const DS: &str = "zdata/imap/skbench";
/// The bench instance's mail domain (nobody sends there).
const DOMAIN: &str = "skbench.lab";
const RAW: &str = "zdata/skraw";
const SYNCOID: &str = "zdata/sksyncoid";
const NODE_B: &str = "root@10.77.0.12";

/// Writes files `FROM..FROM+N` as `DIR/u<k>/Maildir/cur/<i>.bench:2,S`, 2–8 KB of text each
/// (base64 of random bytes behind mail headers: compressible like mail, not trivially).
const GENERATE: &str = r#"
use strict;
use MIME::Base64;
my ($dir, $from, $n) = @ARGV;
open(my $r, "<", "/dev/urandom") or die "urandom: $!";
read($r, my $raw, 3 * 1024 * 1024) == 3 * 1024 * 1024 or die "short read";
close $r;
my $pool = encode_base64($raw, "");
my $plen = length($pool);
srand($from);
for my $u (0 .. 19) { mkdir "$dir/u$u"; my $d = "$dir/u$u/Maildir"; for my $s ("", "/cur", "/new", "/tmp") { mkdir "$d$s"; } }
for my $i ($from .. $from + $n - 1) {
  my $u = $i % 20;
  my $len = 2048 + int(rand(6144));
  my $off = int(rand($plen - $len - 1));
  my $f = "$dir/u$u/Maildir/cur/" . (1700000000 + $i) . ".M$i.bench:2,S";
  open(my $fh, ">", $f) or die "$f: $!";
  print $fh "From: sender$i\@upstream.lab\nTo: u$u\@students.lab\nSubject: bench $i\n",
            "Message-ID: <bench-$i\@spoolkeeper.lab>\n\n";
  my $body = substr($pool, $off, $len);
  $body =~ s/(.{76})/$1\n/g;
  print $fh $body, "\n";
  close $fh or die "$f: $!";
}
"#;

pub fn run(files: Option<u32>, link: Option<&str>) -> Result<(), String> {
    let files = files.unwrap_or(DEFAULT_FILES);
    require_lab()?;
    let _shaped = link.map(Shaped::new).transpose()?;
    eprintln!(
        "==> link to node-b: {}; spoolkeeper's stream: replication.compress auto (zstd, both ends have it)",
        link.unwrap_or("unshaped")
    );
    let sk = Sk::new("replication")?;
    let lab = lab_spec_text()?;
    let held = sk.write_spec(
        "held.yaml",
        &with_students_domain(&with_schedules(&lab, "3650d", "3650d")?, DOMAIN)?,
    )?;
    let bench = sk.write_spec(
        "replication.yaml",
        &with_extra_instance(
            &with_schedules(&lab, "3650d", "1s")?,
            "skbench",
            "imap/skbench",
            DOMAIN,
        )?,
    )?;
    sk.validate(&bench)?;
    cleanup()?; // leftovers of an interrupted run
    eprintln!("==> bench replication: converge the lab (schedules held)");
    sk.apply(&held)?;
    let result = measure(&sk, &bench, files);
    let cleaned = cleanup();
    let report = result?;
    cleaned?;
    println!("{report}");
    Ok(())
}

/// node-b's link shaped to a rate for as long as this lives: a token bucket on the bridge
/// side of its veth (`sk-node-b`), so every stream into node-b (direct from node-a, relayed
/// by the controller, syncoid's) crosses it.
struct Shaped;

impl Shaped {
    fn new(rate: &str) -> Result<Shaped, String> {
        let dev = "sk-node-b";
        let _ = std::process::Command::new("tc")
            .args(["qdisc", "del", "dev", dev, "root"])
            .output();
        let out = std::process::Command::new("tc")
            .args([
                "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "256kb",
                "latency", "50ms",
            ])
            .output()
            .map_err(|e| format!("tc: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tc qdisc add dev {dev} root tbf rate {rate}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        eprintln!("==> node-b's link shaped to {rate} (tbf on {dev})");
        Ok(Shaped)
    }
}

impl Drop for Shaped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tc")
            .args(["qdisc", "del", "dev", "sk-node-b", "root"])
            .output();
    }
}

fn cleanup() -> Result<(), String> {
    destroy_datasets(Host::NodeB, &[RAW, SYNCOID, DS])?;
    destroy_datasets(Host::NodeA, &[DS])
}

/// syncoid 2.1.0 lists snapshots with `zfs get -t snapshot`, which zfs-fuse lacks; its
/// fallback (`zfs get -d 1`) works, but for a remote host it is called with the ssh command
/// already prefixed and prefixes it again, so an incremental to a remote target fails
/// ("root@…: command not found"). The bench runs a copy with that one call fixed (the
/// original arguments passed on); `false` when the installed syncoid does not have the bug.
fn syncoid_copy(dir: &std::path::Path) -> Result<(std::path::PathBuf, bool), String> {
    const BUGGY: &str = "return getsnapsfallback($type,$rhost,$fs,$isroot,%snaps);";
    const FIXED: &str = "return getsnapsfallback($type,$_[1],$fs,$isroot,%snaps);";
    let text = std::fs::read_to_string("/usr/sbin/syncoid")
        .map_err(|e| format!("/usr/sbin/syncoid: {e} (is the sanoid package installed?)"))?;
    if !text.contains(BUGGY) {
        return Ok(("/usr/sbin/syncoid".into(), false));
    }
    // the scratch dir is under the workspace, which the lab hosts see as the root namespace does
    let p = dir.join("syncoid");
    std::fs::write(&p, text.replace(BUGGY, FIXED)).map_err(|e| format!("{}: {e}", p.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", p.display()))?;
    Ok((p, true))
}

fn stamp() -> String {
    spoolkeeper::decide::retention::snapshot_name("sk", jiff::Timestamp::now())
}

/// Stream size of `zfs send ARGS…` (and a warm cache for what follows).
fn stream_bytes(send_args: &[&str]) -> Result<u64, String> {
    let out = host_sh(Host::NodeA, r#"zfs send "$@" | wc -c"#, send_args)?;
    out.stdout
        .trim()
        .parse()
        .map_err(|_| format!("zfs send size: {:?}", out.stdout))
}

fn guid(host: Host, snap: &str) -> Result<String, String> {
    Ok(host_ok(
        host,
        &["zfs", "get", "-Hp", "-o", "value", "guid", snap],
        None,
    )?
    .stdout
    .trim()
    .to_owned())
}

struct Round {
    bytes: u64,
    sk_apply: Duration,
    sk_action: Option<f64>,
    raw: Duration,
    syncoid: Duration,
    actions: String,
}

impl Round {
    fn line(&self, name: &str) -> String {
        let mb = self.bytes as f64 / 1e6;
        let rate = |d: f64| format!("{:.1} MB/s", mb / d.max(1e-9));
        let sk = self.sk_apply.as_secs_f64();
        let raw = self.raw.as_secs_f64();
        let sy = self.syncoid.as_secs_f64();
        let action = self
            .sk_action
            .map_or("n/a".to_owned(), |a| format!("{a:.2} s"));
        format!(
            "  {name}: stream {mb:.1} MB\n    spoolkeeper apply {} ({}; replicate action {action}), raw pipe {} ({}), syncoid {} ({})\n    \
             spoolkeeper/raw {} (goal >= 0.95x), spoolkeeper/syncoid {} (goal >= 1.0x); \
             replicate action alone: /raw {}, /syncoid {}\n    actions: {}",
            secs(self.sk_apply),
            rate(sk),
            secs(self.raw),
            rate(raw),
            secs(self.syncoid),
            rate(sy),
            ratio(raw, sk),
            ratio(sy, sk),
            self.sk_action.map_or("n/a".into(), |a| ratio(raw, a)),
            self.sk_action.map_or("n/a".into(), |a| ratio(sy, a)),
            self.actions,
        )
    }
}

/// One round: spoolkeeper, then the raw pipe, then syncoid, on the snapshot `to`.
fn round(
    sk: &Sk,
    bench: &std::path::Path,
    syncoid: &str,
    base: Option<&str>,
    to: &str,
) -> Result<Round, String> {
    let full = format!("{DS}@{to}");
    let send: Vec<String> = match base {
        None => vec![full.clone()],
        Some(b) => vec!["-I".into(), format!("@{b}"), full.clone()],
    };
    let send_ref: Vec<&str> = send.iter().map(String::as_str).collect();
    let bytes = stream_bytes(&send_ref)?;

    eprintln!(
        "==> spoolkeeper apply ({})",
        if base.is_some() {
            "incremental"
        } else {
            "full"
        }
    );
    let r = sk.apply(bench)?;
    let actions = r.actions();
    let sk_action = kind_secs(&actions, "replicate");
    if sk_action.is_none() {
        return Err(format!(
            "spoolkeeper apply did not replicate: {}\n{}",
            list_actions(&actions),
            r.stdout
        ));
    }
    let want = guid(Host::NodeA, &full)?;
    let got = guid(Host::NodeB, &full)?;
    if want != got {
        return Err(format!("guid of {full}: node-a {want}, node-b {got}"));
    }

    eprintln!("==> raw zfs send | ssh | zfs receive");
    let mut args: Vec<&str> = vec![NODE_B, RAW];
    args.extend_from_slice(&send_ref);
    let raw = host_sh(
        Host::NodeA,
        r#"t=$1; d=$2; shift 2; zfs send "$@" | ssh -o BatchMode=yes "$t" zfs receive -u "$d""#,
        &args,
    )?
    .wall;
    let raw_snap = format!("{RAW}@{to}");
    if guid(Host::NodeB, &raw_snap)? != want {
        return Err(format!("{raw_snap} on node-b has another guid"));
    }

    eprintln!("==> syncoid");
    let target = format!("{NODE_B}:{SYNCOID}");
    let sy = host_ok(
        Host::NodeA,
        &[syncoid, "--no-sync-snap", "--quiet", DS, &target],
        None,
    )?
    .wall;
    let sy_snap = format!("{SYNCOID}@{to}");
    if guid(Host::NodeB, &sy_snap)? != want {
        return Err(format!("{sy_snap} on node-b has another guid"));
    }
    Ok(Round {
        bytes,
        sk_apply: r.wall,
        sk_action,
        raw,
        syncoid: sy,
        actions: list_actions(&actions),
    })
}

fn measure(sk: &Sk, bench: &std::path::Path, files: u32) -> Result<String, String> {
    let more = (files / 10).max(1);
    eprintln!("==> {files} files in {DS} on node-a");
    host_ok(
        Host::NodeA,
        &["zfs", "create", "-o", "compression=on", DS],
        None,
    )?;
    let mnt = "/zdata/imap/skbench";
    let from = "0".to_string();
    let gen_full = host_ok(
        Host::NodeA,
        &["perl", "-e", GENERATE, mnt, &from, &files.to_string()],
        None,
    )?
    .wall;
    let s1 = stamp();
    host_ok(
        Host::NodeA,
        &["zfs", "snapshot", &format!("{DS}@{s1}")],
        None,
    )?;
    let (syncoid, patched) = syncoid_copy(&sk.dir)?;
    let syncoid = syncoid.to_string_lossy().into_owned();
    let full = round(sk, bench, &syncoid, None, &s1)?;

    eprintln!("==> {more} more files");
    let gen_more = host_ok(
        Host::NodeA,
        &[
            "perl",
            "-e",
            GENERATE,
            mnt,
            &files.to_string(),
            &more.to_string(),
        ],
        None,
    )?
    .wall;
    let mut s2 = stamp();
    while s2 <= s1 {
        std::thread::sleep(Duration::from_millis(300));
        s2 = stamp();
    }
    // replication.every is 1s: the base must be at least that old.
    std::thread::sleep(Duration::from_millis(1100));
    host_ok(
        Host::NodeA,
        &["zfs", "snapshot", &format!("{DS}@{s2}")],
        None,
    )?;
    let inc = round(sk, bench, &syncoid, Some(&s1), &s2)?;

    Ok(format!(
        "bench replication: {files} files (written in {}), then {more} more (in {}); \
         same snapshots for every contender, guids checked on node-b{}\n{}\n{}",
        secs(gen_full),
        secs(gen_more),
        if patched {
            "\n  (syncoid: a copy of /usr/sbin/syncoid whose remote snapshot-listing fallback, \
             needed because zfs-fuse has no `zfs get -t`, does not prefix ssh twice)"
        } else {
            ""
        },
        full.line("full"),
        inc.line("incremental"),
    ))
}
