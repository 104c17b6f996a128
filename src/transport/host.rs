//! Host transport: run argv vectors on the local machine or over SSH.
//!
//! ONE DOOR: every command of every host goes through [`Host::run`] or
//! [`Host::spawn`], which open a tracing span (host, argv, duration, exit status) and count
//! round trips per host ([`Host::round_trips`]). Nothing else in the crate starts a process
//! on a host.
//!
//! Remote quoting: SSH hands the remote login shell one command string. Each argv element is
//! quoted for a POSIX `sh` by [`quote_posix`] (single quotes; `'` and `!` outside them), so
//! spaces, quotes, `$`, `;`, `*`, backslashes and newlines arrive intact when the login shell
//! is `sh`, `bash`, `dash`, `ksh` or `zsh`. **csh/tcsh** (FreeBSD's historical root shell):
//! the same quoting is correct for everything except a newline inside an argument (csh
//! rejects it: "Unmatched '"); `!` is escaped outside quotes so csh history expansion does
//! not apply. spoolkeeper never needs newlines in an argument it sends; give the SSH user a
//! POSIX login shell (FreeBSD ≥ 14 uses `sh` for root) if a spec ever needs one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use crate::model::UnreachableKind;

/// What a finished command returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit code; `None` when killed by a signal.
    pub status: Option<i32>,
    /// Standard output bytes.
    pub stdout: Vec<u8>,
    /// Standard error bytes.
    pub stderr: Vec<u8>,
}

impl Output {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
    /// Stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// Stderr as text (lossy).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Transport failures. A command that ran and exited non-zero is NOT an error: it is an
/// [`Output`] with that status.
#[derive(Debug, Error)]
pub enum HostError {
    /// No answer within the connect timeout.
    #[error("{host}: no answer within {timeout:?} (host down or link cut?): {detail}")]
    Timeout {
        /// Host label.
        host: String,
        /// The configured connect timeout.
        timeout: Duration,
        /// What ssh said.
        detail: String,
    },
    /// TCP connection refused.
    #[error("{host}: connection refused (is sshd running on the right port?): {detail}")]
    Refused {
        /// Host label.
        host: String,
        /// What ssh said.
        detail: String,
    },
    /// Authentication failed.
    #[error(
        "{host}: authentication failed (check the identity file and authorized_keys): {detail}"
    )]
    Auth {
        /// Host label.
        host: String,
        /// What ssh said.
        detail: String,
    },
    /// The host key is unknown or changed. Never accepted: fix known_hosts after checking.
    #[error(
        "{host}: host key verification failed; the key is unknown or CHANGED and is never accepted automatically (verify it, then update {known_hosts}): {detail}"
    )]
    HostKey {
        /// Host label.
        host: String,
        /// The known_hosts file in use.
        known_hosts: String,
        /// What ssh said.
        detail: String,
    },
    /// The name does not resolve.
    #[error("{host}: name does not resolve: {detail}")]
    Resolve {
        /// Host label.
        host: String,
        /// What ssh said.
        detail: String,
    },
    /// The connection dropped or another SSH failure.
    #[error("{host}: ssh failed: {detail}")]
    Ssh {
        /// Host label.
        host: String,
        /// What ssh said.
        detail: String,
    },
    /// The program could not be started locally.
    #[error("{host}: cannot run {program}: {source}")]
    Spawn {
        /// Host label.
        host: String,
        /// The program (`argv[0]`).
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// An empty argv was given (a bug in the caller).
    #[error("empty argv")]
    EmptyArgv,
    /// The command did not finish in time; it was abandoned (a local one is killed).
    #[error("{host}: `{program}` did not finish within {after:?}; abandoned")]
    CommandTimeout {
        host: String,
        program: String,
        after: Duration,
    },
    /// I/O while talking to a running command.
    #[error("{host}: i/o with running command: {source}")]
    Io {
        /// Host label.
        host: String,
        /// The error.
        source: std::io::Error,
    },
}

impl HostError {
    /// The reachability class of this error, when it means the host cannot be reached
    /// (`None` for errors that are not about reachability).
    pub fn unreachable_kind(&self) -> Option<UnreachableKind> {
        match self {
            HostError::Timeout { .. } => Some(UnreachableKind::Timeout),
            HostError::Refused { .. } => Some(UnreachableKind::Refused),
            HostError::Auth { .. } => Some(UnreachableKind::Auth),
            HostError::HostKey { .. } => Some(UnreachableKind::HostKey),
            HostError::Resolve { .. } => Some(UnreachableKind::Resolve),
            HostError::Ssh { .. } => Some(UnreachableKind::Other),
            _ => None,
        }
    }
}

pub use crate::adapters::shell::{quote_posix, remote_command_line};

/// Commands on this machine (tokio::process), no shell involved.
#[derive(Debug, Clone, Default)]
pub struct LocalHost;

/// SSH connection settings.
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// Host name or address.
    pub host: String,
    /// Login user (default: ssh's default).
    pub user: Option<String>,
    /// Port (default 22).
    pub port: Option<u16>,
    /// known_hosts file checked strictly (default: the user's).
    pub known_hosts: Option<PathBuf>,
    /// Identity file.
    pub identity: Option<PathBuf>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// ServerAliveInterval.
    pub keepalive: Duration,
    /// How long the control master stays once idle (ControlPersist; whole seconds, at least
    /// one). It is opened again when found gone, see [`SshHost`].
    pub master_idle: Duration,
}

impl SshConfig {
    /// Defaults: 5 s connect timeout, 15 s keepalive, master idle for 60 s.
    pub fn new(host: impl Into<String>) -> Self {
        SshConfig {
            host: host.into(),
            user: None,
            port: None,
            known_hosts: None,
            identity: None,
            connect_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(15),
            master_idle: MASTER_IDLE,
        }
    }
}

/// One SSH control master per host, opened once and reused for every command of the run,
/// and opened again when it is found gone after an idle spell: the master exits once idle
/// for [`MASTER_IDLE`] (so that one outliving a killed controller does not stay forever), and
/// a run can leave a host idle that long (a long observation of another host, a send
/// elsewhere). A command sent to a master that has exited fails before it reaches the host,
/// as "the remote process has terminated", which says nothing about the host.
pub struct SshHost {
    config: SshConfig,
    state: Arc<MasterState>,
}

struct MasterState {
    session: std::sync::Mutex<Arc<openssh::Session>>,
    /// When a command last started or ended on this host.
    touched: std::sync::Mutex<Instant>,
    /// One reconnection at a time.
    reopen: tokio::sync::Mutex<()>,
    /// Masters opened after the first.
    reopened: AtomicU64,
    /// A command found the master gone: the next one opens it again.
    gone: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SshHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshHost")
            .field("config", &self.config)
            .finish()
    }
}

impl SshHost {
    /// Open the control master (strict host key checking, connect timeout, keepalive).
    pub async fn connect(config: SshConfig) -> Result<SshHost, HostError> {
        let s = open_master(&config).await?;
        Ok(SshHost {
            config,
            state: Arc::new(MasterState {
                session: std::sync::Mutex::new(Arc::new(s)),
                touched: std::sync::Mutex::new(Instant::now()),
                reopen: tokio::sync::Mutex::new(()),
                reopened: AtomicU64::new(0),
                gone: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// The configuration this host was opened with.
    pub fn config(&self) -> &SshConfig {
        &self.config
    }

    /// How many times the master was found gone and opened again.
    pub fn reopened(&self) -> u64 {
        self.state.reopened.load(Ordering::Relaxed)
    }

    fn current(&self) -> Arc<openssh::Session> {
        Arc::clone(&self.state.session.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn touch(&self) {
        *self.state.touched.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.state
            .touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// The typed error of a failed command. ssh's exit code 255 reads "the remote process has
    /// terminated" whether the command was killed or the connection went away: the master is
    /// asked which, so that the operator reads a lost connection as one.
    async fn explain(&self, session: &openssh::Session, e: openssh::Error) -> HostError {
        explain(&self.config, &self.state, session, e).await
    }

    /// The master to send the next command through: the current one, checked first when the
    /// host has been idle for a third of [`SshConfig::master_idle`], and opened again when the check finds it gone.
    async fn master(&self) -> Result<Arc<openssh::Session>, HostError> {
        // a third of the master's idle time: well inside it, so that a slow check never lets
        // a command meet a master that exits under it
        let check_after = self.config.master_idle / 3;
        let due = || self.idle_for() >= check_after || self.state.gone.load(Ordering::SeqCst);
        if due() {
            let _one = self.state.reopen.lock().await;
            // another command may have just checked (or reopened) it
            if due() {
                let cur = self.current();
                if let Err(e) = cur.check().await {
                    tracing::info!(host = %self.config.host, error = %e, idle_s = self.idle_for().as_secs(), "the ssh master exited while idle: opening it again");
                    let s = open_master(&self.config).await?;
                    *self.state.session.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
                    self.state.reopened.fetch_add(1, Ordering::Relaxed);
                }
                self.state.gone.store(false, Ordering::SeqCst);
            }
        }
        self.touch();
        Ok(self.current())
    }
}

/// See [`SshHost::explain`].
async fn explain(
    config: &SshConfig,
    state: &MasterState,
    session: &openssh::Session,
    e: openssh::Error,
) -> HostError {
    let mut full = error_chain(&e);
    if matches!(e, openssh::Error::RemoteProcessTerminated)
        && let Err(gone) = session.check().await
    {
        state.gone.store(true, Ordering::SeqCst);
        full = format!(
            "the SSH connection closed during the command ({})",
            error_chain(&gone)
        );
    }
    classify_ssh_error(config, &e.to_string(), &full)
}

async fn open_master(config: &SshConfig) -> Result<openssh::Session, HostError> {
    let mut b = openssh::SessionBuilder::default();
    b.known_hosts_check(openssh::KnownHosts::Strict)
        .connect_timeout(config.connect_timeout)
        .server_alive_interval(config.keepalive)
        // a master outliving a killed controller exits once idle for a minute (the default
        // keeps it forever); SshHost::master opens it again when a run finds it gone
        .control_persist(openssh::ControlPersist::IdleFor(
            std::num::NonZeroUsize::new(config.master_idle.as_secs() as usize)
                .unwrap_or(std::num::NonZeroUsize::MIN),
        ));
    if let Some(u) = &config.user {
        b.user(u.clone());
    }
    if let Some(p) = config.port {
        b.port(p);
    }
    if let Some(k) = &config.known_hosts {
        b.user_known_hosts_file(k);
    }
    if let Some(i) = &config.identity {
        b.keyfile(i);
    }
    let started = Instant::now();
    let res = b.connect(&config.host).await;
    tracing::debug!(host = %config.host, elapsed_ms = started.elapsed().as_millis() as u64, ok = res.is_ok(), "ssh connect");
    res.map_err(|e| classify_ssh_error(config, &e.to_string(), &error_chain(&e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Map ssh's words to a typed error. Pure (tested on ssh's real messages).
pub fn classify_ssh_error(config: &SshConfig, short: &str, full: &str) -> HostError {
    let host = config.host.clone();
    let detail = if full.is_empty() { short } else { full }
        .trim()
        .to_string();
    let l = detail.to_ascii_lowercase();
    if l.contains("host key verification failed")
        || l.contains("remote host identification has changed")
        || l.contains("no matching host key")
        || l.contains("host key for") && l.contains("has changed")
    {
        HostError::HostKey {
            host,
            known_hosts: config
                .known_hosts
                .as_ref()
                .map_or_else(|| "~/.ssh/known_hosts".into(), |p| p.display().to_string()),
            detail,
        }
    } else if l.contains("connection refused") {
        HostError::Refused { host, detail }
    } else if l.contains("permission denied") || l.contains("too many authentication failures") {
        HostError::Auth { host, detail }
    } else if l.contains("timed out") || l.contains("timeout") || l.contains("no route to host") {
        HostError::Timeout {
            host,
            timeout: config.connect_timeout,
            detail,
        }
    } else if l.contains("could not resolve") || l.contains("name or service not known") {
        HostError::Resolve { host, detail }
    } else {
        HostError::Ssh { host, detail }
    }
}

/// A running command with its stdin/stdout as tokio streams (for `zfs send | zfs recv`).
pub struct Spawned {
    /// Feed the command.
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
    /// Read the command's output.
    pub stdout: Pin<Box<dyn AsyncRead + Send>>,
    wait: Pin<Box<dyn std::future::Future<Output = Result<Output, HostError>> + Send>>,
    span: tracing::Span,
    started: Instant,
}

impl Spawned {
    /// Wait for exit; `stdout` is empty in the returned [`Output`] (it was streamed), stderr
    /// is collected.
    pub async fn wait(self) -> Result<Output, HostError> {
        let span = self.span.clone();
        let res = self.wait.instrument(span.clone()).await;
        span.in_scope(|| log_end(&res, self.started));
        res
    }
}

/// Either transport; dyn-free so it stays `Send` and cheap.
#[derive(Debug)]
pub enum AnyHost {
    /// This machine.
    Local(LocalHost),
    /// A remote host over SSH.
    Ssh(SshHost),
}

/// Round trips per host label, shared by all hosts of a run.
#[derive(Debug, Clone, Default)]
pub struct RoundTrips(Arc<std::sync::Mutex<BTreeMap<String, Arc<AtomicU64>>>>);

impl RoundTrips {
    fn counter(&self, host: &str) -> Arc<AtomicU64> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(host.to_string()).or_default().clone()
    }
    /// Round trips so far, per host label.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect()
    }
}

/// A host plus its label and round-trip counter: the one door.
#[derive(Debug)]
pub struct Host {
    label: String,
    inner: AnyHost,
    trips: Arc<AtomicU64>,
    /// How long [`Host::run`] and [`Host::run_with_stdin`] wait for a command.
    timeout: Duration,
}

/// How long an SSH control master stays once idle (its controller gone, say after a kill).
const MASTER_IDLE: Duration = Duration::from_secs(60);

/// The default command timeout (the dispatcher's, for the commands of every action that does
/// not move data; those pass their own to [`Host::run_timeout`]).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = crate::adapters::dispatch::DEFAULT_TIMEOUT;

fn log_end(res: &Result<Output, HostError>, started: Instant) {
    let ms = started.elapsed().as_millis() as u64;
    match res {
        Ok(o) => tracing::debug!(duration_ms = ms, status = ?o.status, "command finished"),
        Err(e) => tracing::debug!(duration_ms = ms, error = %e, "command failed"),
    }
}

impl Host {
    /// Wrap a transport under a label (the node name), counting into `trips`.
    pub fn new(label: impl Into<String>, inner: AnyHost, trips: &RoundTrips) -> Host {
        let label = label.into();
        let trips = trips.counter(&label);
        Host {
            label,
            inner,
            trips,
            timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// The same host with another default command timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Host {
        self.timeout = timeout;
        self
    }

    /// The default command timeout of this host.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn timed_out(&self, argv: &[String], after: Duration) -> HostError {
        HostError::CommandTimeout {
            host: self.label.clone(),
            program: argv.first().cloned().unwrap_or_default(),
            after,
        }
    }

    /// The label (node name).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The transport under this host.
    pub fn transport(&self) -> &AnyHost {
        &self.inner
    }

    /// Round trips made through this host so far.
    pub fn round_trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    /// Run argv to completion, within the host's command timeout. THE door for finished
    /// commands.
    pub async fn run(&self, argv: &[String]) -> Result<Output, HostError> {
        self.run_timeout(argv, self.timeout).await
    }

    /// [`Host::run`] with its own timeout (a replication stream, a long destroy).
    pub async fn run_timeout(&self, argv: &[String], limit: Duration) -> Result<Output, HostError> {
        match tokio::time::timeout(limit, self.run_untimed(argv)).await {
            Ok(r) => r,
            Err(_) => {
                let e = self.timed_out(argv, limit);
                tracing::warn!(error = %e, "command timed out");
                Err(e)
            }
        }
    }

    async fn run_untimed(&self, argv: &[String]) -> Result<Output, HostError> {
        if argv.is_empty() {
            return Err(HostError::EmptyArgv);
        }
        self.trips.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("cmd", host = %self.label, argv = ?argv);
        let started = Instant::now();
        let res = async {
            match &self.inner {
                AnyHost::Local(_) => {
                    let out = tokio::process::Command::new(&argv[0])
                        .args(&argv[1..])
                        .stdin(Stdio::null())
                        .kill_on_drop(true)
                        .output()
                        .await
                        .map_err(|e| HostError::Spawn {
                            host: self.label.clone(),
                            program: argv[0].clone(),
                            source: e,
                        })?;
                    Ok(Output {
                        status: out.status.code(),
                        stdout: out.stdout,
                        stderr: out.stderr,
                    })
                }
                AnyHost::Ssh(h) => {
                    let session = h.master().await?;
                    let mut cmd = session.raw_command(quote_posix(&argv[0]));
                    for a in &argv[1..] {
                        cmd.raw_arg(quote_posix(a));
                    }
                    cmd.stdin(openssh::Stdio::null());
                    let out = cmd.output().await;
                    h.touch();
                    let out = match out {
                        Ok(o) => o,
                        Err(e) => return Err(h.explain(&session, e).await),
                    };
                    Ok(Output {
                        status: out.status.code(),
                        stdout: out.stdout,
                        stderr: out.stderr,
                    })
                }
            }
        }
        .instrument(span.clone())
        .await;
        span.in_scope(|| log_end(&res, started));
        res
    }

    /// Start argv with piped stdin/stdout. THE door for streaming commands.
    pub async fn spawn(&self, argv: &[String]) -> Result<Spawned, HostError> {
        use tokio::io::AsyncReadExt;
        if argv.is_empty() {
            return Err(HostError::EmptyArgv);
        }
        self.trips.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("cmd", host = %self.label, argv = ?argv, streaming = true);
        let started = Instant::now();
        let label = self.label.clone();
        match &self.inner {
            AnyHost::Local(_) => {
                let mut child = tokio::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| HostError::Spawn {
                        host: label.clone(),
                        program: argv[0].clone(),
                        source: e,
                    })?;
                let (Some(stdin), Some(stdout), Some(mut stderr)) =
                    (child.stdin.take(), child.stdout.take(), child.stderr.take())
                else {
                    return Err(HostError::Io {
                        host: label,
                        source: std::io::Error::other("pipes not available"),
                    });
                };
                let wait = async move {
                    let mut err = Vec::new();
                    let read = stderr.read_to_end(&mut err);
                    let (r, status) = tokio::join!(read, child.wait());
                    r.map_err(|e| HostError::Io {
                        host: label.clone(),
                        source: e,
                    })?;
                    let status = status.map_err(|e| HostError::Io {
                        host: label.clone(),
                        source: e,
                    })?;
                    Ok(Output {
                        status: status.code(),
                        stdout: Vec::new(),
                        stderr: err,
                    })
                };
                Ok(Spawned {
                    stdin: Box::pin(stdin),
                    stdout: Box::pin(stdout),
                    wait: Box::pin(wait),
                    span,
                    started,
                })
            }
            AnyHost::Ssh(h) => {
                let session = h.master().await?;
                let state = Arc::clone(&h.state);
                let mut cmd =
                    openssh::Session::to_raw_command(Arc::clone(&session), quote_posix(&argv[0]));
                for a in &argv[1..] {
                    cmd.raw_arg(quote_posix(a));
                }
                cmd.stdin(openssh::Stdio::piped())
                    .stdout(openssh::Stdio::piped())
                    .stderr(openssh::Stdio::piped());
                let config = h.config.clone();
                let mut child = cmd
                    .spawn()
                    .await
                    .map_err(|e| classify_ssh_error(&config, &e.to_string(), &error_chain(&e)))?;
                let (Some(stdin), Some(stdout), Some(mut stderr)) = (
                    child.stdin().take(),
                    child.stdout().take(),
                    child.stderr().take(),
                ) else {
                    return Err(HostError::Io {
                        host: label,
                        source: std::io::Error::other("pipes not available"),
                    });
                };
                let wait = async move {
                    let mut err = Vec::new();
                    stderr
                        .read_to_end(&mut err)
                        .await
                        .map_err(|e| HostError::Io {
                            host: label.clone(),
                            source: e,
                        })?;
                    let status = match child.wait().await {
                        Ok(s) => s,
                        Err(e) => return Err(explain(&config, &state, &session, e).await),
                    };
                    Ok(Output {
                        status: status.code(),
                        stdout: Vec::new(),
                        stderr: err,
                    })
                };
                Ok(Spawned {
                    stdin: Box::pin(stdin),
                    stdout: Box::pin(stdout),
                    wait: Box::pin(wait),
                    span,
                    started,
                })
            }
        }
    }
}

impl Host {
    /// Run argv and hand each line of its stdout to `each` as it arrives (without its line
    /// end; invalid UTF-8 replaced), so a listing of any size is never held whole: the
    /// archive's `postqueue -j` of a million held copies is 200 MB of text. The timeout is
    /// between lines (and for the exit after the last): a long listing that keeps coming is
    /// not cut, a stalled one is. Stdin is closed at once.
    pub async fn stream_lines(
        &self,
        argv: &[String],
        mut each: impl FnMut(&str) + Send,
    ) -> Result<Output, HostError> {
        use tokio::io::AsyncBufReadExt;
        let mut sp = self.spawn(argv).await?;
        // dropped, not shut down: a child's stdin pipe closes only when dropped
        drop(std::mem::replace(
            &mut sp.stdin,
            Box::pin(tokio::io::sink()),
        ));
        let stdout = std::mem::replace(&mut sp.stdout, Box::pin(tokio::io::empty()));
        // stdout is read while `wait` drains stderr and waits for the exit: a command that
        // fills the stderr pipe before its last line would otherwise stall
        let exit = sp.wait();
        tokio::pin!(exit);
        let mut reader = tokio::io::BufReader::with_capacity(1 << 16, stdout);
        let mut buf = Vec::new();
        let mut exited = None;
        loop {
            // `buf` is cleared only after a whole line: a read cut short by the exit branch
            // has already moved its bytes into it, and the next read appends the rest
            let read = tokio::time::timeout(self.timeout, reader.read_until(b'\n', &mut buf));
            let step = tokio::select! {
                r = read => r,
                r = &mut exit, if exited.is_none() => {
                    exited = Some(r);
                    continue;
                }
            };
            match step {
                Err(_) => {
                    let e = self.timed_out(argv, self.timeout);
                    tracing::warn!(error = %e, "streamed command stalled");
                    return Err(e);
                }
                // at the end, a last line without its line end may already be in `buf`
                Ok(Ok(0)) if buf.is_empty() => break,
                Ok(Ok(n)) => {
                    let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                    each(&String::from_utf8_lossy(line));
                    buf.clear();
                    if n == 0 {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    return Err(HostError::Io {
                        host: self.label.clone(),
                        source: e,
                    });
                }
            }
        }
        match exited {
            Some(r) => r,
            None => match tokio::time::timeout(self.timeout, exit).await {
                Ok(r) => r,
                Err(_) => Err(self.timed_out(argv, self.timeout)),
            },
        }
    }

    /// Run argv with `input` on its stdin, to completion (file contents, queue ids for
    /// `postsuper -d -`). One round trip.
    pub async fn run_with_stdin(&self, argv: &[String], input: &[u8]) -> Result<Output, HostError> {
        self.run_with_stdin_timeout(argv, input, self.timeout).await
    }

    /// [`Host::run_with_stdin`] with its own timeout.
    pub async fn run_with_stdin_timeout(
        &self,
        argv: &[String],
        input: &[u8],
        limit: Duration,
    ) -> Result<Output, HostError> {
        match tokio::time::timeout(limit, self.run_with_stdin_untimed(argv, input)).await {
            Ok(r) => r,
            Err(_) => Err(self.timed_out(argv, limit)),
        }
    }

    async fn run_with_stdin_untimed(
        &self,
        argv: &[String],
        input: &[u8],
    ) -> Result<Output, HostError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut child = self.spawn(argv).await?;
        let label = self.label.clone();
        let io = |source| HostError::Io {
            host: label.clone(),
            source,
        };
        // Write and read concurrently: a command that answers while reading must not block.
        let mut stdin = std::mem::replace(&mut child.stdin, Box::pin(tokio::io::sink()));
        let input = input.to_vec();
        let writer = async move {
            stdin.write_all(&input).await?;
            stdin.flush().await?;
            drop(stdin);
            Ok::<(), std::io::Error>(())
        };
        let mut stdout = std::mem::replace(&mut child.stdout, Box::pin(tokio::io::empty()));
        let reader = async move {
            let mut out = Vec::new();
            stdout.read_to_end(&mut out).await.map(|_| out)
        };
        // stderr is drained by `wait`: poll it at the same time, or a command that writes
        // more than a pipe's worth on stderr (postsuper -d: one line per deleted message)
        // blocks, never closes stdout, and the run hangs forever.
        let (w, r, res) = tokio::join!(writer, reader, child.wait());
        w.map_err(io)?;
        let out = r.map_err(io)?;
        let mut res = res?;
        res.stdout = out;
        Ok(res)
    }
}

/// Any byte stream to a service on a host.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A way to reach a TCP service as the host sees it (`127.0.0.1:10143` on the node): through
/// the host's SSH connection (a local forward to a unix socket of ours), or directly for the
/// local host. Services on a node's loopback are never exposed to the network for this.
pub enum Tunnel {
    /// A TCP address this machine reaches itself.
    Direct(std::net::SocketAddr),
    /// An SSH local forward: connections to `path` reach `remote` from the host.
    Ssh {
        session: Arc<openssh::Session>,
        path: std::path::PathBuf,
        remote: std::net::SocketAddr,
        host: String,
    },
}

impl Host {
    /// Open a [`Tunnel`] to `remote` as this host sees it.
    pub async fn tunnel(&self, remote: std::net::SocketAddr) -> Result<Tunnel, HostError> {
        match &self.inner {
            AnyHost::Local(_) => Ok(Tunnel::Direct(remote)),
            AnyHost::Ssh(h) => {
                static N: AtomicU64 = AtomicU64::new(0);
                let path = std::env::temp_dir().join(format!(
                    "spoolkeeper-tunnel-{}-{}.sock",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                let _ = std::fs::remove_file(&path);
                let config = h.config.clone();
                let session = h.master().await?;
                session
                    .request_port_forward(
                        openssh::ForwardType::Local,
                        openssh::Socket::from(path.clone()),
                        openssh::Socket::new(remote.ip().to_string(), remote.port()),
                    )
                    .await
                    .map_err(|e| classify_ssh_error(&config, &e.to_string(), &error_chain(&e)))?;
                Ok(Tunnel::Ssh {
                    session,
                    path,
                    remote,
                    host: self.label.clone(),
                })
            }
        }
    }
}

impl Tunnel {
    /// A new connection through the tunnel.
    pub async fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        match self {
            Tunnel::Direct(a) => Ok(Box::new(tokio::net::TcpStream::connect(a).await?)),
            Tunnel::Ssh { path, .. } => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
        }
    }

    /// Close the forward (connections already made are not cut).
    pub async fn close(self) {
        if let Tunnel::Ssh {
            session,
            path,
            remote,
            host,
        } = self
        {
            if let Err(e) = session
                .close_port_forward(
                    openssh::ForwardType::Local,
                    openssh::Socket::from(path.clone()),
                    openssh::Socket::new(remote.ip().to_string(), remote.port()),
                )
                .await
            {
                tracing::warn!(host = %host, "closing the tunnel to {remote}: {e}");
            }
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_command_past_its_timeout_is_abandoned_and_killed() {
        let trips = RoundTrips::default();
        let h = Host::new("local", AnyHost::Local(LocalHost), &trips)
            .with_timeout(Duration::from_millis(300));
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let argv: Vec<String> = vec![
            "sh".into(),
            "-c".into(),
            "echo $$ > \"$1\"; exec sleep 30".into(),
            "sh".into(),
            pidfile.display().to_string(),
        ];
        let e = h.run(&argv).await.unwrap_err();
        assert!(matches!(e, HostError::CommandTimeout { .. }), "{e}");
        // the abandoned command is killed, not left running: gone, or a zombie awaiting reaping
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .to_string();
        let running = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|st| st.rsplit(')').next().map(|r| r.trim().to_string()))
                .is_some_and(|r| !r.starts_with('Z'))
        };
        let mut tries = 0;
        while running() && tries < 100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tries += 1;
        }
        assert!(!running(), "pid {pid} still runs after its timeout");
        let e = h.run_with_stdin(&argv, b"x").await.unwrap_err();
        assert!(matches!(e, HostError::CommandTimeout { .. }), "{e}");
        // a command inside its own, longer limit finishes
        let quick: Vec<String> = vec!["true".into()];
        assert!(
            h.run_timeout(&quick, Duration::from_secs(30))
                .await
                .unwrap()
                .success()
        );
    }

    /// What a POSIX shell makes of a quoted word: run the real `sh` on it.
    fn through_sh(words: &[&str]) -> Vec<String> {
        let line = words
            .iter()
            .map(|w| quote_posix(w))
            .collect::<Vec<_>>()
            .join(" ");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\0' {line}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{line}");
        let mut parts: Vec<String> = out
            .stdout
            .split(|&b| b == 0)
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect();
        assert_eq!(parts.pop().as_deref(), Some(""), "output ends with NUL");
        parts
    }

    const AWKWARD: &[&str] = &[
        "plain",
        "with space",
        "it's",
        "\"double\"",
        "$HOME",
        "$(id)",
        "`id`",
        "a;b",
        "*",
        "back\\slash",
        "new\nline",
        "bang!",
        "",
        "tab\there",
        "{a,b}",
        "~",
        "#hash",
        "&|<>",
    ];

    #[test]
    fn quoted_words_survive_a_real_posix_shell() {
        assert_eq!(through_sh(AWKWARD), AWKWARD);
    }

    #[test]
    fn safe_words_are_left_alone_and_quotes_are_closed() {
        assert_eq!(quote_posix("zdata/imap@sk-2024"), "zdata/imap@sk-2024");
        assert_eq!(quote_posix(""), "''");
        assert_eq!(quote_posix("it's"), "'it'\\''s'");
        assert_eq!(quote_posix("a!"), "'a'\\!''");
    }

    #[test]
    fn ssh_messages_map_to_typed_errors() {
        let c = SshConfig::new("10.77.0.12");
        let cases = [
            (
                "Host key verification failed.",
                Some(UnreachableKind::HostKey),
            ),
            (
                "ssh: connect to host 10.77.0.12 port 22: Connection refused",
                Some(UnreachableKind::Refused),
            ),
            (
                "root@10.77.0.12: Permission denied (publickey).",
                Some(UnreachableKind::Auth),
            ),
            (
                "ssh: connect to host 10.77.0.12 port 22: Connection timed out",
                Some(UnreachableKind::Timeout),
            ),
            (
                "ssh: Could not resolve hostname nowhere: Name or service not known",
                Some(UnreachableKind::Resolve),
            ),
            (
                "mux_client_request_session: read",
                Some(UnreachableKind::Other),
            ),
        ];
        for (msg, kind) in cases {
            let e = classify_ssh_error(&c, msg, "");
            assert_eq!(e.unreachable_kind(), kind, "{msg}");
        }
    }

    #[tokio::test]
    async fn local_run_passes_awkward_argv_without_a_shell() {
        let trips = RoundTrips::default();
        let h = Host::new("local", AnyHost::Local(LocalHost), &trips);
        let mut argv: Vec<String> = vec!["printf".into(), "%s\\0".into()];
        argv.extend(AWKWARD.iter().map(|s| s.to_string()));
        let out = h.run(&argv).await.unwrap();
        assert!(out.success());
        let got: Vec<&[u8]> = out.stdout.split(|&b| b == 0).collect();
        let got: Vec<String> = got[..got.len() - 1]
            .iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect();
        assert_eq!(got, AWKWARD);
        let out = h.run(&["false".to_string()]).await.unwrap();
        assert_eq!(out.status, Some(1));
        assert_eq!(h.round_trips(), 2);
        assert_eq!(trips.snapshot()["local"], 2);
        assert!(matches!(h.run(&[]).await, Err(HostError::EmptyArgv)));
        assert!(matches!(
            h.run(&["/nonexistent/sk-no-such-program".to_string()])
                .await,
            Err(HostError::Spawn { .. })
        ));
    }

    #[tokio::test]
    async fn local_spawn_streams_stdin_to_stdout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let trips = RoundTrips::default();
        let h = Host::new("local", AnyHost::Local(LocalHost), &trips);
        let mut s = h.spawn(&["cat".to_string()]).await.unwrap();
        let payload = vec![7u8; 300_000];
        let mut stdin = std::mem::replace(&mut s.stdin, Box::pin(tokio::io::sink()));
        let writer = async move {
            stdin.write_all(&payload).await.unwrap();
            stdin.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let reader = s.stdout.read_to_end(&mut got);
        let ((), r) = tokio::join!(writer, reader);
        r.unwrap();
        assert_eq!(got.len(), 300_000);
        assert!(got.iter().all(|&b| b == 7));
        let out = s.wait().await.unwrap();
        assert!(out.success());
    }
}

#[cfg(test)]
mod stdin_tests {
    use super::*;

    /// A streamed listing is read line by line while its stderr is drained beside it: a
    /// command that writes more to stderr than a pipe holds before its last line (showq's
    /// warnings about unreadable queue files) must not stall into the idle timeout.
    #[tokio::test]
    async fn a_streamed_command_reads_a_closed_stdin() {
        // `cat` ends at the end of its input: with the pipe left open it would stall into the
        // idle timeout
        let trips = RoundTrips::default();
        let h = Host::new("local", AnyHost::Local(LocalHost), &trips)
            .with_timeout(Duration::from_secs(10));
        let mut n = 0;
        let out = h
            .stream_lines(&["cat".to_string()], |_| n += 1)
            .await
            .expect("cat ends once its stdin is closed");
        assert!(out.success());
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn streamed_lines_arrive_in_order_beside_much_stderr() {
        let trips = RoundTrips::default();
        let h = Host::new("local", AnyHost::Local(LocalHost), &trips)
            .with_timeout(std::time::Duration::from_secs(20));
        let script = "echo one; i=0; while [ $i -lt 20000 ]; do \
                      echo \"warning: queue file $i unreadable\" >&2; i=$((i+1)); done; \
                      printf 'two\\nthree'; exit 4";
        let argv: Vec<String> = ["sh", "-c", script].iter().map(|s| s.to_string()).collect();
        let mut lines = Vec::new();
        let out = h
            .stream_lines(&argv, |l| lines.push(l.to_owned()))
            .await
            .unwrap();
        assert_eq!(lines, ["one", "two", "three"]);
        assert_eq!(out.status, Some(4));
        assert_eq!(out.stderr_text().lines().count(), 20000);
        // a listing that stops coming is cut by the timeout between lines
        let h = h.with_timeout(std::time::Duration::from_millis(300));
        let argv: Vec<String> = ["sh", "-c", "echo a; exec sleep 30"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut got = Vec::new();
        let e = h.stream_lines(&argv, |l| got.push(l.to_owned())).await;
        assert!(matches!(e, Err(HostError::CommandTimeout { .. })), "{e:?}");
        assert_eq!(got, ["a"]);
    }

    #[tokio::test]
    async fn stdin_reaches_the_command_and_stdout_comes_back() {
        let trips = RoundTrips::default();
        let h = Host::new("local", AnyHost::Local(LocalHost), &trips);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let out = h.run_with_stdin(&["cat".to_string()], &data).await.unwrap();
        assert_eq!(out.status, Some(0));
        assert_eq!(out.stdout, data);
    }

    /// `postsuper -d -` on thousands of ids writes a line per message on stderr: more than a
    /// pipe holds. The run must drain stderr while it feeds stdin and reads stdout (it hung
    /// the switchover bench in its purge step before).
    #[tokio::test]
    async fn a_command_with_much_stderr_does_not_hang() {
        let trips = RoundTrips::default();
        let h = Host::new("local", AnyHost::Local(LocalHost), &trips);
        let script = "cat >/dev/null; i=0; while [ $i -lt 20000 ]; do \
                      echo \"postsuper: ABCDEF$i: removed\" >&2; i=$((i+1)); done; echo done";
        let argv: Vec<String> = ["sh", "-c", script].iter().map(|s| s.to_string()).collect();
        let run = h.run_with_stdin(&argv, b"ids\n");
        // a guard against a hang, not a timing assertion
        let out = tokio::time::timeout(std::time::Duration::from_secs(120), run)
            .await
            .expect("run_with_stdin hung on a full stderr pipe")
            .unwrap();
        assert_eq!(out.status, Some(0));
        assert_eq!(out.stdout, b"done\n");
        assert_eq!(out.stderr.iter().filter(|&&b| b == b'\n').count(), 20000);
    }
}
