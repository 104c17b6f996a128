//! `restore`, the shell: give a mailbox (or one folder, or a date range of it) back from a
//! snapshot, into a restore folder of the live mailbox, never over a live folder, exactly once.
//! The decisions are `crate::decide::recover`; this module runs them against the hosts.
//!
//! # The flow
//!
//! 1. observe the cluster; the instance must be running on the spec's active node (the import
//!    goes where users read);
//! 2. ask the active node's Dovecot where the user's mail is (`doveadm user`), resolve it
//!    (`realpath`, symlinks followed), make it relative to the dataset's mountpoint;
//! 3. pick the snapshot and the node that reads it (the passive by default); read it through
//!    `.zfs/snapshot/NAME` when visible, else through a temporary read-only clone;
//! 4. copy the user's mail tree from there into a scratch directory on the active node (a
//!    `tar` stream relayed through spoolkeeper): Dovecot reads the copy as the user, writes its
//!    indexes there, and the snapshot, the replica and the live spool are never written;
//! 5. list the copy (`doveadm -o mail_location=COPY fetch`) and what an earlier run already
//!    restored, check the folder asked for exists, and import the rest (`doveadm import`, one
//!    call per folder, UIDs of the copy);
//! 6. always, on success, error or Ctrl-C: remove the copy, destroy the clone.
//!
//! Nothing here takes the cluster lock: no action of a plan reads or writes the scratch
//! clone (a sibling of the dataset, never a descendant), and the import only adds messages.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::Serialize;

use crate::adapters::mail::{self, MailPlace};
use crate::adapters::{dovecot, files, zfs};
use crate::decide::recover::{self, FolderPlan, RecoverError, RestorePoint, Selector};
use crate::model::RunState;
use crate::observe::{self, Connections};
use crate::spec::Spec;
use crate::transport::host::{Host, HostError, Output};

/// How long one import, copy or listing may take before it is abandoned.
const LONG: Duration = Duration::from_secs(3600);

/// A restore that could not be done; nothing changed in the live mailbox unless the message
/// says how far the import went.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The request does not fit the spec or what was observed.
    #[error("{0}")]
    Request(String),
    /// A decision refused (no snapshot, outside the dataset, ...).
    #[error(transparent)]
    Decide(#[from] RecoverError),
    /// A host could not be reached.
    #[error("{host}: {source}")]
    Transport { host: String, source: HostError },
    /// A command ran and failed.
    #[error("{host}: `{command}` exited {status:?}: {stderr}")]
    Command {
        host: String,
        command: String,
        status: Option<i32>,
        stderr: String,
    },
    /// Dovecot's output or a name it cannot take.
    #[error(transparent)]
    Dovecot(#[from] dovecot::DovecotError),
    /// Ctrl-C / SIGTERM.
    #[error("interrupted")]
    Interrupted,
}

/// What to restore.
#[derive(Debug, Clone)]
pub struct Request {
    pub instance: String,
    pub user: String,
    pub selector: Selector,
    pub folder: Option<String>,
    pub since: Option<jiff::civil::Date>,
    pub until: Option<jiff::civil::Date>,
    pub node: Option<String>,
    pub dry_run: bool,
}

/// The result of `restore` (text and JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub cluster: String,
    pub instance: String,
    pub user: String,
    pub snapshot: String,
    pub snapshot_time: Timestamp,
    /// The node that read the snapshot.
    pub read_on: String,
    /// `clone` or `snapshot-directory`.
    pub read_through: String,
    /// The node the messages went to (the active one).
    pub restored_on: String,
    /// The restore folder (`Restored.<time>`).
    pub folder: String,
    pub dry_run: bool,
    pub folders: Vec<FolderPlan>,
    /// Messages imported (would be, with `--dry-run`).
    pub messages: usize,
    pub bytes: u64,
    /// Messages matching the request that an earlier restore already brought back.
    pub already: usize,
    pub seconds: f64,
    /// Cleanup steps that failed (the scratch left behind, to remove by hand).
    pub cleanup_errors: Vec<String>,
}

impl Report {
    /// Human form.
    pub fn text(&self) -> String {
        let mut s = format!(
            "restore {}/{} {} from {} ({}), read on {} through a {}, into {} on {}{}\n",
            self.cluster,
            self.instance,
            self.user,
            self.snapshot,
            self.snapshot_time,
            self.read_on,
            self.read_through,
            self.folder,
            self.restored_on,
            if self.dry_run {
                " (dry run: nothing imported)"
            } else {
                ""
            }
        );
        s.push_str(&format!(
            "  {:<40} {:>8} {:>8} {:>8} {:>10}\n",
            "FOLDER", "FOUND", "ALREADY", "RESTORE", "BYTES"
        ));
        for f in &self.folders {
            s.push_str(&format!(
                "  {:<40} {:>8} {:>8} {:>8} {:>10}\n",
                f.source,
                f.found,
                f.already,
                f.uids.len(),
                f.bytes
            ));
        }
        let rate = if self.seconds > 0.0 {
            self.messages as f64 / self.seconds
        } else {
            0.0
        };
        s.push_str(&format!(
            "{} {} messages ({} bytes), {} already there, in {:.1} s ({:.0} msg/s)\n",
            if self.dry_run {
                "would restore"
            } else {
                "restored"
            },
            self.messages,
            self.bytes,
            self.already,
            self.seconds,
            rate
        ));
        for e in &self.cleanup_errors {
            s.push_str(&format!("warning: cleanup: {e}\n"));
        }
        s
    }
}

/// The restore points of a mailbox (`restore --list`).
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub cluster: String,
    pub instance: String,
    pub user: String,
    /// Where the user's mail is, relative to the dataset.
    pub path: String,
    pub points: Vec<RestorePoint>,
}

impl Listing {
    /// Human form.
    pub fn text(&self) -> String {
        let mut s = format!(
            "restore points of {} in {}/{} ({} in the dataset):\n  {:<28} {:<22} NODES\n",
            self.user, self.cluster, self.instance, self.path, "SNAPSHOT", "TIME"
        );
        for p in self.points.iter().rev() {
            s.push_str(&format!(
                "  {:<28} {:<22} {}\n",
                p.snapshot,
                p.creation.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                p.nodes.join(",")
            ));
        }
        if self.points.is_empty() {
            s.push_str("  (none)\n");
        }
        s
    }
}

/// What a run created and must remove, registered as soon as it exists.
#[derive(Default)]
pub struct Scratch {
    /// (node, staging directory).
    stage: Option<(String, String)>,
    /// (node, clone, mountpoint).
    clone: Option<(String, String, String)>,
}

impl Scratch {
    /// The clone registered (node, name), if any.
    pub fn clone_of(&self) -> Option<(String, String)> {
        self.clone.as_ref().map(|(n, c, _)| (n.clone(), c.clone()))
    }
}

fn cmd_err(host: &Host, argv: &[String], out: &Output) -> RestoreError {
    RestoreError::Command {
        host: host.label().to_owned(),
        command: argv.join(" "),
        status: out.status,
        stderr: out.stderr_text().trim().to_owned(),
    }
}

async fn run(host: &Host, argv: &[String], limit: Duration) -> Result<Output, RestoreError> {
    host.run_timeout(argv, limit)
        .await
        .map_err(|source| RestoreError::Transport {
            host: host.label().to_owned(),
            source,
        })
}

async fn run_ok(host: &Host, argv: &[String], limit: Duration) -> Result<Output, RestoreError> {
    let out = run(host, argv, limit).await?;
    if !out.success() {
        return Err(cmd_err(host, argv, &out));
    }
    Ok(out)
}

fn node<'a>(conns: &'a Connections, name: &str) -> Result<&'a Host, RestoreError> {
    match conns.nodes.get(name) {
        Some(Ok(h)) => Ok(h),
        Some(Err(e)) => Err(RestoreError::Request(format!(
            "node {name} is unreachable: {e}; nothing was changed"
        ))),
        None => Err(RestoreError::Request(format!("no node {name} in the spec"))),
    }
}

/// Where the user's mail is, as Dovecot on `host` sees it.
pub struct Mailbox {
    pub info: dovecot::UserInfo,
    pub location: recover::MailLocation,
    /// `location.path` with symlinks resolved.
    pub resolved: String,
}

/// Ask Dovecot on `host` about `user` and resolve the path (its deepest existing ancestor
/// when the mail directory itself is gone, as after a user deleted everything).
pub async fn locate(
    host: &Host,
    place: Option<&MailPlace>,
    user: &str,
) -> Result<Mailbox, RestoreError> {
    let argv = mail::wrap(place, dovecot::user_argv(user)?);
    let out = run(host, &argv, host.timeout()).await?;
    if out.status == Some(67) || (out.success() && out.stdout.is_empty()) {
        return Err(RestoreError::Request(format!(
            "Dovecot on {} knows no user {user}",
            host.label()
        )));
    }
    if !out.success() {
        return Err(cmd_err(host, &argv, &out));
    }
    let info = dovecot::parse_user(&out.stdout_text())?;
    let mail = info.mail.clone().ok_or_else(|| {
        RestoreError::Request(format!("Dovecot gives no mail location for {user}"))
    })?;
    let location = recover::parse_location(&mail, info.home.as_deref())?;
    // the path and its ancestors, deepest first, in one round trip
    let mut cands = vec![location.path.clone()];
    let mut p = location.path.as_str();
    while let Some(i) = p.rfind('/') {
        p = &p[..i];
        if p.is_empty() {
            break;
        }
        cands.push(p.to_owned());
    }
    let cmds: Vec<Vec<String>> = cands
        .iter()
        .map(|c| files::realpath_argv(c).map_err(RestoreError::Request))
        .collect::<Result<_, _>>()?;
    let outs = host
        .run_batch(&cmds)
        .await
        .map_err(|source| RestoreError::Transport {
            host: host.label().to_owned(),
            source,
        })?;
    let mut resolved = None;
    for (c, o) in cands.iter().zip(&outs) {
        if o.success() {
            let base = o.stdout_text().trim().to_owned();
            let rest = &location.path[c.len()..];
            resolved = Some(format!("{}{}", base.trim_end_matches('/'), rest));
            break;
        }
    }
    let resolved = resolved.unwrap_or_else(|| location.path.clone());
    Ok(Mailbox {
        info,
        location,
        resolved,
    })
}

struct Ctx<'a> {
    spec: &'a Spec,
    conns: Connections,
    obs: crate::model::Observation,
    active: String,
    dataset: String,
    /// The instance's own Dovecot (`mail.in: runtime`), `None`: the node's.
    place: Option<MailPlace>,
}

impl Ctx<'_> {
    fn full_dataset(&self, node: &str) -> Option<String> {
        self.spec
            .spec
            .nodes
            .iter()
            .find(|(n, _)| n.as_str() == node)
            .map(|(_, n)| format!("{}/{}", n.pool, self.dataset))
    }
    fn mountpoint(&self, node: &str) -> Option<(String, bool)> {
        let full = self.full_dataset(node)?;
        let ds = self.obs.nodes.get(node)?.dataset(&full)?;
        let mp = ds.mountpoint.clone().filter(|m| m.starts_with('/'))?;
        Some((mp, ds.mounted.unwrap_or(false)))
    }
}

async fn context<'a>(spec: &'a Spec, instance: &str) -> Result<Ctx<'a>, RestoreError> {
    let Some((_, inst)) = spec
        .spec
        .instances
        .iter()
        .find(|(n, _)| n.as_str() == instance)
    else {
        let known: Vec<String> = spec.spec.instances.keys().map(|k| k.to_string()).collect();
        return Err(RestoreError::Request(format!(
            "cluster {} has no instance `{instance}` (it has: {})",
            spec.name,
            known.join(", ")
        )));
    };
    let conns = observe::connect(spec).await;
    let obs = observe::observe(spec, &conns).await;
    let active = spec.spec.active.to_string();
    node(&conns, &active)?;
    let running = obs
        .nodes
        .get(&active)
        .and_then(|o| o.instances.get(instance))
        .map(|s| s.state);
    if running != Some(RunState::Running) {
        return Err(RestoreError::Request(format!(
            "instance {instance} is not running on {active}, the spec's active node (run `apply` \
             first): a restore imports where users read; nothing was changed"
        )));
    }
    let place = MailPlace::of(spec, instance);
    if place.is_some()
        && matches!(
            inst.runtime,
            crate::spec::Runtime::Ezjail { .. } | crate::spec::Runtime::Jail { .. }
        )
    {
        return Err(RestoreError::Request(format!(
            "instance {instance}'s Dovecot runs inside its jail, which does not see the staged copy spoolkeeper makes under {} on the node: restore into a jailed Dovecot is not supported yet; nothing was changed",
            files::SCRATCH_DIR
        )));
    }
    Ok(Ctx {
        spec,
        place,
        dataset: inst.dataset.to_string(),
        conns,
        obs,
        active,
    })
}

/// The mailbox's path relative to the instance dataset (from the active node's view).
async fn relative(ctx: &Ctx<'_>, user: &str) -> Result<(Mailbox, String), RestoreError> {
    let host = node(&ctx.conns, &ctx.active)?;
    let mb = locate(host, ctx.place.as_ref(), user).await?;
    let (mp, _) = ctx.mountpoint(&ctx.active).ok_or_else(|| {
        RestoreError::Request(format!(
            "the dataset of the instance has no mountpoint on {}",
            ctx.active
        ))
    })?;
    let rel =
        recover::relative_path(&mp, &mb.resolved).ok_or_else(|| RecoverError::OutsideDataset {
            user: user.to_owned(),
            path: mb.resolved.clone(),
            dataset: ctx.full_dataset(&ctx.active).unwrap_or_default(),
            mountpoint: mp.clone(),
        })?;
    Ok((mb, rel))
}

/// `restore --list`.
pub async fn list(spec: &Spec, instance: &str, user: &str) -> Result<Listing, RestoreError> {
    let ctx = context(spec, instance).await?;
    let (_, rel) = relative(&ctx, user).await?;
    Ok(Listing {
        cluster: spec.name.to_string(),
        instance: instance.to_owned(),
        user: user.to_owned(),
        path: rel,
        points: recover::restore_points(spec, &ctx.obs, instance),
    })
}

fn stamp() -> String {
    format!(
        "{}_{}",
        Timestamp::now().strftime("%Y%m%dT%H%M%SZ"),
        std::process::id()
    )
}

/// Run a restore; `interrupt` resolving (Ctrl-C) stops it. The scratch is removed in every
/// case; failures to remove it are in the report (or logged with the error).
pub async fn restore(
    spec: &Spec,
    req: &Request,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<Report, RestoreError> {
    let started = Instant::now();
    let ctx = context(spec, &req.instance).await?;
    let scratch = Arc::new(Mutex::new(Scratch::default()));
    let res = tokio::select! {
        r = restore_inner(&ctx, req, &scratch) => r,
        _ = interrupt => Err(RestoreError::Interrupted),
    };
    let cleanup_errors = cleanup(&ctx.conns, &scratch).await;
    match res {
        Ok(mut r) => {
            r.cleanup_errors = cleanup_errors;
            r.seconds = started.elapsed().as_secs_f64();
            Ok(r)
        }
        Err(e) => {
            for c in cleanup_errors {
                tracing::error!("cleanup after a failed restore: {c}");
                eprintln!("warning: cleanup: {c}");
            }
            Err(e)
        }
    }
}

/// Remove what the run made: the staged copy, then the clone (retrying while busy) and its
/// emptied mountpoint. Only the exact names registered are touched.
pub async fn cleanup(conns: &Connections, scratch: &Mutex<Scratch>) -> Vec<String> {
    let (stage, clone) = {
        let mut g = scratch.lock().unwrap_or_else(|p| p.into_inner());
        (g.stage.take(), g.clone.take())
    };
    let mut errs = Vec::new();
    if let Some((n, dir)) = stage {
        match (conns.node(&n), files::remove_scratch_argv(&dir)) {
            (Some(h), Ok(argv)) => {
                if let Err(e) = run_ok(h, &argv, LONG).await {
                    errs.push(format!("{dir} on {n}: {e}"));
                }
            }
            (None, _) => errs.push(format!("{dir} on {n}: node unreachable")),
            (_, Err(e)) => errs.push(e),
        }
    }
    if let Some((n, name, mp)) = clone
        && let Err(e) = destroy_clone(conns, &n, &name, &mp).await
    {
        errs.push(e);
    }
    errs
}

/// Destroy a scratch clone (retrying while zfs says busy) and remove its mountpoint.
pub async fn destroy_clone(
    conns: &Connections,
    n: &str,
    name: &str,
    mountpoint: &str,
) -> Result<(), String> {
    let Some(h) = conns.node(n) else {
        return Err(format!("clone {name} on {n}: node unreachable"));
    };
    let argv = zfs::destroy_clone_argv(name)?;
    let mut last = String::new();
    for attempt in 0..10 {
        match h.run(&argv).await {
            Ok(o) if o.success() => {
                last.clear();
                break;
            }
            Ok(o) if o.stderr_text().contains("does not exist") => {
                last.clear();
                break;
            }
            Ok(o) => {
                last = o.stderr_text().trim().to_owned();
                if !zfs::destroy_is_busy(&last) {
                    break;
                }
            }
            Err(e) => {
                last = e.to_string();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    if !last.is_empty() {
        return Err(format!(
            "clone {name} on {n} not destroyed ({last}); remove it with `zfs destroy {name}`"
        ));
    }
    // the mountpoint, and its parents up to (never including) the scratch directory, where
    // they are empty: ZFS made them for the clone (`rmdir` refuses a directory with anything
    // in it, and a path outside the scratch directory is never touched)
    let mut dir = Some(std::path::Path::new(mountpoint));
    while let Some(d) = dir.filter(|d| d != &std::path::Path::new(files::SCRATCH_DIR)) {
        let Ok(argv) = files::rmdir_scratch_argv(&d.to_string_lossy()) else {
            break;
        };
        if !h.run(&argv).await.is_ok_and(|o| o.success()) {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// Which snapshot to make readable, where, and how.
pub struct Exposure<'a> {
    /// The node that reads it.
    pub reader: &'a str,
    /// The dataset on that node (`pool/path`).
    pub full_dataset: &'a str,
    /// The dataset's mountpoint there and whether it is mounted.
    pub mountpoint: Option<(String, bool)>,
    pub point: &'a RestorePoint,
    /// `restore` or `drill` (in the clone's name).
    pub purpose: &'a str,
    /// A read-only view (restore) or a writable clone (a drill's throwaway instance).
    pub readonly: bool,
    /// Where to mount a clone (default: under the scratch directory).
    pub clone_mountpoint: Option<String>,
}

/// Make the snapshot readable: the snapshot directory when visible (read-only views only),
/// else a clone (registered in `scratch`). Returns (root of the snapshot's tree, how).
pub async fn expose(
    conns: &Connections,
    spec: &Spec,
    x: Exposure<'_>,
    scratch: &Mutex<Scratch>,
) -> Result<(String, &'static str), RestoreError> {
    let host = node(conns, x.reader)?;
    if x.readonly
        && let Some((mp, true)) = &x.mountpoint
    {
        let dir = format!("{mp}/.zfs/snapshot/{}", x.point.snapshot);
        let argv = files::is_dir_argv(&dir).map_err(RestoreError::Request)?;
        if run(host, &argv, host.timeout()).await?.success() {
            return Ok((dir, "snapshot-directory"));
        }
    }
    let st = stamp();
    let clone = zfs::scratch_clone_name(
        x.full_dataset,
        spec.spec.snapshots.prefix.as_str(),
        x.purpose,
        &st,
    );
    let mp = x.clone_mountpoint.unwrap_or_else(|| {
        format!(
            "{}/{}",
            files::SCRATCH_DIR,
            clone.rsplit('/').next().unwrap_or("clone")
        )
    });
    let argv = zfs::clone_argv(
        x.full_dataset,
        &x.point.snapshot,
        &clone,
        &mp,
        x.readonly,
        x.purpose,
        &st,
    )
    .map_err(RestoreError::Request)?;
    let out = run(host, &argv, LONG).await?;
    if !out.success() {
        return Err(cmd_err(host, &argv, &out));
    }
    scratch.lock().unwrap_or_else(|p| p.into_inner()).clone =
        Some((x.reader.to_owned(), clone, mp.clone()));
    Ok((mp, "clone"))
}

async fn restore_inner(
    ctx: &Ctx<'_>,
    req: &Request,
    scratch: &Mutex<Scratch>,
) -> Result<Report, RestoreError> {
    let (mb, rel) = relative(ctx, &req.user).await?;
    let points = recover::restore_points(ctx.spec, &ctx.obs, &req.instance);
    let reachable: BTreeSet<String> = ctx
        .conns
        .nodes
        .iter()
        .filter(|(_, h)| h.is_ok())
        .map(|(n, _)| n.clone())
        .collect();
    let point = recover::choose(&points, &req.selector).map_err(|e| {
        let away: Vec<&str> = ctx
            .conns
            .nodes
            .keys()
            .filter(|n| !reachable.contains(*n))
            .map(String::as_str)
            .collect();
        if away.is_empty() {
            RestoreError::Decide(e)
        } else {
            RestoreError::Request(format!(
                "{e}; {} unreachable: its snapshots could not be listed",
                away.join(", ")
            ))
        }
    })?;
    let reader = recover::reader(&point, &ctx.active, &reachable, req.node.as_deref())?;
    let reader_host = node(&ctx.conns, &reader)?;
    let active = node(&ctx.conns, &ctx.active)?;
    let full = ctx
        .full_dataset(&reader)
        .ok_or_else(|| RestoreError::Request(format!("no node {reader}")))?;

    // 3. the snapshot, readable
    let (root, how) = expose(
        &ctx.conns,
        ctx.spec,
        Exposure {
            reader: &reader,
            full_dataset: &full,
            mountpoint: ctx.mountpoint(&reader),
            point: &point,
            purpose: "restore",
            readonly: true,
            clone_mountpoint: None,
        },
        scratch,
    )
    .await?;
    let src = if rel.is_empty() {
        root.clone()
    } else {
        format!("{root}/{rel}")
    };
    let argv = files::is_dir_argv(&src).map_err(RestoreError::Request)?;
    if !run(reader_host, &argv, reader_host.timeout())
        .await?
        .success()
    {
        return Err(RestoreError::Request(format!(
            "{} has no mail in snapshot {} ({} did not exist then); `restore --list` shows the \
             others",
            req.user, point.snapshot, rel
        )));
    }

    // 4. the staged copy on the active node
    let stage = format!("{}/restore_{}", files::SCRATCH_DIR, stamp());
    let argv = files::make_scratch_argv(&stage).map_err(RestoreError::Request)?;
    run_ok(active, &argv, active.timeout()).await?;
    scratch.lock().unwrap_or_else(|p| p.into_inner()).stage =
        Some((ctx.active.clone(), stage.clone()));
    let send = files::tar_create_argv(&src).map_err(RestoreError::Request)?;
    let recv = files::tar_extract_argv(&stage).map_err(RestoreError::Request)?;
    match tokio::time::timeout(
        LONG,
        super::action::relay(reader_host, active, &send, &recv),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(RestoreError::Request(format!("copying the mailbox: {e}"))),
        Err(_) => {
            return Err(RestoreError::Request(format!(
                "copying the mailbox took more than {} s",
                LONG.as_secs()
            )));
        }
    }
    let argv = files::chown_scratch_argv(&stage, mb.info.uid, mb.info.gid)
        .map_err(RestoreError::Request)?;
    run_ok(active, &argv, LONG).await?;
    let staged = mb.location.at(&stage);

    // 5. what there is, what is there already, what to import
    let place = ctx.place.as_ref();
    let argv = mail::wrap(place, dovecot::exec_imap_argv(&req.user)?);
    let out = active
        .run_with_stdin_timeout(&argv, dovecot::LIST_SEPARATOR_SESSION, active.timeout())
        .await
        .map_err(|source| RestoreError::Transport {
            host: active.label().to_owned(),
            source,
        })?;
    let sep = dovecot::parse_list_separator(&out.stdout_text())?.ok_or_else(|| {
        RestoreError::Request(format!(
            "{}'s namespace has no hierarchy separator: no restore folder can be made",
            req.user
        ))
    })?;
    if let Some(f) = &req.folder {
        let argv = mail::wrap(place, dovecot::mailbox_list_argv(&req.user, Some(&staged))?);
        let out = run_ok(active, &argv, LONG).await?;
        let folders = dovecot::parse_mailbox_list(&out.stdout_text());
        if !folders.iter().any(|x| x == f) {
            return Err(RestoreError::Request(format!(
                "snapshot {} has no folder `{f}` for {} (it has: {})",
                point.snapshot,
                req.user,
                folders.join(", ")
            )));
        }
    }
    let q = recover::query(req.folder.as_deref(), req.since, req.until);
    let argv = mail::wrap(place, dovecot::listing_argv(&req.user, Some(&staged), &q)?);
    let source = recover::restorable(
        dovecot::parse_listing(&run_ok(active, &argv, LONG).await?.stdout_text())?,
        sep,
        req.folder.as_deref(),
    );
    let restore_root = recover::restore_root(&point, sep);
    let existing = live_restored(active, place, &req.user, &restore_root, sep).await?;
    let plans = recover::to_import(&source, &existing, &restore_root, sep);

    // 6. import
    if !req.dry_run {
        for p in plans.iter().filter(|p| !p.uids.is_empty()) {
            let argv = mail::wrap(
                place,
                dovecot::import_argv(&req.user, &staged, &restore_root, &p.source, &p.uids)?,
            );
            run_ok(active, &argv, LONG).await?;
        }
        // check: every folder now holds what the snapshot held
        let after = live_restored(active, place, &req.user, &restore_root, sep).await?;
        let left: usize = recover::to_import(&source, &after, &restore_root, sep)
            .iter()
            .map(|p| p.uids.len())
            .sum();
        if left > 0 {
            return Err(RestoreError::Request(format!(
                "after the import, {left} message(s) are still missing from {restore_root}"
            )));
        }
    }
    Ok(Report {
        cluster: ctx.spec.name.to_string(),
        instance: req.instance.clone(),
        user: req.user.clone(),
        snapshot: point.snapshot.clone(),
        snapshot_time: point.creation,
        read_on: reader,
        read_through: how.to_owned(),
        restored_on: ctx.active.clone(),
        folder: restore_root,
        dry_run: req.dry_run,
        messages: plans.iter().map(|p| p.uids.len()).sum(),
        bytes: plans.iter().map(|p| p.bytes).sum(),
        already: plans.iter().map(|p| p.already).sum(),
        folders: plans,
        seconds: 0.0,
        cleanup_errors: Vec::new(),
    })
}

/// What the live mailbox holds under the restore folder.
async fn live_restored(
    host: &Host,
    place: Option<&MailPlace>,
    user: &str,
    root: &str,
    sep: char,
) -> Result<Vec<dovecot::Listed>, RestoreError> {
    let q = vec!["mailbox".to_owned(), format!("{root}{sep}*")];
    let argv = mail::wrap(place, dovecot::listing_argv(user, None, &q)?);
    Ok(dovecot::parse_listing(
        &run_ok(host, &argv, LONG).await?.stdout_text(),
    )?)
}
