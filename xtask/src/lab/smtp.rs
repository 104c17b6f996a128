//! `lab send`: an SMTP client that behaves like an upstream MTA.
//!
//! A message that is not accepted (connection refused or broken, 4xx) is retried until its
//! deadline; a 5xx is a permanent rejection and stops the run. Each message gets a fresh
//! Message-ID, printed as soon as the server answered 250 to the end of DATA.

use super::{Error, Instance, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What `lab send` does.
#[derive(Debug, Clone)]
pub struct SendOptions {
    pub instance: Instance,
    pub to: String,
    pub from: String,
    pub count: u32,
    /// Messages per second; `None`: as fast as the server accepts them.
    pub rate: Option<f64>,
    /// How long one message is retried before the run fails.
    pub deadline: Duration,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// One SMTP reply: its code and its text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

/// Reads one (possibly multi-line) reply.
pub fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let bad = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad SMTP reply line '{line}'"),
            )
        };
        let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
        let sep = line.as_bytes().get(3).copied();
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(line.get(4..).unwrap_or(""));
        match sep {
            Some(b'-') => continue,
            None | Some(b' ') => return Ok(Reply { code, text }),
            Some(_) => return Err(bad()),
        }
    }
}

/// Dot-stuffs `body` for DATA and terminates it with `.` (lines end in CRLF).
pub fn dot_stuff(body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 8);
    for line in body.lines() {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str(".\r\n");
    out
}

/// A new Message-ID, unique across runs: 128 random bits from the kernel, uuid-shaped.
pub fn new_message_id() -> String {
    let mut b = [0u8; 16];
    let random = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if random.is_err() {
        // No /dev/urandom: time and pid still make it unique on this machine.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b[..12].copy_from_slice(&nanos.to_be_bytes()[4..]);
        b[12..].copy_from_slice(&std::process::id().to_be_bytes());
    }
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "<{}-{}-{}-{}-{}@lab.test>",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// RFC 5322 date of `t` in UTC, e.g. `Sat, 28 Nov 2026 18:20:00 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // civil_from_days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WD[days.rem_euclid(7) as usize],
        day,
        MON[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The message text (headers and body, LF line ends) for one message.
pub fn message_text(from: &str, to: &str, message_id: &str, n: u32, count: u32) -> String {
    format!(
        "From: <{from}>\nTo: <{to}>\nSubject: spoolkeeper lab message {n}/{count}\n\
         Date: {}\nMessage-ID: {message_id}\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=us-ascii\n\n\
         Lab message {n} of {count}, id {message_id}.\n",
        rfc5322_date(SystemTime::now())
    )
}

/// Outcome of one attempt to hand over one message.
enum Attempt {
    Accepted,
    /// Retry later (connection problem or 4xx); the connection is unusable.
    Temporary(String),
    Permanent(String),
}

struct Session {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Session {
    fn open(addr: SocketAddr) -> std::result::Result<Session, String> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let setup = |s: &TcpStream| -> std::io::Result<TcpStream> {
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            s.try_clone()
        };
        let writer = setup(&stream).map_err(|e| format!("socket {addr}: {e}"))?;
        let mut s = Session {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = read_reply(&mut s.reader).map_err(|e| format!("greeting: {e}"))?;
        if greeting.code != 220 {
            return Err(format!("greeting {} {}", greeting.code, greeting.text));
        }
        let ehlo = s
            .command("EHLO upstream.lab")
            .map_err(|e| format!("EHLO: {e}"))?;
        if ehlo.code != 250 {
            return Err(format!("EHLO: {} {}", ehlo.code, ehlo.text));
        }
        Ok(s)
    }

    fn command(&mut self, line: &str) -> std::io::Result<Reply> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        read_reply(&mut self.reader)
    }

    fn step(&mut self, what: &str, line: &str, expect: u16) -> std::result::Result<(), Attempt> {
        match self.command(line) {
            Ok(r) if r.code == expect => Ok(()),
            Ok(r) if (500..600).contains(&r.code) => {
                Err(Attempt::Permanent(format!("{what}: {} {}", r.code, r.text)))
            }
            Ok(r) => Err(Attempt::Temporary(format!("{what}: {} {}", r.code, r.text))),
            Err(e) => Err(Attempt::Temporary(format!("{what}: {e}"))),
        }
    }

    fn deliver(&mut self, from: &str, to: &str, text: &str) -> Attempt {
        if let Err(a) = self.step("MAIL FROM", &format!("MAIL FROM:<{from}>"), 250) {
            return a;
        }
        if let Err(a) = self.step("RCPT TO", &format!("RCPT TO:<{to}>"), 250) {
            return a;
        }
        if let Err(a) = self.step("DATA", "DATA", 354) {
            return a;
        }
        if let Err(e) = self.writer.write_all(dot_stuff(text).as_bytes()) {
            return Attempt::Temporary(format!("message data: {e}"));
        }
        match read_reply(&mut self.reader) {
            Ok(r) if r.code == 250 => Attempt::Accepted,
            Ok(r) if (500..600).contains(&r.code) => {
                Attempt::Permanent(format!("end of data: {} {}", r.code, r.text))
            }
            Ok(r) => Attempt::Temporary(format!("end of data: {} {}", r.code, r.text)),
            Err(e) => Attempt::Temporary(format!("end of data: {e}")),
        }
    }
}

/// Runs `lab send`; see the module doc.
pub fn send(opts: &SendOptions, out: &mut dyn Write) -> Result<Vec<String>> {
    validate_address(&opts.to)?;
    validate_address(&opts.from)?;
    if let Some(rate) = opts.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(Error::new(format!(
            "--rate must be a positive number, not {rate}"
        )));
    }
    let addr: SocketAddr = format!(
        "{}:{}",
        opts.instance.service_addr(),
        opts.instance.smtp_port()
    )
    .parse()
    .map_err(|e| Error::new(format!("bad service address: {e}")))?;
    let start = Instant::now();
    let mut session: Option<Session> = None;
    let mut accepted = Vec::with_capacity(opts.count as usize);
    for n in 1..=opts.count {
        if let Some(rate) = opts.rate {
            let due = start + Duration::from_secs_f64(f64::from(n - 1) / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let id = new_message_id();
        let text = message_text(&opts.from, &opts.to, &id, n, opts.count);
        let give_up = Instant::now() + opts.deadline;
        loop {
            let attempt = match session.as_mut() {
                Some(s) => s.deliver(&opts.from, &opts.to, &text),
                None => match Session::open(addr) {
                    Ok(s) => session.insert(s).deliver(&opts.from, &opts.to, &text),
                    Err(e) => Attempt::Temporary(e),
                },
            };
            match attempt {
                Attempt::Accepted => {
                    writeln!(out, "{id}")
                        .and_then(|()| out.flush())
                        .map_err(|e| Error::new(format!("cannot write to stdout: {e}")))?;
                    accepted.push(id);
                    break;
                }
                Attempt::Permanent(why) => {
                    return Err(Error::new(format!(
                        "message {n} to {} rejected permanently by {addr}: {why}",
                        opts.to
                    )));
                }
                Attempt::Temporary(why) => {
                    session = None;
                    if Instant::now() >= give_up {
                        return Err(Error::new(format!(
                            "message {n} to {} not accepted by {addr} within {:?}: {why}",
                            opts.to, opts.deadline
                        )));
                    }
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        }
    }
    if let Some(mut s) = session {
        let _ = s.command("QUIT");
    }
    Ok(accepted)
}

/// An address must not be able to inject SMTP commands.
fn validate_address(a: &str) -> Result<()> {
    let ok = !a.is_empty()
        && a.contains('@')
        && a.chars()
            .all(|c| c.is_ascii_graphic() && c != '<' && c != '>');
    if ok {
        Ok(())
    } else {
        Err(Error::new(format!(
            "'{a}' is not a plain mail address (local@domain, printable ASCII, no <>)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_reply() {
        let mut r = "250-node-a.lab\r\n250-PIPELINING\r\n250 8BITMIME\r\n220 next\r\n".as_bytes();
        let reply = read_reply(&mut r).unwrap();
        assert_eq!(reply.code, 250);
        assert_eq!(reply.text, "node-a.lab\nPIPELINING\n8BITMIME");
        assert_eq!(read_reply(&mut r).unwrap().code, 220);
        assert!(read_reply(&mut r).is_err(), "EOF must be an error");
    }

    #[test]
    fn garbage_reply_is_an_error() {
        assert!(read_reply(&mut "hello\r\n".as_bytes()).is_err());
        assert!(read_reply(&mut "250x\r\n".as_bytes()).is_err());
        assert_eq!(read_reply(&mut "354\r\n".as_bytes()).unwrap().code, 354);
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff("a\n.b\n..c\n"), "a\r\n..b\r\n...c\r\n.\r\n");
        assert_eq!(dot_stuff("."), "..\r\n.\r\n");
    }

    #[test]
    fn message_ids_are_unique_and_well_formed() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_message_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert!(id.starts_with('<') && id.ends_with("@lab.test>"), "{id}");
            assert_eq!(id.len(), "<@lab.test>".len() + 36, "{id}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661); // 2000-02-29 01:01:01
        assert_eq!(rfc5322_date(t), "Tue, 29 Feb 2000 01:01:01 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_798_761_599); // 2026-12-31 23:59:59
        assert_eq!(rfc5322_date(t), "Thu, 31 Dec 2026 23:59:59 +0000");
    }

    #[test]
    fn message_carries_its_id() {
        let text = message_text("a@b", "c@d", "<x@lab.test>", 2, 5);
        assert!(text.contains("\nMessage-ID: <x@lab.test>\n"));
        assert!(text.contains("Subject: spoolkeeper lab message 2/5\n"));
    }

    #[test]
    fn addresses() {
        assert!(validate_address("alice@students.lab").is_ok());
        assert!(validate_address("a=students.lab@archive.lab").is_ok());
        assert!(validate_address("x@y>\r\nRCPT TO:<z@w").is_err());
        assert!(validate_address("nobody").is_err());
        assert!(validate_address("").is_err());
    }
}
