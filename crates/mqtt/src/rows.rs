//! Messages → one Arrow batch: payload columns (JSON, text or bytes, through
//! [`tributary_formats::payload`]), topic-template columns and metadata columns. Messages that
//! cannot become a row come back with the reason.

use std::sync::Arc;

use arrow_array::builder::{MapBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, BooleanArray, Int32Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow_schema::{Field, Schema, SchemaRef};
use tributary_core::schema::SchemaPolicy;
use tributary_core::RowMeta;
use tributary_formats::payload::{PayloadDecoder, PayloadFormat};

use crate::client::Received;
use crate::config::MetadataColumns;
use crate::topic::TopicTemplate;
use crate::MqttError;

/// What [`RowBuilder::build`] made of a set of messages.
pub(crate) struct Built {
    /// The rows (`None` when no message became a row).
    pub batch: Option<RecordBatch>,
    /// Per-row metadata (topic, QoS, user properties as headers, receive time).
    pub rows: Vec<RowMeta>,
    /// Messages that did not become rows: (index in the input, reason).
    pub rejected: Vec<(usize, String)>,
    /// Valid JSON dropped under `discard_rows`.
    pub discarded: u64,
}

/// Turns messages into batches, keeping the stream's JSON schema between calls.
pub(crate) struct RowBuilder {
    template: Option<TopicTemplate>,
    meta: MetadataColumns,
    payloads: PayloadDecoder,
}

impl RowBuilder {
    pub fn new(
        format: PayloadFormat,
        template: Option<TopicTemplate>,
        meta: MetadataColumns,
        policy: SchemaPolicy,
        stored: Option<Schema>,
    ) -> Self {
        // A stored schema holds our own columns too: the decoder only knows the payload's.
        let own: Vec<&str> = template
            .iter()
            .flat_map(|t| t.columns())
            .chain(meta.names())
            .collect();
        let payloads = PayloadDecoder::new(format, policy, stored.as_ref(), &own);
        RowBuilder {
            template,
            meta,
            payloads,
        }
    }

    pub fn build(&mut self, msgs: &[&Received]) -> Result<Built, MqttError> {
        let mut rejected = Vec::new();
        // Topic levels first: a topic that does not fit the template is not read further.
        let mut levels: Vec<Vec<&str>> = Vec::with_capacity(msgs.len());
        let mut candidates: Vec<usize> = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            match &self.template {
                None => candidates.push(i),
                Some(t) => match t.extract(&m.topic) {
                    Some(values) => {
                        levels.push(values);
                        candidates.push(i);
                    }
                    None => rejected.push((
                        i,
                        format!(
                            "topic `{}` does not match the topic template `{}`",
                            m.topic,
                            t.as_str()
                        ),
                    )),
                },
            }
        }
        let payloads: Vec<&[u8]> = candidates.iter().map(|&i| &msgs[i].payload[..]).collect();
        let decoded = self
            .payloads
            .decode(&payloads)
            .map_err(|e| MqttError::Internal(e.to_string()))?;
        if let Some(change) = &decoded.change {
            tracing::debug!(change = %change.describe(), "MQTT payload schema changed");
        }
        for r in decoded.rejected {
            rejected.push((candidates[r.index], r.message));
        }
        // (index into msgs, index into levels) of the rows.
        let kept: Vec<(usize, usize)> = decoded.kept.iter().map(|&c| (candidates[c], c)).collect();
        let (payload, discarded) = (decoded.batch, decoded.discarded);
        rejected.sort_by_key(|r| r.0);
        let rows: Vec<RowMeta> = kept.iter().map(|(i, _)| row_meta(msgs[*i])).collect();
        if kept.is_empty() {
            return Ok(Built {
                batch: None,
                rows,
                rejected,
                discarded,
            });
        }

        let mut fields: Vec<Arc<Field>> = payload.schema().fields().iter().cloned().collect();
        let mut columns: Vec<ArrayRef> = payload.columns().to_vec();
        let mut add = |name: &str, column: ArrayRef, nullable: bool| -> Result<(), MqttError> {
            if fields.iter().any(|f| f.name() == name) {
                return Err(MqttError::ColumnClash {
                    column: name.to_string(),
                });
            }
            fields.push(Arc::new(Field::new(
                name,
                column.data_type().clone(),
                nullable,
            )));
            columns.push(column);
            Ok(())
        };
        if let Some(t) = &self.template {
            for (n, name) in t.columns().enumerate() {
                let col = StringArray::from_iter_values(kept.iter().map(|(_, c)| levels[*c][n]));
                add(name, Arc::new(col), false)?;
            }
        }
        let m = &self.meta;
        if let Some(name) = &m.topic {
            let col = StringArray::from_iter_values(kept.iter().map(|(i, _)| &msgs[*i].topic));
            add(name, Arc::new(col), false)?;
        }
        if let Some(name) = &m.received_at {
            let col = TimestampMillisecondArray::from_iter_values(
                kept.iter().map(|(i, _)| msgs[*i].received_at_ms),
            )
            .with_timezone("UTC");
            add(name, Arc::new(col), false)?;
        }
        if let Some(name) = &m.qos {
            let col =
                Int32Array::from_iter_values(kept.iter().map(|(i, _)| i32::from(msgs[*i].qos)));
            add(name, Arc::new(col), false)?;
        }
        if let Some(name) = &m.retain {
            let col = BooleanArray::from(
                kept.iter()
                    .map(|(i, _)| msgs[*i].retain)
                    .collect::<Vec<_>>(),
            );
            add(name, Arc::new(col), false)?;
        }
        if let Some(name) = &m.user_properties {
            let mut b = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
            for (i, _) in &kept {
                for (k, v) in &msgs[*i].user_properties {
                    b.keys().append_value(k);
                    b.values().append_value(v);
                }
                b.append(true)
                    .map_err(|e| MqttError::Internal(e.to_string()))?;
            }
            add(name, Arc::new(b.finish()), false)?;
        }
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        Ok(Built {
            batch: Some(batch(schema, columns)?),
            rows,
            rejected,
            discarded,
        })
    }
}

fn batch(schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch, MqttError> {
    RecordBatch::try_new(schema, columns).map_err(|e| MqttError::Internal(e.to_string()))
}

fn row_meta(m: &Received) -> RowMeta {
    let mut meta = RowMeta {
        key: None,
        headers: m
            .user_properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect(),
        timestamp_ms: Some(m.received_at_ms),
        ..Default::default()
    };
    meta.attributes.insert("topic".into(), m.topic.clone());
    meta.attributes.insert("qos".into(), m.qos.to_string());
    meta
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use arrow_schema::DataType;

    fn msg(topic: &str, payload: &str) -> Received {
        Received {
            topic: topic.into(),
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            qos: 1,
            pkid: 1,
            retain: false,
            user_properties: vec![("unit".into(), "C".into())],
            epoch: 0,
            received_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn json_rows_get_template_and_metadata_columns_and_bad_ones_a_reason() {
        let template = TopicTemplate::parse("sensors/{site}/{device}").unwrap();
        let mut b = RowBuilder::new(
            PayloadFormat::Json,
            Some(template),
            MetadataColumns::default(),
            SchemaPolicy::Evolve,
            None,
        );
        let msgs = [
            msg("sensors/ber/d1", r#"{"t": 20}"#),
            msg("sensors/ber", r#"{"t": 21}"#),
            msg("sensors/par/d2", "{oops"),
            msg("sensors/par/d3", r#"{"t": 22.5}"#),
        ];
        let refs: Vec<&Received> = msgs.iter().collect();
        let built = b.build(&refs).unwrap();
        let batch = built.batch.unwrap();
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "t",
                "site",
                "device",
                "_topic",
                "_received_at",
                "_properties"
            ]
        );
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(
            batch
                .column(2)
                .as_string::<i32>()
                .iter()
                .flatten()
                .collect::<Vec<_>>(),
            ["d1", "d3"]
        );
        let indexes: Vec<usize> = built.rejected.iter().map(|r| r.0).collect();
        assert_eq!(indexes, [1, 2]);
        assert!(built.rejected[0]
            .1
            .contains("does not match the topic template"));
        assert!(
            built.rejected[1].1.contains("parsing object"),
            "{}",
            built.rejected[1].1
        );
        assert_eq!(
            built.rows[0].headers,
            vec![("unit".to_string(), b"C".to_vec())]
        );
    }

    #[test]
    fn a_payload_field_named_like_a_metadata_column_is_a_clear_error() {
        let mut b = RowBuilder::new(
            PayloadFormat::Json,
            None,
            MetadataColumns::default(),
            SchemaPolicy::Evolve,
            None,
        );
        let m = msg("a", r#"{"_topic": 1}"#);
        let err = b.build(&[&m]).err().unwrap().to_string();
        assert!(err.contains("`_topic`"), "{err}");
    }

    #[test]
    fn discard_rows_keeps_metadata_aligned_with_the_rows_it_keeps() {
        let schema = Schema::new(vec![Field::new("n", DataType::Int64, true)]);
        let mut b = RowBuilder::new(
            PayloadFormat::Json,
            None,
            MetadataColumns::default(),
            SchemaPolicy::DiscardRows,
            Some(schema),
        );
        let msgs = [
            msg("a", r#"{"n": 1}"#),
            msg("b", r#"{"n": 1.5}"#),
            msg("c", r#"{"n": 3}"#),
        ];
        let refs: Vec<&Received> = msgs.iter().collect();
        let built = b.build(&refs).unwrap();
        assert_eq!(built.discarded, 1);
        let batch = built.batch.unwrap();
        let n = batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(n.values().to_vec(), [1, 3]);
        let topics = batch.column(1).as_string::<i32>();
        assert_eq!(topics.iter().flatten().collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn text_rejects_invalid_utf8_and_bytes_take_anything() {
        let mut bad = msg("a", "x");
        bad.payload = bytes::Bytes::from_static(&[0xff, 0xfe]);
        let good = msg("a", "héllo");
        let meta = MetadataColumns {
            topic: None,
            received_at: None,
            qos: Some("qos".into()),
            retain: None,
            user_properties: None,
        };
        let mut text = RowBuilder::new(
            PayloadFormat::Text,
            None,
            meta.clone(),
            SchemaPolicy::Evolve,
            None,
        );
        let built = text.build(&[&bad, &good]).unwrap();
        assert_eq!(built.batch.unwrap().num_rows(), 1);
        assert!(built.rejected[0].1.contains("not UTF-8"));
        let mut raw = RowBuilder::new(PayloadFormat::Bytes, None, meta, SchemaPolicy::Evolve, None);
        let batch = raw.build(&[&bad, &good]).unwrap().batch.unwrap();
        assert_eq!(batch.column(0).as_binary::<i32>().value(0), [0xff, 0xfe]);
        assert_eq!(batch.schema().field(1).name(), "qos");
    }
}
