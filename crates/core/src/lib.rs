//! # tributary-core: the engine every connector plugs into
//!
//! A **pipeline** reads [`Batch`]es from one [`Source`], writes them to a [`Sink`], and only
//! then commits the source's [`Position`] to the [`StateStore`]. Records that can never be
//! written go to a [dead-letter](dead_letter) destination with the reason. Nothing is dropped
//! silently.
//!
//! Where things live:
//! - [`batch`]: `Batch` (an Arrow `RecordBatch` for one stream + metadata) and opaque positions.
//! - [`source`] / [`sink`]: the two connector traits and the context the runtime hands them.
//! - [`runtime`]: the tokio pipeline runner (bounded channels, in-order acks, graceful stop).
//! - [`ack`]: the in-order acknowledgement tracker used by the runtime.
//! - [`error`]: error classes (transient / record / fatal) and [`ConnectorError`].
//! - [`retry`]: exponential backoff with full jitter, bounded, honouring server hints.
//! - [`policy`]: the `on_error` policy and the max-error-rate budget.
//! - [`schema`]: schema evolution policies (`evolve`, `freeze`, `discard_columns`,
//!   `discard_rows`) and type widening.
//! - [`dead_letter`]: dead-letter records and the NDJSON file destination.
//! - [`state`]: the `StateStore` trait and its embedded SQLite implementation.
//! - [`metrics`]: Prometheus metrics every pipeline exports.
//! - [`config`]: YAML loading with file/line errors, `${ENV}` / `${file:…}` templates, durations.
//!
//! The core depends on no connector driver: connectors live in their own crates
//! (`tributary-files`, …) and the `tributary` CLI wires them together through a tagged enum.
//!
//! ```no_run
//! # async fn demo(source: Box<dyn tributary_core::Source>, sink: Box<dyn tributary_core::Sink>) {
//! use std::sync::Arc;
//! use tributary_core::{runtime::{Pipeline, PipelineSettings}, state::SqliteStateStore,
//!     dead_letter::NdjsonDeadLetter};
//! let state = Arc::new(SqliteStateStore::open(".tributary/state.db").unwrap());
//! let dlq = Box::new(NdjsonDeadLetter::new(".tributary/dead_letter/demo.ndjson"));
//! let summary = Pipeline::new(PipelineSettings::new("demo"), source, sink, dlq, state)
//!     .run()
//!     .await
//!     .unwrap();
//! println!("{} rows", summary.rows_out);
//! # }
//! ```

pub mod ack;
pub mod batch;
pub mod config;
pub mod dead_letter;
pub mod error;
pub mod metrics;
pub mod policy;
pub mod retry;
pub mod runtime;
pub mod schema;
pub mod sink;
pub mod source;
pub mod state;

pub use batch::{Batch, BatchMeta, Position, RowMeta};
pub use error::{ConnectorError, ErrorClass};
pub use sink::{Sink, WriteOutcome};
pub use source::{Source, SourceContext, StreamInfo};
pub use state::StateStore;
