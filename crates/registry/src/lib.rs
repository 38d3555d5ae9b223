//! # tributary-registry: a Confluent-compatible schema registry
//!
//! No schema registry can be installed on Tributary's machines, so the project ships both
//! sides of the protocol:
//!
//! - [`server`]: the REST API Confluent's serializers and tools use (`/subjects`, `/schemas/ids`,
//!   `/config`, `/compatibility`, `/mode`, `/schemas/types`), served by
//!   `tributary registry serve`; [`registry::Registry`] holds the rules (global ids shared
//!   across subjects, versions, identity, soft and permanent deletes, references, configs).
//! - [`client`]: what Tributary's Kafka connectors use: register and look up by subject (topic,
//!   record and topic-record name strategies), ids cached, schemas fetched by id, basic or
//!   bearer authentication, retries with the core's backoff.
//! - Compatibility checks that read the schemas: [`avro`] (the specification's resolution
//!   rules, written here: see that module for why not `apache-avro`), [`json_schema`] and
//!   [`protobuf`], combined in [`schema`] for the seven levels (BACKWARD, the default,
//!   BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE, NONE).
//! - [`validate`]: JSON Schema validation of documents (what the Kafka connectors check
//!   `format: json_schema` payloads with).
//! - [`store`]: state behind the [`store::RegistryStore`] trait, an SQLite file by default, so
//!   ids and versions survive restarts.
//!
//! Dependencies are the ones the workspace already builds (axum, reqwest with rustls,
//! rusqlite, serde_json, base64, regex): no Avro or Protobuf library, whose schema halves are small
//! next to what they pull in.

pub mod avro;
pub mod client;
pub mod json_schema;
pub mod protobuf;
pub mod registry;
pub mod schema;
pub mod server;
pub mod store;
pub mod types;
pub mod validate;

pub use client::{
    ClientAuth, ClientError, RegistryClient, RegistryClientConfig, SubjectNameStrategy,
};
pub use registry::{ApiError, NewSchema, Registry, VersionSpec};
pub use server::{router, serve, ServerAuth};
pub use store::{MemoryStore, RegistryStore, SqliteRegistryStore};
pub use types::{Compatibility, Reference, SchemaRecord, SchemaType};
