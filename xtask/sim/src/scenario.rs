//! Random cluster specs: schedules from seconds to days, margins, transports, fencing or
//! attestations, one to three nodes with their own pool names, one or two instances.
//!
//! A spec is generated as YAML text and loaded by the real loader, so every spec the
//! simulator runs is one `spoolkeeper validate` accepts.

use std::path::Path;

use rand::Rng;
use spoolkeeper::spec::{self, Spec};

/// What one scenario's spec is made of; `active` and `fenced` change as the operator edits.
#[derive(Debug, Clone)]
pub struct Params {
    /// (node name, pool name).
    pub nodes: Vec<(String, String)>,
    /// (instance name, dataset path, domain).
    pub instances: Vec<(String, String, String)>,
    pub prefix: String,
    pub snap_every: u64,
    pub repl_every: u64,
    pub rpo: u64,
    pub margin: u64,
    pub relay: bool,
    pub fencing: bool,
    pub keep: String,
}

/// `90` → `90s`, `600` → `10m`, `86400` → `1d`: the largest unit that divides it.
pub fn duration(secs: u64) -> String {
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= n && secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

impl Params {
    pub fn random(rng: &mut impl Rng) -> Params {
        let n_nodes = if rng.random_bool(0.8) { 2 } else { 3 };
        let pools = ["zdata", "tank", "zspool"];
        let nodes = (0..n_nodes)
            .map(|i| {
                let pool = if rng.random_bool(0.7) {
                    "zdata"
                } else {
                    pools[rng.random_range(0..pools.len())]
                };
                (
                    format!("node-{}", (b'a' + i as u8) as char),
                    pool.to_string(),
                )
            })
            .collect();
        let mut instances = vec![(
            "students".to_string(),
            "imap/students".to_string(),
            "students.example.org".to_string(),
        )];
        if rng.random_bool(0.4) {
            instances.push((
                "staff".into(),
                "imap/staff".into(),
                "staff.example.org".into(),
            ));
        }
        // Schedules from seconds to days; replication never more often than snapshots is not
        // required by the spec, so both orders occur.
        let snap_choices = [30, 60, 300, 3_600, 86_400];
        let snap_every = snap_choices[rng.random_range(0..snap_choices.len())];
        let repl_every = match rng.random_range(0..4) {
            0 => snap_every,
            1 => snap_every * 2,
            2 => (snap_every * 24).min(7 * 86_400),
            _ => snap_choices[rng.random_range(0..snap_choices.len())],
        };
        // the spec requires rpo >= both schedules (the random draw is kept: seeds replay)
        let rpo = (repl_every * if rng.random_bool(0.5) { 1 } else { 3 }).max(snap_every);
        let margins = [10, 60, 600];
        let margin = margins[rng.random_range(0..margins.len())];
        let keeps = [
            "{ hourly: 48, daily: 30, weekly: 8, monthly: 12, yearly: 1 }",
            "{ hourly: 2 }",
            "{ daily: 3 }",
            "{ hourly: 24, daily: 7 }",
        ];
        Params {
            nodes,
            instances,
            prefix: if rng.random_bool(0.8) { "sk" } else { "auto" }.into(),
            snap_every,
            repl_every,
            rpo,
            margin,
            relay: rng.random_bool(0.3),
            fencing: rng.random_bool(0.6),
            keep: keeps[rng.random_range(0..keeps.len())].into(),
        }
    }

    /// The spec text with this active node and these attested nodes.
    pub fn yaml(&self, active: &str, fenced: &[String]) -> String {
        let mut y = String::new();
        y.push_str("apiVersion: spoolkeeper/v1\nkind: SpoolCluster\nmetadata: { name: sim }\n");
        y.push_str(&format!("spec:\n  active: {active}\n  nodes:\n"));
        for (i, (n, pool)) in self.nodes.iter().enumerate() {
            y.push_str(&format!(
                "    {n}: {{ ssh: {{ host: 10.99.0.{} }}, pool: {pool} }}\n",
                i + 11
            ));
        }
        y.push_str("  instances:\n");
        for (name, ds, domain) in &self.instances {
            y.push_str(&format!(
                "    {name}:\n      dataset: {ds}\n      runtime: {{ kind: exec, start: [svc, start, \"{{instance}}\"], stop: [svc, stop, \"{{instance}}\"], status: [svc, status, \"{{instance}}\"] }}\n      domains: [{domain}]\n"
            ));
        }
        y.push_str(&format!(
            "  snapshots: {{ prefix: {}, every: {}, keep: {} }}\n",
            self.prefix,
            duration(self.snap_every),
            self.keep
        ));
        y.push_str(&format!(
            "  replication: {{ every: {}, rpo: {}, transport: {} }}\n",
            duration(self.repl_every),
            duration(self.rpo),
            if self.relay { "relay" } else { "direct" }
        ));
        y.push_str(&format!(
            "  archive: {{ ssh: {{ host: 10.99.0.10 }}, address: \"{{local}}={{domain}}@archive.invalid\", margin: {} }}\n",
            duration(self.margin)
        ));
        if self.fencing {
            y.push_str("  fencing: { command: [fence, \"{node}\"] }\n");
        }
        y.push_str(&format!("  fenced: [{}]\n", fenced.join(", ")));
        y
    }

    /// The loaded spec (the real loader and validator).
    pub fn spec(&self, active: &str, fenced: &[String]) -> Result<Spec, String> {
        let text = self.yaml(active, fenced);
        spec::parse(Path::new("sim.yaml"), text.as_bytes())
            .map_err(|e| format!("the generated spec is invalid (a simulator bug):\n{e}\n{text}"))
    }

    pub fn describe(&self) -> String {
        format!(
            "{} node(s) [{}], {} instance(s), snapshots every {}, replication every {}, margin {}, {}, {}",
            self.nodes.len(),
            self.nodes
                .iter()
                .map(|(n, p)| format!("{n}:{p}"))
                .collect::<Vec<_>>()
                .join(" "),
            self.instances.len(),
            duration(self.snap_every),
            duration(self.repl_every),
            duration(self.margin),
            if self.relay { "relay" } else { "direct" },
            if self.fencing {
                "fencing command"
            } else {
                "no fencing command"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_generated_spec_is_valid() {
        for seed in 0..500 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let p = Params::random(&mut rng);
            let active = p.nodes[0].0.clone();
            p.spec(&active, &[]).unwrap();
            p.spec(&p.nodes[1].0.clone(), &[active]).unwrap();
        }
    }

    #[test]
    fn durations_use_the_largest_exact_unit() {
        assert_eq!(duration(30), "30s");
        assert_eq!(duration(90), "90s");
        assert_eq!(duration(600), "10m");
        assert_eq!(duration(86_400), "1d");
        assert_eq!(duration(7 * 86_400), "7d");
    }
}
