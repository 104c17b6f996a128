//! PDMA = 0: the archive host holds what it receives; the serving spools BCC every recipient
//! of the instances' domains to it (planned before any instance starts: a start reads the
//! spool's Postfix configuration); held copies proven to be in every replica are purged,
//! after the replications of this run that prove it.

use std::collections::{BTreeMap, BTreeSet};

use super::{Action, ActionKind, Blocked, Context, Planner, Target, dataset_name, graph};
use crate::spec::NodeName;

impl Planner<'_> {
    pub(super) fn archive_config(&mut self, serving: &BTreeMap<String, NodeName>) {
        let spec = self.spec;
        let Some(arch) = &spec.spec.archive else {
            return;
        };
        let template = &arch.address;
        let mut archive_ready = Vec::new();

        // The archive host: hold everything for the archive domain.
        match self.obs.archive.as_ref() {
            Some(a) if a.reachability.is_reachable() => {
                if let Some(pf) = &a.postfix {
                    let dir = pf
                        .settings
                        .get("config_directory")
                        .cloned()
                        .unwrap_or_else(|| "/etc/postfix".into());
                    let path = format!("{dir}/{}", crate::decide::archive::HOLD_MAP_FILE);
                    let table = crate::decide::archive::hold_access_map(template.archive_domain());
                    let want =
                        crate::decide::archive::archive_host_settings(template.archive_domain(), &path);
                    archive_ready = self.postfix_config(
                        Target::Archive,
                        None,
                        true,
                        pf,
                        crate::decide::archive::HOLD_MAP_FILE,
                        &path,
                        &table,
                        &want,
                        "the archive host must hold every copy it receives, never deliver it",
                    );
                }
            }
            _ => self.plan.note(
                "the archive host is unreachable: copies queue on the spool and reach it once it is back; no purge this run".into(),
            ),
        }

        // Every spool, serving or not: BCC every recipient of every instance's domains. A
        // passive node accepts no mail in normal operation, but an instance started on it by
        // hand does, and its mail must have an archive copy like any other.
        let mut nodes: BTreeSet<&NodeName> = serving.values().collect();
        nodes.extend(spec.spec.nodes.keys().filter(|n| self.reachable(n)));
        let node_domains: Vec<String> = spec
            .spec
            .instances
            .values()
            .filter(|i| i.mail.is_node())
            .flat_map(|i| i.domains.iter().cloned())
            .collect();
        for active in nodes {
            let Some(a_obs) = self.node(active) else {
                continue;
            };
            // The node's Postfix, for the instances it serves; then each instance's own.
            let mut mtas: Vec<(Option<String>, Vec<String>)> = Vec::new();
            if spec.spec.instances.values().any(|i| i.mail.is_node()) {
                mtas.push((None, node_domains.clone()));
            }
            for (name, inst) in spec
                .spec
                .instances
                .iter()
                .filter(|(_, i)| !i.mail.is_node())
            {
                mtas.push((Some(name.to_string()), inst.domains.clone()));
            }
            for (mail, domains) in mtas {
                let Some(pf) = a_obs.postfix_of(mail.as_deref()) else {
                    match &mail {
                        None => self.plan.note(format!(
                            "no Postfix observed on {active}: the archive BCC cannot be checked"
                        )),
                        // a stopped jail's Postfix cannot be asked; a serving one must answer
                        Some(i) if serving.get(i.as_str()) == Some(active) => {
                            self.plan.note(format!(
                                "{i}'s own Postfix did not answer on {active}: its archive BCC is checked once it does"
                            ))
                        }
                        Some(_) => {}
                    }
                    continue;
                };
                match crate::decide::archive::bcc_map(template, &domains) {
                    Ok(table) => {
                        let dir = pf
                            .settings
                            .get("config_directory")
                            .cloned()
                            .unwrap_or_else(|| "/etc/postfix".into());
                        let path = format!("{dir}/{}", crate::decide::archive::BCC_MAP_FILE);
                        let want = crate::decide::archive::spool_settings(&path);
                        let why = match &mail {
                            None => "every message a spool accepts is BCC'd to the archive host (PDMA = 0)".to_owned(),
                            Some(i) => format!("every message {i}'s own Postfix accepts is BCC'd to the archive host (PDMA = 0)"),
                        };
                        // an instance's own Postfix runs only where the instance does: elsewhere
                        // it reads the new configuration when it starts, nothing to reload
                        let running = match &mail {
                            None => true,
                            Some(i) => a_obs
                                .instances
                                .get(i)
                                .is_some_and(|s| s.state == crate::model::RunState::Running),
                        };
                        let ids = self.postfix_config(
                            Target::Node(active.to_string()),
                            mail.clone(),
                            running,
                            pf,
                            crate::decide::archive::BCC_MAP_FILE,
                            &path,
                            &table,
                            &want,
                            &why,
                        );
                        for id in &ids {
                            for r in &archive_ready {
                                self.plan.edge(*r, *id);
                            }
                        }
                    }
                    Err(e) => self.plan.block(Blocked::ArchiveBcc {
                        node: match &mail {
                            None => active.to_string(),
                            Some(i) => format!("{active} ({i}'s own Postfix)"),
                        },
                        detail: e.to_string(),
                    }),
                }
            }
        }
    }

    /// Plan a Postfix table and settings on one host; returns the ids to wait for.
    #[allow(clippy::too_many_arguments)]
    fn postfix_config(
        &mut self,
        host: Target,
        mail: Option<String>,
        running: bool,
        pf: &crate::model::PostfixObservation,
        file: &str,
        path: &str,
        table: &str,
        want: &BTreeMap<String, String>,
        why: &str,
    ) -> Vec<graph::Id> {
        let mut ids = Vec::new();
        let table_changed = pf.files.get(file).map(String::as_str) != Some(table);
        if table_changed {
            ids.push(
                self.plan.add(
                    Action::new(
                        host.clone(),
                        ActionKind::WriteFile {
                            path: path.into(),
                            content: table.into(),
                        },
                        format!(
                            "{why}: {path} is {}",
                            if pf.files.contains_key(file) {
                                "out of date"
                            } else {
                                "missing"
                            }
                        ),
                    )
                    .in_mail(mail.clone()),
                ),
            );
        }
        let drift: BTreeMap<String, String> = want
            .iter()
            .filter(|(k, v)| pf.settings.get(*k).map(|s| s.trim()) != Some(v.trim()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if (table_changed && running) || !drift.is_empty() {
            let id = self.plan.add(
                Action::new(
                    host,
                    ActionKind::Postconf {
                        settings: drift.clone(),
                        reload: running,
                    },
                    if drift.is_empty() {
                        format!("{why}: Postfix must read the new {file}")
                    } else {
                        format!(
                            "{why}: {} differ",
                            drift.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    },
                )
                .in_mail(mail),
            );
            for i in &ids {
                self.plan.edge(*i, id);
            }
            ids.push(id);
        }
        ids
    }

    /// Delete held copies older than the watermark of the least advanced replica, as it will
    /// be once this run's replications are done (the purge waits for them and is skipped
    /// when one fails). Nothing for an instance while a replay of the archive is owed to it:
    /// the copies it needs are exactly the ones a purge would take.
    pub(super) fn purge(&mut self, serving: &BTreeMap<String, NodeName>) {
        let spec = self.spec;
        let Some(arch) = &spec.spec.archive else {
            return;
        };
        let Some(a) = self
            .obs
            .archive
            .as_ref()
            .filter(|a| a.reachability.is_reachable())
        else {
            return;
        };
        let Some(pf) = &a.postfix else { return };
        if pf.held().next().is_none() {
            return;
        }
        let margin = arch.margin.as_signed();
        for (name, inst) in &spec.spec.instances {
            let Some(active) = serving.get(name.as_str()) else {
                continue;
            };
            if self.replay_owed.contains(name.as_str()) {
                self.plan.note(format!(
                    "{name}: no purge of the archive while a replay of it is owed"
                ));
                continue;
            }
            let Some(a_obs) = self.node(active) else {
                continue;
            };
            let Some(ds) = dataset_name(spec, active, inst.dataset.as_str()) else {
                continue;
            };
            let replicas = self.bases.get(name.as_str()).cloned().unwrap_or_default();
            let others = spec.spec.nodes.keys().filter(|n| *n != active).count();
            if replicas.len() < others || replicas.iter().any(|r| r.base.is_none()) {
                self.plan.note(format!(
                    "{name}: no purge of the archive: a replica is missing, unreachable or not replicated"
                ));
                continue;
            }
            let least = replicas
                .iter()
                .filter_map(|r| r.base.clone())
                .min_by(crate::decide::retention::age_order);
            let backlog = least
                .as_ref()
                .and_then(|b| {
                    self.planned_backlogs
                        .get(&Context::backlog_key(&ds, &b.name))
                        .copied()
                        .or_else(|| self.ctx.backlog(&ds, &b.name))
                })
                .unwrap_or_default();
            match crate::decide::archive::watermark_with(
                least.as_ref(),
                backlog,
                a_obs.capabilities.clock_offset_ms,
                a.capabilities.clock_offset_ms,
                a.capabilities.clock_uncertainty_ms,
                margin,
            ) {
                Err(refusal) => self.plan.note(format!("{name}: {refusal}")),
                Ok(w) => {
                    let purge = crate::decide::archive::purge_set(
                        &w,
                        pf.held(),
                        &inst.domains,
                        &arch.address,
                    );
                    if purge.is_empty() {
                        continue;
                    }
                    // in batches, one after the other: each `postsuper -d -` is bounded by
                    // the command timeout, and an interrupted purge has done whole batches
                    let batches = purge.len().div_ceil(PURGE_BATCH);
                    let mut previous = None;
                    for (k, batch) in purge.chunks(PURGE_BATCH).enumerate() {
                        let mut action = Action::new(
                            Target::Archive,
                            ActionKind::PurgeArchive {
                                instance: name.to_string(),
                                queue_ids: batch.iter().map(|p| p.queue_id.clone()).collect(),
                                watermark: format!("watermark {} from {}", w.at, w.snapshot),
                            },
                            if batches == 1 {
                                format!(
                                    "{} held copie(s) arrived before the watermark minus the margin: {}",
                                    purge.len(),
                                    w.explain
                                )
                            } else {
                                format!(
                                    "batch {} of {batches} of the {} held copie(s) that arrived before the watermark minus the margin: {}",
                                    k + 1,
                                    purge.len(),
                                    w.explain
                                )
                            },
                        );
                        if k > 0 {
                            action.id = format!("{}#{}", action.id, k + 1);
                        }
                        let id = self.plan.add(action);
                        for r in replicas.iter().filter_map(|r| r.after) {
                            self.plan.edge(r, id);
                        }
                        if let Some(p) = previous {
                            self.plan.edge(p, id);
                        }
                        previous = Some(id);
                    }
                }
            }
        }
    }
}

/// Held copies deleted by one `postsuper -d -` of a purge.
pub const PURGE_BATCH: usize = 50_000;

#[allow(dead_code)]
fn _unused(_: Blocked) {}
