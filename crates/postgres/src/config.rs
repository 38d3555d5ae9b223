//! Typed, documented configuration of the PostgreSQL source and sink (the reference docs of
//! `source: { kind: postgres }` and `sink: { kind: postgres }`).

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tributary_core::config::{duration, ConfigError, VarStr};

/// How the source reads its tables.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SourceMode {
    /// Copy each table once, in primary-key order (default). A run resumes after the last
    /// key committed; a table whose snapshot completed is not read again (reset the
    /// pipeline's state to take a new snapshot).
    #[default]
    Snapshot,
    /// Read the rows whose `(cursor, key)` is past the last one committed, in that order: each
    /// run reads what was added or updated since the previous one.
    Incremental,
    /// A consistent snapshot, then every insert, update, delete and truncate, read from a
    /// logical replication slot (`pgoutput`) as Debezium-style envelopes. Runs until stopped.
    Cdc,
}

/// Configuration of the PostgreSQL source (`source: { kind: postgres, ... }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// Connection string: `postgres://user:password@host:port/database` or
    /// `host=… user=… dbname=…` (may use `${ENV}` and `${file:…}`).
    pub url: VarStr,
    /// Tables, as `schema.table` or `table` (schema `public`), with `*` and `?` wildcards:
    /// `[public.orders, "sales.*"]`. One stream per table, named `schema.table`.
    pub tables: Vec<String>,
    /// `snapshot` (default) or `incremental`.
    #[serde(default)]
    pub mode: SourceMode,
    /// The cursor column of `incremental` mode (`updated_at`, `id`): rows are read in
    /// `(cursor, key)` order, so rows that share the last cursor value are neither missed
    /// nor read twice. Rows whose cursor is null are never read.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Columns that identify a row, when the table has no primary key (or to use another
    /// unique key): the order of snapshots and the tie-breaker of `incremental`.
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// Rows per batch (default 65536).
    #[serde(default = "default_batch_rows")]
    pub batch_rows: NonZeroUsize,
    /// `snapshot` (and `cdc`'s initial snapshot): read each table in this many ranges of its
    /// key at once (default 1), each on its own connection, all in one snapshot (exported by a
    /// coordinating connection; for `cdc`, the replication slot's). A crashed snapshot resumes
    /// every range after its own last committed key (a `cdc` snapshot is taken again, as
    /// always). Needs a key of one integer column; other tables are read in one range.
    /// Ranges are split evenly between the smallest and largest key, so gaps in the keys make
    /// them uneven.
    #[serde(default = "default_parallel")]
    pub parallel: NonZeroUsize,
    /// `cdc`: the replication slot (default `tributary_<pipeline>`), created when absent.
    #[serde(default)]
    pub slot: Option<String>,
    /// `cdc`: the publication (default `tributary_<pipeline>`), created `FOR TABLE` the
    /// configured tables when absent.
    #[serde(default)]
    pub publication: Option<String>,
    /// `cdc`: longest time a change waits for more before its batch is emitted (default
    /// `200ms`).
    #[serde(default = "default_batch_wait", with = "duration")]
    pub batch_wait: Duration,
    /// `cdc`: how often the confirmed position is sent to the server while idle (default
    /// `10s`), so it can free WAL.
    #[serde(default = "default_status_interval", with = "duration")]
    pub status_interval: Duration,
}

fn default_batch_wait() -> Duration {
    Duration::from_millis(200)
}
fn default_status_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_parallel() -> NonZeroUsize {
    NonZeroUsize::MIN
}

fn default_batch_rows() -> NonZeroUsize {
    NonZeroUsize::new(65_536).unwrap()
}

impl PostgresSourceConfig {
    /// A snapshot of `tables` with the defaults.
    pub fn new(url: impl Into<String>, tables: Vec<String>) -> Self {
        PostgresSourceConfig {
            url: VarStr::new(url),
            tables,
            mode: SourceMode::Snapshot,
            cursor: None,
            key: None,
            batch_rows: default_batch_rows(),
            parallel: default_parallel(),
            slot: None,
            publication: None,
            batch_wait: default_batch_wait(),
            status_interval: default_status_interval(),
        }
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, message: &str| ConfigError::Value {
            field: format!("source.{field}"),
            message: message.to_string(),
        };
        if self.tables.is_empty() {
            return Err(bad("tables", "name at least one table"));
        }
        if self.parallel.get() > 1 && self.mode == SourceMode::Incremental {
            return Err(bad(
                "parallel",
                "key ranges are read in parallel by snapshots (mode: snapshot, and the initial \
                 snapshot of mode: cdc), not by incremental loads",
            ));
        }
        match (self.mode, &self.cursor) {
            (SourceMode::Incremental, None) => Err(bad(
                "cursor",
                "incremental mode needs a cursor column (updated_at, id, ...)",
            )),
            (SourceMode::Snapshot | SourceMode::Cdc, Some(_)) => Err(bad(
                "cursor",
                "a cursor is only used in incremental mode (add `mode: incremental`)",
            )),
            _ => Ok(()),
        }
    }
}

/// How the sink writes rows.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SinkMode {
    /// Add every row with binary `COPY` (default).
    #[default]
    Append,
    /// `INSERT … ON CONFLICT (key) DO UPDATE`: one row per key, the latest wins (within a
    /// batch too).
    Upsert,
}

/// Configuration of the PostgreSQL sink (`sink: { kind: postgres, ... }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Connection string (see the source's `url`).
    pub url: VarStr,
    /// The target schema (default: the stream's schema when the stream is `schema.table`,
    /// else `public`).
    #[serde(default)]
    pub schema: Option<String>,
    /// The target table: a name, or a template with `{table}` (the stream name after its last
    /// `.`) and `{stream}`: `raw_{table}` (default `{table}`).
    #[serde(default = "default_table")]
    pub table: String,
    /// `append` (default) or `upsert`.
    #[serde(default)]
    pub mode: SinkMode,
    /// The upsert key (default: the source table's primary key when the source is
    /// PostgreSQL, else the target table's primary key).
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// Create the target table when it does not exist (default true), with the key as its
    /// primary key.
    #[serde(default = "default_true")]
    pub create_table: bool,
    /// Store each stream's source position in the same transaction as its rows and resume
    /// from it (default true): exactly-once, even if the pipeline's own state is lost.
    #[serde(default = "default_true")]
    pub exactly_once: bool,
    /// Where positions are stored (default `public.tributary_positions`).
    #[serde(default = "default_positions_table")]
    pub positions_table: String,
}

fn default_table() -> String {
    "{table}".to_string()
}
fn default_true() -> bool {
    true
}
fn default_positions_table() -> String {
    "public.tributary_positions".to_string()
}

impl PostgresSinkConfig {
    /// An appending sink with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresSinkConfig {
            url: VarStr::new(url),
            schema: None,
            table: default_table(),
            mode: SinkMode::Append,
            key: None,
            create_table: true,
            exactly_once: true,
            positions_table: default_positions_table(),
        }
    }
}
