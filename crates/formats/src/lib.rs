//! # tributary-formats: record formats to and from Arrow
//!
//! What every connector that carries records in a self-describing format shares, whatever
//! the transport: a file of NDJSON lines, a batch of Kafka messages, MQTT payloads, API
//! response pages.
//!
//! - [`json`]: schema inference, decoding a set of JSON records into one Arrow batch under
//!   the pipeline's schema policy (bad records come back with their index and reason, never
//!   dropped or coerced silently), an evolving decoder for message streams, and encoding
//!   batches back to one JSON document per row.
//! - [`avro`]: Avro binary ⇄ Arrow (schemas derived both ways, an encoder on the arrays, a
//!   decoder that follows changing writer schemas under the schema policy), and
//!   [`confluent`]: the schema-registry wire format (magic byte, schema id).
//! - [`payload`]: message payloads (JSON, UTF-8 text, raw bytes) into payload columns, for
//!   sources that receive one record per message (MQTT, CoAP).
//!
//! CSV, Excel and Parquet stay in `tributary-files`: they are file formats whose readers are
//! bound to files (byte offsets, parallel chunks, sheets, row groups).

pub mod avro;
pub mod confluent;
pub mod json;
pub mod payload;
