//! Postfix adapter: argv builders and parsers for `postconf` and `postqueue -j`. Pure.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Deserialize;

use crate::model::{PostfixCapabilities, QueueEntry, QueueRecipient};

/// `postconf name…` (not `-h`: `-h` silently drops unknown names, which misaligns values).
pub fn postconf_argv(names: &[String]) -> Vec<String> {
    let mut v = vec!["postconf".to_string()];
    v.extend(names.iter().cloned());
    v
}

/// `postconf -n`: every parameter set explicitly in main.cf.
pub fn postconf_n_argv() -> Vec<String> {
    vec!["postconf".into(), "-n".into()]
}

/// `postconf -h mail_version`.
pub fn mail_version_argv() -> Vec<String> {
    vec!["postconf".into(), "-h".into(), "mail_version".into()]
}

/// `postqueue -j`.
pub fn postqueue_argv() -> Vec<String> {
    vec!["postqueue".into(), "-j".into()]
}

/// `postqueue -f`: try every deferred message again now.
pub fn flush_argv() -> Vec<String> {
    vec!["postqueue".into(), "-f".into()]
}

/// `postconf -e name=value…`: set main.cf parameters (each `name=value` one argument, never
/// a shell word).
pub fn postconf_set_argv(settings: &BTreeMap<String, String>) -> Vec<String> {
    let mut argv: Vec<String> = vec!["postconf".into(), "-e".into()];
    argv.extend(settings.iter().map(|(k, v)| format!("{k}={v}")));
    argv
}

/// `postfix reload`.
pub fn reload_argv() -> Vec<String> {
    vec!["postfix".into(), "reload".into()]
}

/// `postfix reload` refused because that Postfix is not running (postfix-script's words).
pub fn reload_not_running(stderr: &str) -> bool {
    stderr.contains("the Postfix mail system is not running")
}

/// Print a lookup table of Postfix's `config_directory`: a fixed script, the file name is its
/// positional argument (never part of the script).
pub fn cat_table_argv(file: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        "cat \"$(postconf -h config_directory)/$1\"".into(),
        "sh".into(),
        file.into(),
    ]
}

/// Parse `name = value` lines (`postconf names…`, `postconf -n`). Lines without ` = ` (for
/// example warnings) are skipped.
pub fn parse_postconf(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(" =")?;
            let k = k.trim();
            if k.is_empty() || k.contains(char::is_whitespace) {
                return None;
            }
            Some((k.to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Capabilities from `postconf -h mail_version` (or `postconf mail_version`) output.
/// `postqueue -j` exists from Postfix 3.1.
pub fn detect_capabilities(mail_version_out: &str) -> Option<PostfixCapabilities> {
    let v = mail_version_out.lines().next()?.trim();
    let v = v.strip_prefix("mail_version =").unwrap_or(v).trim();
    let mut parts = v.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    });
    let major = parts.next().flatten()?;
    let minor = parts.next().flatten().unwrap_or(0);
    Some(PostfixCapabilities {
        version: v.to_string(),
        postqueue_json: (major, minor) >= (3, 1),
    })
}

#[derive(Deserialize)]
struct RawEntry {
    queue_name: String,
    queue_id: String,
    arrival_time: i64,
    message_size: u64,
    #[serde(default)]
    forced_expire: bool,
    sender: String,
    #[serde(default)]
    recipients: Vec<RawRecipient>,
}

#[derive(Deserialize)]
struct RawRecipient {
    address: String,
    #[serde(default)]
    delay_reason: Option<String>,
}

/// A `postqueue -j` line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("postqueue -j line {line}: {reason}")]
pub struct QueueParseError {
    /// 1-based line.
    pub line: usize,
    /// Why.
    pub reason: String,
}

/// Parse `postqueue -j` (one JSON object per line; unknown keys ignored).
pub fn parse_postqueue(out: &str) -> Result<Vec<QueueEntry>, QueueParseError> {
    let mut v = Vec::new();
    for (i, l) in out.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let e = |reason: String| QueueParseError {
            line: i + 1,
            reason,
        };
        let r: RawEntry = serde_json::from_str(l).map_err(|x| e(x.to_string()))?;
        let arrival_time = Timestamp::from_second(r.arrival_time).map_err(|x| e(x.to_string()))?;
        v.push(QueueEntry {
            queue_name: r.queue_name,
            queue_id: r.queue_id,
            arrival_time,
            message_size: r.message_size,
            forced_expire: r.forced_expire,
            sender: r.sender,
            recipients: r
                .recipients
                .into_iter()
                .map(|r| QueueRecipient {
                    address: r.address,
                    delay_reason: r.delay_reason,
                })
                .collect(),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_decide_postqueue_json() {
        assert!(detect_capabilities("3.7.11\n").unwrap().postqueue_json);
        assert!(
            detect_capabilities("mail_version = 3.1.0\n")
                .unwrap()
                .postqueue_json
        );
        assert!(!detect_capabilities("3.0.4\n").unwrap().postqueue_json);
        assert!(!detect_capabilities("2.11.3").unwrap().postqueue_json);
        assert_eq!(detect_capabilities("sh: postconf: not found"), None);
    }

    #[test]
    fn unknown_keys_are_ignored_and_bad_lines_reported() {
        let l = r#"{"queue_name":"hold","queue_id":"X","arrival_time":1,"message_size":2,"sender":"a@b","recipients":[{"address":"c@d","new_key":1}],"future":true}"#;
        let q = parse_postqueue(l).unwrap();
        assert_eq!(q[0].recipients[0].address, "c@d");
        let err = parse_postqueue(&format!("{l}\nnot json\n")).unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn postconf_pairs_skip_warnings() {
        let m = parse_postconf(
            "postconf: warning: x: unknown parameter\nrelayhost =\nmyhostname = sk-rec.test\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m["relayhost"], "");
        assert_eq!(m["myhostname"], "sk-rec.test");
    }
}
