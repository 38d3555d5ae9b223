//! One function per subcommand.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;
use tributary_core::metrics::Metrics;
use tributary_core::runtime::{PipelineFailure, RunSummary};
use tributary_core::state::{SqliteStateStore, StateStore};

use crate::config::{default_state_path, LoadedPipeline};
use crate::{observe, report, wiring, ReportFormat};

/// A pipeline failed at run time.
pub const EXIT_FAILED: u8 = 1;
/// The command line or a pipeline file is wrong.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code after a second Ctrl-C (128 + SIGINT).
const EXIT_INTERRUPTED: i32 = 130;

/// Options of `tributary run`.
pub struct RunOptions {
    pub files: Vec<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
    pub report: ReportFormat,
    pub report_file: Option<PathBuf>,
    pub progress: bool,
}

fn load_all(files: &[PathBuf]) -> anyhow::Result<Vec<LoadedPipeline>> {
    let mut loaded: Vec<LoadedPipeline> = Vec::new();
    for file in files {
        let p = LoadedPipeline::load(file)?;
        if let Some(other) = loaded
            .iter()
            .find(|o| o.config.pipeline == p.config.pipeline)
        {
            bail!(
                "{} and {} both define pipeline `{}`: names must be unique (they key the state)",
                other.file.display(),
                p.file.display(),
                p.config.pipeline
            );
        }
        loaded.push(p);
    }
    Ok(loaded)
}

/// First SIGINT/SIGTERM: stop gracefully. Second: exit at once (safe: uncommitted work replays).
fn handle_signals(stop: CancellationToken) {
    handle_signals_with(
        stop,
        "stopping: finishing the current batch, flushing and committing (press Ctrl-C again to exit at once)",
    )
}

/// [`handle_signals`] with another message for the first signal.
fn handle_signals_with(stop: CancellationToken, stopping: &'static str) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::warn!("cannot install signal handlers: Ctrl-C will not stop gracefully");
            return;
        };
        for n in 0.. {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if n == 0 {
                eprintln!("{stopping}");
                stop.cancel();
            } else {
                eprintln!(
                    "exiting at once: work since the last commit will be read again next run"
                );
                std::process::exit(EXIT_INTERRUPTED);
            }
        }
    });
}

/// `tributary run`.
pub async fn run(opts: RunOptions) -> anyhow::Result<ExitCode> {
    let loaded = load_all(&opts.files)?;
    let metrics = Metrics::new();
    let stop = CancellationToken::new();
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(addr) = opts.metrics_addr {
        observe::serve_metrics(addr, metrics.clone(), ready.clone()).await?;
    }
    handle_signals(stop.clone());

    let bars = (opts.progress && std::io::stdout().is_terminal()).then(observe::Bars::new);
    let mut tasks = Vec::new();
    for p in &loaded {
        let pipeline = wiring::pipeline(p)
            .with_context(|| format!("{}", p.file.display()))?
            .with_metrics(metrics.clone())
            .with_stop(stop.clone());
        let bar = bars
            .as_ref()
            .map(|b| b.add(&p.config.pipeline, pipeline.progress()));
        tasks.push((tokio::spawn(pipeline.run()), bar));
    }
    ready.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut summaries: Vec<RunSummary> = Vec::new();
    let mut failed = false;
    for (task, bar) in tasks {
        let result: Result<RunSummary, PipelineFailure> =
            task.await.context("a pipeline task panicked")?;
        if let Some(bar) = bar {
            bar.finish();
        }
        match result {
            Ok(summary) => summaries.push(summary),
            Err(failure) => {
                failed = true;
                eprintln!("error: {failure}");
                summaries.push(*failure.summary);
            }
        }
    }
    for s in &summaries {
        match opts.report {
            ReportFormat::Text => print!("{}", report::text(s)),
            ReportFormat::Json => println!("{}", serde_json::to_string(s)?),
        }
    }
    if let Some(path) = &opts.report_file {
        std::fs::write(path, serde_json::to_vec_pretty(&summaries)?)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    Ok(if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// `tributary check`.
pub async fn check(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    for file in files {
        let result: anyhow::Result<String> = async {
            let p = LoadedPipeline::load(file)?;
            let mut source = wiring::source(&p)?;
            let mut sink = wiring::sink(&p)?;
            source.check().await.with_context(|| source.describe())?;
            sink.check().await.with_context(|| sink.describe())?;
            SqliteStateStore::open(p.state_path()?)?;
            Ok(format!(
                "pipeline {}: {} → {}",
                p.config.pipeline,
                source.describe(),
                sink.describe()
            ))
        }
        .await;
        match result {
            Ok(line) => println!("ok   {}: {line}", file.display()),
            Err(e) => {
                ok = false;
                println!("FAIL {}: {}", file.display(), chain(&e));
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// `tributary discover`.
pub async fn discover(file: &Path) -> anyhow::Result<ExitCode> {
    let p = LoadedPipeline::load(file)?;
    let mut source = wiring::source(&p)?;
    let streams = source.discover().await.with_context(|| source.describe())?;
    let state_path = p.state_path()?;
    let state = state_path
        .exists()
        .then(|| SqliteStateStore::open(&state_path))
        .transpose()?;
    for s in streams {
        println!("stream {}", s.name);
        if let Some(detail) = &s.detail {
            println!("  {detail}");
        }
        if let Some(schema) = &s.schema {
            let width = schema
                .fields()
                .iter()
                .map(|f| f.name().len())
                .max()
                .unwrap_or(0);
            for f in schema.fields() {
                println!("  {:width$}  {}", f.name(), f.data_type());
            }
        }
        if let Some(state) = &state {
            print_schema_history(state, &p.config.pipeline, &s.name, "  ")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every stored schema version of a stream, each with what changed from the one before.
fn print_schema_history(
    store: &SqliteStateStore,
    pipeline: &str,
    stream: &str,
    indent: &str,
) -> anyhow::Result<()> {
    let mut previous: Option<arrow_schema::Schema> = None;
    for v in store.schema_history(pipeline, stream)? {
        let schema: Option<arrow_schema::Schema> = serde_json::from_value(v.schema).ok();
        let change = match (&previous, &schema) {
            (Some(p), Some(n)) => format!(": {}", tributary_core::schema::diff(p, n)),
            _ => String::new(),
        };
        println!(
            "{indent}schema v{} recorded {}{change}",
            v.version,
            report::timestamp(v.recorded_at)
        );
        previous = schema;
    }
    Ok(())
}

/// A pipeline named by file or by name, and its state database.
fn locate(pipeline: &str, state: Option<PathBuf>) -> anyhow::Result<(String, PathBuf)> {
    let path = Path::new(pipeline);
    if path.is_file() {
        let p = LoadedPipeline::load(path)?;
        let db = match state {
            Some(s) => s,
            None => p.state_path()?,
        };
        return Ok((p.config.pipeline, db));
    }
    Ok((
        pipeline.to_string(),
        state.unwrap_or_else(|| default_state_path(Path::new("."))),
    ))
}

/// `tributary state show`.
pub fn state_show(pipeline: &str, state: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (name, db) = locate(pipeline, state)?;
    if !db.exists() {
        println!(
            "no state at {} (pipeline {name} has not run here yet)",
            db.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let store = SqliteStateStore::open(&db)?;
    let positions = store.positions(&name)?;
    println!("pipeline {name} (state: {})", db.display());
    if positions.is_empty() {
        println!("  no committed positions");
    }
    for s in positions {
        println!(
            "  stream {}: position {} (committed {})",
            s.stream,
            s.position,
            report::timestamp(s.updated_at)
        );
        print_schema_history(&store, &name, &s.stream, "    ")?;
        let files = store.files(&name, &s.stream)?;
        if !files.is_empty() {
            const SHOWN: usize = 10;
            println!("    files ingested: {}", files.len());
            for f in files.iter().take(SHOWN) {
                println!("      {} ({} bytes)", f.path, f.size);
            }
            if files.len() > SHOWN {
                println!("      ... and {} more", files.len() - SHOWN);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tributary state reset`.
pub async fn state_reset(pipeline: &str, state: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (name, db) = locate(pipeline, state)?;
    if db.exists() {
        let removed = SqliteStateStore::open(&db)?.reset(&name)?;
        println!(
            "pipeline {name}: forgot {removed} entries in {}",
            db.display()
        );
    } else {
        println!("no state at {}", db.display());
    }
    // A sink that stores positions with its data (PostgreSQL, exactly-once Kafka) would make
    // the next run resume from them: forget those too (needs the pipeline file).
    let path = Path::new(pipeline);
    if path.is_file() {
        let p = LoadedPipeline::load(path)?;
        let mut sink = wiring::sink(&p)?;
        let forgotten = sink.forget_positions(&name).await.with_context(|| {
            format!(
                "the local state is reset, but the positions stored in {} are not",
                sink.describe()
            )
        })?;
        if forgotten > 0 {
            println!(
                "pipeline {name}: forgot the positions of {forgotten} streams stored in {}",
                sink.describe()
            );
        }
    } else {
        println!(
            "(give the pipeline file instead of its name to also forget positions a \
             transactional sink stored with the data)"
        );
    }
    println!(
        "the next run starts from the beginning (output already written stays: the Parquet sink \
         overwrites files of the same positions; empty a database table first to avoid \
         duplicates)"
    );
    Ok(ExitCode::SUCCESS)
}

/// An error and its causes in one line, skipping a cause whose text its parent already shows
/// (library errors often print their source in their own message).
pub fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// `tributary dlq show`: the dead letters of a pipeline, by stream and by reason.
pub fn dlq_show(file: &Path) -> anyhow::Result<ExitCode> {
    let p = LoadedPipeline::load(file)?;
    let input = p.dead_letter_input()?;
    let records = input
        .read_all(&p.config.pipeline)
        .with_context(|| format!("cannot read {}", input.describe()))?;
    println!("{}: {} dead letters", input.describe(), records.len());
    let mut by_stream: std::collections::BTreeMap<&str, std::collections::BTreeMap<String, usize>> =
        Default::default();
    for r in &records {
        // The reason without the record's own place (line, row, `topic/0@17`) and details of
        // its own values (after "; "), so alike failures group.
        let message = r
            .location
            .as_deref()
            .and_then(|l| r.message.strip_prefix(l))
            .and_then(|m| m.strip_prefix(": "))
            .unwrap_or(&r.message);
        let reason: String = message
            .split_once(": ")
            .filter(|(head, _)| head.starts_with("line ") || head.starts_with("row "))
            .map_or(message, |(_, rest)| rest)
            .split("; ")
            .next()
            .unwrap_or_default()
            .chars()
            .take(160)
            .collect();
        *by_stream
            .entry(r.stream.as_str())
            .or_default()
            .entry(reason)
            .or_default() += 1;
    }
    for (stream, reasons) in by_stream {
        let total: usize = reasons.values().sum();
        println!("stream {stream}: {total}");
        let mut reasons: Vec<_> = reasons.into_iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for (reason, n) in reasons.iter().take(10) {
            println!("  {n:>8}  {reason}");
        }
        if reasons.len() > 10 {
            println!("  ... and {} other reasons", reasons.len() - 10);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tributary dlq replay`: the dead letters through the pipeline's sink again.
pub async fn dlq_replay(file: &Path, format: ReportFormat) -> anyhow::Result<ExitCode> {
    let p = LoadedPipeline::load(file)?;
    let state = Arc::new(SqliteStateStore::open(p.state_path()?)?);
    let input = p.dead_letter_input()?;
    let csv = match &p.config.source {
        crate::config::SourceConfig::Csv(c) => Some(crate::dlq::CsvRecords {
            delimiter: c.delimiter as u8,
            quote: c.quote as u8,
            nulls: c.null_values.clone(),
        }),
        _ => None,
    };
    let source = crate::dlq::DlqSource::new(input.clone(), &p.config.pipeline, state.clone(), csv);
    // A pipeline of its own: its positions and output names never meet the main pipeline's.
    let mut settings = wiring::settings(&p);
    settings.name = format!("{}.replay", p.config.pipeline);
    let stop = CancellationToken::new();
    handle_signals(stop.clone());
    let pipeline = tributary_core::runtime::Pipeline::new(
        settings,
        Box::new(source),
        wiring::sink(&p)?,
        wiring::dead_letter(&p)?,
        state,
    )
    .with_stop(stop);
    let (summary, failed) = match pipeline.run().await {
        Ok(s) => (s, false),
        Err(failure) => {
            eprintln!("error: {failure}");
            (*failure.summary, true)
        }
    };
    match format {
        ReportFormat::Text => print!("{}", report::text(&summary)),
        ReportFormat::Json => println!("{}", serde_json::to_string(&summary)?),
    }
    Ok(if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Where `tributary registry serve` keeps its state.
pub enum RegistryStorage {
    /// An SQLite file (`--state`).
    Sqlite(PathBuf),
    /// A compacted Kafka topic (`--kafka-store`, `--kafka-topic`).
    Kafka {
        /// Bootstrap brokers.
        brokers: String,
        /// The topic.
        topic: String,
        /// Only read it, forwarding changes to its writer (`--follow`).
        follow: bool,
        /// The URL to announce as the writer (`--advertise-url`).
        advertise_url: Option<String>,
    },
}

/// `tributary registry serve`: the built-in schema registry until SIGINT/SIGTERM.
pub async fn registry_serve(
    listen: SocketAddr,
    storage: RegistryStorage,
) -> anyhow::Result<ExitCode> {
    use tributary_registry::{Registry, RegistryStore, ServerAuth, SqliteRegistryStore};

    use tributary_kafka::registry_store::{KafkaRegistryStore, Role};

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let (store, where_): (Box<dyn RegistryStore>, String) = match storage {
        RegistryStorage::Sqlite(path) => (
            Box::new(SqliteRegistryStore::open(&path)?),
            path.display().to_string(),
        ),
        RegistryStorage::Kafka {
            brokers,
            topic,
            follow,
            advertise_url,
        } => {
            let role = if follow {
                Role::Follower
            } else {
                Role::Writer {
                    url: Some(advertise_url.unwrap_or_else(|| format!("http://{addr}"))),
                }
            };
            let where_ = format!(
                "kafka topic {topic} at {brokers}{}",
                if follow { ", following" } else { "" }
            );
            let store = tokio::task::spawn_blocking(move || {
                KafkaRegistryStore::open(&brokers, &topic, role)
            })
            .await??;
            (Box::new(store), where_)
        }
    };
    let registry = Arc::new(Registry::open(store)?);
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut auth = ServerAuth::default();
    match (
        env("TRIBUTARY_REGISTRY_USER"),
        env("TRIBUTARY_REGISTRY_PASSWORD"),
    ) {
        (Some(user), Some(password)) => auth.basic = Some((user, password.into())),
        (None, None) => {}
        _ => bail!("set both TRIBUTARY_REGISTRY_USER and TRIBUTARY_REGISTRY_PASSWORD, or neither"),
    }
    auth.bearer = env("TRIBUTARY_REGISTRY_TOKEN").map(Into::into);
    // The URL on stdout, for scripts and tests that ask for port 0.
    println!("schema registry listening on http://{addr} (state {where_})");
    let stop = CancellationToken::new();
    handle_signals_with(
        stop.clone(),
        "stopping: answering the requests in flight (press Ctrl-C again to exit at once)",
    );
    tributary_registry::serve(
        listener,
        registry,
        auth,
        async move { stop.cancelled().await },
    )
    .await
    .context("schema registry server")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod chain_tests {
    #[test]
    fn causes_already_shown_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(io)
            .context("data/x.csv: no such file")
            .context("csv data/x.csv");
        assert_eq!(super::chain(&e), "csv data/x.csv: data/x.csv: no such file");
    }
}
