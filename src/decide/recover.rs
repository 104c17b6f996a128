//! `restore`, the pure part: which snapshots can give a mailbox back, which node reads it,
//! where the user's mail is inside the snapshot, and which messages still need importing so
//! that a rerun adds nothing twice. The shell is `crate::apply::recover`; the argv are in
//! `crate::adapters::{dovecot, zfs, files}`.
//!
//! # Where the mail is
//!
//! Nothing about the mailbox layout is assumed: Dovecot says where the user's mail lives
//! (`doveadm user`: `mail`, `home`), the node resolves it (`realpath`), and the path relative
//! to the instance dataset's mountpoint is the same path inside any snapshot of it (a clone's
//! mountpoint, or `.zfs/snapshot/NAME`). The staged copy is read with the same mail location,
//! only its path changed (and index/control paths dropped: they may point outside the dataset,
//! and Dovecot rebuilds them).
//!
//! # Exactly once
//!
//! Messages go under one restore folder per snapshot, `Restored<sep><snapshot time>`, with the
//! source folder below it; a message is imported unless a message with the same folder,
//! Message-ID and virtual size (and received date, when it has no Message-ID) is already there,
//! counted as a multiset (two identical copies in the snapshot give two copies, never three).

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde::Serialize;

use crate::adapters::dovecot::Listed;
use crate::model::Observation;
use crate::spec::Spec;

/// A bad request or an unusable answer: the restore stops before changing anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoverError {
    /// The mail location Dovecot gave cannot be mapped onto a snapshot.
    #[error("mail location `{0}`: {1}")]
    Location(String, String),
    /// The user's mail is not inside the instance's dataset.
    #[error("the mail of {user} is at {path}, outside dataset {dataset} (mounted at {mountpoint})")]
    OutsideDataset {
        user: String,
        path: String,
        dataset: String,
        mountpoint: String,
    },
    /// No snapshot matches `--at` / `--snapshot`.
    #[error("no snapshot {asked}{}", nearest_text(.nearest))]
    NoSnapshot {
        asked: String,
        nearest: Vec<(String, Timestamp)>,
    },
    /// The snapshot is on no reachable node (or not on the node asked for).
    #[error("snapshot {snapshot} is on no reachable node{}", .node.as_ref().map(|n| format!(" named {n}")).unwrap_or_default())]
    NoReader {
        snapshot: String,
        node: Option<String>,
    },
}

fn nearest_text(n: &[(String, Timestamp)]) -> String {
    if n.is_empty() {
        return " (the instance has no snapshot at all)".into();
    }
    let list: Vec<String> = n.iter().map(|(s, t)| format!("{s} ({t})")).collect();
    format!("; nearest: {}", list.join(", "))
}

/// A mail location, `FORMAT:PATH[:KEY=VALUE…]`, with `~` expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailLocation {
    /// `maildir`, `mdbox`, `sdbox`, `mbox`…
    pub format: String,
    /// The absolute path of the user's mail.
    pub path: String,
    /// The other parameters, in order (`LAYOUT=fs`, `INDEX=…`).
    pub params: Vec<String>,
}

/// Parameters of a location that name places outside the mail path; a staged copy drops them.
const PLACE_PARAMS: &[&str] = &[
    "INDEX",
    "INDEXPVT",
    "CONTROL",
    "VOLATILEDIR",
    "ALT",
    "ITERINDEX",
    "INBOX",
];

/// Parse what `doveadm user` printed as `mail` (or `mail_location`), `~` expanded with `home`.
pub fn parse_location(mail: &str, home: Option<&str>) -> Result<MailLocation, RecoverError> {
    let bad = |why: &str| RecoverError::Location(mail.to_owned(), why.to_owned());
    let (format, rest) = mail
        .split_once(':')
        .ok_or_else(|| bad("no `format:` prefix (autodetected locations cannot be mapped)"))?;
    if format.is_empty() || !format.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(bad("the format is not a word"));
    }
    let mut parts = rest.split(':');
    let raw = parts.next().unwrap_or("");
    let path = if let Some(r) = raw.strip_prefix('~') {
        let h = home.ok_or_else(|| bad("`~` but the user has no home"))?;
        format!("{}{}", h.trim_end_matches('/'), r)
    } else {
        raw.to_owned()
    };
    if !path.starts_with('/') {
        return Err(bad("the path is not absolute"));
    }
    if path.contains('%') {
        return Err(bad("the path still holds a `%` variable"));
    }
    Ok(MailLocation {
        format: format.to_owned(),
        path: path.trim_end_matches('/').to_owned(),
        params: parts.filter(|p| !p.is_empty()).map(str::to_owned).collect(),
    })
}

impl MailLocation {
    /// The same location with its path moved to `dir` and place parameters dropped.
    pub fn at(&self, dir: &str) -> String {
        let mut s = format!("{}:{}", self.format, dir);
        for p in &self.params {
            let key = p.split('=').next().unwrap_or("");
            if !PLACE_PARAMS.contains(&key) {
                s.push(':');
                s.push_str(p);
            }
        }
        s
    }
}

/// `resolved` relative to `mountpoint` (`alice/Maildir`), `None` when outside it.
pub fn relative_path(mountpoint: &str, resolved: &str) -> Option<String> {
    let mp = mountpoint.trim_end_matches('/');
    let rest = resolved.strip_prefix(mp)?;
    if rest.is_empty() {
        return Some(String::new());
    }
    let rest = rest.strip_prefix('/')?;
    if rest.split('/').any(|c| c == "..") {
        return None;
    }
    Some(rest.trim_end_matches('/').to_owned())
}

/// One snapshot of the instance's dataset, and the nodes that hold it (same guid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestorePoint {
    /// The snapshot's name (after `@`).
    pub snapshot: String,
    /// Its guid.
    pub guid: u64,
    /// Its creation time.
    pub creation: Timestamp,
    /// The nodes that hold it, in name order.
    pub nodes: Vec<String>,
}

/// Every snapshot of `instance`'s dataset on any observed node, oldest first, merged by guid.
pub fn restore_points(spec: &Spec, obs: &Observation, instance: &str) -> Vec<RestorePoint> {
    let Some(inst) = spec
        .spec
        .instances
        .iter()
        .find(|(n, _)| n.as_str() == instance)
    else {
        return Vec::new();
    };
    let mut by_guid: BTreeMap<u64, RestorePoint> = BTreeMap::new();
    for (node_name, node) in &spec.spec.nodes {
        let full = format!("{}/{}", node.pool, inst.1.dataset);
        let Some(ds) = obs
            .nodes
            .get(node_name.as_str())
            .and_then(|o| o.dataset(&full))
        else {
            continue;
        };
        for s in &ds.snapshots {
            let p = by_guid.entry(s.guid).or_insert_with(|| RestorePoint {
                snapshot: s.name.clone(),
                guid: s.guid,
                creation: s.creation,
                nodes: Vec::new(),
            });
            p.nodes.push(node_name.to_string());
        }
    }
    let mut v: Vec<RestorePoint> = by_guid.into_values().collect();
    for p in &mut v {
        p.nodes.sort();
        p.nodes.dedup();
    }
    v.sort_by(|a, b| (a.creation, &a.snapshot).cmp(&(b.creation, &b.snapshot)));
    v
}

/// Which snapshot to restore from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The newest.
    Newest,
    /// The newest taken at or before this time.
    At(Timestamp),
    /// This one, by name (`NAME` or `DATASET@NAME`).
    Snapshot(String),
}

/// Pick the restore point; the error names the nearest ones.
pub fn choose(points: &[RestorePoint], sel: &Selector) -> Result<RestorePoint, RecoverError> {
    let nearest = |t: Timestamp| -> Vec<(String, Timestamp)> {
        let before = points.iter().rev().find(|p| p.creation <= t);
        let after = points.iter().find(|p| p.creation > t);
        before
            .into_iter()
            .chain(after)
            .map(|p| (p.snapshot.clone(), p.creation))
            .collect()
    };
    match sel {
        Selector::Newest => points.last().cloned().ok_or(RecoverError::NoSnapshot {
            asked: "of the instance".into(),
            nearest: Vec::new(),
        }),
        Selector::At(t) => points
            .iter()
            .rev()
            .find(|p| p.creation <= *t)
            .cloned()
            .ok_or_else(|| RecoverError::NoSnapshot {
                asked: format!("taken at or before {t}"),
                nearest: nearest(*t),
            }),
        Selector::Snapshot(name) => {
            let short = name.rsplit('@').next().unwrap_or(name);
            points
                .iter()
                .find(|p| p.snapshot == short)
                .cloned()
                .ok_or_else(|| RecoverError::NoSnapshot {
                    asked: format!("named {short}"),
                    nearest: points
                        .last()
                        .map(|p| nearest(p.creation))
                        .unwrap_or_default(),
                })
        }
    }
}

/// The node that reads the snapshot: `forced` when given, else a node other than the active
/// one (keeps the read load off the spool users are on), else the active node.
pub fn reader(
    point: &RestorePoint,
    active: &str,
    reachable: &BTreeSet<String>,
    forced: Option<&str>,
) -> Result<String, RecoverError> {
    let holds = |n: &str| point.nodes.iter().any(|x| x == n) && reachable.contains(n);
    if let Some(f) = forced {
        return if holds(f) {
            Ok(f.to_owned())
        } else {
            Err(RecoverError::NoReader {
                snapshot: point.snapshot.clone(),
                node: Some(f.to_owned()),
            })
        };
    }
    point
        .nodes
        .iter()
        .find(|n| n.as_str() != active && holds(n))
        .or_else(|| {
            point
                .nodes
                .iter()
                .find(|n| n.as_str() == active && holds(n))
        })
        .cloned()
        .ok_or(RecoverError::NoReader {
            snapshot: point.snapshot.clone(),
            node: None,
        })
}

/// The restore folder of a snapshot: `Restored<sep>2026-11-30T14:00:05Z`.
pub fn restore_root(point: &RestorePoint, sep: char) -> String {
    format!(
        "Restored{sep}{}",
        point.creation.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
}

/// The doveadm search query for the request: one folder or all, within the received-date
/// window (`--until` inclusive). Days are the server's calendar days, as IMAP searches them.
pub fn query(
    folder: Option<&str>,
    since: Option<jiff::civil::Date>,
    until: Option<jiff::civil::Date>,
) -> Vec<String> {
    let mut q = Vec::new();
    if let Some(f) = folder {
        q.push("mailbox".to_owned());
        q.push(f.to_owned());
    }
    if let Some(d) = since {
        q.push("SINCE".into());
        q.push(d.to_string());
    }
    if let Some(d) = until {
        q.push("BEFORE".into());
        q.push(d.tomorrow().unwrap_or(d).to_string());
    }
    if q.is_empty() {
        q.push("ALL".into());
    }
    q
}

/// The source messages a restore brings back: without `--folder`, not the restore folders of
/// earlier restores (a snapshot taken after a restore holds them; restoring them again would
/// nest `Restored` trees); with it, exactly what was asked for.
pub fn restorable(mut source: Vec<Listed>, sep: char, folder: Option<&str>) -> Vec<Listed> {
    if folder.is_none() {
        let p = format!("Restored{sep}");
        source.retain(|m| m.mailbox != "Restored" && !m.mailbox.starts_with(&p));
    }
    source
}

/// What one source folder contributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FolderPlan {
    /// The folder in the snapshot.
    pub source: String,
    /// Where its messages go (`Restored.<time>.<source>`).
    pub target: String,
    /// Messages matching the request in the snapshot.
    pub found: usize,
    /// Of those, already in the target (an earlier restore).
    pub already: usize,
    /// The UIDs (in the staged copy) still to import.
    pub uids: Vec<u32>,
    /// Their virtual size, bytes.
    pub bytes: u64,
}

type Key = (String, String, u64, String);

fn key(folder: &str, m: &Listed) -> Key {
    let received = if m.message_id.is_empty() {
        m.received.clone()
    } else {
        String::new()
    };
    (folder.to_owned(), m.message_id.clone(), m.vsize, received)
}

/// Per source folder: what to import so that the target holds every source message once.
/// `existing` is what the live mailbox holds under `root` (folders named `root<sep>…`).
pub fn to_import(source: &[Listed], existing: &[Listed], root: &str, sep: char) -> Vec<FolderPlan> {
    let prefix = format!("{root}{sep}");
    let mut have: BTreeMap<Key, usize> = BTreeMap::new();
    for m in existing {
        if let Some(f) = m.mailbox.strip_prefix(&prefix) {
            *have.entry(key(f, m)).or_default() += 1;
        }
    }
    let mut plans: BTreeMap<String, FolderPlan> = BTreeMap::new();
    let mut sorted: Vec<&Listed> = source.iter().collect();
    sorted.sort_by(|a, b| (&a.mailbox, a.uid).cmp(&(&b.mailbox, b.uid)));
    for m in sorted {
        let p = plans
            .entry(m.mailbox.clone())
            .or_insert_with(|| FolderPlan {
                source: m.mailbox.clone(),
                target: format!("{prefix}{}", m.mailbox),
                found: 0,
                already: 0,
                uids: Vec::new(),
                bytes: 0,
            });
        p.found += 1;
        match have.get_mut(&key(&m.mailbox, m)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                p.already += 1;
            }
            _ => {
                p.uids.push(m.uid);
                p.bytes += m.vsize;
            }
        }
    }
    plans.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(mailbox: &str, uid: u32, id: &str, size: u64) -> Listed {
        Listed {
            mailbox: mailbox.into(),
            uid,
            vsize: size,
            received: "2026-12-01 10:00:00".into(),
            message_id: id.into(),
        }
    }

    #[test]
    fn locations_map_onto_a_staged_copy() {
        let l = parse_location(
            "maildir:~/Maildir:LAYOUT=fs:INDEX=/var/idx/%u",
            Some("/home/a/"),
        );
        assert!(
            l.is_ok(),
            "a % left in a parameter is fine (it is dropped), not in the path"
        );
        let l = parse_location(
            "maildir:~/Maildir:LAYOUT=fs:INDEX=/var/idx",
            Some("/home/a/"),
        )
        .unwrap();
        assert_eq!(l.path, "/home/a/Maildir");
        assert_eq!(
            l.at("/var/tmp/spoolkeeper/x"),
            "maildir:/var/tmp/spoolkeeper/x:LAYOUT=fs"
        );
        assert!(parse_location("~/Maildir", Some("/h")).is_err());
        assert!(parse_location("maildir:~/Maildir", None).is_err());
        assert!(parse_location("maildir:Maildir", Some("/h")).is_err());
        assert!(parse_location("maildir:/var/vmail/%d/%n", None).is_err());
    }

    #[test]
    fn relative_paths_stay_inside_the_mountpoint() {
        assert_eq!(
            relative_path("/zdata/imap/students", "/zdata/imap/students/alice/Maildir"),
            Some("alice/Maildir".into())
        );
        assert_eq!(
            relative_path("/zdata/imap/students", "/zdata/imap/students2/a"),
            None
        );
        assert_eq!(
            relative_path("/zdata/imap/students/", "/zdata/imap/students"),
            Some("".into())
        );
        assert_eq!(relative_path("/z", "/z/../etc"), None);
    }

    fn point(name: &str, secs: i64, nodes: &[&str]) -> RestorePoint {
        RestorePoint {
            snapshot: name.into(),
            guid: secs as u64,
            creation: Timestamp::from_second(secs).unwrap(),
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn choosing_names_the_nearest_on_a_miss() {
        let pts = vec![point("s1", 100, &["a", "b"]), point("s2", 200, &["a"])];
        assert_eq!(choose(&pts, &Selector::Newest).unwrap().snapshot, "s2");
        let t = |s| Timestamp::from_second(s).unwrap();
        assert_eq!(choose(&pts, &Selector::At(t(150))).unwrap().snapshot, "s1");
        let e = choose(&pts, &Selector::At(t(50))).unwrap_err();
        assert!(e.to_string().contains("nearest: s1"), "{e}");
        assert_eq!(
            choose(&pts, &Selector::Snapshot("pool/ds@s1".into()))
                .unwrap()
                .snapshot,
            "s1"
        );
        assert!(choose(&pts, &Selector::Snapshot("zz".into())).is_err());
        assert!(choose(&[], &Selector::Newest).is_err());
    }

    #[test]
    fn the_passive_reads_when_it_can() {
        let all: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let only_a: BTreeSet<String> = ["a".to_string()].into();
        let p = point("s", 1, &["a", "b"]);
        assert_eq!(reader(&p, "a", &all, None).unwrap(), "b");
        assert_eq!(reader(&p, "a", &only_a, None).unwrap(), "a");
        assert_eq!(reader(&p, "a", &all, Some("a")).unwrap(), "a");
        let q = point("s", 1, &["a"]);
        assert!(reader(&q, "a", &all, Some("b")).is_err());
        assert!(reader(&q, "a", &BTreeSet::new(), None).is_err());
    }

    #[test]
    fn earlier_restores_are_not_restored_again_unless_asked() {
        let src = vec![
            msg("INBOX", 1, "<a>", 1),
            msg("Restored.T.INBOX", 1, "<a>", 1),
        ];
        assert_eq!(restorable(src.clone(), '.', None).len(), 1);
        assert_eq!(restorable(src, '.', Some("Restored.T.INBOX")).len(), 2);
    }

    #[test]
    fn queries() {
        let d = |s: &str| s.parse::<jiff::civil::Date>().unwrap();
        assert_eq!(query(None, None, None), vec!["ALL"]);
        assert_eq!(
            query(Some("Work"), Some(d("2026-11-01")), Some(d("2026-11-30"))),
            vec![
                "mailbox",
                "Work",
                "SINCE",
                "2026-11-01",
                "BEFORE",
                "2026-12-01"
            ]
        );
    }

    #[test]
    fn a_second_copy_in_the_snapshot_is_kept_but_never_a_third() {
        let src = vec![msg("INBOX", 1, "<a>", 10), msg("INBOX", 2, "<a>", 10)];
        let existing = vec![msg("Restored.T.INBOX", 7, "<a>", 10)];
        let p = to_import(&src, &existing, "Restored.T", '.');
        assert_eq!(p[0].uids, vec![2]);
        assert_eq!(p[0].already, 1);
        // other folders of the live mailbox do not count
        let live = vec![msg("INBOX", 1, "<a>", 10)];
        assert_eq!(
            to_import(&src, &live, "Restored.T", '.')[0].uids,
            vec![1, 2]
        );
    }

    fn arb_listed() -> impl Strategy<Value = Vec<Listed>> {
        prop::collection::vec((0..3usize, 0..5u8, 1..4u64, 0..2u8), 0..30).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (f, id, size, r))| Listed {
                    mailbox: ["INBOX", "Work", "Work.Sub"][f].into(),
                    uid: i as u32 + 1,
                    vsize: size,
                    received: format!("2026-12-01 10:00:0{r}"),
                    message_id: if id == 0 {
                        String::new()
                    } else {
                        format!("<{id}@x>")
                    },
                })
                .collect()
        })
    }

    proptest! {
        /// Importing what `to_import` says, then asking again, imports nothing; the target
        /// then holds exactly the source's messages (as a multiset), whatever it held before
        /// from an interrupted run.
        #[test]
        fn a_rerun_adds_nothing_twice(src in arb_listed(), done_frac in 0..=100usize) {
            let root = "Restored.T";
            // an interrupted earlier run imported a prefix of the source
            let n = src.len() * done_frac / 100;
            let mut live: Vec<Listed> = src[..n]
                .iter()
                .map(|m| Listed { mailbox: format!("{root}.{}", m.mailbox), uid: m.uid + 1000, ..m.clone() })
                .collect();
            let plans = to_import(&src, &live, root, '.');
            let mut imported = 0;
            for p in &plans {
                prop_assert_eq!(p.found, p.already + p.uids.len());
                for uid in &p.uids {
                    let m = src.iter().find(|m| m.mailbox == p.source && m.uid == *uid).unwrap();
                    live.push(Listed { mailbox: p.target.clone(), uid: uid + 2000, ..m.clone() });
                    imported += 1;
                }
            }
            prop_assert_eq!(imported, src.len() - n);
            let again = to_import(&src, &live, root, '.');
            prop_assert!(again.iter().all(|p| p.uids.is_empty()));
            let mut want: Vec<Key> = src.iter().map(|m| key(&m.mailbox, m)).collect();
            let mut got: Vec<Key> = live
                .iter()
                .map(|m| key(m.mailbox.strip_prefix("Restored.T.").unwrap(), m))
                .collect();
            want.sort();
            got.sort();
            prop_assert_eq!(want, got);
        }
    }
}
