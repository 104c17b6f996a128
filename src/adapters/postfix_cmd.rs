//! Argv builders and parsers for the Postfix commands the archive needs: `postsuper`
//! (delete held copies), `postcat` (dump held messages) and `sendmail -bs` (re-inject).
//!
//! `postconf`/`postqueue` live in `postfix.rs`. Everything here is pure: argv vectors out,
//! command output in. Nothing that comes from a spec or a queue ever reaches a shell.
//!
//! # Why `postcat -d -o -q ID…`
//!
//! One `postcat` call dumps every held message we ask for, so replaying 5,000 messages costs
//! one round trip instead of 5,000. Boundaries must be unambiguous even when a message body
//! contains text that looks like postcat's own markers (`*** MESSAGE FILE END hold/… ***`):
//!
//! * `-o` prints the queue-file offset before every record and `-d` its record type, so every
//!   record is exactly one output line `{offset:>9} {type:>3} {payload}` (checked on Postfix
//!   3.7: even a continuation record `L`, a line longer than `line_length_limit`, then ends
//!   with a newline). Record payloads never hold a newline.
//! * The only unprefixed line is the `*** ENVELOPE RECORDS queue/ID ***` that opens a file;
//!   the other markers are records of their own types (77 `M` content starts, 88 `X` extracted
//!   section, 69 `E` file end). A forged marker in a body is a type-78 `N` record, i.e. text.
//!
//! Without `-o`, `postcat` prints a continuation record without its newline and the next
//! record's prefix lands mid-line, which is ambiguous; `-bh` loses the envelope and has no
//! boundaries at all. `postcat` stops at the first queue id that no longer exists (`fatal:
//! open queue file ID: No such file or directory`): [`postcat_missing_id`] names it so the
//! caller can ask again without it.
//!
//! The body bytes: content records are joined, a normal record `N` ends with `\n`, a
//! continuation record `L` does not. The result is the message as Postfix stores it, with
//! LF line ends (the SMTP client turns them into CRLF).

use std::collections::BTreeSet;

/// Postfix record types (`rec_type.h`) that the parser interprets.
mod rec {
    pub const SIZE: u32 = b'C' as u32; // 67 message_size
    pub const SENDER: u32 = b'S' as u32; // 83
    pub const RCPT: u32 = b'R' as u32; // 82 recipient (not yet delivered)
    pub const MESG: u32 = b'M' as u32; // 77 start of content
    pub const NORM: u32 = b'N' as u32; // 78 a content line
    pub const CONT: u32 = b'L' as u32; // 76 a content line continued by the next record
    pub const XTRA: u32 = b'X' as u32; // 88 start of extracted section
    pub const END: u32 = b'E' as u32; // 69 end of file
}

/// Whether `id` looks like a Postfix queue id (short: hex; long: base-52-ish alphanumerics).
/// Refuses `ALL` (which `postsuper` reads as "every message") and anything that could be read
/// as an option.
pub fn is_queue_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
        && !id.eq_ignore_ascii_case("ALL")
}

/// A refused queue id (never passed to a command).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a Postfix queue id; refusing to pass it to postsuper/postcat (ALL, options and non-alphanumerics are never accepted)"
)]
pub struct BadQueueId(pub String);

fn check_ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> Result<Vec<String>, BadQueueId> {
    ids.into_iter()
        .map(|id| {
            if is_queue_id(id) {
                Ok(id.to_owned())
            } else {
                Err(BadQueueId(id.to_owned()))
            }
        })
        .collect()
}

/// `postsuper -d - hold`: delete the queue ids read from stdin (see [`postsuper_stdin`]),
/// only from the hold queue, in one call. A message that left the hold queue meanwhile (was
/// released, delivered) is not touched.
pub fn postsuper_delete_argv() -> Vec<String> {
    ["postsuper", "-d", "-", "hold"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `postsuper -d -`: delete the queue ids read from stdin from the queues where Postfix keeps
/// mail it still has to deliver (hold, incoming, active, deferred), in one call. For a
/// passive node's queued deliveries that a replay already put into the serving copy.
pub fn postsuper_delete_queued_argv() -> Vec<String> {
    ["postsuper", "-d", "-"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The stdin of [`postsuper_delete_argv`]: one queue id per line. Refuses the whole batch if
/// any id is not a queue id (`ALL` above all).
pub fn postsuper_stdin<'a>(ids: impl IntoIterator<Item = &'a str>) -> Result<Vec<u8>, BadQueueId> {
    let mut out = Vec::new();
    for id in check_ids(ids)? {
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

/// `postsuper -d ID hold`, one id: the slow form, for a single message.
pub fn postsuper_delete_one_argv(id: &str) -> Result<Vec<String>, BadQueueId> {
    let id = check_ids([id])?.remove(0);
    Ok(vec!["postsuper".into(), "-d".into(), id, "hold".into()])
}

/// What `postsuper -d` reported (stderr): the ids it removed and its total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostsuperReport {
    /// `postsuper: ID: removed`, in output order.
    pub removed: Vec<String>,
    /// `postsuper: Deleted: N message(s)`.
    pub deleted_count: Option<u64>,
    /// Any other line (warnings), verbatim.
    pub other: Vec<String>,
}

/// Parses `postsuper -d` output. An id asked for but not listed as removed was not in the
/// hold queue (already gone): that is not an error for a purge.
pub fn parse_postsuper(out: &str) -> PostsuperReport {
    let mut r = PostsuperReport::default();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("postsuper: ") else {
            if !line.trim().is_empty() {
                r.other.push(line.to_owned());
            }
            continue;
        };
        if let Some(n) = rest.strip_prefix("Deleted: ") {
            r.deleted_count = n.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(id) = rest.strip_suffix(": removed")
            && is_queue_id(id)
        {
            r.removed.push(id.to_owned());
        } else {
            r.other.push(line.to_owned());
        }
    }
    r
}

/// `postcat -d -o -q ID…`: dump many queued messages in one call (see the module docs).
pub fn postcat_argv<'a>(ids: impl IntoIterator<Item = &'a str>) -> Result<Vec<String>, BadQueueId> {
    let mut argv: Vec<String> = ["postcat", "-d", "-o", "-q"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.extend(check_ids(ids)?);
    Ok(argv)
}

/// `sendmail -bs`: a stand-alone SMTP session on stdin/stdout (see `smtp.rs`). Run it as the
/// mail owner (`postfix`) so smtpd access controls apply and the queue id in the `250` reply is
/// the one the message keeps; as root, Postfix queues through `maildrop` under another id.
pub fn sendmail_bs_argv() -> Vec<String> {
    vec!["sendmail".into(), "-bs".into()]
}

/// The queue id `postcat` stopped at, from its stderr
/// (`postcat: fatal: open queue file ID: No such file or directory`).
pub fn postcat_missing_id(stderr: &str) -> Option<String> {
    stderr.lines().find_map(|l| {
        let rest = l.split_once("open queue file ")?.1;
        let (id, why) = rest.split_once(": ")?;
        (why.contains("No such file") && is_queue_id(id)).then(|| id.to_owned())
    })
}

/// One message as `postcat` dumped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldMessage {
    /// The queue it was found in (`hold`, `deferred`, …).
    pub queue_name: String,
    /// The queue id.
    pub queue_id: String,
    /// The envelope sender; empty for the null sender `<>`.
    pub sender: String,
    /// Recipients not yet delivered (envelope and extracted sections), in file order.
    pub recipients: Vec<String>,
    /// The content size Postfix recorded (first field of `message_size`).
    pub content_size: Option<u64>,
    /// Headers and body, exactly as stored, LF line ends.
    pub content: Vec<u8>,
    /// The `Message-ID` header's value, unfolded and trimmed (first one when repeated).
    pub message_id: Option<String>,
}

/// A `postcat` dump that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("postcat output, line {line}: {message}")]
pub struct PostcatError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

/// The messages of one `postcat -d -o -q` dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostcatDump {
    /// Complete messages (a `MESSAGE FILE END` was seen), in output order.
    pub messages: Vec<HeldMessage>,
    /// A message whose dump was cut short (postcat died), by queue id: never replayed.
    pub truncated: Option<String>,
    /// Diagnostic lines (`postcat: …`) mixed in, verbatim.
    pub diagnostics: Vec<String>,
}

impl PostcatDump {
    /// The ids of complete messages.
    pub fn ids(&self) -> BTreeSet<&str> {
        self.messages.iter().map(|m| m.queue_id.as_str()).collect()
    }
}

/// Splits `{offset:>9} {type:>3} {payload}` into `(type, payload)`.
fn split_record(line: &[u8]) -> Option<(u32, &[u8])> {
    let s = line.iter().position(|b| *b != b' ')?;
    let line = &line[s..];
    let off_end = line.iter().position(|b| !b.is_ascii_digit())?;
    if off_end == 0 || line.get(off_end) != Some(&b' ') {
        return None;
    }
    let rest = &line[off_end + 1..];
    let t = rest.iter().position(|b| *b != b' ')?;
    let rest = &rest[t..];
    let t_end = rest.iter().position(|b| !b.is_ascii_digit())?;
    if t_end == 0 || rest.get(t_end) != Some(&b' ') {
        return None;
    }
    let ty: u32 = std::str::from_utf8(&rest[..t_end]).ok()?.parse().ok()?;
    Some((ty, &rest[t_end + 1..]))
}

fn parse_marker(line: &[u8], what: &str) -> Option<(String, String)> {
    let s = std::str::from_utf8(line).ok()?;
    let inner = s.strip_prefix("*** ")?.strip_suffix(" ***")?;
    let path = inner.strip_prefix(what)?.strip_prefix(' ')?;
    let (q, id) = path.rsplit_once('/')?;
    Some((q.to_owned(), id.to_owned()))
}

struct Partial {
    msg: HeldMessage,
    section: Section,
}

#[derive(PartialEq, Eq)]
enum Section {
    Envelope,
    Content,
    Extracted,
}

/// Parses the output of [`postcat_argv`] (stdout; stray `postcat:` diagnostics tolerated).
/// A record line that does not have the `-d -o` shape is an error, never guessed at.
pub fn parse_postcat(out: &[u8]) -> Result<PostcatDump, PostcatError> {
    let mut dump = PostcatDump::default();
    let mut cur: Option<Partial> = None;
    let mut lines: Vec<&[u8]> = out.split(|b| *b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    for (i, line) in lines.iter().enumerate() {
        let lineno = i + 1;
        let err = |m: String| PostcatError {
            line: lineno,
            message: m,
        };
        if line.starts_with(b"*** ENVELOPE RECORDS ") {
            if let Some(p) = cur.take() {
                dump.truncated = Some(p.msg.queue_id);
                return Err(err(format!(
                    "a new file starts before `MESSAGE FILE END` of {}",
                    dump.truncated.as_deref().unwrap_or("?")
                )));
            }
            let (queue_name, queue_id) = parse_marker(line, "ENVELOPE RECORDS")
                .ok_or_else(|| err("malformed ENVELOPE RECORDS marker".into()))?;
            cur = Some(Partial {
                msg: HeldMessage {
                    queue_name,
                    queue_id,
                    sender: String::new(),
                    recipients: Vec::new(),
                    content_size: None,
                    content: Vec::new(),
                    message_id: None,
                },
                section: Section::Envelope,
            });
            continue;
        }
        if line.starts_with(b"postcat: ") || line.starts_with(b"postcat[") {
            dump.diagnostics
                .push(String::from_utf8_lossy(line).into_owned());
            continue;
        }
        let Some((ty, payload)) = split_record(line) else {
            return Err(err(format!(
                "expected `offset type payload` (postcat -d -o), got `{}`",
                String::from_utf8_lossy(&line[..line.len().min(80)])
            )));
        };
        let Some(p) = cur.as_mut() else {
            return Err(err("a record before any ENVELOPE RECORDS marker".into()));
        };
        match (&p.section, ty) {
            (Section::Content, rec::NORM) => {
                p.msg.content.extend_from_slice(payload);
                p.msg.content.push(b'\n');
            }
            (Section::Content, rec::CONT) => p.msg.content.extend_from_slice(payload),
            (Section::Content, rec::XTRA) => p.section = Section::Extracted,
            (Section::Content, other) => {
                return Err(err(format!(
                    "unexpected record type {other} inside message content"
                )));
            }
            (_, rec::MESG) => {
                if p.section != Section::Envelope {
                    return Err(err("a second MESSAGE CONTENTS section".into()));
                }
                p.section = Section::Content;
            }
            (_, rec::END) => {
                let Some(mut done) = cur.take() else {
                    continue;
                };
                if done.section == Section::Envelope {
                    return Err(err(format!(
                        "{} ends without message content",
                        done.msg.queue_id
                    )));
                }
                done.msg.message_id = message_id(&done.msg.content);
                dump.messages.push(done.msg);
            }
            (_, rec::SENDER) => {
                let s = String::from_utf8_lossy(payload);
                let v = s.strip_prefix("sender:").unwrap_or(&s).trim();
                p.msg.sender = v.to_owned();
            }
            (_, rec::RCPT) => {
                let s = String::from_utf8_lossy(payload);
                let v = s.strip_prefix("recipient:").unwrap_or(&s).trim();
                if !v.is_empty() {
                    p.msg.recipients.push(v.to_owned());
                }
            }
            (Section::Envelope, rec::SIZE) => {
                let s = String::from_utf8_lossy(payload);
                p.msg.content_size = s
                    .strip_prefix("message_size:")
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|n| n.parse().ok());
            }
            _ => {}
        }
    }
    if let Some(p) = cur {
        dump.truncated = Some(p.msg.queue_id);
    }
    Ok(dump)
}

/// The first `Message-ID` header of a message (case-insensitive name, folded value unfolded,
/// surrounding white space trimmed). Only the header section is searched.
pub fn message_id(content: &[u8]) -> Option<String> {
    header_value(content, "message-id").map(|v| v.trim().to_owned())
}

/// The first header `name` (case-insensitive), unfolded (CRLF/LF + WSP become the WSP).
pub fn header_value(content: &[u8], name: &str) -> Option<String> {
    let mut value: Option<Vec<u8>> = None;
    for raw in content.split(|b| *b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            break; // end of headers
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(v) = value.as_mut() {
                v.extend_from_slice(line);
            }
            continue;
        }
        if value.is_some() {
            break;
        }
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            let (n, v) = line.split_at(colon);
            if n.trim_ascii().eq_ignore_ascii_case(name.as_bytes()) {
                value = Some(v[1..].to_vec());
            }
        }
    }
    value.map(|v| String::from_utf8_lossy(v.trim_ascii()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: &[u8] = include_bytes!("../../tests/fixtures/postfix/postcat-do-hold.txt");
    const MISSING: &[u8] = include_bytes!("../../tests/fixtures/postfix/postcat-do-missing.txt");
    const BH_ONE: &[u8] = include_bytes!("../../tests/fixtures/postfix/postcat-bh-one.txt");
    const POSTSUPER: &str = include_str!("../../tests/fixtures/postfix/postcat-postsuper-d.txt");

    fn by_id<'a>(d: &'a PostcatDump, id: &str) -> &'a HeldMessage {
        d.messages.iter().find(|m| m.queue_id == id).unwrap()
    }

    #[test]
    fn real_dump_splits_into_six_messages_with_envelopes() {
        let d = parse_postcat(HOLD).unwrap();
        assert_eq!(d.truncated, None);
        let ids: Vec<&str> = d.messages.iter().map(|m| m.queue_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "4jcJsm4QQsz1T",
                "4jcJsm4RTVz1V",
                "4jcJsm4RmYz1W",
                "4jcJsm4Rztz1X",
                "4jcJsm4SBrz1Y",
                "4jcJsm4SPQz1Z"
            ]
        );
        assert!(d.messages.iter().all(|m| m.queue_name == "hold"));
        let m1 = by_id(&d, "4jcJsm4QQsz1T");
        assert_eq!(m1.sender, "alice@students.lab");
        assert_eq!(
            m1.recipients,
            [
                "bob=students.lab@archive.lab",
                "Carol.X=staff.lab@archive.lab"
            ]
        );
        assert_eq!(m1.message_id.as_deref(), Some("<m1@sk-rec.test>"));
        assert!(
            m1.content
                .ends_with(b"Message-ID: <m1@sk-rec.test>\n\nhello\n")
        );
        // null sender stays empty, not MAILER-DAEMON
        let m2 = by_id(&d, "4jcJsm4RTVz1V");
        assert_eq!(m2.sender, "");
        assert_eq!(m2.message_id.as_deref(), Some("<m2@sk-rec.test>"));
    }

    #[test]
    fn content_length_matches_postfix_size_with_crlf() {
        // message_size counts each line end as CRLF (the SMTP size): the bytes we rebuilt
        // must give exactly that number. Not for the dot-stuffed message: smtpd's count there
        // is 4 more than the stored bytes (it counts stuffing as received; not a documented
        // invariant), so that one is checked against `postcat -bh` below instead.
        let d = parse_postcat(HOLD).unwrap();
        for m in d.messages.iter().filter(|m| m.queue_id != "4jcJsm4SBrz1Y") {
            let lf = m.content.iter().filter(|b| **b == b'\n').count() as u64;
            assert_eq!(
                Some(m.content.len() as u64 + lf),
                m.content_size,
                "{}",
                m.queue_id
            );
        }
    }

    #[test]
    fn eight_bit_folded_and_forged_markers_are_content() {
        let d = parse_postcat(HOLD).unwrap();
        let m3 = by_id(&d, "4jcJsm4RmYz1W");
        let body = String::from_utf8(m3.content.clone()).unwrap();
        assert!(body.ends_with("\n\ncafé crème brûlée ☃\n"), "{body}");
        let m4 = by_id(&d, "4jcJsm4Rztz1X");
        assert_eq!(
            m4.message_id.as_deref(),
            Some(
                "<very-long-message-identifier-012345678901234567890123456789012345678901234567890123456789@sk-rec.test>"
            )
        );
        let m5 = by_id(&d, "4jcJsm4SBrz1Y");
        let long = "x".repeat(3000);
        let want = format!(
            "\n\n.leading dot\n.\n..two\n*** MESSAGE FILE END hold/FORGED ***\n*** ENVELOPE RECORDS hold/FORGED ***\n{long}\nlast line\n"
        );
        assert!(
            m5.content.ends_with(want.as_bytes()),
            "{}",
            String::from_utf8_lossy(&m5.content)
        );
        let m6 = by_id(&d, "4jcJsm4SPQz1Z");
        assert_eq!(m6.message_id, None);
    }

    #[test]
    fn body_equals_postcat_bh_of_the_same_message() {
        // `postcat -bh -q` of message 5, recorded in the same run: the independent view of
        // the same bytes.
        let d = parse_postcat(HOLD).unwrap();
        assert_eq!(by_id(&d, "4jcJsm4SBrz1Y").content, BH_ONE);
    }

    #[test]
    fn a_missing_id_stops_postcat_and_is_named() {
        // the recording appends `rc=N` (postcat's exit status) after the output
        let out = MISSING.strip_suffix(b"rc=1\n").unwrap();
        let d = parse_postcat(out).unwrap();
        assert_eq!(d.messages.len(), 1);
        assert_eq!(d.messages[0].queue_id, "4jcJsm4QQsz1T");
        assert_eq!(d.truncated, None);
        assert_eq!(d.diagnostics.len(), 1);
        let stderr = String::from_utf8_lossy(MISSING);
        assert_eq!(
            postcat_missing_id(&stderr).as_deref(),
            Some("4NoSuchQueueId")
        );
    }

    #[test]
    fn a_cut_dump_reports_the_truncated_message() {
        let cut = &HOLD[..HOLD.len() - 300];
        let d = parse_postcat(cut).unwrap();
        assert_eq!(d.messages.len(), 5);
        assert_eq!(d.truncated.as_deref(), Some("4jcJsm4SPQz1Z"));
    }

    #[test]
    fn garbage_is_an_error_not_a_guess() {
        assert!(parse_postcat(b"*** ENVELOPE RECORDS hold/A1 ***\nhello\n").is_err());
        assert!(parse_postcat(b"     0  78 orphan\n").is_err());
    }

    #[test]
    fn postsuper_output_and_argv() {
        let r = parse_postsuper(POSTSUPER);
        assert_eq!(r.removed, ["4jcJsm4SPQz1Z"]);
        assert_eq!(r.deleted_count, Some(1));
        assert_eq!(postsuper_delete_argv(), ["postsuper", "-d", "-", "hold"]);
        assert_eq!(
            postsuper_stdin(["A1B2", "4jcJsm4SPQz1Z"]).unwrap(),
            b"A1B2\n4jcJsm4SPQz1Z\n"
        );
        for bad in ["ALL", "all", "-d", "a b", "", "x\nALL", "../etc"] {
            assert!(postsuper_stdin(["A1", bad]).is_err(), "{bad:?}");
            assert!(postsuper_delete_one_argv(bad).is_err(), "{bad:?}");
            assert!(postcat_argv([bad]).is_err(), "{bad:?}");
        }
        assert_eq!(
            postcat_argv(["A1", "B2"]).unwrap(),
            ["postcat", "-d", "-o", "-q", "A1", "B2"]
        );
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_stops_at_body() {
        let m = b"Subject: x\r\nMESSAGE-ID:\r\n\t<a@b>\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(message_id(m).as_deref(), Some("<a@b>"));
        assert_eq!(message_id(b"Subject: x\n\nMessage-ID: <no@x>\n"), None);
    }
}
