//! The PostgreSQL source: snapshots and cursor-based incremental loads, streamed with binary
//! `COPY (SELECT …) TO STDOUT`.
//!
//! Each table is one stream (`schema.table`), read in the order of its key: the primary key
//! (or `key:`) for snapshots, `(cursor, key)` for incremental loads. The query appends the
//! ordering columns as `::text`, and a batch's end position is the text of its last row's
//! ordering values; a run resumes with `WHERE (k1, k2) > ('…'::t1, '…'::t2)`. So:
//!
//! - a `kill -9` mid-snapshot resumes after the last committed key, with no duplicate when
//!   the sink writes positions with the data (PostgreSQL sink), names files after positions
//!   (Parquet) or upserts;
//! - incremental ties are exact: rows that share the last cursor value are ordered by key,
//!   and the row-value comparison continues inside the tie.
//!
//! Batches are deterministic from a position as long as the rows do not change.
//!
//! A table without primary key and without `key:` is snapshotted in one pass whose
//! intermediate positions say "from the start": after a crash it is read again from its first
//! row (duplicates in an append sink; use `key:` with a unique column to avoid them).
//! Incremental mode needs a key (the tie-breaker) and refuses such tables.
//!
//! Incremental loads see what is committed when each query runs: a transaction that commits
//! later with an older cursor value (a long transaction that set `updated_at = now()` when it
//! began) is missed, as with any cursor-based load. Deleted rows are never seen. Change data
//! capture has neither limit.

use std::sync::Arc;

use arrow_array::{BooleanArray, RecordBatch};
use arrow_schema::{Schema, SchemaRef};
use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, NoTls};
use tributary_core::dead_letter::Rejected;
use tributary_core::error::ConnectorError;
use tributary_core::{Batch, BatchMeta, Position, Source, SourceContext, StreamInfo};

use crate::catalog::{ident, literal, matching_tables, table_info, TableInfo, TableName};
use crate::config::{PostgresSourceConfig, SourceMode};
use crate::error::PgError;
use crate::types::{ColumnKind, RowDecoder, Tuple, COPY_HEADER, PRIMARY_KEY_KEY};

/// Where a table's read stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablePosition {
    /// The ordering columns the values below belong to.
    pub order: Vec<String>,
    /// The last row's ordering values, as PostgreSQL text; `None`: from the start.
    #[serde(default)]
    pub after: Option<Vec<String>>,
    /// The snapshot finished (never set in incremental mode).
    #[serde(default)]
    pub complete: bool,
}

/// Connects to `url` and drives the connection on a task; the session reads and writes times
/// in UTC.
pub async fn connect(url: &str) -> Result<Client, PgError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| PgError::query("connect to PostgreSQL", e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection closed");
        }
    });
    client
        .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'")
        .await
        .map_err(|e| PgError::query("set up the session", e))?;
    Ok(client)
}

/// Reads PostgreSQL tables (`source: { kind: postgres }`).
pub struct PostgresSource {
    config: PostgresSourceConfig,
    url: String,
}

/// How one table is read: its columns as Arrow, the select list and the ordering.
pub(crate) struct TablePlan {
    pub(crate) info: TableInfo,
    schema: SchemaRef,
    kinds: Vec<ColumnKind>,
    select: Vec<String>,
    order: Vec<String>,
    key: Vec<String>,
}

impl TablePlan {
    /// The key columns (primary key or `key:`).
    pub(crate) fn key(&self) -> Vec<String> {
        self.key.clone()
    }
}

impl PostgresSource {
    /// A source for `config`.
    pub fn new(config: PostgresSourceConfig) -> Result<Self, tributary_core::config::ConfigError> {
        config.validate()?;
        let url = config.url.resolve("source.url")?;
        Ok(PostgresSource { config, url })
    }

    fn plan(&self, info: TableInfo) -> Result<TablePlan, PgError> {
        let stream = info.table.stream();
        let key = match &self.config.key {
            Some(k) => k.clone(),
            None => info.primary_key.clone(),
        };
        for k in &key {
            if info.column(k).is_none() {
                return Err(PgError::Invalid(format!(
                    "{stream}: key column {k:?} does not exist"
                )));
            }
        }
        let order = match self.config.mode {
            SourceMode::Snapshot | SourceMode::Cdc => key.clone(),
            SourceMode::Incremental => {
                let cursor = self.config.cursor.clone().unwrap_or_default();
                if info.column(&cursor).is_none() {
                    return Err(PgError::Invalid(format!(
                        "{stream}: cursor column {cursor:?} does not exist"
                    )));
                }
                if key.is_empty() {
                    return Err(PgError::Invalid(format!(
                        "{stream} has no primary key: incremental mode needs one to order rows \
                         that share a cursor value (set `key:` to unique columns)"
                    )));
                }
                let mut order = vec![cursor.clone()];
                order.extend(key.iter().filter(|k| **k != cursor).cloned());
                order
            }
        };
        let mut fields = Vec::with_capacity(info.columns.len());
        let mut kinds = Vec::with_capacity(info.columns.len());
        let mut select = Vec::with_capacity(info.columns.len());
        for c in &info.columns {
            match ColumnKind::for_type(&c.typname, c.typmod) {
                Some(kind) => {
                    fields.push(kind.field(&c.name, c.nullable, &c.typname));
                    select.push(format!("t.{}", ident(&c.name)));
                    kinds.push(kind);
                }
                None => {
                    let kind = ColumnKind::Text;
                    fields.push(kind.field(&c.name, c.nullable, "text"));
                    select.push(format!("t.{}::text AS {}", ident(&c.name), ident(&c.name)));
                    kinds.push(kind);
                }
            }
        }
        let mut schema = Schema::new(fields);
        if !key.is_empty() {
            schema = schema.with_metadata(std::collections::HashMap::from([(
                PRIMARY_KEY_KEY.to_string(),
                key.join(","),
            )]));
        }
        Ok(TablePlan {
            info,
            schema: Arc::new(schema),
            kinds,
            select,
            order,
            key,
        })
    }

    /// The `COPY (SELECT …) TO STDOUT` statement that reads `plan` after `after`.
    fn copy_statement(&self, plan: &TablePlan, after: Option<&[String]>) -> String {
        let mut select = plan.select.clone();
        for (i, o) in plan.order.iter().enumerate() {
            select.push(format!("t.{}::text AS tributary_k{i}", ident(o)));
        }
        let mut sql = format!(
            "COPY (SELECT {} FROM {} AS t",
            select.join(", "),
            plan.info.table.quoted()
        );
        let mut conditions = Vec::new();
        if self.config.mode == SourceMode::Incremental {
            conditions.push(format!("t.{} IS NOT NULL", ident(&plan.order[0])));
        }
        if let Some(after) = after {
            let cols: Vec<String> = plan
                .order
                .iter()
                .map(|o| format!("t.{}", ident(o)))
                .collect();
            let values: Vec<String> = plan
                .order
                .iter()
                .zip(after)
                .map(|(o, v)| {
                    let sql_type = &plan.info.column(o).expect("checked in plan").sql_type;
                    format!("{}::{sql_type}", literal(v))
                })
                .collect();
            conditions.push(format!("({}) > ({})", cols.join(", "), values.join(", ")));
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        if !plan.order.is_empty() {
            let cols: Vec<String> = plan
                .order
                .iter()
                .map(|o| format!("t.{}", ident(o)))
                .collect();
            sql.push_str(" ORDER BY ");
            sql.push_str(&cols.join(", "));
        }
        sql.push_str(") TO STDOUT (FORMAT binary)");
        sql
    }

    async fn read_table(
        &self,
        client: &Client,
        ctx: &SourceContext,
        plan: TablePlan,
    ) -> Result<(), ConnectorError> {
        let stream_name = plan.info.table.stream();
        let stream: Arc<str> = stream_name.as_str().into();
        let mut position = TablePosition {
            order: plan.order.clone(),
            after: None,
            complete: false,
        };
        if let Some(p) = ctx.checkpoint(&stream_name) {
            let stored: TablePosition = p.decode().map_err(|e| {
                PgError::Invalid(format!("{stream_name}: stored position {p}: {e}"))
            })?;
            if stored.order != plan.order {
                return Err(ConnectorError::fatal(PgError::Invalid(format!(
                    "{stream_name}: the stored position orders rows by {:?}, the configuration by \
                     {:?}",
                    stored.order, plan.order
                )))
                .with_hint(format!(
                    "tributary state reset {} to read the table again",
                    ctx.pipeline()
                )));
            }
            position = stored;
        }
        if position.complete {
            tracing::info!(stream = %stream_name, "snapshot already complete; reset the pipeline's state to take a new one");
            return Ok(());
        }
        if plan.order.is_empty() && position.after.is_none() {
            tracing::warn!(stream = %stream_name, "table has no primary key and no `key:` is set: a crash restarts its snapshot from the first row");
        }
        let sql = self.copy_statement(&plan, position.after.as_deref());
        tracing::debug!(stream = %stream_name, sql = %sql, "reading");
        let copy = client
            .copy_out(sql.as_str())
            .await
            .map_err(|e| PgError::query(format!("COPY {stream_name}"), e))?;
        futures_util::pin_mut!(copy);
        let batch_rows = self.config.batch_rows.get();
        let mut decoder = RowDecoder::new(plan.kinds.clone(), plan.order.len(), batch_rows);
        let mut buf = BytesMut::new();
        let mut header_seen = false;
        let mut ended = false;
        let mut batch_bytes = 0u64;
        let mut start = Position::encode(&position).map_err(ConnectorError::fatal)?;
        while let Some(chunk) = copy.next().await {
            let chunk = chunk.map_err(|e| PgError::query(format!("COPY {stream_name}"), e))?;
            batch_bytes += chunk.len() as u64;
            buf.extend_from_slice(&chunk);
            if !header_seen {
                if buf.len() < COPY_HEADER.len() {
                    continue;
                }
                if buf[..11] != COPY_HEADER[..11] {
                    return Err(
                        PgError::Data(format!("{stream_name}: not a binary COPY stream")).into(),
                    );
                }
                let ext = u32::from_be_bytes(buf[15..19].try_into().unwrap()) as usize;
                if buf.len() < 19 + ext {
                    continue;
                }
                buf.advance(19 + ext);
                header_seen = true;
            }
            loop {
                if ended {
                    break;
                }
                match decoder
                    .decode_tuple(&buf)
                    .map_err(|e| PgError::Data(format!("{stream_name}: {e}")))?
                {
                    None => break,
                    Some((used, Tuple::End)) => {
                        buf.advance(used);
                        ended = true;
                    }
                    Some((used, Tuple::Row)) => {
                        buf.advance(used);
                        if decoder.rows() >= batch_rows {
                            start = self
                                .emit(
                                    ctx,
                                    &plan,
                                    &stream,
                                    &mut decoder,
                                    &mut position,
                                    start,
                                    batch_bytes,
                                )
                                .await?;
                            batch_bytes = 0;
                            if ctx.is_stopping() {
                                return Ok(());
                            }
                        }
                    }
                }
            }
        }
        if decoder.rows() > 0 {
            start = self
                .emit(
                    ctx,
                    &plan,
                    &stream,
                    &mut decoder,
                    &mut position,
                    start,
                    batch_bytes,
                )
                .await?;
        }
        if self.config.mode == SourceMode::Snapshot && !ctx.is_stopping() {
            // An empty batch marks the snapshot complete once everything before it is durable.
            position.complete = true;
            let end = Position::encode(&position).map_err(ConnectorError::fatal)?;
            let data = RecordBatch::new_empty(plan.schema.clone());
            ctx.emit(Batch {
                data,
                meta: BatchMeta::new(stream.clone(), start, end, 0),
            })
            .await
            .ok();
        }
        Ok(())
    }

    /// Emits what the decoder holds; returns the next batch's start position.
    #[allow(clippy::too_many_arguments)]
    async fn emit(
        &self,
        ctx: &SourceContext,
        plan: &TablePlan,
        stream: &Arc<str>,
        decoder: &mut RowDecoder,
        position: &mut TablePosition,
        start: Position,
        bytes: u64,
    ) -> Result<Position, ConnectorError> {
        if !plan.order.is_empty() {
            let key: Option<Vec<String>> = decoder.last_key().iter().cloned().collect();
            position.after =
                Some(key.ok_or_else(|| PgError::Data(format!("{stream}: a key value is null")))?);
        }
        let end = Position::encode(&*position).map_err(ConnectorError::fatal)?;
        let (arrays, bad) = decoder.finish();
        let mut data = RecordBatch::try_new(plan.schema.clone(), arrays)
            .map_err(|e| PgError::Data(format!("{stream}: {e}")))?;
        if !bad.is_empty() {
            let mut keep = vec![true; data.num_rows()];
            for (row, reason) in &bad {
                keep[*row] = false;
                let rejected = Rejected {
                    stream: stream.to_string(),
                    position: Some(start.clone()),
                    message: reason.clone(),
                    location: Some(format!(
                        "{stream}: row {} of the batch after {start}",
                        row + 1
                    )),
                    raw: Vec::new(),
                    headers: Vec::new(),
                };
                if ctx.reject(rejected).await.is_err() {
                    return Ok(end);
                }
            }
            data = arrow_select::filter::filter_record_batch(&data, &BooleanArray::from(keep))
                .map_err(|e| PgError::Data(format!("{stream}: {e}")))?;
        }
        let _ = ctx
            .emit(Batch {
                data,
                meta: BatchMeta::new(stream.clone(), start, end.clone(), bytes),
            })
            .await;
        Ok(end)
    }

    pub(crate) fn config(&self) -> &PostgresSourceConfig {
        &self.config
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) async fn plans(&self, client: &Client) -> Result<Vec<TablePlan>, PgError> {
        let tables: Vec<TableName> = matching_tables(client, &self.config.tables).await?;
        let mut plans = Vec::with_capacity(tables.len());
        for t in tables {
            let info = table_info(client, &t)
                .await?
                .ok_or_else(|| PgError::Invalid(format!("table {} disappeared", t.stream())))?;
            plans.push(self.plan(info)?);
        }
        Ok(plans)
    }
}

#[async_trait::async_trait]
impl Source for PostgresSource {
    fn describe(&self) -> String {
        format!(
            "postgres {:?} {}",
            self.config.mode,
            self.config.tables.join(",")
        )
    }

    async fn check(&mut self) -> Result<(), ConnectorError> {
        let client = connect(&self.url).await?;
        self.plans(&client).await?;
        Ok(())
    }

    async fn discover(&mut self) -> Result<Vec<StreamInfo>, ConnectorError> {
        let client = connect(&self.url).await?;
        Ok(self
            .plans(&client)
            .await?
            .into_iter()
            .map(|p| StreamInfo {
                name: p.info.table.stream(),
                schema: Some(p.schema.clone()),
                detail: Some(if p.order.is_empty() {
                    "no primary key".to_string()
                } else {
                    format!("ordered by {}", p.order.join(", "))
                }),
            })
            .collect())
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        if self.config.mode == SourceMode::Cdc {
            return crate::cdc::run(self, ctx).await;
        }
        let client = connect(&self.url).await?;
        for plan in self.plans(&client).await? {
            if ctx.is_stopping() {
                break;
            }
            self.read_table(&client, &ctx, plan).await?;
        }
        Ok(())
    }
}
