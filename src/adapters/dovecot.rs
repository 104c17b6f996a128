//! `doveadm` argv and parsers: which Message-IDs a mailbox already holds, so `arch-restore`
//! never delivers a message twice (guarantee 2).
//!
//! One call per user gets every Message-ID of every folder within the window:
//! `doveadm -f tab fetch -u USER hdr.message-id mailbox '*' SINCE DATE` (the search form,
//! `doveadm search … header Message-ID ID`, costs one call per message). Checked on Dovecot
//! 2.3.19 (fixtures in `tests/fixtures/dovecot`): the tab formatter prints a header line, then
//! one value per message; the value is the raw header, so a folded `Message-ID` spans two
//! physical lines, the second starting with white space; a message without one prints an
//! empty line. Printing only this one field keeps rows unambiguous (mailbox names, which may
//! hold spaces, are not printed).
//!
//! `SINCE` compares the internal (delivery) date by calendar day in the server's time zone;
//! the argv starts one day before the window so the zone never narrows it (a wider search only
//! finds more duplicates to skip). Exit status 67 (`EX_NOUSER`) means the user does not exist.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

/// A user name that cannot be passed to doveadm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DovecotError {
    /// Empty, option-like or with control characters.
    #[error("`{0}` is not a mailbox user name doveadm can be given")]
    BadUser(String),
    /// Output that is not the tab format asked for.
    #[error("doveadm output: {0}")]
    Parse(String),
}

fn check_user(user: &str) -> Result<String, DovecotError> {
    if user.is_empty() || user.starts_with('-') || user.chars().any(char::is_control) {
        return Err(DovecotError::BadUser(user.to_owned()));
    }
    Ok(user.to_owned())
}

/// `doveadm -f tab fetch -u USER hdr.message-id mailbox * SINCE YYYY-MM-DD` (or `ALL` when
/// there is no window start).
pub fn fetch_message_ids_argv(
    user: &str,
    since: Option<Timestamp>,
) -> Result<Vec<String>, DovecotError> {
    let user = check_user(user)?;
    let mut argv: Vec<String> = ["doveadm", "-f", "tab", "fetch", "-u"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.push(user);
    argv.extend(["hdr.message-id", "mailbox", "*"].map(String::from));
    match since {
        Some(t) => {
            let day = t
                .checked_sub(jiff::SignedDuration::from_hours(24))
                .unwrap_or(t)
                .to_zoned(jiff::tz::TimeZone::UTC)
                .date();
            argv.push("SINCE".into());
            argv.push(day.to_string());
        }
        None => argv.push("ALL".into()),
    }
    Ok(argv)
}

/// `doveadm search -u USER mailbox * header Message-ID ID`: the one-message form.
pub fn search_message_id_argv(user: &str, message_id: &str) -> Result<Vec<String>, DovecotError> {
    let user = check_user(user)?;
    if message_id.chars().any(char::is_control) {
        return Err(DovecotError::Parse(format!(
            "Message-ID `{message_id}` holds control characters"
        )));
    }
    Ok(vec![
        "doveadm".into(),
        "search".into(),
        "-u".into(),
        user,
        "mailbox".into(),
        "*".into(),
        "header".into(),
        "Message-ID".into(),
        message_id.into(),
    ])
}

/// The Message-IDs printed by [`fetch_message_ids_argv`] (stdout): unfolded, trimmed,
/// messages without one left out.
pub fn parse_fetch_message_ids(out: &str) -> Result<BTreeSet<String>, DovecotError> {
    let mut lines = out.lines();
    match lines.next() {
        None => return Ok(BTreeSet::new()),
        Some(h) if h.trim_end() == "hdr.message-id" => {}
        Some(h) => {
            return Err(DovecotError::Parse(format!(
                "expected the header `hdr.message-id`, got `{h}`"
            )));
        }
    }
    let mut values: Vec<String> = Vec::new();
    for l in lines {
        if l.starts_with([' ', '\t']) {
            match values.last_mut() {
                Some(v) => v.push_str(l),
                None => {
                    return Err(DovecotError::Parse(format!(
                        "a continuation line before any value: `{l}`"
                    )));
                }
            }
        } else {
            values.push(l.to_owned());
        }
    }
    Ok(values
        .into_iter()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect())
}

/// What `doveadm fetch` said about one user's mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The Message-IDs it holds.
    Holds(BTreeSet<String>),
    /// Dovecot has no such user (`EX_NOUSER`, 67): an alias, a list or an address Postfix
    /// rewrites; where the message went cannot be told from here.
    NotAUser,
    /// Anything else: the mailbox could not be read.
    Failed(String),
}

/// Classify one `doveadm fetch` result (exit status, stdout, stderr). An unknown user is not
/// "holds nothing": a replay to it could be expanded by Postfix into a mailbox that already
/// holds the message (a duplicate).
pub fn fetch_outcome(status: Option<i32>, stdout: &str, stderr: &str) -> FetchOutcome {
    match status {
        Some(0) => match parse_fetch_message_ids(stdout) {
            Ok(ids) => FetchOutcome::Holds(ids),
            Err(e) => FetchOutcome::Failed(e.to_string()),
        },
        Some(67) => FetchOutcome::NotAUser,
        s => FetchOutcome::Failed(format!("doveadm fetch exited {s:?}: {}", stderr.trim())),
    }
}

/// `(Message-ID, user)` pairs for [`crate::decide::archive::restore_set`]'s `already_present`.
pub fn present_pairs(user: &str, ids: &BTreeSet<String>) -> BTreeSet<(String, String)> {
    ids.iter().map(|id| (id.clone(), user.to_owned())).collect()
}

// ---------------------------------------------------------------- restore and drill

/// `doveadm -f tab user USER`: the userdb's view of one user (uid, gid, home, mail).
pub fn user_argv(user: &str) -> Result<Vec<String>, DovecotError> {
    let user = check_user(user)?;
    Ok(vec![
        "doveadm".into(),
        "-f".into(),
        "tab".into(),
        "user".into(),
        user,
    ])
}

/// What `doveadm user` says about one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The system uid its mail is read and written as.
    pub uid: u32,
    /// The system gid.
    pub gid: u32,
    /// `home`, when the userdb gives one.
    pub home: Option<String>,
    /// `mail` (the user's mail location, `mail_location` when the userdb gives none).
    pub mail: Option<String>,
}

/// Parse `doveadm -f tab user USER` (a `field\tvalue` header, then one `field\tvalue` line per
/// field; Dovecot 2.3 fixture in `tests/fixtures/dovecot/user-tab.txt`).
pub fn parse_user(out: &str) -> Result<UserInfo, DovecotError> {
    let mut fields = BTreeMap::new();
    for l in out
        .lines()
        .skip_while(|l| l.trim() == "field\tvalue" || l.trim().is_empty())
    {
        if let Some((k, v)) = l.split_once('\t') {
            fields.insert(k.trim().to_owned(), v.to_owned());
        }
    }
    let num = |k: &str| -> Result<u32, DovecotError> {
        fields
            .get(k)
            .ok_or_else(|| DovecotError::Parse(format!("doveadm user printed no `{k}`")))?
            .trim()
            .parse()
            .map_err(|_| DovecotError::Parse(format!("doveadm user: `{k}` is not a number")))
    };
    Ok(UserInfo {
        uid: num("uid")?,
        gid: num("gid")?,
        home: fields.get("home").filter(|h| !h.is_empty()).cloned(),
        mail: fields.get("mail").filter(|m| !m.is_empty()).cloned(),
    })
}

/// `doveadm exec imap -u USER`: a pre-authenticated IMAP session on stdin/stdout, fed
/// [`LIST_SEPARATOR_SESSION`] to learn the user's hierarchy separator (the one thing the
/// restore folder's name depends on: `.` for Maildir++, `/` for `LAYOUT=fs`).
pub fn exec_imap_argv(user: &str) -> Result<Vec<String>, DovecotError> {
    let user = check_user(user)?;
    Ok(vec![
        "doveadm".into(),
        "exec".into(),
        "imap".into(),
        "-u".into(),
        user,
    ])
}

/// The IMAP commands sent to [`exec_imap_argv`]: `LIST "" ""` answers with the separator.
pub const LIST_SEPARATOR_SESSION: &[u8] = b"a LIST \"\" \"\"\r\nb LOGOUT\r\n";

/// The separator from the session's `* LIST (\Noselect) "." ""` line; `None` for `NIL` (a
/// flat namespace).
pub fn parse_list_separator(out: &str) -> Result<Option<char>, DovecotError> {
    for l in out.lines() {
        let Some(rest) = l.strip_prefix("* LIST ") else {
            continue;
        };
        let Some(close) = rest.find(')') else {
            continue;
        };
        let after = rest[close + 1..].trim_start();
        if after.starts_with("NIL") {
            return Ok(None);
        }
        let mut chars = after.chars();
        match (chars.next(), chars.next(), chars.next(), chars.next()) {
            (Some('"'), Some('\\'), Some(c), Some('"')) => return Ok(Some(c)),
            (Some('"'), Some(c), Some('"'), _) => return Ok(Some(c)),
            _ => {}
        }
    }
    Err(DovecotError::Parse(format!(
        "no `* LIST` line with a separator in the IMAP session: {}",
        out.lines().take(3).collect::<Vec<_>>().join(" | ")
    )))
}

/// The fields [`listing_argv`] asks for, in this order: the Message-ID last, so that a folded
/// header's continuation lines (they start with white space) belong to the row above.
pub const LISTING_FIELDS: &str = "mailbox uid size.virtual date.received hdr.message-id";

fn check_location(location: &str) -> Result<(), DovecotError> {
    if location.is_empty() || location.starts_with('-') || location.chars().any(char::is_control) {
        return Err(DovecotError::Parse(format!(
            "`{location}` is not a mail location doveadm can be given"
        )));
    }
    Ok(())
}

fn with_location(argv: &mut Vec<String>, location: Option<&str>) -> Result<(), DovecotError> {
    if let Some(l) = location {
        check_location(l)?;
        argv.push("-o".into());
        argv.push(format!("mail_location={l}"));
    }
    Ok(())
}

/// `doveadm -f tab [-o mail_location=LOC] fetch -u USER "LISTING_FIELDS" QUERY…`: one row per
/// message matching the search query. With a location, the user's mail is read from there
/// instead of the live store (checked on 2.3.19: `-o` wins over a userdb `mail` field).
pub fn listing_argv(
    user: &str,
    location: Option<&str>,
    query: &[String],
) -> Result<Vec<String>, DovecotError> {
    let user = check_user(user)?;
    if query.is_empty() || query.iter().any(|q| q.chars().any(char::is_control)) {
        return Err(DovecotError::Parse(
            "an empty or unprintable search query".into(),
        ));
    }
    let mut argv: Vec<String> = vec!["doveadm".into(), "-f".into(), "tab".into()];
    with_location(&mut argv, location)?;
    argv.extend(["fetch".into(), "-u".into(), user, LISTING_FIELDS.into()]);
    argv.extend(query.iter().cloned());
    Ok(argv)
}

/// One message as [`listing_argv`] prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Listed {
    /// The folder (UTF-8, the user's separator).
    pub mailbox: String,
    /// Its UID in that folder.
    pub uid: u32,
    /// `size.virtual` (CRLF line ends): the same on both sides of a copy.
    pub vsize: u64,
    /// `date.received` as printed (the server's time zone, seconds).
    pub received: String,
    /// The Message-ID header, unfolded and trimmed (empty when the message has none).
    pub message_id: String,
}

/// Parse [`listing_argv`]'s output (fixture `tests/fixtures/dovecot/fetch-listing-tab.txt`).
pub fn parse_listing(out: &str) -> Result<Vec<Listed>, DovecotError> {
    let mut lines = out.lines();
    let want = LISTING_FIELDS.replace(' ', "\t");
    match lines.next() {
        None => return Ok(Vec::new()),
        Some(h) if h.trim_end() == want => {}
        Some(h) => {
            return Err(DovecotError::Parse(format!(
                "expected the header `{want}`, got `{h}`"
            )));
        }
    }
    let mut rows: Vec<Listed> = Vec::new();
    for l in lines {
        if l.starts_with([' ', '\t']) {
            match rows.last_mut() {
                Some(r) => {
                    r.message_id.push_str(l.trim());
                    continue;
                }
                None => {
                    return Err(DovecotError::Parse(format!(
                        "a continuation line before any row: `{l}`"
                    )));
                }
            }
        }
        if l.is_empty() {
            continue;
        }
        let f: Vec<&str> = l.splitn(5, '\t').collect();
        if f.len() < 4 {
            return Err(DovecotError::Parse(format!(
                "a row with {} fields: `{l}`",
                f.len()
            )));
        }
        let uid = f[1]
            .parse()
            .map_err(|_| DovecotError::Parse(format!("uid `{}` in `{l}`", f[1])))?;
        let vsize = f[2]
            .parse()
            .map_err(|_| DovecotError::Parse(format!("size `{}` in `{l}`", f[2])))?;
        rows.push(Listed {
            mailbox: f[0].to_owned(),
            uid,
            vsize,
            received: f[3].to_owned(),
            message_id: f.get(4).map(|s| s.trim().to_owned()).unwrap_or_default(),
        });
    }
    Ok(rows)
}

/// `doveadm -f tab fetch -u USER "date.received.unixtime hdr.message-id" ALL`: when each
/// message of the live mailbox arrived, for a drill's expectations.
pub fn received_ids_argv(user: &str) -> Result<Vec<String>, DovecotError> {
    let user = check_user(user)?;
    Ok(vec![
        "doveadm".into(),
        "-f".into(),
        "tab".into(),
        "fetch".into(),
        "-u".into(),
        user,
        "date.received.unixtime hdr.message-id".into(),
        "ALL".into(),
    ])
}

/// (received, Message-ID) of [`received_ids_argv`]'s rows, messages without one left out.
pub fn parse_received_ids(out: &str) -> Result<Vec<(i64, String)>, DovecotError> {
    let mut lines = out.lines();
    match lines.next() {
        None => return Ok(Vec::new()),
        Some(h) if h.trim_end() == "date.received.unixtime\thdr.message-id" => {}
        Some(h) => {
            return Err(DovecotError::Parse(format!(
                "expected the header `date.received.unixtime<TAB>hdr.message-id`, got `{h}`"
            )));
        }
    }
    let mut rows: Vec<(i64, String)> = Vec::new();
    for l in lines {
        if l.starts_with([' ', '\t']) {
            if let Some(r) = rows.last_mut() {
                r.1.push_str(l.trim());
            }
            continue;
        }
        let Some((t, id)) = l.split_once('\t') else {
            continue;
        };
        let t = t
            .trim()
            .parse()
            .map_err(|_| DovecotError::Parse(format!("received time `{t}`")))?;
        rows.push((t, id.trim().to_owned()));
    }
    rows.retain(|(_, id)| !id.is_empty());
    Ok(rows)
}

/// `doveadm [-o mail_location=LOC] mailbox list -u USER`: one folder per line.
pub fn mailbox_list_argv(user: &str, location: Option<&str>) -> Result<Vec<String>, DovecotError> {
    let user = check_user(user)?;
    let mut argv: Vec<String> = vec!["doveadm".into()];
    with_location(&mut argv, location)?;
    argv.extend(["mailbox".into(), "list".into(), "-u".into(), user]);
    Ok(argv)
}

/// The folders printed by [`mailbox_list_argv`].
pub fn parse_mailbox_list(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// `a:b,c` from sorted UIDs (the IMAP sequence-set form doveadm's `uid` search key takes).
pub fn uid_set(uids: &[u32]) -> String {
    let mut v = uids.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// `doveadm import -u USER -s SRC DEST mailbox FOLDER uid SET`: copy those messages of one
/// source folder under DEST (created and subscribed), keeping flags and received dates.
/// Dovecot documents `import` for exactly this: it never touches an existing folder's
/// messages, it only adds.
pub fn import_argv(
    user: &str,
    source_location: &str,
    dest_parent: &str,
    mailbox: &str,
    uids: &[u32],
) -> Result<Vec<String>, DovecotError> {
    let user = check_user(user)?;
    check_location(source_location)?;
    if uids.is_empty() {
        return Err(DovecotError::Parse("an import of no message".into()));
    }
    for s in [dest_parent, mailbox] {
        if s.is_empty() || s.chars().any(char::is_control) {
            return Err(DovecotError::Parse(format!("folder name `{s}`")));
        }
    }
    Ok(vec![
        "doveadm".into(),
        "import".into(),
        "-u".into(),
        user,
        "-s".into(),
        source_location.into(),
        dest_parent.into(),
        "mailbox".into(),
        mailbox.into(),
        "uid".into(),
        uid_set(uids),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_user_is_not_an_empty_mailbox() {
        assert_eq!(
            fetch_outcome(Some(67), "", "doveadm(x): Error: User doesn't exist"),
            FetchOutcome::NotAUser
        );
        assert!(matches!(
            fetch_outcome(Some(0), "hdr.message-id\n<a@b>\n", ""),
            FetchOutcome::Holds(ids) if ids.len() == 1
        ));
        assert!(matches!(
            fetch_outcome(Some(75), "", "temp"),
            FetchOutcome::Failed(_)
        ));
    }

    const FETCH: &str = include_str!("../../tests/fixtures/dovecot/doveadm-fetch-tab.txt");
    const SEARCH: &str = include_str!("../../tests/fixtures/dovecot/doveadm-search.txt");

    #[test]
    fn real_fetch_output_with_folded_and_missing_ids() {
        // the recording appends doveadm's exit status
        let out = FETCH.strip_suffix("rc=0\n").unwrap();
        let ids = parse_fetch_message_ids(out).unwrap();
        let want: BTreeSet<String> = [
            "<m1@sk-rec.test>",
            "<m2@sk-rec.test>",
            "<m3@sk-rec.test>",
            "<m5@sk-rec.test>",
            "<folded-very-long-id-0123456789@sk-rec.test>",
        ]
        .map(String::from)
        .into();
        assert_eq!(ids, want);
        assert!(parse_fetch_message_ids("").unwrap().is_empty());
        assert!(parse_fetch_message_ids("mailbox\thdr.message-id\n").is_err());
        assert!(parse_fetch_message_ids("hdr.message-id\n <x>\n").is_err());
    }

    #[test]
    fn search_fixture_finds_one_message() {
        // `doveadm search` prints `mailbox-guid uid` per hit
        let hits: Vec<&str> = SEARCH.lines().filter(|l| !l.starts_with("rc=")).collect();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].split(' ').count(), 2);
    }

    #[test]
    fn argv_shapes() {
        let t: Timestamp = "2026-11-28T00:30:00Z".parse().unwrap();
        assert_eq!(
            fetch_message_ids_argv("bob@students.lab", Some(t)).unwrap(),
            [
                "doveadm",
                "-f",
                "tab",
                "fetch",
                "-u",
                "bob@students.lab",
                "hdr.message-id",
                "mailbox",
                "*",
                "SINCE",
                "2026-11-27"
            ]
        );
        assert_eq!(
            fetch_message_ids_argv("a b@x", None)
                .unwrap()
                .last()
                .map(String::as_str),
            Some("ALL")
        );
        for bad in ["", "-A", "a\nb"] {
            assert!(fetch_message_ids_argv(bad, None).is_err());
            assert!(search_message_id_argv(bad, "<x>").is_err());
        }
        assert_eq!(
            search_message_id_argv("u@x", "<a@b>").unwrap()[6..],
            ["header", "Message-ID", "<a@b>"]
        );
    }
}
