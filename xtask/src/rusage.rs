//! Peak memory and CPU time of one child process, measured without its parent's share.
//!
//! `ru_maxrss` of a process includes the high-water mark of the address space it was forked
//! from: Linux carries the old memory's peak over `exec`. A bench that has grown (a million
//! queue entries read back) would report its own peak for every command it starts (measured:
//! `true` started by a test holding 300 MB reports 309 MB). So the commands run through a
//! [`Launcher`]: a separate `xtask` process, small since its own `exec`, which spawns each
//! command, reaps it with `wait4` and reports its `rusage`; its children start from its
//! address space, not the bench's.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The argument that makes `xtask` serve as a launcher ([`serve`]).
pub const LAUNCHER_ARG: &str = "__rusage-launcher";

/// What [`output_with_rss`] collected.
pub struct RssOutput {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub peak_rss_kib: u64,
    pub cpu: Duration,
}

/// `Command::output`, plus the child's own peak resident memory and CPU time ([`reap`]).
pub fn output_with_rss(cmd: &mut Command) -> std::io::Result<RssOutput> {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let (code, peak_rss_kib, cpu) = reap(&child)?;
    Ok(RssOutput {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        peak_rss_kib,
        cpu,
    })
}

/// Wait for `child` with `wait4`: exit code, peak RSS (KiB) and CPU time (user + system)
/// of that process (and of the children it reaped itself).
pub fn reap(child: &Child) -> std::io::Result<(Option<i32>, u64, Duration)> {
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of that plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = loop {
        // SAFETY: `pid` is our own child, not yet reaped (std's `Child` is never waited on
        // here: dropping it does not reap), and both out-pointers are valid for the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    if r == -1 {
        return Err(std::io::Error::last_os_error());
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Ok((
        code,
        u64::try_from(usage.ru_maxrss).unwrap_or(0),
        timeval(usage.ru_utime) + timeval(usage.ru_stime),
    ))
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
}

/// One command for the launcher.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    /// Variables removed from the command's environment.
    pub env_remove: Vec<String>,
    /// Where its stdout and stderr go.
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// What the launcher measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub code: Option<i32>,
    pub peak_rss_kib: u64,
    pub cpu_us: u64,
    pub error: Option<String>,
}

/// `xtask __rusage-launcher`: read [`Request`]s (JSON lines) on stdin, answer each with a
/// [`Reply`] line on stdout, until stdin ends.
pub fn serve() -> std::io::Result<()> {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(r) => launch(&r),
            Err(e) => Reply {
                code: None,
                peak_rss_kib: 0,
                cpu_us: 0,
                error: Some(format!("bad request: {e}")),
            },
        };
        writeln!(out, "{}", serde_json::to_string(&reply).unwrap_or_default())?;
        out.flush()?;
    }
    Ok(())
}

fn launch(r: &Request) -> Reply {
    let fail = |e: String| Reply {
        code: None,
        peak_rss_kib: 0,
        cpu_us: 0,
        error: Some(e),
    };
    let Some((program, args)) = r.argv.split_first() else {
        return fail("empty argv".into());
    };
    let files =
        std::fs::File::create(&r.stdout).and_then(|o| Ok((o, std::fs::File::create(&r.stderr)?)));
    let (o, e) = match files {
        Ok(f) => f,
        Err(e) => return fail(format!("output files: {e}")),
    };
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(&r.cwd);
    for v in &r.env_remove {
        cmd.env_remove(v);
    }
    cmd.stdin(Stdio::null()).stdout(o).stderr(e);
    match cmd.spawn().and_then(|c| reap(&c)) {
        Ok((code, peak_rss_kib, cpu)) => Reply {
            code,
            peak_rss_kib,
            cpu_us: u64::try_from(cpu.as_micros()).unwrap_or(u64::MAX),
            error: None,
        },
        Err(e) => fail(format!("cannot run {program}: {e}")),
    }
}

/// A running launcher.
pub struct Launcher {
    _child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Launcher {
    /// Start `xtask_bin __rusage-launcher`.
    pub fn start(xtask_bin: &Path) -> std::io::Result<Launcher> {
        let mut child = Command::new(xtask_bin)
            .arg(LAUNCHER_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let (Some(to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(std::io::Error::other("launcher pipes"));
        };
        Ok(Launcher {
            _child: child,
            to,
            from: BufReader::new(from),
        })
    }

    /// Run one command to its end; its output is in the request's files.
    pub fn run(&mut self, r: &Request) -> std::io::Result<Reply> {
        let line = serde_json::to_string(r).map_err(std::io::Error::other)?;
        writeln!(self.to, "{line}")?;
        self.to.flush()?;
        let mut reply = String::new();
        if self.from.read_line(&mut reply)? == 0 {
            return Err(std::io::Error::other("the launcher exited"));
        }
        serde_json::from_str(&reply).map_err(std::io::Error::other)
    }
}

/// [`Reply::cpu_us`] as a duration.
pub fn cpu(r: &Reply) -> Duration {
    Duration::from_micros(r.cpu_us)
}
