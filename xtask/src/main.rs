//! Project automation: `cargo xtask ci`, `cargo xtask demo`, `cargo xtask lab …`,
//! `cargo xtask bench …`. Plain std; every step prints what it runs.

mod bench;
mod bench_observe;
mod ci;
mod demo;
mod util;

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <command>\n\
         \n\
         commands:\n\
         \x20 ci      every check and test (fmt, clippy, unit, integration, lab)\n\
         \x20 demo    the main job, shown on the lab\n"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci::main(&args[1..]),
        Some("demo") => demo::main(&args[1..]),
        Some("bench") => bench::main(&args[1..]),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
