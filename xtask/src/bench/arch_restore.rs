//! `cargo xtask bench arch-restore`: `spoolkeeper arch-restore` against the hand-written
//! `postcat -bh -q ID | sendmail -G -i -f SENDER RCPT` loop, on the same held queue.
//!
//! 1. The lab is converged (BCC maps on node-a, HOLD on smtp-arch).
//! 2. [`DEFAULT_COUNT`] messages are injected into smtp-arch over one SMTP session from the root
//!    namespace, for the archive addresses of [`USERS`] mailboxes of students.lab
//!    (`skb-ar-NN=students.lab@archive.lab`): smtp-arch's `check_recipient_access … HOLD`
//!    puts each on hold, as a BCC copy from a spool would be.
//! 3. `spoolkeeper arch-restore -f SPEC --instance students` (fresh state directory, so an
//!    empty replay ledger; the mailboxes are new, so nothing is skipped as present): msgs/s.
//! 4. When node-a's queue has drained, the loop runs on smtp-arch over the same queue ids,
//!    into other mailboxes (`skb-loop-NN@students.lab`), with smtp-arch's Postfix routing
//!    students.lab to the service address for the time of the bench (`transport_maps`,
//!    removed afterwards): msgs/s. Its queue listing is prepared by the bench and not timed.
//! 5. Cleanup: every held copy for a bench address is deleted from smtp-arch, the bench's
//!    mailboxes are removed from node-a.
//!
//! Both rates count a message as re-injected when a Postfix queue accepted it (the spool's for
//! arch-restore, smtp-arch's for the loop); the loop's end-to-end time (until smtp-arch has
//! relayed every copy to node-a) is printed too.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use xtask::lab::Host;
use xtask::lab::smtp::{message_text, new_message_id};

use super::common::{Sk, Smtp, host_ok, host_run, host_sh, poll, require_lab, secs};

/// Held messages re-injected.
pub const DEFAULT_COUNT: u32 = 5_000;
/// Mailboxes they are spread over.
pub const USERS: u32 = 50;

const SENDER: &str = "bench@upstream.lab";
const ARCHIVE_SMTP: &str = "10.77.0.13:25";
const ROUTE: &str = "transport_maps = inline:{students.lab=smtp:[10.77.0.21]}";

fn user(n: u32) -> String {
    format!("skb-ar-{:02}", n % USERS)
}

/// A bench address (original or archived) of the students instance?
fn is_bench_addr(addr: &str) -> bool {
    addr.starts_with("skb-ar-") || addr.starts_with("skb-loop-")
}

/// One queue entry of `postqueue -j`.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub queue: String,
    pub id: String,
    pub sender: String,
    pub recipients: Vec<String>,
}

/// Parse `postqueue -j` (one JSON object per line; lines that are not are skipped).
pub fn parse_postqueue(text: &str) -> Vec<Queued> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some(Queued {
                queue: v["queue_name"].as_str()?.to_owned(),
                id: v["queue_id"].as_str()?.to_owned(),
                sender: v["sender"].as_str().unwrap_or("").to_owned(),
                recipients: v["recipients"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|r| r["address"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn postqueue(host: Host) -> Result<Vec<Queued>, String> {
    Ok(parse_postqueue(
        &host_ok(host, &["postqueue", "-j"], None)?.stdout,
    ))
}

/// The loop's input: `QUEUE_ID SENDER RECIPIENT` per line, the recipient being the other
/// mailbox `skb-loop-NN@students.lab` for the held copy of `skb-ar-NN=students.lab@…`.
pub fn loop_lines(held: &[Queued]) -> String {
    let mut s = String::new();
    for q in held {
        for r in &q.recipients {
            if let Some(rest) = r.strip_prefix("skb-ar-")
                && let Some((nn, _)) = rest.split_once('=')
            {
                s.push_str(&format!(
                    "{} {} skb-loop-{nn}@students.lab\n",
                    q.id, q.sender
                ));
            }
        }
    }
    s
}

pub fn run(count: Option<u32>) -> Result<(), String> {
    let count = count.unwrap_or(DEFAULT_COUNT);
    require_lab()?;
    let sk = Sk::new("arch-restore")?;
    let lab = super::common::lab_spec_text()?;
    let spec = sk.write_spec(
        "held.yaml",
        &super::common::with_schedules(&lab, "3650d", "3650d")?,
    )?;
    cleanup()?;
    eprintln!("==> bench arch-restore: converge the lab (schedules held)");
    sk.apply(&spec)?;
    let result = measure(&sk, &spec, count);
    let cleaned = cleanup();
    let report = result?;
    cleaned?;
    println!("{report}");
    Ok(())
}

/// Bench copies off smtp-arch (held or not), the route removed, bench mailboxes off node-a.
fn cleanup() -> Result<(), String> {
    let ids: String = postqueue(Host::SmtpArch)?
        .into_iter()
        .filter(|q| q.recipients.iter().any(|r| is_bench_addr(r)))
        .map(|q| q.id + "\n")
        .collect();
    if !ids.is_empty() {
        host_ok(
            Host::SmtpArch,
            &["postsuper", "-d", "-"],
            Some(ids.as_bytes()),
        )?;
    }
    let routed = host_ok(Host::SmtpArch, &["postconf", "-n", "transport_maps"], None)?;
    if routed.stdout.contains("students.lab") {
        host_sh(
            Host::SmtpArch,
            "postconf -X transport_maps && postfix reload",
            &[],
        )?;
    }
    host_sh(
        Host::NodeA,
        "rm -rf /zdata/imap/students/skb-ar-* /zdata/imap/students/skb-loop-*",
        &[],
    )?;
    Ok(())
}

fn measure(sk: &Sk, spec: &std::path::Path, count: u32) -> Result<String, String> {
    eprintln!("==> {count} messages held on smtp-arch for {USERS} mailboxes");
    let t = Instant::now();
    let mut smtp = Smtp::open(ARCHIVE_SMTP)?;
    for n in 0..count {
        let u = user(n);
        let text = message_text(
            SENDER,
            &format!("{u}@students.lab"),
            &new_message_id(),
            n + 1,
            count,
        );
        smtp.send(SENDER, &format!("{u}=students.lab@archive.lab"), &text)?;
    }
    let _ = smtp.expect(Some("QUIT"), 221);
    let injected = t.elapsed();
    let held = poll(Duration::from_secs(300), Duration::from_secs(2), || {
        let held: Vec<Queued> = postqueue(Host::SmtpArch)?
            .into_iter()
            .filter(|q| q.queue == "hold" && q.recipients.iter().any(|r| r.starts_with("skb-ar-")))
            .collect();
        Ok((held.len() >= count as usize).then_some(held))
    })?
    .ok_or("the injected messages never were all on hold on smtp-arch")?;

    eprintln!("==> spoolkeeper arch-restore --instance students");
    let spec_s = spec.to_string_lossy();
    let r = sk.run(
        &[
            "arch-restore",
            "-f",
            &spec_s,
            "--instance",
            "students",
            "--output",
            "json",
        ],
        true,
    )?;
    let report: serde_json::Value = serde_json::from_str(&r.stdout).map_err(|e| {
        format!(
            "arch-restore printed no JSON report ({e}), exit {:?}:\n{}\n{}",
            r.code,
            r.stdout,
            r.errors()
        )
    })?;
    let counted = |k: &str| report["counts"][k].as_u64().unwrap_or(0);
    let replayed = counted("replayed");
    if r.code != Some(0) || replayed < u64::from(count) {
        return Err(format!(
            "arch-restore exited {:?}, replayed {replayed} of {count}: counts {}, errors {}",
            r.code, report["counts"], report["errors"]
        ));
    }
    let sk_rate = replayed as f64 / r.wall.as_secs_f64();
    let replay_secs = report["replay_secs"].as_f64();

    eprintln!("==> waiting for node-a to deliver the replays");
    let drained = poll(Duration::from_secs(900), Duration::from_secs(3), || {
        Ok(postqueue(Host::NodeA)?.is_empty().then_some(()))
    })?;
    if drained.is_none() {
        return Err("node-a's queue did not drain within 15 minutes".into());
    }

    eprintln!("==> the postcat | sendmail loop on smtp-arch");
    host_sh(
        Host::SmtpArch,
        r#"postconf -e "$1" && postfix reload"#,
        &[ROUTE],
    )?;
    let lines = loop_lines(&held);
    let n_loop = lines.lines().count();
    let looped = host_run(
        Host::SmtpArch,
        &[
            "sh",
            "-c",
            r#"n=0; while read -r id from to; do postcat -bh -q "$id" | sendmail -G -i -f "$from" "$to" || exit 1; n=$((n+1)); done; echo "$n""#,
        ],
        Some(lines.as_bytes()),
    )?;
    if !looped.ok() || looped.stdout.trim() != n_loop.to_string() {
        return Err(format!(
            "the loop failed after {} of {n_loop}: {}",
            looped.stdout.trim(),
            looped.stderr.trim()
        ));
    }
    let loop_rate = n_loop as f64 / looped.wall.as_secs_f64();
    let t_drain = Instant::now();
    let relayed = poll(Duration::from_secs(900), Duration::from_secs(2), || {
        let pending = postqueue(Host::SmtpArch)?
            .into_iter()
            .filter(|q| q.queue != "hold")
            .count();
        Ok((pending == 0).then_some(()))
    })?;
    let loop_e2e = relayed.map(|()| looped.wall + t_drain.elapsed());

    let by_action: BTreeMap<String, u64> = report["counts"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .filter(|(_, v)| *v > 0)
                .collect()
        })
        .unwrap_or_default();
    Ok(format!(
        "bench arch-restore: {count} held messages for {USERS} mailboxes (injected in {})\n  \
         spoolkeeper arch-restore: {replayed} replayed in {} = {sk_rate:.1} msgs/s \
         (its SMTP session alone: {}); counts {by_action:?}\n  \
         postcat | sendmail loop: {n_loop} re-sent in {} = {loop_rate:.1} msgs/s \
         (end to end, until smtp-arch relayed them all: {})\n  \
         ratio arch-restore/loop: {:.2}x (goal >= 5x)",
        secs(injected),
        secs(r.wall),
        replay_secs.map_or("n/a".into(), |s| format!("{s:.2} s")),
        secs(looped.wall),
        loop_e2e.map_or("did not drain".into(), secs),
        sk_rate / loop_rate.max(1e-9),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postqueue_lines_and_loop_input() {
        let text = r#"{"queue_name":"hold","queue_id":"4ABC","arrival_time":1,"sender":"bench@upstream.lab","recipients":[{"address":"skb-ar-07=students.lab@archive.lab"}]}
garbage
{"queue_name":"deferred","queue_id":"5DEF","sender":"","recipients":[{"address":"x@y"},{"address":"skb-ar-11=students.lab@archive.lab"}]}
{"queue_id":"no-queue-name"}"#;
        let q = parse_postqueue(text);
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].queue, "hold");
        assert_eq!(
            q[1].recipients,
            ["x@y", "skb-ar-11=students.lab@archive.lab"]
        );
        assert_eq!(
            loop_lines(&q[..1]),
            "4ABC bench@upstream.lab skb-loop-07@students.lab\n"
        );
        assert!(is_bench_addr("skb-loop-3@students.lab"));
        assert!(!is_bench_addr("alice@students.lab"));
        assert_eq!(user(57), "skb-ar-07");
    }
}
