//! What wakes the controller besides its schedule: spec files changing (a maintained watcher,
//! `notify`, on the directory, so that editors' rename-over and `git pull` are seen), SIGHUP
//! (reload), SIGTERM/SIGINT (stop: the first lets running actions finish, the second aborts).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::Watcher;
use tokio::sync::mpsc::UnboundedSender;

use crate::controller::Shared;

/// The spec files a path names: the file itself, or every `*.yaml`/`*.yml` of a directory
/// (sorted). A missing path names none.
pub fn spec_files(path: &Path) -> Vec<PathBuf> {
    if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file() && is_spec(p))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    } else {
        vec![path.to_owned()]
    }
}

fn is_spec(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    )
}

/// Watch `path` (its directory when it is a file); every relevant event sends a rescan.
pub fn files(
    path: &Path,
    tx: UnboundedSender<&'static str>,
) -> notify::Result<notify::RecommendedWatcher> {
    let dir = if path.is_dir() {
        path.to_owned()
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned)
    };
    let only: Option<PathBuf> = (!path.is_dir()).then(|| path.to_owned());
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return;
        }
        let relevant = ev.paths.iter().any(|p| match &only {
            Some(f) => p.file_name() == f.file_name(),
            None => is_spec(p),
        });
        if relevant {
            let _ = tx.send("file changed");
        }
    })?;
    w.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(w)
}

/// SIGHUP: reload the specs.
pub fn hangups(tx: UnboundedSender<&'static str>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if tx.send("SIGHUP").is_err() {
                return;
            }
        }
    });
}

/// SIGTERM and SIGINT: a stop request each (see [`crate::apply::Stop`]).
pub fn signals(shared: Arc<Shared>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            let which = tokio::select! {
                s = term.recv() => s.map(|_| "SIGTERM"),
                s = int.recv() => s.map(|_| "SIGINT"),
            };
            let Some(which) = which else { return };
            if shared.stop.finishing() {
                tracing::warn!(
                    signal = which,
                    "second stop signal: abandoning the running commands"
                );
            } else {
                tracing::warn!(
                    signal = which,
                    "stop requested: running actions finish, no new one starts (a second signal aborts)"
                );
            }
            shared.stop.request();
        }
    });
    Ok(())
}
