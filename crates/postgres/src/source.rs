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
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls};
use tributary_core::dead_letter::Rejected;
use tributary_core::error::ConnectorError;
use tributary_core::{Batch, BatchMeta, Position, Source, SourceContext, StreamInfo};

use crate::catalog::{ident, literal, matching_tables, table_info, TableInfo, TableName};
use crate::config::{PostgresSourceConfig, SourceMode};
use crate::copy::{Chunk, CopyBatches};
use crate::error::PgError;
use crate::types::{ColumnKind, PRIMARY_KEY_KEY};

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
    /// The key ranges of a snapshot read in parallel (`parallel:`), each with its own
    /// progress; empty when the table is read in one range (then `after` is its progress).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<KeyRange>,
}

/// One range of an integer key, read by its own connection: `from <= key < to`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// The first key of the range; `None`: unbounded (the first range).
    #[serde(default)]
    pub from: Option<i64>,
    /// The key the range ends before; `None`: unbounded (the last range).
    #[serde(default)]
    pub to: Option<i64>,
    /// The last key read in the range, as PostgreSQL text; `None`: from its start.
    #[serde(default)]
    pub after: Option<String>,
    /// Every row of the range was read.
    #[serde(default)]
    pub done: bool,
}

/// Up to `parts` ranges of about equal width covering every key, split between `lo` and
/// `hi` (the smallest and largest key): the first and last are unbounded, so rows added
/// outside `[lo, hi]` before a resumed run are still read. Fewer when there are fewer keys.
pub fn key_ranges(lo: i64, hi: i64, parts: usize) -> Vec<KeyRange> {
    let width = i128::from(hi) - i128::from(lo) + 1;
    let parts = (parts as i128).min(width).max(1);
    let bounds: Vec<i64> = (1..parts)
        .map(|i| (i128::from(lo) + width * i / parts) as i64)
        .collect();
    let mut ranges = Vec::with_capacity(bounds.len() + 1);
    let mut from = None;
    for b in bounds {
        ranges.push(KeyRange {
            from,
            to: Some(b),
            ..KeyRange::default()
        });
        from = Some(b);
    }
    ranges.push(KeyRange {
        from,
        ..KeyRange::default()
    });
    ranges
}

/// What a range reader sends: a batch of its range (`None`: the table in one range), or that
/// the range is read.
pub(crate) enum Read {
    Chunk(Option<usize>, Chunk),
    Done(usize),
}

/// Reads one range (or a whole table) on a connection of its own.
pub(crate) struct RangeReader {
    pub(crate) url: String,
    /// An open connection to read on (a table read in one range); else it opens its own.
    pub(crate) client: Option<Arc<Client>>,
    /// A binary COPY of `kinds` followed by `key_columns` text key columns.
    pub(crate) sql: String,
    /// A snapshot exported by another connection, to read in.
    pub(crate) snapshot: Option<String>,
    /// What is read, for errors (`public.orders (key range 2)`).
    pub(crate) what: String,
    pub(crate) kinds: Vec<ColumnKind>,
    pub(crate) key_columns: usize,
    pub(crate) batch_rows: usize,
    /// The tag of its batches.
    pub(crate) range: Option<usize>,
}

impl RangeReader {
    pub(crate) async fn run(self, tx: &mpsc::Sender<Result<Read, PgError>>) -> Result<(), PgError> {
        let client = match self.client {
            Some(c) => c,
            None => Arc::new(connect(&self.url).await?),
        };
        if let Some(snapshot) = &self.snapshot {
            client
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                    literal(snapshot)
                ))
                .await
                .map_err(|e| PgError::query(format!("{}: import the snapshot", self.what), e))?;
        }
        let mut copy = CopyBatches::start(
            &client,
            &self.sql,
            &self.what,
            self.kinds,
            self.key_columns,
            self.batch_rows,
        )
        .await?;
        while let Some(chunk) = copy.next().await? {
            if tx.send(Ok(Read::Chunk(self.range, chunk))).await.is_err() {
                return Ok(()); // the table's read stopped
            }
        }
        if let Some(r) = self.range {
            let _ = tx.send(Ok(Read::Done(r))).await;
        }
        Ok(())
    }
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

    /// Whether the key is one integer column (what key ranges need).
    pub(crate) fn integer_key(&self) -> bool {
        match self.key.as_slice() {
            [k] => self
                .info
                .column(k)
                .is_some_and(|c| matches!(c.typname.as_str(), "int2" | "int4" | "int8")),
            _ => false,
        }
    }

    /// Up to `parallel` ranges of the (integer) key between its smallest and largest value as
    /// `client` sees them; none for an empty table.
    pub(crate) async fn ranges(
        &self,
        client: &Client,
        parallel: usize,
    ) -> Result<Vec<KeyRange>, PgError> {
        let key = ident(&self.key[0]);
        let bounds = client
            .query_one(
                &format!(
                    "SELECT min({key})::int8, max({key})::int8 FROM {}",
                    self.info.table.quoted()
                ),
                &[],
            )
            .await
            .map_err(|e| {
                PgError::query(
                    format!("{}: find the key's bounds", self.info.table.stream()),
                    e,
                )
            })?;
        Ok(
            match (
                bounds.get::<_, Option<i64>>(0),
                bounds.get::<_, Option<i64>>(1),
            ) {
                (Some(lo), Some(hi)) => key_ranges(lo, hi, parallel),
                _ => Vec::new(),
            },
        )
    }

    /// The `WHERE` conditions of one key range (`t.` the table's alias).
    pub(crate) fn range_conditions(&self, range: &KeyRange) -> Vec<String> {
        let key = ident(&self.key[0]);
        let mut conditions = Vec::new();
        if let Some(from) = range.from {
            conditions.push(format!("t.{key} >= {from}"));
        }
        if let Some(to) = range.to {
            conditions.push(format!("t.{key} < {to}"));
        }
        conditions
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

    /// The `COPY (SELECT …) TO STDOUT` statement that reads `plan` after `after`, within
    /// `range` if given.
    fn copy_statement(
        &self,
        plan: &TablePlan,
        range: Option<&KeyRange>,
        after: Option<&[String]>,
    ) -> String {
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
        if let Some(range) = range {
            conditions.extend(plan.range_conditions(range));
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
        client: &Arc<Client>,
        ctx: &SourceContext,
        plan: TablePlan,
    ) -> Result<(), ConnectorError> {
        let stream_name = plan.info.table.stream();
        let stream: Arc<str> = stream_name.as_str().into();
        let mut position = TablePosition {
            order: plan.order.clone(),
            ..TablePosition::default()
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
        let parallel = self.config.parallel.get();
        // A fresh parallel snapshot: key ranges read in one snapshot exported by `client`.
        let mut exported = None;
        if parallel > 1 && position.ranges.is_empty() && position.after.is_none() {
            if let Some((ranges, snapshot)) = self.split(client, &plan, parallel).await? {
                tracing::info!(stream = %stream_name, ranges = ranges.len(), "reading key ranges in parallel");
                position.ranges = ranges;
                exported = Some(snapshot);
            }
        } else if parallel > 1 && position.ranges.is_empty() {
            tracing::info!(stream = %stream_name, "resuming a snapshot that was read in one range: it goes on in one range");
        }

        // One reader per range still to read, each on its own connection (or one for the
        // whole table, on `client`); their batches are emitted here, one at a time, so every end position
        // holds every range's progress.
        let readers: Vec<Option<usize>> = if position.ranges.is_empty() {
            vec![None]
        } else {
            (0..position.ranges.len())
                .filter(|r| !position.ranges[*r].done)
                .map(Some)
                .collect()
        };
        let (tx, mut rx) = mpsc::channel(readers.len().max(2));
        let mut tasks = JoinSet::new();
        for range in readers {
            let sql = match range {
                None => self.copy_statement(&plan, None, position.after.as_deref()),
                Some(r) => {
                    let kr = &position.ranges[r];
                    self.copy_statement(
                        &plan,
                        Some(kr),
                        kr.after.as_ref().map(std::slice::from_ref),
                    )
                }
            };
            let reader = RangeReader {
                url: self.url.clone(),
                // One range reads on the source's connection; parallel ones on their own.
                client: range.is_none().then(|| client.clone()),
                sql,
                snapshot: exported.clone(),
                what: match range {
                    None => stream_name.clone(),
                    Some(r) => format!("{stream_name} (key range {})", r + 1),
                },
                kinds: plan.kinds.clone(),
                key_columns: plan.order.len(),
                batch_rows: self.config.batch_rows.get(),
                range,
            };
            let tx = tx.clone();
            tasks.spawn(async move {
                if let Err(e) = reader.run(&tx).await {
                    let _ = tx.send(Err(e)).await;
                }
            });
        }
        drop(tx);
        let mut start = Position::encode(&position).map_err(ConnectorError::fatal)?;
        while let Some(read) = rx.recv().await {
            match read? {
                Read::Chunk(range, chunk) => {
                    start = self
                        .emit(ctx, &plan, &stream, chunk, range, &mut position, start)
                        .await?;
                    if ctx.is_stopping() {
                        return Ok(());
                    }
                }
                Read::Done(range) => position.ranges[range].done = true,
            }
        }
        // Every reader dropped its sender; one that panicked did so without an error message.
        while let Some(joined) = tasks.join_next().await {
            joined.map_err(|e| PgError::Data(format!("{stream_name}: a reader failed: {e}")))?;
        }
        if exported.is_some() {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| PgError::query("end the exported snapshot", e))?;
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

    /// Splits `plan`'s table into up to `parallel` ranges of its key, in a snapshot exported
    /// for the readers: `None` when the key is not one integer column or the table is empty
    /// (it is then read in one range).
    async fn split(
        &self,
        client: &Client,
        plan: &TablePlan,
        parallel: usize,
    ) -> Result<Option<(Vec<KeyRange>, String)>, PgError> {
        if !plan.integer_key() {
            tracing::warn!(stream = %plan.info.table.stream(), "`parallel` needs a key of one integer column: reading the table in one range");
            return Ok(None);
        }
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| PgError::query("begin the snapshot", e))?;
        let snapshot: String = client
            .query_one("SELECT pg_export_snapshot()", &[])
            .await
            .map_err(|e| PgError::query("export the snapshot", e))?
            .get(0);
        let ranges = plan.ranges(client, parallel).await?;
        if ranges.len() < 2 {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| PgError::query("end the snapshot", e))?;
            return Ok(None);
        }
        Ok(Some((ranges, snapshot)))
    }

    /// Emits one chunk of `range` (`None`: the table read in one range); returns the next
    /// batch's start position.
    #[allow(clippy::too_many_arguments)]
    async fn emit(
        &self,
        ctx: &SourceContext,
        plan: &TablePlan,
        stream: &Arc<str>,
        chunk: Chunk,
        range: Option<usize>,
        position: &mut TablePosition,
        start: Position,
    ) -> Result<Position, ConnectorError> {
        if !plan.order.is_empty() {
            let key: Vec<String> = chunk
                .last_key
                .into_iter()
                .collect::<Option<_>>()
                .ok_or_else(|| PgError::Data(format!("{stream}: a key value is null")))?;
            match range {
                None => position.after = Some(key),
                Some(r) => position.ranges[r].after = key.into_iter().next(),
            }
        }
        let end = Position::encode(&*position).map_err(ConnectorError::fatal)?;
        let mut data = RecordBatch::try_new(plan.schema.clone(), chunk.arrays)
            .map_err(|e| PgError::Data(format!("{stream}: {e}")))?;
        if !chunk.bad.is_empty() {
            let mut keep = vec![true; data.num_rows()];
            for (row, reason) in &chunk.bad {
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
                meta: BatchMeta::new(stream.clone(), start, end.clone(), chunk.bytes),
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
        let client = Arc::new(connect(&self.url).await?);
        for plan in self.plans(&client).await? {
            if ctx.is_stopping() {
                break;
            }
            self.read_table(&client, &ctx, plan).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key in `[lo, hi]` (and beyond) falls in exactly one range.
    fn covers(ranges: &[KeyRange], keys: impl Iterator<Item = i64>) {
        for k in keys {
            let n = ranges
                .iter()
                .filter(|r| r.from.is_none_or(|f| f <= k) && r.to.is_none_or(|t| k < t))
                .count();
            assert_eq!(n, 1, "key {k} in {n} ranges: {ranges:?}");
        }
    }

    #[test]
    fn key_ranges_partition_the_keys_evenly_and_never_overflow() {
        let r = key_ranges(1, 100, 4);
        assert_eq!(
            r.iter().map(|r| (r.from, r.to)).collect::<Vec<_>>(),
            [
                (None, Some(26)),
                (Some(26), Some(51)),
                (Some(51), Some(76)),
                (Some(76), None)
            ]
        );
        covers(&r, -5..110);
        // Fewer keys than parts: one range per key.
        let r = key_ranges(7, 9, 8);
        assert_eq!(r.len(), 3);
        covers(&r, 0..20);
        assert_eq!(key_ranges(5, 5, 4).len(), 1);
        let r = key_ranges(i64::MIN, i64::MAX, 3);
        assert_eq!(r.len(), 3);
        covers(&r, [i64::MIN, -1, 0, 1, i64::MAX].into_iter());
    }
}
