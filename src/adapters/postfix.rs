//! Postfix adapter: argv builders and parsers for `postconf` and `postqueue -j`. Pure.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use jiff::Timestamp;
use serde::Deserialize;

use crate::model::{PostfixCapabilities, QueueEntry, QueueId, QueueName, QueueRecipient};

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
struct RawEntry<'a> {
    #[serde(borrow)]
    queue_name: Cow<'a, str>,
    #[serde(borrow)]
    queue_id: Cow<'a, str>,
    arrival_time: i64,
    message_size: u64,
    #[serde(default)]
    forced_expire: bool,
    #[serde(borrow)]
    sender: Cow<'a, str>,
    #[serde(default, borrow)]
    recipients: Vec<RawRecipient<'a>>,
}

#[derive(Deserialize)]
struct RawRecipient<'a> {
    #[serde(borrow)]
    address: Cow<'a, str>,
    #[serde(default, borrow)]
    delay_reason: Option<Cow<'a, str>>,
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

/// Reads `postqueue -j` one line at a time, as it streams in, into compact entries: each
/// distinct sender, address, delay reason and recipient list is stored once and shared
/// (a million held copies for forty thousand mailboxes hold forty thousand addresses, not a
/// million), and a line's text is dropped as soon as it is read.
#[derive(Debug, Default)]
pub struct QueueReader {
    strings: HashSet<Arc<str>>,
    lists: HashSet<Arc<[QueueRecipient]>>,
    line: usize,
}

impl QueueReader {
    /// A reader with nothing interned yet.
    pub fn new() -> QueueReader {
        QueueReader::default()
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return Arc::clone(a);
        }
        let a: Arc<str> = s.into();
        self.strings.insert(Arc::clone(&a));
        a
    }

    /// The next line: `Ok(None)` for a blank one, the entry otherwise; the error names the
    /// line (counted over every line given to this reader).
    pub fn line(&mut self, l: &str) -> Result<Option<QueueEntry>, QueueParseError> {
        self.line += 1;
        if l.trim().is_empty() {
            return Ok(None);
        }
        let line = self.line;
        let e = |reason: String| QueueParseError { line, reason };
        let r: RawEntry<'_> = serde_json::from_str(l).map_err(|x| e(x.to_string()))?;
        let arrival_time = Timestamp::from_second(r.arrival_time).map_err(|x| e(x.to_string()))?;
        let recipients: Vec<QueueRecipient> = r
            .recipients
            .iter()
            .map(|x| QueueRecipient {
                address: self.intern(&x.address),
                delay_reason: x.delay_reason.as_deref().map(|d| self.intern(d)),
            })
            .collect();
        let recipients = match self.lists.get(recipients.as_slice()) {
            Some(l) => Arc::clone(l),
            None => {
                let l: Arc<[QueueRecipient]> = recipients.into();
                self.lists.insert(Arc::clone(&l));
                l
            }
        };
        Ok(Some(QueueEntry {
            queue_name: QueueName::from(r.queue_name.as_ref()),
            queue_id: QueueId::from(r.queue_id.as_ref()),
            arrival_time,
            message_size: r.message_size,
            forced_expire: r.forced_expire,
            sender: self.intern(&r.sender),
            recipients,
        }))
    }
}

/// Parse `postqueue -j` (one JSON object per line; unknown keys ignored).
pub fn parse_postqueue(out: &str) -> Result<Vec<QueueEntry>, QueueParseError> {
    let mut r = QueueReader::new();
    let mut v = Vec::new();
    for l in out.lines() {
        v.extend(r.line(l)?);
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
        assert_eq!(&*q[0].recipients[0].address, "c@d");
        let err = parse_postqueue(&format!("{l}\nnot json\n")).unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn a_streamed_listing_shares_its_strings_and_stays_small() {
        let line = |id: &str, to: &str| {
            format!(
                r#"{{"queue_name":"hold","queue_id":"{id}","arrival_time":1,"message_size":2,"sender":"a@b","recipients":[{{"address":"{to}"}}]}}"#
            )
        };
        let mut r = QueueReader::new();
        let a = r.line(&line("4Fq1", "u1=s.lab@arch")).unwrap().unwrap();
        assert_eq!(r.line("").unwrap(), None);
        let b = r.line(&line("4Fq2", "u1=s.lab@arch")).unwrap().unwrap();
        let c = r.line(&line("4Fq3", "u2=s.lab@arch")).unwrap().unwrap();
        // one recipient list and one sender for both copies of the same mailbox
        assert!(Arc::ptr_eq(&a.recipients, &b.recipients));
        assert!(Arc::ptr_eq(&a.sender, &c.sender));
        assert!(!Arc::ptr_eq(&a.recipients, &c.recipients));
        assert_eq!(
            (a.queue_name.as_str(), b.queue_id.as_str()),
            ("hold", "4Fq2")
        );
        // a long queue id stays inline: no allocation per entry
        let long = r
            .line(&line("4Fc1Xb3Qz9zN5bTq", "u1=s.lab@arch"))
            .unwrap()
            .unwrap();
        assert!(!long.queue_id.is_heap_allocated());
        assert!(std::mem::size_of::<QueueEntry>() <= 112);
        // the line of an error counts every line given, blank ones too
        assert_eq!(r.line("{").unwrap_err().line, 6);
        // escapes are read (a borrowed string cannot hold them)
        let esc = r
            .line(&line("4Fq\\u0041", "u\\\"1\\\"@x"))
            .unwrap()
            .unwrap();
        assert_eq!(esc.queue_id.as_str(), "4FqA");
        assert_eq!(&*esc.recipients[0].address, "u\"1\"@x");
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
