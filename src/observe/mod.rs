//! Observation: connect to every host of a spec and build the observed model.
//!
//! The shell side of the planner's input. Hosts are observed concurrently, each in two
//! round trips (capabilities and clock, then the listing, runtime states and Postfix), and an
//! unreachable host is a value in the model, never an error that stops the run.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use jiff::Timestamp;

use crate::adapters::capabilities;
use crate::adapters::jail::{self, RuntimeVerb};
use crate::adapters::postfix;
use crate::adapters::zfs;
use crate::model::{
    ArchiveObservation, Capabilities, InstanceState, NodeObservation, Observation,
    PostfixObservation, Reachability, RunState, UnreachableKind,
};
use crate::spec::{self, Runtime, Spec};
use crate::transport::host::{AnyHost, Host, HostError, Output, RoundTrips, SshConfig, SshHost};

/// Postfix parameters observed on every node and on the archive host.
pub const POSTFIX_PARAMETERS: &[&str] = &[
    "config_directory",
    "recipient_bcc_maps",
    "enable_long_queue_ids",
    "always_add_missing_headers",
    "smtpd_recipient_restrictions",
    "relay_domains",
    "maximal_queue_lifetime",
    "recipient_delimiter",
];

use crate::decide::archive::{BCC_MAP_FILE, HOLD_MAP_FILE};
use crate::transport::Batch;

/// Open connections to the hosts of one spec.
pub struct Connections {
    pub nodes: BTreeMap<String, Result<Host, HostError>>,
    pub archive: Option<Result<Host, HostError>>,
    /// This machine, for controller actions (fencing commands).
    pub local: Host,
    pub trips: RoundTrips,
}

impl Connections {
    /// The connected host of a node, if reachable.
    pub fn node(&self, name: &str) -> Option<&Host> {
        self.nodes.get(name).and_then(|r| r.as_ref().ok())
    }
    pub fn archive(&self) -> Option<&Host> {
        self.archive.as_ref().and_then(|r| r.as_ref().ok())
    }
}

/// The transport settings of a spec's `ssh:` block.
pub fn ssh_config(ssh: &spec::Ssh) -> SshConfig {
    let mut c = SshConfig::new(ssh.host.clone());
    c.user = Some(ssh.user.clone());
    c.port = u16::try_from(ssh.port).ok();
    c.known_hosts = ssh.known_hosts.clone();
    c.identity = ssh.identity.clone();
    if let Some(t) = ssh.connect_timeout {
        c.connect_timeout = t.as_std();
    }
    c
}

async fn connect_one(
    label: String,
    ssh: &spec::Ssh,
    trips: &RoundTrips,
) -> Result<Host, HostError> {
    let h = SshHost::connect(ssh_config(ssh)).await?;
    Ok(Host::new(label, AnyHost::Ssh(h), trips))
}

/// Connect to every node and the archive host, concurrently.
pub async fn connect(s: &Spec) -> Connections {
    let trips = RoundTrips::default();
    let nodes = join_all(s.spec.nodes.iter().map(|(n, node)| {
        let trips = trips.clone();
        async move {
            (
                n.to_string(),
                connect_one(n.to_string(), &node.ssh, &trips).await,
            )
        }
    }))
    .await
    .into_iter()
    .collect();
    let archive = match &s.spec.archive {
        Some(a) => Some(connect_one("archive".into(), &a.ssh, &trips).await),
        None => None,
    };
    Connections {
        nodes,
        archive,
        local: Host::new(
            "controller",
            AnyHost::Local(crate::transport::host::LocalHost),
            &trips,
        ),
        trips,
    }
}

fn unreachable(e: &HostError) -> NodeObservation {
    NodeObservation::unreachable(
        e.unreachable_kind().unwrap_or(UnreachableKind::Other),
        e.to_string(),
    )
}

/// Observe every host of a spec, concurrently.
pub async fn observe(s: &Spec, conns: &Connections) -> Observation {
    let observed_at = Timestamp::now();
    let nodes = join_all(s.spec.nodes.keys().map(|n| async move {
        let obs = match conns.nodes.get(n.as_str()) {
            Some(Ok(h)) => observe_node(s, n.as_str(), h).await,
            Some(Err(e)) => unreachable(e),
            None => NodeObservation::unreachable(UnreachableKind::Other, "not connected"),
        };
        (n.to_string(), obs)
    }))
    .await
    .into_iter()
    .collect();
    let archive = match &conns.archive {
        None => None,
        Some(Err(e)) => Some(ArchiveObservation::unreachable(
            e.unreachable_kind().unwrap_or(UnreachableKind::Other),
            e.to_string(),
        )),
        Some(Ok(h)) => Some(observe_archive(h).await),
    };
    Observation {
        observed_at,
        nodes,
        archive,
    }
}

/// First round trip: what the host is (ZFS flavour, jail commands, Postfix) and its clock.
async fn probe(h: &Host, with_zfs: bool) -> Result<Capabilities, HostError> {
    let mut b = Batch::new();
    let date = b.push(capabilities::date_argv());
    let mail_version = b.push(postfix::mail_version_argv());
    let zfs_slots = with_zfs.then(|| {
        (
            b.push(zfs::version_argv()),
            b.push(zfs::usage_argv()),
            b.push(capabilities::which_jail_commands_argv()),
        )
    });
    let before = Timestamp::now();
    let outs = h.run_slots(&b).await?;
    let after = Timestamp::now();
    let mut caps = Capabilities::default();
    if let Some(ns) = outs
        .get(date)
        .filter(|o| o.success())
        .and_then(|o| capabilities::parse_date(&o.stdout_text()))
    {
        let (off, unc) = capabilities::clock_offset_ms(before, after, ns);
        caps.clock_offset_ms = Some(off);
        caps.clock_uncertainty_ms = Some(unc);
    }
    caps.postfix = outs
        .get(mail_version)
        .filter(|o| o.success())
        .and_then(|o| postfix::detect_capabilities(&o.stdout_text()));
    if let Some((version, usage, which)) = zfs_slots {
        let ver = outs.get(version);
        let usage = outs.get(usage).map(|o| o.stderr_text() + &o.stdout_text());
        caps.zfs = zfs::detect_capabilities(
            ver.is_some_and(Output::success),
            &ver.map(|o| o.stdout_text()).unwrap_or_default(),
            usage.as_deref().unwrap_or(""),
        );
        if let Some(w) = outs.get(which) {
            caps.jail = capabilities::parse_which(&w.stdout_text());
            caps.compressors = capabilities::parse_compressors(&w.stdout_text());
        }
    }
    Ok(caps)
}

/// Observe one node: capabilities, then the listing, runtime states and Postfix.
pub async fn observe_node(s: &Spec, node: &str, h: &Host) -> NodeObservation {
    let caps = match probe(h, true).await {
        Ok(c) => c,
        Err(e) => return unreachable(&e),
    };
    let Some(pool) = s
        .spec
        .nodes
        .iter()
        .find(|(n, _)| n.as_str() == node)
        .map(|(_, n)| n.pool.to_string())
    else {
        return NodeObservation::unreachable(UnreachableKind::Other, "not in the spec");
    };
    let datasets: Vec<String> = s
        .spec
        .instances
        .values()
        .map(|i| format!("{pool}/{}", i.dataset))
        .collect();
    let extra: BTreeSet<&str> = s
        .spec
        .instances
        .values()
        .flat_map(|i| i.properties.keys().map(String::as_str))
        .collect();
    let extra: Vec<&str> = extra.into_iter().collect();
    let props = zfs::listing_properties(
        caps.zfs.as_ref(),
        &[crate::plan::RESYNC_PROPERTY, crate::plan::REPLAY_PROPERTY],
        &extra,
    );

    // Second round trip: everything else, in one batch.
    let mut b = Batch::new();
    let listing = b.push(zfs::listing_argv(&props, &datasets));
    let scratch_at = b.push(zfs::scratch_listing_argv(&pool));
    let uses_ezjail = s
        .spec
        .instances
        .values()
        .any(|i| matches!(i.runtime, Runtime::Ezjail { .. }));
    let uses_jail = s
        .spec
        .instances
        .values()
        .any(|i| matches!(i.runtime, Runtime::Jail { .. }));
    let ezjail_at = uses_ezjail.then(|| b.push(jail::ezjail_list_argv()));
    let jls_at = uses_jail.then(|| b.push(jail::jls_json_argv()));
    let mut exec_at = BTreeMap::new();
    for (name, inst) in &s.spec.instances {
        if let Some(a) = jail::runtime_argv(&inst.runtime, RuntimeVerb::Status, name.as_str(), node)
        {
            exec_at.insert(name.to_string(), b.push(a));
        }
    }
    let postfix_at = caps.postfix.as_ref().map(|pc| {
        let names: Vec<String> = POSTFIX_PARAMETERS
            .iter()
            .map(|p| (*p).to_string())
            .collect();
        (
            b.push(postfix::postconf_argv(&names)),
            // without `postqueue -j` (Postfix < 3.1) the queue is not read
            pc.postqueue_json.then(|| b.push(postfix::postqueue_argv())),
            b.push(postfix::cat_table_argv(BCC_MAP_FILE)),
        )
    });
    // Each instance's own Postfix (`mail.in: runtime`), through its mail place.
    let mut own_at = BTreeMap::new();
    for name in s.spec.instances.keys() {
        if let Some(place) = crate::adapters::mail::MailPlace::of(s, name.as_str()) {
            let names: Vec<String> = POSTFIX_PARAMETERS
                .iter()
                .map(|p| (*p).to_string())
                .collect();
            own_at.insert(
                name.to_string(),
                (
                    b.push(place.wrap(postfix::postconf_argv(&names))),
                    b.push(place.wrap(postfix::postqueue_argv())),
                    b.push(place.table_argv(BCC_MAP_FILE)),
                ),
            );
        }
    }
    let outs = match h.run_slots(&b).await {
        Ok(o) => o,
        Err(e) => return unreachable(&e),
    };
    let mut obs = NodeObservation::unreachable(UnreachableKind::Other, "");
    obs.reachability = Reachability::Reachable;
    let mut errors = Vec::new();

    // ZFS.
    if let Some(l) = outs.get(listing) {
        let stderr = l.stderr_text();
        match zfs::parse_listing_bytes(&l.stdout) {
            Ok(ds) => obs.datasets = ds,
            Err(e) => errors.push(format!("zfs listing: {e}")),
        }
        obs.missing_datasets = zfs::missing_datasets(&stderr)
            .into_iter()
            .filter(|d| datasets.contains(d))
            .collect();
        if !l.success() && !zfs::only_missing_datasets(&stderr) {
            errors.push(format!("zfs get exited {:?}: {}", l.status, stderr.trim()));
        }
    }

    if let Some(o) = outs.get(scratch_at) {
        if o.success() {
            obs.scratch = zfs::parse_scratch(&o.stdout_text());
        } else {
            errors.push(format!(
                "zfs get {} exited {:?}: {}",
                zfs::SCRATCH_PROPERTY,
                o.status,
                o.stderr_text().trim()
            ));
        }
    }

    // Instances.
    let ezjail = ezjail_at.and_then(|i| outs.get(i)).map(|o| {
        (
            o.success(),
            jail::parse_ezjail_list(&o.stdout_text()),
            o.stderr_text(),
        )
    });
    let jls = jls_at.and_then(|i| outs.get(i)).map(|o| {
        (
            o.success(),
            jail::parse_jls_json(&o.stdout_text()).map_err(|e| e.to_string()),
            o.stderr_text(),
        )
    });
    for (name, inst) in &s.spec.instances {
        let state = match &inst.runtime {
            Runtime::Ezjail { jail: j } => match &ezjail {
                Some((true, list, _)) => list
                    .iter()
                    .find(|e| jail::ezjail_same(&e.hostname, j.as_str()))
                    .map(|e| e.state())
                    .unwrap_or_else(|| unknown(format!("jail {j} is not in `ezjail-admin list`"))),
                Some((false, _, err)) => {
                    unknown(format!("ezjail-admin list failed: {}", err.trim()))
                }
                None => unknown("not listed".into()),
            },
            Runtime::Jail { jail: j } => match &jls {
                Some((true, Ok(jails), _)) => jail::jls_state(jails, j.as_str()),
                Some((true, Err(e), _)) => unknown(format!("jls output: {e}")),
                Some((false, _, err)) => unknown(format!("jls failed: {}", err.trim())),
                None => unknown("not listed".into()),
            },
            Runtime::Exec { .. } => match exec_at.get(name.as_str()).and_then(|i| outs.get(*i)) {
                Some(o) => jail::exec_state(o.status, &o.stderr_text()),
                None => unknown("status not run".into()),
            },
        };
        obs.instances.insert(name.to_string(), state);
    }

    // Postfix.
    if let Some((conf, queue, table)) = postfix_at
        && let Some(conf) = outs.get(conf)
    {
        let queue = match queue {
            None => Queue::NotAsked,
            Some(q) => outs.get(q).map_or(Queue::Missing, Queue::Listed),
        };
        let mut p = read_postfix(conf, queue, &mut errors);
        if let Some(f) = outs.get(table).filter(|o| o.success()) {
            p.files.insert(BCC_MAP_FILE.into(), f.stdout_text());
        }
        obs.postfix = Some(p);
    }
    for (name, (conf, queue, table)) in own_at {
        // A stopped jail's Postfix cannot be asked, and an instance's queue directory on its
        // dataset is not there while the copy is an unmounted replica: only where the
        // instance runs is a failure an error.
        let running = obs
            .instances
            .get(&name)
            .is_some_and(|st| st.state == RunState::Running);
        let Some(conf) = outs.get(conf) else { continue };
        if !conf.success() {
            if running {
                errors.push(format!(
                    "{name}'s own Postfix: postconf exited {:?}: {}",
                    conf.status,
                    conf.stderr_text().trim()
                ));
            }
            continue;
        }
        let mut own_errors = Vec::new();
        let queue = outs.get(queue).map_or(Queue::Missing, Queue::Listed);
        let mut p = read_postfix(conf, queue, &mut own_errors);
        if running {
            errors.extend(
                own_errors
                    .into_iter()
                    .map(|e| format!("{name}'s own Postfix: {e}")),
            );
        }
        if let Some(f) = outs.get(table).filter(|o| o.success()) {
            p.files.insert(BCC_MAP_FILE.into(), f.stdout_text());
        }
        obs.instance_postfix.insert(name, p);
    }
    obs.capabilities = caps;
    obs.errors = errors;
    obs
}

fn unknown(detail: String) -> InstanceState {
    InstanceState {
        state: RunState::Unknown,
        detail: Some(detail),
        norun: None,
    }
}

/// What a batch brought back of `postqueue -j`.
enum Queue<'a> {
    /// Not asked for (a Postfix without `postqueue -j`).
    NotAsked,
    /// Asked for, but the batch ended before its output.
    Missing,
    Listed(&'a Output),
}

fn read_postfix(conf: &Output, queue: Queue<'_>, errors: &mut Vec<String>) -> PostfixObservation {
    let mut p = PostfixObservation {
        settings: postfix::parse_postconf(&conf.stdout_text()),
        queue: Vec::new(),
        files: BTreeMap::new(),
    };
    let queue = match queue {
        Queue::NotAsked => return p,
        Queue::Missing => {
            errors.push("postqueue -j: no output (the batch ended early)".into());
            return p;
        }
        Queue::Listed(q) => q,
    };
    if queue.success() {
        match postfix::parse_postqueue(&queue.stdout_text()) {
            Ok(q) => p.queue = q,
            Err(e) => errors.push(format!("postqueue -j: {e}")),
        }
    } else {
        errors.push(format!(
            "postqueue -j exited {:?}: {}",
            queue.status,
            queue.stderr_text().trim()
        ));
    }
    p
}

/// `postqueue -j`, streamed: each line is read into a compact entry as it arrives
/// ([`postfix::QueueReader`]); the error says what an operator sees in the observation.
async fn stream_queue(h: &Host) -> Result<Vec<crate::model::QueueEntry>, String> {
    let mut reader = postfix::QueueReader::new();
    let mut queue = Vec::new();
    let mut bad = None;
    let out = h
        .stream_lines(&postfix::postqueue_argv(), |l| {
            if bad.is_none() {
                match reader.line(l) {
                    Ok(e) => queue.extend(e),
                    Err(e) => bad = Some(e),
                }
            }
        })
        .await
        .map_err(|e| format!("postqueue -j: {e}"))?;
    if !out.success() {
        return Err(format!(
            "postqueue -j exited {:?}: {}",
            out.status,
            out.stderr_text().trim()
        ));
    }
    if let Some(e) = bad {
        return Err(e.to_string());
    }
    queue.shrink_to_fit();
    Ok(queue)
}

/// Observe the archive host: clock, Postfix settings and queue.
pub async fn observe_archive(h: &Host) -> ArchiveObservation {
    let unreachable_archive = |e: &HostError| {
        ArchiveObservation::unreachable(
            e.unreachable_kind().unwrap_or(UnreachableKind::Other),
            e.to_string(),
        )
    };
    let caps = match probe(h, false).await {
        Ok(c) => c,
        Err(e) => return unreachable_archive(&e),
    };
    let mut errors = Vec::new();
    let postfix = match &caps.postfix {
        None => {
            errors.push("no Postfix found (postconf failed)".into());
            None
        }
        Some(_) => {
            let names: Vec<String> = POSTFIX_PARAMETERS
                .iter()
                .map(|p| (*p).to_string())
                .collect();
            let mut b = Batch::new();
            let conf = b.push(postfix::postconf_argv(&names));
            let table = b.push(postfix::cat_table_argv(HOLD_MAP_FILE));
            // the hold queue is the archive of every spool: streamed and read line by line
            // beside the batch, never held whole (a day of a large site is a million copies)
            let (settings, listing) = tokio::join!(h.run_slots(&b), stream_queue(h));
            match settings {
                Ok(o) => o.get(conf).map(|c| {
                    let mut p = read_postfix(c, Queue::NotAsked, &mut errors);
                    if c.success() {
                        match listing {
                            Ok(q) => p.queue = q,
                            Err(e) => errors.push(e),
                        }
                    }
                    if let Some(f) = o.get(table).filter(|o| o.success()) {
                        p.files.insert(HOLD_MAP_FILE.into(), f.stdout_text());
                    }
                    p
                }),
                Err(e) => return unreachable_archive(&e),
            }
        }
    };
    ArchiveObservation {
        reachability: Reachability::Reachable,
        capabilities: caps,
        postfix,
        errors,
    }
}

/// The compact operator view of an observation.
pub fn text(s: &Spec, o: &Observation) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(t, "cluster {} observed at {}", s.name, o.observed_at);
    for (name, n) in &o.nodes {
        let role = if name == s.spec.active.as_str() {
            "active"
        } else {
            "passive"
        };
        match &n.reachability {
            Reachability::Unreachable { kind, message } => {
                let _ = writeln!(t, "\n{name} ({role}): UNREACHABLE ({kind:?}) {message}");
                continue;
            }
            Reachability::Reachable => {}
        }
        let zfs = n
            .capabilities
            .zfs
            .as_ref()
            .map_or("no zfs".to_string(), |z| {
                format!(
                    "{:?}{}",
                    z.flavour,
                    z.version
                        .as_ref()
                        .map_or(String::new(), |v| format!(" {v}"))
                )
            });
        let clock = n
            .capabilities
            .clock_offset_ms
            .map_or("clock ?".into(), |c| format!("clock {c:+} ms"));
        let _ = writeln!(t, "\n{name} ({role}): reachable, {zfs}, {clock}");
        for d in &n.datasets {
            let newest = d
                .snapshots
                .last()
                .map_or("-".to_string(), |s| s.name.clone());
            let _ = writeln!(
                t,
                "  dataset {} {} {} used {} snapshots {} newest {}",
                d.name,
                if d.readonly == Some(true) { "ro" } else { "rw" },
                if d.mounted == Some(true) {
                    "mounted"
                } else {
                    "unmounted"
                },
                d.used
                    .map_or("?".into(), |u| crate::spec::Size::from_bytes(u).to_string()),
                d.snapshots.len(),
                newest
            );
        }
        for m in &n.missing_datasets {
            let _ = writeln!(t, "  dataset {m} absent");
        }
        for (i, st) in &n.instances {
            let _ = writeln!(
                t,
                "  instance {i} {:?}{}",
                st.state,
                st.detail
                    .as_ref()
                    .map_or(String::new(), |d| format!(" ({d})"))
            );
        }
        if let Some(p) = &n.postfix {
            let _ = writeln!(t, "  postfix queue {} message(s)", p.queue.len());
        }
        for (i, p) in &n.instance_postfix {
            let _ = writeln!(t, "  {i}'s own postfix queue {} message(s)", p.queue.len());
        }
        for e in &n.errors {
            let _ = writeln!(t, "  error: {e}");
        }
    }
    if let Some(a) = &o.archive {
        match &a.reachability {
            Reachability::Unreachable { kind, message } => {
                let _ = writeln!(t, "\narchive: UNREACHABLE ({kind:?}) {message}");
            }
            Reachability::Reachable => {
                let held = a.postfix.as_ref().map_or(0, |p| p.held().count());
                let total = a.postfix.as_ref().map_or(0, |p| p.queue.len());
                let _ = writeln!(t, "\narchive: reachable, {held} held of {total} queued");
                for e in &a.errors {
                    let _ = writeln!(t, "  error: {e}");
                }
            }
        }
    }
    t
}
