//! `sk-sim --seeds N --steps M [--first S] [--budget SECS] [--seed S -v]`: run seeds, print
//! the figures, and for a failing seed the command that replays it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(name = "sk-sim", about = "spoolkeeper's deterministic simulator")]
struct Args {
    /// How many seeds (from --first).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Replay exactly this seed (prints its trace with -v).
    #[arg(long)]
    seed: Option<u64>,
    /// Steps per seed.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Stop starting new seeds after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0)]
    budget: u64,
    /// Keep going after a failure (count them).
    #[arg(long)]
    keep_going: bool,
    /// Print every event.
    #[arg(short, long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let started = Instant::now();
    let seeds: Vec<u64> = match a.seed {
        Some(s) => vec![s],
        None => (a.first..a.first.saturating_add(a.seeds)).collect(),
    };
    let mut total = sk_sim::Stats::default();
    let mut failures = Vec::new();
    for seed in seeds {
        if a.budget > 0 && started.elapsed() > Duration::from_secs(a.budget) {
            eprintln!("budget of {}s reached", a.budget);
            break;
        }
        match sk_sim::run_seed(seed, a.steps, a.verbose) {
            Ok(s) => total.add(&s),
            Err(f) => {
                total.add(&f.stats);
                eprintln!("\nseed {} FAILED at step {}: {}", f.seed, f.step, f.message);
                eprintln!("  scenario: {}", f.scenario);
                if !a.verbose {
                    for l in f.trace.iter().rev().take(40).rev() {
                        eprintln!("  {l}");
                    }
                }
                eprintln!(
                    "  replay: cargo xtask simulate --seed {} --steps {} -v",
                    f.seed, a.steps
                );
                failures.push(f.seed);
                if !a.keep_going {
                    break;
                }
            }
        }
    }
    let faults: u64 = total.faults.values().sum();
    println!(
        "simulate: {} seed(s), {} steps, {} applies ({} blocked), {} actions ({} failed), {} messages accepted, {} faults injected, {} invariant checks, {:.1}s",
        total.seeds,
        total.steps,
        total.applies,
        total.blocked_applies,
        total.actions,
        total.actions_failed,
        total.accepted,
        faults,
        total.checks,
        started.elapsed().as_secs_f64()
    );
    for (k, v) in &total.faults {
        println!("  {k}: {v}");
    }
    if failures.is_empty() {
        println!("no guarantee broken");
        ExitCode::SUCCESS
    } else {
        println!("FAILED seeds: {failures:?}");
        ExitCode::FAILURE
    }
}
