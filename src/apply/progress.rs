//! Sends in flight: bytes so far and rate, for the terminal bar of `apply` and the
//! controller's `send_progress_bytes` metric. The executor's replication actions report here
//! as the stream passes (the direct pipeline's `dd status=progress`, the relay's own copy).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// One send in flight.
#[derive(Debug, Clone)]
pub struct Send {
    pub action: String,
    pub bytes: u64,
    pub started: Instant,
}

impl Send {
    /// Bytes per second since it started.
    pub fn rate(&self) -> f64 {
        let s = self.started.elapsed().as_secs_f64();
        if s > 0.0 { self.bytes as f64 / s } else { 0.0 }
    }
}

static SENDS: Mutex<BTreeMap<String, Send>> = Mutex::new(BTreeMap::new());

fn sends() -> std::sync::MutexGuard<'static, BTreeMap<String, Send>> {
    SENDS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A send starts (or restarts).
pub fn begin(action: &str) {
    sends().insert(
        action.to_owned(),
        Send {
            action: action.to_owned(),
            bytes: 0,
            started: Instant::now(),
        },
    );
}

/// The stream reached `bytes`.
pub fn update(action: &str, bytes: u64) {
    if let Some(s) = sends().get_mut(action) {
        s.bytes = s.bytes.max(bytes);
    }
}

/// The send ended (done or failed).
pub fn end(action: &str) {
    sends().remove(action);
}

/// Every send in flight, by action id.
pub fn in_flight() -> Vec<Send> {
    sends().values().cloned().collect()
}

/// Removes the send when dropped: a send that errors or is abandoned never stays listed.
pub struct Guard(pub String);

impl Drop for Guard {
    fn drop(&mut self) {
        end(&self.0);
    }
}
