//! The cluster lock's format, its staleness rules and the commands that take, read, renew
//! and release it (pure; the controller's identity and the I/O are `crate::state::lock` and
//! `crate::apply::ClusterLock`).
//!
//! One apply per cluster at a time, whatever spec revision each controller holds.
//!
//! The lock is taken on every reachable host of the cluster (every node, then the archive
//! host), in that fixed order, all or nothing: two controllers that can both see any one host
//! are serialised there, even when their specs name different active nodes (a switchover
//! under review in one, the old revision in the other).
//!
//! On each host the lock is a symlink created with `ln -s HOLDER PATH`: creation is atomic on
//! every POSIX system (it fails when the link exists) and the link's target carries the holder
//! (controller host, boot id, pid, start, lease expiry), read back with `readlink`. It lives
//! under `/var/run`, which a reboot clears.
//!
//! A lock is stale when its holder provably cannot hold it any more: a process of this
//! controller (same host, same boot) that no longer runs (`kill -0`, no `/proc` needed); a
//! holder of this host from an earlier boot; or a lease expired more than
//! [`LEASE_MARGIN`] ago (the holder renews it every [`RENEW_EVERY`] while it runs). Taking a
//! stale lock over happens under a takeover token (`PATH.takeover`, created exclusively), so
//! that of many concurrent takers exactly one replaces it; renewals take the same token, so a
//! renewal never overwrites a takeover. Anything else is reported with its holder and left
//! alone unless `--force-unlock`.

use std::time::Duration;

use jiff::Timestamp;

/// How long a lock is valid without renewal.
pub const LEASE: Duration = Duration::from_secs(300);
/// How often a running holder renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(60);
/// How long past its expiry a lease is still respected (clock differences between
/// controllers).
pub const LEASE_MARGIN: Duration = Duration::from_secs(120);

/// The lock path for a cluster on a host.
pub fn path(cluster: &str) -> String {
    format!("/var/run/spoolkeeper.{cluster}.lock")
}

/// The takeover token beside the lock.
pub fn token_path(cluster: &str) -> String {
    format!("{}.takeover", path(cluster))
}

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    /// The holder's boot (a process of an earlier boot cannot run any more); empty when the
    /// holder could not tell (and in locks of older versions).
    pub boot: String,
    pub pid: u32,
    pub since: Timestamp,
    /// The lease's end; `None` in locks of older versions (no lease: only the dead-process
    /// rule applies).
    pub expires: Option<Timestamp>,
}

/// This controller, as the staleness rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub host: String,
    pub boot: String,
}

/// Why a lock may be taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// A process of this controller, in this boot, that no longer runs.
    DeadProcess,
    /// A holder of this controller from an earlier boot.
    EarlierBoot,
    /// The holder did not renew its lease.
    LeaseExpired,
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stale::DeadProcess => "its process no longer runs",
            Stale::EarlierBoot => "it was taken before this controller rebooted",
            Stale::LeaseExpired => "its lease expired without renewal",
        })
    }
}

impl Holder {
    /// The same holder with its lease renewed from `now`.
    pub fn renewed(&self, now: Timestamp) -> Holder {
        let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
        Holder {
            expires: now.checked_add(LEASE).ok(),
            ..self.clone()
        }
    }

    /// Whether `other` is this holder (any lease).
    pub fn same(&self, other: &Holder) -> bool {
        self.host == other.host
            && self.boot == other.boot
            && self.pid == other.pid
            && self.since == other.since
    }

    /// The text stored as the symlink target:
    /// `spoolkeeper2:HOST:BOOT:PID:SINCE:EXPIRES` (seconds since the epoch).
    pub fn encode(&self) -> String {
        format!(
            "spoolkeeper2:{}:{}:{}:{}:{}",
            self.host,
            self.boot,
            self.pid,
            self.since.as_second(),
            self.expires.map_or(0, |e| e.as_second())
        )
    }

    /// Reads both this format and the older `spoolkeeper:HOST:PID:SECONDS`.
    pub fn decode(s: &str) -> Option<Holder> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("spoolkeeper2:") {
            let f: Vec<&str> = rest.split(':').collect();
            let [host, boot, pid, since, expires] = f.as_slice() else {
                return None;
            };
            let expires: i64 = expires.parse().ok()?;
            return Some(Holder {
                host: (*host).to_owned(),
                boot: (*boot).to_owned(),
                pid: pid.parse().ok()?,
                since: Timestamp::from_second(since.parse().ok()?).ok()?,
                expires: if expires == 0 {
                    None
                } else {
                    Some(Timestamp::from_second(expires).ok()?)
                },
            });
        }
        let mut it = s.splitn(4, ':');
        if it.next()? != "spoolkeeper" {
            return None;
        }
        let host = it.next()?.to_owned();
        let pid = it.next()?.parse().ok()?;
        let since = Timestamp::from_second(it.next()?.parse().ok()?).ok()?;
        Some(Holder {
            host,
            boot: String::new(),
            pid,
            since,
            expires: None,
        })
    }

    /// Whether the lock may be taken over, and why. Pure: `alive` says whether a pid of this
    /// controller runs.
    pub fn stale(&self, me: &Local, now: Timestamp, alive: impl Fn(u32) -> bool) -> Option<Stale> {
        if self.host == me.host && !me.host.is_empty() && self.host != "unknown" {
            if !self.boot.is_empty() && !me.boot.is_empty() && self.boot != me.boot {
                return Some(Stale::EarlierBoot);
            }
            if (self.boot == me.boot || self.boot.is_empty()) && !alive(self.pid) {
                return Some(Stale::DeadProcess);
            }
        }
        let expired = self
            .expires
            .and_then(|e| e.checked_add(LEASE_MARGIN).ok())
            .is_some_and(|e| e < now);
        expired.then_some(Stale::LeaseExpired)
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} on {} since {}", self.pid, self.host, self.since)?;
        if let Some(e) = self.expires {
            write!(f, ", lease until {e}")?;
        }
        Ok(())
    }
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

/// `ln -s HOLDER PATH.takeover` (fails when another taker holds it).
pub fn token_acquire_argv(cluster: &str, holder: &Holder) -> Vec<String> {
    vec![
        "ln".into(),
        "-s".into(),
        holder.encode(),
        token_path(cluster),
    ]
}

/// `readlink PATH.takeover`.
pub fn token_read_argv(cluster: &str) -> Vec<String> {
    vec!["readlink".into(), token_path(cluster)]
}

/// `rm -f PATH.takeover`.
pub fn token_release_argv(cluster: &str) -> Vec<String> {
    vec!["rm".into(), "-f".into(), token_path(cluster)]
}

/// Replace the lock with `holder` in one rename (`ln -s` beside it, then `mv -f`), for the
/// holder of the takeover token only.
pub fn replace_argv(cluster: &str, holder: &Holder) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        "ln -s \"$1\" \"$2.new\" && mv -f \"$2.new\" \"$2\"".into(),
        "sh".into(),
        holder.encode(),
        path(cluster),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn holder(host: &str, boot: &str, pid: u32, since: i64) -> Holder {
        Holder {
            host: host.into(),
            boot: boot.into(),
            pid,
            since: at(since),
            expires: Some(at(since + LEASE.as_secs() as i64)),
        }
    }

    #[test]
    fn holders_round_trip_and_foreign_links_are_not_ours() {
        let h = holder("ctl-1", "b0-ot", 42, 0);
        assert_eq!(Holder::decode(&h.encode()), Some(h));
        assert_eq!(Holder::decode("/etc/passwd"), None);
        assert_eq!(Holder::decode("spoolkeeper:x:notapid:1"), None);
        assert_eq!(Holder::decode("spoolkeeper2:a:b:1:2"), None);
        // the older format still reads (no boot, no lease)
        let old = Holder::decode("spoolkeeper:ctl-1:42:1800000000").unwrap();
        assert_eq!((old.pid, old.expires, old.boot.as_str()), (42, None, ""));
    }

    #[test]
    fn staleness_needs_proof_not_a_missing_proc() {
        let me = Local {
            host: "ctl-1".into(),
            boot: "boot-2".into(),
        };
        let now = at(10);
        let running = |_| true;
        let dead = |_| false;
        // a live holder of this controller, in its lease: never stale
        assert_eq!(
            holder("ctl-1", "boot-2", 7, 0).stale(&me, now, running),
            None
        );
        // its process gone: stale
        assert_eq!(
            holder("ctl-1", "boot-2", 7, 0).stale(&me, now, dead),
            Some(Stale::DeadProcess)
        );
        // taken before this controller rebooted: stale whatever the pid
        assert_eq!(
            holder("ctl-1", "boot-1", 7, 0).stale(&me, now, running),
            Some(Stale::EarlierBoot)
        );
        // another controller: its pid means nothing here; only its lease counts
        let other = holder("ctl-2", "boot-9", 7, 0);
        assert_eq!(other.stale(&me, now, dead), None);
        let margin = LEASE_MARGIN.as_secs() as i64;
        let end = LEASE.as_secs() as i64;
        assert_eq!(other.stale(&me, at(end + margin), dead), None);
        assert_eq!(
            other.stale(&me, at(end + margin + 1), dead),
            Some(Stale::LeaseExpired)
        );
        // a holder that cannot name its host (`unknown`, as on a FreeBSD without /proc
        // before): never judged by the local process table
        let anon = holder("unknown", "", 7, 0);
        let me_anon = Local {
            host: "unknown".into(),
            boot: String::new(),
        };
        assert_eq!(anon.stale(&me_anon, now, dead), None);
        // an old-format lock without a lease: only the dead-process rule
        let old = Holder {
            expires: None,
            boot: String::new(),
            ..holder("ctl-1", "", 7, 0)
        };
        assert_eq!(old.stale(&me, at(1_000_000), running), None);
        assert_eq!(old.stale(&me, now, dead), Some(Stale::DeadProcess));
    }
}
