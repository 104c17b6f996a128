//! One reconcile of one cluster: observe → plan → (lock → observe again → execute). The one
//! flow behind `plan`, `apply`, `reconcile` and each turn of the controller: same planner,
//! same journal, same lock.
//!
//! Nothing here prints: the caller is shown the plan that is about to run (or that was
//! refused) through `show`, and gets the outcome back with its messages.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use crate::apply::{self as ex, Limits, Report, Stop};
use crate::model::Observation;
use crate::observe::Connections;
use crate::plan::{self, Plan, SavedPlan, render};
use crate::spec::Spec;
use crate::state::journal::{self, Journal};

/// What one run is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub state_dir: PathBuf,
    /// Execute the plan (`apply`), or only make it (`plan`).
    pub execute: bool,
    /// Run exactly this saved plan, unless it is stale.
    pub saved: Option<SavedPlan>,
    pub force_unlock: bool,
    pub limits: Limits,
    /// Also save the plan (JSON) here.
    pub out: Option<PathBuf>,
}

/// How a run ended, beyond its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The plan was empty: the cluster is converged.
    Converged,
    /// A plan was made and not executed (`plan`), or executed and every action is done.
    Changed,
    /// A safety rule blocked the plan.
    Blocked,
    /// Another apply or controller holds the cluster lock.
    LockBusy,
    /// An error: a bad saved plan, a lock that could not be taken, a failed action.
    Failed,
}

/// The outcome of one run.
#[derive(Debug)]
pub struct Outcome {
    /// The exit code of the contract: 0 converged, 2 changes (plan only), 1 error, 3 blocked.
    pub code: u8,
    pub ended: Ended,
    /// The newest observation made (the one under the lock when there was one).
    pub observation: Option<Observation>,
    /// The plan shown (executed, refused or only printed).
    pub plan: Option<Plan>,
    /// What the executor did, when it ran.
    pub report: Option<Report>,
    /// Messages for the operator (stderr of the CLI, the log of the controller).
    pub messages: Vec<String>,
}

impl Outcome {
    fn new(code: u8, ended: Ended) -> Outcome {
        Outcome {
            code,
            ended,
            observation: None,
            plan: None,
            report: None,
            messages: Vec::new(),
        }
    }

    fn fail(mut self, message: impl Into<String>) -> Outcome {
        self.code = 1;
        self.ended = Ended::Failed;
        self.messages.push(message.into());
        self
    }
}

/// Run once. `stop` is the controller's signal state (the CLI passes a fresh one): once set,
/// no action starts; a second request aborts running commands.
pub async fn once(
    s: &Spec,
    opts: &Options,
    stop: &Stop,
    show: &mut (dyn FnMut(&Plan) + Send),
) -> Outcome {
    let conns = crate::observe::connect(s).await;
    let mut out = Outcome::new(0, Ended::Converged);
    let mut ctx = journal::context(&Journal::read(&opts.state_dir, s.name.as_str()));
    let obs = crate::observe::observe(s, &conns).await;
    if opts.execute && opts.saved.is_none() {
        // A fenced node seen again proves nothing any more, whatever this run's plan is.
        let seen = journal::fences_seen_back(&ctx, &obs);
        if !seen.is_empty() {
            match Journal::open(&opts.state_dir, s.name.as_str()) {
                Ok(mut j) => {
                    for a in &seen {
                        if j.record_done(a).is_ok() {
                            ctx.learn(a);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot journal the fences seen back"),
            }
        }
    }
    tracing::info!(cluster = %s.name, round_trips = ?conns.trips.snapshot(), "observed");
    let mut p = plan::plan(s, &obs, jiff::Timestamp::now(), &ctx);
    out.observation = Some(obs);
    if let Err(e) = p.order() {
        return out.fail(e.to_string());
    }
    if let Some(sp) = &opts.saved {
        if sp.cluster != s.name.as_str() {
            return out.fail(format!(
                "the saved plan is for cluster {}, not {}",
                sp.cluster, s.name
            ));
        }
        if sp.fingerprint != p.fingerprint {
            return out.fail(format!(
                "stale plan: the hosts changed since it was made (plan {}, now {}); run `plan` again and review it",
                sp.fingerprint, p.fingerprint
            ));
        }
        match render::from_saved(sp, s) {
            Ok(sp) => p = sp,
            Err(e) => return out.fail(format!("saved plan: {e}")),
        }
    }
    if let Some(path) = &opts.out
        && let Err(e) = std::fs::write(path, render::json(&p, Some(s)))
    {
        return out.fail(format!("cannot write {}: {e}", path.display()));
    }
    if !opts.execute {
        show(&p);
        (out.code, out.ended) = if p.is_empty() {
            (0, Ended::Converged)
        } else {
            (2, Ended::Changed)
        };
        out.plan = Some(p);
        return out;
    }
    if p.is_blocked() {
        show(&p);
        out.messages.push(format!(
            "apply refused: {} safety rule(s) blocked the plan (see above)",
            p.blocked.len()
        ));
        (out.code, out.ended) = (3, Ended::Blocked);
        out.plan = Some(p);
        return out;
    }
    if p.graph.node_count() == 0 {
        show(&p);
        out.plan = Some(p);
        return out;
    }
    // Changes: take the cluster lock (every reachable host), then look again under it.
    let lock = match ex::ClusterLock::acquire(&conns, s, opts.force_unlock).await {
        Ok(l) => l,
        Err(e) => {
            let busy = matches!(e, ex::LockError::Held { .. });
            let mut o = out.fail(e.to_string());
            if busy {
                o.ended = Ended::LockBusy;
            }
            return o;
        }
    };
    let out = lock
        .hold_while(locked(
            s,
            &conns,
            p,
            &ctx,
            opts,
            stop,
            lock.lost(),
            show,
            out,
        ))
        .await;
    lock.release().await;
    out
}

/// Under the lock: observe again, plan again (or check the saved plan still holds), execute.
#[allow(clippy::too_many_arguments)]
async fn locked(
    s: &Spec,
    conns: &Connections,
    p: Plan,
    ctx: &plan::Context,
    opts: &Options,
    stop: &Stop,
    lost: &AtomicBool,
    show: &mut (dyn FnMut(&Plan) + Send),
    mut out: Outcome,
) -> Outcome {
    let from_saved = opts.saved.is_some();
    let obs = crate::observe::observe(s, conns).await;
    let fresh = plan::plan(s, &obs, jiff::Timestamp::now(), ctx);
    out.observation = Some(obs);
    if from_saved && fresh.is_blocked() {
        // the safety rules are checked again now, under the lock, whatever the file says
        show(&fresh);
        out.messages
            .push("apply --plan refused: a safety rule blocks the cluster now (see above)".into());
        (out.code, out.ended) = (3, Ended::Blocked);
        out.plan = Some(fresh);
        return out;
    }
    let p = if fresh.fingerprint == p.fingerprint {
        p
    } else if from_saved {
        return out.fail("stale plan: the hosts changed while taking the lock; run `plan` again");
    } else {
        tracing::info!("the hosts changed while taking the lock: planning again");
        fresh
    };
    show(&p);
    if p.is_blocked() {
        (out.code, out.ended) = (3, Ended::Blocked);
        out.plan = Some(p);
        return out;
    }
    if p.graph.node_count() == 0 {
        out.plan = Some(p);
        return out;
    }
    let mut journal = match Journal::open(&opts.state_dir, s.name.as_str()) {
        Ok(j) => j,
        Err(e) => {
            return out.fail(format!(
                "cannot open the journal under {}: {e}",
                opts.state_dir.display()
            ));
        }
    };
    let report = ex::execute(s, conns, &p, &mut journal, opts.limits, lost, stop).await;
    (out.code, out.ended) = if report.ok() {
        (0, Ended::Changed)
    } else {
        (1, Ended::Failed)
    };
    out.report = Some(report);
    out.plan = Some(p);
    out
}
