//! The PostgreSQL sink: binary `COPY` (append) or `INSERT … ON CONFLICT` (upsert), one
//! transaction per batch that also stores the batch's source position.
//!
//! Each [`Sink::write`] runs `BEGIN; <rows>; INSERT INTO tributary_positions …; COMMIT` and
//! reports the batch durable. The runtime commits the position to its own state store only
//! after that; on start it asks [`Sink::stored_positions`] and resumes from the positions
//! stored here, which are never behind the data. So a crash at any point neither loses nor
//! repeats a row: exactly-once into PostgreSQL, whatever the source (a replayed file, a Kafka
//! partition, a PostgreSQL snapshot), as long as the source is deterministic from a position.
//!
//! One transaction per batch keeps retries simple: a failed write rolled back as a whole, and
//! the runtime retries the same batch. If the connection breaks during `COMMIT`, the outcome
//! is unknown; the retry reads the stored position first and skips a batch that did commit.
//!
//! Tables: a missing table is created from the batch's Arrow schema (types in
//! [`crate::types`]), with the key as its primary key. Columns the table lacks are added
//! (nullable) under the `evolve` schema policy, left out under `discard_columns`, and an error
//! under `freeze` and `discard_rows`. Columns the batch lacks are left to their defaults.

use std::collections::{BTreeMap, HashMap};

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use bytes::{BufMut, BytesMut};
use futures_util::SinkExt;
use tokio_postgres::Client;
use tributary_core::config::ConfigError;
use tributary_core::dead_letter::Rejected;
use tributary_core::error::ConnectorError;
use tributary_core::schema::SchemaPolicy;
use tributary_core::{Batch, Position, Sink, WriteOutcome};

use crate::catalog::{ident, table_info, TableInfo, TableName};
use crate::config::{PostgresSinkConfig, SinkMode};
use crate::error::PgError;
use crate::source::connect;
use crate::types::{pg_type_for, ColumnEncoder, TargetType, COPY_HEADER, PRIMARY_KEY_KEY};

/// Bytes of COPY data sent per message.
const COPY_CHUNK: usize = 1 << 20;

/// Writes batches into PostgreSQL tables (`sink: { kind: postgres }`).
pub struct PostgresSink {
    config: PostgresSinkConfig,
    url: String,
    policy: SchemaPolicy,
    client: Option<Client>,
    pipeline: String,
    positions_table: TableName,
    /// Target tables already checked, by stream.
    tables: HashMap<String, TableInfo>,
    /// The end position of a batch whose write failed: the retry checks whether it committed.
    uncertain: Option<(String, Position)>,
    /// Rows refused for their content, for [`Sink::take_rejected`].
    rejected: Vec<Rejected>,
}

impl PostgresSink {
    /// A sink for `config`, adding columns when `policy` is `evolve`.
    pub fn new(config: PostgresSinkConfig, policy: SchemaPolicy) -> Result<Self, ConfigError> {
        let url = config.url.resolve("sink.url")?;
        if config.mode == SinkMode::Upsert && config.key.as_ref().is_some_and(|k| k.is_empty()) {
            return Err(ConfigError::Value {
                field: "sink.key".into(),
                message: "an upsert key needs at least one column".into(),
            });
        }
        let positions_table = TableName::parse(&config.positions_table);
        Ok(PostgresSink {
            config,
            url,
            policy,
            client: None,
            pipeline: String::new(),
            positions_table,
            tables: HashMap::new(),
            uncertain: None,
            rejected: Vec::new(),
        })
    }

    async fn client(&mut self) -> Result<&mut Client, PgError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(connect(&self.url).await?);
            self.tables.clear();
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// The target table of a stream.
    fn target(&self, stream: &str) -> TableName {
        let (stream_schema, table) = match stream.rsplit_once('.') {
            Some((s, t)) => (Some(s), t),
            None => (None, stream),
        };
        let schema = self
            .config
            .schema
            .clone()
            .or(stream_schema.map(str::to_string))
            .unwrap_or_else(|| "public".to_string());
        let name = self
            .config
            .table
            .replace("{table}", table)
            .replace("{stream}", stream);
        TableName { schema, name }
    }

    /// The key of a batch's table: configured, else the source's primary key, else the
    /// target's.
    fn key_for(&self, schema: &Schema, info: Option<&TableInfo>) -> Vec<String> {
        if let Some(k) = &self.config.key {
            return k.clone();
        }
        if let Some(pk) = schema.metadata().get(PRIMARY_KEY_KEY) {
            return pk.split(',').map(str::to_string).collect();
        }
        info.map(|i| i.primary_key.clone()).unwrap_or_default()
    }

    /// The target table of `stream`, created or evolved to take `schema`'s columns.
    async fn ensure_table(&mut self, stream: &str, schema: &Schema) -> Result<TableInfo, PgError> {
        let target = self.target(stream);
        let cached = self.tables.get(stream).cloned();
        let needs_check = match &cached {
            None => true,
            Some(info) => schema
                .fields()
                .iter()
                .any(|f| info.column(f.name()).is_none()),
        };
        if !needs_check {
            return Ok(cached.expect("checked"));
        }
        let create = self.config.create_table;
        let policy = self.policy;
        let key_hint = self.key_for(schema, None);
        let client = self.client().await?;
        let mut info = table_info(client, &target).await?;
        if info.is_none() {
            if !create {
                return Err(PgError::Invalid(format!(
                    "table {} does not exist (set `create_table: true` to create it)",
                    target.stream()
                )));
            }
            let mut columns = Vec::new();
            for f in schema.fields() {
                let t = pg_type_for(f).ok_or_else(|| {
                    PgError::Data(format!(
                        "{stream}: column {} has Arrow type {}, which the PostgreSQL sink cannot create",
                        f.name(),
                        f.data_type()
                    ))
                })?;
                let not_null = if f.is_nullable() && !key_hint.contains(f.name()) {
                    ""
                } else {
                    " NOT NULL"
                };
                columns.push(format!("{} {t}{not_null}", ident(f.name())));
            }
            if !key_hint.is_empty() {
                let k: Vec<String> = key_hint.iter().map(|k| ident(k)).collect();
                columns.push(format!("PRIMARY KEY ({})", k.join(", ")));
            }
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {} ({})",
                target.quoted(),
                columns.join(", ")
            );
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| PgError::query(format!("create table {}", target.stream()), e))?;
            tracing::info!(table = %target.stream(), "created table");
            info = table_info(client, &target).await?;
        }
        let mut info =
            info.ok_or_else(|| PgError::Invalid(format!("table {} disappeared", target.stream())))?;
        let missing: Vec<_> = schema
            .fields()
            .iter()
            .filter(|f| info.column(f.name()).is_none())
            .collect();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|f| f.name().as_str()).collect();
            match policy {
                SchemaPolicy::Evolve => {
                    for f in &missing {
                        let t = pg_type_for(f).ok_or_else(|| {
                            PgError::Data(format!(
                                "{stream}: column {} has Arrow type {}, which the PostgreSQL sink cannot create",
                                f.name(),
                                f.data_type()
                            ))
                        })?;
                        let sql = format!(
                            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {t}",
                            target.quoted(),
                            ident(f.name())
                        );
                        client.batch_execute(&sql).await.map_err(|e| {
                            PgError::query(
                                format!("add column {} to {}", f.name(), target.stream()),
                                e,
                            )
                        })?;
                    }
                    tracing::info!(table = %target.stream(), columns = ?names, "added columns");
                    info = table_info(client, &target).await?.ok_or_else(|| {
                        PgError::Invalid(format!("table {} disappeared", target.stream()))
                    })?;
                }
                SchemaPolicy::DiscardColumns => {}
                SchemaPolicy::Freeze | SchemaPolicy::DiscardRows => {
                    return Err(PgError::Invalid(format!(
                        "table {} has no column {} and the schema policy is {} (use `evolve` to add \
                         columns or `discard_columns` to leave them out)",
                        target.stream(),
                        names.join(", "),
                        policy.as_str()
                    )));
                }
            }
        }
        self.tables.insert(stream.to_string(), info.clone());
        Ok(info)
    }

    /// Encodes the batch's columns that the table has as binary COPY data, in chunks.
    fn encode(
        data: &RecordBatch,
        info: &TableInfo,
        with_ordinal: bool,
    ) -> Result<(Vec<String>, Vec<bytes::Bytes>), PgError> {
        let schema = data.schema();
        let mut names = Vec::new();
        let mut encoders = Vec::new();
        for (i, f) in schema.fields().iter().enumerate() {
            let Some(col) = info.column(f.name()) else {
                continue; // discard_columns
            };
            // Column-level problems are `Invalid` (the same for every row); `Data` is kept
            // for a value of one row (see `is_row_error`).
            let target = TargetType::for_type(&col.typname).ok_or_else(|| {
                PgError::Invalid(format!(
                    "{}: column {} has type {}, which the PostgreSQL sink cannot write",
                    info.table.stream(),
                    col.name,
                    col.sql_type
                ))
            })?;
            encoders.push(
                ColumnEncoder::new(f.name(), data.column(i).clone(), target)
                    .map_err(|e| PgError::Invalid(format!("{}: {e}", info.table.stream())))?,
            );
            names.push(f.name().clone());
        }
        let fields = encoders.len() + with_ordinal as usize;
        let mut chunks = Vec::new();
        let mut buf = BytesMut::with_capacity(COPY_CHUNK + 4096);
        buf.put_slice(COPY_HEADER);
        for row in 0..data.num_rows() {
            buf.put_i16(fields as i16);
            for e in &encoders {
                e.encode(row, &mut buf)
                    .map_err(|e| PgError::Data(format!("{}: {e}", info.table.stream())))?;
            }
            if with_ordinal {
                buf.put_i32(8);
                buf.put_i64(row as i64);
            }
            if buf.len() >= COPY_CHUNK {
                chunks.push(buf.split().freeze());
            }
        }
        buf.put_i16(-1);
        chunks.push(buf.freeze());
        Ok((names, chunks))
    }

    async fn stored_position(&mut self, stream: &str) -> Result<Option<Position>, PgError> {
        let sql = format!(
            "SELECT position::text FROM {} WHERE pipeline = $1 AND stream = $2",
            self.positions_table.quoted()
        );
        let pipeline = self.pipeline.clone();
        let client = self.client().await?;
        let row = client
            .query_opt(&sql, &[&pipeline, &stream])
            .await
            .map_err(|e| PgError::query("read the stored position", e))?;
        row.map(|r| {
            Position::from_json_str(r.get::<_, &str>(0))
                .map_err(|e| PgError::Invalid(format!("stored position of {stream}: {e}")))
        })
        .transpose()
    }

    async fn write_batch(&mut self, batch: &Batch) -> Result<(), PgError> {
        let stream = batch.meta.stream.to_string();
        let envelope = crate::apply::is_envelope(&batch.data.schema());
        let table_schema = if envelope {
            crate::apply::row_schema(&batch.data.schema())?
        } else {
            batch.data.schema().as_ref().clone()
        };
        let info = if batch.num_rows() > 0 {
            Some(self.ensure_table(&stream, &table_schema).await?)
        } else {
            None
        };
        let key = self.key_for(&table_schema, info.as_ref());
        let mode = self.config.mode;
        let exactly_once = self.config.exactly_once;
        let positions = self.positions_table.quoted();
        let pipeline = self.pipeline.clone();
        let client = self.client().await?;
        let mut tx = client
            .transaction()
            .await
            .map_err(|e| PgError::query("BEGIN", e))?;
        let mut refused = Vec::new();
        if let (true, Some(info)) = (envelope, &info) {
            if key.is_empty() {
                return Err(PgError::Invalid(format!(
                    "{stream}: applying changes needs a key: set `key:` or give {} a primary key",
                    info.table.stream()
                )));
            }
            crate::apply::apply(&tx, &batch.data, info, &key).await?;
        } else if let Some(info) = &info {
            if mode == SinkMode::Upsert && key.is_empty() {
                return Err(PgError::Invalid(format!(
                    "{stream}: upsert needs a key: set `key:` or give {} a primary key",
                    info.table.stream()
                )));
            }
            // Halves a refused batch inside savepoints until the refused rows stand alone
            // (see `Self::write_rows`); the rest is written in this same transaction.
            let rows = batch.num_rows();
            let mut todo = vec![(0, rows)];
            while let Some((offset, len)) = todo.pop() {
                let part = batch.data.slice(offset, len);
                let savepoint = tx
                    .savepoint("tributary_rows")
                    .await
                    .map_err(|e| PgError::query("SAVEPOINT", e))?;
                match Self::write_rows(&savepoint, &stream, info, &key, mode, &part).await {
                    Ok(()) => savepoint
                        .commit()
                        .await
                        .map_err(|e| PgError::query("RELEASE SAVEPOINT", e))?,
                    Err(e) if is_row_error(&e) => {
                        savepoint
                            .rollback()
                            .await
                            .map_err(|e| PgError::query("ROLLBACK TO SAVEPOINT", e))?;
                        if len == 1 {
                            let why = match &e {
                                PgError::Query { source, .. } => format!(
                                    "{} refused the row: {}",
                                    info.table.stream(),
                                    crate::error::describe(source)
                                ),
                                other => other.to_string(),
                            };
                            refused.push((offset, why));
                        } else {
                            todo.push((offset + len / 2, len - len / 2));
                            todo.push((offset, len / 2));
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if exactly_once {
            let sql = format!(
                "INSERT INTO {positions} (pipeline, stream, position) VALUES ($1, $2, $3::text::jsonb) \
                 ON CONFLICT (pipeline, stream) DO UPDATE SET position = EXCLUDED.position, updated_at = now()"
            );
            let position = batch.meta.end.to_json_string();
            tx.execute(&sql, &[&pipeline, &stream, &position])
                .await
                .map_err(|e| PgError::query("store the position", e))?;
        }
        tx.commit().await.map_err(|e| PgError::query("COMMIT", e))?;
        for (row, message) in refused {
            let raw = tributary_formats::json::encode_rows(&batch.data.slice(row, 1), false)
                .map(|(bytes, _)| bytes)
                .unwrap_or_default();
            let meta = batch.meta.rows.as_ref().and_then(|r| r.get(row));
            self.rejected
                .push(Rejected::row(&stream, meta, message, raw));
        }
        Ok(())
    }

    /// Writes rows (all of a batch, or a part of it while looking for refused rows) into
    /// `info`'s table: binary COPY (append), or COPY into a staging table then
    /// `INSERT … ON CONFLICT` (upsert).
    async fn write_rows(
        tx: &tokio_postgres::Transaction<'_>,
        stream: &str,
        info: &TableInfo,
        key: &[String],
        mode: SinkMode,
        data: &RecordBatch,
    ) -> Result<(), PgError> {
        let target = info.table.quoted();
        let what = || {
            format!(
                "write {} rows into {}",
                data.num_rows(),
                info.table.stream()
            )
        };
        match mode {
            SinkMode::Append => {
                let (names, chunks) = Self::encode(data, info, false)?;
                let cols: Vec<String> = names.iter().map(|n| ident(n)).collect();
                let sql = format!(
                    "COPY {target} ({}) FROM STDIN (FORMAT binary)",
                    cols.join(", ")
                );
                copy_in(tx, &sql, chunks)
                    .await
                    .map_err(|e| PgError::query(what(), e))?;
            }
            SinkMode::Upsert => {
                let (names, chunks) = Self::encode(data, info, true)?;
                for k in key {
                    if !names.contains(k) {
                        return Err(PgError::Invalid(format!(
                            "{stream}: the upsert key column {k} is not in the batch"
                        )));
                    }
                }
                let cols: Vec<String> = names.iter().map(|n| ident(n)).collect();
                let keys: Vec<String> = key.iter().map(|k| ident(k)).collect();
                let stage = "tributary_stage";
                let sql = format!(
                    "CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {}, NULL::int8 AS tributary_ord \
                     FROM {target} WITH NO DATA",
                    cols.join(", ")
                );
                tx.batch_execute(&sql)
                    .await
                    .map_err(|e| PgError::query(what(), e))?;
                let sql = format!(
                    "COPY {stage} ({}, tributary_ord) FROM STDIN (FORMAT binary)",
                    cols.join(", ")
                );
                copy_in(tx, &sql, chunks)
                    .await
                    .map_err(|e| PgError::query(what(), e))?;
                let action = crate::apply::on_conflict_action(names.iter(), key);
                // The stage is dropped at once: a batch searched for refused rows is written
                // in parts, each staging anew.
                let sql = format!(
                    "INSERT INTO {target} ({cols}) SELECT DISTINCT ON ({keys}) {cols} FROM {stage} \
                     ORDER BY {keys}, tributary_ord DESC ON CONFLICT ({keys}) {action}; DROP TABLE {stage}",
                    cols = cols.join(", "),
                    keys = keys.join(", ")
                );
                tx.batch_execute(&sql)
                    .await
                    .map_err(|e| PgError::query(what(), e))?;
            }
        }
        Ok(())
    }
}

/// Whether the server refused rows for their content (SQLSTATE class 22, data exception:
/// a value out of range, a bad date; class 23, integrity constraint violation: a foreign key
/// to a row not there (yet), a NOT NULL or CHECK constraint, a duplicate key), or a value could
/// not be encoded: a part of the batch without the bad rows would be accepted. Anything else
/// (a broken connection, a missing privilege) is the same for every row.
fn is_row_error(e: &PgError) -> bool {
    match e {
        PgError::Query { source, .. } => source
            .code()
            .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23")),
        PgError::Data(_) => true,
        _ => false,
    }
}

async fn copy_in(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    chunks: Vec<bytes::Bytes>,
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in(sql).await?;
    futures_util::pin_mut!(sink);
    for chunk in chunks {
        sink.feed(chunk).await?;
    }
    sink.finish().await?;
    Ok(())
}

#[async_trait::async_trait]
impl Sink for PostgresSink {
    fn describe(&self) -> String {
        format!(
            "postgres {:?} table {}",
            self.config.mode, self.config.table
        )
    }

    async fn check(&mut self) -> Result<(), ConnectorError> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| PgError::query("SELECT 1", e))?;
        Ok(())
    }

    async fn open(&mut self, pipeline: &str) -> Result<(), ConnectorError> {
        self.pipeline = pipeline.to_string();
        if self.config.exactly_once {
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {} (pipeline text NOT NULL, stream text NOT NULL, \
                 position jsonb NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), \
                 PRIMARY KEY (pipeline, stream))",
                self.positions_table.quoted()
            );
            let what = format!("create {}", self.positions_table.stream());
            let positions_table = self.positions_table.clone();
            let client = self.client().await?;
            if let Err(e) = client.batch_execute(&sql).await {
                // Two pipelines creating it at once: one loses the race on the type's name.
                if table_info(client, &positions_table).await?.is_none() {
                    return Err(PgError::query(what, e).into());
                }
            }
        }
        Ok(())
    }

    async fn stored_positions(
        &mut self,
        pipeline: &str,
    ) -> Result<Vec<(String, Position)>, ConnectorError> {
        if !self.config.exactly_once {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT stream, position::text FROM {} WHERE pipeline = $1",
            self.positions_table.quoted()
        );
        let client = self.client().await?;
        let rows = client
            .query(&sql, &[&pipeline])
            .await
            .map_err(|e| PgError::query("read the stored positions", e))?;
        let mut out = BTreeMap::new();
        for r in rows {
            let stream: String = r.get(0);
            let position = Position::from_json_str(r.get::<_, &str>(1))
                .map_err(|e| PgError::Invalid(format!("stored position of {stream}: {e}")))?;
            out.insert(stream, position);
        }
        Ok(out.into_iter().collect())
    }

    async fn write(&mut self, batch: &Batch) -> Result<WriteOutcome, ConnectorError> {
        let stream = batch.meta.stream.to_string();
        if self.config.exactly_once {
            if let Some((s, end)) = self.uncertain.take() {
                // The last attempt failed, maybe after its COMMIT reached the server.
                if s == stream
                    && end == batch.meta.end
                    && self.stored_position(&stream).await? == Some(end)
                {
                    return Ok(WriteOutcome::Durable);
                }
            }
        }
        match self.write_batch(batch).await {
            Ok(()) => Ok(WriteOutcome::Durable),
            Err(e) => {
                self.uncertain = Some((stream, batch.meta.end.clone()));
                // The transaction rolled back (or the connection is gone): drop cached table
                // shapes, a retry looks again.
                self.tables.clear();
                Err(e.into())
            }
        }
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn wants_row_meta(&self) -> bool {
        true
    }

    async fn forget_positions(&mut self, pipeline: &str) -> Result<u64, ConnectorError> {
        if !self.config.exactly_once {
            return Ok(0);
        }
        let positions_table = self.positions_table.clone();
        let client = self.client().await?;
        if table_info(client, &positions_table).await?.is_none() {
            return Ok(0);
        }
        let sql = format!(
            "DELETE FROM {} WHERE pipeline = $1",
            positions_table.quoted()
        );
        let deleted = client
            .execute(&sql, &[&pipeline])
            .await
            .map_err(|e| PgError::query("delete the stored positions", e))?;
        Ok(deleted)
    }

    fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }
}
