//! Jail runtimes: parsers for `ezjail-admin list`, `jls --libxo json` and `jls -v`. Pure.

use serde::Deserialize;

use crate::model::{InstanceState, RunState};

/// One row of `ezjail-admin list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EzjailEntry {
    /// The status letters, e.g. `ZR`, `DS`, `DSN`.
    pub status: String,
    /// Jail id when running.
    pub jid: Option<u32>,
    /// IP addresses (first column plus continuation lines).
    pub ips: Vec<String>,
    /// Hostname (ezjail's jail name).
    pub hostname: String,
    /// Root directory.
    pub root: String,
}

impl EzjailEntry {
    /// Second letter `R`: running. `S` stopped, `A` image attached but not running.
    pub fn running(&self) -> bool {
        self.status.chars().nth(1) == Some('R')
    }
    /// Third letter `N`: the jail is configured `norun` (not started at boot).
    pub fn norun(&self) -> bool {
        self.status.chars().nth(2) == Some('N')
    }
    /// As an instance state.
    pub fn state(&self) -> InstanceState {
        InstanceState {
            state: if self.running() {
                RunState::Running
            } else {
                RunState::Stopped
            },
            detail: Some(format!(
                "ezjail {} jid {}",
                self.status,
                self.jid.map_or("N/A".into(), |j| j.to_string())
            )),
            norun: Some(self.norun()),
        }
    }
}

/// `ezjail-admin list`.
pub fn ezjail_list_argv() -> Vec<String> {
    vec!["ezjail-admin".into(), "list".into()]
}

/// `jls --libxo json -v` (all running jails, with names and state).
pub fn jls_json_argv() -> Vec<String> {
    vec!["jls".into(), "--libxo".into(), "json".into(), "-v".into()]
}

/// `jls -v`: the text fallback for hosts whose jls predates libxo (FreeBSD < 11).
pub fn jls_text_argv() -> Vec<String> {
    vec!["jls".into(), "-v".into()]
}

/// Parse `ezjail-admin list` (format `%-3s %-4s %-15s %-30s %s` of ezjail-admin, with
/// continuation lines carrying extra addresses). Header and ruler lines are skipped.
pub fn parse_ezjail_list(out: &str) -> Vec<EzjailEntry> {
    let mut v: Vec<EzjailEntry> = Vec::new();
    for line in out.lines() {
        if line.starts_with("STA") || line.starts_with("---") || line.trim().is_empty() {
            continue;
        }
        if line.starts_with(' ') {
            // Continuation: "    <jid> <if>|<addr>".
            let mut f = line.split_whitespace();
            let _jid = f.next();
            if let (Some(addr), Some(last)) = (f.next(), v.last_mut()) {
                last.ips.push(addr.to_string());
            }
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(status), Some(jid)) = (f.next(), f.next()) else {
            continue;
        };
        if !status
            .chars()
            .all(|c| matches!(c, 'D' | 'I' | 'E' | 'B' | 'Z' | 'R' | 'A' | 'S' | 'N'))
        {
            continue;
        }
        let ip = f.next().unwrap_or("");
        let hostname = f.next().unwrap_or("").to_string();
        let root = f.collect::<Vec<_>>().join(" ");
        v.push(EzjailEntry {
            status: status.to_string(),
            jid: jid.parse().ok(),
            ips: if ip.is_empty() || ip == "-" {
                Vec::new()
            } else {
                vec![ip.to_string()]
            },
            hostname,
            root,
        });
    }
    v
}

/// One running jail as `jls` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JlsJail {
    /// Jail id.
    #[serde(default, deserialize_with = "de_jid")]
    pub jid: Option<u32>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Hostname.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Root path.
    #[serde(default)]
    pub path: Option<String>,
    /// `ACTIVE` or `DYING` (with -v).
    #[serde(default)]
    pub state: Option<String>,
}

fn de_jid<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Num(u32),
        Text(String),
    }
    Ok(match Option::<N>::deserialize(d)? {
        Some(N::Num(n)) => Some(n),
        Some(N::Text(s)) => s.parse().ok(),
        None => None,
    })
}

#[derive(Deserialize)]
struct JlsDoc {
    #[serde(rename = "jail-information")]
    info: JlsInfo,
}
#[derive(Deserialize)]
struct JlsInfo {
    #[serde(default)]
    jail: Vec<JlsJail>,
}

/// Parse `jls --libxo json [-v]`.
pub fn parse_jls_json(out: &str) -> Result<Vec<JlsJail>, serde_json::Error> {
    Ok(serde_json::from_str::<JlsDoc>(out)?.info.jail)
}

/// Parse `jls -v` text. The layout of `usr.sbin/jls/jls.c` is fixed-width: per jail a
/// `%6d  %-29.29s %.74s` line (jid, hostname, path), then `        %-29.29s %.74s` (name,
/// state), the cpuset id, and one line per address. The columns are cut by position, not by
/// whitespace: a hostname may be empty or hold spaces (`hastd: disk1 (primary)`), and a
/// name is truncated at 29 characters. Lines that fit neither the header nor a record are
/// refused with an error naming the line.
pub fn parse_jls_verbose(out: &str) -> Result<Vec<JlsJail>, String> {
    let mut v: Vec<JlsJail> = Vec::new();
    let mut line_in_record = 0;
    for (n, line) in out.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(jid) = jid_of(line) {
            let (hostname, path) = columns(line.get(8..).unwrap_or(""));
            v.push(JlsJail {
                jid: Some(jid),
                hostname: Some(hostname),
                path,
                name: None,
                state: None,
            });
            line_in_record = 1;
            continue;
        }
        let continuation = line.starts_with("        ");
        if is_jls_header(line) && v.is_empty() {
            continue;
        }
        if !continuation || v.is_empty() {
            return Err(unrecognised("jls -v", n, line));
        }
        if line_in_record == 1
            && let Some(last) = v.last_mut()
        {
            let (name, state) = columns(&line[8..]);
            last.name = Some(name).filter(|s| !s.is_empty());
            last.state = state;
            line_in_record = 2;
        }
    }
    Ok(v)
}

/// Parse plain `jls` text: `%6d  %-15.15s %-29.29s %.74s` (jid, first address, hostname,
/// path), cut by position like [`parse_jls_verbose`]; the address may be empty (VNET jails).
pub fn parse_jls_plain(out: &str) -> Result<Vec<JlsJail>, String> {
    let mut v = Vec::new();
    for (n, line) in out.lines().enumerate() {
        if line.trim().is_empty() || (is_jls_header(line) && v.is_empty()) {
            continue;
        }
        let Some(jid) = jid_of(line) else {
            return Err(unrecognised("jls", n, line));
        };
        // skip the address column (15 characters and a space)
        let (hostname, path) = columns(line.get(24..).unwrap_or(""));
        v.push(JlsJail {
            jid: Some(jid),
            hostname: Some(hostname),
            path,
            name: None,
            state: None,
        });
    }
    Ok(v)
}

/// The jid of a record line: `%6d` then two spaces.
fn jid_of(line: &str) -> Option<u32> {
    let head = line.get(..6)?;
    (line.get(6..8) == Some("  ")).then_some(())?;
    head.trim().parse::<u32>().ok()
}

/// `%-29.29s %.74s`: the first 29 characters (right-trimmed), then what follows the space.
fn columns(rest: &str) -> (String, Option<String>) {
    let cut = rest.char_indices().nth(29).map_or(rest.len(), |(i, _)| i);
    let first = rest[..cut].trim_end().to_owned();
    let second = rest[cut..]
        .strip_prefix(' ')
        .unwrap_or(&rest[cut..])
        .trim_end();
    (first, Some(second.to_owned()).filter(|s| !s.is_empty()))
}

fn is_jls_header(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("JID ")
        || t.starts_with("Name ")
        || t == "CPUSetID"
        || t.starts_with("IP Address")
}

fn unrecognised(cmd: &str, n: usize, line: &str) -> String {
    format!(
        "`{cmd}` printed line {} as `{}`, which is neither its header nor a jail record",
        n + 1,
        line.chars().take(80).collect::<String>()
    )
}

/// State of a jail by name from a `jls` listing (absent means stopped).
pub fn jls_state(jails: &[JlsJail], name: &str) -> InstanceState {
    match jails
        .iter()
        .find(|j| j.name.as_deref() == Some(name) || j.hostname.as_deref() == Some(name))
    {
        Some(j) if j.state.as_deref() == Some("DYING") => InstanceState {
            state: RunState::Stopped,
            detail: Some(format!("jail dying (jid {})", j.jid.unwrap_or(0))),
            norun: None,
        },
        Some(j) => InstanceState {
            state: RunState::Running,
            detail: j.jid.map(|n| format!("jid {n}")),
            norun: None,
        },
        None => InstanceState {
            state: RunState::Stopped,
            detail: Some("not in jls".into()),
            norun: None,
        },
    }
}

/// State from an `exec` runtime's status command: exit 0 running, 1..=3 stopped (LSB
/// `status`: 3 = not running), anything else unknown.
pub fn exec_state(status: Option<i32>, stderr: &str) -> InstanceState {
    let (state, detail) = match status {
        Some(0) => (RunState::Running, "status command exited 0".to_string()),
        Some(c @ 1..=3) => (RunState::Stopped, format!("status command exited {c}")),
        Some(c) => (
            RunState::Unknown,
            format!("status command exited {c}: {}", stderr.trim()),
        ),
        None => (
            RunState::Unknown,
            "status command killed by a signal".into(),
        ),
    };
    InstanceState {
        state,
        detail: Some(detail),
        norun: None,
    }
}

/// ezjail names a jail after its hostname with every character outside `[A-Za-z0-9_]`
/// turned into `_` (`imap-students` runs as `imap_students`): compare that way.
pub fn ezjail_same(hostname: &str, jail: &str) -> bool {
    let norm = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    norm(hostname) == norm(jail)
}

/// What to do with an instance's runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeVerb {
    Start,
    Stop,
    Status,
}

/// The argv that starts, stops or asks the state of an instance on `node`. The one place
/// runtime commands are built. `None` for `Status` on ezjail/jail: their state comes from
/// one listing per node (`ezjail-admin list`, `jls`), not a command per instance.
pub fn runtime_argv(
    rt: &crate::spec::Runtime,
    verb: RuntimeVerb,
    instance: &str,
    node: &str,
) -> Option<Vec<String>> {
    use crate::spec::Runtime;
    let s = |v: &[&str]| Some(v.iter().map(|a| (*a).to_string()).collect());
    match (rt, verb) {
        (Runtime::Ezjail { jail }, RuntimeVerb::Start) => {
            s(&["ezjail-admin", "onestart", jail.as_str()])
        }
        (Runtime::Ezjail { jail }, RuntimeVerb::Stop) => {
            s(&["ezjail-admin", "onestop", jail.as_str()])
        }
        (Runtime::Jail { jail }, RuntimeVerb::Start) => s(&["jail", "-c", jail.as_str()]),
        (Runtime::Jail { jail }, RuntimeVerb::Stop) => s(&["jail", "-r", jail.as_str()]),
        (Runtime::Ezjail { .. } | Runtime::Jail { .. }, RuntimeVerb::Status) => None,
        (
            Runtime::Exec {
                start,
                stop,
                status,
            },
            verb,
        ) => {
            let argv = match verb {
                RuntimeVerb::Start => start,
                RuntimeVerb::Stop => stop,
                RuntimeVerb::Status => status,
            };
            Some(
                argv.iter()
                    .map(|a| a.replace("{instance}", instance).replace("{node}", node))
                    .collect(),
            )
        }
    }
}

/// The argv of a drill block's `start` or `stop`, placeholders replaced in whole arguments
/// (`{instance}`, `{node}`, `{mountpoint}`).
pub fn drill_argv(argv: &[String], instance: &str, node: &str, mountpoint: &str) -> Vec<String> {
    argv.iter()
        .map(|a| match a.as_str() {
            "{instance}" => instance.to_owned(),
            "{node}" => node.to_owned(),
            "{mountpoint}" => mountpoint.to_owned(),
            other => other.to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod runtime_tests {
    use super::*;
    use crate::spec::{Name, Runtime};

    #[test]
    fn runtime_commands_are_argv_with_whole_argument_placeholders() {
        let ez = Runtime::Ezjail {
            jail: Name::new("imap-students").unwrap(),
        };
        assert_eq!(
            runtime_argv(&ez, RuntimeVerb::Start, "students", "node-a").unwrap(),
            ["ezjail-admin", "onestart", "imap-students"]
        );
        assert_eq!(
            runtime_argv(&ez, RuntimeVerb::Status, "students", "node-a"),
            None
        );
        let ex = Runtime::Exec {
            start: vec![
                "/bin/svc".into(),
                "start".into(),
                "{instance}@{node}".into(),
            ],
            stop: vec!["/bin/svc".into(), "stop; rm -rf /".into()],
            status: vec!["/bin/svc".into(), "{instance}".into()],
        };
        assert_eq!(
            runtime_argv(&ex, RuntimeVerb::Start, "staff", "node-b").unwrap(),
            ["/bin/svc", "start", "staff@node-b"]
        );
        // A hostile-looking argument stays one argument.
        assert_eq!(
            runtime_argv(&ex, RuntimeVerb::Stop, "staff", "node-b").unwrap(),
            ["/bin/svc", "stop; rm -rf /"]
        );
    }
}
