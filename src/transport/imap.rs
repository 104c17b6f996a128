//! A small IMAP4rev1 client over any tokio stream, for `drill`'s probes: greeting, `LOGIN`,
//! `LIST "" "*"`, `EXAMINE` (read-only: a probe never changes a flag), `FETCH 1:*
//! (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])`, `LOGOUT`. Literals (`{n}` + CRLF + n bytes) are
//! read wherever the server sends them (mailbox names, header fields).
//!
//! Strings the client sends are quoted; a user name, password or mailbox name holding CR, LF
//! or NUL is refused locally (it could smuggle a second command).

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Longest line or literal accepted.
const MAX: usize = 16 * 1024 * 1024;

/// What went wrong in a session.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("IMAP connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the server closed the connection")]
    Closed,
    #[error("the server said: {0}")]
    Refused(String),
    #[error("unexpected server output: {0}")]
    Protocol(String),
    #[error("`{0}` cannot be sent (control characters)")]
    BadString(String),
}

/// One response line with its literals inlined (each literal's bytes follow its `{n}`).
type Line = Vec<u8>;

/// A logged-in (or not yet) session.
pub struct Client<S> {
    io: BufReader<S>,
    tag: u32,
    timeout: Duration,
}

fn quote(s: &str) -> Result<String, ImapError> {
    if s.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(ImapError::BadString(s.to_owned()));
    }
    Ok(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Read the greeting (`* OK`).
    pub async fn start(stream: S, timeout: Duration) -> Result<Self, ImapError> {
        let mut c = Client {
            io: BufReader::new(stream),
            tag: 0,
            timeout,
        };
        let g = c.line().await?;
        if !g.starts_with(b"* OK") && !g.starts_with(b"* PREAUTH") {
            return Err(ImapError::Refused(String::from_utf8_lossy(&g).into_owned()));
        }
        Ok(c)
    }

    async fn line(&mut self) -> Result<Line, ImapError> {
        let t = self.timeout;
        match tokio::time::timeout(t, self.line_inner()).await {
            Ok(r) => r,
            Err(_) => Err(ImapError::Timeout(t)),
        }
    }

    async fn line_inner(&mut self) -> Result<Line, ImapError> {
        let mut out = Vec::new();
        loop {
            let mut part = Vec::new();
            let n = (&mut self.io)
                .take(MAX as u64)
                .read_until(b'\n', &mut part)
                .await?;
            if n == 0 {
                return Err(ImapError::Closed);
            }
            while part.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                part.pop();
            }
            out.extend_from_slice(&part);
            if out.len() > MAX {
                return Err(ImapError::Protocol("a response line too long".into()));
            }
            // a literal announced at the end of the line: read its bytes, then the rest
            match literal_len(&part) {
                Some(len) if len <= MAX => {
                    let mut lit = vec![0u8; len];
                    self.io.read_exact(&mut lit).await?;
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&lit);
                }
                Some(_) => return Err(ImapError::Protocol("a literal too long".into())),
                None => return Ok(out),
            }
        }
    }

    /// Send a command; return its untagged lines once the tagged OK comes.
    async fn command(&mut self, cmd: &str) -> Result<Vec<Line>, ImapError> {
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        let w = self.io.get_mut();
        w.write_all(format!("{tag} {cmd}\r\n").as_bytes()).await?;
        w.flush().await?;
        let mut untagged = Vec::new();
        loop {
            let l = self.line().await?;
            if l.starts_with(tag.as_bytes()) && l.get(tag.len()) == Some(&b' ') {
                let status = String::from_utf8_lossy(&l[tag.len() + 1..]).into_owned();
                if status.starts_with("OK") {
                    return Ok(untagged);
                }
                return Err(ImapError::Refused(status));
            }
            untagged.push(l);
        }
    }

    /// `LOGIN user password`.
    pub async fn login(&mut self, user: &str, password: &str) -> Result<(), ImapError> {
        let cmd = format!("LOGIN {} {}", quote(user)?, quote(password)?);
        self.command(&cmd).await.map(|_| ())
    }

    /// Every selectable folder.
    pub async fn folders(&mut self) -> Result<Vec<String>, ImapError> {
        let lines = self.command("LIST \"\" \"*\"").await?;
        let mut v = Vec::new();
        for l in lines {
            if let Some((flags, name)) = parse_list(&l)
                && !flags.to_ascii_lowercase().contains("\\noselect")
            {
                v.push(name);
            }
        }
        Ok(v)
    }

    /// The Message-IDs of one folder (read-only), messages without one left out.
    pub async fn message_ids(&mut self, folder: &str) -> Result<Vec<String>, ImapError> {
        let ex = self.command(&format!("EXAMINE {}", quote(folder)?)).await?;
        let exists = ex
            .iter()
            .filter_map(|l| {
                let s = String::from_utf8_lossy(l);
                let rest = s.strip_prefix("* ")?;
                let (n, what) = rest.split_once(' ')?;
                (what.trim() == "EXISTS").then(|| n.parse::<u64>().ok())?
            })
            .next_back()
            .unwrap_or(0);
        if exists == 0 {
            return Ok(Vec::new());
        }
        let lines = self
            .command("FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            .await?;
        Ok(lines
            .iter()
            .filter(|l| l.windows(5).any(|w| w == b"FETCH"))
            .filter_map(|l| header_message_id(l))
            .collect())
    }

    /// Every Message-ID of every folder.
    pub async fn all_message_ids(&mut self) -> Result<BTreeSet<String>, ImapError> {
        let mut all = BTreeSet::new();
        for f in self.folders().await? {
            all.extend(self.message_ids(&f).await?);
        }
        Ok(all)
    }

    /// `LOGOUT`; the server's BYE is not an error.
    pub async fn logout(mut self) -> Result<(), ImapError> {
        match self.command("LOGOUT").await {
            Ok(_) | Err(ImapError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// `{123}` or `{123+}` at the end of a line.
fn literal_len(part: &[u8]) -> Option<usize> {
    let s = std::str::from_utf8(part).ok()?;
    let s = s.strip_suffix('}')?;
    let open = s.rfind('{')?;
    s[open + 1..].trim_end_matches('+').parse().ok()
}

/// `* LIST (flags) "sep" name` → (flags, name), the name quoted, an atom or a literal.
fn parse_list(l: &[u8]) -> Option<(String, String)> {
    let s = String::from_utf8_lossy(l).into_owned();
    let rest = s.strip_prefix("* LIST (")?;
    let (flags, rest) = rest.split_once(')')?;
    let rest = rest.trim_start();
    // the separator: NIL or a quoted char
    let rest = if let Some(r) = rest.strip_prefix("NIL") {
        r
    } else {
        let r = rest.strip_prefix('"')?;
        let end = if r.starts_with('\\') { 2 } else { 1 };
        r.get(end + 1..)?
    };
    let name = rest.trim_start();
    let name = if let Some(q) = name.strip_prefix('"') {
        let mut out = String::new();
        let mut esc = false;
        for c in q.chars() {
            match (esc, c) {
                (false, '\\') => esc = true,
                (false, '"') => break,
                (_, c) => {
                    out.push(c);
                    esc = false;
                }
            }
        }
        out
    } else if name.starts_with('{') {
        name.split_once("\r\n")?.1.to_owned()
    } else {
        name.to_owned()
    };
    Some((flags.to_owned(), name))
}

/// The Message-ID in a FETCH line's header literal (unfolded), if any.
fn header_message_id(l: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(l);
    let (_, lit) = s.split_once("\r\n")?;
    let mut value: Option<String> = None;
    for line in lit.split("\r\n") {
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("message-id")
        {
            value = Some(v.trim().to_owned());
        }
    }
    value.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_list_lines() {
        assert_eq!(
            literal_len(b"* 1 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID)] {42}"),
            Some(42)
        );
        assert_eq!(literal_len(b"a1 OK done"), None);
        assert_eq!(
            parse_list(b"* LIST (\\HasNoChildren) \".\" INBOX"),
            Some(("\\HasNoChildren".into(), "INBOX".into()))
        );
        assert_eq!(
            parse_list(b"* LIST (\\HasNoChildren) \"/\" \"Restored/a \\\"b\\\"\""),
            Some(("\\HasNoChildren".into(), "Restored/a \"b\"".into()))
        );
        assert_eq!(
            parse_list(b"* LIST () NIL {3}\r\nx y"),
            Some(("".into(), "x y".into()))
        );
        assert_eq!(
            header_message_id(b"* 1 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID)] {28}\r\nMessage-ID:\r\n <a@b>\r\n\r\n)"),
            Some("<a@b>".into())
        );
        assert!(quote("a\r\nb LOGOUT").is_err());
        assert_eq!(quote("p\"w\\").unwrap(), "\"p\\\"w\\\\\"");
    }

    /// A scripted server over an in-memory pipe: login, list, examine, fetch with literals.
    #[tokio::test]
    async fn a_session_reads_every_folder_through_literals() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let srv = tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
            let (r, mut w) = tokio::io::split(&mut server);
            let mut r = BufReader::new(r);
            w.write_all(b"* OK ready\r\n").await.unwrap();
            let mut line = String::new();
            let mut seen = Vec::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap() == 0 {
                    break;
                }
                let (tag, cmd) = line.trim_end().split_once(' ').unwrap();
                seen.push(cmd.to_owned());
                let reply: String = if cmd.starts_with("LOGIN") {
                    format!("{tag} OK in\r\n")
                } else if cmd.starts_with("LIST") {
                    format!(
                        "* LIST (\\Noselect) \".\" \"\"\r\n* LIST () \".\" INBOX\r\n* LIST () \".\" {{4}}\r\nWork\r\n{tag} OK\r\n"
                    )
                } else if cmd == "EXAMINE \"INBOX\"" {
                    format!("* 2 EXISTS\r\n{tag} OK\r\n")
                } else if cmd == "EXAMINE \"Work\"" {
                    format!("* 0 EXISTS\r\n{tag} OK\r\n")
                } else if cmd.starts_with("FETCH") {
                    let h1 = "Message-ID: <1@x>\r\n\r\n";
                    let h2 = "Subject: none\r\n\r\n";
                    format!(
                        "* 1 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID)] {{{}}}\r\n{h1})\r\n* 2 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID)] {{{}}}\r\n{h2})\r\n{tag} OK\r\n",
                        h1.len(),
                        h2.len()
                    )
                } else {
                    format!("* BYE\r\n{tag} OK\r\n")
                };
                w.write_all(reply.as_bytes()).await.unwrap();
            }
            seen
        });
        let mut c = Client::start(client, Duration::from_secs(5)).await.unwrap();
        c.login("alice@x", "pw").await.unwrap();
        let ids = c.all_message_ids().await.unwrap();
        assert_eq!(ids, ["<1@x>".to_string()].into());
        c.logout().await.unwrap();
        let seen = srv.await.unwrap();
        assert_eq!(seen[0], "LOGIN \"alice@x\" \"pw\"");
        assert!(seen.contains(&"EXAMINE \"Work\"".to_string()), "{seen:?}");
        assert!(!seen.iter().any(|c| c.starts_with("SELECT")), "read-only");
    }
}
