//! Message payloads → Arrow columns, for sources that receive one record per message (MQTT,
//! CoAP, webhooks): JSON objects (columns inferred and evolved under the schema policy, see
//! [`StreamDecoder`]), UTF-8 text or raw bytes (one `payload` column). The caller adds its own
//! metadata columns for the rows in [`DecodedPayloads::kept`].

use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, RecordBatch, StringArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use tributary_core::schema::{Reconciled, SchemaPolicy};

use crate::json::{self, Rejection, StreamDecoder};

/// What payloads hold (`format:` in a message source's config).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// One JSON object per message (default).
    #[default]
    Json,
    /// UTF-8 text in a `payload` column (invalid UTF-8 is rejected).
    Text,
    /// Raw bytes in a binary `payload` column.
    Bytes,
}

/// What [`PayloadDecoder::decode`] made of a set of payloads.
#[derive(Debug)]
pub struct DecodedPayloads {
    /// The payload columns, one row per entry of `kept`.
    pub batch: RecordBatch,
    /// Indexes (into the payloads given) of the payloads that became rows, in order.
    pub kept: Vec<usize>,
    /// Payloads that did not become rows, with the reason, by index.
    pub rejected: Vec<Rejection>,
    /// Valid JSON dropped under `discard_rows`.
    pub discarded: u64,
    /// The schema change these payloads caused, if any (JSON only).
    pub change: Option<Reconciled>,
}

/// Decodes payloads batch by batch, keeping the stream's JSON schema between calls.
#[derive(Debug)]
pub struct PayloadDecoder {
    format: PayloadFormat,
    policy: SchemaPolicy,
    json: StreamDecoder,
}

impl PayloadDecoder {
    /// A decoder; `stored` is the stream's schema from an earlier run with the columns the
    /// source adds itself (`own_columns`) left out.
    pub fn new(
        format: PayloadFormat,
        policy: SchemaPolicy,
        stored: Option<&Schema>,
        own_columns: &[&str],
    ) -> Self {
        let payload = stored
            .map(|s| {
                Schema::new(
                    s.fields()
                        .iter()
                        .filter(|f| !own_columns.contains(&f.name().as_str()))
                        .cloned()
                        .collect::<Vec<_>>(),
                )
            })
            .filter(|s| !s.fields().is_empty());
        PayloadDecoder {
            format,
            policy,
            json: StreamDecoder::new(payload, policy),
        }
    }

    /// Decodes `payloads` into one batch of payload columns.
    pub fn decode(&mut self, payloads: &[&[u8]]) -> Result<DecodedPayloads, ArrowError> {
        match self.format {
            PayloadFormat::Json => {
                let out = self.json.decode(payloads.iter().copied());
                let d = out.decoded;
                let mut bad = vec![false; payloads.len()];
                for r in &d.rejected {
                    bad[r.index] = true;
                }
                let mut kept = Vec::with_capacity(d.batch.num_rows());
                for (i, p) in payloads.iter().enumerate() {
                    // Under discard_rows the decoder only counts what it dropped: find which.
                    if !bad[i] && (d.discarded == 0 || self.fits(p)) {
                        kept.push(i);
                    }
                }
                if kept.len() != d.batch.num_rows() {
                    return Err(ArrowError::ComputeError(format!(
                        "{} rows decoded for {} kept payloads",
                        d.batch.num_rows(),
                        kept.len()
                    )));
                }
                Ok(DecodedPayloads {
                    batch: d.batch,
                    kept,
                    rejected: d.rejected,
                    discarded: d.discarded,
                    change: out.change,
                })
            }
            PayloadFormat::Text => {
                let mut kept = Vec::new();
                let mut values = Vec::new();
                let mut rejected = Vec::new();
                for (i, p) in payloads.iter().enumerate() {
                    match std::str::from_utf8(p) {
                        Ok(s) => {
                            kept.push(i);
                            values.push(s);
                        }
                        Err(e) => rejected.push(Rejection {
                            index: i,
                            message: format!("payload is not UTF-8 text: {e}"),
                        }),
                    }
                }
                let col: ArrayRef = Arc::new(StringArray::from(values));
                Ok(DecodedPayloads {
                    batch: one_column(DataType::Utf8, col)?,
                    kept,
                    rejected,
                    discarded: 0,
                    change: None,
                })
            }
            PayloadFormat::Bytes => {
                let col: ArrayRef = Arc::new(BinaryArray::from_iter_values(payloads.iter()));
                Ok(DecodedPayloads {
                    batch: one_column(DataType::Binary, col)?,
                    kept: (0..payloads.len()).collect(),
                    rejected: Vec::new(),
                    discarded: 0,
                    change: None,
                })
            }
        }
    }

    /// Whether one JSON payload fits the current schema (used under `discard_rows` only).
    fn fits(&self, payload: &[u8]) -> bool {
        let Some(schema) = self.json.schema() else {
            return false;
        };
        let whole = std::iter::once(0..payload.len()).collect::<Vec<_>>();
        json::decode(schema, self.policy, payload, &whole)
            .batch
            .num_rows()
            == 1
    }
}

fn one_column(dt: DataType, col: ArrayRef) -> Result<RecordBatch, ArrowError> {
    let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("payload", dt, false)]));
    RecordBatch::try_new(schema, vec![col])
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;

    #[test]
    fn discard_rows_reports_which_payloads_became_rows() {
        let schema = Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("_topic", DataType::Utf8, false),
        ]);
        let mut d = PayloadDecoder::new(
            PayloadFormat::Json,
            SchemaPolicy::DiscardRows,
            Some(&schema),
            &["_topic"],
        );
        let out = d
            .decode(&[br#"{"n": 1}"#, br#"{"n": 1.5}"#, b"{bad", br#"{"n": 3}"#])
            .unwrap();
        assert_eq!(out.kept, [0, 3]);
        assert_eq!(out.discarded, 1);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].index, 2);
        let n = out.batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(n.values().to_vec(), [1, 3]);
    }

    #[test]
    fn text_and_bytes() {
        let mut t = PayloadDecoder::new(PayloadFormat::Text, SchemaPolicy::Evolve, None, &[]);
        let out = t.decode(&[b"ok", &[0xff]]).unwrap();
        assert_eq!((out.kept.as_slice(), out.rejected.len()), (&[0][..], 1));
        let mut b = PayloadDecoder::new(PayloadFormat::Bytes, SchemaPolicy::Evolve, None, &[]);
        let out = b.decode(&[b"ok", &[0xff]]).unwrap();
        assert_eq!(out.batch.column(0).as_binary::<i32>().value(1), [0xff]);
    }
}
