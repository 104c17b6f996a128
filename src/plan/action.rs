//! Typed actions: what a plan asks a host to do, with the reason why.
//!
//! An action names *what* in typed fields; the exact argv is built by the adapter that owns
//! the command (`zfs`, `jail`, …) when the executor runs it, and the renderers print the
//! same argv, so what the plan shows is what runs.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Where an action runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "name", rename_all = "snake_case")]
pub enum Target {
    /// A node of the spec.
    Node(String),
    /// The archive host.
    Archive,
    /// The controller itself (fencing commands, relay transfers).
    Controller,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Node(n) => f.write_str(n),
            Target::Archive => f.write_str("archive"),
            Target::Controller => f.write_str("controller"),
        }
    }
}

/// How an action changes the world, for the `+`/`~`/`-` markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Brings something into existence or into service.
    Create,
    /// Changes something in place.
    Change,
    /// Removes something or takes it out of service.
    Remove,
}

impl Effect {
    pub fn marker(self) -> char {
        match self {
            Effect::Create => '+',
            Effect::Change => '~',
            Effect::Remove => '-',
        }
    }
}

/// What to do. Each variant's fields are its arguments (JSON `args`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "args", rename_all = "snake_case")]
pub enum ActionKind {
    /// `zfs create -p` the instance dataset with its properties.
    CreateDataset {
        dataset: String,
        properties: BTreeMap<String, String>,
    },
    /// `zfs set` properties that drifted from the spec.
    SetProperties {
        dataset: String,
        properties: BTreeMap<String, String>,
    },
    /// `zfs set readonly=on|off`.
    SetReadonly { dataset: String, readonly: bool },
    /// `zfs mount`.
    Mount { dataset: String },
    /// `zfs unmount`.
    Unmount { dataset: String },
    /// Start the instance's jail (or exec service) on the target node.
    StartInstance { instance: String },
    /// Stop the instance's jail (or exec service) on the target node.
    StopInstance { instance: String },
    /// `zfs snapshot dataset@name`. `backlog` is the spool's queue for the instance at that
    /// moment: what the archive watermark needs to know before purging copies.
    Snapshot {
        dataset: String,
        name: String,
        #[serde(default)]
        backlog: crate::decide::archive::SpoolBacklog,
    },
    /// Write a file (atomically: a temporary file renamed over it), e.g. a Postfix table.
    WriteFile { path: String, content: String },
    /// `postconf -e k=v …` then `postfix reload` (only planned when something changed).
    Postconf {
        settings: BTreeMap<String, String>,
        reload: bool,
    },
    /// Run the spec's fencing command for a node (on the controller): proof that the node
    /// can never serve again until it is reconciled.
    Fence { node: String },
    /// A node fenced earlier is reachable again: that fence proves nothing any more (a later
    /// failover must fence it again). Journal-only, no command.
    ForgetFence { node: String },
    /// Check that a snapshot has the same guid on both sides (after a switchover's send).
    VerifyGuid {
        source: String,
        source_dataset: String,
        target: String,
        target_dataset: String,
        snapshot: String,
    },
    /// `zfs rollback [-r] dataset@snapshot`: to the newest complete snapshot on a promoted
    /// replica (destroys nothing), or to the common base on a returning node after its
    /// writes were preserved (`-r`: its later snapshots go, their data is in the saved delta).
    Rollback {
        dataset: String,
        snapshot: String,
        destroy_later: bool,
    },
    /// `zfs rename dataset to`: a returning copy that shares no snapshot with the serving one
    /// is set aside whole (nothing destroyed) so that a full copy can be received in its place.
    RenameDataset { dataset: String, to: String },
    /// `zfs receive -A dataset`: discard an interrupted receive before a promotion.
    AbortReceive { dataset: String },
    /// Set (or with `None`, clear) one of spoolkeeper's user properties on a dataset, e.g.
    /// `spoolkeeper:resync`, the durable record that a node must be resynced.
    SetUserProperty {
        dataset: String,
        property: String,
        value: Option<String>,
    },
    /// Save a returning node's writes since the common base: snapshot `snapshot` is sent as
    /// an incremental stream from `base` into `file` on that node, before any rollback.
    PreserveDelta {
        dataset: String,
        base: String,
        snapshot: String,
        file: String,
    },
    /// Replay archived mail into the node that serves the instance, exactly once. The window
    /// starts at `anchor`, the snapshot the serving copy was known to hold everything up to
    /// when the service moved (recorded on the dataset before anything changed); without an
    /// anchor, at the newest snapshot of the serving copy.
    ArchRestore {
        instance: String,
        /// The node replayed into (default: the spec's active node).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        anchor: Option<String>,
    },
    /// Wait until the node's Postfix has delivered every queued message for the instance's
    /// domains (bounded: fails when it does not happen in time). A switchover waits for it
    /// between the stop and the final snapshot.
    WaitDelivered {
        instance: String,
        domains: Vec<String>,
    },
    /// Delete a node's queued deliveries of an instance that a replay covered (its copy no
    /// longer serves; delivering them later would duplicate them): `postsuper -d -`.
    DropQueued {
        instance: String,
        queue_ids: Vec<crate::model::QueueId>,
    },
    /// `postqueue -f`: a returning node hands its queued archive copies to the archive host.
    FlushQueue,
    /// Poll the node's queue (`postqueue -j`) until none of `queue_ids` still holds an
    /// archive copy of the instance (they reached the archive host): a replay reads the
    /// archive only after. Fails after a minute (the archive host is away): the replay that
    /// depends on it is not attempted and stays owed.
    WaitArchived {
        instance: String,
        queue_ids: Vec<crate::model::QueueId>,
    },
    /// Delete held copies from the archive host's hold queue (`postsuper -d - hold`): only
    /// copies proven to be in the replica (before the watermark minus the margin).
    PurgeArchive {
        instance: String,
        queue_ids: Vec<crate::model::QueueId>,
        watermark: String,
    },
    /// Send `source_dataset@to` (incrementally from `base` with `-I` when given) from node
    /// `source` to node `target`, received unmounted (`-u`) under the target's pool (`-d`).
    /// Runs on the source node (`direct`) or on the controller (`relay`).
    Replicate {
        instance: String,
        source: String,
        source_dataset: String,
        target: String,
        target_pool: String,
        target_dataset: String,
        base: Option<String>,
        to: String,
        relay: bool,
        /// Resume an interrupted receive (`zfs send -t`), where the hosts support it.
        resume_token: Option<String>,
        /// Receive with `-s` (resumable) where the target supports it.
        resumable: bool,
        /// Compress the stream on the wire (both ends have the tool; `replication.compress`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compress: Option<crate::adapters::zfs::Compressor>,
    },
    /// `zfs hold spoolkeeper dataset@snapshot`: nothing can destroy the replication base.
    Hold { dataset: String, snapshot: String },
    /// `zfs release spoolkeeper dataset@snapshot`: the base moved on.
    Release { dataset: String, snapshot: String },
    /// Tear down a scratch clone of `restore` or `drill` (`stop`: the drill copy's stop argv,
    /// run first), then `zfs destroy` it: before a promotion of its instance (the service moves;
    /// a failover never waits on a rehearsal), or when it is stale (its run died).
    TeardownScratch {
        clone: String,
        origin_dataset: String,
        /// The instance whose drill copy serves from the clone (its drill block's `stop`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        drill: Option<String>,
    },
    /// Destroy snapshots the retention policy owns and no longer keeps. `batch` is the
    /// host's comma syntax support: one command for all, else one per snapshot.
    DestroySnapshots {
        dataset: String,
        snapshots: Vec<String>,
        batch: bool,
    },
}

impl ActionKind {
    /// The stable machine name (`create_dataset`, …).
    pub fn name(&self) -> &'static str {
        match self {
            ActionKind::CreateDataset { .. } => "create_dataset",
            ActionKind::SetProperties { .. } => "set_properties",
            ActionKind::SetReadonly { .. } => "set_readonly",
            ActionKind::Mount { .. } => "mount",
            ActionKind::Unmount { .. } => "unmount",
            ActionKind::StartInstance { .. } => "start_instance",
            ActionKind::StopInstance { .. } => "stop_instance",
            ActionKind::Snapshot { .. } => "snapshot",
            ActionKind::WriteFile { .. } => "write_file",
            ActionKind::Postconf { .. } => "postconf",
            ActionKind::PurgeArchive { .. } => "purge_archive",
            ActionKind::Fence { .. } => "fence",
            ActionKind::ForgetFence { .. } => "forget_fence",
            ActionKind::VerifyGuid { .. } => "verify_guid",
            ActionKind::Rollback { .. } => "rollback",
            ActionKind::AbortReceive { .. } => "abort_receive",
            ActionKind::RenameDataset { .. } => "rename_dataset",
            ActionKind::SetUserProperty { .. } => "set_user_property",
            ActionKind::PreserveDelta { .. } => "preserve_delta",
            ActionKind::ArchRestore { .. } => "arch_restore",
            ActionKind::DropQueued { .. } => "drop_queued",
            ActionKind::WaitDelivered { .. } => "wait_delivered",
            ActionKind::FlushQueue => "flush_queue",
            ActionKind::WaitArchived { .. } => "wait_archived",
            ActionKind::Replicate { .. } => "replicate",
            ActionKind::Hold { .. } => "hold",
            ActionKind::Release { .. } => "release",
            ActionKind::DestroySnapshots { .. } => "destroy_snapshots",
            ActionKind::TeardownScratch { .. } => "teardown_scratch",
        }
    }

    pub fn effect(&self) -> Effect {
        match self {
            ActionKind::CreateDataset { .. }
            | ActionKind::Mount { .. }
            | ActionKind::StartInstance { .. }
            | ActionKind::Snapshot { .. }
            | ActionKind::Replicate { .. }
            | ActionKind::Hold { .. }
            | ActionKind::PreserveDelta { .. }
            | ActionKind::ArchRestore { .. } => Effect::Create,
            ActionKind::VerifyGuid { .. }
            | ActionKind::ForgetFence { .. }
            | ActionKind::SetUserProperty { .. }
            | ActionKind::RenameDataset { .. }
            | ActionKind::FlushQueue
            | ActionKind::WaitDelivered { .. }
            | ActionKind::WaitArchived { .. } => Effect::Change,
            ActionKind::Fence { .. }
            | ActionKind::Rollback { .. }
            | ActionKind::AbortReceive { .. } => Effect::Remove,
            ActionKind::SetProperties { .. }
            | ActionKind::SetReadonly { .. }
            | ActionKind::WriteFile { .. }
            | ActionKind::Postconf { .. } => Effect::Change,
            ActionKind::Unmount { .. }
            | ActionKind::StopInstance { .. }
            | ActionKind::Release { .. }
            | ActionKind::DestroySnapshots { .. }
            | ActionKind::TeardownScratch { .. }
            | ActionKind::PurgeArchive { .. }
            | ActionKind::DropQueued { .. } => Effect::Remove,
        }
    }

    /// Does running it twice lose anything? Destructive actions are journaled and never
    /// repeated blindly after an interruption.
    pub fn destructive(&self) -> bool {
        matches!(
            self,
            ActionKind::DestroySnapshots { .. }
                | ActionKind::TeardownScratch { .. }
                | ActionKind::PurgeArchive { .. }
                | ActionKind::DropQueued { .. }
                | ActionKind::Rollback { .. }
                | ActionKind::AbortReceive { .. }
                | ActionKind::Fence { .. }
        )
    }

    /// One line for people: "create dataset zdata/imap/students (compression=lz4)".
    pub fn summary(&self) -> String {
        let props = |p: &BTreeMap<String, String>| {
            p.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            ActionKind::CreateDataset {
                dataset,
                properties,
            } if properties.is_empty() => format!("create dataset {dataset}"),
            ActionKind::CreateDataset {
                dataset,
                properties,
            } => format!("create dataset {dataset} ({})", props(properties)),
            ActionKind::SetProperties {
                dataset,
                properties,
            } => format!("set {} on {dataset}", props(properties)),
            ActionKind::SetReadonly { dataset, readonly } => format!(
                "set readonly={} on {dataset}",
                if *readonly { "on" } else { "off" }
            ),
            ActionKind::Mount { dataset } => format!("mount {dataset}"),
            ActionKind::Unmount { dataset } => format!("unmount {dataset}"),
            ActionKind::StartInstance { instance } => format!("start instance {instance}"),
            ActionKind::StopInstance { instance } => format!("stop instance {instance}"),
            ActionKind::Snapshot { dataset, name, .. } => format!("snapshot {dataset}@{name}"),
            ActionKind::WriteFile { path, content } => {
                format!("write {path} ({} lines)", content.lines().count())
            }
            ActionKind::Postconf { settings, reload } => format!(
                "postconf {}{}",
                settings
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                if *reload { ", then postfix reload" } else { "" }
            ),
            ActionKind::Fence { node } => format!("fence {node} (run the fencing command)"),
            ActionKind::ForgetFence { node } => {
                format!("forget the old fence of {node} (it is reachable again)")
            }
            ActionKind::VerifyGuid {
                source,
                target,
                snapshot,
                ..
            } => format!("verify that @{snapshot} has the same guid on {source} and {target}"),
            ActionKind::Rollback {
                dataset,
                snapshot,
                destroy_later,
            } => format!(
                "roll {dataset} back to @{snapshot}{}",
                if *destroy_later {
                    " (its later snapshots go; their data was saved first)"
                } else {
                    " (its newest snapshot: nothing is destroyed)"
                }
            ),
            ActionKind::AbortReceive { dataset } => {
                format!("discard the interrupted receive into {dataset}")
            }
            ActionKind::RenameDataset { dataset, to } => {
                format!("set {dataset} aside as {to} (kept whole)")
            }
            ActionKind::SetUserProperty {
                dataset,
                property,
                value,
            } => match value {
                Some(v) => format!("set {property}={v} on {dataset}"),
                None => format!("clear {property} on {dataset}"),
            },
            ActionKind::PreserveDelta {
                dataset,
                base,
                snapshot,
                file,
            } => format!(
                "save the writes of {dataset} since @{base} (snapshot @{snapshot}) to {file}"
            ),
            ActionKind::ArchRestore {
                instance,
                node,
                anchor,
            } => format!(
                "replay archived mail of {instance}{} {}, exactly once",
                node.as_ref()
                    .map(|n| format!(" into {n}"))
                    .unwrap_or_default(),
                match anchor {
                    Some(a) => format!("that @{a} may lack"),
                    None => "newer than the watermark".to_string(),
                }
            ),
            ActionKind::WaitDelivered { instance, .. } => {
                format!("wait until every queued message for {instance} is delivered here")
            }
            ActionKind::DropQueued {
                instance,
                queue_ids,
            } => format!(
                "delete {} queued deliver{} of {instance} that the replay covered",
                queue_ids.len(),
                if queue_ids.len() == 1 { "y" } else { "ies" }
            ),
            ActionKind::FlushQueue => "flush the Postfix queue (postqueue -f)".into(),
            ActionKind::WaitArchived {
                instance,
                queue_ids,
            } => format!(
                "wait until {} queued archive copie(s) of {instance} reached the archive host",
                queue_ids.len()
            ),
            ActionKind::PurgeArchive {
                instance,
                queue_ids,
                watermark,
            } => format!(
                "delete {} held copie(s) of {instance} from the archive ({watermark})",
                queue_ids.len()
            ),
            ActionKind::Replicate {
                source,
                source_dataset,
                target,
                target_dataset,
                base,
                to,
                relay,
                resume_token,
                ..
            } => format!(
                "replicate {source_dataset}@{to} {} from {source} to {target}:{target_dataset}{}",
                match (resume_token, base) {
                    (Some(_), _) => "(resuming an interrupted stream)".to_string(),
                    (None, Some(b)) => format!("(incremental from @{b})"),
                    (None, None) => "(full stream)".to_string(),
                },
                if *relay {
                    " through the controller"
                } else {
                    ""
                }
            ),
            ActionKind::Hold { dataset, snapshot } => {
                format!("hold {dataset}@{snapshot} (tag spoolkeeper)")
            }
            ActionKind::Release { dataset, snapshot } => {
                format!("release {dataset}@{snapshot} (tag spoolkeeper)")
            }
            ActionKind::DestroySnapshots {
                dataset, snapshots, ..
            } => format!(
                "destroy {} snapshot(s) of {dataset}: {}",
                snapshots.len(),
                snapshots.join(", ")
            ),
            ActionKind::TeardownScratch { clone, drill, .. } => format!(
                "tear down scratch clone {clone}{}",
                if drill.is_some() {
                    " (stop its drill copy, then destroy it)"
                } else {
                    " (destroy it)"
                }
            ),
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// Stable identity: the same step on the same object has the same id in every plan
    /// (`node-a:create_dataset:zdata/imap/students`). The journal is keyed by it.
    pub id: String,
    pub host: Target,
    #[serde(flatten)]
    pub kind: ActionKind,
    /// Why this step is needed, for the operator.
    pub reason: String,
    /// The instance whose own Postfix and Dovecot (`mail.in: runtime`) the commands run in;
    /// `None`: the host's. The argv go through `adapters::mail::MailPlace::wrap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<String>,
}

impl Action {
    /// The same step in an instance's own mail system (`None`: the host's, unchanged).
    pub fn in_mail(mut self, mail: Option<String>) -> Self {
        if let Some(m) = &mail
            && let [h, k, o] = self.id.splitn(3, ':').collect::<Vec<_>>()[..]
        {
            // `node:kind:object` → `node:kind:INSTANCE/object`: one id per Postfix
            self.id = format!("{h}:{k}:{m}/{o}");
        }
        self.mail = mail;
        self
    }

    pub fn new(host: Target, kind: ActionKind, reason: impl Into<String>) -> Self {
        let object = match &kind {
            ActionKind::CreateDataset { dataset, .. }
            | ActionKind::SetProperties { dataset, .. }
            | ActionKind::SetReadonly { dataset, .. }
            | ActionKind::Mount { dataset }
            | ActionKind::Unmount { dataset } => dataset.clone(),
            ActionKind::StartInstance { instance } | ActionKind::StopInstance { instance } => {
                instance.clone()
            }
            ActionKind::Snapshot { dataset, .. } | ActionKind::DestroySnapshots { dataset, .. } => {
                dataset.clone()
            }
            ActionKind::TeardownScratch { clone, .. } => clone.clone(),
            ActionKind::WriteFile { path, .. } => path.clone(),
            ActionKind::Postconf { .. } => "main.cf".into(),
            ActionKind::PurgeArchive { instance, .. }
            | ActionKind::ArchRestore { instance, .. }
            | ActionKind::DropQueued { instance, .. }
            | ActionKind::WaitDelivered { instance, .. }
            | ActionKind::WaitArchived { instance, .. } => instance.clone(),
            ActionKind::Fence { node } | ActionKind::ForgetFence { node } => node.clone(),
            ActionKind::VerifyGuid {
                target_dataset,
                snapshot,
                ..
            } => format!("{target_dataset}@{snapshot}"),
            ActionKind::Rollback { dataset, .. }
            | ActionKind::AbortReceive { dataset }
            | ActionKind::RenameDataset { dataset, .. }
            | ActionKind::PreserveDelta { dataset, .. } => dataset.clone(),
            ActionKind::SetUserProperty {
                dataset,
                property,
                value,
            } => match value {
                Some(_) => format!("{dataset}:{property}"),
                None => format!("{dataset}:{property}:clear"),
            },
            ActionKind::FlushQueue => "queue".into(),
            ActionKind::Replicate {
                source_dataset,
                target,
                ..
            } => format!("{source_dataset}->{target}"),
            ActionKind::Hold { dataset, snapshot } | ActionKind::Release { dataset, snapshot } => {
                format!("{dataset}@{snapshot}")
            }
        };
        Action {
            id: format!("{host}:{}:{object}", kind.name()),
            host,
            kind,
            reason: reason.into(),
            mail: None,
        }
    }
}

/// Something an action reads or changes. Two actions that touch the same object, one of
/// them changing it, are ordered by the graph builder (in planning order, unless one already
/// depends on the other), so no section of the planner can forget an edge.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Object {
    /// A dataset on a node (its snapshots, properties, mount and holds).
    Dataset { node: String, dataset: String },
    /// An instance's run state on a node.
    Instance { node: String, instance: String },
    /// Who may serve (write) an instance, cluster-wide: stops, read-only switches, starts.
    Service { instance: String },
    /// The cluster's fence proofs (nodes powered off by the fencing command).
    Fences,
    /// A host's Postfix configuration (or, with an instance, that instance's own Postfix).
    Postfix(Target, Option<String>),
    /// A host's Postfix queue (or, with an instance, that instance's own Postfix's).
    Queue(Target, Option<String>),
    /// The archive host's hold queue.
    ArchiveHold,
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Dataset { node, dataset } => write!(f, "dataset {node}:{dataset}"),
            Object::Instance { node, instance } => write!(f, "instance {instance} on {node}"),
            Object::Service { instance } => write!(f, "the service of {instance}"),
            Object::Fences => f.write_str("the fence proofs"),
            Object::Postfix(t, None) => write!(f, "the Postfix configuration of {t}"),
            Object::Postfix(t, Some(i)) => write!(f, "the Postfix configuration of {i} on {t}"),
            Object::Queue(t, None) => write!(f, "the Postfix queue of {t}"),
            Object::Queue(t, Some(i)) => write!(f, "the Postfix queue of {i} on {t}"),
            Object::ArchiveHold => f.write_str("the archive hold queue"),
        }
    }
}

/// How an action touches an [`Object`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Action {
    /// The objects this action reads or changes. `spec` resolves which instance a dataset
    /// belongs to.
    pub fn accesses(&self, spec: &crate::spec::Spec) -> Vec<(Object, Access)> {
        use Access::{Read, Write};
        let node = match &self.host {
            Target::Node(n) => n.clone(),
            _ => String::new(),
        };
        let ds = |node: &str, d: &str| Object::Dataset {
            node: node.to_owned(),
            dataset: d.to_owned(),
        };
        let service = |i: &str| Object::Service {
            instance: i.to_owned(),
        };
        let pool = spec
            .spec
            .nodes
            .iter()
            .find(|(n, _)| n.as_str() == node)
            .map(|(_, n)| n.pool.to_string());
        let own_mail = |i: &str| {
            spec.spec
                .instances
                .iter()
                .find(|(n, x)| n.as_str() == i && !x.mail.is_node())
                .map(|_| i.to_owned())
        };
        let instance_of = |d: &str| {
            let rel = d.strip_prefix(pool.as_deref()?)?.strip_prefix('/')?;
            spec.spec
                .instances
                .iter()
                .find(|(_, i)| i.dataset.as_str() == rel)
                .map(|(n, _)| n.to_string())
        };
        match &self.kind {
            ActionKind::CreateDataset { dataset, .. }
            | ActionKind::SetProperties { dataset, .. }
            | ActionKind::Snapshot { dataset, .. }
            | ActionKind::Rollback { dataset, .. }
            | ActionKind::AbortReceive { dataset }
            | ActionKind::SetUserProperty { dataset, .. }
            | ActionKind::PreserveDelta { dataset, .. }
            | ActionKind::Hold { dataset, .. }
            | ActionKind::Release { dataset, .. }
            | ActionKind::DestroySnapshots { dataset, .. } => vec![(ds(&node, dataset), Write)],
            // the clone itself; the planner orders it before every step on its origin copy
            ActionKind::TeardownScratch { clone, .. } => vec![(ds(&node, clone), Write)],
            ActionKind::Mount { dataset } | ActionKind::Unmount { dataset } => {
                // a mounted writable copy is one users can write: who serves changes
                let mut v = vec![(ds(&node, dataset), Write)];
                if let Some(i) = instance_of(dataset) {
                    v.push((service(&i), Write));
                }
                if matches!(self.kind, ActionKind::Mount { .. }) {
                    v.push((Object::Fences, Read));
                }
                v
            }
            ActionKind::RenameDataset { dataset, to } => {
                vec![(ds(&node, dataset), Write), (ds(&node, to), Write)]
            }
            ActionKind::SetReadonly { dataset, readonly } => {
                let mut v = vec![(ds(&node, dataset), Write)];
                if let Some(i) = instance_of(dataset) {
                    v.push((service(&i), Write));
                }
                if !readonly {
                    v.push((Object::Fences, Read));
                }
                v
            }
            ActionKind::StartInstance { instance } => vec![
                (
                    Object::Instance {
                        node: node.clone(),
                        instance: instance.clone(),
                    },
                    Write,
                ),
                (service(instance), Write),
                (Object::Fences, Read),
                (Object::Postfix(self.host.clone(), own_mail(instance)), Read),
            ],
            ActionKind::StopInstance { instance } => vec![
                (
                    Object::Instance {
                        node: node.clone(),
                        instance: instance.clone(),
                    },
                    Write,
                ),
                (service(instance), Write),
            ],
            ActionKind::WriteFile { .. } | ActionKind::Postconf { .. } => {
                vec![(Object::Postfix(self.host.clone(), self.mail.clone()), Write)]
            }
            ActionKind::Fence { .. } | ActionKind::ForgetFence { .. } => {
                vec![(Object::Fences, Write)]
            }
            ActionKind::VerifyGuid {
                source,
                source_dataset,
                target,
                target_dataset,
                ..
            } => vec![
                (ds(source, source_dataset), Read),
                (ds(target, target_dataset), Read),
            ],
            ActionKind::Replicate {
                source,
                source_dataset,
                target,
                target_dataset,
                ..
            } => vec![
                (ds(source, source_dataset), Read),
                (ds(target, target_dataset), Write),
            ],
            ActionKind::ArchRestore {
                instance,
                node: into,
                ..
            } => {
                let into = into.clone().unwrap_or_else(|| spec.spec.active.to_string());
                vec![
                    (Object::ArchiveHold, Write),
                    (
                        Object::Queue(Target::Node(into.clone()), own_mail(instance)),
                        Write,
                    ),
                    (
                        Object::Instance {
                            node: into,
                            instance: instance.clone(),
                        },
                        Read,
                    ),
                ]
            }
            ActionKind::FlushQueue => vec![
                (Object::Queue(self.host.clone(), self.mail.clone()), Write),
                (Object::ArchiveHold, Write),
            ],
            ActionKind::DropQueued { .. } => {
                vec![(Object::Queue(self.host.clone(), self.mail.clone()), Write)]
            }
            ActionKind::WaitDelivered { instance, .. } => vec![
                (Object::Queue(self.host.clone(), self.mail.clone()), Read),
                (
                    Object::Instance {
                        node: node.clone(),
                        instance: instance.clone(),
                    },
                    Read,
                ),
            ],
            ActionKind::WaitArchived { .. } => vec![
                (Object::Queue(self.host.clone(), self.mail.clone()), Read),
                (Object::ArchiveHold, Read),
            ],
            ActionKind::PurgeArchive { .. } => vec![(Object::ArchiveHold, Write)],
        }
    }
}
