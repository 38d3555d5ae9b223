//! Turns a parsed pipeline file into running parts: connectors, dead-letter destination,
//! state store, runtime settings.

use std::sync::Arc;

use tributary_coap::{CoapEndpoint, CoapSource};
use tributary_core::config::ConfigError;
use tributary_core::dead_letter::{DeadLetterSink, NdjsonDeadLetter};
use tributary_core::policy::ErrorBudget;
use tributary_core::runtime::{Pipeline, PipelineSettings};
use tributary_core::state::SqliteStateStore;
use tributary_core::{Sink, Source};
use tributary_files::csv::CsvSource;
use tributary_files::excel::ExcelSource;
use tributary_files::json::JsonSource;
use tributary_files::parquet::{ParquetSink, ParquetSource};
use tributary_files::sink::{CsvSink, NdjsonSink};
use tributary_http::HttpSource;
use tributary_kafka::dead_letter::KafkaDeadLetter;
use tributary_kafka::{KafkaSink, KafkaSource};
use tributary_mqtt::MqttSource;
use tributary_postgres::{PostgresSink, PostgresSource};

use crate::config::{DeadLetterConfig, LoadedPipeline, SinkConfig, SourceConfig};

/// Builds the source of a pipeline.
pub fn source(p: &LoadedPipeline) -> Result<Box<dyn Source>, ConfigError> {
    Ok(match &p.config.source {
        SourceConfig::Csv(c) => Box::new(CsvSource::new(c.clone(), &p.dir)?),
        SourceConfig::Json(c) => Box::new(JsonSource::new(c.clone(), &p.dir)?),
        SourceConfig::Excel(c) => Box::new(ExcelSource::new(c.clone(), &p.dir)?),
        SourceConfig::Parquet(c) => Box::new(ParquetSource::new(c.clone(), &p.dir)?),
        SourceConfig::Kafka(c) => Box::new(KafkaSource::new(c.clone())?),
        SourceConfig::Mqtt(c) => Box::new(MqttSource::new((**c).clone(), &p.config.pipeline)?),
        SourceConfig::Coap(c) => Box::new(CoapSource::new((**c).clone())?),
        SourceConfig::CoapEndpoint(c) => Box::new(CoapEndpoint::new((**c).clone())?),
        SourceConfig::Postgres(c) => Box::new(PostgresSource::new((**c).clone())?),
        SourceConfig::Http(c) => Box::new(HttpSource::new((**c).clone())?),
    })
}

/// Builds the sink of a pipeline.
pub fn sink(p: &LoadedPipeline) -> Result<Box<dyn Sink>, ConfigError> {
    Ok(match &p.config.sink {
        SinkConfig::Parquet(c) => Box::new(ParquetSink::new(c.clone(), &p.dir)?),
        SinkConfig::Ndjson(c) => Box::new(NdjsonSink::new(c.clone(), &p.dir)?),
        SinkConfig::Csv(c) => Box::new(CsvSink::new(c.clone(), &p.dir)?),
        SinkConfig::Kafka(c) => Box::new(KafkaSink::new((**c).clone())?),
        SinkConfig::Postgres(c) => {
            Box::new(PostgresSink::new((**c).clone(), p.config.schema_policy)?)
        }
    })
}

/// The runtime settings of a pipeline.
pub fn settings(p: &LoadedPipeline) -> PipelineSettings {
    let c = &p.config;
    let mut s = PipelineSettings::new(&c.pipeline);
    s.on_error = c.on_error;
    s.error_budget = ErrorBudget {
        max_error_rate: c.max_error_rate,
        min_records: c.error_rate_min_records,
    };
    s.commit_interval = c.commit_interval;
    s.retry = c.retry.clone();
    s.schema_policy = c.schema_policy;
    s
}

/// The pipeline's dead-letter destination.
pub fn dead_letter(p: &LoadedPipeline) -> anyhow::Result<Box<dyn DeadLetterSink>> {
    Ok(match &p.config.dead_letter {
        Some(DeadLetterConfig::Kafka(k)) => Box::new(KafkaDeadLetter::new(k.clone())?),
        _ => Box::new(NdjsonDeadLetter::new(p.dead_letter_path()?)),
    })
}

/// Builds the whole pipeline, opening its state store.
pub fn pipeline(p: &LoadedPipeline) -> anyhow::Result<Pipeline> {
    let state = Arc::new(SqliteStateStore::open(p.state_path()?)?);
    let dead_letter = dead_letter(p)?;
    Ok(Pipeline::new(
        settings(p),
        source(p)?,
        sink(p)?,
        dead_letter,
        state,
    ))
}
