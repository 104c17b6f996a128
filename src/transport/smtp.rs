//! A small SMTP client over any tokio stream: a TCP connection, or `sendmail -bs` run on the
//! active node over SSH (its stdin/stdout joined with `tokio::io::join`). One session carries
//! every re-injected message: greeting, EHLO (HELO fallback), then per message `MAIL FROM`,
//! `RCPT TO`, `DATA` (pipelined when the server offers PIPELINING), `RSET` after a refused
//! transaction, `QUIT` at the end.
//!
//! `DATA` content is normalised: bare LF becomes CRLF, a line starting with `.` gets one more
//! `.` (RFC 5321 §4.5.2), and the content always ends with CRLF before the final `.`.
//!
//! Addresses are refused locally when they hold CR, LF, `<` or `>`: they could smuggle a
//! second SMTP command. Such a message is reported rejected without reaching the server.

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Longest reply line accepted (RFC 5321 says 512; servers add text).
const MAX_LINE: usize = 64 * 1024;
/// Most lines in one multi-line reply.
const MAX_LINES: usize = 1000;

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line, without the code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// The reply as one line of text, for reports.
    pub fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" / "))
    }
}

/// The session failed (not one message: the connection).
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// Reading or writing the stream failed.
    #[error("SMTP stream: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the stream.
    #[error("SMTP server closed the connection{0}")]
    Closed(String),
    /// The server said something that is not an SMTP reply.
    #[error("SMTP protocol error: {0}")]
    Protocol(String),
    /// No reply in time.
    #[error("SMTP server did not answer within {0:?}")]
    Timeout(Duration),
    /// The greeting or EHLO/HELO was refused.
    #[error("SMTP server refused the session: {}", .0.text())]
    Refused(Reply),
}

/// One message to send.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Envelope sender; empty for the null sender `<>`.
    pub sender: &'a str,
    /// Envelope recipients.
    pub recipients: &'a [String],
    /// Headers and body, LF or CRLF line ends.
    pub content: &'a [u8],
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The final `.` was answered 2xx: the server queued it.
    Accepted {
        /// The reply to the final `.` (holds the queue id with Postfix).
        reply: Reply,
        /// Recipients refused while the message went to the others.
        refused: Vec<(String, Reply)>,
    },
    /// The transaction did not complete; the server did not take the message.
    Rejected {
        /// `mail`, `rcpt`, `data`, `content` or `local` (refused before sending).
        stage: String,
        /// The reply (or a local explanation with code 0).
        reply: Reply,
    },
}

/// A client session.
pub struct Client<S> {
    io: BufReader<S>,
    timeout: Duration,
    pipelining: bool,
    eight_bit: bool,
    smtputf8: bool,
    /// The EHLO reply (capabilities).
    pub ehlo: Reply,
}

fn bad_address(a: &str) -> bool {
    a.bytes()
        .any(|b| matches!(b, b'\r' | b'\n' | b'<' | b'>' | 0))
}

/// The DATA payload: CRLF line ends, dot-stuffed, terminated by `.CRLF`.
pub fn encode_data(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 40 + 8);
    let mut at_line_start = true;
    let mut prev = 0u8;
    for &b in content {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        at_line_start = b == b'\n';
        prev = b;
    }
    if !content.is_empty() && !at_line_start {
        if prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b'\n');
    }
    out.extend_from_slice(b".\r\n");
    out
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Reads the greeting and says EHLO (HELO when EHLO is refused).
    pub async fn start(stream: S, helo_name: &str, timeout: Duration) -> Result<Self, SmtpError> {
        Self::start_as(stream, helo_name, timeout, false).await
    }

    /// The same session over LMTP (RFC 2033): `LHLO`, no HELO fallback. With one recipient
    /// per message (how `drill` delivers), the reply to the final `.` is that recipient's.
    pub async fn start_lmtp(
        stream: S,
        helo_name: &str,
        timeout: Duration,
    ) -> Result<Self, SmtpError> {
        Self::start_as(stream, helo_name, timeout, true).await
    }

    async fn start_as(
        stream: S,
        helo_name: &str,
        timeout: Duration,
        lmtp: bool,
    ) -> Result<Self, SmtpError> {
        let mut c = Client {
            io: BufReader::new(stream),
            timeout,
            pipelining: false,
            eight_bit: false,
            smtputf8: false,
            ehlo: Reply {
                code: 0,
                lines: Vec::new(),
            },
        };
        let greeting = c.reply().await?;
        if greeting.code != 220 {
            return Err(SmtpError::Refused(greeting));
        }
        let hello = if lmtp { "LHLO" } else { "EHLO" };
        let mut ehlo = c.command(&format!("{hello} {helo_name}")).await?;
        if !ehlo.is_positive() && lmtp {
            return Err(SmtpError::Refused(ehlo));
        }
        if !ehlo.is_positive() {
            ehlo = c.command(&format!("HELO {helo_name}")).await?;
            if !ehlo.is_positive() {
                return Err(SmtpError::Refused(ehlo));
            }
        } else {
            for l in ehlo.lines.iter().skip(1) {
                let kw = l
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                match kw.as_str() {
                    "PIPELINING" => c.pipelining = true,
                    "8BITMIME" => c.eight_bit = true,
                    "SMTPUTF8" => c.smtputf8 = true,
                    _ => {}
                }
            }
        }
        c.ehlo = ehlo;
        Ok(c)
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), SmtpError> {
        let w = self.io.get_mut();
        w.write_all(bytes).await?;
        w.flush().await?;
        Ok(())
    }

    async fn command(&mut self, line: &str) -> Result<Reply, SmtpError> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn reply(&mut self) -> Result<Reply, SmtpError> {
        let t = self.timeout;
        match tokio::time::timeout(t, self.reply_inner()).await {
            Ok(r) => r,
            Err(_) => Err(SmtpError::Timeout(t)),
        }
    }

    async fn reply_inner(&mut self) -> Result<Reply, SmtpError> {
        let mut lines = Vec::new();
        let mut code = None;
        loop {
            let mut buf = Vec::new();
            let n = AsyncReadExt::take(&mut self.io, MAX_LINE as u64)
                .read_until(b'\n', &mut buf)
                .await?;
            if n == 0 {
                let so_far = if lines.is_empty() {
                    String::new()
                } else {
                    format!(" after `{}`", lines.join(" / "))
                };
                return Err(SmtpError::Closed(so_far));
            }
            if buf.last() != Some(&b'\n') {
                return Err(SmtpError::Protocol("reply line too long".into()));
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\r', '\n']);
            // any bytes may come from a remote host: split on a character boundary only
            let (digits, rest) = match (line.get(..3), line.get(3..)) {
                (Some(d), Some(r)) => (d, r),
                _ => (line, ""),
            };
            let c: u16 = match digits.parse() {
                Ok(c) if digits.len() == 3 && (200..600).contains(&c) => c,
                _ => return Err(SmtpError::Protocol(format!("not a reply: `{line}`"))),
            };
            if code.is_some_and(|k| k != c) {
                return Err(SmtpError::Protocol(format!(
                    "reply code changed inside a multi-line reply: `{line}`"
                )));
            }
            code = Some(c);
            let (more, text) = match rest.as_bytes().first() {
                Some(b'-') => (true, &rest[1..]),
                Some(b' ') => (false, &rest[1..]),
                None => (false, ""),
                _ => return Err(SmtpError::Protocol(format!("not a reply: `{line}`"))),
            };
            lines.push(text.to_owned());
            if !more {
                return Ok(Reply { code: c, lines });
            }
            if lines.len() >= MAX_LINES {
                return Err(SmtpError::Protocol("reply has too many lines".into()));
            }
        }
    }

    /// Sends one message. `Err` only when the session itself broke; a refused message is an
    /// `Ok(Outcome::Rejected)` and the session is reset (`RSET`) for the next one.
    pub async fn send(&mut self, m: Message<'_>) -> Result<Outcome, SmtpError> {
        let local = |why: &str| Outcome::Rejected {
            stage: "local".into(),
            reply: Reply {
                code: 0,
                lines: vec![why.to_owned()],
            },
        };
        if bad_address(m.sender) || m.recipients.iter().any(|r| bad_address(r) || r.is_empty()) {
            return Ok(local(
                "an address holds CR, LF, NUL, `<` or `>`; not sent (it would be another command)",
            ));
        }
        if m.recipients.is_empty() {
            return Ok(local("no recipient"));
        }
        let non_ascii_addr = !m.sender.is_ascii() || m.recipients.iter().any(|r| !r.is_ascii());
        if non_ascii_addr && !self.smtputf8 {
            return Ok(local(
                "an address is not ASCII and the server does not offer SMTPUTF8",
            ));
        }
        let mut mail = format!("MAIL FROM:<{}>", m.sender);
        if self.eight_bit && !m.content.is_ascii() {
            mail.push_str(" BODY=8BITMIME");
        }
        if non_ascii_addr {
            mail.push_str(" SMTPUTF8");
        }
        let rcpts: Vec<String> = m
            .recipients
            .iter()
            .map(|r| format!("RCPT TO:<{r}>"))
            .collect();
        let (mail_reply, rcpt_replies, data_reply) = if self.pipelining {
            let mut batch = format!("{mail}\r\n");
            for r in &rcpts {
                batch.push_str(r);
                batch.push_str("\r\n");
            }
            batch.push_str("DATA\r\n");
            self.write(batch.as_bytes()).await?;
            let mr = self.reply().await?;
            let mut rr = Vec::new();
            for _ in &rcpts {
                rr.push(self.reply().await?);
            }
            let dr = self.reply().await?;
            (mr, rr, Some(dr))
        } else {
            let mr = self.command(&mail).await?;
            let mut rr = Vec::new();
            if mr.is_positive() {
                for r in &rcpts {
                    rr.push(self.command(r).await?);
                }
            }
            let dr = if mr.is_positive() && rr.iter().any(Reply::is_positive) {
                Some(self.command("DATA").await?)
            } else {
                None
            };
            (mr, rr, dr)
        };
        let refused: Vec<(String, Reply)> = m
            .recipients
            .iter()
            .zip(&rcpt_replies)
            .filter(|(_, r)| !r.is_positive())
            .map(|(a, r)| (a.clone(), r.clone()))
            .collect();
        let rejected = |stage: &str, reply: Reply| Outcome::Rejected {
            stage: stage.into(),
            reply,
        };
        let outcome = if !mail_reply.is_positive() {
            Some(rejected("mail", mail_reply))
        } else if refused.len() == m.recipients.len() {
            Some(rejected("rcpt", refused[0].1.clone()))
        } else {
            None
        };
        match (outcome, data_reply) {
            (Some(o), Some(d)) if d.code == 354 => {
                // a server that accepted DATA without recipients: end it empty, then reset
                self.write(b".\r\n").await?;
                let _ = self.reply().await?;
                self.command("RSET").await?;
                Ok(o)
            }
            (Some(o), _) => {
                self.command("RSET").await?;
                Ok(o)
            }
            (None, Some(d)) if d.code == 354 => {
                self.write(&encode_data(m.content)).await?;
                let end = self.reply().await?;
                if end.is_positive() {
                    Ok(Outcome::Accepted {
                        reply: end,
                        refused,
                    })
                } else {
                    self.command("RSET").await?;
                    Ok(rejected("content", end))
                }
            }
            (None, d) => {
                self.command("RSET").await?;
                Ok(rejected(
                    "data",
                    d.unwrap_or(Reply {
                        code: 0,
                        lines: vec!["DATA not sent".into()],
                    }),
                ))
            }
        }
    }

    /// `QUIT`, then the stream is dropped.
    pub async fn quit(mut self) -> Result<Reply, SmtpError> {
        self.command("QUIT").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[test]
    fn data_is_crlf_and_dot_stuffed() {
        assert_eq!(
            encode_data(b"a\n.b\n..c\r\n.\nend"),
            b"a\r\n..b\r\n...c\r\n..\r\nend\r\n.\r\n"
        );
        assert_eq!(encode_data(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(encode_data(b""), b".\r\n");
        assert_eq!(encode_data(b"x\r"), b"x\r\n.\r\n");
    }

    /// A scripted server: for each line the client sends, checks it and answers.
    async fn serve(mut s: tokio::io::DuplexStream, greeting: &str, ehlo: &str) -> Vec<u8> {
        s.write_all(greeting.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65536];
        let mut pending = Vec::new();
        let mut in_data = false;
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return seen;
            }
            seen.extend_from_slice(&buf[..n]);
            pending.extend_from_slice(&buf[..n]);
            while let Some(pos) = pending.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = pending.drain(..pos + 2).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
                let answer: String = if in_data {
                    if line == "." {
                        in_data = false;
                        "250 2.0.0 Ok: queued as ABC\r\n".into()
                    } else {
                        continue;
                    }
                } else if line.starts_with("EHLO") {
                    ehlo.into()
                } else if line.starts_with("MAIL FROM:<bad@") {
                    "553 5.7.1 sender refused\r\n".into()
                } else if line.starts_with("MAIL") {
                    "250 2.1.0 Ok\r\n".into()
                } else if line.starts_with("RCPT TO:<nobody") {
                    "550-5.1.1 no such\r\n550 5.1.1 user\r\n".into()
                } else if line.starts_with("RCPT") {
                    "250 2.1.5 Ok\r\n".into()
                } else if line == "DATA" {
                    in_data = true;
                    "354 go\r\n".into()
                } else if line == "RSET" {
                    in_data = false;
                    "250 2.0.0 Ok\r\n".into()
                } else if line == "QUIT" {
                    s.write_all(b"221 Bye\r\n").await.unwrap();
                    return seen;
                } else {
                    "500 what\r\n".into()
                };
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        }
    }

    async fn session(ehlo: &'static str) -> (Vec<Outcome>, String) {
        let (a, b) = duplex(1 << 20);
        let server = tokio::spawn(serve(b, "220-hello\r\n220 there\r\n", ehlo));
        let mut c = Client::start(a, "sk.test", Duration::from_secs(30))
            .await
            .unwrap();
        let one = ["x@students.lab".to_string()];
        let mixed = [
            "nobody@students.lab".to_string(),
            "y@students.lab".to_string(),
        ];
        let none = ["nobody@students.lab".to_string()];
        let evil = ["a@b>\r\nRCPT TO:<c@d".to_string()];
        let mut out = Vec::new();
        for (sender, rcpts, body) in [
            ("", &one[..], &b"Subject: a\n\n.dot\nbody"[..]),
            ("bad@x", &one[..], &b"x\n"[..]),
            ("s@x", &mixed[..], &b"y\n"[..]),
            ("s@x", &none[..], &b"z\n"[..]),
            ("s@x", &evil[..], &b"e\n"[..]),
        ] {
            out.push(
                c.send(Message {
                    sender,
                    recipients: rcpts,
                    content: body,
                })
                .await
                .unwrap(),
            );
        }
        assert_eq!(c.quit().await.unwrap().code, 221);
        let seen = server.await.unwrap();
        (out, String::from_utf8(seen).unwrap())
    }

    fn status(o: &Outcome) -> String {
        match o {
            Outcome::Accepted { refused, .. } => format!("accepted-{}", refused.len()),
            Outcome::Rejected { stage, reply } => format!("{stage}-{}", reply.code),
        }
    }

    #[tokio::test]
    async fn lockstep_and_pipelined_sessions_agree() {
        for ehlo in [
            "250-sk\r\n250 8BITMIME\r\n",
            "250-sk\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
        ] {
            let (out, seen) = session(ehlo).await;
            let st: Vec<String> = out.iter().map(status).collect();
            assert_eq!(
                st,
                [
                    "accepted-0",
                    "mail-553",
                    "accepted-1",
                    "rcpt-550",
                    "local-0"
                ],
                "{ehlo}"
            );
            assert!(seen.contains("MAIL FROM:<>\r\n"), "{seen}");
            assert!(
                seen.contains("Subject: a\r\n\r\n..dot\r\nbody\r\n.\r\n"),
                "{seen}"
            );
            assert!(
                !seen.contains("RCPT TO:<c@d"),
                "injection reached the server"
            );
            // a refused transaction is reset before the next one
            assert_eq!(seen.matches("RSET\r\n").count(), 2, "{seen}");
            if let Outcome::Rejected { reply, .. } = &out[3] {
                assert_eq!(reply.lines, ["5.1.1 no such", "5.1.1 user"]);
            }
        }
    }

    #[tokio::test]
    async fn bad_replies_and_eof_are_errors() {
        // the last ones are not UTF-8: a byte that splits a replacement character at byte 3
        // (it panicked before), a non-UTF-8 greeting text
        let scripts: [&[u8]; 6] = [
            b"hello\r\n",
            b"220-a\r\n250 b\r\n",
            b"22",
            b"22\xff\r\n",
            b"2\xc3\xa9\r\n",
            b"220\xff\xfe\r\n",
        ];
        for script in scripts {
            let (a, mut b) = duplex(1024);
            b.write_all(script).await.unwrap();
            drop(b);
            assert!(
                Client::start(a, "x", Duration::from_secs(5)).await.is_err(),
                "{script:?}"
            );
        }
        let (a, mut b) = duplex(1024);
        b.write_all(b"554 go away\r\n").await.unwrap();
        assert!(matches!(
            Client::start(a, "x", Duration::from_secs(5)).await,
            Err(SmtpError::Refused(_))
        ));
    }
}

/// Against the real Postfix of this machine: `sendmail -bs` run as the mail owner inside a
/// private mount+network namespace (`tests/fixtures/postfix/postcat-sandbox.sh`, archive-host
/// settings: everything for `@archive.lab` goes on HOLD), then the held queue dumped with
/// `postcat -d -o -q` and parsed by `postfix_cmd`: bytes must match.
#[cfg(test)]
mod real_postfix {
    use super::*;
    use crate::adapters::postfix_cmd::parse_postcat;
    use std::process::Stdio;

    #[tokio::test]
    #[ignore = "needs root, unshare(1), setpriv(1) and Postfix; run: cargo test -- --ignored real_postfix"]
    async fn sendmail_bs_queues_exact_bytes() {
        let sandbox = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/postfix/postcat-sandbox.sh"
        );
        let out = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new("unshare")
            .args(["--mount", "--net", "--propagation", "private", sandbox])
            .arg(out.path())
            .args([
                "setpriv",
                "--reuid=postfix",
                "--regid=postfix",
                "--init-groups",
            ])
            .args(["sendmail", "-bs"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stream = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
        let mut c = Client::start(stream, "sk-test", Duration::from_secs(60))
            .await
            .unwrap();
        let long = "y".repeat(3000);
        let bodies: Vec<(String, Vec<String>, Vec<u8>)> = vec![
            (
                String::new(),
                vec!["nul=students.lab@archive.lab".into()],
                b"Subject: null\nMessage-ID: <r1@t>\n\nbounce\n".to_vec(),
            ),
            (
                "a@students.lab".into(),
                vec![
                    "x.y=students.lab@archive.lab".into(),
                    "Z+t=staff.lab@archive.lab".into(),
                ],
                format!(
                    "Subject: dots\r\nMessage-ID: <r2@t>\r\n\r\n.one\r\n.\r\n..two\r\n{long}\r\ncaf\u{e9}\r\nend"
                )
                .into_bytes(),
            ),
            (
                "b@staff.lab".into(),
                vec!["nobody@elsewhere.test".into()],
                b"Subject: refused\n\nx\n".to_vec(),
            ),
        ];
        let mut queued = Vec::new();
        for (s, r, b) in &bodies {
            let o = c
                .send(Message {
                    sender: s,
                    recipients: r,
                    content: b,
                })
                .await
                .unwrap();
            queued.push(o);
        }
        c.quit().await.unwrap();
        assert!(child.wait().await.unwrap().success());
        let ids: Vec<String> = queued[..2]
            .iter()
            .map(|o| match o {
                Outcome::Accepted { reply, .. } => {
                    reply.lines[0].rsplit(' ').next().unwrap().to_owned()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(
            matches!(&queued[2], Outcome::Rejected { stage, .. } if stage == "rcpt"),
            "{:?}",
            queued[2]
        );
        let dump = std::fs::read(out.path().join("postcat-hold.txt")).unwrap();
        let dump = parse_postcat(&dump).unwrap();
        assert_eq!(dump.messages.len(), 2);
        for ((s, r, b), id) in bodies.iter().zip(&ids) {
            let m = dump.messages.iter().find(|m| &m.queue_id == id).unwrap();
            assert_eq!(&m.sender, s);
            assert_eq!(&m.recipients, r);
            // smtpd prepends its Received header; the rest is ours, LF-normalised
            let mut want: Vec<u8> = String::from_utf8(b.clone())
                .unwrap()
                .replace("\r\n", "\n")
                .into_bytes();
            if !want.ends_with(b"\n") {
                want.push(b'\n');
            }
            assert!(m.content.starts_with(b"Received: "));
            let pos = m
                .content
                .windows(9)
                .position(|w| w == b"Subject: ")
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&m.content[pos..]),
                String::from_utf8_lossy(&want)
            );
        }
    }
}
