//! The loop of one cluster: wait for the next wake, a spec change or a stop; reconcile; choose
//! the next wake. The loop is generic over the reconcile so that its timing (schedules,
//! backoff, resync) is tested on tokio's paused clock with a scripted reconcile.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use rand::Rng;

use crate::apply::Stop;
use crate::apply::run::{self, Ended};
use crate::controller::Shared;
use crate::controller::metrics::cluster as labels;
use crate::decide::backoff::{Backoff, Policy};
use crate::decide::schedule::{self, Wake};
use crate::decide::status;
use crate::spec::Spec;
use crate::state::journal::{self, Journal};

/// What one reconcile tells the loop.
#[derive(Debug, Clone)]
pub struct Turn {
    pub ended: Ended,
    /// For a converged cluster: the next time-driven due.
    pub wake: Option<Wake>,
    /// What the operator is told.
    pub alerts: super::notify::Alerts,
    /// Some host of the spec did not answer: the cluster is not converged whatever the plan
    /// did, so the loop backs off (and retries sooner than the resync) until it answers.
    pub degraded: Option<String>,
}

/// Why the loop sleeps as long as it does.
#[derive(Debug, Clone, PartialEq)]
pub struct Next {
    pub after: Duration,
    /// `snapshot`, `replication`, `prune`, `resync`, `verify`, `backoff`, `lock_busy`,
    /// `blocked`.
    pub why: String,
}

/// The timing rules, pure: the delay after a turn. `jitter` is in `[0, 1)`.
pub fn next_after(
    turn: &Turn,
    backoff: &mut Backoff,
    now: Timestamp,
    resync: Duration,
    jitter: f64,
) -> Next {
    let next = |after: Duration, why: &str| Next {
        after,
        why: why.to_owned(),
    };
    // the schedule's own delay: the due of a converged observation, or a quick look again
    // after changes (the next turn confirms convergence and reads the schedule)
    let scheduled = match (turn.ended, &turn.wake) {
        (Ended::Converged, Some(w)) => {
            let d = w.at.duration_since(now);
            let after = Duration::try_from(d).unwrap_or(Duration::ZERO).min(resync);
            let why = if after == resync {
                "resync"
            } else {
                w.due.kind()
            };
            Some(next(after, why))
        }
        (Ended::Converged, None) => Some(next(resync, "resync")),
        (Ended::Changed, _) => Some(next(Duration::from_secs(1), "verify")),
        _ => None,
    };
    match (turn.ended, scheduled) {
        (Ended::Converged | Ended::Changed, Some(sched)) => {
            if turn.degraded.is_some() {
                // a host is missing: retry with backoff, never later than the schedule
                let b = backoff.failure(jitter);
                if b < sched.after {
                    next(b, "backoff")
                } else {
                    sched
                }
            } else {
                backoff.success();
                sched
            }
        }
        // reported; re-evaluated on the resync or a spec change, never in a tight loop
        (Ended::Blocked, _) => next(resync, "blocked"),
        // another apply or controller works on the cluster: look again shortly
        (Ended::LockBusy, _) => next(
            Duration::from_secs(5) + Duration::from_secs(5).mul_f64(jitter.clamp(0.0, 1.0)),
            "lock_busy",
        ),
        (Ended::Failed | Ended::Converged | Ended::Changed, _) => {
            next(backoff.failure(jitter), "backoff")
        }
    }
}

/// The generic loop: `reconcile` is called with the current spec; `after_turn` sees each
/// turn and the chosen delay (metrics). Ends on a stop request or when the spec sender is
/// dropped (the file was removed).
#[allow(clippy::too_many_arguments)]
pub async fn run_loop<R, F, A>(
    mut spec: tokio::sync::watch::Receiver<Arc<Spec>>,
    stop: &Stop,
    policy: Policy,
    resync: Duration,
    clock: impl Fn() -> Timestamp,
    mut jitter: impl FnMut() -> f64,
    mut reconcile: R,
    mut after_turn: A,
) where
    R: FnMut(Arc<Spec>) -> F,
    F: std::future::Future<Output = Turn>,
    A: FnMut(&Spec, &Turn, &Next, &Backoff),
{
    let mut backoff = Backoff::new(policy);
    let mut sleep = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            changed = spec.changed() => {
                if changed.is_err() {
                    return; // the spec file is gone
                }
                // new information: forget the failures of the old spec
                backoff.success();
            }
            _ = stop.until(Stop::finishing) => return,
        }
        if stop.finishing() {
            return;
        }
        let s = spec.borrow_and_update().clone();
        let turn = reconcile(s.clone()).await;
        let next = next_after(&turn, &mut backoff, clock(), resync, jitter());
        after_turn(&s, &turn, &next, &backoff);
        sleep = next.after;
    }
}

/// The real loop of one cluster.
pub async fn run(shared: Arc<Shared>, spec: tokio::sync::watch::Receiver<Arc<Spec>>) {
    let opts = &shared.opts;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    let mut notified = super::notify::Episodes::default();
    let sh = shared.clone();
    run_loop(
        spec,
        &shared.stop,
        opts.backoff,
        opts.resync,
        Timestamp::now,
        move || rng.random::<f64>(),
        |s: Arc<Spec>| {
            let sh = sh.clone();
            async move { turn(&sh, &s).await }
        },
        |s, turn, next, backoff| {
            let c = s.name.as_str();
            let m = &shared.metrics;
            m.backoff_seconds
                .get_or_create(&labels(c, &[]))
                .set(backoff.current().as_secs_f64());
            m.consecutive_failures
                .get_or_create(&labels(c, &[]))
                .set(i64::from(backoff.failures()));
            let at = Timestamp::now()
                .checked_add(jiff::SignedDuration::try_from(next.after).unwrap_or_default())
                .unwrap_or(Timestamp::MAX);
            m.next_reconcile.get_or_create(&labels(c, &[])).set(at.as_millisecond() as f64 / 1000.0);
            tracing::info!(cluster = %c, result = ?turn.ended, degraded = ?turn.degraded, next_in = ?next.after, why = %next.why, "reconcile done");
            notified.update(&shared, s, &turn.alerts);
        },
    )
    .await;
}

/// One reconcile: `apply`'s flow, then the metrics and the reports.
async fn turn(shared: &Shared, s: &Spec) -> Turn {
    let opts = &shared.opts;
    let m = &shared.metrics;
    let c = s.name.as_str();
    let run_opts = run::Options {
        state_dir: opts.state_dir.clone(),
        execute: true,
        saved: None,
        force_unlock: false,
        limits: opts.limits,
        out: None,
    };
    let began = std::time::Instant::now();
    let mut shown = 0usize;
    let mut show = |p: &crate::plan::Plan| {
        shown = p.graph.node_count();
        if !p.is_empty() {
            tracing::info!(cluster = %s.name, "plan:\n{}", crate::plan::render::text(p, Some(s)));
        }
    };
    let out = run::once(s, &run_opts, &shared.stop, &mut show).await;
    let result = match out.ended {
        Ended::Converged => "converged",
        Ended::Changed => "changed",
        Ended::Blocked => "blocked",
        Ended::LockBusy => "lock_busy",
        Ended::Failed => "failed",
    };
    let elapsed = began.elapsed().as_secs_f64();
    m.reconciles
        .get_or_create(&labels(c, &[("result", result)]))
        .inc();
    m.reconcile_duration
        .get_or_create(&labels(c, &[("result", result)]))
        .observe(elapsed);
    for msg in &out.messages {
        match out.ended {
            Ended::LockBusy => tracing::info!(cluster = %c, "{msg}"),
            _ => tracing::warn!(cluster = %c, "{msg}"),
        }
    }
    match out.ended {
        Ended::Failed => {
            m.errors.get_or_create(&labels(c, &[])).inc();
        }
        Ended::LockBusy => {
            m.lock_waits.get_or_create(&labels(c, &[])).inc();
        }
        Ended::Converged | Ended::Changed => {
            m.last_success
                .get_or_create(&labels(c, &[]))
                .set(Timestamp::now().as_millisecond() as f64 / 1000.0);
        }
        Ended::Blocked => {}
    }
    if let Some(r) = &out.report {
        for t in &r.timings {
            m.action_duration
                .get_or_create(&labels(
                    c,
                    &[
                        ("kind", t.kind),
                        ("result", if t.ok { "done" } else { "failed" }),
                    ],
                ))
                .observe(t.seconds);
        }
        if let Some(p) = &out.plan {
            for t in r.timings.iter().filter(|t| t.ok) {
                let Some(bytes) = t.bytes else { continue };
                let Some(crate::plan::ActionKind::Replicate {
                    instance, target, ..
                }) = p.actions().iter().find(|a| a.id == t.id).map(|a| &a.kind)
                else {
                    continue;
                };
                m.replication_bytes
                    .get_or_create(&labels(c, &[("instance", instance), ("node", target)]))
                    .inc_by(bytes);
            }
        }
        if !r.ok() {
            tracing::warn!(cluster = %c, "{}", r.text());
        }
    }
    let rules: Vec<String> = out
        .plan
        .as_ref()
        .map(|p| p.blocked.iter().map(|b| b.rule().to_owned()).collect())
        .unwrap_or_default();
    m.set_blocked(c, &rules);
    let now = Timestamp::now();
    let records = Journal::read(&opts.state_dir, c);
    m.set_drills(c, &records);
    let mut wake = None;
    let error = (out.ended == Ended::Failed).then(|| {
        let mut e = out.messages.join("; ");
        if let Some(r) = &out.report {
            for (id, err) in r.root_causes() {
                e.push_str(&format!(
                    "{}{id}: {err}",
                    if e.is_empty() { "" } else { "; " }
                ));
            }
        }
        e
    });
    let mut alerts = super::notify::Alerts {
        error: error.clone(),
        blocked: rules.clone(),
        ..Default::default()
    };
    if let Some(obs) = &out.observation {
        let st = status::status(s, obs, &records, now);
        m.set_status(&st);
        if out.ended == Ended::Converged {
            wake = Some(schedule::next_wake(s, obs, now, opts.resync));
        }
        let ctx = journal::context(&records);
        alerts = super::notify::alerts(s, obs, &ctx, &rules, error, now);
    }
    let degraded = out.observation.as_ref().and_then(|o| {
        let mut down: Vec<&str> = o
            .nodes
            .iter()
            .filter(|(_, n)| !n.reachability.is_reachable())
            .map(|(k, _)| k.as_str())
            .collect();
        if o.archive
            .as_ref()
            .is_some_and(|a| !a.reachability.is_reachable())
        {
            down.push("archive");
        }
        (!down.is_empty()).then(|| format!("unreachable: {}", down.join(", ")))
    });
    if let Some(d) = &degraded {
        tracing::warn!(cluster = %c, "{d}: retrying with backoff");
    }
    Turn {
        ended: out.ended,
        wake,
        alerts,
        degraded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::schedule::Due;
    use std::sync::Mutex;

    fn spec() -> Arc<Spec> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lab.yaml");
        let text = std::fs::read(&path).unwrap();
        Arc::new(crate::spec::parse(&path, &text).unwrap())
    }

    /// Virtual wall clock: the paused tokio clock, from a fixed instant.
    fn clock(start: tokio::time::Instant) -> impl Fn() -> Timestamp {
        move || {
            let base: Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
            base.checked_add(jiff::SignedDuration::try_from(start.elapsed()).unwrap())
                .unwrap()
        }
    }

    /// Run the loop with a script of outcomes; return the virtual seconds of each call.
    async fn script(
        turns: Vec<Turn>,
        policy: Policy,
        resync: Duration,
        edit_at: Option<(usize, Arc<Spec>)>,
    ) -> (Vec<u64>, Vec<Next>) {
        let start = tokio::time::Instant::now();
        let (tx, rx) = tokio::sync::watch::channel(spec());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let nexts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(Stop::default());
        let n = turns.len();
        let turns = Arc::new(Mutex::new(turns.into_iter()));
        let c2 = calls.clone();
        let st2 = stop.clone();
        let tx = Arc::new(tx);
        let tx2 = tx.clone();
        let edit = Arc::new(Mutex::new(edit_at));
        let fut = run_loop(
            rx,
            &stop,
            policy,
            resync,
            clock(start),
            || 0.5,
            move |_s| {
                let calls = c2.clone();
                let turns = turns.clone();
                let stop = st2.clone();
                let tx = tx2.clone();
                let edit = edit.clone();
                async move {
                    let k = {
                        let mut c = calls.lock().unwrap();
                        c.push(start.elapsed().as_secs());
                        c.len()
                    };
                    let t = turns.lock().unwrap().next();
                    if k >= n {
                        stop.request();
                    }
                    let mut e = edit.lock().unwrap();
                    if e.as_ref().is_some_and(|(at, _)| *at == k)
                        && let Some((_, s)) = e.take()
                    {
                        // the operator edits the spec right after this call
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            let _ = tx.send(s);
                        });
                    }
                    t.unwrap_or(Turn {
                        ended: Ended::Converged,
                        wake: None,
                        alerts: Default::default(),
                        degraded: None,
                    })
                }
            },
            {
                let nexts = nexts.clone();
                move |_, _, n: &Next, _| nexts.lock().unwrap().push(n.clone())
            },
        );
        fut.await;
        let c = calls.lock().unwrap().clone();
        let n = nexts.lock().unwrap().clone();
        (c, n)
    }

    fn t(ended: Ended) -> Turn {
        Turn {
            ended,
            wake: None,
            alerts: Default::default(),
            degraded: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_is_capped_and_resets_after_the_first_success() {
        use Ended::*;
        let policy = Policy {
            base: Duration::from_secs(4),
            cap: Duration::from_secs(30),
        };
        let turns = vec![
            t(Failed),
            t(Failed),
            t(Failed),
            t(Failed),
            t(Failed),
            t(Changed),
            t(Failed),
            t(Failed),
        ];
        let (calls, nexts) = script(turns, policy, Duration::from_secs(300), None).await;
        // jitter 0.5: delays are 3/4 of 4, 8, 16, 30(cap), 30 → 3, 6, 12, 22.5, 22.5; then a
        // success (verify in 1 s) and the backoff starts again from 3
        let gaps: Vec<u64> = nexts.iter().map(|n| n.after.as_millis() as u64).collect();
        assert_eq!(
            gaps,
            vec![3_000, 6_000, 12_000, 22_500, 22_500, 1_000, 3_000, 6_000]
        );
        // and the loop really slept that long (virtual seconds of each call)
        assert_eq!(calls, vec![0, 3, 9, 21, 43, 66, 67, 70]);
        assert_eq!(nexts[6].why, "backoff");
    }

    #[tokio::test(start_paused = true)]
    async fn converged_sleeps_until_the_due_and_blocked_waits_for_the_resync() {
        use Ended::*;
        let due_in = |secs: i64| Turn {
            ended: Converged,
            wake: Some(Wake {
                at: "2026-12-02T12:00:00Z"
                    .parse::<Timestamp>()
                    .unwrap()
                    .checked_add(jiff::SignedDuration::from_secs(secs))
                    .unwrap(),
                due: Due::Snapshot {
                    instance: "students".into(),
                    node: "node-a".into(),
                },
            }),
            alerts: Default::default(),
            degraded: None,
        };
        // call 1 at 0 s: due at 40 s; call 2 at 40 s: due at 10000 s → capped by the
        // resync (120 s); call 3 at 160: blocked → the resync; call 4 at 280: lock busy
        // (5 s + half of 5 s); call 5.
        let turns = vec![
            due_in(40),
            due_in(10_000),
            t(Blocked),
            t(LockBusy),
            t(Converged),
        ];
        let (calls, nexts) = script(turns, Policy::default(), Duration::from_secs(120), None).await;
        assert_eq!(calls, vec![0, 40, 160, 280, 287], "{nexts:?}");
        let why: Vec<&str> = nexts.iter().map(|n| n.why.as_str()).collect();
        assert_eq!(why[..4], ["snapshot", "resync", "blocked", "lock_busy"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spec_change_wakes_a_blocked_cluster_at_once_and_resets_the_backoff() {
        use Ended::*;
        let mut edited = (*spec()).clone();
        edited.spec.active = crate::spec::NodeName::new("node-b").unwrap();
        let turns = vec![t(Failed), t(Failed), t(Blocked), t(Failed)];
        let (calls, _) = script(
            turns,
            Policy {
                base: Duration::from_secs(4),
                cap: Duration::from_secs(30),
            },
            Duration::from_secs(600),
            Some((3, Arc::new(edited))),
        )
        .await;
        // failed at 0 (3 s), failed at 3 (6 s), blocked at 9: resync would be 609, but the
        // edit 3 s later wakes it at 12
        assert_eq!(calls, vec![0, 3, 9, 12]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_host_backs_off_but_never_past_the_schedule() {
        use Ended::*;
        let degraded = |due_in: i64| Turn {
            ended: Converged,
            wake: Some(Wake {
                at: "2026-12-02T12:00:00Z"
                    .parse::<Timestamp>()
                    .unwrap()
                    .checked_add(jiff::SignedDuration::from_secs(due_in))
                    .unwrap(),
                due: Due::Resync,
            }),
            alerts: Default::default(),
            degraded: Some("unreachable: node-b".into()),
        };
        let p = Policy {
            base: Duration::from_secs(4),
            cap: Duration::from_secs(60),
        };
        // due far away: the backoff decides (3, 6, 12 s); due at 25 s: the schedule wins over
        // a 24 s backoff only when it is sooner; then healed: back to the schedule, reset
        let turns = vec![
            degraded(1_000),
            degraded(1_000),
            degraded(1_000),
            degraded(25),
            t(Failed),
        ];
        let (calls, nexts) = script(turns, p, Duration::from_secs(600), None).await;
        assert_eq!(calls, vec![0, 3, 9, 21, 25], "{nexts:?}");
        let why: Vec<&str> = nexts.iter().map(|n| n.why.as_str()).collect();
        assert_eq!(why[..4], ["backoff", "backoff", "backoff", "resync"]);
    }
}
