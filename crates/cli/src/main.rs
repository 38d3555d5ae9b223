//! # tributary: the command-line entry point
//!
//! `tributary run pipeline.yaml` reads the source, writes the sink, commits positions only once
//! data is durable, and prints a summary. See `tributary --help` for the tour, and
//! `docs/architecture.md` for how the parts fit.
//!
//! Modules: [`config`] (the YAML pipeline file), [`wiring`] (config → connectors),
//! [`observe`] (logs, metrics server, progress bars), [`report`] (run summaries),
//! [`commands`] (one function per subcommand).

mod commands;
mod config;
mod dlq;
mod observe;
mod report;
mod wiring;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Tributary moves data from files, APIs, databases, devices and Kafka into Kafka, Parquet and
/// Postgres, with no loss and no duplicates.
#[derive(Parser, Debug)]
#[command(
    name = "tributary",
    version,
    about,
    after_help = "\
Examples:
  tributary run examples/quickstart/pipeline.yaml      run a pipeline, print a summary
  tributary run a.yaml b.yaml --metrics-addr 127.0.0.1:9464
                                                     two pipelines, Prometheus on :9464/metrics
  tributary check pipeline.yaml                        validate config and reach source and sink
  tributary discover pipeline.yaml                     show streams and inferred schemas
  tributary state show pipeline.yaml                   committed positions and schema versions
  tributary state reset pipeline.yaml                  forget positions: the next run starts over
  tributary dlq show pipeline.yaml                     dead letters by stream and reason
  tributary dlq replay pipeline.yaml                   send them through the sink again
  tributary registry serve --listen 127.0.0.1:8081     a Confluent-compatible schema registry

A pipeline file:
  pipeline: orders
  source: { kind: csv, path: data/orders.csv }
  sink:   { kind: parquet, path: output/ }
  on_error: dead_letter        # or fail, skip; bad rows go to .tributary/dead_letter/orders.ndjson

Re-running a pipeline resumes where the last committed position left it; Ctrl-C stops after
flushing and committing what was read (press it twice to exit at once)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (as RUST_LOG): `debug`, `warn,tributary_core=debug`.
    #[arg(long, global = true, env = "TRIBUTARY_LOG")]
    log: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one or more pipelines until their sources end (or Ctrl-C).
    Run {
        /// Pipeline files (YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Serve Prometheus metrics on /metrics and liveness on /health at this address
        /// (port 0 picks a free port; the address is logged).
        #[arg(long)]
        metrics_addr: Option<SocketAddr>,
        /// Summary format on stdout.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        report: ReportFormat,
        /// Also write the summary as JSON to this file.
        #[arg(long)]
        report_file: Option<PathBuf>,
        /// Never draw a progress bar (it is drawn only when stdout is a terminal).
        #[arg(long)]
        no_progress: bool,
    },
    /// Validate pipeline files and check that sources and sinks can be reached.
    Check {
        /// Pipeline files (YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show the streams a pipeline's source offers, with their (inferred) schemas.
    Discover {
        /// Pipeline file (YAML).
        file: PathBuf,
    },
    /// Inspect or reset committed positions and schema history.
    State {
        #[command(subcommand)]
        action: StateAction,
    },
    /// Look at dead letters, or replay them through the pipeline's sink.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// The built-in schema registry (Confluent's REST API).
    Registry {
        #[command(subcommand)]
        action: RegistryAction,
    },
}

#[derive(Subcommand, Debug)]
enum RegistryAction {
    /// Serve a Confluent-compatible schema registry (Avro, JSON Schema, Protobuf) until
    /// Ctrl-C. Credentials, when wanted, come from TRIBUTARY_REGISTRY_USER and
    /// TRIBUTARY_REGISTRY_PASSWORD (basic) and/or TRIBUTARY_REGISTRY_TOKEN (bearer).
    Serve {
        /// Address to listen on (port 0 picks a free port; the URL is printed on stdout).
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// The registry's database (SQLite): ids, versions and configs survive restarts.
        #[arg(long, default_value = ".tributary/registry.db")]
        state: PathBuf,
        /// Keep the state on a compacted Kafka topic at these brokers instead of `--state`
        /// (`host:port,…`): a restarted process, here or on another machine, gives the same
        /// ids. One process writes at a time: starting another one on the topic takes over,
        /// and the first refuses writes from then on.
        #[arg(long, value_name = "BROKERS")]
        kafka_store: Option<String>,
        /// The topic of `--kafka-store` (created compacted, one partition, when absent).
        #[arg(long, default_value = "_schemas", requires = "kafka_store")]
        kafka_topic: String,
        /// With `--kafka-store`: only read the topic (answering reads from it) and forward
        /// changes to the process that writes it, as Confluent's followers do.
        #[arg(long, requires = "kafka_store")]
        follow: bool,
        /// With `--kafka-store`: the URL followers forward changes to (default
        /// `http://<the address listened on>`).
        #[arg(long, value_name = "URL", requires = "kafka_store")]
        advertise_url: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum DlqAction {
    /// Count the dead letters of a pipeline by stream and reason.
    Show {
        /// The pipeline file.
        pipeline: PathBuf,
    },
    /// Send the dead letters through the pipeline's sink again (after fixing the cause);
    /// records that fail again are dead-lettered again with the new reason.
    Replay {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Summary format on stdout.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        report: ReportFormat,
    },
}

#[derive(Subcommand, Debug)]
enum StateAction {
    /// Show committed positions and schema versions.
    Show {
        /// A pipeline file, or a pipeline name (then `--state` or ./.tributary/state.db).
        pipeline: String,
        /// The state database.
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Forget positions, schemas and file ledger of a pipeline: its next run starts over.
    Reset {
        /// A pipeline file, or a pipeline name (then `--state` or ./.tributary/state.db).
        pipeline: String,
        /// The state database.
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Summary output format.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ReportFormat {
    /// A short human summary.
    Text,
    /// One JSON object per pipeline.
    Json,
}

/// jemalloc is the allocator (why: `crates/cli/Cargo.toml`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's built-in options, read at its first allocation (before `main`); `MALLOC_CONF` in
/// the environment is read after them and wins. One arena: parser, encoder and connector
/// threads allocate column buffers that other threads free, and with an arena per thread (or
/// per CPU) each arena holds its own free pages, so the peak grows with the number of arenas
/// (B1 on two cores, 5M rows: 78-80 MB with jemalloc's default of four per CPU, 71 with one).
/// Contention stays low: small allocations come from per-thread caches, and the large ones
/// (column buffers) number a few thousand a second.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static malloc_conf: Option<&'static libc::c_char> =
    // SAFETY: a C string literal: NUL-terminated and alive for the whole program.
    Some(unsafe { &*c"narenas:1".as_ptr() });

fn main() -> ExitCode {
    let cli = Cli::parse();
    observe::init_logging(cli.log_format, cli.log.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run {
                files,
                metrics_addr,
                report,
                report_file,
                no_progress,
            } => {
                commands::run(commands::RunOptions {
                    files,
                    metrics_addr,
                    report,
                    report_file,
                    progress: !no_progress,
                })
                .await
            }
            Command::Check { files } => commands::check(&files).await,
            Command::Discover { file } => commands::discover(&file).await,
            Command::State { action } => match action {
                StateAction::Show { pipeline, state } => commands::state_show(&pipeline, state),
                StateAction::Reset { pipeline, state } => {
                    commands::state_reset(&pipeline, state).await
                }
            },
            Command::Dlq { action } => match action {
                DlqAction::Show { pipeline } => commands::dlq_show(&pipeline),
                DlqAction::Replay { pipeline, report } => {
                    commands::dlq_replay(&pipeline, report).await
                }
            },
            Command::Registry { action } => match action {
                RegistryAction::Serve {
                    listen,
                    state,
                    kafka_store,
                    kafka_topic,
                    follow,
                    advertise_url,
                } => {
                    let store = match kafka_store {
                        Some(brokers) => commands::RegistryStorage::Kafka {
                            brokers,
                            topic: kafka_topic,
                            follow,
                            advertise_url,
                        },
                        None => commands::RegistryStorage::Sqlite(state),
                    };
                    commands::registry_serve(listen, store).await
                }
            },
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", commands::chain(&e));
            ExitCode::from(commands::EXIT_CONFIG)
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// `malloc_conf` reached jemalloc: one arena (unless `MALLOC_CONF` says otherwise).
    #[test]
    fn jemalloc_runs_with_one_arena() {
        let want = match std::env::var("MALLOC_CONF") {
            Ok(conf) if conf.contains("narenas") => return,
            _ => 1,
        };
        let mut narenas: libc::c_uint = 0;
        let mut len = std::mem::size_of::<libc::c_uint>();
        // SAFETY: `opt.narenas` is an unsigned int; `len` says how large the buffer is.
        let r = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"opt.narenas".as_ptr(),
                (&mut narenas as *mut libc::c_uint).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(r, 0, "mallctl(opt.narenas) failed");
        assert_eq!(narenas, want);
    }
}
