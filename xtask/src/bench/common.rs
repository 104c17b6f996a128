//! What the lab benches share: commands inside a lab host (output captured), the release
//! `spoolkeeper` binary with a private state directory and a JSON log, per-action timings read
//! from that log, and copies of `examples/lab.yaml` with one or two lines changed.
//!
//! Every shell script here is a constant of the bench; values reach it as positional
//! arguments (`sh -c SCRIPT sh ARG…`), never spliced into the script text.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xtask::lab::smtp::{dot_stuff, read_reply};
use xtask::lab::{Host, LAB_DIR};

use crate::util::{cargo, root, run};

/// The lab script as `lab up` installs it (the spec's fencing command uses it too).
pub fn sk_lab() -> PathBuf {
    Path::new(LAB_DIR).join("bin/sk-lab")
}

/// What one command printed, and how long it took.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub wall: Duration,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Run `argv` inside `host` (`sk-lab exec`), with `stdin` fed to it, output captured.
pub fn host_run(host: Host, argv: &[&str], stdin: Option<&[u8]>) -> Result<Out, String> {
    let mut cmd = Command::new(sk_lab());
    cmd.arg("exec")
        .arg(host.name())
        .args(argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let t = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {} exec {host}: {e}", sk_lab().display()))?;
    let feeder = match (stdin, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => {
            let bytes = bytes.to_vec();
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            }))
        }
        _ => None,
    };
    let out = child
        .wait_with_output()
        .map_err(|e| format!("exec {host}: {e}"))?;
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Ok(Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        wall: t.elapsed(),
    })
}

/// [`host_run`] that must exit 0.
pub fn host_ok(host: Host, argv: &[&str], stdin: Option<&[u8]>) -> Result<Out, String> {
    let out = host_run(host, argv, stdin)?;
    if out.ok() {
        Ok(out)
    } else {
        Err(format!(
            "on {host}: `{}` exited {:?}: {}",
            argv.join(" "),
            out.code,
            out.stderr.trim()
        ))
    }
}

/// `sh -c SCRIPT sh ARGS…` inside `host`; must exit 0.
pub fn host_sh(host: Host, script: &str, args: &[&str]) -> Result<Out, String> {
    let mut argv = vec!["sh", "-c", script, "sh"];
    argv.extend_from_slice(args);
    host_ok(host, &argv, None)
}

/// The lab must be up (`cargo xtask lab up`) and its script installed.
pub fn require_lab() -> Result<(), String> {
    if !super::lab_is_up() || !sk_lab().exists() {
        return Err("the lab is not up: run `cargo xtask lab up` first".into());
    }
    Ok(())
}

/// Scratch files of a bench: `target/bench/<name>/`, emptied first.
pub fn scratch(name: &str) -> Result<PathBuf, String> {
    let dir = root().join("target/bench").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// The release `spoolkeeper` with a state directory of its own (journal, ledger, lock).
pub struct Sk {
    bin: PathBuf,
    pub dir: PathBuf,
    state: PathBuf,
    /// Runs so far (numbers the saved logs).
    runs: std::cell::Cell<u32>,
    /// Every run goes through it, so its peak RSS is the command's own, not this bench's
    /// (see `xtask::rusage`).
    launcher: std::cell::RefCell<xtask::rusage::Launcher>,
}

/// One run of `spoolkeeper`.
#[derive(Debug)]
pub struct SkRun {
    pub code: Option<i32>,
    pub stdout: String,
    /// The JSON log (`--log-format json -vv`).
    pub log: String,
    pub wall: Duration,
    /// Peak resident memory of the process, KiB (`ru_maxrss` of `wait4`).
    pub peak_rss_kib: u64,
    /// CPU time of the process (user + system).
    pub cpu: Duration,
}

impl SkRun {
    /// Every action the run executed, with its duration, in the order they finished.
    pub fn actions(&self) -> Vec<ActionTime> {
        action_times(&self.log)
    }

    /// The first failure lines of the log, to put in an error message.
    pub fn errors(&self) -> String {
        let mut out = Vec::new();
        for line in self.log.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                if !line.trim().is_empty() {
                    out.push(line.to_owned());
                }
                continue;
            };
            if matches!(v["level"].as_str(), Some("ERROR" | "WARN")) {
                out.push(v["fields"].to_string());
            }
        }
        out.truncate(8);
        out.join("\n")
    }
}

impl Sk {
    /// Build the release binary; scratch directory `target/bench/<name>/` (state inside).
    pub fn new(name: &str) -> Result<Sk, String> {
        run(
            "release build",
            &cargo(),
            &["build", "--quiet", "--release", "--bin", "spoolkeeper"],
        )?;
        let dir = scratch(name)?;
        let state = dir.join("state");
        let me = std::env::current_exe().map_err(|e| format!("this xtask's path: {e}"))?;
        let launcher = xtask::rusage::Launcher::start(&me)
            .map_err(|e| format!("cannot start the launcher {}: {e}", me.display()))?;
        Ok(Sk {
            bin: root().join("target/release/spoolkeeper"),
            dir,
            state,
            runs: std::cell::Cell::new(0),
            launcher: std::cell::RefCell::new(launcher),
        })
    }

    /// `spoolkeeper --log-format json -vv ARGS… [--state-dir D]`; the log is kept as
    /// `<scratch>/<n>-<command>.log` for a post-mortem.
    pub fn run(&self, args: &[&str], state_dir: bool) -> Result<SkRun, String> {
        let mut argv: Vec<String> = vec![self.bin.to_string_lossy().into_owned()];
        argv.extend(["--log-format", "json", "-vv"].map(String::from));
        argv.extend(args.iter().map(|a| a.to_string()));
        if state_dir {
            argv.push("--state-dir".into());
            argv.push(self.state.to_string_lossy().into_owned());
        }
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let name = format!("{n:02}-{}", args.first().copied().unwrap_or("run"));
        let log = self.dir.join(format!("{name}.log"));
        let stdout = self.dir.join(format!("{name}.stdout"));
        let t = Instant::now();
        let reply = self
            .launcher
            .borrow_mut()
            .run(&xtask::rusage::Request {
                argv,
                cwd: root(),
                env_remove: vec!["RUST_LOG".into()],
                stdout: stdout.clone(),
                stderr: log.clone(),
            })
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let wall = t.elapsed();
        if let Some(e) = reply.error {
            return Err(e);
        }
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let out = read(&stdout)?;
        let _ = std::fs::remove_file(&stdout);
        Ok(SkRun {
            code: reply.code,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            log: String::from_utf8_lossy(&read(&log)?).into_owned(),
            wall,
            peak_rss_kib: reply.peak_rss_kib,
            cpu: xtask::rusage::cpu(&reply),
        })
    }

    /// `apply -f SPEC`, which must converge (exit 0).
    pub fn apply(&self, spec: &Path) -> Result<SkRun, String> {
        let spec = spec.to_string_lossy();
        let r = self.run(&["apply", "-f", &spec], true)?;
        if r.code == Some(0) {
            Ok(r)
        } else {
            Err(format!(
                "`spoolkeeper apply -f {spec}` exited {:?}:\n{}\n{}",
                r.code,
                r.stdout.trim(),
                r.errors()
            ))
        }
    }

    /// `validate -f SPEC` must accept the copy (nothing contacted).
    pub fn validate(&self, spec: &Path) -> Result<(), String> {
        let p = spec.to_string_lossy();
        let r = self.run(&["validate", "-f", &p], false)?;
        if r.code == Some(0) {
            Ok(())
        } else {
            Err(format!(
                "the bench's spec copy {p} is invalid:\n{}{}",
                r.stdout, r.log
            ))
        }
    }

    /// Write a spec copy into the scratch directory.
    pub fn write_spec(&self, file: &str, text: &str) -> Result<PathBuf, String> {
        let p = self.dir.join(file);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    }
}

/// One executed action and how long it ran (from its `start` event to its `done`/`failed`).
#[derive(Debug, Clone, PartialEq)]
pub struct ActionTime {
    pub id: String,
    pub secs: f64,
    pub ok: bool,
}

impl ActionTime {
    /// The action's kind (`replicate`, `destroy_snapshots`, …): the middle of `host:kind:object`.
    pub fn kind(&self) -> &str {
        self.id.split(':').nth(1).unwrap_or("")
    }
}

/// Read an apply's JSON log: the executor logs `start` inside the `action` span (field `id`)
/// and `done`/`failed` with an `action` field when it ends.
pub fn action_times(log: &str) -> Vec<ActionTime> {
    let mut started: BTreeMap<String, jiff::Timestamp> = BTreeMap::new();
    let mut out = Vec::new();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(ts) = v["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            continue;
        };
        let message = v["fields"]["message"].as_str().unwrap_or("");
        match message {
            "start" if v["span"]["name"].as_str() == Some("action") => {
                if let Some(id) = v["span"]["id"].as_str() {
                    started.insert(id.to_owned(), ts);
                }
            }
            "done" | "failed" => {
                let Some(id) = v["fields"]["action"].as_str() else {
                    continue;
                };
                if let Some(t0) = started.remove(id) {
                    let secs = ts.duration_since(t0).as_secs_f64();
                    out.push(ActionTime {
                        id: id.to_owned(),
                        secs,
                        ok: message == "done",
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// The summed duration of the executed actions of `kind`.
pub fn kind_secs(actions: &[ActionTime], kind: &str) -> Option<f64> {
    let v: Vec<f64> = actions
        .iter()
        .filter(|a| a.kind() == kind)
        .map(|a| a.secs)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

/// `id (1.23 s), …` for a report line.
pub fn list_actions(actions: &[ActionTime]) -> String {
    if actions.is_empty() {
        return "no action".into();
    }
    actions
        .iter()
        .map(|a| format!("{} ({:.2} s)", a.id, a.secs))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `examples/lab.yaml` as text (its paths are absolute: a copy anywhere reads the same keys).
pub fn lab_spec_text() -> Result<String, String> {
    let p = root().join("examples/lab.yaml");
    std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

/// Replace `key: …` inside the top-level `spec.<section>:` block (two-space indent), keeping
/// the indentation; `None` when the key is not there.
fn replace_in_section(text: &str, section: &str, key: &str, value: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 32);
    let mut current: Option<String> = None;
    let mut done = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if indent == 2 && !trimmed.starts_with('#') && !trimmed.is_empty() {
            current = trimmed.strip_suffix(':').map(str::to_owned);
        }
        if !done
            && indent == 4
            && current.as_deref() == Some(section)
            && trimmed.starts_with(&format!("{key}:"))
        {
            out.push_str(&format!("    {key}: {value}"));
            done = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    done.then_some(out)
}

/// The spec with `snapshots.every` and `replication.every` set, and `replication.rpo` at ten
/// years (it must not be shorter than `every`; only status and check read it).
pub fn with_schedules(text: &str, snapshots: &str, replication: &str) -> Result<String, String> {
    replace_in_section(text, "snapshots", "every", snapshots)
        .and_then(|t| replace_in_section(&t, "replication", "every", replication))
        .and_then(|t| replace_in_section(&t, "replication", "rpo", "3650d"))
        .ok_or_else(|| "the lab spec has no snapshots.every or replication.every".into())
}

/// The spec with `snapshots.keep` set (a flow mapping such as `{ hourly: 1 }`).
pub fn with_keep(text: &str, keep: &str) -> Result<String, String> {
    replace_in_section(text, "snapshots", "keep", keep)
        .ok_or_else(|| "the lab spec has no snapshots.keep".into())
}

/// The spec with another `active:` node.
pub fn with_active(text: &str, node: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut done = false;
    for line in text.lines() {
        if !done && line.trim_start().starts_with("active:") && line.starts_with("  active:") {
            out.push_str(&format!("  active: {node}"));
            done = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if done {
        Ok(out)
    } else {
        Err("the lab spec has no spec.active".into())
    }
}

/// The spec with one more instance `name` on `dataset` (relative to the pool) holding the
/// mail `domain` (an instance must name one when there is an archive; nobody sends there),
/// whose runtime is the `students` instance's: it reads as running on the node that runs
/// students and stopped elsewhere, so the planner has nothing to start or stop for it.
pub fn with_extra_instance(
    text: &str,
    name: &str,
    dataset: &str,
    domain: &str,
) -> Result<String, String> {
    let runtime = "[/var/lib/sk-lab/bin/sk-instance";
    let block = format!(
        "    {name}:\n      dataset: {dataset}\n      runtime: {{ kind: exec, \
         start: {runtime}, start, students], stop: {runtime}, stop, students], \
         status: {runtime}, status, students] }}\n      domains: [{domain}]\n"
    );
    let at = text
        .find("\n  instances:\n")
        .ok_or("the lab spec has no spec.instances")?
        + "\n  instances:\n".len();
    let mut out = text.to_owned();
    out.insert_str(at, &block);
    Ok(out)
}

/// The spec with `domain` added to the students instance: converging with it writes the same
/// archive BCC map as the spec of [`with_extra_instance`] (the map is sorted by domain), so
/// that the bench's own apply has no Postfix step in it.
pub fn with_students_domain(text: &str, domain: &str) -> Result<String, String> {
    const LINE: &str = "      domains: [students.lab]";
    if !text.contains(LINE) {
        return Err("the lab spec has no `domains: [students.lab]`".into());
    }
    Ok(text.replacen(LINE, &format!("      domains: [students.lab, {domain}]"), 1))
}

/// Seconds with two decimals.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// `a / b` as `1.23x`, or `n/a`.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

/// Poll `f` every `every` until it returns `Some` or `timeout` passes.
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>, String>,
) -> Result<Option<T>, String> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(Some(v));
        }
        if start.elapsed() >= timeout {
            return Ok(None);
        }
        std::thread::sleep(every);
    }
}

/// Release the `spoolkeeper` holds on every snapshot of each dataset and destroy it with its
/// snapshots, on `host`; datasets that do not exist are skipped.
pub fn destroy_datasets(host: Host, datasets: &[&str]) -> Result<(), String> {
    const SCRIPT: &str = r#"
for ds in "$@"; do
  zfs list -H -o name "$ds" >/dev/null 2>&1 || continue
  zfs list -H -r -t snapshot -o name "$ds" | while read -r s; do
    zfs release spoolkeeper "$s" >/dev/null 2>&1 || true
  done
  # zfs-fuse says "dataset is busy" for a moment after a mount or a send
  zfs destroy -r "$ds" || { sleep 1; zfs destroy -r "$ds"; } || { sleep 3; zfs destroy -r "$ds"; } || exit 1
done
"#;
    host_sh(host, SCRIPT, datasets).map(|_| ())
}

/// One SMTP session of a bench (no pipelining: each command waits for its reply).
pub struct Smtp {
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
}

impl Smtp {
    pub fn open(addr: &str) -> Result<Smtp, String> {
        let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let io = |e: std::io::Error| format!("{addr}: {e}");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(io)?;
        let writer = s.try_clone().map_err(io)?;
        let mut c = Smtp {
            reader: std::io::BufReader::new(s),
            writer,
        };
        c.expect(None, 220)?;
        c.expect(Some("EHLO bench.lab"), 250)?;
        Ok(c)
    }

    pub fn expect(&mut self, line: Option<&str>, code: u16) -> Result<(), String> {
        if let Some(l) = line {
            self.writer
                .write_all(format!("{l}\r\n").as_bytes())
                .map_err(|e| format!("{l}: {e}"))?;
        }
        let r = read_reply(&mut self.reader).map_err(|e| format!("{line:?}: {e}"))?;
        if r.code == code {
            Ok(())
        } else {
            Err(format!("{line:?}: {} {}", r.code, r.text))
        }
    }

    pub fn send(&mut self, from: &str, to: &str, text: &str) -> Result<(), String> {
        self.expect(Some(&format!("MAIL FROM:<{from}>")), 250)?;
        self.expect(Some(&format!("RCPT TO:<{to}>")), 250)?;
        self.expect(Some("DATA"), 354)?;
        self.writer
            .write_all(dot_stuff(text).as_bytes())
            .map_err(|e| format!("DATA: {e}"))?;
        self.expect(None, 250)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "spec:\n  active: node-a\n  nodes:\n    node-a:\n      pool: zdata\n  \
instances:\n    students:\n      dataset: imap/students\n  snapshots:\n    prefix: sk\n    \
every: 1m\n    keep: { hourly: 48 }\n  replication:\n    every: 1m\n    rpo: 10m\n";

    #[test]
    fn spec_edits_touch_only_their_line() {
        let t = with_schedules(SPEC, "3650d", "1s").unwrap();
        assert!(t.contains("  snapshots:\n    prefix: sk\n    every: 3650d\n"));
        assert!(t.contains("  replication:\n    every: 1s\n    rpo: 3650d\n"));
        let k = with_keep(SPEC, "{ hourly: 1 }").unwrap();
        assert!(k.contains("    keep: { hourly: 1 }\n"));
        assert!(!k.contains("hourly: 48"));
        let a = with_active(SPEC, "node-b").unwrap();
        assert!(a.contains("  active: node-b\n"));
        assert!(a.contains("    node-a:\n"));
        assert_eq!(a.lines().count(), SPEC.lines().count());
        let i = with_extra_instance(SPEC, "skbench", "imap/skbench", "skbench.lab").unwrap();
        assert!(i.contains("  instances:\n    skbench:\n      dataset: imap/skbench\n"));
        assert!(i.contains("    students:\n      dataset: imap/students\n"));
        assert!(with_keep("spec:\n  active: a\n", "{}").is_err());
    }

    /// The copies the benches write are valid specs, and say what they should.
    #[test]
    fn bench_copies_of_the_lab_spec_are_valid() {
        let lab = lab_spec_text().unwrap();
        let held = with_schedules(&lab, "3650d", "3650d").unwrap();
        let fast = with_schedules(&lab, "3650d", "1s").unwrap();
        let prune = with_keep(
            &with_extra_instance(&held, "skprune", "imap/skprune", "skprune.lab").unwrap(),
            "{ hourly: 1 }",
        )
        .unwrap();
        let converge = with_students_domain(&held, "skprune.lab").unwrap();
        let on_b = with_active(&lab, "node-b").unwrap();
        for text in [&held, &fast, &prune, &on_b, &converge] {
            let spec = spoolkeeper::spec::parse(Path::new("copy.yaml"), text.as_bytes())
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert!(spec.spec.instances.len() >= 2);
        }
        let p = spoolkeeper::spec::parse(Path::new("p.yaml"), prune.as_bytes()).unwrap();
        assert_eq!(p.spec.snapshots.keep.hourly, 1);
        assert_eq!(p.spec.snapshots.keep.daily, 0);
        assert_eq!(
            p.spec.snapshots.every.as_std(),
            Duration::from_secs(3650 * 86400)
        );
        assert_eq!(
            p.spec.replication.every.as_std(),
            Duration::from_secs(3650 * 86400)
        );
        assert!(p.spec.instances.keys().any(|k| k.as_str() == "skprune"));
        let c = spoolkeeper::spec::parse(Path::new("c.yaml"), converge.as_bytes()).unwrap();
        let domains = |s: &spoolkeeper::spec::Spec| -> Vec<String> {
            let mut d: Vec<String> = s
                .spec
                .instances
                .values()
                .flat_map(|i| i.domains.clone())
                .collect();
            d.sort();
            d
        };
        assert_eq!(domains(&c), domains(&p));
        let b = spoolkeeper::spec::parse(Path::new("b.yaml"), on_b.as_bytes()).unwrap();
        assert_eq!(b.spec.active.as_str(), "node-b");
    }

    #[test]
    fn action_times_pair_start_and_end() {
        let log = r#"{"timestamp":"2026-11-28T19:00:00.000000Z","level":"INFO","fields":{"message":"start","summary":"x"},"span":{"host":"node-a","id":"node-a:replicate:zdata/imap/x","name":"action"}}
{"timestamp":"2026-11-28T19:00:00.500000Z","level":"INFO","fields":{"message":"start","summary":"y"},"span":{"host":"node-b","id":"node-b:hold:zdata/imap/x","name":"action"}}
not json
{"timestamp":"2026-11-28T19:00:02.250000Z","level":"INFO","fields":{"message":"done","action":"node-a:replicate:zdata/imap/x"}}
{"timestamp":"2026-11-28T19:00:03.000000Z","level":"ERROR","fields":{"message":"failed","action":"node-b:hold:zdata/imap/x","error":"e"}}
{"timestamp":"2026-11-28T19:00:04.000000Z","level":"INFO","fields":{"message":"done","action":"never-started"}}"#;
        let got = action_times(log);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, "node-a:replicate:zdata/imap/x");
        assert!((got[0].secs - 2.25).abs() < 1e-9);
        assert!(got[0].ok);
        assert_eq!(got[1].kind(), "hold");
        assert!((got[1].secs - 2.5).abs() < 1e-9);
        assert!(!got[1].ok);
        assert_eq!(kind_secs(&got, "replicate"), Some(got[0].secs));
        assert_eq!(kind_secs(&got, "destroy_snapshots"), None);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(3.0, 2.0), "1.50x");
        assert_eq!(ratio(1.0, 0.0), "n/a");
    }
}
