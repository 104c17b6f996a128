//! The replay ledger: `<state_dir>/<cluster>/replayed.jsonl` on the controller, one JSON line
//! per (archive queue id, recipient) the serving node accepted with `250`, fsync'd before the
//! next message is sent (docs/DOMAIN.md guarantee 2). Each entry names the copy incarnation it
//! was replayed into (`crate::decide::restore::replay_scope`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The replay ledger's file name under `<state_dir>/<cluster>/`.
pub const LEDGER_FILE: &str = "replayed.jsonl";

/// One ledger line: a (held copy, recipient) the active node accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// When the `250` came.
    pub at: Timestamp,
    /// Instance.
    pub instance: String,
    /// Queue id on the archive host.
    pub queue_id: String,
    /// The original recipient.
    pub recipient: String,
    /// Message-ID, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The active node's queue id for the re-injected message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_as: Option<String>,
    /// The node it was replayed into. A replay into another node (a later failover) does
    /// not count it: that copy may never have received it. Entries without one (older
    /// ledgers) count for every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The ledger of one cluster: `<state_dir>/<cluster>/replayed.jsonl`.
pub struct Ledger {
    pub(crate) path: PathBuf,
    file: Option<File>,
    /// Instance → the [`replay_scope`](crate::decide::restore::replay_scope) of the copy replayed into (recorded with each entry).
    scopes: BTreeMap<String, String>,
}

impl Ledger {
    /// Where the ledger of `cluster` lives.
    pub fn path(state_dir: &Path, cluster: &str) -> PathBuf {
        state_dir.join(cluster).join(LEDGER_FILE)
    }

    /// Every (queue id, recipient) replayed so far, and how many lines did not parse (a torn
    /// last line after a crash mid-write; a line that is not one of ours). A missing file is an
    /// empty ledger; an unreadable one is an error (replaying without it could duplicate).
    pub fn read(path: &Path) -> Result<(BTreeSet<(String, String)>, usize), String> {
        Self::read_for(path, None)
    }

    /// [`Ledger::read`], counting only what was replayed into `node` (and entries that name no
    /// node); `None`: everything.
    pub fn read_for(
        path: &Path,
        node: Option<&str>,
    ) -> Result<(BTreeSet<(String, String)>, usize), String> {
        Self::read_where(path, |e| match (node, e.node.as_deref()) {
            (Some(want), Some(n)) => want == n,
            _ => true,
        })
    }

    /// [`Ledger::read`], counting only the entries a replay into these copies must respect:
    /// per instance, those recorded for its copy's [`replay_scope`](crate::decide::restore::replay_scope) (and entries that name no
    /// node, from older ledgers).
    pub fn read_scoped(
        path: &Path,
        scopes: &BTreeMap<String, String>,
    ) -> Result<(BTreeSet<(String, String)>, usize), String> {
        Self::read_where(path, |e| {
            match (scopes.get(&e.instance), e.node.as_deref()) {
                (Some(want), Some(n)) => want == n,
                _ => true,
            }
        })
    }

    fn read_where(
        path: &Path,
        keep: impl Fn(&LedgerEntry) -> bool,
    ) -> Result<(BTreeSet<(String, String)>, usize), String> {
        let (entries, bad) = match super::lines::read::<LedgerEntry>(path) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok((BTreeSet::new(), 0)),
            Err(e) => {
                return Err(format!(
                    "cannot read the replay ledger {}: {e}",
                    path.display()
                ));
            }
        };
        let set = entries
            .into_iter()
            .filter(|e| keep(e))
            .map(|e| (e.queue_id, e.recipient))
            .collect();
        Ok((set, bad))
    }

    /// The ledger of `cluster`, opened lazily on the first record (a dry run never creates it).
    pub fn new(state_dir: &Path, cluster: &str) -> Ledger {
        Ledger {
            path: Self::path(state_dir, cluster),
            file: None,
            scopes: BTreeMap::new(),
        }
    }

    /// The copies replayed into, per instance ([`replay_scope`](crate::decide::restore::replay_scope)).
    pub fn with_scopes(mut self, scopes: BTreeMap<String, String>) -> Ledger {
        self.scopes = scopes;
        self
    }

    /// What an entry of `instance` replayed into `node` records as its node.
    pub fn scope_of(&self, instance: &str, node: &str) -> String {
        self.scopes
            .get(instance)
            .cloned()
            .unwrap_or_else(|| node.to_owned())
    }

    /// Append one entry and make it durable (data and, on creation, the directory entry)
    /// before returning.
    pub fn record(&mut self, e: &LedgerEntry) -> std::io::Result<()> {
        if self.file.is_none() {
            self.file = Some(super::lines::open_append(&self.path)?);
        }
        let Some(f) = self.file.as_mut() else {
            return Err(std::io::Error::other("ledger not open"));
        };
        super::lines::append(f, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::restore::tests::{set, ts};
    use std::io::Write;

    #[test]
    fn the_ledger_is_durable_append_only_and_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = Ledger::path(dir.path(), "lab");
        assert_eq!(Ledger::read(&path).unwrap(), (BTreeSet::new(), 0));
        let entry = |q: &str, r: &str| LedgerEntry {
            at: ts(0),
            instance: "students".into(),
            queue_id: q.into(),
            recipient: r.into(),
            message_id: None,
            queued_as: Some("X1".into()),
            node: Some("node-a".into()),
        };
        let mut l = Ledger::new(dir.path(), "lab");
        l.record(&entry("Q1", "a@students.lab")).unwrap();
        drop(l);
        let mut l = Ledger::new(dir.path(), "lab");
        l.record(&entry("Q2", "b@students.lab")).unwrap();
        drop(l);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"at\":\"2027-").unwrap();
        drop(f);
        let (got, bad) = Ledger::read(&path).unwrap();
        assert_eq!(
            got,
            set(&[("Q1", "a@students.lab"), ("Q2", "b@students.lab")])
        );
        assert_eq!(bad, 1);
        // what was replayed into node-a does not count for a replay into node-b (a second
        // failover: node-b's copy never received it); entries naming no node count anywhere
        assert_eq!(Ledger::read_for(&path, Some("node-a")).unwrap().0, got,);
        assert!(
            Ledger::read_for(&path, Some("node-b"))
                .unwrap()
                .0
                .is_empty()
        );
        let mut legacy = entry("Q3", "c@students.lab");
        legacy.node = None;
        Ledger::new(dir.path(), "lab").record(&legacy).unwrap();
        assert_eq!(
            Ledger::read_for(&path, Some("node-b")).unwrap().0,
            set(&[("Q3", "c@students.lab")])
        );
        // an unreadable ledger (here: a directory) is an error, never an empty one
        std::fs::create_dir_all(dir.path().join("x").join(LEDGER_FILE)).unwrap();
        assert!(Ledger::read(&Ledger::path(dir.path(), "x")).is_err());
    }
}
