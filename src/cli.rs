//! The command line of CONTRACT.md. Each command returns its exit code; nothing here
//! decides anything the core does not.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::spec;

#[derive(Parser, Debug)]
#[command(
    name = "spoolkeeper",
    version,
    about = "Declarative disaster recovery for ZFS-backed IMAP spools",
    long_about = "spoolkeeper keeps a pair of ZFS-backed IMAP spool servers and their archive host \
                  converged on a YAML spec: snapshots, replication, archive, failover."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Global {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More logs (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors in the logs.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// How a command prints state.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Parse and check specs; never touches a host. Exit 0 valid, 1 invalid.
    Validate {
        /// A spec file, or a directory of *.yaml spec files (one cluster per file).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print format of the summary.
        #[arg(long, value_enum)]
        output: Option<Output>,
    },
    /// Print the JSON Schema (draft-07) of the spec, for editors.
    Schema,
    /// Connect to every host and print the observed state. Exit 0 (unreachable hosts are
    /// reported, not fatal), 1 on a bad spec.
    Observe {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long, value_enum)]
        output: Option<Output>,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.global);
    let code = match cli.command {
        Command::Validate { file, output } => validate(&file, output),
        Command::Schema => schema(),
        Command::Observe { file, output } => observe(&file, default_output(output)),
    };
    ExitCode::from(code)
}

fn init_tracing(g: &Global) {
    use tracing_subscriber::EnvFilter;
    let default = if g.quiet {
        "error"
    } else {
        match g.verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match g.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Text unless asked otherwise, on a terminal or not: scripts ask for JSON explicitly.
fn default_output(o: Option<Output>) -> Output {
    o.unwrap_or(Output::Text)
}

fn validate(file: &std::path::Path, output: Option<Output>) -> u8 {
    let output = default_output(output);
    match spec::load(file) {
        Ok(specs) => {
            let mut out = std::io::stdout().lock();
            match output {
                Output::Text => {
                    for s in &specs {
                        let _ = writeln!(out, "{}: valid", s.file.display());
                        let _ = write!(out, "{}", crate::summary::text(s));
                    }
                }
                Output::Json => {
                    let v: Vec<_> = specs
                        .iter()
                        .map(|s| {
                            serde_json::json!({
                                "file": s.file.display().to_string(),
                                "valid": true,
                                "spec": s.document(),
                            })
                        })
                        .collect();
                    let _ = writeln!(
                        out,
                        "{}",
                        serde_json::to_string_pretty(&v).unwrap_or_default()
                    );
                }
            }
            0
        }
        Err(errors) => {
            let n = errors.0.len();
            match output {
                Output::Text => {
                    eprintln!("{errors}");
                    eprintln!(
                        "{n} problem{} found; nothing was contacted",
                        if n == 1 { "" } else { "s" }
                    );
                }
                Output::Json => {
                    let v: Vec<_> = errors
                        .0
                        .iter()
                        .map(|d| {
                            serde_json::json!({
                                "file": d.file.display().to_string(),
                                "line": d.pos.line,
                                "column": d.pos.col,
                                "message": d.message,
                            })
                        })
                        .collect();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &serde_json::json!({"valid": false, "errors": v})
                        )
                        .unwrap_or_default()
                    );
                }
            }
            1
        }
    }
}

fn schema() -> u8 {
    match serde_json::to_string_pretty(&spec::json_schema()) {
        Ok(s) => {
            println!("{s}");
            0
        }
        Err(e) => {
            eprintln!("cannot render the schema: {e}");
            1
        }
    }
}

/// Load specs for a command that touches hosts: a bad spec stops everything (exit 1).
fn load_or_report(file: &std::path::Path) -> Option<Vec<spec::Spec>> {
    match spec::load(file) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("{e}");
            eprintln!("invalid spec: nothing was contacted");
            None
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            None
        }
    }
}

fn observe(file: &std::path::Path, output: Output) -> u8 {
    let Some(specs) = load_or_report(file) else {
        return 1;
    };
    let Some(rt) = runtime() else { return 1 };
    rt.block_on(async {
        let mut all = Vec::new();
        for s in &specs {
            let conns = crate::observe::connect(s).await;
            let o = crate::observe::observe(s, &conns).await;
            tracing::info!(cluster = %s.name, round_trips = ?conns.trips.snapshot(), "observed");
            match output {
                Output::Text => print!("{}", crate::observe::text(s, &o)),
                Output::Json => all.push(serde_json::json!({
                    "cluster": s.name.as_str(),
                    "observation": o,
                })),
            }
        }
        if output == Output::Json {
            let v = if all.len() == 1 {
                all.remove(0)
            } else {
                serde_json::Value::Array(all)
            };
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
    });
    0
}
