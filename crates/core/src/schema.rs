//! Schema evolution: what happens when data stops matching the stream's schema.
//!
//! Every source that infers or receives schemas (a new file with an extra column, an API that
//! starts sending floats where it sent integers) hands the incoming schema to [`reconcile`]
//! together with the stream's current schema and the pipeline's [`SchemaPolicy`]. The result
//! says which schema to read with and which incoming columns have no place in it; the source
//! then treats the rows that use those columns as the policy says (see [`SchemaPolicy`]).
//!
//! Widening never changes a value: integers become `float64` only while every integer seen is
//! exactly representable (the sources check), a date becomes a timestamp at midnight, and
//! anything else that disagrees becomes a string holding the value's text.

use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};
use serde::{Deserialize, Serialize};

/// Schema metadata key listing a stream's primary key columns (comma-separated), set by the
/// database sources; sinks key by it (the PostgreSQL sink's table key and upserts, the Kafka
/// sink's `key: primary_key`).
pub const PRIMARY_KEY_KEY: &str = "tributary.primary_key";

/// What to do when incoming data does not fit the stream's schema (`schema_policy:` in the
/// pipeline file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaPolicy {
    /// Add new columns (nullable) and widen types (`int64` → `float64`, date → timestamp,
    /// incompatible → string). Every change is a new schema version. The default.
    #[default]
    Evolve,
    /// Keep the first schema: rows with a value in an unknown column, or a value of another
    /// type, are rejected (dead-lettered under the default `on_error`).
    Freeze,
    /// Keep the first schema and drop unknown columns from every row; values of another type
    /// are still rejected.
    DiscardColumns,
    /// Keep the first schema and drop (count as skipped, not dead-letter) rows that have a
    /// value in an unknown column or a value of another type.
    DiscardRows,
}

impl SchemaPolicy {
    /// The name used in config.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaPolicy::Evolve => "evolve",
            SchemaPolicy::Freeze => "freeze",
            SchemaPolicy::DiscardColumns => "discard_columns",
            SchemaPolicy::DiscardRows => "discard_rows",
        }
    }
}

/// The outcome of fitting an incoming schema to a stream's schema.
#[derive(Clone, Debug, PartialEq)]
pub struct Reconciled {
    /// The schema to read the incoming data with.
    pub schema: Schema,
    /// Columns added to the stream (evolve).
    pub added: Vec<String>,
    /// Columns whose type was widened: (name, old type, new type) (evolve).
    pub widened: Vec<(String, DataType, DataType)>,
    /// Incoming columns the schema has no place for (freeze and the discard policies).
    pub unknown: Vec<String>,
}

impl Reconciled {
    /// Whether the schema to read with differs from the current one.
    pub fn changed(&self) -> bool {
        !self.added.is_empty() || !self.widened.is_empty()
    }

    /// One line for logs and summaries: `added x; widened y int64 → float64`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.added.is_empty() {
            parts.push(format!("added {}", self.added.join(", ")));
        }
        for (name, from, to) in &self.widened {
            parts.push(format!("widened {name} {from} → {to}"));
        }
        if !self.unknown.is_empty() {
            parts.push(format!("unknown {}", self.unknown.join(", ")));
        }
        parts.join("; ")
    }
}

/// Fits `incoming` to `current` under `policy`. Without a current schema the incoming one is
/// taken as it is (the stream's first version).
pub fn reconcile(current: Option<&Schema>, incoming: &Schema, policy: SchemaPolicy) -> Reconciled {
    let Some(current) = current else {
        return Reconciled {
            schema: nullable(incoming),
            added: Vec::new(),
            widened: Vec::new(),
            unknown: Vec::new(),
        };
    };
    let mut fields: Vec<Field> = current
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut added = Vec::new();
    let mut widened = Vec::new();
    let mut unknown = Vec::new();
    for field in incoming.fields() {
        match fields.iter_mut().find(|f| f.name() == field.name()) {
            Some(existing) => {
                if policy == SchemaPolicy::Evolve {
                    let to = widen(existing.data_type(), field.data_type());
                    if &to != existing.data_type() {
                        widened.push((
                            field.name().clone(),
                            existing.data_type().clone(),
                            to.clone(),
                        ));
                        *existing = existing.clone().with_data_type(to).with_nullable(true);
                    }
                }
            }
            None if policy == SchemaPolicy::Evolve => {
                added.push(field.name().clone());
                fields.push(field.as_ref().clone().with_nullable(true));
            }
            None => unknown.push(field.name().clone()),
        }
    }
    Reconciled {
        schema: Schema::new_with_metadata(fields, current.metadata().clone()),
        added,
        widened,
        unknown,
    }
}

/// What changed from `old` to `new`, in one line: `added note; amount Int64 → Float64;
/// removed x` (empty when only metadata or nullability changed).
pub fn diff(old: &Schema, new: &Schema) -> String {
    let mut parts = Vec::new();
    let added: Vec<&str> = new
        .fields()
        .iter()
        .filter(|f| old.field_with_name(f.name()).is_err())
        .map(|f| f.name().as_str())
        .collect();
    if !added.is_empty() {
        parts.push(format!("added {}", added.join(", ")));
    }
    for f in new.fields() {
        if let Ok(o) = old.field_with_name(f.name()) {
            if o.data_type() != f.data_type() {
                parts.push(format!(
                    "{} {} → {}",
                    f.name(),
                    o.data_type(),
                    f.data_type()
                ));
            }
        }
    }
    let removed: Vec<&str> = old
        .fields()
        .iter()
        .filter(|f| new.field_with_name(f.name()).is_err())
        .map(|f| f.name().as_str())
        .collect();
    if !removed.is_empty() {
        parts.push(format!("removed {}", removed.join(", ")));
    }
    parts.join("; ")
}

/// The schema with every field nullable (a later file may leave any column out).
fn nullable(schema: &Schema) -> Schema {
    Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    )
}

/// The narrowest type that holds every value of both `a` and `b` without changing it.
pub fn widen(a: &DataType, b: &DataType) -> DataType {
    use DataType::*;
    if a == b {
        return a.clone();
    }
    match (a, b) {
        (Null, t) | (t, Null) => t.clone(),
        (x, y) if x.is_integer() && y.is_integer() => Int64,
        (x, y) if (x.is_integer() || x.is_floating()) && (y.is_integer() || y.is_floating()) => {
            Float64
        }
        (Date32, Timestamp(unit, tz)) | (Timestamp(unit, tz), Date32) => {
            Timestamp(*unit, tz.clone())
        }
        (Timestamp(_, tz_a), Timestamp(_, tz_b)) if tz_a == tz_b => {
            Timestamp(TimeUnit::Microsecond, tz_a.clone())
        }
        (Struct(fa), Struct(fb)) => Struct(merge_fields(fa, fb)),
        (List(ia), List(ib)) => {
            let item = widen(ia.data_type(), ib.data_type());
            List(std::sync::Arc::new(Field::new(ia.name(), item, true)))
        }
        _ => Utf8,
    }
}

/// Struct fields of both sides: shared ones widened, the rest appended (nullable).
fn merge_fields(a: &Fields, b: &Fields) -> Fields {
    let mut out: Vec<Field> = a.iter().map(|f| f.as_ref().clone()).collect();
    for fb in b.iter() {
        match out.iter_mut().find(|f| f.name() == fb.name()) {
            Some(fa) => {
                let t = widen(fa.data_type(), fb.data_type());
                *fa = fa.clone().with_data_type(t).with_nullable(true);
            }
            None => out.push(fb.as_ref().clone().with_nullable(true)),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &[(&str, DataType)]) -> Schema {
        Schema::new(
            fields
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn types_widen_without_changing_values() {
        use DataType::*;
        assert_eq!(widen(&Int64, &Float64), Float64);
        assert_eq!(widen(&Int32, &Int64), Int64);
        assert_eq!(widen(&Null, &Boolean), Boolean);
        assert_eq!(widen(&Boolean, &Int64), Utf8);
        let ts = Timestamp(TimeUnit::Microsecond, None);
        assert_eq!(widen(&Date32, &ts), ts);
        let sa = Struct(vec![Field::new("x", Int64, true)].into());
        let sb = Struct(vec![Field::new("x", Float64, true), Field::new("y", Utf8, true)].into());
        assert_eq!(
            widen(&sa, &sb),
            Struct(vec![Field::new("x", Float64, true), Field::new("y", Utf8, true)].into())
        );
    }

    #[test]
    fn evolve_adds_and_widens_the_others_keep_the_schema() {
        use DataType::*;
        let current = schema(&[("id", Int64), ("amount", Int64)]);
        let incoming = schema(&[("id", Int64), ("amount", Float64), ("note", Utf8)]);

        let evolved = reconcile(Some(&current), &incoming, SchemaPolicy::Evolve);
        assert_eq!(
            evolved.schema,
            schema(&[("id", Int64), ("amount", Float64), ("note", Utf8)])
        );
        assert_eq!(evolved.added, vec!["note"]);
        assert_eq!(evolved.widened, vec![("amount".into(), Int64, Float64)]);
        assert!(evolved.changed());
        assert_eq!(
            evolved.describe(),
            "added note; widened amount Int64 → Float64"
        );

        for policy in [
            SchemaPolicy::Freeze,
            SchemaPolicy::DiscardColumns,
            SchemaPolicy::DiscardRows,
        ] {
            let kept = reconcile(Some(&current), &incoming, policy);
            assert_eq!(kept.schema, current, "{policy:?}");
            assert_eq!(kept.unknown, vec!["note"]);
            assert!(!kept.changed());
        }
        let first = reconcile(None, &incoming, SchemaPolicy::Freeze);
        assert_eq!(first.schema, incoming);
        assert_eq!(
            diff(&current, &evolved.schema),
            "added note; amount Int64 → Float64"
        );
        assert_eq!(
            diff(&evolved.schema, &current),
            "amount Float64 → Int64; removed note"
        );
    }
}
