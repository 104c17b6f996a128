//! Why an action failed, typed, with what the operator can do about it (as
//! `crate::plan::Blocked` does for the plans that are refused).

/// The failure of one action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// The host could not be reached or the session broke (SSH, timeouts).
    #[error("{host}: {detail}")]
    Transport { host: String, detail: String },
    /// A command ran and exited non-zero (or was killed by a signal: `status` is `None`).
    #[error("`{argv}` on {host} exited {}: {stderr}", status.map_or("by a signal".to_owned(), |c| c.to_string()))]
    Exit {
        host: String,
        argv: String,
        status: Option<i32>,
        stderr: String,
    },
    /// After a send, the snapshot on the target is not the one sent.
    #[error(
        "guid mismatch after the send: {source_node} has {source_guid:?}, {target_node} has {target_guid:?}; nothing was switched"
    )]
    GuidMismatch {
        source_node: String,
        target_node: String,
        source_guid: Option<String>,
        target_guid: Option<String>,
    },
    /// A switchover's old node still holds deliveries for the instance.
    #[error(
        "{pending} message(s) for {instance} are still queued on {host} after {secs}s (their delivery fails: check the mailbox server there, `postqueue -p`); the switchover stopped before the final snapshot and changes nothing else"
    )]
    StillQueued {
        host: String,
        instance: String,
        pending: usize,
        secs: u64,
    },
    /// The archive replay did not complete; it stays owed.
    #[error("arch-restore of {instance}: {detail}")]
    Replay { instance: String, detail: String },
    /// The action's commands cannot be built from the spec (e.g. no fencing command).
    #[error("{0}")]
    Spec(String),
    /// The journal could not record the action: without a durable record it is not run.
    #[error("journal write failed: {0}")]
    Journal(String),
    /// Anything else (a walk that could not run the action, a reply not understood).
    #[error("{0}")]
    Other(String),
}

impl ActionError {
    /// What the operator can do next. Every failed apply is safe to run again: what completed
    /// is journaled and not repeated, what depended on the failure did not run.
    pub fn remedy(&self) -> String {
        match self {
            ActionError::Transport { host, .. } => format!(
                "check that {host} answers over SSH (network, sshd, keys), then apply again"
            ),
            ActionError::Exit { host, argv, .. } => {
                let tool = argv.split_whitespace().next().unwrap_or("the command");
                format!(
                    "read {tool}'s error above, fix its cause on {host} (`plan` shows the exact command), then apply again; nothing that depended on this step ran"
                )
            }
            ActionError::GuidMismatch {
                source_node,
                target_node,
                ..
            } => format!(
                "the copy on {target_node} is not what {source_node} sent: check both pools (`zpool status -v`) and the snapshot listings, then apply again; the service stays where it was"
            ),
            ActionError::StillQueued { host, .. } => format!(
                "make the queued mail deliverable on {host} (`postqueue -p`, the mailbox server's log), then apply again"
            ),
            ActionError::Replay { .. } => "the replay stays owed and every apply plans it again: make the archive host and the serving node's Postfix reachable, see what is left with `spoolkeeper arch-restore -f SPEC --dry-run`, then apply again".to_owned(),
            ActionError::Spec(_) => "fix the spec (`spoolkeeper validate`), then apply again".to_owned(),
            ActionError::Journal(_) => "make the state directory writable (space, permissions; `--state-dir`), then apply again".to_owned(),
            ActionError::Other(_) => "apply again; if it fails the same way, report it with `plan --output json` and the journal".to_owned(),
        }
    }
}

impl From<String> for ActionError {
    fn from(s: String) -> Self {
        ActionError::Other(s)
    }
}

impl From<&str> for ActionError {
    fn from(s: &str) -> Self {
        ActionError::Other(s.to_owned())
    }
}

impl ActionError {
    /// A transport failure talking to `host`.
    pub fn transport(host: &str, e: &crate::transport::host::HostError) -> ActionError {
        ActionError::Transport {
            host: host.to_owned(),
            detail: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_names_what_failed_and_a_remedy() {
        let e = ActionError::Exit {
            host: "node-a".into(),
            argv: "zfs rollback -r zdata/x@s".into(),
            status: Some(1),
            stderr: "more recent snapshots exist".into(),
        };
        assert_eq!(
            e.to_string(),
            "`zfs rollback -r zdata/x@s` on node-a exited 1: more recent snapshots exist"
        );
        assert!(e.remedy().contains("zfs's error"), "{}", e.remedy());
        let killed = ActionError::Exit {
            host: "h".into(),
            argv: "x".into(),
            status: None,
            stderr: String::new(),
        };
        assert!(killed.to_string().contains("by a signal"));
        let g = ActionError::GuidMismatch {
            source_node: "node-a".into(),
            target_node: "node-b".into(),
            source_guid: Some("1".into()),
            target_guid: None,
        };
        assert!(g.to_string().contains("nothing was switched"));
        assert!(g.remedy().contains("node-b"));
    }
}
