//! `lab imap`: a minimal IMAP4rev1 client over plain TCP (the lab has no TLS).
//!
//! LOGIN, LIST every folder, EXAMINE each (read-only SELECT: flags stay as they are), FETCH the
//! Message-ID header of every message.

use super::{Error, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One server response line; a literal `{N}` stays in `line` and its bytes go to `literals`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Response {
    pub line: String,
    pub literals: Vec<Vec<u8>>,
}

/// Largest literal accepted (a header field list is tiny; this bounds memory on bad input).
const MAX_LITERAL: usize = 16 * 1024 * 1024;

/// Reads one response, following literals.
pub fn read_response(r: &mut impl BufRead) -> std::io::Result<Response> {
    let mut resp = Response::default();
    loop {
        let mut raw = Vec::new();
        if r.read_until(b'\n', &mut raw)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by the IMAP server",
            ));
        }
        while matches!(raw.last(), Some(b'\n' | b'\r')) {
            raw.pop();
        }
        let part = String::from_utf8_lossy(&raw).into_owned();
        let literal_len = trailing_literal(&part);
        resp.line.push_str(&part);
        match literal_len {
            Some(n) if n <= MAX_LITERAL => {
                let mut buf = vec![0u8; n];
                r.read_exact(&mut buf)?;
                resp.literals.push(buf);
            }
            Some(n) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("literal of {n} bytes is too large"),
                ));
            }
            None => return Ok(resp),
        }
    }
}

/// `{N}` (or `{N+}`) at the end of a line announces N bytes of literal.
fn trailing_literal(line: &str) -> Option<usize> {
    let body = line.strip_suffix('}')?;
    let open = body.rfind('{')?;
    body[open + 1..].trim_end_matches('+').parse().ok()
}

/// An IMAP quoted string (CR and LF cannot be quoted).
pub fn quote(s: &str) -> Result<String> {
    if s.contains(['\r', '\n']) {
        return Err(Error::new(format!(
            "{s:?} cannot be sent as an IMAP quoted string"
        )));
    }
    Ok(format!(
        "\"{}\"",
        s.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// A folder from a LIST response: its name and whether it can be selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    pub name: String,
    pub selectable: bool,
}

/// Parses `* LIST (flags) delim name`; the name may be an atom, a quoted string or a literal.
pub fn parse_list(resp: &Response) -> Option<Folder> {
    let rest = resp.line.strip_prefix("* LIST ")?;
    let rest = rest.strip_prefix('(')?;
    let close = rest.find(')')?;
    let flags = &rest[..close];
    let rest = rest[close + 1..].trim_start();
    // delimiter: "x" or NIL
    let rest = if let Some(r) = rest.strip_prefix("NIL") {
        r
    } else {
        let r = rest.strip_prefix('"')?;
        let r = r.strip_prefix('\\').unwrap_or(r);
        let mut chars = r.chars();
        chars.next()?;
        chars.as_str().strip_prefix('"')?
    };
    let name_text = rest.trim_start();
    let name = if trailing_literal(name_text).is_some() && name_text.starts_with('{') {
        String::from_utf8_lossy(resp.literals.first()?).into_owned()
    } else if let Some(q) = name_text.strip_prefix('"') {
        unquote(q)?
    } else {
        name_text.to_string()
    };
    let selectable = !flags
        .split_whitespace()
        .any(|f| f.eq_ignore_ascii_case("\\Noselect") || f.eq_ignore_ascii_case("\\NonExistent"));
    Some(Folder { name, selectable })
}

/// The rest of a quoted string after its opening quote, unescaped.
fn unquote(q: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = q.chars();
    loop {
        match chars.next()? {
            '\\' => out.push(chars.next()?),
            '"' => return Some(out),
            c => out.push(c),
        }
    }
}

/// The value of the Message-ID field in a header block (unfolded, trimmed).
pub fn message_id_from_header(header: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(header);
    let mut fields: Vec<String> = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else if !line.is_empty() {
            fields.push(line.to_string());
        }
    }
    fields.iter().find_map(|f| {
        let (name, value) = f.split_once(':')?;
        let value = value.trim();
        (name.trim().eq_ignore_ascii_case("message-id") && !value.is_empty())
            .then(|| value.to_string())
    })
}

/// `* N EXISTS`
fn parse_exists(line: &str) -> Option<u32> {
    let rest = line.strip_prefix("* ")?;
    let (n, word) = rest.split_once(' ')?;
    word.trim()
        .eq_ignore_ascii_case("EXISTS")
        .then(|| n.parse().ok())?
}

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    tag: u32,
}

impl Client {
    fn connect(addr: SocketAddr, timeout: Duration) -> Result<Client> {
        let io = |e: std::io::Error| Error::new(format!("IMAP {addr}: {e}"));
        let stream =
            TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(5))).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut c = Client {
            reader: BufReader::new(stream),
            writer,
            tag: 0,
        };
        let greeting = read_response(&mut c.reader).map_err(io)?;
        if !greeting.line.starts_with("* OK") {
            return Err(Error::new(format!(
                "IMAP {addr}: unexpected greeting '{}'",
                greeting.line
            )));
        }
        Ok(c)
    }

    /// Sends one command; returns the untagged responses once the tagged OK arrives.
    fn command(&mut self, cmd: &str, shown: &str) -> Result<Vec<Response>> {
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        let io = |e: std::io::Error| Error::new(format!("IMAP {shown}: {e}"));
        self.writer
            .write_all(format!("{tag} {cmd}\r\n").as_bytes())
            .map_err(io)?;
        let mut out = Vec::new();
        loop {
            let resp = read_response(&mut self.reader).map_err(io)?;
            if let Some(status) = resp.line.strip_prefix(&format!("{tag} ")) {
                if status.starts_with("OK") {
                    return Ok(out);
                }
                return Err(Error::new(format!("IMAP {shown}: {status}")));
            }
            out.push(resp);
        }
    }
}

/// Logs in as `user` and returns the Message-ID of every message of every folder.
pub fn message_ids(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Result<Vec<String>> {
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|e| Error::new(format!("bad IMAP address {host}:{port}: {e}")))?;
    let mut c = Client::connect(addr, timeout)?;
    c.command(
        &format!("LOGIN {} {}", quote(user)?, quote(password)?),
        "LOGIN",
    )?;
    let folders: Vec<Folder> = c
        .command("LIST \"\" \"*\"", "LIST")?
        .iter()
        .filter_map(parse_list)
        .filter(|f| f.selectable)
        .collect();
    let mut ids = Vec::new();
    for folder in folders {
        let selected = c.command(&format!("EXAMINE {}", quote(&folder.name)?), "EXAMINE")?;
        let exists = selected
            .iter()
            .find_map(|r| parse_exists(&r.line))
            .unwrap_or(0);
        if exists == 0 {
            continue;
        }
        let fetched = c.command("FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])", "FETCH")?;
        for resp in fetched.iter().filter(|r| r.line.contains(" FETCH ")) {
            match resp
                .literals
                .first()
                .and_then(|h| message_id_from_header(h))
            {
                Some(id) => ids.push(id),
                None => eprintln!(
                    "imap: a message in '{}' has no Message-ID ({})",
                    folder.name, resp.line
                ),
            }
        }
    }
    let _ = c.command("LOGOUT", "LOGOUT");
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_responses() {
        let mut r = "* 1 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID)] {21}\r\nMessage-ID: <a@b>\r\n\r\n)\r\na3 OK done\r\n"
            .as_bytes();
        let resp = read_response(&mut r).unwrap();
        assert_eq!(resp.literals, vec![b"Message-ID: <a@b>\r\n\r\n".to_vec()]);
        assert!(resp.line.ends_with(')'));
        assert_eq!(read_response(&mut r).unwrap().line, "a3 OK done");
        assert!(read_response(&mut r).is_err());
    }

    #[test]
    fn truncated_literal_is_an_error() {
        assert!(read_response(&mut "* 1 FETCH (BODY[] {100}\r\nshort".as_bytes()).is_err());
    }

    #[test]
    fn list_responses() {
        let line = |l: &str| Response {
            line: l.into(),
            literals: vec![],
        };
        assert_eq!(
            parse_list(&line("* LIST (\\HasNoChildren) \".\" INBOX")),
            Some(Folder {
                name: "INBOX".into(),
                selectable: true
            })
        );
        assert_eq!(
            parse_list(&line(
                "* LIST (\\HasNoChildren) \"/\" \"Sent \\\"Items\\\"\""
            )),
            Some(Folder {
                name: "Sent \"Items\"".into(),
                selectable: true
            })
        );
        assert_eq!(
            parse_list(&line("* LIST (\\Noselect \\HasChildren) NIL Archive")),
            Some(Folder {
                name: "Archive".into(),
                selectable: false
            })
        );
        let lit = Response {
            line: "* LIST () \".\" {5}".into(),
            literals: vec![b"a b c".to_vec()],
        };
        assert_eq!(
            parse_list(&lit),
            Some(Folder {
                name: "a b c".into(),
                selectable: true
            })
        );
        assert_eq!(parse_list(&line("* 3 EXISTS")), None);
        assert_eq!(parse_list(&line("* LIST (")), None);
    }

    #[test]
    fn header_parsing() {
        assert_eq!(
            message_id_from_header(b"Message-ID: <x@y>\r\n\r\n"),
            Some("<x@y>".into())
        );
        assert_eq!(
            message_id_from_header(b"message-id:\r\n <folded@y>\r\n\r\n"),
            Some("<folded@y>".into())
        );
        assert_eq!(message_id_from_header(b"\r\n"), None);
        assert_eq!(
            message_id_from_header(b"Subject: Message-ID: <no>\r\n"),
            None
        );
    }

    #[test]
    fn exists_and_quotes() {
        assert_eq!(parse_exists("* 20 EXISTS"), Some(20));
        assert_eq!(parse_exists("* 0 RECENT"), None);
        assert_eq!(quote("a\"b\\c").unwrap(), "\"a\\\"b\\\\c\"");
        assert!(quote("a\r\nb").is_err());
    }
}
