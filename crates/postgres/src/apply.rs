//! Applying change events (Debezium-style envelopes from [`crate::cdc`]) to a table by key.
//!
//! Within one batch only each key's last event matters: the batch is applied in one
//! transaction, so the table goes from the state before it to the state after it. Events are
//! folded in order into one action per key: `r`/`c`/`u` upsert the `after` row, `d` deletes,
//! an update whose `before` key differs from its `after` key deletes the old key, and `t`
//! (truncate) deletes every row and forgets the events before it. Then, in the sink's
//! transaction: `DELETE … USING` a temporary table of keys, and `INSERT … ON CONFLICT (key) DO
//! UPDATE` from a temporary table of rows, with values cast from their text to the target
//! column's type. Columns an update left out because their TOASTed value did not change
//! (`unchanged_toast`) are filled from the target's current row first, so they keep their
//! value.
//!
//! Replaying a suffix of the change log (after a crash, before the position committed)
//! reaches the same final state: applying is idempotent in order.

use std::collections::{BTreeSet, HashMap};

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Schema};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;

use crate::catalog::{ident, TableInfo};
use crate::cdc::ENVELOPE_KEY;
use crate::error::PgError;
use crate::types::{COPY_HEADER, PRIMARY_KEY_KEY};

/// Whether a batch holds change envelopes.
pub fn is_envelope(schema: &Schema) -> bool {
    schema
        .metadata()
        .get(ENVELOPE_KEY)
        .is_some_and(|v| v == "debezium")
}

/// The table's columns (the `after` struct's fields) and key, as a flat schema.
pub fn row_schema(schema: &Schema) -> Result<Schema, PgError> {
    let after = schema
        .field_with_name("after")
        .map_err(|_| PgError::Data("change envelope without `after`".into()))?;
    let DataType::Struct(fields) = after.data_type() else {
        return Err(PgError::Data("`after` is not a struct".into()));
    };
    let mut metadata = HashMap::new();
    if let Some(k) = schema.metadata().get(PRIMARY_KEY_KEY) {
        metadata.insert(PRIMARY_KEY_KEY.to_string(), k.clone());
    }
    Ok(Schema::new(fields.clone()).with_metadata(metadata))
}

/// A key's values as text.
type Key = Vec<Option<String>>;

/// A row to write: its values, the columns whose unchanged TOAST value must come from the
/// target, and the key to find that row under.
struct Upsert {
    values: Vec<Option<String>>,
    toast: BTreeSet<String>,
    lookup: Key,
}

enum Action {
    Upsert(Upsert),
    Delete(Key),
}

fn text_at(a: &StructArray, col: usize, row: usize) -> Option<String> {
    let c: &StringArray = a.column(col).as_string();
    (!c.is_null(row)).then(|| c.value(row).to_string())
}

/// Encodes text rows as binary COPY data.
fn copy_rows(rows: &[Vec<Option<String>>]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_slice(COPY_HEADER);
    for r in rows {
        buf.put_i16(r.len() as i16);
        for v in r {
            match v {
                None => buf.put_i32(-1),
                Some(s) => {
                    buf.put_i32(s.len() as i32);
                    buf.put_slice(s.as_bytes());
                }
            }
        }
    }
    buf.put_i16(-1);
    buf.freeze()
}

async fn copy_in(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    data: Bytes,
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in(sql).await?;
    futures_util::pin_mut!(sink);
    sink.feed(data).await?;
    sink.finish().await?;
    Ok(())
}

/// Applies a batch of change envelopes to `info`'s table, by `key`, inside `tx`.
pub async fn apply(
    tx: &tokio_postgres::Transaction<'_>,
    data: &RecordBatch,
    info: &TableInfo,
    key: &[String],
) -> Result<(), PgError> {
    let stream = info.table.stream();
    let err = |what: &str, e: tokio_postgres::Error| PgError::query(format!("{what} {stream}"), e);
    let schema = data.schema();
    let op = data
        .column_by_name("op")
        .ok_or_else(|| PgError::Data("envelope without op".into()))?
        .as_string::<i32>()
        .clone();
    let before = data.column_by_name("before").map(|a| a.as_struct().clone());
    let after = data
        .column_by_name("after")
        .ok_or_else(|| PgError::Data("envelope without after".into()))?
        .as_struct()
        .clone();
    let unchanged = data
        .column_by_name("unchanged_toast")
        .map(|a| a.as_string::<i32>().clone());
    let DataType::Struct(fields) = schema
        .field_with_name("after")
        .expect("checked")
        .data_type()
        .clone()
    else {
        unreachable!("checked in row_schema")
    };
    let names: Vec<String> = fields.iter().map(|f| f.name().clone()).collect();
    let key_idx: Vec<usize> = key
        .iter()
        .map(|k| {
            names.iter().position(|n| n == k).ok_or_else(|| {
                PgError::Invalid(format!("{stream}: key column {k} is not in the changes"))
            })
        })
        .collect::<Result<_, _>>()?;
    let key_of = |s: &StructArray, row: usize| -> Vec<Option<String>> {
        key_idx.iter().map(|i| text_at(s, *i, row)).collect()
    };

    // One action per key, in order.
    let mut actions: HashMap<Key, Action> = HashMap::new();
    let mut order: Vec<Key> = Vec::new();
    let mut truncate = false;
    fn set(actions: &mut HashMap<Key, Action>, order: &mut Vec<Key>, k: Key, a: Action) {
        if actions.insert(k.clone(), a).is_none() {
            order.push(k);
        }
    }
    for row in 0..data.num_rows() {
        match op.value(row) {
            "t" => {
                truncate = true;
                actions.clear();
                order.clear();
            }
            "d" => {
                let b = before
                    .as_ref()
                    .filter(|b| b.is_valid(row))
                    .ok_or_else(|| PgError::Data(format!("{stream}: a delete without before")))?;
                let k = key_of(b, row);
                set(&mut actions, &mut order, k.clone(), Action::Delete(k));
            }
            _ => {
                let k = key_of(&after, row);
                // An update that changed the key: the old key goes away.
                let old_key = before
                    .as_ref()
                    .filter(|b| b.is_valid(row))
                    .map(|b| key_of(b, row))
                    .filter(|old| old.iter().all(Option::is_some) && *old != k);
                let mut lookup = old_key.clone().unwrap_or_else(|| k.clone());
                let mut values: Vec<Option<String>> =
                    (0..names.len()).map(|i| text_at(&after, i, row)).collect();
                let mut toast: BTreeSet<String> = unchanged
                    .as_ref()
                    .filter(|u| u.is_valid(row))
                    .map(|u| u.value(row).split(',').map(str::to_string).collect())
                    .unwrap_or_default();
                // An earlier event of this batch for the same row has the values the update
                // did not send, and the row to look them up in if it had none either.
                if let Some(Action::Upsert(prev)) = actions.get(&lookup) {
                    for (i, n) in names.iter().enumerate() {
                        if toast.contains(n) && !prev.toast.contains(n) {
                            values[i] = prev.values[i].clone();
                        }
                    }
                    toast.retain(|n| prev.toast.contains(n));
                    lookup = prev.lookup.clone();
                }
                if let Some(old) = old_key {
                    set(&mut actions, &mut order, old.clone(), Action::Delete(old));
                }
                set(
                    &mut actions,
                    &mut order,
                    k,
                    Action::Upsert(Upsert {
                        values,
                        toast,
                        lookup,
                    }),
                );
            }
        }
    }

    let target = info.table.quoted();
    if truncate {
        tx.batch_execute(&format!("DELETE FROM {target}"))
            .await
            .map_err(|e| err("truncate", e))?;
    }
    let cast = |name: &str| -> String {
        let t = info
            .column(name)
            .map(|c| c.sql_type.as_str())
            .unwrap_or("text");
        format!("s.{}::{t}", ident(name))
    };
    let join_on = |stage_cols: &[String]| -> String {
        key.iter()
            .zip(stage_cols)
            .map(|(k, s)| {
                let t = info
                    .column(k)
                    .map(|c| c.sql_type.as_str())
                    .unwrap_or("text");
                format!("t.{} = s.{}::{t}", ident(k), ident(s))
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    };

    // Rows to upsert are staged first: unchanged TOAST values are read from the target's row
    // (under its old key, if the update changed the key) before any delete.
    let upserts: Vec<&Upsert> = order
        .iter()
        .filter_map(|k| match &actions[k] {
            Action::Upsert(u) => Some(u),
            Action::Delete(_) => None,
        })
        .collect();
    // The columns the target has (discard_columns leaves some out).
    let present: Vec<usize> = (0..names.len())
        .filter(|i| info.column(&names[*i]).is_some())
        .collect();
    let lookup_cols: Vec<String> = (0..key.len()).map(|i| format!("tributary_lk{i}")).collect();
    if !upserts.is_empty() {
        let mut toast_columns = BTreeSet::new();
        let rows: Vec<Vec<Option<String>>> = upserts
            .iter()
            .map(|u| {
                let mut r: Vec<Option<String>> =
                    present.iter().map(|i| u.values[*i].clone()).collect();
                toast_columns.extend(u.toast.iter().cloned());
                let joined: Vec<&str> = u.toast.iter().map(String::as_str).collect();
                r.push((!joined.is_empty()).then(|| format!(",{},", joined.join(","))));
                r.extend(u.lookup.iter().cloned());
                r
            })
            .collect();
        let mut stage_cols: Vec<String> = present
            .iter()
            .map(|i| format!("{} text", ident(&names[*i])))
            .collect();
        stage_cols.push("tributary_unchanged text".into());
        stage_cols.extend(lookup_cols.iter().map(|c| format!("{c} text")));
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE tributary_up ({}) ON COMMIT DROP",
            stage_cols.join(", ")
        ))
        .await
        .map_err(|e| err("stage rows for", e))?;
        copy_in(
            tx,
            "COPY tributary_up FROM STDIN (FORMAT binary)",
            copy_rows(&rows),
        )
        .await
        .map_err(|e| err("stage rows for", e))?;
        let lookup_join = join_on(&lookup_cols);
        for c in &toast_columns {
            if info.column(c).is_none() {
                continue;
            }
            tx.batch_execute(&format!(
                "UPDATE tributary_up s SET {c_id} = t.{c_id}::text FROM {target} t \
                 WHERE {lookup_join} AND position({needle} in s.tributary_unchanged) > 0",
                c_id = ident(c),
                needle = crate::catalog::literal(&format!(",{c},"))
            ))
            .await
            .map_err(|e| err("keep unchanged TOAST values of", e))?;
        }
    }

    let deletes: Vec<Key> = order
        .iter()
        .filter_map(|k| match &actions[k] {
            Action::Delete(k) => Some(k.clone()),
            Action::Upsert(_) => None,
        })
        .collect();
    if !deletes.is_empty() {
        let cols: Vec<String> = key.iter().map(|k| format!("{} text", ident(k))).collect();
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE tributary_del ({}) ON COMMIT DROP",
            cols.join(", ")
        ))
        .await
        .map_err(|e| err("stage deletes for", e))?;
        copy_in(
            tx,
            "COPY tributary_del FROM STDIN (FORMAT binary)",
            copy_rows(&deletes),
        )
        .await
        .map_err(|e| err("stage deletes for", e))?;
        tx.batch_execute(&format!(
            "DELETE FROM {target} t USING tributary_del s WHERE {}",
            join_on(key)
        ))
        .await
        .map_err(|e| err("delete from", e))?;
    }

    if upserts.is_empty() {
        return Ok(());
    }
    let cols: Vec<String> = present.iter().map(|i| ident(&names[*i])).collect();
    let values: Vec<String> = present.iter().map(|i| cast(&names[*i])).collect();
    let keys: Vec<String> = key.iter().map(|k| ident(k)).collect();
    let action = on_conflict_action(present.iter().map(|i| &names[*i]), key);
    tx.batch_execute(&format!(
        "INSERT INTO {target} ({}) SELECT {} FROM tributary_up s ON CONFLICT ({}) {action}",
        cols.join(", "),
        values.join(", "),
        keys.join(", ")
    ))
    .await
    .map_err(|e| err("upsert into", e))?;
    Ok(())
}

/// The `ON CONFLICT (key)` action of an upsert writing `columns`: update every non-key
/// column from `EXCLUDED`, or nothing when all are key columns.
pub(crate) fn on_conflict_action<'a>(
    columns: impl Iterator<Item = &'a String>,
    key: &[String],
) -> String {
    let updates: Vec<String> = columns
        .filter(|n| !key.contains(n))
        .map(|n| format!("{} = EXCLUDED.{}", ident(n), ident(n)))
        .collect();
    if updates.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    }
}
