//! Per-action I/O: what running one action means on the hosts. The walk (`super::walk`)
//! decides when; the dispatcher (`crate::adapters::dispatch`) builds the argv.

use crate::adapters::dispatch::{self, commands};
use crate::observe::Connections;
use crate::plan::{Action, ActionKind, Target};
use crate::spec::Spec;
use crate::transport::host::{Host, Output};

use super::error::ActionError;
use super::replay;

fn host_of<'c>(conns: &'c Connections, t: &Target) -> Result<&'c Host, ActionError> {
    let not_connected = |host: &str| ActionError::Transport {
        host: host.to_owned(),
        detail: "not connected (it did not answer when this apply started)".into(),
    };
    match t {
        Target::Node(n) => conns.node(n).ok_or_else(|| not_connected(n)),
        Target::Archive => conns
            .archive()
            .ok_or_else(|| not_connected("the archive host")),
        Target::Controller => Ok(&conns.local),
    }
}

fn exit_error(host: &Host, argv: &[String], out: &Output) -> ActionError {
    ActionError::Exit {
        host: host.label().to_owned(),
        argv: argv.join(" "),
        status: out.status,
        stderr: out.stderr_text().trim().to_owned(),
    }
}

/// Run one action: its commands (from the dispatcher) on its host, or the I/O of the actions
/// that are more than a list of commands (a relayed send, a guid check, a replay, a wait).
/// For a replication: the bytes of the stream sent.
pub async fn run(
    spec: &Spec,
    conns: &Connections,
    a: &Action,
    state_dir: &std::path::Path,
) -> Result<Option<u64>, ActionError> {
    match &a.kind {
        ActionKind::Replicate {
            source,
            target,
            relay: true,
            ..
        } => {
            let cmds = commands(spec, a).map_err(ActionError::Spec)?;
            let (send, recv) = match cmds.as_slice() {
                [s, r] => (s, r),
                _ => return Err("relay replication needs a send and a receive".into()),
            };
            relay(
                host_of(conns, &Target::Node(source.clone()))?,
                host_of(conns, &Target::Node(target.clone()))?,
                send,
                recv,
            )
            .await
            .map(Some)
        }
        ActionKind::Replicate { relay: false, .. } => {
            // one pipeline on the source, its progress streamed back on its stdout
            let host = host_of(conns, &a.host)?;
            let mut bytes = None;
            for argv in commands(spec, a).map_err(ActionError::Spec)? {
                let limit = dispatch::timeout_of(&a.kind);
                bytes = match tokio::time::timeout(limit, direct_send(host, &a.id, &argv)).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(ActionError::transport(
                            host.label(),
                            &host.timed_out(&argv, limit),
                        ));
                    }
                };
            }
            Ok(bytes)
        }
        _ => run_commands(spec, conns, a, state_dir).await.map(|()| None),
    }
}

async fn run_commands(
    spec: &Spec,
    conns: &Connections,
    a: &Action,
    state_dir: &std::path::Path,
) -> Result<(), ActionError> {
    if let ActionKind::VerifyGuid { source, target, .. } = &a.kind {
        let cmds = commands(spec, a).map_err(ActionError::Spec)?;
        let mut guids = Vec::new();
        for (node, argv) in [source, target].into_iter().zip(&cmds) {
            let h = host_of(conns, &Target::Node(node.clone()))?;
            let out = h
                .run(argv)
                .await
                .map_err(|e| ActionError::transport(node, &e))?;
            if !out.success() {
                return Err(exit_error(h, argv, &out));
            }
            guids.push(out.stdout_text().trim().to_string());
        }
        return if guids.len() == 2 && guids[0] == guids[1] && !guids[0].is_empty() {
            Ok(())
        } else {
            Err(ActionError::GuidMismatch {
                source_node: source.clone(),
                target_node: target.clone(),
                source_guid: guids.first().cloned(),
                target_guid: guids.get(1).cloned(),
            })
        };
    }
    if let ActionKind::ArchRestore {
        instance,
        node,
        anchor,
    } = &a.kind
    {
        use crate::decide::restore::{Target, Window};
        let target = Target {
            node: node.as_deref(),
            window: match (node, anchor) {
                (_, Some(a)) => Window::Anchor(a),
                (Some(_), None) => Window::Everything,
                (None, None) => Window::Newest,
            },
        };
        // A fresh look: the instance was just started, the archive queue moved on.
        let obs = crate::observe::observe(spec, conns).await;
        let replay_error = |detail: String| ActionError::Replay {
            instance: instance.clone(),
            detail,
        };
        let report = replay::run(spec, conns, &obs, Some(instance), target, false, state_dir)
            .await
            .map_err(replay_error)?;
        tracing::info!(instance = %instance, report = %report.text().trim(), "arch-restore");
        return if report.ok() {
            Ok(())
        } else {
            Err(replay_error(report.text().trim().to_owned()))
        };
    }
    if let ActionKind::WaitDelivered { instance, domains } = &a.kind {
        // the queue listing of the Postfix that accepts the instance's mail (dispatch)
        let argv = commands(spec, a)
            .map_err(ActionError::Spec)?
            .into_iter()
            .next()
            .unwrap_or_else(crate::adapters::postfix::postqueue_argv);
        return wait_delivered(host_of(conns, &a.host)?, &argv, instance, domains).await;
    }
    if let ActionKind::WaitArchived {
        instance,
        queue_ids,
    } = &a.kind
    {
        let argv = commands(spec, a)
            .map_err(ActionError::Spec)?
            .into_iter()
            .next()
            .unwrap_or_else(crate::adapters::postfix::postqueue_argv);
        let domain = spec
            .spec
            .archive
            .as_ref()
            .map(|x| x.address.archive_domain().to_owned())
            .ok_or_else(|| ActionError::Spec("no archive in the spec".into()))?;
        return wait_archived(
            host_of(conns, &a.host)?,
            &argv,
            instance,
            &domain,
            queue_ids,
        )
        .await;
    }
    let host = host_of(conns, &a.host)?;
    let stdin = dispatch::stdin_of(a).map_err(ActionError::Spec)?;
    for argv in commands(spec, a).map_err(ActionError::Spec)? {
        let limit = dispatch::timeout_of(&a.kind);
        let out = match &stdin {
            Some(input) => host.run_with_stdin_timeout(&argv, input, limit).await,
            None => host.run_timeout(&argv, limit).await,
        }
        .map_err(|e| ActionError::transport(host.label(), &e))?;
        if !out.success() && dispatch::already_in_place(&a.kind, &out.stderr_text()) {
            tracing::info!(action = %a.id, "already in place");
            continue;
        }
        if !out.success() {
            return Err(exit_error(host, &argv, &out));
        }
    }
    Ok(())
}

/// How long a switchover waits for the old node's queue to deliver the instance's mail.
const WAIT_DELIVERED: std::time::Duration = std::time::Duration::from_secs(60);

/// Poll the host's queue until nothing is queued for `domains` (the local deliveries of an
/// instance; its archive copies are at the archive domain and do not count).
async fn wait_delivered(
    host: &Host,
    argv: &[String],
    instance: &str,
    domains: &[String],
) -> Result<(), ActionError> {
    wait_queue(host, argv, instance, |q| {
        crate::decide::restore::spool_pending(q, domains).len()
    })
    .await
}

/// Poll the host's queue until none of `ids` still holds a recipient at the archive domain
/// (gone from the queue, or only other recipients left): those archive copies reached the
/// archive host. Copies accepted after the plan was made do not count, so a busy spool
/// never holds the wait up.
async fn wait_archived(
    host: &Host,
    argv: &[String],
    instance: &str,
    archive_domain: &str,
    ids: &[crate::model::QueueId],
) -> Result<(), ActionError> {
    let what = format!("{instance} (archive copies)");
    wait_queue(host, argv, &what, |q| {
        still_archiving(q, archive_domain, ids)
    })
    .await
}

/// Poll the queue listing (`argv`, `postqueue -j`) every 250 ms until `pending` counts
/// nothing in it, for [`WAIT_DELIVERED`] at most.
async fn wait_queue(
    host: &Host,
    argv: &[String],
    what: &str,
    pending: impl Fn(&[crate::model::QueueEntry]) -> usize,
) -> Result<(), ActionError> {
    let until = std::time::Instant::now() + WAIT_DELIVERED;
    loop {
        let out = host
            .run(argv)
            .await
            .map_err(|e| ActionError::transport(host.label(), &e))?;
        if !out.success() {
            return Err(exit_error(host, argv, &out));
        }
        let queue = crate::adapters::postfix::parse_postqueue(&out.stdout_text())
            .map_err(|e| format!("postqueue -j on {}: {e}", host.label()))?;
        let left = pending(&queue);
        if left == 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= until {
            return Err(ActionError::StillQueued {
                host: host.label().to_owned(),
                instance: what.to_owned(),
                pending: left,
                secs: WAIT_DELIVERED.as_secs(),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// How many of `ids` still hold a recipient at `archive_domain` in `queue`.
fn still_archiving(
    queue: &[crate::model::QueueEntry],
    archive_domain: &str,
    ids: &[crate::model::QueueId],
) -> usize {
    queue
        .iter()
        .filter(|e| ids.contains(&e.queue_id))
        .filter(|e| {
            e.recipients.iter().any(|r| {
                r.address
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| d.eq_ignore_ascii_case(archive_domain))
            })
        })
        .count()
}

/// `tokio::io::copy` that reports the bytes to `apply::progress` under `id`.
async fn copy_counting(
    from: &mut (impl tokio::io::AsyncRead + Unpin + ?Sized),
    to: &mut (impl tokio::io::AsyncWrite + Unpin + ?Sized),
    id: &str,
) -> std::io::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _g = super::progress::Guard(id.to_owned());
    super::progress::begin(id);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        to.write_all(&buf[..n]).await?;
        total += n as u64;
        super::progress::update(id, total);
    }
}

/// The direct send: the pipeline's merged output is read as it comes, each progress line
/// reported to `apply::progress`; the last 8 KiB are kept for the error message.
async fn direct_send(host: &Host, id: &str, argv: &[String]) -> Result<Option<u64>, ActionError> {
    use tokio::io::AsyncReadExt;
    let _g = super::progress::Guard(id.to_owned());
    super::progress::begin(id);
    let mut child = host
        .spawn(argv)
        .await
        .map_err(|e| ActionError::transport(host.label(), &e))?;
    drop(std::mem::replace(
        &mut child.stdin,
        Box::pin(tokio::io::sink()),
    ));
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match child.stdout.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        tail.extend_from_slice(&buf[..n]);
        if let Some(b) =
            crate::adapters::zfs::parse_stream_bytes(&String::from_utf8_lossy(&buf[..n]))
        {
            super::progress::update(id, b);
        }
        if tail.len() > 8192 {
            tail.drain(..tail.len() - 8192);
        }
    }
    let mut out = child
        .wait()
        .await
        .map_err(|e| ActionError::transport(host.label(), &e))?;
    let text = String::from_utf8_lossy(&tail).into_owned();
    if !out.success() {
        // what the pipeline said, without dd's counters
        out.stderr = text
            .split(['\n', '\r'])
            .filter(|l| !l.is_empty() && crate::adapters::zfs::parse_stream_bytes(l).is_none())
            .filter(|l| !l.contains("records in") && !l.contains("records out"))
            .collect::<Vec<_>>()
            .join("\n")
            .into_bytes();
        return Err(exit_error(host, argv, &out));
    }
    Ok(crate::adapters::zfs::parse_stream_bytes(&text))
}

/// The relay transport: `zfs send` on the source, `zfs receive` on the target, the stream
/// copied through the controller. The receive's status decides; a failed send makes the
/// receive see a truncated stream and fail.
pub(crate) async fn relay(
    src: &Host,
    dst: &Host,
    send: &[String],
    recv: &[String],
) -> Result<u64, ActionError> {
    let mut sender = src
        .spawn(send)
        .await
        .map_err(|e| ActionError::transport(src.label(), &e))?;
    let mut receiver = dst
        .spawn(recv)
        .await
        .map_err(|e| ActionError::transport(dst.label(), &e))?;
    let id = format!("{} -> {}", src.label(), dst.label());
    let copied = copy_counting(&mut sender.stdout, &mut receiver.stdin, &id).await;
    // Close the receive's stdin (drop it: a tokio pipe's shutdown does not close it) so it
    // sees the end of the stream.
    let _ = tokio::io::AsyncWriteExt::flush(&mut receiver.stdin).await;
    drop(std::mem::replace(
        &mut receiver.stdin,
        Box::pin(tokio::io::sink()),
    ));
    let sent = sender
        .wait()
        .await
        .map_err(|e| ActionError::transport(src.label(), &e))?;
    let received = receiver
        .wait()
        .await
        .map_err(|e| ActionError::transport(dst.label(), &e))?;
    let bytes = copied.map_err(|e| ActionError::Transport {
        host: format!("{} -> {}", src.label(), dst.label()),
        detail: format!("relaying the stream through the controller: {e}"),
    })?;
    if !received.success() {
        let mut e = exit_error(dst, recv, &received);
        if let ActionError::Exit { stderr, .. } = &mut e {
            stderr.push_str(&format!(" (send: {})", sent.stderr_text().trim()));
        }
        return Err(e);
    }
    if !sent.success() {
        return Err(exit_error(src, send, &sent));
    }
    tracing::info!(bytes, "relayed");
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::host::{AnyHost, LocalHost, RoundTrips};

    fn local(label: &str, trips: &RoundTrips) -> Host {
        Host::new(label, AnyHost::Local(LocalHost), trips)
    }

    #[test]
    fn only_the_observed_copies_still_at_the_archive_domain_hold_a_replay_up() {
        let q = crate::adapters::postfix::parse_postqueue(concat!(
            r#"{"queue_name":"deferred","queue_id":"Q1","arrival_time":1,"message_size":2,"sender":"a@b","recipients":[{"address":"u=s.lab@Archive.Lab"},{"address":"u@s.lab"}]}"#,
            "\n",
            r#"{"queue_name":"active","queue_id":"Q2","arrival_time":1,"message_size":2,"sender":"a@b","recipients":[{"address":"u@s.lab"}]}"#,
            "\n",
            r#"{"queue_name":"incoming","queue_id":"Q9","arrival_time":1,"message_size":2,"sender":"a@b","recipients":[{"address":"v=s.lab@archive.lab"}]}"#,
            "\n",
        ))
        .unwrap();
        let ids = |v: &[&str]| {
            v.iter()
                .map(|s| crate::model::QueueId::from(*s))
                .collect::<Vec<_>>()
        };
        // Q1 still holds its archive recipient (domain matched without case)
        assert_eq!(
            still_archiving(&q, "archive.lab", &ids(&["Q1", "Q2", "Q5"])),
            1
        );
        // Q2 has only its local delivery left, Q5 left the queue, Q9 came after the plan
        assert_eq!(still_archiving(&q, "archive.lab", &ids(&["Q2", "Q5"])), 0);
    }

    #[tokio::test]
    async fn a_wait_for_copies_that_left_the_queue_ends_at_once() {
        let trips = RoundTrips::default();
        let h = local("spool", &trips);
        let listing = r#"{"queue_name":"deferred","queue_id":"Q2","arrival_time":1,"message_size":2,"sender":"a@b","recipients":[{"address":"u@s.lab"}]}"#;
        let argv = vec![
            "printf".to_string(),
            "%s\\n".to_string(),
            listing.to_string(),
        ];
        wait_archived(&h, &argv, "students", "archive.lab", &["Q1".into()])
            .await
            .unwrap();
        // a listing that is not postqueue's is an error, never "nothing queued"
        let argv = vec!["printf".to_string(), "not json\\n".to_string()];
        assert!(
            wait_archived(&h, &argv, "students", "archive.lab", &["Q1".into()])
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn relay_copies_the_whole_stream_and_the_receiver_decides() {
        let trips = RoundTrips::default();
        let (src, dst) = (local("src", &trips), local("dst", &trips));
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received");
        // 5 MB of data through the controller.
        let send: Vec<String> = ["sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let recv: Vec<String> = vec![
            "sh".into(),
            "-c".into(),
            "cat > \"$1\"".into(),
            "sh".into(),
            out.display().to_string(),
        ];
        relay(&src, &dst, &send, &recv).await.unwrap();
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 5_000_000);

        // A receiver that fails (a truncated or refused stream) fails the transfer.
        let bad: Vec<String> = [
            "sh",
            "-c",
            "cat > /dev/null; echo 'cannot receive' >&2; exit 1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let e = relay(&src, &dst, &send, &bad).await.unwrap_err();
        assert!(e.to_string().contains("cannot receive"), "{e}");

        // A sender that fails after part of the stream fails it too.
        let broken: Vec<String> = ["sh", "-c", "printf partial; exit 2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = relay(&src, &dst, &broken, &recv).await.unwrap_err();
        assert!(
            matches!(&e, ActionError::Exit { argv, status: Some(2), .. } if argv.starts_with("sh")),
            "{e}"
        );
    }
}
