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

use std::collections::BTreeSet;

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
