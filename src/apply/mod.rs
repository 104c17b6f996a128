//! The executor: walks a plan's DAG and runs each action through its adapter.
//!
//! Terraform's walk: an action starts when all it depends on is done; when one fails,
//! everything downstream is skipped as "upstream failed" and independent branches go on.
//! Parallelism is bounded globally and per host. Each action runs in a tracing span with
//! its id and is journaled before and after.

pub mod action;
pub mod drill;
pub mod error;
pub mod progress;
pub mod recover;
pub mod replay;
pub mod run;
pub mod walk;

pub use error::ActionError;

use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::{FuturesUnordered, StreamExt};

use crate::observe::Connections;
use crate::plan::Plan;
use crate::spec::Spec;
use crate::transport::host::Host;

use crate::state::journal::{Journal, Phase};
use crate::state::lock;

/// How many actions may run at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub global: usize,
    pub per_host: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            global: 4,
            per_host: 2,
        }
    }
}

/// What happened to one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed(ActionError),
    /// Not run because `upstream` (an action it depends on, directly or not) failed.
    Skipped {
        upstream: String,
    },
}

/// The result of an apply run, in plan order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub outcomes: Vec<(String, Outcome)>,
    /// How long each action that ran took (kind label, id, seconds, success), in the order
    /// they ended.
    pub timings: Vec<Timing>,
}

/// How long one action ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    pub id: String,
    pub kind: &'static str,
    pub seconds: f64,
    pub ok: bool,
    /// For a replication: the bytes of the stream.
    pub bytes: Option<u64>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.outcomes.iter().all(|(_, o)| *o == Outcome::Done)
    }

    /// The actions that failed by themselves (the root causes), not those skipped.
    pub fn root_causes(&self) -> Vec<(&str, &ActionError)> {
        self.outcomes
            .iter()
            .filter_map(|(id, o)| match o {
                Outcome::Failed(e) => Some((id.as_str(), e)),
                _ => None,
            })
            .collect()
    }

    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut t = String::new();
        let done = self
            .outcomes
            .iter()
            .filter(|(_, o)| *o == Outcome::Done)
            .count();
        let skipped = self
            .outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Skipped { .. }))
            .count();
        let failed = self.root_causes();
        let _ = writeln!(
            t,
            "Apply: {done} done, {} failed, {skipped} skipped (upstream failed).",
            failed.len()
        );
        for (id, e) in failed {
            let _ = writeln!(t, "  FAILED {id}: {e}");
            let _ = writeln!(t, "    what to do: {}", e.remedy());
        }
        t
    }
}

/// A request to stop, from signals: the first lets running actions finish and starts no
/// new one (never the middle of a send, a rollback or a start); the second aborts the
/// commands that run (the journal records them failed; the next run is safe).
#[derive(Debug, Default)]
pub struct Stop {
    finishing: AtomicBool,
    aborting: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Stop {
    /// One more stop request (a signal): the first finishes, the second aborts.
    pub fn request(&self) {
        if self.finishing.swap(true, Ordering::SeqCst) {
            self.aborting.store(true, Ordering::SeqCst);
        }
        self.wake.notify_waiters();
    }

    /// No new work may start.
    pub fn finishing(&self) -> bool {
        self.finishing.load(Ordering::SeqCst)
    }

    /// Running commands are to be abandoned.
    pub fn aborting(&self) -> bool {
        self.aborting.load(Ordering::SeqCst)
    }

    /// Resolves at the next request (or at once when `pred` already holds).
    pub async fn until(&self, pred: impl Fn(&Stop) -> bool) {
        loop {
            let notified = self.wake.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if pred(self) {
                return;
            }
            notified.await;
        }
    }
}

/// Run a plan. Blocked plans must not reach here (the caller checks).
pub async fn execute(
    spec: &Spec,
    conns: &Connections,
    plan: &Plan,
    journal: &mut Journal,
    limits: Limits,
    lock_lost: &AtomicBool,
    stop: &Stop,
) -> Report {
    let mut walk = match walk::Walk::new(plan, limits) {
        Ok(w) => w,
        Err(e) => {
            return Report {
                outcomes: vec![("plan".into(), Outcome::Failed(e.to_string().into()))],
                timings: Vec::new(),
            };
        }
    };
    let state_dir_buf = journal.state_dir().to_owned();
    let state_dir = state_dir_buf.as_path();
    let mut running = FuturesUnordered::new();
    // Test hook for the boundary drills: SIGKILL ourselves once this many actions ended, as a
    // power cut of the controller would (no cleanup, lock left behind, journal as it is).
    let kill_after: Option<usize> = std::env::var("SPOOLKEEPER_TEST_KILL_AFTER_ACTIONS")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut ended = 0usize;
    let mut timings = Vec::new();
    loop {
        let mut progress = false;
        for (id, up) in walk.skip_upstream_failed() {
            progress = true;
            let a = &plan.graph[id];
            let _ = journal.record(
                &a.id,
                Phase::Skipped,
                Some(format!("upstream failed: {up}")),
            );
            tracing::warn!(action = %a.id, upstream = %up, "skipped: upstream failed");
        }
        // Start every ready action the limits allow, in plan order; none once the cluster
        // lock is lost (another controller took it over): what runs ends, the rest is
        // reported not run.
        let startable = if lock_lost.load(Ordering::SeqCst) || stop.finishing() {
            Vec::new()
        } else {
            walk.startable()
        };
        for id in startable {
            progress = true;
            let a = &plan.graph[id];
            if let Err(e) = journal.record(&a.id, Phase::Start, None) {
                // No durable record, no action: the journal is what makes a rerun safe.
                walk.finish(id, Outcome::Failed(ActionError::Journal(e.to_string())));
                continue;
            }
            walk.start(id);
            running.push(async move {
                let span = tracing::info_span!("action", id = %a.id, host = %a.host);
                let _g = span.enter();
                tracing::info!(summary = %a.kind.summary(), "start");
                let began = std::time::Instant::now();
                let r = action::run(spec, conns, a, state_dir).await;
                (id, r, began.elapsed().as_secs_f64())
            });
        }
        if running.is_empty() {
            if progress {
                continue;
            }
            break;
        }
        let next = tokio::select! {
            n = running.next() => n,
            _ = stop.until(Stop::aborting) => None,
        };
        let Some((id, r, seconds)) = next else {
            if stop.aborting() {
                // abandoned: the commands are killed as their futures drop
                drop(running);
                for id in walk.running() {
                    let a = &plan.graph[id];
                    let why = "aborted by a second stop signal while it ran".to_owned();
                    let _ = journal.record(&a.id, Phase::Failed, Some(why.clone()));
                    tracing::error!(action = %a.id, "aborted while running");
                    walk.finish(id, Outcome::Failed(why.into()));
                }
                return Report {
                    timings,
                    ..walk.report()
                };
            }
            break;
        };
        let a = &plan.graph[id];
        ended += 1;
        timings.push(Timing {
            id: a.id.clone(),
            kind: a.kind.name(),
            seconds,
            ok: r.is_ok(),
            bytes: r.as_ref().ok().copied().flatten(),
        });
        match r {
            Ok(_) => {
                if let Err(e) = journal.record_done(a) {
                    // The step happened; only its record is missing. Later plans re-derive
                    // what they can from the hosts (holds and fences are idempotent).
                    tracing::error!(action = %a.id, error = %e, "journal write failed after the action completed");
                }
                tracing::info!(action = %a.id, "done");
                walk.finish(id, Outcome::Done);
            }
            Err(e) => {
                if let Err(je) = journal.record(&a.id, Phase::Failed, Some(e.to_string())) {
                    tracing::error!(action = %a.id, error = %je, "journal write failed");
                }
                tracing::error!(action = %a.id, error = %e, "failed");
                walk.finish(id, Outcome::Failed(e));
            }
        }
        if kill_after == Some(ended) {
            let pid = std::process::id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status();
            std::process::abort();
        }
    }
    Report {
        timings,
        ..walk.report()
    }
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another apply holds the lock of cluster {cluster} on {node}: {holder}; wait for it, or if it is dead run again with --force-unlock"
    )]
    Held {
        cluster: String,
        node: String,
        holder: String,
    },
    #[error("cannot take the lock on {node}: {detail}")]
    Failed { node: String, detail: String },
}

/// The cluster lock, held on every host it could be taken on (see `crate::state::lock`).
pub struct ClusterLock<'c> {
    cluster: String,
    me: lock::Holder,
    hosts: Vec<&'c Host>,
    lost: AtomicBool,
}

impl<'c> ClusterLock<'c> {
    /// Take the lock of `spec`'s cluster on every reachable node (by name) and on the
    /// archive host, all or nothing. A stale lock is taken over (see `crate::state::lock`);
    /// `force` breaks any lock.
    pub async fn acquire(
        conns: &'c Connections,
        spec: &Spec,
        force: bool,
    ) -> Result<ClusterLock<'c>, LockError> {
        let cluster = spec.name.as_str();
        let mut hosts: Vec<&Host> = spec
            .spec
            .nodes
            .keys()
            .filter_map(|n| conns.node(n.as_str()))
            .collect();
        hosts.extend(conns.archive());
        if hosts.is_empty() {
            return Err(LockError::Failed {
                node: "every host".into(),
                detail: "no host of the cluster answers: nothing to lock, nothing to act on".into(),
            });
        }
        let me = lock::Holder::me(jiff::Timestamp::now());
        let mut taken = ClusterLock {
            cluster: cluster.to_owned(),
            me: me.clone(),
            hosts: Vec::new(),
            lost: AtomicBool::new(false),
        };
        // The first host in spec order alone, then the others together: two takers meet on
        // the first host and one gives up before touching the others (all or nothing
        // either way), and a turn waits for one round of lock commands, not one per host.
        let mut first = None;
        let (head, rest) = hosts.split_at(1);
        for h in head {
            take_one(h, cluster, &me, force).await?;
            taken.hosts.push(h);
        }
        let results =
            futures::future::join_all(rest.iter().map(|h| take_one(h, cluster, &me, force))).await;
        for (h, r) in rest.iter().zip(results) {
            match r {
                Ok(()) => taken.hosts.push(h),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first {
            taken.release().await;
            return Err(e);
        }
        Ok(taken)
    }

    /// Set when a renewal found the lock taken by someone else: no action starts any more.
    pub fn lost(&self) -> &AtomicBool {
        &self.lost
    }

    /// Renew the lease on every host (under the takeover token, so that a renewal never
    /// overwrites a takeover). A lock that is not ours any more marks the lock lost.
    pub async fn renew(&self) {
        let renewed = self.me.renewed(jiff::Timestamp::now());
        let results = futures::future::join_all(
            self.hosts
                .iter()
                .map(|h| renew_one(h, &self.cluster, &self.me, &renewed)),
        )
        .await;
        for (h, r) in self.hosts.iter().zip(results) {
            match r {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(host = %h.label(), "the cluster lock was taken over: no further action starts");
                    self.lost.store(true, Ordering::SeqCst);
                }
                Err(e) => {
                    tracing::warn!(host = %h.label(), error = %e, "lease not renewed this time")
                }
            }
        }
    }

    /// Run `work` while renewing the lease every `lock::RENEW_EVERY`.
    pub async fn hold_while<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tokio::time::sleep(lock::RENEW_EVERY) => self.renew().await,
            }
        }
    }

    /// Release the lock where it is still ours.
    pub async fn release(&self) {
        futures::future::join_all(self.hosts.iter().map(|h| async move {
            let ours = read_holder(h, &lock::read_argv(&self.cluster))
                .await
                .is_some_and(|(_, holder)| holder.is_some_and(|x| x.same(&self.me)));
            if ours {
                let _ = h.run(&lock::release_argv(&self.cluster)).await;
            }
        }))
        .await;
    }
}

async fn read_holder(h: &Host, argv: &[String]) -> Option<(String, Option<lock::Holder>)> {
    let out = h.run(argv).await.ok()?;
    if !out.success() {
        return None;
    }
    let text = out.stdout_text().trim().to_owned();
    let holder = lock::Holder::decode(&text);
    Some((text, holder))
}

fn failed(h: &Host, e: impl std::fmt::Display) -> LockError {
    LockError::Failed {
        node: h.label().into(),
        detail: e.to_string(),
    }
}

/// Take the lock on one host, taking a stale one over.
async fn take_one(
    h: &Host,
    cluster: &str,
    me: &lock::Holder,
    force: bool,
) -> Result<(), LockError> {
    let out = h
        .run(&lock::acquire_argv(cluster, me))
        .await
        .map_err(|e| failed(h, e))?;
    if out.success() {
        return Ok(());
    }
    let (text, holder) = read_holder(h, &lock::read_argv(cluster))
        .await
        .unwrap_or_default();
    let held = |why: String| LockError::Held {
        cluster: cluster.into(),
        node: h.label().into(),
        holder: why,
    };
    let local = lock::local();
    let stale = holder
        .as_ref()
        .and_then(|x| x.stale(&local, jiff::Timestamp::now(), lock::alive));
    let described = holder.as_ref().map_or_else(
        || {
            if text.is_empty() {
                "a lock that vanished while it was read".to_owned()
            } else {
                format!("unreadable lock `{text}`")
            }
        },
        |x| x.to_string(),
    );
    if !(force || stale.is_some() || text.is_empty()) {
        return Err(held(described));
    }
    tracing::warn!(host = %h.label(), holder = %described, stale = ?stale, forced = force, "breaking the cluster lock (taking it over)");
    if take_over(h, cluster, me, &text).await? {
        Ok(())
    } else {
        Err(held(format!(
            "{described} (another controller took it first)"
        )))
    }
}

/// Under the takeover token: replace the lock if it is still `seen` (or create it if it is
/// gone). `Ok(false)`: another taker was first.
async fn take_over(
    h: &Host,
    cluster: &str,
    me: &lock::Holder,
    seen: &str,
) -> Result<bool, LockError> {
    if !take_token(h, cluster, me).await? {
        return Ok(false);
    }
    let now = read_holder(h, &lock::read_argv(cluster))
        .await
        .map(|(t, _)| t)
        .unwrap_or_default();
    let argv = if now.is_empty() {
        Some(lock::acquire_argv(cluster, me))
    } else if now == seen.trim() {
        Some(lock::replace_argv(cluster, me))
    } else {
        None
    };
    let won = match argv {
        Some(a) => h.run(&a).await.map_err(|e| failed(h, e))?.success(),
        None => false,
    };
    let _ = h.run(&lock::token_release_argv(cluster)).await;
    Ok(won)
}

/// Take the takeover token (a stale token, left by a taker that died, is removed once).
async fn take_token(h: &Host, cluster: &str, me: &lock::Holder) -> Result<bool, LockError> {
    for attempt in 0..2 {
        let out = h
            .run(&lock::token_acquire_argv(cluster, me))
            .await
            .map_err(|e| failed(h, e))?;
        if out.success() {
            return Ok(true);
        }
        let token = read_holder(h, &lock::token_read_argv(cluster)).await;
        let stale = token
            .as_ref()
            .and_then(|(_, t)| t.as_ref())
            .is_some_and(|t| {
                t.stale(&lock::local(), jiff::Timestamp::now(), lock::alive)
                    .is_some()
            });
        if attempt == 0 && stale {
            let _ = h.run(&lock::token_release_argv(cluster)).await;
            continue;
        }
        return Ok(false);
    }
    Ok(false)
}

/// Renew our lease on one host. `Ok(false)`: the lock is not ours any more.
async fn renew_one(
    h: &Host,
    cluster: &str,
    me: &lock::Holder,
    renewed: &lock::Holder,
) -> Result<bool, LockError> {
    // the token is held only for a few commands at a time: wait for it briefly
    let mut token = false;
    for _ in 0..20 {
        if take_token(h, cluster, me).await? {
            token = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if !token {
        return Err(failed(h, "the takeover token stayed taken"));
    }
    let ours = read_holder(h, &lock::read_argv(cluster))
        .await
        .is_some_and(|(_, x)| x.is_some_and(|x| x.same(me)));
    let result = if ours {
        h.run(&lock::replace_argv(cluster, renewed))
            .await
            .map(|o| o.success())
            .map_err(|e| failed(h, e))
    } else {
        Ok(false)
    };
    let _ = h.run(&lock::token_release_argv(cluster)).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Action, ActionKind, Target};
    use crate::transport::host::{AnyHost, LocalHost, RoundTrips};

    fn spec() -> Spec {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lab.yaml");
        let text = std::fs::read(&path).unwrap();
        crate::spec::parse(&path, &text).unwrap()
    }

    fn one_action_plan() -> Plan {
        let mut p = Plan::new("lab", String::new());
        p.add(Action::new(
            Target::Controller,
            ActionKind::ForgetFence {
                node: "node-a".into(),
            },
            "test".to_string(),
        ));
        p
    }

    fn conns() -> Connections {
        let trips = RoundTrips::default();
        Connections {
            nodes: std::collections::BTreeMap::new(),
            archive: None,
            local: Host::new("controller", AnyHost::Local(LocalHost), &trips),
            trips,
        }
    }

    #[tokio::test]
    async fn nothing_starts_once_the_cluster_lock_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (s, c, p) = (spec(), conns(), one_action_plan());
        // the lock held: the action runs
        let mut j = Journal::open(dir.path(), "lab").unwrap();
        let r = execute(
            &s,
            &c,
            &p,
            &mut j,
            Limits::default(),
            &AtomicBool::new(false),
            &Stop::default(),
        )
        .await;
        assert!(r.ok(), "{}", r.text());
        // lost (another controller took it over): not started, reported, nothing journaled
        let before = Journal::read(dir.path(), "lab").len();
        let mut j = Journal::open(dir.path(), "lab").unwrap();
        let r = execute(
            &s,
            &c,
            &p,
            &mut j,
            Limits::default(),
            &AtomicBool::new(true),
            &Stop::default(),
        )
        .await;
        assert!(!r.ok());
        assert_eq!(r.root_causes().len(), 1, "{}", r.text());
        assert_eq!(Journal::read(dir.path(), "lab").len(), before);
    }

    fn fence_plan(command: &[&str]) -> (Spec, Plan) {
        let mut s = spec();
        s.spec.fencing = Some(crate::spec::Fencing {
            command: command.iter().map(|a| a.to_string()).collect(),
        });
        let mut p = Plan::new("lab", String::new());
        let fence = p.add(Action::new(
            Target::Controller,
            ActionKind::Fence {
                node: "node-a".into(),
            },
            "test".to_string(),
        ));
        let after = p.add(Action::new(
            Target::Controller,
            ActionKind::ForgetFence {
                node: "node-b".into(),
            },
            "test".to_string(),
        ));
        p.edge(fence, after);
        (s, p)
    }

    #[tokio::test]
    async fn a_stop_lets_the_running_action_finish_and_starts_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let (s, p) = fence_plan(&["sleep", "1"]);
        let c = conns();
        let stop = Stop::default();
        let mut j = Journal::open(dir.path(), "lab").unwrap();
        let lost = AtomicBool::new(false);
        let (r, ()) = tokio::join!(
            execute(&s, &c, &p, &mut j, Limits::default(), &lost, &stop),
            async {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                stop.request();
            }
        );
        assert_eq!(r.outcomes[0].1, Outcome::Done, "{}", r.text());
        assert_eq!(
            r.outcomes[1].1,
            Outcome::Failed("not run".into()),
            "{}",
            r.text()
        );
        let recs = Journal::read(dir.path(), "lab");
        assert!(recs.iter().all(|x| !x.action.contains("forget_fence")));
    }

    #[tokio::test]
    async fn a_second_stop_abandons_the_running_command_and_journals_it_failed() {
        let dir = tempfile::tempdir().unwrap();
        let (s, p) = fence_plan(&["sleep", "600"]);
        let c = conns();
        let stop = Stop::default();
        let mut j = Journal::open(dir.path(), "lab").unwrap();
        let lost = AtomicBool::new(false);
        let (r, ()) = tokio::join!(
            execute(&s, &c, &p, &mut j, Limits::default(), &lost, &stop),
            async {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                stop.request();
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                stop.request();
            }
        );
        // had it waited for `sleep 600`, the fence would be done
        let Outcome::Failed(e) = &r.outcomes[0].1 else {
            panic!("{}", r.text())
        };
        assert!(e.to_string().contains("aborted"), "{e}");
        let last = Journal::read(dir.path(), "lab").pop().unwrap();
        assert_eq!(last.phase, Phase::Failed);
        assert!(last.detail.unwrap_or_default().contains("aborted"));
        // the killed command is gone (kill_on_drop): no `sleep 600` child left
        let ps = std::process::Command::new("pgrep")
            .args(["-f", "-P", &std::process::id().to_string(), "sleep 600"])
            .output()
            .unwrap();
        assert!(!ps.status.success(), "the abandoned command still runs");
    }
}
