//! The pure planner: `plan(spec, observed, now) -> Plan`.
//!
//! No I/O and no clock: the observed model and the time come in, a DAG of typed actions and
//! typed blocked reasons come out. Safety rules of DOMAIN.md are checks here; when one fires,
//! the plan carries a [`Blocked`] and `apply` refuses to run it (exit 3).

mod action;
mod blocked;
pub mod effect;
mod graph;
pub mod render;

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use action::{Action, ActionKind, Effect, Target};
pub use blocked::Blocked;
pub use graph::{CycleError, Plan};

use crate::jail::{self, RuntimeVerb};
use crate::observed::{Dataset, NodeObservation, Observation, RunState};
use crate::spec::{NodeName, Spec};
use crate::zfs;

/// The version of the JSON plan format (`plan --output json`, `plan --out FILE`).
pub const FORMAT_VERSION: u32 = 1;

/// Properties compared as sizes (`80T` equals `87960930222080`; `none` equals `0`).
const SIZE_PROPERTIES: &[&str] = &[
    "quota",
    "refquota",
    "reservation",
    "refreservation",
    "recordsize",
    "volsize",
];

/// The full dataset name of an instance on a node: `pool/dataset`.
pub fn dataset_name(spec: &Spec, node: &NodeName, instance_dataset: &str) -> Option<String> {
    spec.spec
        .nodes
        .get(node)
        .map(|n| format!("{}/{}", n.pool, instance_dataset))
}

/// Does the observed value of a property equal the spec's?
pub fn property_matches(name: &str, want: &str, have: Option<&str>) -> bool {
    let Some(have) = have else { return false };
    if SIZE_PROPERTIES.contains(&name) {
        let bytes = |v: &str| {
            if v == "none" {
                Some(0)
            } else {
                v.parse::<crate::spec::Size>().ok().map(|s| s.bytes())
            }
        };
        return match (bytes(want), bytes(have)) {
            (Some(a), Some(b)) => a == b,
            _ => want == have,
        };
    }
    want == have
}

/// The fingerprint of an observation: what `apply --plan` compares to refuse a stale plan.
/// Times of the observation itself and clock measurements are left out (they change on
/// every run without changing the world); everything else counts.
pub fn fingerprint(obs: &Observation) -> String {
    let mut o = obs.clone();
    o.observed_at = Timestamp::UNIX_EPOCH;
    for n in o.nodes.values_mut() {
        n.capabilities.clock_offset_ms = None;
        n.capabilities.clock_uncertainty_ms = None;
    }
    if let Some(a) = o.archive.as_mut() {
        a.capabilities.clock_offset_ms = None;
        a.capabilities.clock_uncertainty_ms = None;
    }
    let json = serde_json::to_vec(&o).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Options that change what the planner may do.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Context {
    /// Nodes proven fenced by a fencing command that succeeded (from the journal).
    pub fenced_by_command: BTreeSet<String>,
}

/// Plan the convergence of one cluster.
pub fn plan(spec: &Spec, obs: &Observation, now: Timestamp, ctx: &Context) -> Plan {
    let mut p = Planner {
        spec,
        obs,
        ctx,
        now,
        plan: Plan::new(spec.name.as_str(), fingerprint(obs)),
    };
    p.run();
    p.plan
}

struct Planner<'a> {
    spec: &'a Spec,
    obs: &'a Observation,
    ctx: &'a Context,
    #[allow(dead_code)]
    now: Timestamp,
    plan: Plan,
}

impl<'a> Planner<'a> {
    fn node(&self, n: &NodeName) -> Option<&'a NodeObservation> {
        let obs: &'a Observation = self.obs;
        obs.nodes.get(n.as_str())
    }

    fn reachable(&self, n: &NodeName) -> bool {
        self.node(n).is_some_and(|o| o.reachability.is_reachable())
    }

    fn why_unreachable(&self, n: &NodeName) -> String {
        match self.node(n).map(|o| &o.reachability) {
            Some(crate::observed::Reachability::Unreachable { kind, message }) => {
                format!("{kind:?}: {message}").to_lowercase()
            }
            Some(_) => "reachable".into(),
            None => "not observed".into(),
        }
    }

    fn is_fenced(&self, n: &NodeName) -> bool {
        self.spec.spec.fenced.contains(n) || self.ctx.fenced_by_command.contains(n.as_str())
    }

    fn run(&mut self) {
        let active = self.spec.spec.active.clone();
        if !self.reachable(&active) {
            let why = self.why_unreachable(&active);
            self.plan.block(Blocked::ActiveUnreachable {
                node: active.to_string(),
                why,
            });
            return;
        }
        let instances: Vec<_> = self
            .spec
            .spec
            .instances
            .iter()
            .map(|(n, i)| (n.clone(), i.clone()))
            .collect();
        for (name, inst) in &instances {
            self.instance(&active, name.as_str(), inst);
        }
    }

    /// Datasets and run state of one instance: writable and running on the active node,
    /// read-only, unmounted and stopped everywhere else.
    fn instance(&mut self, active: &NodeName, name: &str, inst: &crate::spec::Instance) {
        let spec: &'a Spec = self.spec;
        let mut stops = Vec::new();
        let mut may_start = true;

        // Every other node first: the instance must be stopped there before it can run here.
        for other in spec.spec.nodes.keys().filter(|n| *n != active) {
            let Some(ds) = dataset_name(spec, other, inst.dataset.as_str()) else {
                continue;
            };
            if !self.reachable(other) {
                if !self.is_fenced(other) {
                    // Only a problem when something would have to start here.
                    let running_here = self
                        .node(active)
                        .and_then(|o| o.instances.get(name))
                        .is_some_and(|s| s.state == RunState::Running);
                    if !running_here {
                        may_start = false;
                        let why = self.why_unreachable(other);
                        self.plan.block(Blocked::OtherNodeNotFenced {
                            instance: name.into(),
                            node: other.to_string(),
                            why,
                        });
                    } else {
                        self.plan.note(format!(
                            "{other} is unreachable: its copy of {name} is not checked this run"
                        ));
                    }
                }
                continue;
            }
            let Some(o) = self.node(other) else { continue };
            let host = Target::Node(other.to_string());
            let state = o.instances.get(name).map(|s| (s.state, s.detail.clone()));
            let mut stop = None;
            match state {
                Some((RunState::Running, _)) => {
                    let a = self.plan.add(Action::new(
                        host.clone(),
                        ActionKind::StopInstance {
                            instance: name.into(),
                        },
                        format!("{other} is not the active node: {name} must run on {active} only"),
                    ));
                    stops.push(a);
                    stop = Some(a);
                }
                Some((RunState::Unknown, detail)) => {
                    may_start = false;
                    self.plan.block(Blocked::InstanceStateUnknown {
                        instance: name.into(),
                        node: other.to_string(),
                        detail: detail.unwrap_or_else(|| "no detail".into()),
                    });
                }
                Some((RunState::Stopped, _)) | None => {}
            }
            if let Some(d) = o.dataset(&ds).cloned() {
                self.passive_copy(&host, other, &d, stop);
            }
        }

        // The active node.
        let Some(ds) = dataset_name(spec, active, inst.dataset.as_str()) else {
            return;
        };
        let Some(o) = self.node(active) else { return };
        if !o.errors.is_empty() && o.dataset(&ds).is_none() && !o.missing_datasets.contains(&ds) {
            self.plan.block(Blocked::ObservationIncomplete {
                node: active.to_string(),
                errors: o.errors.clone(),
            });
            return;
        }
        let host = Target::Node(active.to_string());
        let want: BTreeMap<String, String> = inst
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        let mut ready = Vec::new();
        match o.dataset(&ds).cloned() {
            None => {
                // Is the mail somewhere else? Then creating an empty dataset here is wrong.
                let holder = spec.spec.nodes.keys().find(|n| {
                    *n != active
                        && dataset_name(spec, n, inst.dataset.as_str())
                            .and_then(|d| self.node(n).and_then(|o| o.dataset(&d)))
                            .is_some()
                });
                if let Some(holder) = holder {
                    self.plan.block(Blocked::DataOnOtherNode {
                        instance: name.into(),
                        active: active.to_string(),
                        holder: holder.to_string(),
                        dataset: ds.clone(),
                    });
                    return;
                }
                ready.push(self.plan.add(Action::new(
                    host.clone(),
                    ActionKind::CreateDataset {
                        dataset: ds.clone(),
                        properties: want.clone(),
                    },
                    format!("{name} is active on {active} and has no dataset yet"),
                )));
            }
            Some(d) => {
                let drift: BTreeMap<String, String> = want
                    .iter()
                    .filter(|(k, v)| {
                        !property_matches(k, v, d.other_properties.get(*k).map(String::as_str))
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if !drift.is_empty() {
                    let was: Vec<String> = drift
                        .keys()
                        .map(|k| {
                            format!(
                                "{k} is {}",
                                d.other_properties.get(k).map_or("unset", String::as_str)
                            )
                        })
                        .collect();
                    ready.push(self.plan.add(Action::new(
                        host.clone(),
                        ActionKind::SetProperties {
                            dataset: ds.clone(),
                            properties: drift,
                        },
                        format!("properties drifted from the spec ({})", was.join(", ")),
                    )));
                }
                let mut rw = None;
                if d.readonly != Some(false) && may_start {
                    // Writable only once the instance is stopped everywhere else.
                    let a = self.plan.add(Action::new(
                        host.clone(),
                        ActionKind::SetReadonly {
                            dataset: ds.clone(),
                            readonly: false,
                        },
                        format!("{active} is the active node: its copy of {name} must be writable"),
                    ));
                    for s in &stops {
                        self.plan.edge(*s, a);
                    }
                    ready.push(a);
                    rw = Some(a);
                }
                if d.mounted != Some(true) && may_start {
                    let a = self.plan.add(Action::new(
                        host.clone(),
                        ActionKind::Mount {
                            dataset: ds.clone(),
                        },
                        format!("{name} serves mail from {ds}"),
                    ));
                    if let Some(rw) = rw {
                        self.plan.edge(rw, a);
                    }
                    ready.push(a);
                }
            }
        }

        let running = o.instances.get(name).map(|s| (s.state, s.detail.clone()));
        match running {
            Some((RunState::Running, _)) => {}
            Some((RunState::Unknown, detail)) => {
                self.plan.block(Blocked::InstanceStateUnknown {
                    instance: name.into(),
                    node: active.to_string(),
                    detail: detail.unwrap_or_else(|| "no detail".into()),
                });
            }
            Some((RunState::Stopped, _)) | None => {
                if may_start {
                    let start = self.plan.add(Action::new(
                        host,
                        ActionKind::StartInstance {
                            instance: name.into(),
                        },
                        format!("{active} is the active node of {name}"),
                    ));
                    for r in ready.iter().chain(stops.iter()) {
                        self.plan.edge(*r, start);
                    }
                }
            }
        }
    }

    /// A non-active node's copy: read-only and unmounted, after the instance stopped there.
    fn passive_copy(
        &mut self,
        host: &Target,
        node: &NodeName,
        d: &Dataset,
        stop: Option<graph::Id>,
    ) {
        let mut last = stop;
        if d.mounted == Some(true) {
            let a = self.plan.add(Action::new(
                host.clone(),
                ActionKind::Unmount {
                    dataset: d.name.clone(),
                },
                format!("{node} is passive: its replica stays unmounted"),
            ));
            if let Some(s) = last {
                self.plan.edge(s, a);
            }
            last = Some(a);
        }
        if d.readonly != Some(true) {
            let a = self.plan.add(Action::new(
                host.clone(),
                ActionKind::SetReadonly {
                    dataset: d.name.clone(),
                    readonly: true,
                },
                format!(
                    "{node} is passive: its replica must be read-only (never two writable copies)"
                ),
            ));
            if let Some(s) = last {
                self.plan.edge(s, a);
            }
        }
    }
}

/// The argv lists one action runs, in order, and where. The same function feeds the
/// renderers (`plan` shows these commands) and the executor, so the plan is the truth.
pub fn commands(spec: &Spec, a: &Action) -> Result<Vec<Vec<String>>, String> {
    let node = match &a.host {
        Target::Node(n) => n.as_str(),
        other => return Err(format!("no command for host {other}")),
    };
    let runtime = |instance: &str| {
        spec.spec
            .instances
            .iter()
            .find(|(n, _)| n.as_str() == instance)
            .map(|(_, i)| &i.runtime)
            .ok_or_else(|| format!("instance {instance} is not in the spec"))
    };
    Ok(match &a.kind {
        ActionKind::CreateDataset {
            dataset,
            properties,
        } => vec![zfs::create_argv(dataset, properties)],
        ActionKind::SetProperties {
            dataset,
            properties,
        } => properties
            .iter()
            .map(|(k, v)| zfs::set_argv(dataset, k, v))
            .collect(),
        ActionKind::SetReadonly { dataset, readonly } => vec![zfs::set_argv(
            dataset,
            "readonly",
            if *readonly { "on" } else { "off" },
        )],
        ActionKind::Mount { dataset } => vec![zfs::mount_argv(dataset)],
        ActionKind::Unmount { dataset } => vec![zfs::unmount_argv(dataset)],
        ActionKind::StartInstance { instance } => {
            vec![
                jail::runtime_argv(runtime(instance)?, RuntimeVerb::Start, instance, node)
                    .ok_or("no start command")?,
            ]
        }
        ActionKind::StopInstance { instance } => {
            vec![
                jail::runtime_argv(runtime(instance)?, RuntimeVerb::Stop, instance, node)
                    .ok_or("no stop command")?,
            ]
        }
    })
}

/// Plans serialised for `plan --out` and read back by `apply --plan`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format_version: u32,
    pub cluster: String,
    pub fingerprint: String,
    pub actions: Vec<render::JsonAction>,
    pub blocked: Vec<render::JsonBlocked>,
}
#[cfg(test)]
mod tests;
