//! spoolkeeper's deterministic simulator (`cargo xtask simulate`).
//!
//! The real planner (`spoolkeeper::plan::plan`) and the real executor walk
//! (`spoolkeeper::apply::walk::Walk`) run against a model cluster ([`world`]); one seed
//! chooses the spec ([`scenario`]), every interleaving the DAG allows, every fault and every
//! operator edit ([`sim`]). The guarantees are checked after every step ([`check`], and the
//! per-action checks of [`exec`]); a failing run prints its seed and replays exactly from it.

pub mod arch;
pub mod check;
pub mod exec;
pub mod scenario;
pub mod sim;
pub mod world;

pub use sim::{Failure, Sim, Stats};

/// Run one seed for `steps` steps.
pub fn run_seed(seed: u64, steps: usize, verbose: bool) -> Result<Stats, Box<Failure>> {
    match Sim::new(seed, verbose) {
        Ok(s) => s.run(steps),
        Err(e) => Err(Box::new(Failure {
            seed,
            step: 0,
            message: e,
            scenario: String::new(),
            trace: Vec::new(),
            stats: Stats::default(),
        })),
    }
}
