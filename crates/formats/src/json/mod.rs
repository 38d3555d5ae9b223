//! JSON records ⇄ Arrow.
//!
//! - [`Inference`]: fast schema inference, record by record and in parallel parts, without
//!   building a `serde_json::Value` per record.
//! - [`infer`]: the schema of a set of JSON objects (nested objects → structs, arrays →
//!   lists; an integer field that also holds fractions → `float64`; numbers mixed with text
//!   → string).
//! - [`decode`]: a set of records (ranges of one buffer) into one batch of a given schema,
//!   under a [`SchemaPolicy`]. Every record either becomes a row, or comes back as a
//!   [`Rejection`] with its index and the reason, or (under `discard_rows`) is counted as
//!   discarded. Nothing is dropped or changed silently: arrow-json truncates a float read into
//!   an integer column (`2.5` → `2`) without an error, so integer columns are decoded by
//!   [`WholeIntegers`], which fails the batch instead; its offenders are then found and
//!   rejected with the field's name.
//! - [`StreamDecoder`]: for message streams (Kafka, MQTT, API pages): decodes payloads
//!   batch by batch and evolves the stream's schema when a batch does not fit it.
//! - [`encode_rows`]: a batch back to one JSON object per row (for message sinks and NDJSON
//!   files).
//!
//! The fast path reads a batch straight into Arrow columns (`columnar`, for the types
//! inference produces, when every record fits); then arrow-json's decoder takes the whole
//! batch at once; only a batch with a bad record is decoded again record by record to find it.

mod columnar;
mod infer;

pub use infer::Inference;

use std::ops::Range;
use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_array::RecordBatch;
use arrow_json::reader::{ArrayDecoder, DecoderContext, DecoderFactory, Tape, TapeElement};
use arrow_json::ReaderBuilder;
use arrow_schema::FieldRef;
use arrow_schema::{ArrowError, DataType, Fields, Schema, SchemaRef};
use serde::de::IgnoredAny;
use tributary_core::schema::{reconcile, Reconciled, SchemaPolicy};

/// Infers the schema of JSON objects, skipping records that are not valid JSON objects.
/// `None` when not one record is. (See [`Inference`] for the rules.)
pub fn infer<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Option<Schema> {
    let mut inference = Inference::new();
    for r in records {
        inference.add(r);
    }
    inference.schema()
}

/// A record that did not become a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Index of the record in the input.
    pub index: usize,
    /// Why, naming the field where the decoder says which (`field `u.n`: expected Int64,
    /// found 2.5`).
    pub message: String,
}

/// What [`decode`] made of a set of records.
#[derive(Debug)]
pub struct Decoded {
    /// The rows, in input order, of every record that was neither rejected nor discarded.
    pub batch: RecordBatch,
    /// Records that could not be decoded, in input order.
    pub rejected: Vec<Rejection>,
    /// Records dropped under `discard_rows` (valid JSON that does not fit the schema).
    pub discarded: u64,
    /// Indexes of the discarded records, in input order (callers that keep per-record
    /// metadata beside the rows use them, with the rejections', to line the two up).
    pub discarded_indexes: Vec<usize>,
}

/// Decodes the records at `ranges` of `bytes` into one batch of `schema`.
///
/// Under `discard_columns` fields the schema does not have are dropped; under every other
/// policy a record with such a field is rejected (or discarded under `discard_rows`). A value
/// that does not fit its column's type is rejected (discarded under `discard_rows`); a number
/// with a fraction or an exponent in an integer column among them, named by its field.
pub fn decode(
    schema: &SchemaRef,
    policy: SchemaPolicy,
    bytes: &[u8],
    ranges: &[Range<usize>],
) -> Decoded {
    // Strict: a field the schema does not have is an error (then a rejected or discarded
    // record), never dropped silently, except where the policy says to drop columns.
    let strict = policy != SchemaPolicy::DiscardColumns;
    let builder = |rows: usize| {
        ReaderBuilder::new(schema.clone())
            .with_batch_size(rows.max(1))
            .with_coerce_primitive(true)
            .with_strict_mode(strict)
            .with_decoder_factory(Arc::new(WholeIntegers))
            .build_decoder()
    };
    let discard = policy == SchemaPolicy::DiscardRows;
    let mut discarded = 0u64;
    let mut discarded_indexes = Vec::new();
    let mut rejected = Vec::new();
    // (index, range) of the records still to decode.
    let mut todo: Vec<(usize, Range<usize>)> = ranges.iter().cloned().enumerate().collect();
    // Fast path: one decoder for all records (one call for the whole span when only
    // whitespace separates them, as in NDJSON; one call per record otherwise).
    let fast = |todo: &[(usize, Range<usize>)]| -> Option<RecordBatch> {
        let (first, last) = (todo.first()?, todo.last()?);
        let mut decoder = builder(todo.len()).ok()?;
        let contiguous = todo.windows(2).all(|w| {
            w[0].1.end <= w[1].1.start
                && bytes[w[0].1.end..w[1].1.start]
                    .iter()
                    .all(u8::is_ascii_whitespace)
        });
        let fed = if contiguous {
            decoder.decode(&bytes[first.1.start..last.1.end]).is_ok()
        } else {
            todo.iter()
                .all(|(_, r)| decoder.decode(&bytes[r.clone()]).is_ok())
        };
        let batch = decoder.flush().ok().flatten().filter(|_| fed)?;
        (batch.num_rows() == todo.len()).then_some(batch)
    };
    // Fastest: every record fits plainly (see `columnar`); then arrow-json's decoder.
    if let Some(batch) = columnar::decode(schema, strict, bytes, ranges).or_else(|| fast(&todo)) {
        return Decoded {
            batch,
            rejected,
            discarded,
            discarded_indexes,
        };
    }
    // A bad record somewhere. [`WholeIntegers`] fails a whole batch at a fraction in an
    // integer column (arrow-json alone would truncate it, 2.5 → 2); find those records
    // first, to reject them with the field's name, and try the rest at once again.
    if has_integer_field(schema) {
        let span = ranges.first().zip(ranges.last()).map_or(&[][..], |(a, b)| {
            &bytes[a.start.min(b.start)..a.end.max(b.end)]
        });
        if has_non_integer_number(span) {
            let before = todo.len();
            todo.retain(|(index, range)| {
                let raw = &bytes[range.clone()];
                // Invalid JSON is kept: the decoder below reports it.
                let Ok(conflict) = integer_conflict(raw, schema.fields()) else {
                    return true;
                };
                match conflict {
                    None => true,
                    Some(_) if discard => {
                        discarded += 1;
                        discarded_indexes.push(*index);
                        false
                    }
                    Some(message) => {
                        rejected.push(Rejection {
                            index: *index,
                            message,
                        });
                        false
                    }
                }
            });
            if todo.len() < before {
                if let Some(batch) = fast(&todo) {
                    return Decoded {
                        batch,
                        rejected,
                        discarded,
                        discarded_indexes,
                    };
                }
            }
        }
    }
    // Slow path: one record at a time, to find the bad ones.
    let mut good = Vec::new();
    for (index, range) in todo {
        let raw = &bytes[range];
        let result = builder(1).and_then(|mut d| {
            d.decode(raw)?;
            d.flush()
        });
        match result {
            Ok(Some(batch)) if batch.num_rows() == 1 => good.push(batch),
            Ok(other) => rejected.push(Rejection {
                index,
                message: format!(
                    "expected one JSON object, found {} values",
                    other.map_or(0, |b| b.num_rows())
                ),
            }),
            // Valid JSON that does not fit the schema: the policy may drop it.
            Err(_) if discard && serde_json::from_slice::<IgnoredAny>(raw).is_ok() => {
                discarded += 1;
                discarded_indexes.push(index);
            }
            Err(e) => rejected.push(Rejection {
                index,
                message: clean_message(e.to_string()),
            }),
        }
    }
    rejected.sort_by_key(|r| r.index);
    let batch = arrow_select::concat::concat_batches(schema, &good)
        .unwrap_or_else(|_| RecordBatch::new_empty(schema.clone()));
    discarded_indexes.sort_unstable();
    Decoded {
        batch,
        rejected,
        discarded,
        discarded_indexes,
    }
}

/// arrow-json's messages start with `Json error: `, which says nothing here.
fn clean_message(message: String) -> String {
    match message.strip_prefix("Json error: ") {
        Some(rest) => rest.to_string(),
        None => message,
    }
}

/// What [`StreamDecoder::decode`] made of a set of payloads.
#[derive(Debug)]
pub struct StreamDecoded {
    /// The rows and the rejected payloads (indexes into the payloads given).
    pub decoded: Decoded,
    /// The schema change these payloads caused (the first schema included), if any.
    pub change: Option<Reconciled>,
}

/// Decodes a stream of JSON payloads batch by batch, evolving the stream's schema.
///
/// Each call first decodes with the current schema. When every payload fits, that is all
/// (no inference cost). When some do not and the policy is `evolve`, the payloads' own schema
/// is inferred, the stream's schema is widened to take it ([`reconcile`]), and the batch is
/// decoded again; what still does not fit is rejected. Under the other policies the schema
/// stays as it is and the policy decides about the misfits.
#[derive(Debug)]
pub struct StreamDecoder {
    schema: Option<SchemaRef>,
    policy: SchemaPolicy,
    buffer: Vec<u8>,
    ranges: Vec<Range<usize>>,
}

impl StreamDecoder {
    /// A decoder that starts from `schema` (stored by an earlier run), or infers one from the
    /// first payloads.
    pub fn new(schema: Option<Schema>, policy: SchemaPolicy) -> Self {
        StreamDecoder {
            schema: schema.map(Arc::new),
            policy,
            buffer: Vec::new(),
            ranges: Vec::new(),
        }
    }

    /// The stream's schema so far (`None` before the first valid payload).
    pub fn schema(&self) -> Option<&SchemaRef> {
        self.schema.as_ref()
    }

    /// Decodes payloads (one JSON object each) into one batch.
    pub fn decode<'a>(&mut self, payloads: impl IntoIterator<Item = &'a [u8]>) -> StreamDecoded {
        let mut buffer = std::mem::take(&mut self.buffer);
        let mut ranges = std::mem::take(&mut self.ranges);
        buffer.clear();
        ranges.clear();
        for p in payloads {
            let start = buffer.len();
            buffer.extend_from_slice(p);
            ranges.push(start..buffer.len());
            buffer.push(b'\n');
        }
        let out = self.decode_in(&buffer, &ranges);
        self.buffer = buffer;
        self.ranges = ranges;
        out
    }

    /// Decodes the payloads at `ranges` of `bytes` (one JSON object each, in order, nothing
    /// but whitespace between them) into one batch, without copying them first.
    pub fn decode_in(&mut self, bytes: &[u8], ranges: &[Range<usize>]) -> StreamDecoded {
        let first_try = self
            .schema
            .as_ref()
            .map(|s| decode(s, self.policy, bytes, ranges));
        let fits = first_try
            .as_ref()
            .is_some_and(|d| d.rejected.is_empty() && d.discarded == 0);
        let may_evolve = self.schema.is_none() || self.policy == SchemaPolicy::Evolve;
        if fits || !may_evolve {
            let schema = self.schema.clone();
            return StreamDecoded {
                decoded: first_try.unwrap_or_else(|| all_invalid(schema, bytes, ranges)),
                change: None,
            };
        }
        let inferred = infer(ranges.iter().map(|r| &bytes[r.clone()]));
        let Some(inferred) = inferred else {
            let schema = self.schema.clone();
            return StreamDecoded {
                decoded: first_try.unwrap_or_else(|| all_invalid(schema, bytes, ranges)),
                change: None,
            };
        };
        let fitted = reconcile(self.schema.as_deref(), &inferred, self.policy);
        let first = self.schema.is_none();
        if !first && !fitted.changed() {
            return StreamDecoded {
                decoded: first_try.expect("a schema exists"),
                change: None,
            };
        }
        let schema = Arc::new(fitted.schema.clone());
        self.schema = Some(schema.clone());
        StreamDecoded {
            decoded: decode(&schema, self.policy, bytes, ranges),
            change: Some(fitted),
        }
    }
}

/// Every payload rejected: none is a JSON object.
fn all_invalid(schema: Option<SchemaRef>, bytes: &[u8], ranges: &[Range<usize>]) -> Decoded {
    let schema = schema.unwrap_or_else(|| Arc::new(Schema::empty()));
    let rejected = ranges
        .iter()
        .enumerate()
        .map(|(index, r)| Rejection {
            index,
            message: match serde_json::from_slice::<serde_json::Value>(&bytes[r.clone()]) {
                Ok(v) => format!("expected a JSON object, found {}", kind(&v)),
                Err(e) => format!("not valid JSON: {e}"),
            },
        })
        .collect();
    Decoded {
        batch: RecordBatch::new_empty(schema),
        rejected,
        discarded: 0,
        discarded_indexes: Vec::new(),
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `batch` with its timestamp columns in a UTC time zone spelled as an offset (`+00:00`).
///
/// arrow-json writes a timestamp with a time zone only when the zone is an offset, unless it
/// is built with `chrono-tz` (the whole tz database, a heavy dependency for one name). The
/// sources here stamp metadata columns `UTC`; renaming the zone changes no value (the stored
/// numbers are UTC instants either way) and costs no copy. Other named zones stay as they are
/// and fail in the writer with arrow's message naming the zone.
pub fn utc_as_offset(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let is_utc = |tz: &str| matches!(tz, "UTC" | "utc" | "Z" | "Etc/UTC" | "GMT" | "Etc/GMT");
    let needs = batch
        .schema()
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Timestamp(_, Some(tz)) if is_utc(tz)));
    if !needs {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        match f.data_type() {
            DataType::Timestamp(unit, Some(tz)) if is_utc(tz) => {
                let dt = DataType::Timestamp(*unit, Some("+00:00".into()));
                let data = c.to_data().into_builder().data_type(dt.clone()).build()?;
                columns.push(arrow_array::make_array(data));
                fields.push(Arc::new(f.as_ref().clone().with_data_type(dt)));
            }
            _ => {
                columns.push(c.clone());
                fields.push(f.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// Encodes every row of `batch` as one JSON object. Returns the bytes and each row's range
/// in them (rows are separated by `\n`, which JSON text never holds unescaped). With
/// `explicit_nulls`, null fields are written as `null` instead of being left out.
pub fn encode_rows(
    batch: &RecordBatch,
    explicit_nulls: bool,
) -> Result<(Vec<u8>, Vec<Range<usize>>), ArrowError> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 2 + 64);
    {
        let mut writer = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(explicit_nulls)
            .build::<_, arrow_json::writer::LineDelimited>(&mut out);
        writer.write(&utc_as_offset(batch)?)?;
        writer.finish()?;
    }
    let mut ranges = Vec::with_capacity(batch.num_rows());
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', &out) {
        ranges.push(start..end);
        start = end + 1;
    }
    Ok((out, ranges))
}

/// Decodes integer columns (nested ones too) with arrow-json's own decoder, after checking
/// that no JSON number among the values has a fraction or an exponent: arrow-json would
/// truncate `2.5` to `2`. One scan of the column's number texts, far cheaper than parsing
/// every record again to look for fractions; the check that names the field runs only when
/// a batch fails (see [`decode`]).
#[derive(Debug)]
pub struct WholeIntegers;

impl DecoderFactory for WholeIntegers {
    fn make_default_decoder(
        &self,
        ctx: &DecoderContext,
        field: &FieldRef,
        is_nullable: bool,
    ) -> Result<Option<Box<dyn ArrayDecoder>>, ArrowError> {
        if !is_integer(field.data_type()) {
            return Ok(None);
        }
        Ok(Some(Box::new(WholeIntegerDecoder(
            ctx.make_builtin_decoder(field, is_nullable)?,
        ))))
    }
}

struct WholeIntegerDecoder(Box<dyn ArrayDecoder>);

impl ArrayDecoder for WholeIntegerDecoder {
    fn decode(&mut self, tape: &Tape<'_>, pos: &[u32]) -> Result<ArrayRef, ArrowError> {
        for &p in pos {
            // Decoding JSON text yields `Number` for every number (`F32`/`F64` only come
            // from serialising Rust values, which this crate does not).
            let fraction = match tape.get(p) {
                TapeElement::Number(idx) => tape
                    .get_string(idx)
                    .bytes()
                    .any(|b| matches!(b, b'.' | b'e' | b'E')),
                TapeElement::F32(_) | TapeElement::F64(_) => true,
                _ => false,
            };
            if fraction {
                return Err(tape.error(p, "an integer"));
            }
        }
        self.0.decode(tape, pos)
    }
}

fn is_integer(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

fn type_has_integer(dt: &DataType) -> bool {
    match dt {
        DataType::Struct(fields) => fields.iter().any(|f| type_has_integer(f.data_type())),
        DataType::List(f) | DataType::LargeList(f) => type_has_integer(f.data_type()),
        other => is_integer(other),
    }
}

fn has_integer_field(schema: &Schema) -> bool {
    schema
        .fields()
        .iter()
        .any(|f| type_has_integer(f.data_type()))
}

/// Whether a JSON text holds, outside strings, a number with a fraction or an exponent.
fn has_non_integer_number(bytes: &[u8]) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    let mut prev_digit = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'.' | b'e' | b'E' if prev_digit => return true,
            _ => {}
        }
        prev_digit = b.is_ascii_digit();
    }
    false
}

/// The first integer field of `fields` (in the record's order, nested ones included) whose
/// value in the JSON object `raw` is a number with a fraction or an exponent; an error when
/// `raw` is not JSON. Streams through the record with serde (no `Value` tree: this runs on
/// every record of a batch holding any fraction, the hot path of JSON decoding); a value of a
/// field the schema does not type as an integer, or that holds no integer below it, is
/// skipped without being built.
fn integer_conflict(raw: &[u8], fields: &Fields) -> Result<Option<String>, serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use std::borrow::Cow;

    /// Where a value is: rendered only for a conflict.
    struct Path<'p> {
        parent: Option<&'p Path<'p>>,
        name: &'p str,
    }
    impl Path<'_> {
        fn render(&self) -> String {
            match self.parent {
                Some(p) if !p.name.is_empty() && self.name != "[]" => {
                    format!("{}.{}", p.render(), self.name)
                }
                Some(p) => format!("{}{}", p.render(), self.name),
                None => self.name.to_string(),
            }
        }
    }

    /// A value expected to be of type `dt`.
    struct Expect<'a> {
        dt: &'a DataType,
        path: Path<'a>,
    }
    impl<'de> DeserializeSeed<'de> for Expect<'_> {
        type Value = Option<String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
            if !type_has_integer(self.dt) {
                d.deserialize_ignored_any(IgnoredAny)?;
                return Ok(None);
            }
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Expect<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Option<String>, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Option<String>, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Option<String>, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, v: f64) -> Result<Option<String>, E> {
            Ok(is_integer(self.dt).then(|| {
                format!(
                    "field `{}`: expected {}, found {v} (set the column's type, or let \
                     inference see this row)",
                    self.path.render(),
                    self.dt
                )
            }))
        }
        fn visit_str<E>(self, _: &str) -> Result<Option<String>, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Option<String>, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Option<String>, E> {
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
            let fields = match self.dt {
                DataType::Struct(fields) => Some(fields),
                _ => None,
            };
            let mut found = None;
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                let field = fields.and_then(|f| f.find(&key)).map(|(_, f)| f);
                match field {
                    Some(f) if found.is_none() => {
                        found = map.next_value_seed(Expect {
                            dt: f.data_type(),
                            path: Path {
                                parent: Some(&self.path),
                                name: &key,
                            },
                        })?;
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(found)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<String>, A::Error> {
            let item = match self.dt {
                DataType::List(f) | DataType::LargeList(f) => Some(f.data_type()),
                _ => None,
            };
            let mut found = None;
            loop {
                let next = match item {
                    Some(dt) if found.is_none() => seq.next_element_seed(Expect {
                        dt,
                        path: Path {
                            parent: Some(&self.path),
                            name: "[]",
                        },
                    })?,
                    _ => seq.next_element::<IgnoredAny>()?.map(|_| None),
                };
                match next {
                    None => return Ok(found),
                    Some(f) => found = found.or(f),
                }
            }
        }
    }

    let root = DataType::Struct(fields.clone());
    let mut de = serde_json::Deserializer::from_slice(raw);
    let found = Expect {
        dt: &root,
        path: Path {
            parent: None,
            name: "",
        },
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type};
    use arrow_schema::Field;

    #[test]
    fn fractions_in_integer_columns_are_rejected_by_field_never_truncated() {
        let item = Arc::new(Field::new("item", DataType::Int64, true));
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new(
                "s",
                DataType::Struct(vec![Field::new("m", DataType::UInt32, true)].into()),
                true,
            ),
            Field::new("l", DataType::List(item), true),
            Field::new("f", DataType::Float64, true),
        ]));
        let (bytes, ranges) = lines(concat!(
            r#"{"n": 1, "s": {"m": 7}, "l": [1, 2], "f": 0.5}"#,
            "\n",
            r#"{"n": 2.5}"#,
            "\n",
            r#"{"s": {"m": 1e3}}"#,
            "\n",
            r#"{"l": [1, 2.0]}"#,
            "\n",
            r#"{"f": 2.5, "n": -3}"#
        ));
        let d = decode(&schema, SchemaPolicy::Evolve, &bytes, &ranges);
        let ns: Vec<_> = d
            .batch
            .column(0)
            .as_primitive::<Int64Type>()
            .iter()
            .collect();
        assert_eq!(ns, [Some(1), Some(-3)]);
        let why: Vec<_> = d
            .rejected
            .iter()
            .map(|r| (r.index, r.message.split(':').next().unwrap().to_string()))
            .collect();
        assert_eq!(
            why,
            [
                (1, "field `n`".to_string()),
                (2, "field `s.m`".to_string()),
                (3, "field `l[]`".to_string())
            ]
        );
        let d = decode(&schema, SchemaPolicy::DiscardRows, &bytes, &ranges);
        assert_eq!((d.batch.num_rows(), d.discarded), (2, 3));
        assert_eq!(d.discarded_indexes, [1, 2, 3]);
        // Integers as JSON text in an integer column are still read as integers.
        let (bytes, ranges) = lines(r#"{"n": 5, "l": [3]}"#);
        let d = decode(&schema, SchemaPolicy::Freeze, &bytes, &ranges);
        assert!(d.rejected.is_empty());
        assert_eq!(d.batch.num_rows(), 1);
    }

    fn lines(text: &str) -> (Vec<u8>, Vec<Range<usize>>) {
        let mut ranges = Vec::new();
        let mut at = 0;
        for line in text.split('\n') {
            ranges.push(at..at + line.len());
            at += line.len() + 1;
        }
        (text.as_bytes().to_vec(), ranges)
    }

    #[test]
    fn a_stream_with_a_non_object_record_still_infers_from_the_others() {
        let mut d = StreamDecoder::new(None, SchemaPolicy::Evolve);
        let payloads: [&[u8]; 4] = [br#"{"id":1}"#, b"[1,2]", b"nope", br#"{"id":4}"#];
        let out = d.decode(payloads).decoded;
        assert_eq!(out.batch.num_rows(), 2);
        let bad: Vec<usize> = out.rejected.iter().map(|r| r.index).collect();
        assert_eq!(bad, [1, 2]);
    }

    #[test]
    fn discarded_records_are_listed_by_index() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let (bytes, ranges) = lines("{\"id\":1}\n{\"id\":2.5}\n{\"id\":\"x\"}\n{\"id\":4}");
        let out = decode(&schema, SchemaPolicy::DiscardRows, &bytes, &ranges);
        assert_eq!(out.batch.num_rows(), 2);
        assert_eq!(out.discarded, 2);
        assert_eq!(out.discarded_indexes, [1, 2]);
    }

    #[test]
    fn non_integer_numbers_are_found_outside_strings_only() {
        assert!(has_non_integer_number(br#"{"a": 2.5}"#));
        assert!(has_non_integer_number(br#"{"a": 1e3}"#));
        assert!(!has_non_integer_number(
            br#"{"a": 25, "b": "2.5", "c": "x\"1.5"}"#
        ));
        assert!(!has_non_integer_number(br#"{"e": 1, "ver.2": 3}"#));
    }

    #[test]
    fn integer_conflicts_name_the_nested_field() {
        let schema = Schema::new(vec![Field::new(
            "u",
            DataType::Struct(vec![Field::new("n", DataType::Int64, true)].into()),
            true,
        )]);
        let msg = integer_conflict(
            br#"{"x": [1.5], "u": {"s": 0.5, "n": 2.5}}"#,
            schema.fields(),
        )
        .unwrap()
        .unwrap();
        assert!(
            msg.starts_with("field `u.n`: expected Int64, found 2.5"),
            "{msg}"
        );
        let ok = br#"{"u": {"n": 2, "z": {"deep": [1.5, {"a": 2.5}]}}, "w": 3.5}"#;
        assert_eq!(integer_conflict(ok, schema.fields()).unwrap(), None);
        assert!(integer_conflict(br#"{"u": {"n": 2"#, schema.fields()).is_err());
        let lists = Schema::new(vec![Field::new(
            "l",
            DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
            true,
        )]);
        let msg = integer_conflict(br#"{"l": [1, 2, 3.25]}"#, lists.fields())
            .unwrap()
            .unwrap();
        assert!(
            msg.starts_with("field `l[]`: expected Int64, found 3.25"),
            "{msg}"
        );
    }

    #[test]
    fn bad_records_come_back_by_index_and_the_rest_are_rows_in_order() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let (bytes, ranges) = lines(
            "{\"id\": 1, \"name\": \"a\"}\n{\"id\": 2.5}\n{broken\n{\"id\": 4, \"extra\": 1}\n{\"id\": 5}",
        );
        let d = decode(&schema, SchemaPolicy::Evolve, &bytes, &ranges);
        let ids: Vec<i64> = d
            .batch
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        assert_eq!(ids, [1, 5]);
        let indexes: Vec<usize> = d.rejected.iter().map(|r| r.index).collect();
        assert_eq!(indexes, [1, 2, 3]);
        assert!(d.rejected[0]
            .message
            .starts_with("field `id`: expected Int64, found 2.5"));
        assert!(
            d.rejected[2].message.contains("extra"),
            "{:?}",
            d.rejected[2]
        );

        let d = decode(&schema, SchemaPolicy::DiscardRows, &bytes, &ranges);
        assert_eq!(
            (d.batch.num_rows(), d.discarded, d.rejected.len()),
            (2, 2, 1)
        );
        let d = decode(&schema, SchemaPolicy::DiscardColumns, &bytes, &ranges);
        assert_eq!((d.batch.num_rows(), d.rejected.len()), (3, 2));
    }

    #[test]
    fn a_stream_widens_int_to_float_without_changing_a_value_and_adds_fields() {
        let mut s = StreamDecoder::new(None, SchemaPolicy::Evolve);
        let first = s.decode([&b"{\"n\": 1}"[..], b"{\"n\": 2}"]);
        assert_eq!(
            first
                .change
                .as_ref()
                .map(|c| c.schema.field(0).data_type().clone()),
            Some(DataType::Int64)
        );
        assert_eq!(first.decoded.batch.num_rows(), 2);
        // Fits: no change, no inference.
        let same = s.decode([&b"{\"n\": 3}"[..]]);
        assert!(same.change.is_none());
        let wider = s.decode([&b"{\"n\": 4}"[..], b"{\"n\": 4.5, \"tag\": \"x\"}", b"nope"]);
        let change = wider.change.expect("widened");
        assert_eq!(change.describe(), "added tag; widened n Int64 → Float64");
        let n = wider.decoded.batch.column(0).as_primitive::<Float64Type>();
        assert_eq!(n.values().to_vec(), [4.0, 4.5]);
        assert_eq!(wider.decoded.rejected.len(), 1);
        assert_eq!(wider.decoded.rejected[0].index, 2);
    }

    #[test]
    fn a_frozen_stream_keeps_its_schema_and_rejects_misfits() {
        let schema = Schema::new(vec![Field::new("n", DataType::Int64, true)]);
        let mut s = StreamDecoder::new(Some(schema), SchemaPolicy::Freeze);
        let d = s.decode([&b"{\"n\": 1}"[..], b"{\"n\": 1.5}", b"{\"n\": 2, \"x\": 1}"]);
        assert!(d.change.is_none());
        assert_eq!(d.decoded.batch.num_rows(), 1);
        assert_eq!(d.decoded.rejected.len(), 2);
    }

    #[test]
    fn payloads_that_are_not_objects_are_rejected_with_what_they_are() {
        let mut s = StreamDecoder::new(None, SchemaPolicy::Evolve);
        let d = s.decode([&b"42"[..], b"{oops"]);
        assert_eq!(
            d.decoded.rejected[0].message,
            "expected a JSON object, found a number"
        );
        assert!(d.decoded.rejected[1].message.starts_with("not valid JSON"));
    }

    #[test]
    fn rows_encode_one_object_each() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("note", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(arrow_array::Int64Array::from(vec![1, 2])),
                Arc::new(arrow_array::StringArray::from(vec![Some("a\nb"), None])),
            ],
        )
        .unwrap();
        let (bytes, ranges) = encode_rows(&batch, true).unwrap();
        let rows: Vec<&str> = ranges
            .iter()
            .map(|r| std::str::from_utf8(&bytes[r.clone()]).unwrap())
            .collect();
        assert_eq!(
            rows,
            [r#"{"id":1,"note":"a\nb"}"#, r#"{"id":2,"note":null}"#]
        );
    }
}

#[cfg(test)]
mod utc_tests {
    use super::*;
    use arrow_array::TimestampMillisecondArray;

    #[test]
    fn utc_named_timestamps_encode_as_json() {
        let ts = TimestampMillisecondArray::from(vec![Some(1_700_000_000_123), None])
            .with_timezone("UTC");
        let batch =
            RecordBatch::try_from_iter([("at", Arc::new(ts) as arrow_array::ArrayRef)]).unwrap();
        let (bytes, ranges) = encode_rows(&batch, true).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(ranges.len(), 2);
        assert_eq!(
            &text[ranges[0].clone()],
            r#"{"at":"2023-11-14T22:13:20.123Z"}"#
        );
        assert_eq!(&text[ranges[1].clone()], r#"{"at":null}"#);
    }
}
