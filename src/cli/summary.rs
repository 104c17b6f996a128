//! A plan-free, human summary of a spec: what the operator declared, at a glance.

use std::fmt::Write;

use crate::spec::{Runtime, Spec};

/// A few indented lines describing the cluster.
pub fn text(s: &Spec) -> String {
    let c = &s.spec;
    let mut o = String::new();
    let _ = writeln!(o, "  cluster {}: active {}", s.name, c.active);
    for (name, n) in &c.nodes {
        let role = if *name == c.active {
            "active"
        } else if c.fenced.contains(name) {
            "passive, fenced"
        } else {
            "passive"
        };
        let _ = writeln!(
            o,
            "  node {name} ({role}): {}@{}:{} pool {}",
            n.ssh.user, n.ssh.host, n.ssh.port, n.pool
        );
    }
    for (name, i) in &c.instances {
        let rt = match &i.runtime {
            Runtime::Ezjail { jail } => format!("ezjail {jail}"),
            Runtime::Jail { jail } => format!("jail {jail}"),
            Runtime::Exec { .. } => "exec".to_owned(),
        };
        let _ = writeln!(
            o,
            "  instance {name}: dataset {} ({rt}), domains {}",
            i.dataset,
            if i.domains.is_empty() {
                "-".to_owned()
            } else {
                i.domains.join(", ")
            }
        );
    }
    let k = c.snapshots.keep;
    let _ = writeln!(
        o,
        "  snapshots {}_* every {}, keep {}h/{}d/{}w/{}m/{}y",
        c.snapshots.prefix, c.snapshots.every, k.hourly, k.daily, k.weekly, k.monthly, k.yearly
    );
    let _ = writeln!(
        o,
        "  replication every {} ({:?}), rpo {}",
        c.replication.every, c.replication.transport, c.replication.rpo
    );
    match &c.archive {
        Some(a) => {
            let _ = writeln!(
                o,
                "  archive {} as {} (margin {})",
                a.ssh.host, a.address, a.margin
            );
        }
        None => {
            let _ = writeln!(
                o,
                "  archive: none (mail since the last replication is NOT protected)"
            );
        }
    }
    let _ = writeln!(
        o,
        "  fencing: {}",
        match &c.fencing {
            Some(f) => f.command.join(" "),
            None if c.fenced.is_empty() => "none".to_owned(),
            None => format!(
                "manual ({})",
                c.fenced
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    );
    o
}
