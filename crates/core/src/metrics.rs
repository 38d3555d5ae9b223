//! The Prometheus metrics every pipeline exports (served by the CLI on `--metrics-addr`).
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `tributary_records_in_total` | pipeline, stream | rows received from the source |
//! | `tributary_records_out_total` | pipeline, stream | rows made durable in the sink |
//! | `tributary_bytes_in_total` | pipeline, stream | source bytes consumed |
//! | `tributary_bytes_out_total` | pipeline, stream | Arrow bytes of the rows made durable (the sink's encoding may be smaller) |
//! | `tributary_errors_total` | pipeline, stream, class | errors by class (transient, record, fatal) |
//! | `tributary_retries_total` | pipeline, operation | retried transient failures |
//! | `tributary_dead_lettered_total` | pipeline, stream | records written to the dead-letter destination |
//! | `tributary_skipped_total` | pipeline, stream | bad records dropped under `on_error: skip` |
//! | `tributary_commits_total` | pipeline | position commits to the state store |
//! | `tributary_batch_latency_seconds` | pipeline | emit → durable, per batch (histogram) |
//! | `tributary_cdc_lag_bytes` | pipeline, slot | WAL the server holds for a replication slot beyond what the pipeline confirmed |
//!
//! Labels never carry secrets: only pipeline and stream names, error classes and operation names.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of per-stream metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// Pipeline name.
    pub pipeline: String,
    /// Stream name.
    pub stream: String,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Pipeline name.
    pub pipeline: String,
    /// Stream name (empty when the error is not tied to one).
    pub stream: String,
    /// `transient`, `record` or `fatal`.
    pub class: String,
}

/// Labels of per-operation metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// Pipeline name.
    pub pipeline: String,
    /// What was retried: `sink.write`, `sink.flush`, ...
    pub operation: String,
}

/// Labels of per-slot metrics (change data capture).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabels {
    /// Pipeline name.
    pub pipeline: String,
    /// Replication slot name.
    pub slot: String,
}

/// Labels of per-pipeline metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    /// Pipeline name.
    pub pipeline: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The metric families, shared by every pipeline of a process. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// Rows received from sources.
    pub records_in: Family<StreamLabels, Counter>,
    /// Rows made durable in sinks.
    pub records_out: Family<StreamLabels, Counter>,
    /// Source bytes consumed.
    pub bytes_in: Family<StreamLabels, Counter>,
    /// Arrow bytes of rows made durable.
    pub bytes_out: Family<StreamLabels, Counter>,
    /// Errors by class.
    pub errors: Family<ErrorLabels, Counter>,
    /// Retried transient failures.
    pub retries: Family<OperationLabels, Counter>,
    /// Dead-lettered records.
    pub dead_lettered: Family<StreamLabels, Counter>,
    /// Records dropped under `on_error: skip`.
    pub skipped: Family<StreamLabels, Counter>,
    /// Position commits.
    pub commits: Family<PipelineLabels, Counter>,
    /// Emit → durable latency per batch.
    pub batch_latency: Family<PipelineLabels, Histogram, fn() -> Histogram>,
    /// WAL bytes between a replication slot's confirmed position and the server's WAL end.
    pub cdc_lag: Family<SlotLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tributary");
        let m = Metrics {
            registry: Arc::new(Mutex::new(Registry::default())),
            records_in: Family::default(),
            records_out: Family::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            errors: Family::default(),
            retries: Family::default(),
            dead_lettered: Family::default(),
            skipped: Family::default(),
            commits: Family::default(),
            batch_latency: Family::new_with_constructor(latency_histogram),
            cdc_lag: Family::default(),
        };
        registry.register(
            "records_in",
            "Rows received from the source",
            m.records_in.clone(),
        );
        registry.register(
            "records_out",
            "Rows made durable in the sink",
            m.records_out.clone(),
        );
        registry.register("bytes_in", "Source bytes consumed", m.bytes_in.clone());
        registry.register(
            "bytes_out",
            "Arrow bytes of the rows made durable",
            m.bytes_out.clone(),
        );
        registry.register("errors", "Errors by class", m.errors.clone());
        registry.register("retries", "Retried transient failures", m.retries.clone());
        registry.register(
            "dead_lettered",
            "Records written to the dead-letter destination",
            m.dead_lettered.clone(),
        );
        registry.register(
            "skipped",
            "Bad records dropped under on_error: skip",
            m.skipped.clone(),
        );
        registry.register("commits", "Source position commits", m.commits.clone());
        registry.register(
            "batch_latency_seconds",
            "Seconds from a batch's emit to its durable write",
            m.batch_latency.clone(),
        );
        registry.register(
            "cdc_lag_bytes",
            "WAL bytes the server holds for the slot beyond the pipeline's confirmed position",
            m.cdc_lag.clone(),
        );
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = registry;
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Labels for one stream.
    pub fn stream(pipeline: &str, stream: &str) -> StreamLabels {
        StreamLabels {
            pipeline: pipeline.to_string(),
            stream: stream.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_the_exposition() {
        let m = Metrics::new();
        m.records_in
            .get_or_create(&Metrics::stream("p", "orders"))
            .inc_by(5);
        m.errors
            .get_or_create(&ErrorLabels {
                pipeline: "p".into(),
                stream: "orders".into(),
                class: "record".into(),
            })
            .inc();
        m.batch_latency
            .get_or_create(&PipelineLabels {
                pipeline: "p".into(),
            })
            .observe(0.003);
        let text = m.encode();
        assert!(
            text.contains(r#"tributary_records_in_total{pipeline="p",stream="orders"} 5"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"tributary_errors_total{pipeline="p",stream="orders",class="record"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE tributary_batch_latency_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(r#"tributary_batch_latency_seconds_bucket{le="0.004",pipeline="p"} 1"#),
            "{text}"
        );
    }
}
