//! Telling the operator: log lines always, and the spec's `notify.command` (argv from
//! `adapters::notify`, the event as JSON on stdin, 30 s to finish) on each transition of an
//! episode: the active node stops answering (with the failover plan in markdown, so that the
//! reaction is one commit), a safety rule starts blocking, reconciles start failing; and
//! again when each episode ends.

use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::controller::Shared;
use crate::model::Observation;
use crate::plan::{self, Context};
use crate::spec::Spec;

/// What a turn has to report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Alerts {
    /// The active node does not answer: (node, failover advice in markdown).
    pub active_down: Option<(String, String)>,
    /// The rules blocking the plan.
    pub blocked: Vec<String>,
    /// The error of a failed reconcile.
    pub error: Option<String>,
}

/// One event, as `notify.command` reads it on stdin.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `active_unreachable`, `active_reachable`, `blocked`, `unblocked`, `failing`,
    /// `recovered`.
    pub event: &'static str,
    pub cluster: String,
    pub file: String,
    pub at: Timestamp,
    pub message: String,
    /// For `active_unreachable`: the edit to make and the plan it would run, in markdown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_plan_markdown: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
}

/// The alerts of a turn: the failover advice when the active node is unreachable.
pub fn alerts(
    s: &Spec,
    obs: &Observation,
    ctx: &Context,
    blocked: &[String],
    error: Option<String>,
    now: Timestamp,
) -> Alerts {
    let active = s.spec.active.as_str();
    let down = obs
        .nodes
        .get(active)
        .is_some_and(|n| !n.reachability.is_reachable());
    Alerts {
        active_down: down.then(|| (active.to_owned(), failover_advice(s, obs, ctx, now))),
        blocked: blocked.to_vec(),
        error,
    }
}

/// The one-line edit and the plan `apply` would run after it, for the first reachable other
/// node (in name order); pure.
pub fn failover_advice(s: &Spec, obs: &Observation, ctx: &Context, now: Timestamp) -> String {
    let active = s.spec.active.as_str();
    let Some(to) = s.spec.nodes.keys().find(|n| {
        n.as_str() != active
            && obs
                .nodes
                .get(n.as_str())
                .is_some_and(|x| x.reachability.is_reachable())
    }) else {
        return format!(
            "The active node `{active}` of cluster `{}` does not answer, and no other node does either: there is nothing to fail over to.\n",
            s.name
        );
    };
    let mut edited = s.clone();
    edited.spec.active = to.clone();
    let p = plan::plan(&edited, obs, now, ctx);
    let order = p.order();
    let mut md = format!(
        "The active node `{active}` of cluster `{}` does not answer. spoolkeeper never fails over by itself.\n\n\
         To fail over to `{to}`, edit `{}`:\n\n```diff\n-  active: {active}\n+  active: {to}\n```\n\n",
        s.name,
        s.file.display()
    );
    if s.spec.fencing.is_none() && !s.spec.fenced.iter().any(|n| n.as_str() == active) {
        md.push_str(&format!(
            "No fencing command is configured: attest that `{active}` is down and will not serve by adding it under `fenced:` in the same commit.\n\n"
        ));
    }
    match order {
        Ok(_) => {
            md.push_str("The plan `apply` would then run, as of this observation:\n\n");
            md.push_str(&plan::render::markdown(&p, Some(&edited)));
        }
        Err(e) => md.push_str(&format!("(the failover plan cannot be ordered: {e})\n")),
    }
    md
}

/// The episodes of one cluster, to notify on transitions only.
#[derive(Debug, Default)]
pub struct Episodes {
    active_down: bool,
    blocked: Vec<String>,
    failing: bool,
}

impl Episodes {
    /// Compare with the last turn; log and send an event for each change.
    pub fn update(&mut self, shared: &std::sync::Arc<Shared>, s: &Spec, a: &Alerts) {
        let mut events = Vec::new();
        let ev = |event, message: String| Event {
            event,
            cluster: s.name.to_string(),
            file: s.file.display().to_string(),
            at: Timestamp::now(),
            message,
            failover_plan_markdown: None,
            rules: Vec::new(),
        };
        match (&a.active_down, self.active_down) {
            (Some((node, md)), false) => {
                tracing::error!(cluster = %s.name, node = %node, "the active node does not answer: failover is the operator's one-line edit (active: …); the plan it would run:\n{md}");
                events.push(Event {
                    failover_plan_markdown: Some(md.clone()),
                    ..ev(
                        "active_unreachable",
                        format!(
                            "the active node {node} of cluster {} does not answer",
                            s.name
                        ),
                    )
                });
            }
            (None, true) => events.push(ev(
                "active_reachable",
                format!("the active node {} answers again", s.spec.active),
            )),
            _ => {}
        }
        self.active_down = a.active_down.is_some();
        if a.blocked != self.blocked {
            if a.blocked.is_empty() {
                events.push(ev(
                    "unblocked",
                    "no safety rule blocks the plan any more".into(),
                ));
            } else {
                tracing::error!(cluster = %s.name, rules = ?a.blocked, "the plan is blocked by a safety rule: re-evaluated on the resync or a spec change");
                events.push(Event {
                    rules: a.blocked.clone(),
                    ..ev("blocked", format!("blocked by {}", a.blocked.join(", ")))
                });
            }
            self.blocked = a.blocked.clone();
        }
        match (&a.error, self.failing) {
            (Some(e), false) => events.push(ev("failing", e.clone())),
            (None, true) => events.push(ev("recovered", "a reconcile succeeded again".into())),
            _ => {}
        }
        self.failing = a.error.is_some();
        let Some(n) = &s.spec.notify else { return };
        for e in events {
            let argv = crate::adapters::notify::notify_argv(&n.command, s.name.as_str());
            let shared = shared.clone();
            tokio::spawn(async move { send(&shared, &argv, &e).await });
        }
    }
}

async fn send(_shared: &Shared, argv: &[String], e: &Event) {
    let body = serde_json::to_vec(e).unwrap_or_default();
    let trips = crate::transport::host::RoundTrips::default();
    let local = crate::transport::host::Host::new(
        "controller",
        crate::transport::host::AnyHost::Local(crate::transport::host::LocalHost),
        &trips,
    );
    match local
        .run_with_stdin_timeout(argv, &body, Duration::from_secs(30))
        .await
    {
        Ok(o) if o.success() => tracing::info!(event = e.event, "notified"),
        Ok(o) => {
            tracing::warn!(event = e.event, code = ?o.status, stderr = %o.stderr_text().trim(), "notify.command failed")
        }
        Err(err) => tracing::warn!(event = e.event, error = %err, "notify.command did not run"),
    }
}
