//! Four views of one plan: text (operators), json (pipelines, `--out`), markdown (a merge
//! request comment), dot (graphviz). All walk the same ordered actions.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::{Action, ActionKind, Blocked, Effect, FORMAT_VERSION, Plan, SavedPlan, Target};
use crate::spec::Spec;

/// One action in the JSON plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonAction {
    /// Position in execution order, from 1.
    pub step: usize,
    pub id: String,
    pub host: Target,
    #[serde(flatten)]
    pub kind: ActionKind,
    pub effect: Effect,
    pub depends_on: Vec<String>,
    pub reason: String,
    /// The instance whose own Postfix and Dovecot the commands run in (`mail.in: runtime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<String>,
    /// The exact argv(s) the executor runs for this action, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<Vec<String>>,
}

/// One blocked rule in the JSON plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonBlocked {
    pub rule: String,
    pub message: String,
    pub remedy: String,
    pub detail: Blocked,
}

/// Counts for the summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub create: usize,
    pub change: usize,
    pub remove: usize,
    pub blocked: usize,
}

impl Summary {
    pub fn of(plan: &Plan) -> Summary {
        let mut s = Summary {
            blocked: plan.blocked.len(),
            ..Summary::default()
        };
        for a in plan.graph.node_weights() {
            match a.kind.effect() {
                Effect::Create => s.create += 1,
                Effect::Change => s.change += 1,
                Effect::Remove => s.remove += 1,
            }
        }
        s
    }

    pub fn line(&self) -> String {
        if self.create + self.change + self.remove + self.blocked == 0 {
            return "No changes: the cluster matches the spec.".into();
        }
        format!(
            "Plan: {} to add, {} to change, {} to remove or stop; {} blocked.",
            self.create, self.change, self.remove, self.blocked
        )
    }
}

/// The JSON value of a plan (stable; see docs/ARCHITECTURE.md "JSON plan").
pub fn to_saved(plan: &Plan, spec: Option<&Spec>) -> SavedPlan {
    let order = plan.order().unwrap_or_default();
    let step: BTreeMap<_, _> = order.iter().enumerate().map(|(i, n)| (*n, i + 1)).collect();
    let actions = order
        .iter()
        .map(|n| {
            let a: &Action = &plan.graph[*n];
            let mut deps: Vec<(usize, String)> = plan
                .depends_on(*n)
                .into_iter()
                .map(|d| (step.get(&d).copied().unwrap_or(0), plan.graph[d].id.clone()))
                .collect();
            deps.sort();
            JsonAction {
                step: step.get(n).copied().unwrap_or(0),
                id: a.id.clone(),
                host: a.host.clone(),
                kind: a.kind.clone(),
                effect: a.kind.effect(),
                depends_on: deps.into_iter().map(|(_, id)| id).collect(),
                reason: a.reason.clone(),
                mail: a.mail.clone(),
                commands: spec
                    .and_then(|s| crate::adapters::dispatch::commands(s, a).ok())
                    .unwrap_or_default(),
            }
        })
        .collect();
    SavedPlan {
        format_version: FORMAT_VERSION,
        cluster: plan.cluster.clone(),
        fingerprint: plan.fingerprint.clone(),
        actions,
        blocked: plan
            .blocked
            .iter()
            .map(|b| JsonBlocked {
                rule: b.rule().into(),
                message: b.to_string(),
                remedy: b.remedy(),
                detail: b.clone(),
            })
            .collect(),
        spec_digest: spec.map(super::saved::spec_digest).unwrap_or_default(),
        digest: String::new(),
    }
    .sealed()
}

/// Rebuild a plan from its JSON form (for `apply --plan`), refusing anything but the plan
/// `plan --out` wrote for this spec: an edited file (content digest), another spec (spec
/// digest), a command that is not the one printed, a blocked plan, a plan that breaks an
/// invariant. The observation is compared by the caller (the fingerprint).
pub fn from_saved(saved: &SavedPlan, spec: &Spec) -> Result<Plan, String> {
    if saved.format_version != FORMAT_VERSION {
        return Err(format!(
            "plan format_version {} is not supported (expected {FORMAT_VERSION})",
            saved.format_version
        ));
    }
    if saved.digest.is_empty() || saved.digest != saved.content_digest() {
        return Err(
            "the plan file is not what `plan --out` wrote (its digest does not match its content): it was edited or is damaged; run `plan --out` again and review it".into(),
        );
    }
    if saved.spec_digest != super::saved::spec_digest(spec) {
        return Err(
            "the spec changed since this plan was made: its commands and safety checks were decided for another spec; run `plan --out` again and review it".into(),
        );
    }
    if !saved.blocked.is_empty() {
        return Err(format!(
            "the saved plan is blocked by {} safety rule(s): it cannot be applied",
            saved.blocked.len()
        ));
    }
    let mut plan = Plan::new(&saved.cluster, saved.fingerprint.clone());
    for a in &saved.actions {
        let action = Action {
            id: a.id.clone(),
            host: a.host.clone(),
            kind: a.kind.clone(),
            reason: a.reason.clone(),
            mail: a.mail.clone(),
        };
        let now = crate::adapters::dispatch::commands(spec, &action)?;
        if now != a.commands {
            return Err(format!(
                "action {}: the saved commands are not the ones this spec builds; run `plan --out` again",
                a.id
            ));
        }
        plan.add(action);
    }
    for a in &saved.actions {
        let to = plan
            .id_of(&a.id)
            .ok_or_else(|| format!("action {} vanished", a.id))?;
        for d in &a.depends_on {
            let from = plan
                .id_of(d)
                .ok_or_else(|| format!("action {} depends on unknown {d}", a.id))?;
            plan.edge(from, to);
        }
    }
    plan.order().map_err(|e| e.to_string())?;
    let broken = plan.check(spec);
    if !broken.is_empty() {
        return Err(format!(
            "the saved plan breaks the plan invariants: {}",
            broken
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    Ok(plan)
}

pub fn json(plan: &Plan, spec: Option<&Spec>) -> String {
    /// The saved plan with the summary and the notes beside its fields, written straight
    /// out (no JSON tree in between: a purge can name a million queue ids).
    #[derive(Serialize)]
    struct Printed<'a> {
        #[serde(flatten)]
        saved: &'a SavedPlan,
        summary: Summary,
        notes: &'a [String],
    }
    let saved = to_saved(plan, spec);
    serde_json::to_string_pretty(&Printed {
        saved: &saved,
        summary: Summary::of(plan),
        notes: &plan.notes,
    })
    .unwrap_or_default()
}

/// Text for a terminal: grouped by host, numbered in execution order, with reasons.
pub fn text(plan: &Plan, spec: Option<&Spec>) -> String {
    let saved = to_saved(plan, spec);
    let step_of: BTreeMap<&str, usize> = saved
        .actions
        .iter()
        .map(|a| (a.id.as_str(), a.step))
        .collect();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Cluster {} (observed state {}):",
        plan.cluster, plan.fingerprint
    );
    let mut hosts: Vec<&Target> = saved.actions.iter().map(|a| &a.host).collect();
    hosts.sort();
    hosts.dedup();
    for h in hosts {
        let _ = writeln!(o, "\n  on {h}:");
        for a in saved.actions.iter().filter(|a| &a.host == h) {
            let after: Vec<String> = a
                .depends_on
                .iter()
                .filter_map(|d| step_of.get(d.as_str()).map(|s| s.to_string()))
                .collect();
            let _ = writeln!(
                o,
                "  {:>3}. {} {}{}",
                a.step,
                a.effect_marker(),
                a.kind.summary(),
                if after.is_empty() {
                    String::new()
                } else {
                    format!("   (after {})", after.join(", "))
                }
            );
            let _ = writeln!(o, "         why: {}", a.reason);
            for c in &a.commands {
                let _ = writeln!(
                    o,
                    "         $ {}",
                    crate::adapters::shell::remote_command_line(c)
                );
            }
        }
    }
    if !saved.blocked.is_empty() {
        let _ = writeln!(o, "\n  BLOCKED (apply will refuse, exit 3):");
        for b in &saved.blocked {
            let _ = writeln!(o, "    ! [{}] {}", b.rule, b.message);
            let _ = writeln!(o, "      what to do: {}", b.remedy);
        }
    }
    for n in &plan.notes {
        let _ = writeln!(o, "\n  note: {n}");
    }
    let _ = writeln!(o, "\n{}", Summary::of(plan).line());
    o
}

impl JsonAction {
    fn effect_marker(&self) -> char {
        self.effect.marker()
    }
}

/// Markdown for a merge-request comment.
pub fn markdown(plan: &Plan, spec: Option<&Spec>) -> String {
    let saved = to_saved(plan, spec);
    let mut o = String::new();
    let _ = writeln!(o, "### spoolkeeper plan for `{}`\n", plan.cluster);
    let _ = writeln!(o, "Observed state `{}`.\n", plan.fingerprint);
    if !saved.actions.is_empty() {
        let _ = writeln!(o, "| # | host | | action | after | why |");
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        let step_of: BTreeMap<&str, usize> = saved
            .actions
            .iter()
            .map(|a| (a.id.as_str(), a.step))
            .collect();
        for a in &saved.actions {
            let after: Vec<String> = a
                .depends_on
                .iter()
                .filter_map(|d| step_of.get(d.as_str()).map(|s| s.to_string()))
                .collect();
            let _ = writeln!(
                o,
                "| {} | {} | `{}` | {} | {} | {} |",
                a.step,
                a.host,
                a.effect.marker(),
                md_escape(&a.kind.summary()),
                after.join(", "),
                md_escape(&a.reason)
            );
        }
        let _ = writeln!(o);
    }
    if !saved.blocked.is_empty() {
        let _ = writeln!(o, "**Blocked** (apply refuses, exit 3):\n");
        for b in &saved.blocked {
            let _ = writeln!(
                o,
                "- **{}**: {}. *What to do:* {}",
                b.rule,
                md_escape(&b.message),
                md_escape(&b.remedy)
            );
        }
        let _ = writeln!(o);
    }
    for n in &plan.notes {
        let _ = writeln!(o, "> note: {}", md_escape(n));
    }
    let _ = writeln!(o, "{}", Summary::of(plan).line());
    o
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Graphviz dot: one node per action, edges for dependencies, blocked rules as notes.
pub fn dot(plan: &Plan, spec: Option<&Spec>) -> String {
    let saved = to_saved(plan, spec);
    let mut o = String::from(
        "digraph plan {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
    );
    for a in &saved.actions {
        let _ = writeln!(
            o,
            "  \"{}\" [label=\"{}. {} {}\\n({})\"];",
            dot_escape(&a.id),
            a.step,
            a.effect.marker(),
            dot_escape(&a.kind.summary()),
            dot_escape(&a.host.to_string())
        );
    }
    for a in &saved.actions {
        for d in &a.depends_on {
            let _ = writeln!(o, "  \"{}\" -> \"{}\";", dot_escape(d), dot_escape(&a.id));
        }
    }
    for (i, b) in saved.blocked.iter().enumerate() {
        let _ = writeln!(
            o,
            "  \"blocked{i}\" [shape=note, color=red, label=\"BLOCKED: {}\"];",
            dot_escape(&b.message)
        );
    }
    o.push_str("}\n");
    o
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
