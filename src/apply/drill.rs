//! `drill`, the shell: rehearse a failover of an instance on the passive node without touching
//! production, and measure it. The decisions are `crate::decide::drill`.
//!
//! 1. observe; the instance must be running on the spec's active node and nowhere else (a
//!    drill never runs while a failover or switchover is pending or under way);
//! 2. under the cluster lock (so no apply starts in between): observe again, clone the newest
//!    replicated snapshot on the passive (writable, mounted where the spec's drill block says,
//!    named `<dataset>_<prefix>_drill_<stamp>`, marked `spoolkeeper:scratch`), release the lock
//!    (replication and the active keep running during the drill);
//! 3. start the drill instance (the drill block's `start`), reach its IMAP and LMTP listeners on
//!    the node's loopback through the SSH connection, and time until a probe can log in (RTO);
//! 4. deliver the held archive copies a failover to that node would replay (the same window:
//!    `decide::restore::instance_inputs` anchored at the cloned snapshot), read from the archive
//!    with `postcat` (never released or deleted), over LMTP into the drill copy;
//! 5. per probe: the live mailbox's messages received before the snapshot plus what the replay
//!    delivered to it, against what IMAP shows in the copy;
//! 6. always: stop the drill instance, destroy the clone; journal the result.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::Serialize;

use super::recover::{self, Exposure, RestoreError, Scratch};
use crate::adapters::{dovecot, jail};
use crate::decide::drill::{self, Probe, Verdict};
use crate::decide::recover as rpoints;
use crate::model::RunState;
use crate::observe::{self, Connections};
use crate::spec::{Drill, Spec};
use crate::transport::host::{Host, Tunnel};
use crate::transport::{imap, smtp};

/// How long the drill copy may take to serve IMAP.
const SERVE_WITHIN: Duration = Duration::from_secs(120);
/// One IMAP or LMTP exchange.
const EXCHANGE: Duration = Duration::from_secs(30);

/// The result of one instance's drill (text, JSON, markdown).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub cluster: String,
    pub instance: String,
    pub node: String,
    pub snapshot: String,
    pub snapshot_time: Timestamp,
    pub started: Timestamp,
    /// Age of the snapshot when the drill started: the data a failover now would lose
    /// without the archive replay.
    pub rpo_seconds: f64,
    /// Start of the drill to the first successful IMAP login in the copy.
    pub rto_seconds: Option<f64>,
    /// Held archive copies delivered into the copy (mail a failover would have to replay).
    pub replayed: usize,
    pub replayed_bytes: u64,
    pub replay_failed: usize,
    /// Why the replay was not done or incomplete.
    pub replay_notes: Vec<String>,
    pub probes: Vec<Probe>,
    pub verdict: Verdict,
    pub reasons: Vec<String>,
    pub seconds: f64,
    pub cleanup_errors: Vec<String>,
}

impl Report {
    /// Human form.
    pub fn text(&self) -> String {
        let mut s = format!(
            "drill {}/{} on {} from {} ({}): {}\n",
            self.cluster,
            self.instance,
            self.node,
            self.snapshot,
            self.snapshot_time,
            match self.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail => "FAIL",
            }
        );
        s.push_str(&format!(
            "  would-be RTO {}, RPO {:.0} s, mail at risk {} held copies ({} bytes) replayed, {} refused\n",
            self.rto_seconds
                .map(|r| format!("{r:.1} s"))
                .unwrap_or_else(|| "none (never served)".into()),
            self.rpo_seconds,
            self.replayed,
            self.replayed_bytes,
            self.replay_failed
        ));
        for p in &self.probes {
            s.push_str(&format!(
                "  probe {:<28} expected {:>5} found {:>5}{}\n",
                p.user,
                p.expected,
                p.found,
                match (&p.error, p.missing_count) {
                    (Some(e), _) => format!("  ERROR {e}"),
                    (None, 0) => "  ok".into(),
                    (None, n) => format!("  MISSING {n}: {}", p.missing.join(" ")),
                }
            ));
        }
        for n in &self.replay_notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        for r in &self.reasons {
            s.push_str(&format!("  fail: {r}\n"));
        }
        for e in &self.cleanup_errors {
            s.push_str(&format!("  warning: cleanup: {e}\n"));
        }
        s.push_str(&format!(
            "  took {:.1} s; production untouched\n",
            self.seconds
        ));
        s
    }

    /// Markdown, for a ticket or a change record.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "### Drill {}/{} on {}: **{}**\n\n| measure | value |\n|---|---|\n",
            self.cluster,
            self.instance,
            self.node,
            match self.verdict {
                Verdict::Pass => "pass",
                Verdict::Fail => "fail",
            }
        );
        s.push_str(&format!(
            "| snapshot | `{}` ({}) |\n| would-be RTO | {} |\n| RPO | {:.0} s |\n| mail at risk (replayed) | {} copies, {} bytes |\n| replay refused | {} |\n\n",
            self.snapshot,
            self.snapshot_time,
            self.rto_seconds
                .map(|r| format!("{r:.1} s"))
                .unwrap_or_else(|| "never served".into()),
            self.rpo_seconds,
            self.replayed,
            self.replayed_bytes,
            self.replay_failed
        ));
        s.push_str("| probe | expected | found | missing |\n|---|---|---|---|\n");
        for p in &self.probes {
            s.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                p.user,
                p.expected,
                p.found,
                p.error
                    .clone()
                    .unwrap_or_else(|| p.missing_count.to_string())
            ));
        }
        for r in &self.reasons {
            s.push_str(&format!("\n- fail: {r}"));
        }
        s.push('\n');
        s
    }
}

fn req_err(s: impl Into<String>) -> RestoreError {
    RestoreError::Request(s.into())
}

fn host<'a>(conns: &'a Connections, n: &str) -> Result<&'a Host, RestoreError> {
    conns.node(n).ok_or_else(|| {
        req_err(format!(
            "node {n} is unreachable: no drill; nothing was changed"
        ))
    })
}

/// The instances a drill covers: the one asked for, else every one with a drill block.
pub fn instances<'s>(
    spec: &'s Spec,
    instance: Option<&str>,
) -> Result<Vec<(&'s str, &'s Drill)>, String> {
    let v: Vec<(&str, &Drill)> = spec
        .spec
        .instances
        .iter()
        .filter(|(n, _)| instance.is_none_or(|i| n.as_str() == i))
        .filter_map(|(n, i)| i.drill.as_ref().map(|d| (n.as_str(), d)))
        .collect();
    if v.is_empty() {
        return Err(match instance {
            Some(i) if spec.spec.instances.keys().any(|n| n.as_str() == i) => {
                format!("instance {i} has no `drill:` block: nothing to rehearse")
            }
            Some(i) => format!("cluster {} has no instance `{i}`", spec.name),
            None => format!("no instance of cluster {} has a `drill:` block", spec.name),
        });
    }
    Ok(v)
}

/// Refuse a drill while the service is not settled on the spec's active node.
fn settled(spec: &Spec, obs: &crate::model::Observation, instance: &str) -> Result<(), String> {
    let active = spec.spec.active.as_str();
    for (n, o) in &obs.nodes {
        let running = o.instances.get(instance).map(|s| s.state) == Some(RunState::Running);
        if n == active && !running {
            return Err(format!(
                "instance {instance} is not running on {active}, the spec's active node: a \
                 failover or switchover is pending (run `apply`); a drill never runs during one"
            ));
        }
        if n != active && running {
            return Err(format!(
                "instance {instance} runs on {n}, not only on the active {active}: the service \
                 is moving; a drill never runs during a failover or switchover"
            ));
        }
    }
    Ok(())
}

/// Run the drill of one instance. `Err` when it could not start (nothing was changed); a
/// drill that ran gives a report whose verdict may be a failure.
pub async fn run(
    spec: &Spec,
    instance: &str,
    d: &Drill,
    node: Option<&str>,
    state_dir: &Path,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<Report, RestoreError> {
    let t0 = Instant::now();
    let started = Timestamp::now();
    let conns = observe::connect(spec).await;
    let obs = observe::observe(spec, &conns).await;
    let active = spec.spec.active.to_string();
    host(&conns, &active)?;
    settled(spec, &obs, instance).map_err(req_err)?;
    let node = match node {
        Some(n) if n == active => {
            return Err(req_err(format!(
                "{n} is the active node: a drill rehearses a failover on a passive one"
            )));
        }
        Some(n) => n.to_owned(),
        None => spec
            .spec
            .nodes
            .keys()
            .map(|n| n.to_string())
            .find(|n| *n != active && conns.node(n).is_some())
            .ok_or_else(|| req_err("no passive node is reachable: no drill"))?,
    };
    host(&conns, &node)?;
    let scratch = Mutex::new(Scratch::default());
    let mut runtime_started = false;
    let res = tokio::select! {
        r = drill_inner(spec, &conns, instance, d, &node, state_dir, &scratch, &mut runtime_started, t0, started) => r,
        _ = interrupt => Err(RestoreError::Interrupted),
    };
    // teardown, whatever happened: the drill instance first (it holds the clone open)
    let mut cleanup = Vec::new();
    if runtime_started || res.is_err() {
        let stop = jail::drill_argv(&d.stop, instance, &node, &d.mountpoint);
        if let Some(h) = conns.node(&node) {
            match h.run_timeout(&stop, SERVE_WITHIN).await {
                Ok(o) if o.success() => {}
                Ok(o) => cleanup.push(format!(
                    "drill stop on {node} exited {:?}: {}",
                    o.status,
                    o.stderr_text().trim()
                )),
                Err(e) => cleanup.push(format!("drill stop on {node}: {e}")),
            }
        }
    }
    cleanup.extend(recover::cleanup(&conns, &scratch).await);
    match res {
        Ok(mut r) => {
            r.cleanup_errors = cleanup;
            r.seconds = t0.elapsed().as_secs_f64();
            Ok(r)
        }
        Err(e) => {
            for c in cleanup {
                eprintln!("warning: cleanup: {c}");
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn drill_inner(
    spec: &Spec,
    conns: &Connections,
    instance: &str,
    d: &Drill,
    node: &str,
    state_dir: &Path,
    scratch: &Mutex<Scratch>,
    runtime_started: &mut bool,
    t0: Instant,
    started: Timestamp,
) -> Result<Report, RestoreError> {
    let active = spec.spec.active.to_string();
    let nh = host(conns, node)?;
    let ah = host(conns, &active)?;
    let pool = |n: &str| {
        spec.spec
            .nodes
            .iter()
            .find(|(x, _)| x.as_str() == n)
            .map(|(_, x)| x.pool.to_string())
            .unwrap_or_default()
    };
    let dataset = spec
        .spec
        .instances
        .iter()
        .find(|(n, _)| n.as_str() == instance)
        .map(|(_, i)| i.dataset.to_string())
        .unwrap_or_default();
    let full = format!("{}/{dataset}", pool(node));

    // 2. under the lock: settled? then the clone
    let lock = super::ClusterLock::acquire(conns, spec, false)
        .await
        .map_err(|e| req_err(format!("{e}; a drill never runs during an apply")))?;
    let obs = observe::observe(spec, conns).await;
    let cloned = async {
        settled(spec, &obs, instance).map_err(req_err)?;
        let points = rpoints::restore_points(spec, &obs, instance);
        let active_seen = obs
            .nodes
            .get(&active)
            .is_some_and(|o| o.reachability.is_reachable());
        let point = drill::drill_point(&points, node, &active, active_seen)
            .cloned()
            .ok_or_else(|| req_err(format!("{node} holds no replicated snapshot of {instance}")))?;
        let mountpoint = obs
            .nodes
            .get(node)
            .and_then(|o| o.dataset(&full))
            .and_then(|ds| {
                ds.mountpoint
                    .clone()
                    .map(|m| (m, ds.mounted.unwrap_or(false)))
            });
        recover::expose(
            conns,
            spec,
            Exposure {
                reader: node,
                full_dataset: &full,
                mountpoint,
                point: &point,
                purpose: "drill",
                readonly: false,
                clone_mountpoint: Some(d.mountpoint.clone()),
            },
            scratch,
        )
        .await?;
        Ok::<_, RestoreError>(point)
    }
    .await;
    lock.release().await;
    let point = cloned?;

    // 3. the drill instance, and the time until it serves
    let start = jail::drill_argv(&d.start, instance, node, &d.mountpoint);
    *runtime_started = true;
    let out = nh
        .run_timeout(&start, SERVE_WITHIN)
        .await
        .map_err(|source| RestoreError::Transport {
            host: node.to_owned(),
            source,
        })?;
    if !out.success() {
        return Err(req_err(format!(
            "drill start on {node} exited {:?}: {}",
            out.status,
            out.stderr_text().trim()
        )));
    }
    let password = std::fs::read_to_string(&d.password_file)
        .map_err(|e| {
            req_err(format!(
                "the probes' password file {}: {e}",
                d.password_file
            ))
        })?
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    let imap_at: std::net::SocketAddr = d
        .imap
        .parse()
        .map_err(|_| req_err(format!("drill.imap `{}`", d.imap)))?;
    let lmtp_at: std::net::SocketAddr = d
        .lmtp
        .parse()
        .map_err(|_| req_err(format!("drill.lmtp `{}`", d.lmtp)))?;
    let tunnel = |at| async move {
        nh.tunnel(at)
            .await
            .map_err(|source| RestoreError::Transport {
                host: node.to_owned(),
                source,
            })
    };
    let imap_t = tunnel(imap_at).await?;
    let lmtp_t = tunnel(lmtp_at).await;
    let login = |u: &str| d.login.replace("{user}", u);
    let first = d.probes.first().cloned().unwrap_or_default();
    let deadline = Instant::now() + SERVE_WITHIN;
    let mut rto = None;
    let mut last_err = String::new();
    while Instant::now() < deadline {
        match probe_session(&imap_t, &login(&first), &password, false).await {
            Ok(_) => {
                rto = Some(t0.elapsed().as_secs_f64());
                break;
            }
            Err(e) => last_err = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 4. the replay a failover to this node would do
    let mut notes = Vec::new();
    let mut replayed_to: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut replayed, mut replayed_bytes, mut replay_failed) = (0usize, 0u64, 0usize);
    if rto.is_some() {
        match replay(spec, conns, &obs, instance, node, &point, state_dir).await {
            Ok((todo, contents)) => match &lmtp_t {
                Ok(lt) if !todo.is_empty() => match deliver(lt, &todo, &contents).await {
                    Ok(results) => {
                        for (r, ok) in todo.iter().zip(results) {
                            if ok {
                                replayed += 1;
                                replayed_bytes += contents
                                    .get(&r.queue_id)
                                    .map_or(0, |m| m.content.len() as u64);
                                if let Some(id) = &r.message_id {
                                    replayed_to
                                        .entry(r.recipient.to_ascii_lowercase())
                                        .or_default()
                                        .push(id.clone());
                                }
                            } else {
                                replay_failed += 1;
                            }
                        }
                    }
                    Err(e) => {
                        replay_failed = todo.len();
                        notes.push(format!("LMTP session into the drill copy: {e}"));
                    }
                },
                Ok(_) => {}
                Err(e) => {
                    replay_failed = todo.len();
                    notes.push(format!("no LMTP tunnel to the drill copy: {e}"));
                }
            },
            Err(e) => notes.push(e),
        }
    } else {
        notes.push(format!("never served IMAP: {last_err}"));
    }

    // 5. the probes
    let mut probes = Vec::new();
    for user in &d.probes {
        let live = match dovecot::received_ids_argv(user) {
            Ok(argv) => match ah
                .run(&crate::adapters::mail::wrap(
                    crate::adapters::mail::MailPlace::of(spec, instance).as_ref(),
                    argv,
                ))
                .await
            {
                Ok(o) if o.success() => {
                    dovecot::parse_received_ids(&o.stdout_text()).map_err(|e| e.to_string())
                }
                Ok(o) => Err(format!(
                    "doveadm fetch on {active} exited {:?}: {}",
                    o.status,
                    o.stderr_text().trim()
                )),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        let none = Vec::new();
        let got = replayed_to.get(&user.to_ascii_lowercase()).unwrap_or(&none);
        let p = match live {
            Err(e) => Probe {
                user: user.clone(),
                expected: 0,
                found: 0,
                missing: Vec::new(),
                missing_count: 0,
                error: Some(format!("the live mailbox could not be read: {e}")),
            },
            Ok(live) => {
                let exp = drill::expected(&live, point.creation, got);
                match probe_session(&imap_t, &login(user), &password, true).await {
                    Ok(found) => Probe::check(user, &exp, &found),
                    Err(e) => Probe {
                        user: user.clone(),
                        expected: exp.len(),
                        found: 0,
                        missing: Vec::new(),
                        missing_count: exp.len(),
                        error: Some(e),
                    },
                }
            }
        };
        probes.push(p);
    }
    imap_t.close().await;
    if let Ok(t) = lmtp_t {
        t.close().await;
    }
    let (verdict, mut reasons) = drill::verdict(rto.is_some(), &probes, replay_failed);
    // an apply that moved the service tore the clone down under us (docs/DOMAIN.md)
    let ours = scratch.lock().unwrap_or_else(|p| p.into_inner()).clone_of();
    let mut verdict = verdict;
    if let Some((n, clone)) = ours
        && let Some(h) = conns.node(&n)
        && let Ok(o) = h
            .run(&crate::adapters::zfs::scratch_owner_argv(&clone))
            .await
        && !o.success()
    {
        reasons.push(format!(
            "the drill clone {clone} was torn down during the drill (an apply moved the service)"
        ));
        verdict = Verdict::Fail;
    }
    Ok(Report {
        cluster: spec.name.to_string(),
        instance: instance.to_owned(),
        node: node.to_owned(),
        snapshot: point.snapshot.clone(),
        snapshot_time: point.creation,
        started,
        rpo_seconds: (started.as_millisecond() - point.creation.as_millisecond()) as f64 / 1000.0,
        rto_seconds: rto,
        replayed,
        replayed_bytes,
        replay_failed,
        replay_notes: notes,
        probes,
        verdict,
        reasons,
        seconds: 0.0,
        cleanup_errors: Vec::new(),
    })
}

/// Log in through the tunnel; with `read`, every Message-ID of every folder.
async fn probe_session(
    t: &Tunnel,
    login: &str,
    password: &str,
    read: bool,
) -> Result<BTreeSet<String>, String> {
    let stream = t.connect().await.map_err(|e| format!("connect: {e}"))?;
    let mut c = imap::Client::start(stream, EXCHANGE)
        .await
        .map_err(|e| e.to_string())?;
    c.login(login, password)
        .await
        .map_err(|e| format!("login: {e}"))?;
    let ids = if read {
        c.all_message_ids().await.map_err(|e| e.to_string())?
    } else {
        BTreeSet::new()
    };
    let _ = c.logout().await;
    Ok(ids)
}

type Held = BTreeMap<String, crate::adapters::postfix_cmd::HeldMessage>;

/// The replays a failover to `node` anchored at `point` would do (held copies read with
/// postcat; nothing released or deleted).
async fn replay(
    spec: &Spec,
    conns: &Connections,
    obs: &crate::model::Observation,
    instance: &str,
    node: &str,
    point: &rpoints::RestorePoint,
    state_dir: &Path,
) -> Result<(Vec<crate::decide::archive::Replay>, Held), String> {
    let Some(archive) = &spec.spec.archive else {
        return Ok((Vec::new(), BTreeMap::new()));
    };
    let ah = conns
        .archive()
        .ok_or("the archive host is unreachable: the held copies could not be replayed")?;
    let queue = obs
        .archive
        .as_ref()
        .and_then(|a| a.postfix.as_ref())
        .ok_or("the archive host's queue was not observed: nothing replayed")?;
    let inst = spec
        .spec
        .instances
        .iter()
        .find(|(n, _)| n.as_str() == instance)
        .map(|(n, i)| (n.as_str(), i))
        .ok_or("no such instance")?;
    let entries = crate::decide::restore::held_for(queue.held(), &archive.address, &inst.1.domains);
    let ids: Vec<&str> = entries.iter().map(|e| e.queue_id.as_str()).collect();
    let dumped = if ids.is_empty() {
        Vec::new()
    } else {
        super::replay::dump_held(ah, &ids).await?.0
    };
    let owned: Vec<crate::model::QueueEntry> = entries.into_iter().cloned().collect();
    let held = crate::decide::archive::join_held(&owned, &dumped);
    let learned = crate::state::journal::context(&crate::state::journal::Journal::read(
        state_dir,
        spec.name.as_str(),
    ));
    let inputs = crate::decide::restore::instance_inputs(
        spec,
        obs,
        &[inst],
        &learned,
        node,
        crate::decide::restore::Window::Anchor(&point.snapshot),
    );
    let mut todo = Vec::new();
    for input in &inputs {
        let plan = crate::decide::restore::plan_instance(
            input,
            &held,
            &archive.address,
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
        todo.extend(plan.replay);
    }
    let contents = dumped
        .into_iter()
        .map(|m| (m.queue_id.clone(), m))
        .collect();
    Ok((todo, contents))
}

/// One LMTP session delivering every replay; per replay, whether it was accepted.
async fn deliver(
    t: &Tunnel,
    todo: &[crate::decide::archive::Replay],
    contents: &Held,
) -> Result<Vec<bool>, String> {
    let stream = t.connect().await.map_err(|e| format!("connect: {e}"))?;
    let mut c = smtp::Client::start_lmtp(stream, "spoolkeeper-drill", EXCHANGE)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for r in todo {
        let Some(m) = contents.get(&r.queue_id) else {
            out.push(false);
            continue;
        };
        let rcpt = [r.recipient.clone()];
        let res = c
            .send(smtp::Message {
                sender: &r.sender,
                recipients: &rcpt,
                content: &m.content,
            })
            .await
            .map_err(|e| e.to_string())?;
        out.push(matches!(res, smtp::Outcome::Accepted { ref refused, .. } if refused.is_empty()));
    }
    let _ = c.quit().await;
    Ok(out)
}
