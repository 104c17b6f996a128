//! The apply journal: every action's start and end, appended durably (fsync per record) to
//! `<state-dir>/<cluster>/journal.jsonl`.
//!
//! The planner re-plans from a fresh observation after an interruption, so completed steps
//! whose effect is visible on the hosts are not repeated; the journal keeps what cannot be
//! observed (a fencing command that succeeded, replays done) and the history operators read.

use std::fs::File;

use std::path::{Path, PathBuf};

use jiff::Timestamp;

pub use crate::plan::history::{Phase, Record, context, fences_seen_back};

/// The journal of one cluster.
pub struct Journal {
    state_dir: PathBuf,
    path: PathBuf,
    file: File,
    pub run: String,
}

impl Journal {
    /// Open (create) the journal of `cluster` under `state_dir`.
    pub fn open(state_dir: &Path, cluster: &str) -> std::io::Result<Journal> {
        let dir = state_dir.join(cluster);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("journal.jsonl");
        let file = open_append(&path)?;
        // unique per open, also for a controller that applies twice within a second
        static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let run = format!(
            "{}-{}-{n}",
            Timestamp::now().as_second(),
            std::process::id()
        );
        Ok(Journal {
            state_dir: state_dir.to_owned(),
            path,
            file,
            run,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state directory this journal lives in.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Append one record and make it durable before returning.
    pub fn record(
        &mut self,
        action: &str,
        phase: Phase,
        detail: Option<String>,
    ) -> std::io::Result<()> {
        self.write(Record {
            at: Timestamp::now(),
            run: self.run.clone(),
            action: action.to_owned(),
            phase,
            detail,
            done: None,
        })
    }

    /// Record a completed action with its content, except the queue ids of a purge or a
    /// drop of queued deliveries: the history never reads them, the plan lists them, and
    /// kept they would make the journal (read on every run) grow by every copy ever purged.
    /// The detail keeps their number.
    pub fn record_done(&mut self, a: &crate::plan::Action) -> std::io::Result<()> {
        use crate::plan::ActionKind;
        let mut done = a.clone();
        let detail = match &mut done.kind {
            ActionKind::PurgeArchive { queue_ids, .. }
            | ActionKind::DropQueued { queue_ids, .. } => {
                let n = queue_ids.len();
                *queue_ids = Vec::new();
                Some(format!(
                    "{n} queue id(s), listed in the plan, not kept in the journal"
                ))
            }
            _ => None,
        };
        self.write(Record {
            at: Timestamp::now(),
            run: self.run.clone(),
            action: a.id.clone(),
            phase: Phase::Done,
            detail,
            done: Some(done),
        })
    }

    fn write(&mut self, r: Record) -> std::io::Result<()> {
        super::lines::append(&mut self.file, &r)
    }

    /// Every record so far. A line that is torn (a crash mid-write), corrupted or not a
    /// record is skipped with a warning; the records after it are read.
    pub fn read(state_dir: &Path, cluster: &str) -> Vec<Record> {
        let path = state_dir.join(cluster).join("journal.jsonl");
        match super::lines::read::<Record>(&path) {
            Ok(Some((records, bad))) => {
                if bad > 0 {
                    tracing::warn!(journal = %path.display(), skipped = bad, "journal lines skipped (torn or corrupted)");
                }
                records
            }
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!(journal = %path.display(), error = %e, "cannot read the journal");
                Vec::new()
            }
        }
    }
}

pub use super::lines::open_append;

/// The default state directory: `$SPOOLKEEPER_STATE_DIR`, else `$XDG_STATE_HOME/spoolkeeper`,
/// else `~/.local/state/spoolkeeper`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SPOOLKEEPER_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("spoolkeeper");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/var/lib"), PathBuf::from);
    home.join(".local/state/spoolkeeper")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;

    #[test]
    fn a_purge_is_journaled_without_its_queue_ids() {
        use crate::plan::{Action, ActionKind, Target};
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), "c").unwrap();
        let purge = Action::new(
            Target::Archive,
            ActionKind::PurgeArchive {
                instance: "students".into(),
                queue_ids: (0..1000).map(|k| format!("Q{k}").into()).collect(),
                watermark: "w".into(),
            },
            "r",
        );
        let hold = Action::new(
            Target::Node("node-a".into()),
            ActionKind::Hold {
                dataset: "zdata/imap/students".into(),
                snapshot: "sk_1".into(),
            },
            "r",
        );
        j.record_done(&purge).unwrap();
        j.record_done(&hold).unwrap();
        let rs = Journal::read(dir.path(), "c");
        match &rs[0].done.as_ref().unwrap().kind {
            ActionKind::PurgeArchive { queue_ids, .. } => assert!(queue_ids.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(
            rs[0]
                .detail
                .as_deref()
                .unwrap()
                .starts_with("1000 queue id(s)")
        );
        // every other action keeps its content: the history is rebuilt from it
        assert_eq!(rs[1].done.as_ref(), Some(&hold));
        assert!(
            std::fs::metadata(dir.path().join("c/journal.jsonl"))
                .unwrap()
                .len()
                < 2000
        );
    }

    #[test]
    fn records_survive_reopening_and_torn_lines_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), "c").unwrap();
        j.record("a", Phase::Start, None).unwrap();
        j.record("a", Phase::Done, Some("ok".into())).unwrap();
        drop(j);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("c/journal.jsonl"))
            .unwrap();
        f.write_all(b"{\"at\":\"2026-").unwrap();
        let rs = Journal::read(dir.path(), "c");
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[1].phase, Phase::Done);
        assert_eq!(rs[1].detail.as_deref(), Some("ok"));
        // the record written after a torn line is not swallowed by it
        let mut j = Journal::open(dir.path(), "c").unwrap();
        j.record("b", Phase::Start, None).unwrap();
        let rs = Journal::read(dir.path(), "c");
        assert_eq!(rs.len(), 3);
        assert_eq!(rs[2].action, "b");
        // a line that is not UTF-8 hides nothing after it (the reader stopped there before)
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("c/journal.jsonl"))
            .unwrap();
        f.write_all(b"\xff\xfe\n").unwrap();
        let mut j = Journal::open(dir.path(), "c").unwrap();
        j.record("c", Phase::Start, None).unwrap();
        let rs = Journal::read(dir.path(), "c");
        assert_eq!(rs.len(), 4);
        assert_eq!(rs[3].action, "c");
    }
}
