//! `spoolkeeper arch-restore`: replay archived mail newer than the watermark into the active
//! node, exactly once, under the cluster lock.

use std::path::{Path, PathBuf};

use crate::apply::replay::run_locked;
use crate::spec::Spec;

/// `spoolkeeper arch-restore -f FILE [--instance I] [--dry-run] [--output json]
/// [--state-dir D]`: exit 0 when every message is replayed or skipped for a reason, 1 on any
/// error (bad spec, host unreachable, a message not replayed).
pub fn main(
    file: &Path,
    instance: Option<String>,
    dry_run: bool,
    json: bool,
    state_dir: Option<PathBuf>,
) -> u8 {
    let specs = match super::load::specs(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("invalid spec: nothing was contacted");
            return 1;
        }
    };
    let state_dir = state_dir.unwrap_or_else(crate::state::journal::default_state_dir);
    let selected: Vec<&Spec> = specs
        .iter()
        .filter(|s| {
            instance
                .as_deref()
                .is_none_or(|i| s.spec.instances.keys().any(|n| n.as_str() == i))
        })
        .collect();
    if selected.is_empty() {
        eprintln!(
            "no cluster in {} has instance `{}`",
            file.display(),
            instance.as_deref().unwrap_or("")
        );
        return 1;
    }
    let Some(rt) = super::runtime() else {
        return 1;
    };
    let mut code = 0u8;
    let mut reports = Vec::new();
    for s in selected {
        let res = rt.block_on(run_locked(s, instance.as_deref(), dry_run, &state_dir));
        match res {
            Ok(r) => {
                if !r.ok() {
                    code = 1;
                }
                if json {
                    reports.push(r);
                } else {
                    print!("{}", r.text());
                }
            }
            Err(e) => {
                eprintln!("arch-restore {}: {e}", s.name);
                code = 1;
            }
        }
    }
    if json {
        let v = if reports.len() == 1 {
            serde_json::to_value(&reports[0])
        } else {
            serde_json::to_value(&reports)
        };
        match v.and_then(|v| serde_json::to_string_pretty(&v)) {
            Ok(t) => println!("{t}"),
            Err(e) => {
                eprintln!("cannot render the report: {e}");
                code = 1;
            }
        }
    }
    code
}
