//! The observed model: what spoolkeeper saw on the hosts, as plain serialisable values.
//!
//! Pure data: no I/O here. Adapters build these values from command output; the planner
//! reads them. Times are UTC instants (`jiff::Timestamp`), already corrected to the
//! controller's clock where a host clock offset is known.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One ZFS snapshot of a dataset, as listed by `zfs get -Hp -r`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The part after `@`.
    pub name: String,
    /// The snapshot's `guid` property: identical on both sides of a send/receive, which is
    /// how replicas are matched (names can collide, guids do not).
    pub guid: u64,
    /// The `creation` property (seconds precision).
    pub creation: Timestamp,
    /// `createtxg`, where the host reports it; orders snapshots created in the same second.
    pub createtxg: Option<u64>,
    /// `userrefs`: the number of holds on it. A held snapshot is never destroyed.
    pub userrefs: u32,
    /// `used`, bytes.
    pub used: u64,
    /// `written`: bytes written between the previous snapshot and this one, where the host
    /// reports it (OpenZFS; zfs-fuse has no such property).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<u64>,
}

/// Everything one `observe` run saw, keyed by node name. Stable JSON: field names are part of
/// the user contract of `observe --output json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// When the controller started observing (controller clock).
    pub observed_at: Timestamp,
    /// One entry per node of the spec, in name order.
    pub nodes: BTreeMap<String, NodeObservation>,
    /// The archive (BCC) host, when the spec names one.
    pub archive: Option<ArchiveObservation>,
}

/// Whether a host answered, and if not, why: the planner decides between switchover and
/// failover on this, so an unreachable host is data, never an error that stops the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reachability {
    /// The host answered commands.
    Reachable,
    /// The host could not be reached or refused us.
    Unreachable {
        /// The class of failure, for the planner and for monitoring.
        kind: UnreachableKind,
        /// The human message (from ssh or the transport).
        message: String,
    },
}

impl Reachability {
    /// True when commands can be run on the host.
    pub fn is_reachable(&self) -> bool {
        matches!(self, Reachability::Reachable)
    }
}

/// Why a host is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnreachableKind {
    /// No answer within the connect timeout (host down, link cut, filtered).
    Timeout,
    /// The TCP connection was refused (host up, no sshd).
    Refused,
    /// The server rejected our credentials.
    Auth,
    /// The server's host key is unknown or does not match known_hosts. Never accepted.
    HostKey,
    /// Name resolution failed.
    Resolve,
    /// Anything else (the message says what).
    Other,
}

/// Which ZFS implementation a host runs: they differ in what the planner may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZfsFlavour {
    /// The FUSE port (pool version 23): no `list -p`, no resume tokens, no bookmarks, no
    /// comma batch destroy, `zfs holds` broken on Debian (missing pyzfs).
    ZfsFuse,
    /// OpenZFS (FreeBSD ≥ 13, Linux), or the older FreeBSD ZFS with feature flags.
    OpenZfs,
}

/// What the host's `zfs` can do. Each flag is decided from command output, never assumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZfsCapabilities {
    /// The implementation.
    pub flavour: ZfsFlavour,
    /// Version string where the host reports one (`zfs version`, OpenZFS ≥ 0.8).
    pub version: Option<String>,
    /// `zfs list -p` (exact numbers in `list`).
    pub list_p: bool,
    /// The `receive_resume_token` property (resumable `zfs receive -s`).
    pub resume_tokens: bool,
    /// `zfs bookmark`.
    pub bookmarks: bool,
    /// `zfs destroy pool/ds@a,b,c` (comma batch destroy) and `zfs destroy -n`.
    pub batch_destroy: bool,
    /// `zfs holds` works (on zfs-fuse it fails; only `userrefs` is available there).
    pub holds_list: bool,
}

/// What the host's Postfix is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostfixCapabilities {
    /// `mail_version`, e.g. `3.7.11`.
    pub version: String,
    /// `postqueue -j` (JSON lines), Postfix ≥ 3.1.
    pub postqueue_json: bool,
}

/// Which jail runtime commands exist on the host (`$PATH` of the SSH session).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailCommands {
    /// `ezjail-admin`.
    pub ezjail_admin: bool,
    /// `jls`.
    pub jls: bool,
    /// `jexec`.
    pub jexec: bool,
}

/// Stream compressors on a host's `PATH`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compressors {
    pub zstd: bool,
    pub lz4: bool,
}

/// Capabilities detected once per host per run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// `None` when the host has no usable `zfs` command.
    pub zfs: Option<ZfsCapabilities>,
    /// `None` when the host has no usable `postconf`.
    pub postfix: Option<PostfixCapabilities>,
    /// Jail runtime commands present.
    pub jail: JailCommands,
    /// Stream compressors present (`zstd`, `lz4`): a replication compresses on the wire only
    /// when both ends have one.
    #[serde(default)]
    pub compressors: Compressors,
    /// Host clock minus controller clock, milliseconds, measured around one remote `date`
    /// call (error bound: half the round trip, reported alongside).
    pub clock_offset_ms: Option<i64>,
    /// Half the round trip of the clock measurement, ms: the offset's uncertainty.
    pub clock_uncertainty_ms: Option<i64>,
}

/// The kind of a ZFS dataset (snapshots are listed under their dataset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// A filesystem.
    Filesystem,
    /// A zvol.
    Volume,
    /// Anything else the host printed (kept verbatim).
    Other(String),
}

/// One dataset (filesystem or volume) with the properties the planner needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    /// Full name, `pool/path`.
    pub name: String,
    /// `type`.
    pub kind: DatasetKind,
    /// `creation`.
    pub creation: Option<Timestamp>,
    /// `guid`.
    pub guid: Option<u64>,
    /// `used`, bytes.
    pub used: Option<u64>,
    /// `readonly`.
    pub readonly: Option<bool>,
    /// `mounted`.
    pub mounted: Option<bool>,
    /// `mountpoint` (`none`/`legacy` kept verbatim).
    pub mountpoint: Option<String>,
    /// `createtxg`.
    pub createtxg: Option<u64>,
    /// `receive_resume_token`, only where the host supports it and a receive was interrupted.
    pub receive_resume_token: Option<String>,
    /// User properties in the `spoolkeeper:` namespace that are set (value not `-`).
    pub user_properties: BTreeMap<String, String>,
    /// Any other property asked for, verbatim (`-` means not applicable, dropped).
    pub other_properties: BTreeMap<String, String>,
    /// Snapshots, oldest first (ordered by createtxg, then creation).
    pub snapshots: Vec<Snapshot>,
}

/// Run state of an instance's jail (or exec service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Serving.
    Running,
    /// Not running.
    Stopped,
    /// Could not be decided (the detail says why).
    Unknown,
}

/// State of one instance on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceState {
    /// Running, stopped or unknown.
    pub state: RunState,
    /// The runtime's own words (ezjail status letters, jid, exit status, error).
    pub detail: Option<String>,
    /// ezjail `norun` flag (the jail is not started at boot); `None` when not ezjail.
    pub norun: Option<bool>,
}

/// A Postfix queue id. Inline up to 24 bytes (every Postfix queue id, short or long), so a
/// listing of a million held copies allocates nothing per id.
pub type QueueId = compact_str::CompactString;

/// One recipient of a queued message. The strings are shared: a listing of a million copies
/// for forty thousand mailboxes holds each address once (see [`QueueEntry`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueueRecipient {
    /// Envelope recipient.
    pub address: Arc<str>,
    /// Why delivery was deferred, where Postfix says.
    pub delay_reason: Option<Arc<str>>,
}

impl QueueRecipient {
    /// A recipient without a delay reason.
    pub fn to(address: &str) -> QueueRecipient {
        QueueRecipient {
            address: address.into(),
            delay_reason: None,
        }
    }
}

/// The queue a message is in, as `postqueue -j` names it (`maildrop`, `incoming`, `active`,
/// `deferred`, `hold`; any other name is kept verbatim). Compares with a `&str`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QueueName {
    /// `maildrop`.
    Maildrop,
    /// `incoming`.
    Incoming,
    /// `active`.
    Active,
    /// `deferred`.
    Deferred,
    /// `hold`.
    Hold,
    /// Any other name, verbatim.
    Other(Box<str>),
}

impl QueueName {
    /// The name as Postfix prints it.
    pub fn as_str(&self) -> &str {
        match self {
            QueueName::Maildrop => "maildrop",
            QueueName::Incoming => "incoming",
            QueueName::Active => "active",
            QueueName::Deferred => "deferred",
            QueueName::Hold => "hold",
            QueueName::Other(s) => s,
        }
    }
}

impl From<&str> for QueueName {
    fn from(s: &str) -> QueueName {
        match s {
            "maildrop" => QueueName::Maildrop,
            "incoming" => QueueName::Incoming,
            "active" => QueueName::Active,
            "deferred" => QueueName::Deferred,
            "hold" => QueueName::Hold,
            other => QueueName::Other(other.into()),
        }
    }
}

impl PartialEq<str> for QueueName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for QueueName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for QueueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for QueueName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for QueueName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<QueueName, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(QueueName::from(s.as_ref()))
    }
}

/// One message in a Postfix queue (`postqueue -j`). About 100 bytes and no allocation of its
/// own: the id is inline, the sender and the recipient list are shared with every other entry
/// that has the same ones ([`crate::adapters::postfix::QueueReader`] interns them), so the
/// archive's hold queue of a million copies fits in about 100 MB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The queue it is in.
    pub queue_name: QueueName,
    /// The queue id.
    pub queue_id: QueueId,
    /// When Postfix accepted it.
    pub arrival_time: Timestamp,
    /// Bytes.
    pub message_size: u64,
    /// `postsuper -f` was applied.
    pub forced_expire: bool,
    /// Envelope sender (`MAILER-DAEMON` for the null sender, as Postfix prints it).
    pub sender: Arc<str>,
    /// Recipients not yet delivered.
    pub recipients: Arc<[QueueRecipient]>,
}

/// What one host's Postfix looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostfixObservation {
    /// The parameters asked for, as `postconf` prints them.
    pub settings: BTreeMap<String, String>,
    /// The queue (all queues; filter by `queue_name`).
    pub queue: Vec<QueueEntry>,
    /// spoolkeeper's own tables in `config_directory`, by file name, when they exist.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

/// One node as observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeObservation {
    /// Reachable, or why not. When unreachable, everything below is empty.
    pub reachability: Reachability,
    /// Detected capabilities.
    pub capabilities: Capabilities,
    /// Datasets asked for, their descendants, and their snapshots, in listing order.
    pub datasets: Vec<Dataset>,
    /// Datasets asked for that do not exist on the host.
    pub missing_datasets: Vec<String>,
    /// Instance name → state.
    pub instances: BTreeMap<String, InstanceState>,
    /// Postfix on the node, when asked for.
    pub postfix: Option<PostfixObservation>,
    /// The own Postfix of each instance whose mail runs in its runtime (`mail.in: runtime`),
    /// by instance name, where it answered (a stopped jail's Postfix cannot be asked).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub instance_postfix: BTreeMap<String, PostfixObservation>,
    /// Commands that failed while the host was reachable (the observation is partial).
    pub errors: Vec<String>,
    /// spoolkeeper's scratch clones on the node (a running or crashed `restore` or `drill`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scratch: Vec<ScratchClone>,
}

/// A clone `restore` or `drill` made (marked with the `spoolkeeper:scratch` property,
/// `PURPOSE:STAMP:DATASET@SNAPSHOT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScratchClone {
    /// The clone's dataset name.
    pub name: String,
    /// `restore` or `drill`.
    pub purpose: String,
    /// When it was made (from its stamp), if it parses.
    pub since: Option<Timestamp>,
    /// The dataset it was cloned from.
    pub origin_dataset: String,
    /// The snapshot it was cloned from (it cannot be destroyed while the clone exists).
    pub origin_snapshot: String,
}

impl NodeObservation {
    /// An unreachable node: nothing else known.
    pub fn unreachable(kind: UnreachableKind, message: impl Into<String>) -> Self {
        NodeObservation {
            reachability: Reachability::Unreachable {
                kind,
                message: message.into(),
            },
            capabilities: Capabilities::default(),
            datasets: Vec::new(),
            missing_datasets: Vec::new(),
            instances: BTreeMap::new(),
            postfix: None,
            instance_postfix: BTreeMap::new(),
            errors: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// The Postfix a mail system reference names: the node's (`None`), or the own Postfix of
    /// the instance `Some(name)`.
    pub fn postfix_of(&self, mail: Option<&str>) -> Option<&PostfixObservation> {
        match mail {
            None => self.postfix.as_ref(),
            Some(i) => self.instance_postfix.get(i),
        }
    }

    /// [`Self::postfix_of`], mutable (the planner's promised effects).
    pub fn postfix_of_mut(&mut self, mail: Option<&str>) -> Option<&mut PostfixObservation> {
        match mail {
            None => self.postfix.as_mut(),
            Some(i) => self.instance_postfix.get_mut(i),
        }
    }

    /// The dataset with this full name, if listed.
    pub fn dataset(&self, name: &str) -> Option<&Dataset> {
        self.datasets.iter().find(|d| d.name == name)
    }
}

/// The archive host as observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveObservation {
    /// Reachable, or why not.
    pub reachability: Reachability,
    /// Detected capabilities (Postfix, clock).
    pub capabilities: Capabilities,
    /// Postfix settings and queue; the held messages are `queue_name == "hold"`.
    pub postfix: Option<PostfixObservation>,
    /// Commands that failed while the host was reachable.
    pub errors: Vec<String>,
}

impl ArchiveObservation {
    /// An unreachable archive host: nothing else known.
    pub fn unreachable(kind: UnreachableKind, message: impl Into<String>) -> Self {
        ArchiveObservation {
            reachability: Reachability::Unreachable {
                kind,
                message: message.into(),
            },
            capabilities: Capabilities::default(),
            postfix: None,
            errors: Vec::new(),
        }
    }
}

impl PostfixObservation {
    /// The messages in the hold queue.
    pub fn held(&self) -> impl Iterator<Item = &QueueEntry> {
        self.queue.iter().filter(|e| e.queue_name == "hold")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reachability_json_is_tagged_and_stable() {
        let r = Reachability::Unreachable {
            kind: UnreachableKind::HostKey,
            message: "host key mismatch".into(),
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            r#"{"status":"unreachable","kind":"host_key","message":"host key mismatch"}"#
        );
        let back: Reachability = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            serde_json::to_string(&Reachability::Reachable).unwrap(),
            r#"{"status":"reachable"}"#
        );
    }

    #[test]
    fn node_roundtrips_through_json() {
        let mut n = NodeObservation::unreachable(UnreachableKind::Timeout, "no answer in 5s");
        n.instances.insert(
            "students".into(),
            InstanceState {
                state: RunState::Unknown,
                detail: Some("host unreachable".into()),
                norun: None,
            },
        );
        let j = serde_json::to_string(&n).unwrap();
        let back: NodeObservation = serde_json::from_str(&j).unwrap();
        assert_eq!(back, n);
    }
}
