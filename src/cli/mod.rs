//! The command line of docs/CONTRACT.md. Each command returns its exit code; nothing here
//! decides anything the core does not.

pub mod arch_restore;
pub mod drill;
pub mod load;
pub mod progress;
pub mod restore;
pub mod status;
pub mod summary;

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

/// Plan rendering formats.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanFormat {
    Text,
    Json,
    Markdown,
    Dot,
}

#[derive(Args, Debug)]
struct PlanArgs {
    /// A spec file, or a directory of *.yaml spec files.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    output: PlanFormat,
    /// Save the plan (JSON) for `apply --plan FILE`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the journal is kept (default: $SPOOLKEEPER_STATE_DIR, else
    /// $XDG_STATE_HOME/spoolkeeper, else ~/.local/state/spoolkeeper).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ApplyArgs {
    /// Execute this saved plan (from `plan --out`); refused when the hosts changed since.
    #[arg(long = "plan")]
    saved: Option<PathBuf>,
    /// Break the cluster lock even if another apply seems to hold it.
    #[arg(long)]
    force_unlock: bool,
    /// At most this many actions at once.
    #[arg(long, default_value_t = 4)]
    parallelism: usize,
    /// At most this many actions at once on one host.
    #[arg(long, default_value_t = 2)]
    per_host: usize,
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
    /// Observe, diff, print the ordered action graph. Exit 0 no changes, 2 changes, 1 error.
    Plan {
        #[command(flatten)]
        plan: PlanArgs,
    },
    /// Plan and execute (`--dry-run`: exactly `plan`). Exit 0 converged, 1 error, 3 blocked.
    Reconcile {
        /// Print the plan and change nothing (same as `plan`).
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        plan: PlanArgs,
        #[command(flatten)]
        apply: ApplyArgs,
    },
    /// Plan and execute; with `--plan FILE`, execute that saved plan unless it is stale.
    /// Exit 0 converged, 1 error, 3 blocked by a safety rule.
    Apply {
        #[command(flatten)]
        plan: PlanArgs,
        #[command(flatten)]
        apply: ApplyArgs,
    },
    /// Replay archived mail newer than the watermark into the active node, exactly once.
    #[command(name = "arch-restore")]
    ArchRestore {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Only this instance (default: all).
        #[arg(long)]
        instance: Option<String>,
        /// List what would be replayed; send nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum)]
        output: Option<Output>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Give a mailbox (or one folder, or a date range) back from a snapshot into a restore
    /// folder `Restored/<snapshot time>/…` of the live mailbox, exactly once; `--list` prints the
    /// restore points. Exit 0 done, 1 error (nothing changed).
    Restore {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        instance: String,
        /// The Dovecot user (`alice@students.example.org`).
        #[arg(long)]
        mailbox: String,
        /// The newest snapshot taken at or before this time (RFC 3339, or a date: its end).
        #[arg(long)]
        at: Option<String>,
        /// This snapshot (`NAME` or `DATASET@NAME`).
        #[arg(long)]
        snapshot: Option<String>,
        /// Only this folder (`INBOX`, `Work`; the user's own separator).
        #[arg(long)]
        folder: Option<String>,
        /// Only messages received on or after this day (YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// Only messages received on or before this day (YYYY-MM-DD).
        #[arg(long)]
        until: Option<String>,
        /// Read the snapshot on this node (default: a passive node holding it).
        #[arg(long)]
        node: Option<String>,
        /// Print what would be restored; import nothing.
        #[arg(long)]
        dry_run: bool,
        /// List the restore points of the mailbox on every node.
        #[arg(long)]
        list: bool,
        #[arg(long, value_enum)]
        output: Option<Output>,
        /// Where the journal (which records every restore) lives.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Rehearse a failover on the passive: clone its newest replicated snapshot, start the
    /// drill copy (the spec's drill block), replay the held archive copies into it, check the
    /// probe mailboxes over IMAP, tear it down. Exit 0 pass, 2 fail, 1 error (nothing changed).
    Drill {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Only this instance (default: every instance with a drill block).
        #[arg(long)]
        instance: Option<String>,
        /// Rehearse on this node (default: the passive one).
        #[arg(long)]
        node: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        output: drill::DrillFormat,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Per node and instance: role, jail state, newest snapshot, newest replicated snapshot
    /// and its age (RPO), archive queue depth, last apply. Exit 0.
    Status {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long, value_enum)]
        output: Option<Output>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Monitoring probe (Nagios/Icinga): one line with perfdata; exit 0 OK, 1 WARNING,
    /// 2 CRITICAL, 3 UNKNOWN.
    Check {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Where the journal is (the last drill that passed is read from it).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Run the reconcile loop until stopped: schedules, requeue with backoff, Prometheus
    /// metrics. SIGTERM/SIGINT: running actions finish, locks are released, exit 0 (a second
    /// signal aborts the running commands, exit 1); SIGHUP reloads the specs.
    Controller {
        /// A spec file, or a directory of *.yaml spec files (one cluster each).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Serve /metrics and /healthz here (e.g. 127.0.0.1:9811).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Reconcile at least this often, due or not (and reread the specs).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        resync: std::time::Duration,
        /// The delay after a first failed reconcile (doubles up to --backoff-cap).
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        backoff_base: std::time::Duration,
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        backoff_cap: std::time::Duration,
        /// At most this many actions at once.
        #[arg(long, default_value_t = 4)]
        parallelism: usize,
        /// At most this many actions at once on one host.
        #[arg(long, default_value_t = 2)]
        per_host: usize,
    },
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
        Command::Plan { plan } => run_plan(&plan, None),
        Command::Status {
            file,
            output,
            state_dir,
        } => status::status_main(
            &file,
            default_output(output) == Output::Json,
            &state_dir.unwrap_or_else(crate::state::journal::default_state_dir),
        ),
        Command::Check { file, state_dir } => status::check_main(
            &file,
            &state_dir.unwrap_or_else(crate::state::journal::default_state_dir),
        ),
        Command::Controller {
            file,
            metrics_addr,
            state_dir,
            resync,
            backoff_base,
            backoff_cap,
            parallelism,
            per_host,
        } => controller(crate::controller::Options {
            path: file,
            metrics_addr,
            state_dir: state_dir.unwrap_or_else(crate::state::journal::default_state_dir),
            resync: resync.max(std::time::Duration::from_secs(1)),
            backoff: crate::decide::backoff::Policy {
                base: backoff_base.max(std::time::Duration::from_millis(100)),
                cap: backoff_cap.max(backoff_base),
            },
            limits: crate::apply::Limits {
                global: parallelism,
                per_host,
            },
        }),
        Command::ArchRestore {
            file,
            instance,
            dry_run,
            output,
            state_dir,
        } => arch_restore::main(
            &file,
            instance,
            dry_run,
            default_output(output) == Output::Json,
            state_dir,
        ),
        Command::Drill {
            file,
            instance,
            node,
            output,
            state_dir,
        } => drill::main(
            &file,
            instance,
            node,
            output,
            state_dir.unwrap_or_else(crate::state::journal::default_state_dir),
        ),
        Command::Restore {
            file,
            instance,
            mailbox,
            at,
            snapshot,
            folder,
            since,
            until,
            node,
            dry_run,
            list,
            output,
            state_dir,
        } => restore::main(restore::Args {
            state_dir: state_dir.unwrap_or_else(crate::state::journal::default_state_dir),
            file: &file,
            instance,
            mailbox,
            at,
            snapshot,
            folder,
            since,
            until,
            node,
            dry_run,
            list,
            json: default_output(output) == Output::Json,
        }),
        Command::Reconcile {
            dry_run: true,
            plan,
            ..
        } => run_plan(&plan, None),
        Command::Reconcile { plan, apply, .. } | Command::Apply { plan, apply } => {
            run_plan(&plan, Some(&apply))
        }
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
    // Colours only on a terminal: logs piped to a file or a CI job stay greppable
    // (`round_trips=` and not escape sequences around the field name).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
    match load::specs(file) {
        Ok(specs) => {
            let mut out = std::io::stdout().lock();
            match output {
                Output::Text => {
                    for s in &specs {
                        let _ = writeln!(out, "{}: valid", s.file.display());
                        let _ = write!(out, "{}", crate::cli::summary::text(s));
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
    match load::specs(file) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("{e}");
            eprintln!("invalid spec: nothing was contacted");
            None
        }
    }
}

/// The one tokio runtime of a command (the CLI is the only place that builds one).
pub(crate) fn runtime() -> Option<tokio::runtime::Runtime> {
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

fn controller(opts: crate::controller::Options) -> u8 {
    let Some(rt) = runtime() else { return 1 };
    rt.block_on(crate::controller::run(opts))
}

fn observe(file: &std::path::Path, output: Output) -> u8 {
    /// One cluster's observation as printed; serialized straight to stdout (an archive of a
    /// million held copies is never built as a JSON tree in memory).
    #[derive(serde::Serialize)]
    struct Observed<'a> {
        cluster: &'a str,
        observation: crate::model::Observation,
    }
    let Some(specs) = load_or_report(file) else {
        return 1;
    };
    let Some(rt) = runtime() else { return 1 };
    let all = rt.block_on(async {
        let mut all = Vec::new();
        for s in &specs {
            let conns = crate::observe::connect(s).await;
            let o = crate::observe::observe(s, &conns).await;
            tracing::info!(cluster = %s.name, round_trips = ?conns.trips.snapshot(), "observed");
            match output {
                Output::Text => print!("{}", crate::observe::text(s, &o)),
                Output::Json => all.push(Observed {
                    cluster: s.name.as_str(),
                    observation: o,
                }),
            }
        }
        all
    });
    if output == Output::Json {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let written = if all.len() == 1 {
            serde_json::to_writer_pretty(&mut out, &all[0])
        } else {
            serde_json::to_writer_pretty(&mut out, &all)
        };
        if let Err(e) = written
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
            .and_then(|()| out.flush())
        {
            eprintln!("cannot write the observation: {e}");
            return 1;
        }
    }
    0
}

fn render(plan: &crate::plan::Plan, s: &spec::Spec, f: PlanFormat) -> String {
    use crate::plan::render;
    match f {
        PlanFormat::Text => render::text(plan, Some(s)),
        PlanFormat::Json => render::json(plan, Some(s)) + "\n",
        PlanFormat::Markdown => render::markdown(plan, Some(s)),
        PlanFormat::Dot => render::dot(plan, Some(s)),
    }
}

/// `plan`, `reconcile [--dry-run]` and `apply`: one flow, with or without execution.
fn run_plan(args: &PlanArgs, apply: Option<&ApplyArgs>) -> u8 {
    let Some(specs) = load_or_report(&args.file) else {
        return 1;
    };
    let Some(rt) = runtime() else { return 1 };
    let mut worst = 0u8;
    for s in &specs {
        let code = rt.block_on(plan_one(s, args, apply));
        // 1 (error) and 3 (blocked) outrank 2 (changes) and 0.
        worst = match (worst, code) {
            (1, _) | (_, 1) => 1,
            (3, _) | (_, 3) => 3,
            (a, b) => a.max(b),
        };
    }
    worst
}

async fn plan_one(s: &spec::Spec, args: &PlanArgs, apply: Option<&ApplyArgs>) -> u8 {
    use crate::apply::run;
    let saved = match apply.and_then(|a| a.saved.as_ref()) {
        Some(path) => match read_saved(path) {
            Ok(sp) => Some(sp),
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return 1;
            }
        },
        None => None,
    };
    let opts = run::Options {
        state_dir: args
            .state_dir
            .clone()
            .unwrap_or_else(crate::state::journal::default_state_dir),
        execute: apply.is_some(),
        saved,
        force_unlock: apply.is_some_and(|a| a.force_unlock),
        limits: apply.map_or_else(crate::apply::Limits::default, |a| crate::apply::Limits {
            global: a.parallelism,
            per_host: a.per_host,
        }),
        out: args.out.clone(),
    };
    let format = args.output;
    let mut show = |p: &crate::plan::Plan| print!("{}", render(p, s, format));
    let stop = crate::apply::Stop::default();
    let bars = apply.and_then(|_| progress::bars());
    let out = run::once(s, &opts, &stop, &mut show).await;
    if let Some(b) = bars {
        b.abort();
    }
    if let Some(r) = &out.report {
        print!("{}", r.text());
    }
    for m in &out.messages {
        eprintln!("{m}");
    }
    out.code
}

fn read_saved(path: &std::path::Path) -> Result<crate::plan::SavedPlan, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("not a spoolkeeper plan: {e}"))
}
