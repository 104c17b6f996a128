//! `cargo xtask`: developer tasks of the spoolkeeper workspace.
//!
//! `lab` drives the three-host lab (see `lab` module and docs/CONTRACT.md "The lab").

mod bench;
mod bench_observe;
mod ci;
mod demo;
mod util;

use xtask::lab;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "xtask", about = "spoolkeeper developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// The three-host lab (node-a, node-b, smtp-arch) with real ZFS, Postfix, Dovecot and SSH.
    #[command(subcommand)]
    Lab(LabCmd),
    /// The main job, shown on the lab: validate, plan, apply, mail, status.
    Demo {
        /// Leave the lab up afterwards (to explore it).
        #[arg(long)]
        keep: bool,
    },
    /// Measurements against peers: `bench observe|noop|replication|prune|arch-restore|failover|all`.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The deterministic simulator: the real planner and executor walk against a model
    /// cluster, faults and interleavings chosen by seed (`--seeds N --steps M`, `--seed S -v`
    /// replays one).
    Simulate {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Every check and test: fmt, clippy, unit and integration tests, lab tests (root).
    Ci {
        /// Leave out the lab tests (also: SK_SKIP_LAB=1).
        #[arg(long)]
        no_lab: bool,
        /// Run the long lab sweeps whole (every kill boundary), not CI's fixed sample (also:
        /// SK_LAB_FULL=1).
        #[arg(long)]
        full: bool,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Install missing packages, build and start the lab (idempotent).
    Up,
    /// Stop and remove all of the lab (idempotent).
    Down,
    /// Hosts, addresses, daemons, pools.
    Status,
    /// Run a command inside a host: `exec node-a -- zfs list`.
    Exec {
        host: lab::Host,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Take the host's network link down.
    Cut { host: lab::Host },
    /// Bring the host's network link back up.
    Heal { host: lab::Host },
    /// Power loss: every process of the host killed at once, nothing flushed or exported.
    Kill { host: lab::Host },
    /// Power back: daemons restarted, pool imported (instances are not started).
    Boot { host: lab::Host },
    /// SMTP to the instance's service address as an upstream MTA; prints accepted Message-IDs.
    Send {
        #[arg(long, value_enum)]
        instance: lab::Instance,
        #[arg(long)]
        to: String,
        #[arg(long, default_value = "sender@upstream.lab")]
        from: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Messages per second (default: as fast as accepted).
        #[arg(long)]
        rate: Option<f64>,
        /// How long one message is retried (e.g. 120s, 5m).
        #[arg(long, default_value = "120s", value_parser = lab::parse_duration)]
        deadline: std::time::Duration,
    },
    /// IMAP login at the instance's service address; prints every message's Message-ID.
    Imap {
        #[arg(long, value_enum)]
        instance: lab::Instance,
        #[arg(long)]
        user: String,
        /// List the Message-IDs of all folders (the only mode so far).
        #[arg(long, required = true)]
        list: bool,
    },
}

fn run_lab(cmd: LabCmd) -> lab::Result<ExitCode> {
    match cmd {
        LabCmd::Up => lab::up()?,
        LabCmd::Down => lab::down()?,
        LabCmd::Status => lab::status()?,
        LabCmd::Exec { host, command } => {
            let code = lab::exec(host, &command)?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        LabCmd::Cut { host } => lab::cut(host)?,
        LabCmd::Heal { host } => lab::heal(host)?,
        LabCmd::Kill { host } => lab::kill(host)?,
        LabCmd::Boot { host } => lab::boot(host)?,
        LabCmd::Send {
            instance,
            to,
            from,
            count,
            rate,
            deadline,
        } => {
            let opts = lab::smtp::SendOptions {
                instance,
                to,
                from,
                count,
                rate,
                deadline,
            };
            lab::send(&opts, &mut std::io::stdout().lock())?;
        }
        LabCmd::Imap {
            instance,
            user,
            list: _,
        } => {
            let ids = lab::imap_message_ids(instance, &user)?;
            let mut out = std::io::stdout().lock();
            for id in ids {
                use std::io::Write;
                writeln!(out, "{id}").map_err(|e| lab::Error::new(format!("stdout: {e}")))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask simulate ARGS`: the simulator built in release mode (seeds per second matter).
pub fn simulate(args: &[String]) -> Result<(), String> {
    let mut a: Vec<&str> = vec!["run", "--quiet", "--release", "--package", "sk-sim", "--"];
    a.extend(args.iter().map(String::as_str));
    util::run("simulate", &util::cargo(), &a)
}

fn main() -> ExitCode {
    // the benches' launcher (xtask::rusage): a plain loop, no task
    if std::env::args().nth(1).as_deref() == Some(xtask::rusage::LAUNCHER_ARG) {
        return match xtask::rusage::serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask launcher: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Lab(cmd) => run_lab(cmd),
        Task::Demo { keep } => demo::main(keep)
            .map(|()| ExitCode::SUCCESS)
            .map_err(lab::Error::new),
        Task::Bench { args } => bench::main(&args)
            .map(|()| ExitCode::SUCCESS)
            .map_err(lab::Error::new),
        Task::Simulate { args } => simulate(&args)
            .map(|()| ExitCode::SUCCESS)
            .map_err(lab::Error::new),
        Task::Ci { no_lab, full } => ci::main(no_lab, full)
            .map(|()| ExitCode::SUCCESS)
            .map_err(lab::Error::new),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
