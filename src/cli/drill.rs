//! `spoolkeeper drill`: rehearse a failover on a clone of the passive's newest replicated
//! snapshot, verify it over IMAP, tear it down (`crate::apply::drill`).

use std::path::{Path, PathBuf};

use crate::apply::drill;
use crate::decide::drill::Verdict;
use crate::state::journal::{Journal, Phase};

/// Output formats of the report.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrillFormat {
    Text,
    Json,
    Markdown,
}

/// Exit 0 every drill passed, 2 one failed, 1 one could not run (nothing was changed).
pub fn main(
    file: &Path,
    instance: Option<String>,
    node: Option<String>,
    format: DrillFormat,
    state_dir: PathBuf,
) -> u8 {
    let specs = match super::load::specs(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("invalid spec: nothing was contacted");
            return 1;
        }
    };
    let mut todo = Vec::new();
    for s in &specs {
        match drill::instances(s, instance.as_deref()) {
            Ok(v) => todo.extend(v.into_iter().map(|(i, d)| (s, i, d))),
            Err(e) if specs.len() == 1 || instance.is_none() => {
                eprintln!("drill: {e}");
                return 1;
            }
            Err(_) => {}
        }
    }
    if todo.is_empty() {
        eprintln!(
            "drill: no cluster in {} has instance `{}` with a drill block",
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
    for (spec, inst, d) in todo {
        let res = rt.block_on(drill::run(
            spec,
            inst,
            d,
            node.as_deref(),
            &state_dir,
            super::restore::interrupted(),
        ));
        match res {
            Ok(r) => {
                let pass = r.verdict == Verdict::Pass;
                let detail = serde_json::to_string(&r).unwrap_or_default();
                match Journal::open(&state_dir, spec.name.as_str()) {
                    Ok(mut j) => {
                        let phase = if pass { Phase::Done } else { Phase::Failed };
                        if let Err(e) = j.record(&format!("drill:{inst}"), phase, Some(detail)) {
                            eprintln!("warning: cannot journal the drill: {e}");
                        }
                    }
                    Err(e) => eprintln!("warning: cannot open the journal: {e}"),
                }
                if !pass {
                    code = code.max(2);
                }
                if !r.cleanup_errors.is_empty() {
                    code = code.max(1);
                }
                match format {
                    DrillFormat::Text => print!("{}", r.text()),
                    DrillFormat::Markdown => print!("{}", r.markdown()),
                    DrillFormat::Json => {}
                }
                reports.push(r);
            }
            Err(e) => {
                eprintln!("drill {}/{inst}: {e}", spec.name);
                code = code.max(1);
            }
        }
    }
    if format == DrillFormat::Json {
        let v = if reports.len() == 1 {
            serde_json::to_string_pretty(&reports[0])
        } else {
            serde_json::to_string_pretty(&reports)
        };
        match v {
            Ok(t) => println!("{t}"),
            Err(e) => {
                eprintln!("cannot render the report: {e}");
                code = code.max(1);
            }
        }
    }
    code
}
