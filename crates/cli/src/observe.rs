//! Logs, the metrics endpoint and progress bars.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tracing_subscriber::EnvFilter;
use tributary_core::metrics::Metrics;
use tributary_core::source::Progress;

use crate::LogFormat;

const DEFAULT_FILTER: &str = "warn,tributary=info,tributary_core=info,tributary_files=info";

/// The progress bars, once drawn: log lines are printed "around" them so they don't tear.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// One log event, written to stderr in one piece when dropped (with the bars hidden meanwhile).
struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let write = || {
            let _ = std::io::stderr().write_all(&self.0);
        };
        match BARS.get() {
            Some(bars) => bars.suspend(write),
            None => write(),
        }
    }
}

/// Logs go to stderr (stdout is for summaries), as text or JSON lines.
pub fn init_logging(format: LogFormat, filter: Option<&str>) {
    let filter = filter
        .map(EnvFilter::new)
        .or_else(|| std::env::var("RUST_LOG").ok().map(EnvFilter::new))
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogLine(Vec::with_capacity(256)))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[derive(Clone)]
struct ServerState {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

async fn serve_metrics_text(State(s): State<ServerState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(s): State<ServerState>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

/// Serves `/metrics`, `/health` and `/ready` in the background; logs the bound address.
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: Metrics,
    ready_flag: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-addr {addr}: cannot listen"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(serve_metrics_text))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(ServerState {
            metrics,
            ready: ready_flag,
        });
    tracing::info!(addr = %bound, "metrics listening on http://{bound}/metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}

/// Progress bars, one per pipeline, drawn on stderr.
pub struct Bars {
    multi: MultiProgress,
}

/// One pipeline's bar and the task that refreshes it.
pub struct Bar {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Bars {
    /// An empty set.
    pub fn new() -> Self {
        let multi = BARS.get_or_init(MultiProgress::new).clone();
        Bars { multi }
    }

    /// Adds a bar fed by a pipeline's progress counters.
    pub fn add(&self, name: &str, progress: Arc<Progress>) -> Bar {
        let bar = self.multi.add(ProgressBar::new(0));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        let b = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                let total = progress.total_bytes();
                if total > 0 && b.length() != Some(total) {
                    b.set_length(total);
                }
                b.set_position(progress.done_bytes());
                b.set_message(format!("{} rows", progress.rows()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Bar { bar, ticker }
    }
}

impl Bar {
    /// Stops refreshing and clears the bar (the summary follows).
    pub fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
