//! # tributary-kafka: Kafka as a sink and as a source
//!
//! - [`sink::KafkaSink`] (`sink: { kind: kafka }`): rows → messages (value as JSON, string or
//!   raw bytes; key and headers from fields or templates; topic templates like `cdc.{table}`),
//!   an idempotent producer by default, and the source position acknowledged only from the
//!   delivery reports. Refused records are dead-lettered with the reason.
//! - [`source::KafkaSource`] (`source: { kind: kafka }`): a consumer-group member; offsets are
//!   committed to the group only after the runtime made the data durable, per partition, in
//!   order, and on revoke only after a bounded drain. Values decode as JSON (under the
//!   pipeline's schema policy), string or raw; Kafka metadata columns on request.
//! - [`dead_letter::KafkaDeadLetter`] (`dead_letter: { kind: kafka }`): dead letters as
//!   messages carrying the original bytes, with the reason, origin and attempt count in headers.
//! - [`registry`]: `format: avro` and `format: json_schema` with a Confluent-compatible schema
//!   registry (wire format: magic byte, schema id, payload): the sink derives, registers and
//!   caches value schemas per topic; the source fetches writer schemas by id and decodes with
//!   `tributary_formats::avro`, a codec written on the Arrow arrays rather than `arrow-avro`
//!   (which needs rustc 1.88 against the workspace's 1.85, brings `rand`, `strum_macros`,
//!   `uuid`, `indexmap` and compression codecs, and fails a whole buffer on one bad record
//!   where the source must dead-letter that record alone).
//! - [`registry_store`]: the built-in schema registry's state on a compacted Kafka topic
//!   (`tributary registry serve --kafka-store`).
//! - [`protobuf`]: `format: protobuf`: Arrow rows ⇄ Protobuf messages (a `.proto` derived from
//!   the rows or given), with Confluent's message indexes.
//! - [`config`]: the typed, documented configuration of both; [`template`]: `{field}`
//!   templates; [`error`]: librdkafka errors classified once (transient / record / fatal).
//!
//! ## Why librdkafka (`rdkafka`)
//!
//! It is the client Vector and Arroyo use, and what `confluent-kafka` users run: idempotence,
//! transactions, cooperative rebalancing, every compression codec, and years of production
//! fixes that a pure-Rust client does not have yet. `rdkafka-sys` builds librdkafka 2.12 from
//! source and links it statically (Debian's 2.0.2 is too old for the broker here). Features
//! are lean: `zstd` and `libz` (lz4 and snappy are built into librdkafka itself); no SSL or
//! SASL, which would pull OpenSSL and Cyrus SASL into the build. librdkafka's own C build
//! (≈ 1 min on 2 cores) is the price; it is paid once per target directory.
//!
//! ## Delivery guarantees
//!
//! At-least-once end to end: a source position (the file offset, the upstream Kafka offsets)
//! is committed only after every message before it has a successful delivery report, and a
//! Kafka source commits its group offsets only after the runtime committed the batch. A crash
//! replays what was produced or read since the last commit; the idempotent producer removes
//! the duplicates of its own retries, not those of a replay.
//!
//! ## Broker notes (tansu 0.6, the broker the tests run against)
//!
//! tansu speaks the Kafka protocol but is not Apache Kafka; what the tests found is written
//! in `docs/kafka.md` and where it matters in the code: `read_committed` consumers still see
//! aborted transactional records, so transactional isolation cannot be verified against it.

pub mod config;
pub mod dead_letter;
pub mod error;
pub mod positions;
pub mod protobuf;
pub mod registry;
pub mod registry_store;
pub mod sink;
pub mod source;
pub mod template;

pub use config::{KafkaSinkConfig, KafkaSourceConfig};

/// Forwards librdkafka's log lines to `tracing` (target `librdkafka`), so `--log` filters them
/// with everything else. Set `options: { debug: "cgrp,fetch" }` for librdkafka's debug lines.
pub(crate) fn log_to_tracing(
    level: rdkafka::config::RDKafkaLogLevel,
    facility: &str,
    message: &str,
) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "librdkafka", facility, "{message}")
        }
        L::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        L::Notice | L::Info => tracing::info!(target: "librdkafka", facility, "{message}"),
        L::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}
pub use sink::KafkaSink;
pub use source::KafkaSource;
