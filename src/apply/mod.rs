//! The executor: walks a plan's DAG and runs each action through its adapter.
//!
//! Terraform's walk: an action starts when all it depends on is done; when one fails,
//! everything downstream is skipped as "upstream failed" and independent branches go on.
//! Parallelism is bounded globally and per host. Each action runs in a tracing span with
//! its id and is journaled before and after.

pub mod action;
pub mod error;
pub mod replay;
pub mod walk;

pub use error::ActionError;

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

/// Run a plan. Blocked plans must not reach here (the caller checks).
pub async fn execute(
    spec: &Spec,
    conns: &Connections,
    plan: &Plan,
    journal: &mut Journal,
    limits: Limits,
) -> Report {
    let mut walk = match walk::Walk::new(plan, limits) {
        Ok(w) => w,
        Err(e) => {
            return Report {
                outcomes: vec![("plan".into(), Outcome::Failed(e.to_string().into()))],
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
        // Start every ready action the limits allow, in plan order.
        for id in walk.startable() {
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
                let r = action::run(spec, conns, a, state_dir).await;
                (id, r)
            });
        }
        if running.is_empty() {
            if progress {
                continue;
            }
            break;
        }
        let Some((id, r)) = running.next().await else {
            break;
        };
        let a = &plan.graph[id];
        ended += 1;
        match r {
            Ok(()) => {
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
    walk.report()
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

/// Take the cluster lock on `host` (the active node). A stale lock of a dead process of
/// this controller is taken over; `force` breaks any lock.
pub async fn acquire_lock(host: &Host, cluster: &str, force: bool) -> Result<(), LockError> {
    let me = lock::Holder::me();
    for attempt in 0..2 {
        let out = host
            .run(&lock::acquire_argv(cluster, &me))
            .await
            .map_err(|e| LockError::Failed {
                node: host.label().into(),
                detail: e.to_string(),
            })?;
        if out.success() {
            return Ok(());
        }
        let read = host.run(&lock::read_argv(cluster)).await.ok();
        let text = read.map(|o| o.stdout_text()).unwrap_or_default();
        let holder = lock::Holder::decode(&text);
        let stale = holder.as_ref().is_some_and(lock::Holder::is_stale_here);
        if attempt == 0 && (force || stale) {
            tracing::warn!(
                holder = %holder.as_ref().map_or(text.trim().to_string(), |h| h.to_string()),
                forced = force,
                "breaking the cluster lock"
            );
            let _ = host.run(&lock::release_argv(cluster)).await;
            continue;
        }
        return Err(LockError::Held {
            cluster: cluster.into(),
            node: host.label().into(),
            holder: holder.map_or_else(
                || format!("unreadable lock `{}`", text.trim()),
                |h| h.to_string(),
            ),
        });
    }
    Err(LockError::Failed {
        node: host.label().into(),
        detail: "lock still present after breaking it".into(),
    })
}

/// Release the cluster lock if we hold it.
pub async fn release_lock(host: &Host, cluster: &str) {
    let ours = host
        .run(&lock::read_argv(cluster))
        .await
        .ok()
        .and_then(|o| lock::Holder::decode(&o.stdout_text()))
        .is_some_and(|h| {
            h.pid == std::process::id()
                && h == lock::Holder {
                    since: h.since,
                    ..lock::Holder::me()
                }
        });
    if ours {
        let _ = host.run(&lock::release_argv(cluster)).await;
    }
}
