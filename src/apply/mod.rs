//! The executor: walks a plan's DAG and runs each action through its adapter.
//!
//! Terraform's walk: an action starts when all it depends on is done; when one fails,
//! everything downstream is skipped as "upstream failed" and independent branches go on.
//! Parallelism is bounded globally and per host. Each action runs in a tracing span with
//! its id and is journaled before and after.

pub mod replay;
pub mod walk;

use futures::stream::{FuturesUnordered, StreamExt};

use crate::observe::Connections;
use crate::plan::{Action, ActionKind, Plan, Target, commands};
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
    Failed(String),
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
    pub fn root_causes(&self) -> Vec<(&str, &str)> {
        self.outcomes
            .iter()
            .filter_map(|(id, o)| match o {
                Outcome::Failed(e) => Some((id.as_str(), e.as_str())),
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
                outcomes: vec![("plan".into(), Outcome::Failed(e.to_string()))],
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
                walk.finish(id, Outcome::Failed(format!("journal write failed: {e}")));
                continue;
            }
            walk.start(id);
            running.push(async move {
                let span = tracing::info_span!("action", id = %a.id, host = %a.host);
                let _g = span.enter();
                tracing::info!(summary = %a.kind.summary(), "start");
                let r = run_action(spec, conns, a, state_dir).await;
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
                if let Err(je) = journal.record(&a.id, Phase::Failed, Some(e.clone())) {
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

fn host_of<'c>(conns: &'c Connections, t: &Target) -> Result<&'c Host, String> {
    match t {
        Target::Node(n) => conns.node(n).ok_or_else(|| format!("{n} is not connected")),
        Target::Archive => conns
            .archive()
            .ok_or_else(|| "archive host is not connected".into()),
        Target::Controller => Ok(&conns.local),
    }
}

async fn run_action(
    spec: &Spec,
    conns: &Connections,
    a: &Action,
    state_dir: &std::path::Path,
) -> Result<(), String> {
    if let ActionKind::Replicate {
        source,
        target,
        relay: true,
        ..
    } = &a.kind
    {
        let cmds = commands(spec, a)?;
        let (send, recv) = match cmds.as_slice() {
            [s, r] => (s, r),
            _ => return Err("relay replication needs a send and a receive".into()),
        };
        return relay(
            host_of(conns, &Target::Node(source.clone()))?,
            host_of(conns, &Target::Node(target.clone()))?,
            send,
            recv,
        )
        .await;
    }
    if let ActionKind::VerifyGuid { source, target, .. } = &a.kind {
        let cmds = commands(spec, a)?;
        let mut guids = Vec::new();
        for (node, argv) in [source, target].into_iter().zip(&cmds) {
            let h = host_of(conns, &Target::Node(node.clone()))?;
            let out = h.run(argv).await.map_err(|e| e.to_string())?;
            if !out.success() {
                return Err(format!(
                    "{node}: `{}`: {}",
                    argv.join(" "),
                    out.stderr_text().trim()
                ));
            }
            guids.push(out.stdout_text().trim().to_string());
        }
        return if guids.len() == 2 && guids[0] == guids[1] && !guids[0].is_empty() {
            Ok(())
        } else {
            Err(format!(
                "guid mismatch after the send: {source} has {:?}, {target} has {:?}; nothing was switched",
                guids.first(),
                guids.get(1)
            ))
        };
    }
    if let ActionKind::ArchRestore {
        instance,
        node,
        anchor,
    } = &a.kind
    {
        use crate::decide::restore::{Target, Window};
        let target = Target {
            node: node.as_deref(),
            window: match (node, anchor) {
                (_, Some(a)) => Window::Anchor(a),
                (Some(_), None) => Window::Everything,
                (None, None) => Window::Newest,
            },
        };
        // A fresh look: the instance was just started, the archive queue moved on.
        let obs = crate::observe::observe(spec, conns).await;
        let report =
            replay::run(spec, conns, &obs, Some(instance), target, false, state_dir).await?;
        tracing::info!(instance = %instance, report = %report.text().trim(), "arch-restore");
        return if report.ok() {
            Ok(())
        } else {
            Err(format!(
                "arch-restore of {instance}: {}",
                report.text().trim()
            ))
        };
    }
    if let ActionKind::WaitDelivered { instance, domains } = &a.kind {
        return wait_delivered(host_of(conns, &a.host)?, instance, domains).await;
    }
    let host = host_of(conns, &a.host)?;
    let stdin = crate::plan::stdin_of(a)?;
    for argv in commands(spec, a)? {
        let out = match &stdin {
            Some(input) => host.run_with_stdin(&argv, input).await,
            None => host.run(&argv).await,
        }
        .map_err(|e| e.to_string())?;
        if !out.success() && already_done(&a.kind, &out.stderr_text()) {
            tracing::info!(action = %a.id, "already in place");
            continue;
        }
        if !out.success() {
            return Err(format!(
                "`{}` exited {}: {}",
                argv.join(" "),
                out.status.map_or("by a signal".into(), |c| c.to_string()),
                out.stderr_text().trim()
            ));
        }
    }
    Ok(())
}

/// How long a switchover waits for the old node's queue to deliver the instance's mail.
const WAIT_DELIVERED: std::time::Duration = std::time::Duration::from_secs(60);

/// Poll the host's queue until nothing is queued for `domains` (the local deliveries of an
/// instance; its archive copies are at the archive domain and do not count).
async fn wait_delivered(host: &Host, instance: &str, domains: &[String]) -> Result<(), String> {
    let argv = crate::adapters::postfix::postqueue_argv();
    let until = std::time::Instant::now() + WAIT_DELIVERED;
    loop {
        let out = host.run(&argv).await.map_err(|e| e.to_string())?;
        if !out.success() {
            return Err(format!(
                "`{}` exited {:?}: {}",
                argv.join(" "),
                out.status,
                out.stderr_text().trim()
            ));
        }
        let queue = crate::adapters::postfix::parse_postqueue(&out.stdout_text())
            .map_err(|e| e.to_string())?;
        let pending = crate::decide::restore::spool_pending(&queue, domains).len();
        if pending == 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= until {
            return Err(format!(
                "{pending} message(s) for {instance} are still queued on {} after {}s (their delivery fails: check the mailbox server there, `postqueue -p`); the switchover stopped before the final snapshot and changes nothing else; apply again once they are delivered",
                host.label(),
                WAIT_DELIVERED.as_secs()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Holds and releases are idempotent: a hold that exists or a release of a hold that is
/// gone is the wanted state (a journal lost or an apply killed between the two records).
fn already_done(kind: &ActionKind, stderr: &str) -> bool {
    let e = stderr.to_ascii_lowercase();
    match kind {
        ActionKind::Hold { .. } => e.contains("tag already exists"),
        ActionKind::Release { .. } => e.contains("no such tag"),
        _ => false,
    }
}

/// The relay transport: `zfs send` on the source, `zfs receive` on the target, the stream
/// copied through the controller. The receive's status decides; a failed send makes the
/// receive see a truncated stream and fail.
async fn relay(src: &Host, dst: &Host, send: &[String], recv: &[String]) -> Result<(), String> {
    let mut sender = src.spawn(send).await.map_err(|e| e.to_string())?;
    let mut receiver = dst.spawn(recv).await.map_err(|e| e.to_string())?;
    let copied = tokio::io::copy(&mut sender.stdout, &mut receiver.stdin).await;
    // Close the receive's stdin (drop it: a tokio pipe's shutdown does not close it) so it
    // sees the end of the stream.
    let _ = tokio::io::AsyncWriteExt::flush(&mut receiver.stdin).await;
    drop(std::mem::replace(
        &mut receiver.stdin,
        Box::pin(tokio::io::sink()),
    ));
    let sent = sender.wait().await.map_err(|e| e.to_string())?;
    let received = receiver.wait().await.map_err(|e| e.to_string())?;
    let bytes = copied.map_err(|e| format!("relaying the stream: {e}"))?;
    if !received.success() {
        return Err(format!(
            "zfs receive exited {:?}: {} (send: {})",
            received.status,
            received.stderr_text().trim(),
            sent.stderr_text().trim()
        ));
    }
    if !sent.success() {
        return Err(format!(
            "zfs send exited {:?}: {}",
            sent.status,
            sent.stderr_text().trim()
        ));
    }
    tracing::info!(bytes, "relayed");
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::host::{AnyHost, LocalHost, RoundTrips};

    fn local(label: &str, trips: &RoundTrips) -> Host {
        Host::new(label, AnyHost::Local(LocalHost), trips)
    }

    #[tokio::test]
    async fn relay_copies_the_whole_stream_and_the_receiver_decides() {
        let trips = RoundTrips::default();
        let (src, dst) = (local("src", &trips), local("dst", &trips));
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received");
        // 5 MB of data through the controller.
        let send: Vec<String> = ["sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let recv: Vec<String> = vec![
            "sh".into(),
            "-c".into(),
            "cat > \"$1\"".into(),
            "sh".into(),
            out.display().to_string(),
        ];
        relay(&src, &dst, &send, &recv).await.unwrap();
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 5_000_000);

        // A receiver that fails (a truncated or refused stream) fails the transfer.
        let bad: Vec<String> = [
            "sh",
            "-c",
            "cat > /dev/null; echo 'cannot receive' >&2; exit 1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let e = relay(&src, &dst, &send, &bad).await.unwrap_err();
        assert!(e.contains("cannot receive"), "{e}");

        // A sender that fails after part of the stream fails it too.
        let broken: Vec<String> = ["sh", "-c", "printf partial; exit 2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = relay(&src, &dst, &broken, &recv).await.unwrap_err();
        assert!(e.contains("zfs send exited"), "{e}");
    }

    #[test]
    fn holds_and_releases_are_idempotent_other_failures_are_not() {
        let hold = ActionKind::Hold {
            dataset: "p/d".into(),
            snapshot: "s".into(),
        };
        let release = ActionKind::Release {
            dataset: "p/d".into(),
            snapshot: "s".into(),
        };
        assert!(already_done(
            &hold,
            "cannot hold snapshot 'p/d@s': tag already exists on this dataset"
        ));
        assert!(already_done(
            &release,
            "cannot release hold from snapshot 'p/d@s': no such tag on this dataset"
        ));
        assert!(!already_done(
            &hold,
            "cannot hold snapshot 'p/d@s': dataset does not exist"
        ));
        assert!(!already_done(
            &ActionKind::Mount {
                dataset: "p/d".into()
            },
            "tag already exists"
        ));
    }
}
