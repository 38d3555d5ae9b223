//! Change data capture: a consistent snapshot, then the changes, over logical replication
//! with `pgoutput` (`mode: cdc`).
//!
//! On the first run the source creates the publication (`FOR TABLE` the configured tables) and
//! the slot when absent, with `CREATE_REPLICATION_SLOT … LOGICAL pgoutput EXPORT_SNAPSHOT` on
//! a replication connection. While that connection waits, a second connection reads every
//! table in a `REPEATABLE READ` transaction that imports the exported snapshot
//! (`SET TRANSACTION SNAPSHOT`): the snapshot sees exactly the transactions committed before
//! the slot's consistent point, and streaming starts at that point, so the handover has no gap
//! and no duplicate. Snapshot rows are `op: r` events.
//!
//! Every row is a Debezium-style envelope: `op` (`r` snapshot, `c`, `u`, `d`, `t` truncate),
//! `before` and `after` (structs of the table's columns as PostgreSQL text; the column's type
//! is in the field metadata `tributary.pg_sql_type`), `source` (`db`, `schema`, `table`,
//! `lsn`, `txid`, `ts_ms`) and `ts_ms` (when tributary read it). `before` holds the old key
//! when an update changed it, and the whole old row with `REPLICA IDENTITY FULL`; for a
//! delete, the key (or the whole row with `FULL`). A TOASTed value an update did not change is
//! not sent by PostgreSQL: it is null in `after` and its column is named in
//! `unchanged_toast`.
//!
//! Positions: each table's stream stores `{"lsn": <end of the last transaction in the
//! batch>}`. Batches end on transaction boundaries. On restart, streaming resumes at the
//! lowest stored LSN and each stream skips the transactions at or before its own LSN, so
//! nothing is applied twice. The slot's confirmed flush LSN is sent to the server only once
//! every batch up to it is committed (the runtime's commit channel), on every commit, on each
//! keepalive that asks for a reply, and every `status_interval` while idle, so the server can
//! free WAL. If the slot was dropped, or invalidated by the server (`max_slot_wal_keep_size`:
//! the WAL it held was removed), the run stops with a clear error: a new slot cannot continue
//! where the old one was without a gap.
//!
//! A run interrupted during the initial snapshot cannot resume it (the exported snapshot
//! died with its connection): the next run drops the unused slot, creates a new one and takes
//! the snapshot again, each table's rows preceded by a truncate event (`op: t`), so that a
//! sink applying changes (the PostgreSQL sink) clears what the interrupted attempt wrote.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow_array::builder::{Int64Builder, StringBuilder};
use arrow_array::{Array, ArrayRef, RecordBatch, StructArray};
use arrow_buffer::NullBuffer;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tributary_core::error::ConnectorError;
use tributary_core::{Batch, BatchMeta, Position, SourceContext};

use crate::catalog::{ident, literal};
use crate::copy::CopyBatches;
use crate::error::PgError;
use crate::replication::pgoutput::{self, Value};
use crate::replication::{format_lsn, parse_lsn, ReplicationConnection, ReplicationMessage};
use crate::source::{connect, PostgresSource, TablePlan};
use crate::source::{RangeReader, Read};
use crate::types::{ColumnKind, PRIMARY_KEY_KEY};

/// Field metadata key with a column's SQL type (`numeric(12,2)`), in CDC envelopes.
pub const PG_SQL_TYPE_KEY: &str = "tributary.pg_sql_type";
/// Schema metadata key marking a Debezium-style envelope batch.
pub const ENVELOPE_KEY: &str = "tributary.envelope";

/// Where a table's change stream stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdcPosition {
    /// The end LSN of the last transaction covered.
    pub lsn: u64,
    /// Still inside the initial snapshot.
    #[serde(default)]
    pub snapshot: bool,
    /// Rows of the table's initial snapshot read so far (keeps snapshot positions distinct).
    #[serde(default)]
    pub rows: u64,
    /// Inside a transaction too large for one batch: its commit LSN (`final_lsn` of its
    /// `Begin`). `lsn` is then the end of the transaction before it, and `txn_rows` says how
    /// many of this table's changes in it are covered.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub txn: u64,
    /// This table's changes of transaction `txn` covered (see `txn`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub txn_rows: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl CdcPosition {
    /// After the transaction ending at `lsn`.
    fn at(lsn: u64) -> Self {
        CdcPosition {
            lsn,
            snapshot: false,
            rows: 0,
            txn: 0,
            txn_rows: 0,
        }
    }
}

/// One change of one row.
struct Event {
    op: &'static str,
    before: Option<Vec<Value>>,
    after: Option<Vec<Value>>,
    lsn: u64,
    xid: u32,
    ts_ms: i64,
}

/// What the stream knows about a table.
struct Table {
    stream: Arc<str>,
    schema_name: String,
    table: String,
    columns: Vec<(String, String)>,
    key: Vec<String>,
    envelope: SchemaRef,
}

impl Table {
    fn new(
        schema_name: &str,
        table: &str,
        columns: Vec<(String, String)>,
        key: Vec<String>,
    ) -> Self {
        let envelope = envelope_schema(&columns, &key);
        Table {
            stream: format!("{schema_name}.{table}").into(),
            schema_name: schema_name.to_string(),
            table: table.to_string(),
            columns,
            key,
            envelope,
        }
    }
}

fn envelope_schema(columns: &[(String, String)], key: &[String]) -> SchemaRef {
    let row: Fields = columns
        .iter()
        .map(|(name, sql_type)| {
            Field::new(name, DataType::Utf8, true).with_metadata(HashMap::from([(
                PG_SQL_TYPE_KEY.to_string(),
                sql_type.clone(),
            )]))
        })
        .collect();
    let source: Fields = vec![
        Field::new("db", DataType::Utf8, false),
        Field::new("schema", DataType::Utf8, false),
        Field::new("table", DataType::Utf8, false),
        Field::new("lsn", DataType::Int64, false),
        Field::new("txid", DataType::Int64, true),
        Field::new("ts_ms", DataType::Int64, true),
    ]
    .into();
    let mut metadata = HashMap::from([(ENVELOPE_KEY.to_string(), "debezium".to_string())]);
    if !key.is_empty() {
        metadata.insert(PRIMARY_KEY_KEY.to_string(), key.join(","));
    }
    Arc::new(
        Schema::new(vec![
            Field::new("op", DataType::Utf8, false),
            Field::new("before", DataType::Struct(row.clone()), true),
            Field::new("after", DataType::Struct(row), true),
            Field::new("source", DataType::Struct(source), false),
            Field::new("unchanged_toast", DataType::Utf8, true),
            Field::new("ts_ms", DataType::Int64, false),
        ])
        .with_metadata(metadata),
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The `before` or `after` rows of `events` as a struct array (null where the event has none).
fn row_struct(
    table: &Table,
    events: &[Event],
    pick: fn(&Event) -> Option<&Vec<Value>>,
) -> StructArray {
    let n = events.len();
    let mut builders: Vec<StringBuilder> = (0..table.columns.len())
        .map(|_| StringBuilder::new())
        .collect();
    let mut valid = Vec::with_capacity(n);
    for e in events {
        let row = pick(e);
        valid.push(row.is_some());
        for (i, b) in builders.iter_mut().enumerate() {
            match row.and_then(|r| r.get(i)) {
                Some(Value::Text(s)) => b.append_value(s),
                _ => b.append_null(),
            }
        }
    }
    let DataType::Struct(fields) = table.envelope.field(1).data_type().clone() else {
        unreachable!("the envelope's before is a struct")
    };
    let arrays: Vec<ArrayRef> = builders
        .iter_mut()
        .map(|b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    StructArray::new(fields, arrays, Some(NullBuffer::from(valid)))
}

/// Builds an envelope batch from events.
fn envelope_batch(table: &Table, db: &str, events: &[Event]) -> Result<RecordBatch, PgError> {
    let n = events.len();
    let mut op = StringBuilder::with_capacity(n, n);
    let mut unchanged = StringBuilder::new();
    let before = row_struct(table, events, |e| e.before.as_ref());
    let after = row_struct(table, events, |e| e.after.as_ref());
    let mut s_db = StringBuilder::new();
    let mut s_schema = StringBuilder::new();
    let mut s_table = StringBuilder::new();
    let mut s_lsn = Int64Builder::new();
    let mut s_txid = Int64Builder::new();
    let mut s_ts = Int64Builder::new();
    let mut ts = Int64Builder::new();
    let now = now_ms();
    for e in events {
        op.append_value(e.op);
        let toast: Vec<&str> = e
            .after
            .iter()
            .flat_map(|r| r.iter().enumerate())
            .filter(|(_, v)| **v == Value::Unchanged)
            .map(|(i, _)| table.columns[i].0.as_str())
            .collect();
        if toast.is_empty() {
            unchanged.append_null();
        } else {
            unchanged.append_value(toast.join(","));
        }
        s_db.append_value(db);
        s_schema.append_value(&table.schema_name);
        s_table.append_value(&table.table);
        s_lsn.append_value(e.lsn as i64);
        if e.xid == 0 {
            s_txid.append_null();
            s_ts.append_null();
        } else {
            s_txid.append_value(e.xid as i64);
            s_ts.append_value(e.ts_ms);
        }
        ts.append_value(now);
    }
    let DataType::Struct(source_fields) = table.envelope.field(3).data_type().clone() else {
        unreachable!("source is a struct")
    };
    let source = StructArray::new(
        source_fields,
        vec![
            Arc::new(s_db.finish()),
            Arc::new(s_schema.finish()),
            Arc::new(s_table.finish()),
            Arc::new(s_lsn.finish()),
            Arc::new(s_txid.finish()),
            Arc::new(s_ts.finish()),
        ],
        None,
    );
    RecordBatch::try_new(
        table.envelope.clone(),
        vec![
            Arc::new(op.finish()),
            Arc::new(before),
            Arc::new(after),
            Arc::new(source),
            Arc::new(unchanged.finish()),
            Arc::new(ts.finish()),
        ],
    )
    .map_err(|e| PgError::Data(format!("{}: {e}", table.stream)))
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Runs the CDC source.
pub async fn run(source: &PostgresSource, ctx: SourceContext) -> Result<(), ConnectorError> {
    let config = source.config();
    let url = source.url();
    let client = connect(url).await?;
    let plans = source.plans(&client).await?;
    let db: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| PgError::query("current_database()", e))?
        .get(0);
    let default_name = format!("tributary_{}", sanitize(ctx.pipeline()));
    let slot = config.slot.clone().unwrap_or_else(|| default_name.clone());
    let publication = config.publication.clone().unwrap_or(default_name);

    let mut tables: Vec<Table> = Vec::new();
    for p in &plans {
        if p.key().is_empty() {
            return Err(PgError::Invalid(format!(
                "{} has no primary key: change data capture needs a key to apply updates and deletes (set `key:`)",
                p.info.table.stream()
            ))
            .into());
        }
        let columns = p
            .info
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.sql_type.clone()))
            .collect();
        tables.push(Table::new(
            &p.info.table.schema,
            &p.info.table.name,
            columns,
            p.key(),
        ));
    }

    // The publication, when absent.
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| PgError::query("look up the publication", e))?;
    if exists.is_none() {
        let list: Vec<String> = plans.iter().map(|p| p.info.table.quoted()).collect();
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                ident(&publication),
                list.join(", ")
            ))
            .await
            .map_err(|e| PgError::query(format!("create publication {publication}"), e))?;
        tracing::info!(publication = %publication, "created publication");
    }

    // Where each stream stands.
    let mut stream_lsn: HashMap<Arc<str>, u64> = HashMap::new();
    // Streams inside a split transaction: (its commit LSN, their changes in it covered).
    let mut partial: HashMap<Arc<str>, (u64, u64)> = HashMap::new();
    let mut interrupted = false;
    for t in &tables {
        if let Some(p) = ctx.checkpoint(&t.stream) {
            let pos: CdcPosition = p
                .decode()
                .map_err(|e| PgError::Invalid(format!("{}: stored position {p}: {e}", t.stream)))?;
            interrupted |= pos.snapshot;
            stream_lsn.insert(t.stream.clone(), pos.lsn);
            if pos.txn != 0 {
                partial.insert(t.stream.clone(), (pos.txn, pos.txn_rows));
            }
        }
    }
    let mut fresh = stream_lsn.is_empty();
    // An initial snapshot that did not finish cannot resume (its exported snapshot died with
    // its connection): it is taken again, from a new slot, each table's rows preceded by a
    // truncate event that clears what the interrupted attempt wrote.
    let mut retake = false;
    if !fresh && (interrupted || stream_lsn.len() < tables.len()) {
        // A table without a position, while the others are all at one LSN the slot never
        // went past: the crash came between two tables' snapshots, before any streaming.
        let lsn = stream_lsn.values().copied().max().unwrap_or(0);
        let confirmed: Option<String> = client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| PgError::query("look up the replication slot", e))?
            .and_then(|r| r.get(0));
        let never_streamed = stream_lsn.values().all(|l| *l == lsn)
            && confirmed
                .as_deref()
                .and_then(parse_lsn)
                .is_some_and(|c| c <= lsn);
        if !interrupted && !never_streamed {
            return Err(ConnectorError::fatal(PgError::Invalid(
                "a table was added to a change data capture pipeline that is already streaming: \
                 its snapshot cannot be taken consistently with the others"
                    .into(),
            ))
            .with_hint(format!(
                "give the new table its own pipeline, or clear the target, run `tributary state \
                 reset {}` and drop slot {slot}, then run again",
                ctx.pipeline()
            )));
        }
        tracing::warn!(slot = %slot, "the initial snapshot was interrupted: taking it again from a new slot (each table starts with a truncate event)");
        fresh = true;
        retake = true;
    }

    let slot_exists = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| PgError::query("look up the replication slot", e))?
        .is_some();
    let mut repl = ReplicationConnection::connect(url).await?;
    let start_lsn;
    if fresh {
        if slot_exists {
            // Nothing was ever committed from it: start over with a new exported snapshot.
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
                .map_err(|e| PgError::query(format!("drop the unused slot {slot}"), e))?;
        }
        let rows = repl
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
                ident(&slot)
            ))
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| PgError::Data("CREATE_REPLICATION_SLOT returned no row".into()))?;
        let consistent = row
            .get(1)
            .cloned()
            .flatten()
            .and_then(|s| parse_lsn(&s))
            .ok_or_else(|| PgError::Data("no consistent point".into()))?;
        let snapshot = row
            .get(2)
            .cloned()
            .flatten()
            .ok_or_else(|| PgError::Data("no exported snapshot".into()))?;
        tracing::info!(slot = %slot, lsn = %format_lsn(consistent), "created replication slot; taking the initial snapshot");
        initial_snapshot(
            source, &client, &ctx, &plans, &tables, &db, &snapshot, consistent, retake,
        )
        .await?;
        if ctx.is_stopping() {
            return Ok(());
        }
        for t in &tables {
            stream_lsn.insert(t.stream.clone(), consistent);
        }
        start_lsn = consistent;
    } else {
        if !slot_exists {
            return Err(ConnectorError::fatal(PgError::Invalid(format!(
                "replication slot {slot} does not exist: it was dropped, so the changes since the \
                 last commit are gone"
            )))
            .with_hint(format!(
                "clear the target and run `tributary state reset {}` to take a new snapshot",
                ctx.pipeline()
            )));
        }
        let wal_status: Option<String> = client
            .query_opt(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| PgError::query("look up the replication slot", e))?
            .and_then(|r| r.get(0));
        match wal_status.as_deref() {
            Some("lost") => return Err(slot_invalidated(&slot, ctx.pipeline())),
            Some("unreserved") => tracing::warn!(
                slot = %slot,
                "the slot holds more WAL than max_slot_wal_keep_size allows: the server will \
                 invalidate it at its next checkpoint unless the pipeline catches up"
            ),
            _ => {}
        }
        start_lsn = stream_lsn.values().copied().min().unwrap_or(0);
    }

    repl.start_replication(&format!(
        "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {})",
        ident(&slot),
        format_lsn(start_lsn),
        literal(&publication)
    ))
    .await
    .map_err(|e| match e {
        PgError::Replication {
            code: Some(ref c), ..
        } if c == "42704" => ConnectorError::fatal(e).with_hint(format!(
            "the slot {slot} was dropped: clear the target and run `tributary state reset {}`",
            ctx.pipeline()
        )),
        // Invalidated since the check above (PostgreSQL 15 says "cannot read from logical
        // replication slot", later versions "can no longer get changes from").
        PgError::Replication {
            code: Some(ref c),
            ref message,
            ..
        } if c == "55000"
            && (message.contains("cannot read from logical replication slot")
                || message.contains("can no longer get changes")) =>
        {
            slot_invalidated(&slot, ctx.pipeline())
        }
        e => e.into(),
    })?;
    tracing::info!(slot = %slot, lsn = %format_lsn(start_lsn), "streaming changes");
    stream(
        config, &client, &mut repl, &ctx, tables, stream_lsn, partial, start_lsn, &db, &slot,
    )
    .await
}

/// The error for a slot the server invalidated: the WAL it held is gone.
fn slot_invalidated(slot: &str, pipeline: &str) -> ConnectorError {
    ConnectorError::fatal(PgError::Invalid(format!(
        "replication slot {slot} was invalidated: it fell more than max_slot_wal_keep_size \
         behind and the server removed WAL it held, so the changes since the last commit are gone"
    )))
    .with_hint(format!(
        "drop the slot (SELECT pg_drop_replication_slot('{slot}')), clear the target and run \
         `tributary state reset {pipeline}` to take a new snapshot; raise max_slot_wal_keep_size \
         or keep the pipeline running so it does not happen again"
    ))
}

#[allow(clippy::too_many_arguments)]
async fn initial_snapshot(
    source: &PostgresSource,
    client: &Client,
    ctx: &SourceContext,
    plans: &[TablePlan],
    tables: &[Table],
    db: &str,
    snapshot: &str,
    consistent: u64,
    retake: bool,
) -> Result<(), ConnectorError> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            literal(snapshot)
        ))
        .await
        .map_err(|e| PgError::query("import the exported snapshot", e))?;
    let batch_rows = source.config().batch_rows.get();
    for (plan, table) in plans.iter().zip(tables) {
        let cols: Vec<String> = plan
            .info
            .columns
            .iter()
            .map(|c| format!("{}::text", ident(&c.name)))
            .collect();
        let sql = format!(
            "COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)",
            cols.join(", "),
            plan.info.table.quoted()
        );
        let mut start = Position::encode(&CdcPosition {
            snapshot: true,
            ..CdcPosition::at(consistent)
        })
        .map_err(ConnectorError::fatal)?;
        if retake {
            // What an interrupted attempt wrote of this table goes first.
            let truncate = Event {
                op: "t",
                before: None,
                after: None,
                lsn: consistent,
                xid: 0,
                ts_ms: 0,
            };
            let _ = ctx
                .emit(Batch {
                    data: envelope_batch(table, db, &[truncate])?,
                    meta: BatchMeta::new(table.stream.clone(), start.clone(), start.clone(), 0),
                })
                .await;
            if ctx.is_stopping() {
                return Ok(());
            }
        }
        // `parallel:`: key ranges read on connections of their own, in the same exported
        // snapshot (snapshot positions only count rows, so the ranges' order does not matter).
        let parallel = source.config().parallel.get();
        let ranges = if parallel > 1 && plan.integer_key() {
            plan.ranges(client, parallel).await?
        } else {
            Vec::new()
        };
        if ranges.len() > 1 {
            let (tx, mut rx) = tokio::sync::mpsc::channel(ranges.len());
            let mut tasks = tokio::task::JoinSet::new();
            for (r, range) in ranges.iter().enumerate() {
                let sql = format!(
                    "COPY (SELECT {} FROM {} AS t WHERE {}) TO STDOUT (FORMAT binary)",
                    cols.join(", "),
                    plan.info.table.quoted(),
                    plan.range_conditions(range).join(" AND ")
                );
                let reader = RangeReader {
                    url: source.url().to_string(),
                    client: None,
                    sql,
                    snapshot: Some(snapshot.to_string()),
                    what: format!("{} (key range {})", table.stream, r + 1),
                    kinds: vec![ColumnKind::Text; cols.len()],
                    key_columns: 0,
                    batch_rows,
                    range: Some(r),
                };
                let tx = tx.clone();
                tasks.spawn(async move {
                    if let Err(e) = reader.run(&tx).await {
                        let _ = tx.send(Err(e)).await;
                    }
                });
            }
            drop(tx);
            while let Some(read) = rx.recv().await {
                if let Read::Chunk(_, chunk) = read? {
                    start = emit_snapshot(ctx, table, db, chunk.arrays, start, consistent).await?;
                    if ctx.is_stopping() {
                        return Ok(());
                    }
                }
            }
            while let Some(joined) = tasks.join_next().await {
                joined.map_err(|e| {
                    PgError::Data(format!("{}: a reader failed: {e}", table.stream))
                })?;
            }
        } else {
            let mut copy = CopyBatches::start(
                client,
                &sql,
                &table.stream,
                vec![ColumnKind::Text; cols.len()],
                0,
                batch_rows,
            )
            .await?;
            while let Some(chunk) = copy.next().await? {
                start = emit_snapshot(ctx, table, db, chunk.arrays, start, consistent).await?;
                if ctx.is_stopping() {
                    return Ok(());
                }
            }
        }
        // The table's snapshot is complete: from here on its position is the consistent point.
        let end = Position::encode(&CdcPosition::at(consistent)).map_err(ConnectorError::fatal)?;
        let _ = ctx
            .emit(Batch {
                data: RecordBatch::new_empty(table.envelope.clone()),
                meta: BatchMeta::new(table.stream.clone(), start, end, 0),
            })
            .await;
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| PgError::query("end the snapshot transaction", e))?;
    Ok(())
}

async fn emit_snapshot(
    ctx: &SourceContext,
    table: &Table,
    db: &str,
    arrays: Vec<arrow_array::ArrayRef>,
    start: Position,
    consistent: u64,
) -> Result<Position, ConnectorError> {
    let n = arrays.first().map_or(0, |a| a.len());
    let mut events = Vec::with_capacity(n);
    let texts: Vec<&arrow_array::StringArray> = arrays
        .iter()
        .map(|a| a.as_any().downcast_ref().expect("text columns"))
        .collect();
    for i in 0..n {
        let row = texts
            .iter()
            .map(|a| {
                if a.is_null(i) {
                    Value::Null
                } else {
                    Value::Text(a.value(i).to_string())
                }
            })
            .collect();
        events.push(Event {
            op: "r",
            before: None,
            after: Some(row),
            lsn: consistent,
            xid: 0,
            ts_ms: 0,
        });
    }
    let data = envelope_batch(table, db, &events)?;
    // Within the snapshot, positions only count rows: a crash cannot resume it (see the
    // module docs).
    let mut pos: CdcPosition = start.decode().map_err(ConnectorError::fatal)?;
    pos.rows += n as u64;
    let end = Position::encode(&pos).map_err(ConnectorError::fatal)?;
    let _ = ctx
        .emit(Batch {
            data,
            meta: BatchMeta::new(table.stream.clone(), start, end.clone(), 0),
        })
        .await;
    Ok(end)
}

/// Events of one stream waiting to be emitted.
struct Pending {
    events: Vec<Event>,
    end: u64,
}

/// Batches emitted together and not yet known committed: once every stream has committed
/// its own end, everything up to `end` (the last transaction read when they were emitted) is
/// durable downstream.
struct Unacked {
    end: u64,
    streams: Vec<(Arc<str>, u64)>,
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    config: &crate::config::PostgresSourceConfig,
    client: &Client,
    repl: &mut ReplicationConnection,
    ctx: &SourceContext,
    tables: Vec<Table>,
    stream_lsn: HashMap<Arc<str>, u64>,
    partial: HashMap<Arc<str>, (u64, u64)>,
    start_lsn: u64,
    db: &str,
    slot: &str,
) -> Result<(), ConnectorError> {
    let mut by_name: HashMap<String, Table> = tables
        .into_iter()
        .map(|t| (format!("{}.{}", t.schema_name, t.table), t))
        .collect();
    let mut relations: HashMap<u32, String> = HashMap::new();
    let mut last_pos: HashMap<Arc<str>, Position> = HashMap::new();
    for (s, lsn) in &stream_lsn {
        last_pos.insert(
            s.clone(),
            Position::encode(&CdcPosition::at(*lsn)).map_err(ConnectorError::fatal)?,
        );
    }
    let mut txn: Vec<(String, Event)> = Vec::new();
    let mut txn_meta = (0u32, 0i64);
    let mut in_txn = false;
    // A transaction larger than a batch is emitted in parts as it arrives (memory stays
    // bounded): its commit LSN, each table's changes of it emitted (or, after a restart inside
    // it, committed before), and how many of those a restart still has to skip.
    let mut txn_final = 0u64;
    let mut covered: HashMap<String, u64> = HashMap::new();
    let mut skip: HashMap<String, u64> = HashMap::new();
    // Tables that committed the whole transaction in a run before this one (their stored
    // LSN is past its commit record): its changes to them are dropped as they arrive (a
    // large transaction is emitted before its commit, so that is the one place to check).
    let mut done: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
    let mut pending_rows = 0usize;
    let mut pending_since: Option<tokio::time::Instant> = None;
    let mut unacked: VecDeque<Unacked> = VecDeque::new();
    let mut last_commit = start_lsn;
    // Everything up to here is committed downstream (or had nothing for us).
    let mut confirmed = start_lsn;
    let mut sent = 0u64;
    // The end of the server's WAL, as last heard: minus `confirmed`, the slot's lag.
    let mut server_end = start_lsn;
    let mut committed = ctx.committed();
    let mut status = tokio::time::interval(config.status_interval);
    let batch_rows = config.batch_rows.get();

    loop {
        let flush_at = pending_since.map(|s| s + config.batch_wait);
        tokio::select! {
            message = repl.recv() => {
                match message? {
                    ReplicationMessage::Keepalive { wal_end, reply } => {
                        server_end = server_end.max(wal_end);
                        // Nothing read is waiting to be written: everything the server has
                        // sent is covered, so its WAL up to here may go.
                        if !in_txn && pending_rows == 0 && unacked.is_empty() && wal_end > confirmed {
                            confirmed = wal_end;
                            last_commit = last_commit.max(wal_end);
                        }
                        if reply || confirmed > sent {
                            repl.send_status(confirmed).await?;
                            sent = confirmed;
                        }
                        ctx.cdc_lag(slot, server_end.saturating_sub(confirmed));
                    }
                    ReplicationMessage::XLogData { data, wal_end, .. } => {
                        server_end = server_end.max(wal_end);
                        let message = pgoutput::decode(data)
                            .map_err(|e| PgError::Data(format!("pgoutput: {e}")))?;
                        match message {
                            pgoutput::Message::Begin { ts, xid, final_lsn } => {
                                in_txn = true;
                                txn.clear();
                                txn_meta = (xid, ts / 1000 + 946_684_800_000);
                                txn_final = final_lsn;
                                covered.clear();
                                skip.clear();
                                done.clear();
                                for (name, t) in &by_name {
                                    if stream_lsn.get(&t.stream).is_some_and(|l| *l > final_lsn) {
                                        done.insert(name.clone());
                                    }
                                    if let Some(&(at, rows)) = partial.get(&t.stream) {
                                        if at == final_lsn {
                                            skip.insert(name.clone(), rows);
                                        }
                                    }
                                }
                            }
                            pgoutput::Message::Relation(rel) => {
                                let name = format!("{}.{}", rel.schema, rel.name);
                                let known: Option<Vec<String>> = by_name
                                    .get(&name)
                                    .map(|t| t.columns.iter().map(|c| c.0.clone()).collect());
                                if let Some(known) = known {
                                    let names: Vec<String> = rel.columns.iter().map(|c| c.name.clone()).collect();
                                    if names != known {
                                        // Columns changed (ALTER TABLE): a new envelope schema,
                                        // after what was read with the old columns is emitted.
                                        let mut columns = Vec::new();
                                        for c in &rel.columns {
                                            let sql_type: String = client
                                                .query_one("SELECT format_type($1::int8::oid, $2)", &[&(c.type_oid as i64), &c.typmod])
                                                .await
                                                .map_err(|e| PgError::query("format_type", e))?
                                                .get(0);
                                            columns.push((c.name.clone(), sql_type));
                                        }
                                        flush(ctx, &by_name, db, &mut pending, &mut pending_rows, &mut last_pos, &mut unacked, last_commit).await?;
                                        pending_since = None;
                                        let key = by_name[&name].key.clone();
                                        by_name.insert(name.clone(), Table::new(&rel.schema, &rel.name, columns, key));
                                        tracing::info!(table = %name, "columns changed");
                                    }
                                    relations.insert(rel.oid, name);
                                }
                            }
                            pgoutput::Message::Insert { oid, new } => {
                                if let Some(name) = relations.get(&oid) {
                                    push_change(&mut txn, &mut skip, &mut covered, &done, name, Event { op: "c", before: None, after: Some(new), lsn: 0, xid: txn_meta.0, ts_ms: txn_meta.1 });
                                }
                            }
                            pgoutput::Message::Update { oid, old, new } => {
                                if let Some(name) = relations.get(&oid) {
                                    push_change(&mut txn, &mut skip, &mut covered, &done, name, Event { op: "u", before: old, after: Some(new), lsn: 0, xid: txn_meta.0, ts_ms: txn_meta.1 });
                                }
                            }
                            pgoutput::Message::Delete { oid, old } => {
                                if let Some(name) = relations.get(&oid) {
                                    push_change(&mut txn, &mut skip, &mut covered, &done, name, Event { op: "d", before: Some(old), after: None, lsn: 0, xid: txn_meta.0, ts_ms: txn_meta.1 });
                                }
                            }
                            pgoutput::Message::Truncate { oids } => {
                                for oid in oids {
                                    if let Some(name) = relations.get(&oid) {
                                        push_change(&mut txn, &mut skip, &mut covered, &done, name, Event { op: "t", before: None, after: None, lsn: 0, xid: txn_meta.0, ts_ms: txn_meta.1 });
                                    }
                                }
                            }
                            pgoutput::Message::Commit { end_lsn } => {
                                in_txn = false;
                                // The tables of a split transaction end it with a complete
                                // position, even with no change left for the last batch.
                                let split: Vec<String> = covered.drain().map(|(name, _)| name).collect();
                                for name in &split {
                                    pending.entry(name.clone()).or_insert_with(|| Pending { events: Vec::new(), end: 0 }).end = end_lsn;
                                }
                                // (Changes to tables that committed this transaction in an
                                // earlier run were dropped as they came: see `done`.)
                                for (name, mut e) in txn.drain(..) {
                                    e.lsn = end_lsn;
                                    let p = pending.entry(name).or_insert_with(|| Pending { events: Vec::new(), end: 0 });
                                    p.events.push(e);
                                    p.end = end_lsn;
                                    pending_rows += 1;
                                }
                                last_commit = last_commit.max(end_lsn);
                                if !split.is_empty() {
                                    flush(ctx, &by_name, db, &mut pending, &mut pending_rows, &mut last_pos, &mut unacked, last_commit).await?;
                                    pending_since = None;
                                }
                                if pending_rows > 0 {
                                    pending_since.get_or_insert_with(tokio::time::Instant::now);
                                } else if unacked.is_empty() {
                                    confirmed = confirmed.max(last_commit);
                                }
                                if pending_rows >= batch_rows {
                                    flush(ctx, &by_name, db, &mut pending, &mut pending_rows, &mut last_pos, &mut unacked, last_commit).await?;
                                    pending_since = None;
                                }
                            }
                            pgoutput::Message::Other => {}
                        }
                        if in_txn && txn.len() >= batch_rows {
                            // Too large for one batch: what came before goes first, then
                            // this part, with a position inside the transaction.
                            flush(ctx, &by_name, db, &mut pending, &mut pending_rows, &mut last_pos, &mut unacked, last_commit).await?;
                            pending_since = None;
                            emit_part(ctx, &by_name, db, &mut txn, &mut covered, &mut last_pos, txn_final).await?;
                        }
                    }
                }
            }
            _ = async { match flush_at { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                flush(ctx, &by_name, db, &mut pending, &mut pending_rows, &mut last_pos, &mut unacked, last_commit).await?;
                pending_since = None;
            }
            changed = committed.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let now = committed.borrow_and_update().clone();
                while let Some(front) = unacked.front() {
                    let done = front.streams.iter().all(|(s, lsn)| {
                        now.get(&**s)
                            .and_then(|p| p.decode::<CdcPosition>().ok())
                            .is_some_and(|p| p.lsn >= *lsn)
                    });
                    if !done {
                        break;
                    }
                    confirmed = front.end;
                    unacked.pop_front();
                }
                if unacked.is_empty() && pending_rows == 0 {
                    confirmed = confirmed.max(last_commit);
                }
                if confirmed > sent {
                    repl.send_status(confirmed).await?;
                    sent = confirmed;
                }
                ctx.cdc_lag(slot, server_end.saturating_sub(confirmed));
            }
            _ = status.tick() => {
                repl.send_status(confirmed).await?;
                sent = confirmed;
                ctx.cdc_lag(slot, server_end.saturating_sub(confirmed));
            }
            _ = ctx.stopping() => {
                return Ok(());
            }
        }
    }
}

/// Adds a change to the transaction being read, unless a run before this one committed it
/// (the whole transaction for a table in `done`; the first `skip[table]` changes of a table
/// in a split transaction).
fn push_change(
    txn: &mut Vec<(String, Event)>,
    skip: &mut HashMap<String, u64>,
    covered: &mut HashMap<String, u64>,
    done: &std::collections::HashSet<String>,
    name: &str,
    event: Event,
) {
    if done.contains(name) {
        return;
    }
    if let Some(k) = skip.get_mut(name).filter(|k| **k > 0) {
        *k -= 1;
        *covered.entry(name.to_string()).or_default() += 1;
        return;
    }
    txn.push((name.to_string(), event));
}

/// Emits the changes read so far of a transaction too large for one batch, one batch per
/// table, each ending at a position inside the transaction (its commit LSN `txn` and the
/// table's changes in it covered). The slot is not confirmed past such a position: the
/// transaction's commit, with a complete position per table, does that.
async fn emit_part(
    ctx: &SourceContext,
    by_name: &HashMap<String, Table>,
    db: &str,
    txn: &mut Vec<(String, Event)>,
    covered: &mut HashMap<String, u64>,
    last_pos: &mut HashMap<Arc<str>, Position>,
    txn_final: u64,
) -> Result<(), ConnectorError> {
    let mut by_table: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for (name, mut e) in txn.drain(..) {
        e.lsn = txn_final;
        by_table.entry(name).or_default().push(e);
    }
    for (name, events) in by_table {
        let t = &by_name[&name];
        let n = covered.entry(name).or_default();
        *n += events.len() as u64;
        let start = last_pos.get(&t.stream).cloned();
        let before: u64 = match &start {
            Some(p) => {
                p.decode::<CdcPosition>()
                    .map_err(ConnectorError::fatal)?
                    .lsn
            }
            None => 0,
        };
        let end = Position::encode(&CdcPosition {
            txn: txn_final,
            txn_rows: *n,
            ..CdcPosition::at(before)
        })
        .map_err(ConnectorError::fatal)?;
        let data = envelope_batch(t, db, &events)?;
        last_pos.insert(t.stream.clone(), end.clone());
        if ctx
            .emit(Batch {
                data,
                meta: BatchMeta::new(
                    t.stream.clone(),
                    start.unwrap_or_else(|| end.clone()),
                    end,
                    0,
                ),
            })
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

/// Emits one batch per stream with pending events, ending at `end`.
#[allow(clippy::too_many_arguments)]
async fn flush(
    ctx: &SourceContext,
    by_name: &HashMap<String, Table>,
    db: &str,
    pending: &mut BTreeMap<String, Pending>,
    pending_rows: &mut usize,
    last_pos: &mut HashMap<Arc<str>, Position>,
    unacked: &mut VecDeque<Unacked>,
    end: u64,
) -> Result<(), ConnectorError> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut streams = Vec::new();
    for (name, p) in std::mem::take(pending) {
        let t = &by_name[&name];
        let data = envelope_batch(t, db, &p.events)?;
        let end_pos = Position::encode(&CdcPosition::at(p.end)).map_err(ConnectorError::fatal)?;
        let start = last_pos
            .get(&t.stream)
            .cloned()
            .unwrap_or_else(|| end_pos.clone());
        last_pos.insert(t.stream.clone(), end_pos.clone());
        streams.push((t.stream.clone(), p.end));
        if ctx
            .emit(Batch {
                data,
                meta: BatchMeta::new(t.stream.clone(), start, end_pos, 0),
            })
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    *pending_rows = 0;
    unacked.push_back(Unacked { end, streams });
    Ok(())
}
