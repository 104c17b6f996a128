//! The terminal bar of a send in flight (`indicatif`): bytes, rate and elapsed time of each
//! replication stream while `apply` runs, from `apply::progress`. Only on a terminal; logs and
//! pipes get the log lines.

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Draw the bars until the returned handle is aborted (or dropped with the runtime).
pub fn bars() -> Option<tokio::task::JoinHandle<()>> {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    Some(tokio::spawn(async {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} {prefix}: {bytes} sent, {binary_bytes_per_sec}, {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
        loop {
            let now = crate::apply::progress::in_flight();
            for s in &now {
                let b = bars.entry(s.action.clone()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::no_length());
                    b.set_style(style.clone());
                    b.set_prefix(s.action.clone());
                    b
                });
                b.set_position(s.bytes);
                b.tick();
            }
            bars.retain(|id, b| {
                let live = now.iter().any(|s| s.action == *id);
                if !live {
                    b.finish_and_clear();
                }
                live
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }))
}
