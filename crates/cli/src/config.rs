//! The pipeline file: one YAML document per pipeline, wired to connectors through tagged enums
//! (`kind: csv`), one variant per connector crate's typed config. No registry, no macros: to
//! add a connector, add a variant here and a match arm in [`crate::wiring`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tributary_coap::{CoapEndpointConfig, CoapSourceConfig};
use tributary_core::config::{duration, load_yaml, ConfigError, VarStr};
use tributary_core::policy::OnError;
use tributary_core::retry::RetryPolicy;
use tributary_core::schema::SchemaPolicy;
use tributary_files::csv::CsvSourceConfig;
use tributary_files::excel::ExcelSourceConfig;
use tributary_files::json::JsonSourceConfig;
use tributary_files::parquet::{ParquetSinkConfig, ParquetSourceConfig};
use tributary_files::sink::{CsvSinkConfig, NdjsonSinkConfig};
use tributary_http::HttpSourceConfig;
use tributary_kafka::{KafkaSinkConfig, KafkaSourceConfig};
use tributary_mqtt::MqttSourceConfig;
use tributary_postgres::{PostgresSinkConfig, PostgresSourceConfig};

/// One pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The pipeline's name: the state-store key, a metrics label, the dead-letter file name.
    pub pipeline: String,
    /// Where data comes from.
    pub source: SourceConfig,
    /// Where data goes.
    pub sink: SinkConfig,
    /// Where bad records go (default: `.tributary/dead_letter/<pipeline>.ndjson` next to the
    /// pipeline file).
    #[serde(default)]
    pub dead_letter: Option<DeadLetterConfig>,
    /// `dead_letter` (default), `fail` or `skip`.
    #[serde(default)]
    pub on_error: OnError,
    /// Share of bad records (0.0-1.0) that stops the run once `error_rate_min_records` were
    /// seen (default 0.5).
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// Records to see before `max_error_rate` is judged (default 1000).
    #[serde(default = "default_min_records")]
    pub error_rate_min_records: u64,
    /// Longest time written data waits before it is flushed and its position committed
    /// (default `10s`).
    #[serde(default = "default_commit_interval", with = "duration")]
    pub commit_interval: Duration,
    /// Retries of transient sink errors.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// When data stops matching a stream's schema: `evolve` (default: add columns, widen
    /// types), `freeze` (reject rows that do not fit), `discard_columns` (drop unknown
    /// columns), `discard_rows` (skip rows that do not fit).
    #[serde(default)]
    pub schema_policy: SchemaPolicy,
    /// Where positions and schemas are kept.
    #[serde(default)]
    pub state: Option<StateConfig>,
}

fn default_max_error_rate() -> f64 {
    0.5
}
fn default_min_records() -> u64 {
    1000
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(10)
}

/// Source connectors.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    /// A CSV file.
    Csv(CsvSourceConfig),
    /// An NDJSON file or a JSON array.
    Json(JsonSourceConfig),
    /// Excel (`.xlsx`, `.xls`) or OpenDocument (`.ods`) workbooks.
    Excel(ExcelSourceConfig),
    /// Parquet files, streamed by row group.
    Parquet(ParquetSourceConfig),
    /// Kafka topics, read as a consumer-group member.
    Kafka(KafkaSourceConfig),
    /// An MQTT subscription (runs until stopped).
    Mqtt(Box<MqttSourceConfig>),
    /// A CoAP resource, observed or polled (runs until stopped).
    Coap(Box<CoapSourceConfig>),
    /// A CoAP endpoint devices POST/PUT readings to (runs until stopped).
    CoapEndpoint(Box<CoapEndpointConfig>),
    /// PostgreSQL tables: a snapshot or an incremental load by cursor column.
    Postgres(Box<PostgresSourceConfig>),
    /// A REST API, page by page (one pass per run; incremental with a cursor).
    Http(Box<HttpSourceConfig>),
}

/// Sink connectors.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SinkConfig {
    /// Parquet files in a folder.
    Parquet(ParquetSinkConfig),
    /// NDJSON files in a folder.
    Ndjson(NdjsonSinkConfig),
    /// CSV files in a folder.
    Csv(CsvSinkConfig),
    /// Kafka topics.
    Kafka(Box<KafkaSinkConfig>),
    /// PostgreSQL tables (append or upsert, positions stored with the data).
    Postgres(Box<PostgresSinkConfig>),
}

/// Dead-letter destinations.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeadLetterConfig {
    /// An NDJSON file.
    Ndjson(NdjsonDeadLetterConfig),
    /// A Kafka topic: the original bytes as the value, the reason and origin in headers.
    Kafka(tributary_kafka::dead_letter::KafkaDeadLetterConfig),
}

/// The NDJSON dead-letter file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NdjsonDeadLetterConfig {
    /// The file (relative to the pipeline file's folder).
    pub path: VarStr,
}

/// The state store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The SQLite file (default `.tributary/state.db` next to the pipeline file).
    pub path: VarStr,
}

/// A parsed pipeline file and where it lives.
#[derive(Debug)]
pub struct LoadedPipeline {
    /// The file.
    pub file: PathBuf,
    /// Its folder: relative paths in it start here.
    pub dir: PathBuf,
    /// Its content.
    pub config: PipelineConfig,
}

impl LoadedPipeline {
    /// Reads, parses and validates a pipeline file.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let config: PipelineConfig = load_yaml(file)?;
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let loaded = LoadedPipeline {
            file: file.to_path_buf(),
            dir,
            config,
        };
        loaded.validate()?;
        Ok(loaded)
    }

    /// Checks values serde cannot (collects the first problem).
    fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        let bad = |field: &str, message: String| ConfigError::Value {
            field: format!("{}: {field}", self.file.display()),
            message,
        };
        if c.pipeline.is_empty() || c.pipeline.contains(['/', '\\']) {
            return Err(bad(
                "pipeline",
                format!("{:?} must be a non-empty name without slashes", c.pipeline),
            ));
        }
        if !(0.0..=1.0).contains(&c.max_error_rate) {
            return Err(bad(
                "max_error_rate",
                format!("{} is not between 0.0 and 1.0", c.max_error_rate),
            ));
        }
        if c.commit_interval.is_zero() {
            return Err(bad("commit_interval", "must be longer than zero".into()));
        }
        Ok(())
    }

    /// The state database.
    pub fn state_path(&self) -> Result<PathBuf, ConfigError> {
        match &self.config.state {
            Some(s) => Ok(self.dir.join(s.path.resolve("state.path")?)),
            None => Ok(default_state_path(&self.dir)),
        }
    }

    /// Where the dead letters are, for `dlq show|replay`.
    pub fn dead_letter_input(&self) -> Result<crate::dlq::DlqInput, ConfigError> {
        match &self.config.dead_letter {
            Some(DeadLetterConfig::Kafka(k)) => Ok(crate::dlq::DlqInput::Kafka(k.clone())),
            _ => self.dead_letter_path().map(crate::dlq::DlqInput::File),
        }
    }

    /// The dead-letter file (an error when dead letters go to a Kafka topic).
    pub fn dead_letter_path(&self) -> Result<PathBuf, ConfigError> {
        match &self.config.dead_letter {
            Some(DeadLetterConfig::Ndjson(d)) => {
                Ok(self.dir.join(d.path.resolve("dead_letter.path")?))
            }
            Some(DeadLetterConfig::Kafka(k)) => Err(ConfigError::Value {
                field: "dead_letter".into(),
                message: format!(
                    "dead letters go to the Kafka topic {}, not to a file (the reason is in the \
                     tributary.* headers of each message)",
                    k.topic
                ),
            }),
            None => Ok(self
                .dir
                .join(".tributary/dead_letter")
                .join(format!("{}.ndjson", self.config.pipeline))),
        }
    }
}

/// `.tributary/state.db` under `dir`.
pub fn default_state_path(dir: &Path) -> PathBuf {
    dir.join(".tributary").join("state.db")
}
