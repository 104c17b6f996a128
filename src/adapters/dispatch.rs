//! The one place an [`Action`] becomes argv: each action's commands and the bytes it feeds
//! on stdin, built by the per-tool adapters. `plan` prints them; `apply` runs them.

use crate::adapters::jail::{self, RuntimeVerb};
use crate::adapters::{fencing, files, postfix, postfix_cmd, zfs};
use crate::plan::{Action, ActionKind, Target};
use crate::spec::Spec;

use std::time::Duration;

/// The argv lists one action runs, in order, and where. The same function feeds the
/// renderers (`plan` shows these commands) and the executor, so the plan is the truth.
pub fn commands(spec: &Spec, a: &Action) -> Result<Vec<Vec<String>>, String> {
    let argvs = node_commands(spec, a)?;
    match &a.mail {
        None => Ok(argvs),
        Some(m) => {
            let place = crate::adapters::mail::MailPlace::of(spec, m).ok_or_else(|| {
                format!("instance {m} has no mail system of its own in the spec (mail.in)")
            })?;
            Ok(argvs.into_iter().map(|v| place.wrap(v)).collect())
        }
    }
}

/// [`commands`] as they would run on the host's own Postfix and Dovecot.
fn node_commands(spec: &Spec, a: &Action) -> Result<Vec<Vec<String>>, String> {
    let node = match (&a.host, &a.kind) {
        (Target::Node(n), _) => n.as_str(),
        (Target::Controller, _) => "",
        (Target::Archive, _) => "",
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
        ActionKind::Snapshot { dataset, name, .. } => vec![zfs::snapshot_argv(dataset, name)],
        ActionKind::WriteFile { path, .. } => vec![files::write_file_argv(path)],
        ActionKind::Postconf { settings, reload } => {
            let mut v = Vec::new();
            if !settings.is_empty() {
                v.push(postfix::postconf_set_argv(settings));
            }
            if *reload {
                v.push(postfix::reload_argv());
            }
            v
        }
        ActionKind::PurgeArchive { .. } => {
            vec![postfix_cmd::postsuper_delete_argv()]
        }
        ActionKind::DropQueued { .. } => {
            vec![postfix_cmd::postsuper_delete_queued_argv()]
        }
        ActionKind::WaitDelivered { .. } | ActionKind::WaitArchived { .. } => {
            vec![postfix::postqueue_argv()]
        }
        ActionKind::Fence { node: fenced } => {
            let f = spec
                .spec
                .fencing
                .as_ref()
                .ok_or("no fencing command in the spec")?;
            let host = spec
                .spec
                .nodes
                .iter()
                .find(|(n, _)| n.as_str() == fenced)
                .map(|(_, n)| n.ssh.host.clone())
                .unwrap_or_default();
            vec![fencing::fence_argv(&f.command, fenced, &host)]
        }
        ActionKind::VerifyGuid {
            source_dataset,
            target_dataset,
            snapshot,
            ..
        } => vec![
            zfs::guid_argv(source_dataset, snapshot),
            zfs::guid_argv(target_dataset, snapshot),
        ],
        ActionKind::Rollback {
            dataset,
            snapshot,
            destroy_later,
        } => vec![zfs::rollback_argv(dataset, snapshot, *destroy_later)],
        ActionKind::AbortReceive { dataset } => vec![zfs::abort_receive_argv(dataset)],
        ActionKind::RenameDataset { dataset, to } => vec![zfs::rename_argv(dataset, to)],
        ActionKind::SetUserProperty {
            dataset,
            property,
            value,
        } => vec![match value {
            Some(v) => zfs::set_argv(dataset, property, v),
            None => zfs::inherit_argv(dataset, property),
        }],
        ActionKind::PreserveDelta {
            dataset,
            base,
            snapshot,
            file,
        } => vec![
            zfs::snapshot_argv(dataset, snapshot),
            zfs::send_to_file_argv(dataset, base, snapshot, file),
        ],
        ActionKind::ArchRestore { .. } | ActionKind::ForgetFence { .. } => Vec::new(),
        ActionKind::FlushQueue => vec![postfix::flush_argv()],
        ActionKind::Hold { dataset, snapshot } => vec![zfs::hold_argv(dataset, snapshot)],
        ActionKind::Release { dataset, snapshot } => vec![zfs::release_argv(dataset, snapshot)],
        ActionKind::DestroySnapshots {
            dataset,
            snapshots,
            batch,
        } => {
            if *batch {
                zfs::destroy_argvs(dataset, snapshots, true)?
            } else {
                // the names go on stdin (`stdin_of`): one round trip for the whole list
                vec![zfs::destroy_each_argv()]
            }
        }
        ActionKind::TeardownScratch { clone, drill, .. } => {
            let mut v = Vec::new();
            let node = match &a.host {
                crate::plan::Target::Node(n) => n.as_str(),
                _ => "",
            };
            if let Some(d) = drill.as_ref().and_then(|i| {
                spec.spec
                    .instances
                    .iter()
                    .find(|(n, _)| n.as_str() == i)
                    .and_then(|(_, x)| x.drill.as_ref())
            }) {
                v.push(crate::adapters::jail::drill_argv(
                    &d.stop,
                    drill.as_deref().unwrap_or_default(),
                    node,
                    &d.mountpoint,
                ));
            }
            v.push(zfs::teardown_scratch_argv(clone)?);
            v
        }
        ActionKind::Replicate {
            source_dataset,
            target,
            target_pool,
            base,
            to,
            relay,
            resume_token,
            resumable,
            compress,
            ..
        } => {
            let send = zfs::send_argv(source_dataset, base.as_deref(), to, resume_token.as_deref());
            let recv = zfs::receive_compressed_argv(
                &zfs::receive_argv(target_pool, *resumable),
                *compress,
            );
            if *relay {
                // Run by the controller: send on the source, receive on the target.
                vec![zfs::send_compressed_argv(&send, *compress), recv]
            } else {
                let t = spec
                    .spec
                    .nodes
                    .iter()
                    .find(|(n, _)| n.as_str() == target)
                    .map(|(_, n)| &n.ssh)
                    .ok_or_else(|| format!("target node {target} is not in the spec"))?;
                let dt = zfs::DirectTarget {
                    host: t.host.clone(),
                    user: t.user.clone(),
                    port: t.port,
                    known_hosts: t.known_hosts.as_ref().map(|p| p.display().to_string()),
                    identity: t.identity.as_ref().map(|p| p.display().to_string()),
                };
                vec![zfs::direct_pipeline_argv(
                    &send,
                    &zfs::direct_ssh_argv(&dt, &recv),
                    *compress,
                )]
            }
        }
    })
}

/// The bytes fed to the (single) command of an action on its stdin, for the actions that
/// take one: a file's content, the queue ids to delete, the snapshots to destroy one by one.
pub fn stdin_of(a: &Action) -> Result<Option<Vec<u8>>, String> {
    Ok(match &a.kind {
        ActionKind::WriteFile { content, .. } => Some(content.as_bytes().to_vec()),
        ActionKind::PurgeArchive { queue_ids, .. } | ActionKind::DropQueued { queue_ids, .. } => {
            Some(
                postfix_cmd::postsuper_stdin(queue_ids.iter().map(|q| q.as_str()))
                    .map_err(|e| e.to_string())?,
            )
        }
        ActionKind::DestroySnapshots {
            dataset,
            snapshots,
            batch: false,
        } => Some(zfs::destroy_each_stdin(dataset, snapshots)?),
        _ => None,
    })
}

/// How long one command of an action may take: the actions that move data (a replication
/// stream, a delta saved to a file) or touch many snapshots get hours, everything else the
/// transport's default ([`DEFAULT_TIMEOUT`]). A command past it is abandoned and the action
/// fails; the next apply re-observes.
pub fn timeout_of(kind: &ActionKind) -> Duration {
    match kind {
        ActionKind::Replicate { .. } | ActionKind::PreserveDelta { .. } => DATA_TIMEOUT,
        ActionKind::DestroySnapshots { .. } | ActionKind::RenameDataset { .. } => {
            Duration::from_secs(3600)
        }
        _ => DEFAULT_TIMEOUT,
    }
}

/// A replication stream or a saved delta: a day (a first full send of TBs).
pub const DATA_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Any other command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Whether a failed command of `kind` left the wanted state anyway, from its stderr: a hold
/// that exists, a release of a hold that is gone (a journal lost, or an apply killed between
/// the command and its record). The tool's idempotency, known here and nowhere else.
pub fn already_in_place(kind: &ActionKind, stderr: &str) -> bool {
    match kind {
        ActionKind::Hold { .. } => zfs::hold_exists(stderr),
        ActionKind::Release { .. } => zfs::hold_missing(stderr),
        // `postfix reload` of a Postfix that is not running (an instance's own, where the
        // instance is stopped): it reads the new configuration when it starts
        ActionKind::Postconf { .. } => postfix::reload_not_running(stderr),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_of_a_stopped_postfix_is_in_place_a_failed_postconf_is_not() {
        let k = ActionKind::Postconf {
            settings: Default::default(),
            reload: true,
        };
        assert!(already_in_place(
            &k,
            "postfix/postfix-script: fatal: the Postfix mail system is not running\n"
        ));
        assert!(!already_in_place(
            &k,
            "postconf: fatal: open /etc/postfix/staff/main.cf for reading: No such file or directory"
        ));
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
        assert!(already_in_place(
            &hold,
            "cannot hold snapshot 'p/d@s': tag already exists on this dataset"
        ));
        assert!(already_in_place(
            &release,
            "cannot release hold from snapshot 'p/d@s': no such tag on this dataset"
        ));
        assert!(!already_in_place(
            &hold,
            "cannot hold snapshot 'p/d@s': dataset does not exist"
        ));
        assert!(!already_in_place(
            &ActionKind::Mount {
                dataset: "p/d".into()
            },
            "tag already exists"
        ));
    }
}
