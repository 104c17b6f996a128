//! The model cluster: nodes with ZFS copies (snapshots with guids and creation times, live
//! content, readonly/mounted, holds, user properties), instances, each node's Postfix queue,
//! the archive host's hold queue, upstream mail, per-host clocks with skew.
//!
//! Mail is tracked as (Message-ID, recipient) keys, which is what every guarantee is about.
//! The model follows the lab's topology: one Postfix per node, its queue on the node's root
//! file system (durable), delivering into the node's copy of the instance's dataset when that
//! copy is mounted and writable, and relaying BCC copies to the archive host.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use spoolkeeper::decide::archive;
use spoolkeeper::model::{
    ArchiveObservation, Capabilities, Dataset, DatasetKind, InstanceState, NodeObservation,
    Observation, PostfixCapabilities, PostfixObservation, QueueEntry, QueueRecipient, Reachability,
    RunState, Snapshot, UnreachableKind, ZfsCapabilities, ZfsFlavour,
};
use spoolkeeper::spec::Spec;

/// A message for one recipient.
pub type Key = (String, String);
/// A mailbox tree: every (Message-ID, recipient) with the internal date of each copy.
pub type Mail = BTreeMap<Key, Vec<Timestamp>>;

#[derive(Debug, Clone)]
pub struct Snap {
    pub name: String,
    pub guid: u64,
    /// Node clock.
    pub creation: Timestamp,
    pub txg: u64,
    pub holds: BTreeSet<String>,
    pub content: Arc<Mail>,
}

/// An interrupted receive: with a token when both sides could resume it.
#[derive(Debug, Clone)]
pub struct Partial {
    pub token: Option<String>,
}

/// One node's copy of an instance's dataset.
#[derive(Debug, Clone)]
pub struct Copy {
    pub name: String,
    pub instance: String,
    pub guid: u64,
    pub live: Mail,
    /// Written since the newest snapshot (what `written` reports as non-zero).
    pub modified: bool,
    pub readonly: bool,
    pub mounted: bool,
    pub snaps: Vec<Snap>,
    pub user: BTreeMap<String, String>,
    pub props: BTreeMap<String, String>,
    pub partial: Option<Partial>,
}

impl Copy {
    pub fn snap(&self, name: &str) -> Option<&Snap> {
        self.snaps.iter().find(|s| s.name == name)
    }
    pub fn writable(&self) -> bool {
        !self.readonly && self.mounted
    }
}

/// One message file in a Postfix queue: its pending local recipients and archive copies.
#[derive(Debug, Clone)]
pub struct QEntry {
    pub qid: String,
    pub mid: String,
    pub sender: String,
    pub local: Vec<String>,
    pub archive: Vec<String>,
    /// Node clock.
    pub arrival: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    ZfsFuse,
    OpenZfs,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub pool: String,
    /// Powered on.
    pub up: bool,
    /// Network link up.
    pub link: bool,
    pub skew_ms: i64,
    pub flavour: Flavour,
    pub copies: BTreeMap<String, Copy>,
    pub running: BTreeSet<String>,
    pub queue: Vec<QEntry>,
    pub settings: BTreeMap<String, String>,
    pub files: BTreeMap<String, String>,
    /// Content of each stream file `PreserveDelta` wrote (the saved writes).
    pub preserved: Vec<Arc<Mail>>,
    /// Clones a `restore` or `drill` made (spoolkeeper:scratch): their origin snapshots cannot
    /// be destroyed, nor rolled back over, while they exist.
    pub scratch: Vec<Scratch>,
}

/// A scratch clone on a node.
#[derive(Debug, Clone)]
pub struct Scratch {
    pub name: String,
    pub purpose: &'static str,
    pub since: Timestamp,
    pub dataset: String,
    pub snapshot: String,
}

impl Node {
    pub fn reachable(&self) -> bool {
        self.up && self.link
    }
}

/// A held copy on the archive host.
#[derive(Debug, Clone)]
pub struct Held {
    pub qid: String,
    pub mid: String,
    pub sender: String,
    /// The archive address it is held for.
    pub rcpt: String,
    /// Archive clock.
    pub arrival: Timestamp,
}

#[derive(Debug, Clone)]
pub struct Archive {
    pub up: bool,
    pub link: bool,
    pub skew_ms: i64,
    pub hold: Vec<Held>,
    pub settings: BTreeMap<String, String>,
    pub files: BTreeMap<String, String>,
}

impl Archive {
    pub fn reachable(&self) -> bool {
        self.up && self.link
    }
    /// Holds what it receives (the hold table and restrictions spoolkeeper writes).
    pub fn holds_copies(&self) -> bool {
        self.files.contains_key(archive::HOLD_MAP_FILE)
            && self
                .settings
                .get("smtpd_recipient_restrictions")
                .is_some_and(|v| v.contains(archive::HOLD_MAP_FILE))
    }
}

/// A message an upstream MTA saw accepted with 250.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub key: Key,
    pub instance: String,
    pub node: String,
    pub at: Timestamp,
}

/// A message upstream still retries.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub key: Key,
    pub instance: String,
    pub sender: String,
}

#[derive(Debug, Clone)]
pub struct World {
    /// True time = the controller's clock.
    pub now: Timestamp,
    pub nodes: BTreeMap<String, Node>,
    pub archive: Archive,
    pub accepted: Vec<Accepted>,
    pub upstream: Vec<Upstream>,
    /// Nodes powered off by spoolkeeper's fencing command and not seen since: an operator who
    /// powers one back on before spoolkeeper sees it breaks that fence, not spoolkeeper.
    pub fenced: BTreeSet<String>,
    next_guid: u64,
    next_msg: u64,
    next_qid: u64,
}

/// Every Postfix setting observe asks for, with a default Postfix's values.
fn default_settings() -> BTreeMap<String, String> {
    spoolkeeper::observe::POSTFIX_PARAMETERS
        .iter()
        .map(|p| {
            let v = match *p {
                "config_directory" => "/etc/postfix",
                "maximal_queue_lifetime" => "5d",
                "enable_long_queue_ids" => "no",
                "always_add_missing_headers" => "no",
                "smtpd_recipient_restrictions" => "reject_unauth_destination",
                _ => "",
            };
            (p.to_string(), v.to_string())
        })
        .collect()
}

impl World {
    pub fn new(
        spec: &Spec,
        start: Timestamp,
        skews: &BTreeMap<String, i64>,
        flavours: &BTreeMap<String, Flavour>,
        archive_skew_ms: i64,
    ) -> World {
        let nodes = spec
            .spec
            .nodes
            .iter()
            .map(|(n, node)| {
                let name = n.to_string();
                (
                    name.clone(),
                    Node {
                        pool: node.pool.to_string(),
                        up: true,
                        link: true,
                        skew_ms: skews.get(&name).copied().unwrap_or(0),
                        flavour: flavours.get(&name).copied().unwrap_or(Flavour::ZfsFuse),
                        copies: BTreeMap::new(),
                        running: BTreeSet::new(),
                        queue: Vec::new(),
                        settings: default_settings(),
                        files: BTreeMap::new(),
                        preserved: Vec::new(),
                        scratch: Vec::new(),
                        name,
                    },
                )
            })
            .collect();
        World {
            now: start,
            nodes,
            archive: Archive {
                up: true,
                link: true,
                skew_ms: archive_skew_ms,
                hold: Vec::new(),
                settings: default_settings(),
                files: BTreeMap::new(),
            },
            accepted: Vec::new(),
            upstream: Vec::new(),
            fenced: BTreeSet::new(),
            next_guid: 0x5eed_0000_0001,
            next_msg: 1,
            next_qid: 1,
        }
    }

    pub fn guid(&mut self) -> u64 {
        self.next_guid = self
            .next_guid
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.next_guid | 1
    }

    pub fn qid(&mut self) -> String {
        self.next_qid += 1;
        format!("4S{:010X}", self.next_qid)
    }

    pub fn message_id(&mut self) -> String {
        self.next_msg += 1;
        format!("<m{}@sim>", self.next_msg)
    }

    pub fn clock(&self, skew_ms: i64) -> Timestamp {
        let t = self
            .now
            .checked_add(SignedDuration::from_millis(skew_ms))
            .unwrap_or(self.now);
        // ZFS and Postfix report whole seconds
        Timestamp::from_second(t.as_second()).unwrap_or(t)
    }

    pub fn node_clock(&self, node: &str) -> Timestamp {
        self.clock(self.nodes.get(node).map_or(0, |n| n.skew_ms))
    }

    /// The dataset of `instance` on `node`: `pool/path`.
    pub fn dataset_of(spec: &Spec, node: &str, instance: &str) -> Option<String> {
        let pool = spec
            .spec
            .nodes
            .iter()
            .find(|(n, _)| n.as_str() == node)?
            .1
            .pool
            .to_string();
        let inst = spec
            .spec
            .instances
            .iter()
            .find(|(n, _)| n.as_str() == instance)?
            .1;
        Some(format!("{pool}/{}", inst.dataset.as_str()))
    }

    pub fn copy_of(&self, spec: &Spec, node: &str, instance: &str) -> Option<&Copy> {
        let ds = Self::dataset_of(spec, node, instance)?;
        self.nodes.get(node)?.copies.get(&ds)
    }

    /// Is the BCC to the archive configured on this node for `domain` (table and setting)?
    pub fn bcc_configured(&self, node: &str, domain: &str) -> bool {
        let Some(n) = self.nodes.get(node) else {
            return false;
        };
        let dir = n
            .settings
            .get("config_directory")
            .cloned()
            .unwrap_or_default();
        let want = format!("regexp:{dir}/{}", archive::BCC_MAP_FILE);
        n.settings.get("recipient_bcc_maps") == Some(&want)
            && n.files
                .get(archive::BCC_MAP_FILE)
                .is_some_and(|t| t.contains(&archive::regex_escape(domain)))
    }

    // -------------------------------------------------------------------------------------
    // Observation: what `observe` would report
    // -------------------------------------------------------------------------------------

    /// The observation at `now`, with clock offsets measured with an error of at most
    /// `uncertainty_ms` (chosen by `err`).
    pub fn observe(
        &self,
        spec: &Spec,
        mut err: impl FnMut(i64) -> i64,
        uncertainty_ms: i64,
    ) -> Observation {
        let mut nodes = BTreeMap::new();
        for name in spec.spec.nodes.keys() {
            let Some(n) = self.nodes.get(name.as_str()) else {
                continue;
            };
            if !n.reachable() {
                nodes.insert(
                    name.to_string(),
                    NodeObservation::unreachable(
                        UnreachableKind::Timeout,
                        format!("{name}: no answer within 5s"),
                    ),
                );
                continue;
            }
            let caps = Capabilities {
                // the stream's compression changes nothing the model sees
                compressors: Default::default(),
                zfs: Some(ZfsCapabilities {
                    flavour: match n.flavour {
                        Flavour::ZfsFuse => ZfsFlavour::ZfsFuse,
                        Flavour::OpenZfs => ZfsFlavour::OpenZfs,
                    },
                    version: None,
                    list_p: n.flavour == Flavour::OpenZfs,
                    resume_tokens: n.flavour == Flavour::OpenZfs,
                    bookmarks: n.flavour == Flavour::OpenZfs,
                    batch_destroy: n.flavour == Flavour::OpenZfs,
                    holds_list: n.flavour == Flavour::OpenZfs,
                }),
                postfix: Some(PostfixCapabilities {
                    version: "3.7.11".into(),
                    postqueue_json: true,
                }),
                jail: Default::default(),
                clock_offset_ms: Some(n.skew_ms + err(uncertainty_ms)),
                clock_uncertainty_ms: Some(uncertainty_ms),
            };
            let mut datasets = Vec::new();
            let mut missing = Vec::new();
            let mut instances = BTreeMap::new();
            for iname in spec.spec.instances.keys() {
                let Some(ds) = Self::dataset_of(spec, name.as_str(), iname.as_str()) else {
                    continue;
                };
                match n.copies.get(&ds) {
                    Some(c) => datasets.push(dataset_obs(c, n.flavour)),
                    None => missing.push(ds),
                }
                instances.insert(
                    iname.to_string(),
                    InstanceState {
                        state: if n.running.contains(iname.as_str()) {
                            RunState::Running
                        } else {
                            RunState::Stopped
                        },
                        detail: None,
                        norun: None,
                    },
                );
            }
            nodes.insert(
                name.to_string(),
                NodeObservation {
                    reachability: Reachability::Reachable,
                    capabilities: caps,
                    datasets,
                    missing_datasets: missing,
                    instances,
                    postfix: Some(PostfixObservation {
                        settings: n.settings.clone(),
                        queue: n.queue.iter().map(queue_entry).collect(),
                        files: n.files.clone(),
                    }),
                    // the simulated instances all use the node's Postfix (`mail.in: node`)
                    instance_postfix: Default::default(),
                    errors: Vec::new(),
                    scratch: n
                        .scratch
                        .iter()
                        .map(|c| spoolkeeper::model::ScratchClone {
                            name: c.name.clone(),
                            purpose: c.purpose.to_owned(),
                            since: Some(c.since),
                            origin_dataset: c.dataset.clone(),
                            origin_snapshot: c.snapshot.clone(),
                        })
                        .collect(),
                },
            );
        }
        let archive = spec.spec.archive.as_ref().map(|_| {
            let a = &self.archive;
            if !a.reachable() {
                return ArchiveObservation::unreachable(
                    UnreachableKind::Timeout,
                    "archive: no answer within 5s",
                );
            }
            ArchiveObservation {
                reachability: Reachability::Reachable,
                capabilities: Capabilities {
                    compressors: Default::default(),
                    zfs: None,
                    postfix: Some(PostfixCapabilities {
                        version: "3.7.11".into(),
                        postqueue_json: true,
                    }),
                    jail: Default::default(),
                    clock_offset_ms: Some(a.skew_ms + err(uncertainty_ms)),
                    clock_uncertainty_ms: Some(uncertainty_ms),
                },
                postfix: Some(PostfixObservation {
                    settings: a.settings.clone(),
                    queue: a
                        .hold
                        .iter()
                        .map(|h| QueueEntry {
                            queue_name: "hold".into(),
                            queue_id: h.qid.as_str().into(),
                            arrival_time: h.arrival,
                            message_size: 1000,
                            forced_expire: false,
                            sender: h.sender.as_str().into(),
                            recipients: [QueueRecipient::to(&h.rcpt)].into(),
                        })
                        .collect(),
                    files: a.files.clone(),
                }),
                errors: Vec::new(),
            }
        });
        Observation {
            observed_at: self.now,
            nodes,
            archive,
        }
    }

    // -------------------------------------------------------------------------------------
    // Mail flow
    // -------------------------------------------------------------------------------------

    /// The nodes an upstream MTA reaches for `instance`: reachable and holding its service
    /// address (the instance runs there).
    pub fn service_nodes(&self, instance: &str) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| n.reachable() && n.running.contains(instance))
            .map(|n| n.name.clone())
            .collect()
    }

    /// Upstream tries every waiting message once; accepted ones are queued on the node that
    /// holds the instance's service address (with a BCC copy when that node's Postfix has the
    /// archive table). Returns how many were accepted.
    pub fn upstream_try(&mut self, spec: &Spec, pick: &mut impl FnMut(usize) -> usize) -> usize {
        let waiting = std::mem::take(&mut self.upstream);
        let mut accepted = 0;
        for u in waiting {
            let nodes = self.service_nodes(&u.instance);
            if nodes.is_empty() {
                self.upstream.push(u);
                continue;
            }
            let node = nodes[pick(nodes.len())].clone();
            let domain = u.key.1.rsplit_once('@').map_or("", |(_, d)| d).to_string();
            let arch = spec
                .spec
                .archive
                .as_ref()
                .filter(|_| self.bcc_configured(&node, &domain))
                .map(|a| {
                    let (l, d) = u.key.1.rsplit_once('@').unwrap_or((&u.key.1, ""));
                    a.address.encode(l, d)
                });
            let qid = self.qid();
            let arrival = self.node_clock(&node);
            if let Some(n) = self.nodes.get_mut(&node) {
                n.queue.push(QEntry {
                    qid,
                    mid: u.key.0.clone(),
                    sender: u.sender.clone(),
                    local: vec![u.key.1.clone()],
                    archive: arch.into_iter().collect(),
                    arrival,
                });
            }
            self.accepted.push(Accepted {
                key: u.key,
                instance: u.instance,
                node,
                at: self.now,
            });
            accepted += 1;
        }
        accepted
    }

    /// Postfix on `node` delivers what it can: local recipients into the node's copy of their
    /// instance's dataset when it is mounted and writable (else the entry stays deferred), and
    /// archive copies to the archive host when both are reachable and it holds copies.
    pub fn deliver(&mut self, spec: &Spec, node: &str, local: bool, relay: bool) {
        let now_node = self.node_clock(node);
        let archive_arrival = self.clock(self.archive.skew_ms);
        let archive_ok = self.archive.reachable() && self.archive.holds_copies();
        let instance_of = |rcpt: &str| -> Option<String> {
            let d = rcpt.rsplit_once('@')?.1;
            spec.spec
                .instances
                .iter()
                .find(|(_, i)| i.domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
                .map(|(n, _)| n.to_string())
        };
        let mut new_held = Vec::new();
        let mut qids = Vec::new();
        {
            let Some(n) = self.nodes.get_mut(node) else {
                return;
            };
            if !n.up {
                return;
            }
            let link = n.link;
            let pool = n.pool.clone();
            let mut queue = std::mem::take(&mut n.queue);
            for e in &mut queue {
                if local {
                    let mut left = Vec::new();
                    for r in std::mem::take(&mut e.local) {
                        let ds = instance_of(&r).and_then(|i| {
                            spec.spec
                                .instances
                                .iter()
                                .find(|(n, _)| n.as_str() == i)
                                .map(|(_, inst)| format!("{pool}/{}", inst.dataset.as_str()))
                        });
                        match ds.and_then(|d| n.copies.get_mut(&d)) {
                            Some(c) if c.writable() => {
                                c.live
                                    .entry((e.mid.clone(), r.clone()))
                                    .or_default()
                                    .push(now_node);
                                c.modified = true;
                            }
                            _ => left.push(r),
                        }
                    }
                    e.local = left;
                }
                if relay && link && archive_ok && !e.archive.is_empty() {
                    for a in std::mem::take(&mut e.archive) {
                        new_held.push((e.mid.clone(), e.sender.clone(), a));
                    }
                }
            }
            queue.retain(|e| !e.local.is_empty() || !e.archive.is_empty());
            n.queue = queue;
        }
        for _ in &new_held {
            qids.push(self.qid());
        }
        for ((mid, sender, rcpt), qid) in new_held.into_iter().zip(qids) {
            self.archive.hold.push(Held {
                qid,
                mid,
                sender,
                rcpt,
                arrival: archive_arrival,
            });
        }
    }
}

fn queue_entry(e: &QEntry) -> QueueEntry {
    QueueEntry {
        queue_name: "deferred".into(),
        queue_id: e.qid.as_str().into(),
        arrival_time: e.arrival,
        message_size: 1000,
        forced_expire: false,
        sender: e.sender.as_str().into(),
        recipients: e
            .local
            .iter()
            .chain(&e.archive)
            .map(|r| QueueRecipient::to(r))
            .collect(),
    }
}

fn dataset_obs(c: &Copy, flavour: Flavour) -> Dataset {
    let mut other = c.props.clone();
    if flavour == Flavour::OpenZfs {
        other.insert(
            "written".into(),
            if c.modified { "4096" } else { "0" }.into(),
        );
    }
    Dataset {
        name: c.name.clone(),
        kind: DatasetKind::Filesystem,
        creation: None,
        guid: Some(c.guid),
        used: Some(1),
        readonly: Some(c.readonly),
        mounted: Some(c.mounted),
        mountpoint: Some(format!("/{}", c.name)),
        createtxg: None,
        receive_resume_token: c.partial.as_ref().and_then(|p| p.token.clone()),
        user_properties: c.user.clone(),
        other_properties: other,
        snapshots: c
            .snaps
            .iter()
            .map(|s| Snapshot {
                name: s.name.clone(),
                guid: s.guid,
                creation: s.creation,
                createtxg: Some(s.txg),
                userrefs: s.holds.len() as u32,
                used: 0,
                written: None,
            })
            .collect(),
    }
}
