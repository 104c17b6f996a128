//! `spoolkeeper controller`: the reconcile loop, kube-rs's `Controller` shaped for clusters of
//! spool servers.
//!
//! One key per cluster spec (a file, or each `*.yaml` of a directory). Each cluster has one
//! task, so never two reconciles of one cluster run at once; across processes the cluster lock
//! (the same as `apply`'s) serialises controllers and manual applies. A reconcile is exactly
//! `apply` ([`crate::apply::run::once`]: same planner, journal and lock). The next one is the
//! earliest of: the next due of the converged observation ([`crate::decide::schedule`]), a
//! spec change, the periodic resync, or the backoff after an error
//! ([`crate::decide::backoff`], reset on the first success). A blocked plan is reported and
//! re-evaluated on the resync or a spec change, never retried in a tight loop.
//!
//! The controller never changes `active`: when the active node does not answer it says so
//! (metric, log, `notify.command` with the failover plan in markdown) and waits for the
//! operator's one-line edit.

pub mod cluster;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::apply::{Limits, Stop};
use crate::decide::backoff::Policy;
use crate::spec::Spec;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// A spec file, or a directory of them.
    pub path: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    pub state_dir: PathBuf,
    /// Reconcile at least this often, due or not.
    pub resync: Duration,
    pub backoff: Policy,
    pub limits: Limits,
}

/// What the loop shares with every cluster task.
pub struct Shared {
    pub opts: Options,
    pub metrics: metrics::Metrics,
    pub stop: Stop,
}

/// One cluster's task and the file it comes from.
struct Key {
    file: PathBuf,
    spec: tokio::sync::watch::Sender<Arc<Spec>>,
    task: tokio::task::JoinHandle<()>,
}

/// Run until stopped: 0 after a clean stop (SIGTERM/SIGINT: running actions finished, locks
/// released), 1 when it cannot start (metrics address taken, nothing to watch) or was aborted
/// by a second signal.
pub async fn run(opts: Options) -> u8 {
    let shared = Arc::new(Shared {
        opts: opts.clone(),
        metrics: metrics::Metrics::new(),
        stop: Stop::default(),
    });
    if let Err(e) = watch::signals(shared.clone()) {
        eprintln!("cannot install the signal handlers: {e}");
        return 1;
    }
    if let Some(addr) = opts.metrics_addr {
        match http::serve(addr, shared.clone()).await {
            Ok(bound) => tracing::info!(addr = %bound, "metrics on http://{bound}/metrics"),
            Err(e) => {
                eprintln!("cannot serve metrics on {addr}: {e}");
                return 1;
            }
        }
    }
    let (rescan_tx, mut rescan) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let _watcher = match watch::files(&opts.path, rescan_tx.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(path = %opts.path.display(), error = %e, "cannot watch the specs for changes; SIGHUP and the resync still reload them");
            None
        }
    };
    watch::hangups(rescan_tx);
    let mut keys: BTreeMap<String, Key> = BTreeMap::new();
    let mut first = true;
    loop {
        let loaded = reload(&shared, &mut keys);
        if first && loaded == 0 && keys.is_empty() {
            eprintln!(
                "{}: no valid spec to reconcile (see the errors above)",
                opts.path.display()
            );
            return 1;
        }
        first = false;
        tokio::select! {
            why = rescan.recv() => {
                // a burst of file events is one change: let the editor finish writing
                tokio::time::sleep(Duration::from_millis(300)).await;
                while rescan.try_recv().is_ok() {}
                tracing::info!(why = why.unwrap_or("watch"), "reloading the specs");
            }
            _ = tokio::time::sleep(opts.resync) => {}
            _ = shared.stop.until(Stop::finishing) => break,
        }
    }
    tracing::info!("stopping: no new action starts; waiting for the running ones to end");
    for (_, k) in keys {
        drop(k.spec);
        let _ = k.task.await;
    }
    if shared.stop.aborting() {
        tracing::warn!(
            "stopped by a second signal: running commands were abandoned; the journal makes the next run safe"
        );
        1
    } else {
        tracing::info!("stopped cleanly");
        0
    }
}

/// Read every spec file: a valid one replaces its cluster's spec (or starts its task), an
/// invalid one is reported (file:line:col) and its cluster keeps its last good spec, a
/// removed one stops its cluster. Returns how many files were valid.
fn reload(shared: &Arc<Shared>, keys: &mut BTreeMap<String, Key>) -> usize {
    let files = watch::spec_files(&shared.opts.path);
    let mut valid = 0;
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in &files {
        let label = file.display().to_string();
        match crate::cli::load::specs(file) {
            Ok(mut specs) if specs.len() == 1 => {
                let spec = specs.remove(0);
                let name = spec.name.to_string();
                if let Some(other) = seen.get(&name) {
                    tracing::error!(file = %label, other = %other.display(), cluster = %name, "two spec files name the same cluster: this one is ignored");
                    shared
                        .metrics
                        .spec_valid
                        .get_or_create(&metrics::cluster(&name, &[("file", &label)]))
                        .set(0);
                    continue;
                }
                seen.insert(name.clone(), file.clone());
                valid += 1;
                shared
                    .metrics
                    .spec_valid
                    .get_or_create(&metrics::cluster(&name, &[("file", &label)]))
                    .set(1);
                let spec = Arc::new(spec);
                match keys.get(&name) {
                    Some(k) if k.file == *file => {
                        if *k.spec.borrow() != spec {
                            tracing::info!(cluster = %name, file = %label, "spec changed");
                            let _ = k.spec.send(spec);
                        }
                    }
                    Some(k) => {
                        tracing::error!(file = %label, other = %k.file.display(), cluster = %name, "two spec files name the same cluster: this one is ignored");
                    }
                    None => {
                        tracing::info!(cluster = %name, file = %label, "reconciling a new cluster");
                        let (tx, rx) = tokio::sync::watch::channel(spec);
                        let task = tokio::spawn(cluster::run(shared.clone(), rx));
                        keys.insert(
                            name,
                            Key {
                                file: file.clone(),
                                spec: tx,
                                task,
                            },
                        );
                    }
                }
            }
            Ok(_) => {}
            Err(errors) => {
                // keep the cluster of this file (if any) on its last good spec
                let owner = keys
                    .iter()
                    .find(|(_, k)| k.file == *file)
                    .map(|(n, _)| n.clone());
                if let Some(n) = &owner {
                    seen.insert(n.clone(), file.clone());
                }
                let cluster = owner.clone().unwrap_or_default();
                shared
                    .metrics
                    .spec_valid
                    .get_or_create(&metrics::cluster(&cluster, &[("file", &label)]))
                    .set(0);
                for d in &errors.0 {
                    tracing::error!(
                        file = %d.file.display(),
                        line = d.pos.line,
                        column = d.pos.col,
                        cluster = %cluster,
                        "invalid spec ({}): {}",
                        if owner.is_some() { "the last good spec keeps running" } else { "not reconciled" },
                        d.message
                    );
                }
                eprintln!("{errors}");
            }
        }
    }
    // clusters whose file is gone (or names another cluster now) stop
    let gone: Vec<String> = keys
        .keys()
        .filter(|n| !seen.contains_key(*n))
        .cloned()
        .collect();
    for n in gone {
        if let Some(k) = keys.remove(&n) {
            tracing::info!(cluster = %n, file = %k.file.display(), "spec removed: the cluster is no longer reconciled");
            drop(k.spec); // the task ends after its current reconcile
            shared.metrics.forget(&n);
        }
    }
    valid
}

/// The files a path names (see [`watch::spec_files`]).
pub fn spec_files(path: &Path) -> Vec<PathBuf> {
    watch::spec_files(path)
}
