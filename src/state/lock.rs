//! This controller as the cluster lock knows it (host name, boot id, live processes), read
//! without `/proc` where the system has none. The lock itself (format, staleness, commands) is
//! `crate::adapters::lock`.

use jiff::Timestamp;

pub use crate::adapters::lock::*;

impl Holder {
    /// This process, with a lease from `now`.
    pub fn me(now: Timestamp) -> Holder {
        // whole seconds: what the link records, so that reading it back names the same holder
        let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
        let l = local();
        Holder {
            host: l.host,
            boot: l.boot,
            pid: std::process::id(),
            since: now,
            expires: now.checked_add(LEASE).ok(),
        }
    }
}

/// This controller: its host name and boot id, read without `/proc` where the system has
/// none (`hostname`, `sysctl kern.boottime`). Colons are replaced (they separate fields).
pub fn local() -> Local {
    let clean = |s: String| s.trim().replace([':', '\n'], "_");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| run_text("hostname", &[]))
        .map(clean)
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .or_else(|| run_text("sysctl", &["-n", "kern.boottime"]))
        .map(|b| clean(b).replace(' ', "_"))
        .unwrap_or_default();
    Local { host, boot }
}

fn run_text(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a process of this controller runs (`kill -0`; works without `/proc`). A pid that
/// runs but is not ours to signal still runs.
pub fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    // not a pid (`kill -0 0` or a negative number would name process groups)
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    match std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => true,
        Ok(o) => String::from_utf8_lossy(&o.stderr)
            .to_ascii_lowercase()
            .contains("not permitted"),
        // cannot tell: assume it runs (never take a live lock)
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_controller_names_itself_and_its_processes() {
        let l = local();
        assert!(!l.host.is_empty() && !l.host.contains(':'));
        assert!(alive(std::process::id()));
        // a child that has exited (and been reaped) no longer runs
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!alive(pid));
        assert!(!alive(u32::MAX - 1) && !alive(0));
        let me = Holder::me(Timestamp::now());
        assert!(me.expires.is_some());
        // what the link records names the same holder (the lock is released by it)
        assert!(Holder::decode(&me.encode()).is_some_and(|h| h.same(&me)));
        assert_eq!(me.stale(&l, Timestamp::now(), alive), None);
    }
}
