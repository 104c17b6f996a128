//! One apply per cluster at a time, locked on the active node where any controller sees it.
//!
//! The lock is a symlink created with `ln -s HOLDER PATH`: creation is atomic on every
//! POSIX system and the link's target carries the holder (controller host, pid, time), read
//! back with `readlink`. It lives under `/var/run`, which a reboot clears. A lock whose holder
//! is a dead process on this same controller is stale and taken over with a warning; any
//! other lock is reported with its holder and left alone unless `--force-unlock`.

use jiff::Timestamp;

/// The lock path for a cluster on its active node.
pub fn path(cluster: &str) -> String {
    format!("/var/run/spoolkeeper.{cluster}.lock")
}

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    pub since: Timestamp,
}

impl Holder {
    pub fn me() -> Holder {
        Holder {
            host: hostname(),
            pid: std::process::id(),
            since: Timestamp::now(),
        }
    }

    /// The text stored as the symlink target: `spoolkeeper:HOST:PID:SECONDS`.
    pub fn encode(&self) -> String {
        format!(
            "spoolkeeper:{}:{}:{}",
            self.host,
            self.pid,
            self.since.as_second()
        )
    }

    pub fn decode(s: &str) -> Option<Holder> {
        let mut it = s.trim().splitn(4, ':');
        if it.next()? != "spoolkeeper" {
            return None;
        }
        let host = it.next()?.to_owned();
        let pid = it.next()?.parse().ok()?;
        let since = Timestamp::from_second(it.next()?.parse().ok()?).ok()?;
        Some(Holder { host, pid, since })
    }

    /// Held by a process of this controller that no longer runs.
    pub fn is_stale_here(&self) -> bool {
        self.host == hostname() && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} on {} since {}", self.pid, self.host, self.since)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().replace(':', "_"))
        .unwrap_or_else(|_| "unknown".into())
}

/// `ln -s HOLDER PATH` (fails when the lock exists).
pub fn acquire_argv(cluster: &str, holder: &Holder) -> Vec<String> {
    vec!["ln".into(), "-s".into(), holder.encode(), path(cluster)]
}

/// `readlink PATH`.
pub fn read_argv(cluster: &str) -> Vec<String> {
    vec!["readlink".into(), path(cluster)]
}

/// `rm -f PATH`.
pub fn release_argv(cluster: &str) -> Vec<String> {
    vec!["rm".into(), "-f".into(), path(cluster)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_round_trip_and_foreign_links_are_not_ours() {
        let h = Holder {
            host: "ctl-1".into(),
            pid: 42,
            since: Timestamp::from_second(1_800_000_000).unwrap(),
        };
        assert_eq!(Holder::decode(&h.encode()), Some(h));
        assert_eq!(Holder::decode("/etc/passwd"), None);
        assert_eq!(Holder::decode("spoolkeeper:x:notapid:1"), None);
    }

    #[test]
    fn a_dead_local_holder_is_stale_and_a_live_one_is_not() {
        let me = Holder::me();
        assert!(!me.is_stale_here());
        let dead = Holder {
            pid: u32::MAX - 1,
            ..Holder::me()
        };
        assert!(dead.is_stale_here());
        let remote = Holder {
            host: "elsewhere".into(),
            pid: u32::MAX - 1,
            ..Holder::me()
        };
        assert!(!remote.is_stale_here());
    }
}
