//! `spoolkeeper restore`: a mailbox, a folder or a date range back from a snapshot, into a
//! restore folder of the live mailbox (`crate::apply::recover`).

use std::path::Path;

use crate::apply::recover::{self, Request};
use crate::decide::recover::Selector;
use crate::spec::Spec;

/// The arguments, as parsed.
pub struct Args<'a> {
    pub file: &'a Path,
    pub instance: String,
    pub mailbox: String,
    pub at: Option<String>,
    pub snapshot: Option<String>,
    pub folder: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub node: Option<String>,
    pub dry_run: bool,
    pub list: bool,
    pub json: bool,
    pub state_dir: std::path::PathBuf,
}

/// The cluster of the file that has the instance.
pub(crate) fn cluster_with<'s>(
    specs: &'s [Spec],
    file: &Path,
    instance: &str,
) -> Result<&'s Spec, String> {
    let with: Vec<&Spec> = specs
        .iter()
        .filter(|s| s.spec.instances.keys().any(|n| n.as_str() == instance))
        .collect();
    match with.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no cluster in {} has instance `{instance}`; nothing was contacted",
            file.display()
        )),
        _ => Err(format!(
            "several clusters in {} have instance `{instance}`: name one spec file",
            file.display()
        )),
    }
}

fn parse_date(flag: &str, s: &str) -> Result<jiff::civil::Date, String> {
    s.parse::<jiff::civil::Date>()
        .map_err(|e| format!("--{flag} `{s}`: not a date YYYY-MM-DD ({e})"))
}

/// A time for `--at`: RFC 3339 (`2026-11-30T14:00:00Z`), or a date (its end, UTC).
fn parse_at(s: &str) -> Result<jiff::Timestamp, String> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        return d
            .tomorrow()
            .and_then(|n| n.to_zoned(jiff::tz::TimeZone::UTC))
            .map(|z| z.timestamp() - jiff::SignedDuration::from_secs(1))
            .map_err(|e| e.to_string());
    }
    Err(format!(
        "--at `{s}`: not a time (2026-11-30T14:00:00Z, or a date 2026-11-30 for its end)"
    ))
}

fn request(a: &Args) -> Result<Request, String> {
    let selector = match (&a.at, &a.snapshot) {
        (Some(_), Some(_)) => return Err("give --at or --snapshot, not both".into()),
        (Some(t), None) => Selector::At(parse_at(t)?),
        (None, Some(s)) => Selector::Snapshot(s.clone()),
        (None, None) => Selector::Newest,
    };
    let since = a
        .since
        .as_deref()
        .map(|s| parse_date("since", s))
        .transpose()?;
    let until = a
        .until
        .as_deref()
        .map(|s| parse_date("until", s))
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until)
        && s > u
    {
        return Err(format!("--since {s} is after --until {u}"));
    }
    Ok(Request {
        instance: a.instance.clone(),
        user: a.mailbox.clone(),
        selector,
        folder: a.folder.clone(),
        since,
        until,
        node: a.node.clone(),
        dry_run: a.dry_run,
    })
}

pub(crate) async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Every restore that changed (or tried to change) a mailbox is journaled: who got what back.
fn journal(
    state_dir: &Path,
    spec: &Spec,
    req: &Request,
    res: &Result<recover::Report, recover::RestoreError>,
) {
    use crate::state::journal::{Journal, Phase};
    if req.dry_run {
        return;
    }
    let (phase, detail) = match res {
        Ok(r) => (
            Phase::Done,
            format!(
                "{} messages ({} bytes) from {} into {}",
                r.messages, r.bytes, r.snapshot, r.folder
            ),
        ),
        Err(e) => (Phase::Failed, e.to_string()),
    };
    let action = format!("restore:{}:{}", req.instance, req.user);
    match Journal::open(state_dir, spec.name.as_str()) {
        Ok(mut j) => {
            if let Err(e) = j.record(&action, phase, Some(detail)) {
                eprintln!("warning: cannot journal the restore: {e}");
            }
        }
        Err(e) => eprintln!("warning: cannot open the journal: {e}"),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> u8 {
    match serde_json::to_string_pretty(v) {
        Ok(t) => {
            println!("{t}");
            0
        }
        Err(e) => {
            eprintln!("cannot render the report: {e}");
            1
        }
    }
}

/// Exit 0 when restored (or listed), 1 on any error (nothing changed in the live mailbox unless
/// the message says how far the import went).
pub fn main(a: Args) -> u8 {
    let specs = match super::load::specs(a.file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("invalid spec: nothing was contacted");
            return 1;
        }
    };
    let spec = match cluster_with(&specs, a.file, &a.instance) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("restore: {e}");
            return 1;
        }
    };
    let req = match request(&a) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("restore: {e}; nothing was contacted");
            return 1;
        }
    };
    let Some(rt) = super::runtime() else {
        return 1;
    };
    if a.list {
        return match rt.block_on(recover::list(spec, &a.instance, &a.mailbox)) {
            Ok(l) if a.json => print_json(&l),
            Ok(l) => {
                print!("{}", l.text());
                0
            }
            Err(e) => {
                eprintln!("restore --list: {e}");
                1
            }
        };
    }
    let res = rt.block_on(recover::restore(spec, &req, interrupted()));
    journal(&a.state_dir, spec, &req, &res);
    match res {
        Ok(r) => {
            let code = if r.cleanup_errors.is_empty() { 0 } else { 1 };
            if a.json {
                print_json(&r).max(code)
            } else {
                print!("{}", r.text());
                code
            }
        }
        Err(e) => {
            eprintln!("restore: {e}");
            1
        }
    }
}
