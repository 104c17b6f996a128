//! The three-host lab: `cargo xtask lab <verb>`.
//!
//! The host side (namespaces, zfs-fuse, Postfix, Dovecot, sshd) is the bash script
//! `xtask/lab/sk-lab.sh`, embedded here and run with `bash -c`, so the verbs work from any
//! checkout without installing anything first; `up` also installs it (and `sk-instance`, the
//! `exec` runtime) under `/var/lib/sk-lab/bin` because the lab's spec names those paths
//! (fencing command, instance runtime). SMTP (`send`) and IMAP (`imap`) clients live in Rust.
//!
//! Other xtask commands (ci, demo, bench) call [`up`], [`down`], [`send`], [`imap_message_ids`].

pub mod imap;
pub mod smtp;

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// Root of everything the lab owns on the machine; `down` removes it.
pub const LAB_DIR: &str = "/var/lib/sk-lab";
/// The SSH client key every lab host accepts (root login).
pub const SSH_IDENTITY: &str = "/var/lib/sk-lab/ssh/id_ed25519";
/// The known_hosts file with the host keys of node-a, node-b and smtp-arch.
pub const SSH_KNOWN_HOSTS: &str = "/var/lib/sk-lab/ssh/known_hosts";

const SK_LAB_SCRIPT: &str = include_str!("../../lab/sk-lab.sh");
const SK_INSTANCE_SCRIPT: &str = include_str!("../../lab/sk-instance.sh");

/// Why a lab verb failed; the message says what to look at.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    pub fn new(msg: impl Into<String>) -> Self {
        Error(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// A host of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Host {
    #[value(name = "node-a")]
    NodeA,
    #[value(name = "node-b")]
    NodeB,
    #[value(name = "smtp-arch")]
    SmtpArch,
}

impl Host {
    pub const ALL: [Host; 3] = [Host::NodeA, Host::NodeB, Host::SmtpArch];

    pub fn name(self) -> &'static str {
        match self {
            Host::NodeA => "node-a",
            Host::NodeB => "node-b",
            Host::SmtpArch => "smtp-arch",
        }
    }

    /// The host's own address on the lab bridge (where its sshd listens).
    pub fn addr(self) -> &'static str {
        match self {
            Host::NodeA => "10.77.0.11",
            Host::NodeB => "10.77.0.12",
            Host::SmtpArch => "10.77.0.13",
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An IMAP instance of the lab; its service address follows the node that runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Instance {
    Students,
    Staff,
}

impl Instance {
    pub fn name(self) -> &'static str {
        match self {
            Instance::Students => "students",
            Instance::Staff => "staff",
        }
    }

    pub fn service_addr(self) -> &'static str {
        match self {
            Instance::Students => "10.77.0.21",
            Instance::Staff => "10.77.0.22",
        }
    }

    /// Where the instance's MTA listens: students is served by the node's Postfix (port 25),
    /// staff by its own Postfix instance (port 2525, `mail: { in: runtime }`).
    pub fn smtp_port(self) -> u16 {
        match self {
            Instance::Students => 25,
            Instance::Staff => 2525,
        }
    }

    pub fn domain(self) -> &'static str {
        match self {
            Instance::Students => "students.lab",
            Instance::Staff => "staff.lab",
        }
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Runs the embedded host script with `args`, stdio inherited.
fn script(args: &[&str]) -> Result<ExitStatus> {
    Command::new("bash")
        .arg("-c")
        .arg(SK_LAB_SCRIPT)
        .arg("sk-lab")
        .args(args)
        .status()
        .map_err(|e| Error::new(format!("cannot run bash for the lab script: {e}")))
}

fn script_ok(args: &[&str]) -> Result<()> {
    let status = script(args)?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "`sk-lab {}` failed ({status}); `cargo xtask lab status` shows what runs, \
             logs are under {LAB_DIR}/hosts/<host>/log",
            args.join(" ")
        )))
    }
}

/// Writes `text` to `path` atomically with mode 0755.
fn install_executable(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| Error::new(format!("cannot write {}: {e}", path.display()));
    fs::write(&tmp, text).map_err(io)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// Installs `sk-lab` and `sk-instance` under `/var/lib/sk-lab/bin` (the paths the spec names).
fn install_bin() -> Result<()> {
    let bin = Path::new(LAB_DIR).join("bin");
    fs::create_dir_all(&bin)
        .map_err(|e| Error::new(format!("cannot create {}: {e}", bin.display())))?;
    install_executable(&bin.join("sk-lab"), SK_LAB_SCRIPT)?;
    install_executable(&bin.join("sk-instance"), SK_INSTANCE_SCRIPT)
}

/// Installs missing packages, cleans the leftovers of a crashed lab and builds the lab; a lab
/// already up is left as it is (its scripts are refreshed).
pub fn up() -> Result<()> {
    install_bin()?;
    script_ok(&["up"])
}

/// Stops and removes everything the lab made. Idempotent.
pub fn down() -> Result<()> {
    script_ok(&["down"])
}

/// Prints hosts, addresses, daemons and pools.
pub fn status() -> Result<()> {
    script_ok(&["status"])
}

/// Runs `cmd` inside `host` (its network, mount and UTS namespaces); returns its exit code.
pub fn exec(host: Host, cmd: &[String]) -> Result<i32> {
    let mut args = vec!["exec", host.name()];
    args.extend(cmd.iter().map(String::as_str));
    let status = script(&args)?;
    Ok(status.code().unwrap_or(128))
}

/// Takes the host's link down (a network partition).
pub fn cut(host: Host) -> Result<()> {
    script_ok(&["cut", host.name()])
}

/// Brings the host's link back up.
pub fn heal(host: Host) -> Result<()> {
    script_ok(&["heal", host.name()])
}

/// Power loss: every process of the host killed at once, nothing flushed or exported.
pub fn kill(host: Host) -> Result<()> {
    script_ok(&["kill", host.name()])
}

/// Power back: daemons restarted and the pool imported; instances are not started.
pub fn boot(host: Host) -> Result<()> {
    script_ok(&["boot", host.name()])
}

/// Sends mail as an upstream MTA; prints each accepted Message-ID on `out` as soon as the server
/// accepted it, and returns them all.
pub fn send(opts: &smtp::SendOptions, out: &mut dyn Write) -> Result<Vec<String>> {
    smtp::send(opts, out)
}

/// Logs in over IMAP at the instance's service address and returns the Message-ID of every
/// message in every folder of `user`.
pub fn imap_message_ids(instance: Instance, user: &str) -> Result<Vec<String>> {
    imap::message_ids(
        instance.service_addr(),
        143,
        user,
        "lab",
        Duration::from_secs(30),
    )
}

/// Parses `30s`, `2m`, `1h`, `500ms` or a bare number of seconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration '{text}': expected e.g. 30s, 2m, 1h"))?;
    let secs = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "invalid duration '{text}': unit must be ms, s, m or h"
            ));
        }
    };
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-3s").is_err());
    }

    #[test]
    fn addresses_match_the_host_script() {
        for h in Host::ALL {
            let line = format!("{}) echo {} ;;", h.name(), h.addr());
            assert!(SK_LAB_SCRIPT.contains(&line), "sk-lab.sh lacks `{line}`");
        }
        let normalized: Vec<String> = SK_INSTANCE_SCRIPT
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        for i in [Instance::Students, Instance::Staff] {
            let line = format!(
                "{}) addr={}; domain={}; own_pf={} ;;",
                i.name(),
                i.service_addr(),
                i.domain(),
                if i.smtp_port() == 25 {
                    ""
                } else {
                    "/etc/postfix/staff"
                }
            );
            assert!(normalized.contains(&line), "sk-instance.sh lacks `{line}`");
        }
        // the own Postfix of staff listens where `lab send` goes
        let port = Instance::Staff.smtp_port();
        assert!(
            SK_LAB_SCRIPT.contains(&format!("s/^smtp      inet /{port}      inet /")),
            "sk-lab.sh: staff's Postfix does not listen on {port}"
        );
    }
}
