//! Avro binary ⇄ Arrow, written here on the Arrow arrays.
//!
//! - [`schema`]: Avro schemas with their logical types; an Avro record schema derived from an
//!   Arrow schema ([`schema::from_arrow`]) and the Arrow schema an Avro writer schema decodes
//!   to ([`schema::to_arrow`]).
//! - [`encode::Encoder`]: one Avro record per row, from the arrays (no intermediate values).
//! - [`decode`]: one record at a time into values, then columns; [`StreamDecoder`] decodes a
//!   stream of records whose writer schemas change (schema-registry ids) into batches of one
//!   evolving stream schema, under the pipeline's schema policy.
//!
//! ## Why not `arrow-avro`
//!
//! arrow-avro 60 (the Arrow family the workspace uses) has a row encoder with Confluent
//! framing and a decoder with a schema store, but it needs rustc 1.88 (the workspace's floor
//! is 1.85), brings `rand` 0.10, `strum_macros`, `uuid`, `indexmap` and, by default, five
//! compression codecs, and its 35 000 lines are more than this crate. Its streaming decoder
//! also fails a whole buffer on one bad record, where a Kafka source must dead-letter that
//! record alone and keep the rest. The Avro binary encoding is small (zig-zag varints,
//! length-prefixed bytes, blocks, union indexes); the mapping to Arrow is what takes care,
//! and it is the same work either way.
//!
//! ## Types
//!
//! | Avro | Arrow |
//! | --- | --- |
//! | `boolean`, `int`, `long`, `float`, `double` | Boolean, Int32, Int64, Float32, Float64 |
//! | `string` (also `uuid`), `enum` | Utf8 (an enum as its symbol) |
//! | `bytes`, `fixed` | Binary, FixedSizeBinary |
//! | `date`, `time-millis`, `time-micros` | Date32, Time32(ms), Time64(µs) |
//! | `timestamp-millis/micros/nanos` | Timestamp(unit, "UTC") |
//! | `local-timestamp-*` | Timestamp(unit) without a zone |
//! | `decimal(p, s)` (bytes or fixed, p ≤ 38) | Decimal128(p, s) |
//! | `array`, `map`, `record` | List, Map (Utf8 keys), Struct |
//! | `["null", T]` | T, nullable |
//! | other unions | Utf8 holding the value as JSON |
//!
//! Decoded fields are all nullable (another writer schema may leave any of them out). The
//! sink's derivation goes the other way (narrow integers to `int`, unsigned 32/64 and Int64 to
//! `long`, Date64 to `date`, Dictionary as its values); nullable columns become
//! `["null", T]` with default `null`.

pub mod decode;
pub mod encode;
pub mod schema;

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{new_null_array, Array, ArrayRef, BooleanArray, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use tributary_core::schema::{reconcile, Reconciled, SchemaPolicy};

use crate::json::{Decoded, Rejection, StreamDecoded};
pub use decode::AvroValue;
pub use encode::Encoder;
pub use schema::AvroType;

/// One record for [`StreamDecoder::decode`]: its writer schema and body (the bytes after the
/// wire format's header), or why it has none (bad header, unknown schema id).
pub type Framed<'a> = Result<(&'a Arc<Writer>, &'a [u8]), String>;

/// A writer schema, parsed once (per schema-registry id).
#[derive(Debug)]
pub struct Writer {
    /// The record type.
    pub record: schema::Record,
    /// What its records decode to.
    pub arrow: SchemaRef,
}

impl Writer {
    /// Parses a writer schema (JSON text); its root must be a record.
    pub fn parse(text: &str) -> Result<Writer, String> {
        let root = schema::parse(text)?;
        let arrow = Arc::new(schema::to_arrow(&root)?);
        let AvroType::Record(record) = root else {
            unreachable!("to_arrow accepts records only")
        };
        Ok(Writer { record, arrow })
    }
}

/// Decodes Avro records of changing writer schemas into batches of one stream schema.
///
/// Each new writer schema is fitted to the stream's schema with the core's [`reconcile`]:
/// under `evolve` new fields are added (nullable) and types widened, so a producer that adds a
/// nullable field evolves the stream; under the other policies the stream keeps its schema
/// and a record that has a value for a field the stream does not have is rejected (`freeze`),
/// discarded (`discard_rows`) or loses that field (`discard_columns`). A value that cannot
/// take the stream's type is rejected. A field the writer does not have is null.
#[derive(Debug)]
pub struct StreamDecoder {
    schema: Option<SchemaRef>,
    policy: SchemaPolicy,
    /// Per writer (by address): the fields the stream has no place for.
    unknown: HashMap<usize, Vec<String>>,
}

impl StreamDecoder {
    /// Starts from `schema` (stored by an earlier run), or from the first writer's.
    pub fn new(schema: Option<Schema>, policy: SchemaPolicy) -> Self {
        StreamDecoder {
            schema: schema.map(Arc::new),
            policy,
            unknown: HashMap::new(),
        }
    }

    /// The stream's schema so far.
    pub fn schema(&self) -> Option<&SchemaRef> {
        self.schema.as_ref()
    }

    /// Decodes records (each its writer and its body, or why it has none) into one batch.
    pub fn decode(&mut self, records: &[Framed<'_>]) -> StreamDecoded {
        let mut rejected = Vec::new();
        let mut good: Vec<(usize, &Arc<Writer>, AvroValue)> = Vec::new();
        for (index, r) in records.iter().enumerate() {
            match r {
                Err(message) => rejected.push(Rejection {
                    index,
                    message: message.clone(),
                }),
                Ok((w, body)) => match decode::decode(&AvroType::Record(w.record.clone()), body) {
                    Ok(v) => good.push((index, w, v)),
                    Err(e) => rejected.push(Rejection {
                        index,
                        message: format!(
                            "not a valid Avro record of its writer schema ({}): {e}",
                            w.record.name
                        ),
                    }),
                },
            }
        }
        // Fit each writer schema met, in order.
        let mut change: Option<Reconciled> = None;
        for (_, w, _) in &good {
            let key = Arc::as_ptr(w) as usize;
            if self.unknown.contains_key(&key) && self.schema.is_some() {
                continue;
            }
            let fitted = reconcile(self.schema.as_deref(), &w.arrow, self.policy);
            let first = self.schema.is_none();
            self.unknown.insert(key, fitted.unknown.clone());
            if first || fitted.changed() {
                self.schema = Some(Arc::new(fitted.schema.clone()));
                change = Some(match change {
                    None => fitted,
                    Some(mut c) => {
                        c.schema = fitted.schema;
                        c.added.extend(fitted.added);
                        c.widened.extend(fitted.widened);
                        c
                    }
                });
            }
        }
        let schema = self
            .schema
            .clone()
            .unwrap_or_else(|| Arc::new(Schema::empty()));
        let mut discarded_indexes = Vec::new();
        let mut parts = Vec::new();
        // Runs of records of one writer become one part each.
        let mut i = 0;
        while i < good.len() {
            let w = good[i].1;
            let mut j = i;
            while j < good.len() && Arc::ptr_eq(good[j].1, w) {
                j += 1;
            }
            let run = &good[i..j];
            let values: Vec<&AvroValue> = run.iter().map(|(_, _, v)| v).collect();
            let indexes: Vec<usize> = run.iter().map(|(i, _, _)| *i).collect();
            match decode::build_records(&w.record, &values) {
                Ok(rows) => {
                    let unknown = &self.unknown[&(Arc::as_ptr(w) as usize)];
                    let (part, bad, dropped) =
                        conform(&rows, &schema, unknown, self.policy, &indexes);
                    rejected.extend(bad);
                    discarded_indexes.extend(dropped);
                    if let Some(p) = part {
                        parts.push(p);
                    }
                }
                Err(e) => rejected.extend(indexes.iter().map(|index| Rejection {
                    index: *index,
                    message: format!("cannot build columns: {e}"),
                })),
            }
            i = j;
        }
        rejected.sort_by_key(|r| r.index);
        discarded_indexes.sort_unstable();
        let batch = arrow_select::concat::concat_batches(&schema, &parts)
            .unwrap_or_else(|_| RecordBatch::new_empty(schema.clone()));
        StreamDecoded {
            decoded: Decoded {
                batch,
                rejected,
                discarded: discarded_indexes.len() as u64,
                discarded_indexes,
            },
            change,
        }
    }
}

/// Fits rows decoded with a writer schema to the stream's schema: columns by name, missing
/// ones null, other types cast (a value the cast cannot take rejects its row), fields the
/// stream does not have handled by the policy.
fn conform(
    rows: &StructArray,
    schema: &SchemaRef,
    unknown: &[String],
    policy: SchemaPolicy,
    indexes: &[usize],
) -> (Option<RecordBatch>, Vec<Rejection>, Vec<usize>) {
    let n = rows.len();
    let mut keep = vec![true; n];
    let mut rejected = Vec::new();
    let mut discarded = Vec::new();
    let mut refuse = |row: usize, message: String, keep: &mut Vec<bool>, discard: bool| {
        if keep[row] {
            keep[row] = false;
            if discard {
                discarded.push(indexes[row]);
            } else {
                rejected.push(Rejection {
                    index: indexes[row],
                    message,
                });
            }
        }
    };
    if policy != SchemaPolicy::DiscardColumns {
        for name in unknown {
            if let Some(c) = rows.column_by_name(name) {
                for row in 0..n {
                    if c.is_valid(row) {
                        refuse(
                            row,
                            format!(
                                "field {name} is not in the stream's schema (schema_policy {})",
                                policy.as_str()
                            ),
                            &mut keep,
                            policy == SchemaPolicy::DiscardRows,
                        );
                    }
                }
            }
        }
    }
    let mut columns = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let column = match rows.column_by_name(f.name()) {
            None => new_null_array(f.data_type(), n),
            Some(c) => match fit(c, f) {
                Ok(c) => c,
                Err(e) => {
                    for row in 0..n {
                        refuse(
                            row,
                            format!("field {}: {e}", f.name()),
                            &mut keep,
                            policy == SchemaPolicy::DiscardRows,
                        );
                    }
                    new_null_array(f.data_type(), n)
                }
            },
        };
        // Values the cast turned into nulls did not fit.
        if let Some(original) = rows.column_by_name(f.name()) {
            if original.data_type() != f.data_type() {
                for row in 0..n {
                    if original.is_valid(row) && column.is_null(row) {
                        refuse(
                            row,
                            format!(
                                "field {}: a {} value does not fit the stream's {}",
                                f.name(),
                                original.data_type(),
                                f.data_type()
                            ),
                            &mut keep,
                            policy == SchemaPolicy::DiscardRows,
                        );
                    }
                }
            }
        }
        columns.push(column);
    }
    let batch = match RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(n)),
    ) {
        Ok(b) => b,
        Err(e) => {
            let rejected = indexes
                .iter()
                .map(|index| Rejection {
                    index: *index,
                    message: format!("cannot build the batch: {e}"),
                })
                .collect();
            return (None, rejected, Vec::new());
        }
    };
    let batch = if keep.iter().all(|k| *k) {
        batch
    } else {
        match arrow_select::filter::filter_record_batch(&batch, &BooleanArray::from(keep)) {
            Ok(b) => b,
            Err(e) => {
                return (
                    None,
                    indexes
                        .iter()
                        .map(|index| Rejection {
                            index: *index,
                            message: format!("cannot filter the batch: {e}"),
                        })
                        .collect(),
                    Vec::new(),
                )
            }
        }
    };
    (Some(batch), rejected, discarded)
}

/// `a` as the field's type: structs by field name (missing fields null), lists item by item,
/// anything else through arrow's cast (values that cannot be cast become null; the caller
/// rejects their rows).
fn fit(a: &ArrayRef, f: &Field) -> Result<ArrayRef, String> {
    if a.data_type() == f.data_type() {
        return Ok(a.clone());
    }
    match (a.data_type(), f.data_type()) {
        (DataType::Struct(_), DataType::Struct(target)) => {
            let s = a.as_struct();
            let mut children = Vec::with_capacity(target.len());
            for t in target {
                children.push(match s.column_by_name(t.name()) {
                    Some(c) => fit(c, t)?,
                    None => new_null_array(t.data_type(), s.len()),
                });
            }
            Ok(Arc::new(
                StructArray::try_new_with_length(
                    target.clone(),
                    children,
                    s.nulls().cloned(),
                    s.len(),
                )
                .map_err(|e| e.to_string())?,
            ))
        }
        (DataType::List(_), DataType::List(item)) => {
            let l = a.as_list::<i32>();
            let values = fit(l.values(), item)?;
            Ok(Arc::new(
                arrow_array::ListArray::try_new(
                    item.clone(),
                    l.offsets().clone(),
                    values,
                    l.nulls().cloned(),
                )
                .map_err(|e| e.to_string())?,
            ))
        }
        (_, to) => arrow_cast::cast(a, to).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests;
