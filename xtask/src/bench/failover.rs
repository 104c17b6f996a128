//! `cargo xtask bench failover`: the service pause of a switchover and the time to serve again
//! after a power loss, measured from outside as a user sees them: IMAP logins at the students
//! service address (10.77.0.21), one attempt every [`PROBE_EVERY`] from a background thread.
//!
//! 1. Converge on node-a with `examples/lab.yaml` as it is.
//! 2. Switchover: `apply` of the copy with `active: node-b`. The pause is the gap between the
//!    last successful login before the outage and the first one after it (an upper bound: it
//!    includes up to one probe interval); the log's view (start of `stop_instance` on node-a to
//!    the end of `start_instance` on node-b) is printed beside it. Goal ≤ 15 s.
//! 3. `apply` again on node-b (replication now runs node-b → node-a).
//! 4. Failover: `lab kill node-b`, then `apply` of the copy with `active: node-a` (the lab's
//!    fencing command fences node-b): time from the apply's start to the first successful login
//!    (node-a). Goal ≤ 30 s.
//! 5. `lab boot node-b` and two applies on node-a (its resync), so the lab is whole again.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xtask::lab::{self, Host, Instance};

use super::common::{ActionTime, Sk, lab_spec_text, list_actions, require_lab, with_active};

/// Pause between two login attempts.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// One IMAP LOGIN (and LOGOUT) at `addr`: did the server say OK?
pub fn imap_login(addr: SocketAddr, user: &str, password: &str) -> bool {
    let Ok(s) = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) else {
        return false;
    };
    if s.set_read_timeout(Some(IO_TIMEOUT)).is_err()
        || s.set_write_timeout(Some(IO_TIMEOUT)).is_err()
    {
        return false;
    }
    let Ok(mut w) = s.try_clone() else {
        return false;
    };
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if r.read_line(&mut line).is_err() || !line.starts_with("* OK") {
        return false;
    }
    if w.write_all(format!("a1 LOGIN \"{user}\" \"{password}\"\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) if line.starts_with("a1 ") => break,
            Ok(_) => {}
        }
    }
    let ok = line.starts_with("a1 OK");
    let _ = w.write_all(b"a2 LOGOUT\r\n");
    ok
}

/// Logins in the background; each attempt recorded with its start time.
struct Prober {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(Instant, bool)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    fn start(addr: SocketAddr) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = imap_login(addr, "skb-probe@students.lab", "lab");
                if let Ok(mut g) = v.lock() {
                    g.push((t, ok));
                }
                std::thread::sleep(PROBE_EVERY);
            }
        });
        Prober {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn snapshot(&self) -> Vec<(Instant, bool)> {
        self.seen.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Wait (up to `timeout`) until `done` says the observations are complete.
    fn until(
        &self,
        timeout: Duration,
        done: impl Fn(&[(Instant, bool)]) -> bool,
    ) -> Vec<(Instant, bool)> {
        let start = Instant::now();
        loop {
            let s = self.snapshot();
            if done(&s) || start.elapsed() > timeout {
                return s;
            }
            std::thread::sleep(PROBE_EVERY);
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The outage seen by the probes: (last success before the first failure, first failure,
/// first success after it). `None` parts: not seen.
pub fn outage(seen: &[(Instant, bool)]) -> (Option<Instant>, Option<Instant>, Option<Instant>) {
    let Some(fail) = seen.iter().position(|(_, ok)| !ok) else {
        return (None, None, None);
    };
    let before = seen[..fail]
        .iter()
        .rev()
        .find(|(_, ok)| *ok)
        .map(|(t, _)| *t);
    let after = seen[fail..].iter().find(|(_, ok)| *ok).map(|(t, _)| *t);
    (before, Some(seen[fail].0), after)
}

/// From the start of the first `kind_from` action to the end of the last `kind_to` action, in
/// the log's clock.
fn log_span(log: &str, kind_from: &str, kind_to: &str) -> Option<f64> {
    // action_times gives durations; the start/end instants need the timestamps again.
    let mut start: Option<jiff::Timestamp> = None;
    let mut end: Option<jiff::Timestamp> = None;
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(ts) = v["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            continue;
        };
        let kind = |id: &str| id.split(':').nth(1).map(str::to_owned);
        match v["fields"]["message"].as_str() {
            Some("start")
                if start.is_none()
                    && v["span"]["id"].as_str().and_then(kind).as_deref() == Some(kind_from) =>
            {
                start = Some(ts);
            }
            Some("done")
                if v["fields"]["action"].as_str().and_then(kind).as_deref() == Some(kind_to) =>
            {
                end = Some(ts);
            }
            _ => {}
        }
    }
    Some(end?.duration_since(start?).as_secs_f64())
}

fn fmt_opt(d: Option<Duration>) -> String {
    d.map_or("not seen".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

pub fn run() -> Result<(), String> {
    require_lab()?;
    let addr: SocketAddr = format!("{}:143", Instance::Students.service_addr())
        .parse()
        .map_err(|e| format!("service address: {e}"))?;
    let sk = Sk::new("failover")?;
    let lab_text = lab_spec_text()?;
    let on_a = sk.write_spec("on-a.yaml", &lab_text)?;
    let on_b = sk.write_spec("on-b.yaml", &with_active(&lab_text, "node-b")?)?;

    eprintln!("==> bench failover: converge on node-a");
    sk.apply(&on_a)?;
    let warm = Prober::start(addr);
    let ok = warm.until(Duration::from_secs(30), |s| s.iter().any(|(_, ok)| *ok));
    drop(warm);
    if !ok.iter().any(|(_, ok)| *ok) {
        return Err("no IMAP login works at 10.77.0.21 before the switchover".into());
    }

    // Switchover.
    eprintln!("==> switchover to node-b (apply), logins probed every {PROBE_EVERY:?}");
    let probe = Prober::start(addr);
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let sw = sk.apply(&on_b)?;
    let sw_wall = sw.wall;
    let seen = probe.until(Duration::from_secs(60), |s| {
        let (_, f, a) = outage(s);
        // done when an outage ended, or (no outage) a success after the apply
        a.is_some() || (f.is_none() && s.iter().any(|(t, ok)| *ok && *t > t0 + sw_wall))
    });
    drop(probe);
    let (before, fail, after) = outage(&seen);
    let pause = match (before, after) {
        (Some(b), Some(a)) => Some(a.duration_since(b)),
        _ => None,
    };
    let sw_first = after.map(|a| a.saturating_duration_since(t0));
    let sw_log = log_span(&sw.log, "stop_instance", "start_instance");
    if fail.is_some() && after.is_none() {
        return Err(format!(
            "after the switchover no IMAP login worked within 60 s; actions: {}",
            list_actions(&sw.actions())
        ));
    }
    let sw_actions = sw.actions();

    eprintln!("==> apply on node-b again (replication node-b -> node-a)");
    sk.apply(&on_b)?;

    // Failover.
    eprintln!("==> power loss of node-b, failover to node-a (apply)");
    lab::kill(Host::NodeB).map_err(|e| e.to_string())?;
    let probe = Prober::start(addr);
    let t1 = Instant::now();
    let fo = sk.run(&["apply", "-f", &on_a.to_string_lossy()], true)?;
    let seen = probe.until(Duration::from_secs(120), |s| {
        s.iter().any(|(t, ok)| *ok && *t >= t1)
    });
    drop(probe);
    let fo_first = seen
        .iter()
        .find(|(t, ok)| *ok && *t >= t1)
        .map(|(t, _)| t.duration_since(t1));
    let fo_actions: Vec<ActionTime> = fo.actions();
    let fo_code = fo.code;

    eprintln!("==> boot node-b and resync it");
    let booted = lab::boot(Host::NodeB).map_err(|e| e.to_string());
    let mut resync = Vec::new();
    for _ in 0..2 {
        resync.push(sk.apply(&on_a).map(|r| r.wall));
    }
    if fo_code != Some(0) {
        return Err(format!(
            "the failover apply exited {fo_code:?}:\n{}\n{}",
            fo.stdout.trim(),
            fo.errors()
        ));
    }
    let fo_first = fo_first.ok_or("after the failover no IMAP login worked within 120 s")?;

    println!(
        "bench failover (IMAP LOGIN probed every {} ms at 10.77.0.21)\n  \
         switchover node-a -> node-b: service pause {} (last login OK before -> first OK after; \
         log: stop_instance start -> start_instance done {}), first login on node-b {} after \
         apply start, apply {:.2} s (goal pause <= 5 s)\n    actions: {}\n  \
         failover after power loss of node-b -> node-a: first login {:.2} s after apply start, \
         apply {:.2} s (goal first login <= 10 s)\n    actions: {}",
        PROBE_EVERY.as_millis(),
        match (pause, fail) {
            (Some(_), _) => fmt_opt(pause),
            (None, None) => format!("< {} ms (no failed probe)", PROBE_EVERY.as_millis()),
            _ => "not seen".into(),
        },
        sw_log.map_or("n/a".into(), |s| format!("{s:.2} s")),
        fmt_opt(sw_first),
        sw_wall.as_secs_f64(),
        list_actions(&sw_actions),
        fo_first.as_secs_f64(),
        fo.wall.as_secs_f64(),
        list_actions(&fo_actions),
    );
    booted.map_err(|e| format!("measured, but node-b did not boot again: {e}"))?;
    for r in resync {
        r.map_err(|e| format!("measured, but the resync of node-b failed: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_is_bounded_by_successes() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let seen = [
            (at(0), true),
            (at(100), true),
            (at(200), false),
            (at(300), false),
            (at(400), true),
            (at(500), false),
        ];
        let (b, f, a) = outage(&seen);
        assert_eq!((b, f, a), (Some(at(100)), Some(at(200)), Some(at(400))));
        assert_eq!(outage(&[(at(0), true)]), (None, None, None));
        assert_eq!(outage(&[(at(0), false)]), (None, Some(at(0)), None));
    }

    #[test]
    fn log_span_from_stop_to_start() {
        let log = r#"{"timestamp":"2026-11-28T19:00:01Z","fields":{"message":"start"},"span":{"id":"node-a:stop_instance:students","name":"action"}}
{"timestamp":"2026-11-28T19:00:02Z","fields":{"message":"done","action":"node-a:stop_instance:students"}}
{"timestamp":"2026-11-28T19:00:05.5Z","fields":{"message":"done","action":"node-b:start_instance:students"}}"#;
        assert_eq!(log_span(log, "stop_instance", "start_instance"), Some(4.5));
        assert_eq!(log_span(log, "fence", "start_instance"), None);
    }
}
