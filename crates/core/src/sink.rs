//! The [`Sink`] trait.
//!
//! Contract:
//! - [`Sink::write`] receives batches in emit order. It may buffer. It returns
//!   [`WriteOutcome::Durable`] when everything written so far (this batch included) is durable,
//!   [`WriteOutcome::Buffered`] otherwise.
//! - [`Sink::flush`] makes everything written so far durable. Only then does the runtime
//!   commit the source positions those batches cover.
//! - A sink must tolerate replays: after a crash, batches written but not committed arrive
//!   again, starting from the same position. Name output after `batch.meta.start` (file sinks),
//!   store positions with the data (transactional sinks) or rely on idempotent writes, so a
//!   replay overwrites instead of duplicating.
//! - A write that failed with a transient error is retried with the same batch: it must not
//!   leave half of it behind.
//! - [`Sink::open`] runs once before the first write: clean up what a crash left (temporary
//!   files, aborted transactions).
//! - Records the destination refuses for good (a Kafka message over the broker's size limit)
//!   are not an error of the whole write: the sink hands them back through
//!   [`Sink::take_rejected`], and the runtime applies the pipeline's `on_error` policy to them
//!   (dead letter, skip or fail) before it commits any position that covers them.
//! - A sink that stores source positions in the destination, in the same transaction as the
//!   data (exactly-once), reports them through [`Sink::stored_positions`]: the runtime asks
//!   once, after [`Sink::open`], and resumes those streams from the sink's positions rather
//!   than the state store's. They can only be ahead of the state store (it is committed after
//!   the sink's transaction), never behind: a crash between the two loses nothing and
//!   replays nothing.

use crate::batch::{Batch, Position};
use crate::dead_letter::Rejected;
use crate::error::ConnectorError;

/// What a write achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Held in memory (or in an open file): not durable yet.
    Buffered,
    /// Everything written so far is durable.
    Durable,
}

/// Writes batches durably. Implemented by every sink connector.
#[async_trait::async_trait]
pub trait Sink: Send {
    /// A short description for logs (no secrets).
    fn describe(&self) -> String;

    /// Checks that the destination can be written (folder writable, server answers).
    async fn check(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// Prepares for writing for `pipeline`, cleaning up after an earlier crash.
    async fn open(&mut self, pipeline: &str) -> Result<(), ConnectorError> {
        let _ = pipeline;
        Ok(())
    }

    /// Writes (or buffers) one batch.
    async fn write(&mut self, batch: &Batch) -> Result<WriteOutcome, ConnectorError>;

    /// Makes everything written so far durable.
    async fn flush(&mut self) -> Result<(), ConnectorError>;

    /// The positions the destination stored with the data, per stream, for `pipeline`
    /// (transactional sinks). Called once after [`Sink::open`]; the runtime resumes the
    /// streams named here from these positions instead of the state store's. Default: none.
    async fn stored_positions(
        &mut self,
        pipeline: &str,
    ) -> Result<Vec<(String, Position)>, ConnectorError> {
        let _ = pipeline;
        Ok(Vec::new())
    }

    /// Deletes the positions this sink stored with its data for `pipeline` (see
    /// [`Sink::stored_positions`]), for `tributary state reset`: otherwise the next run would
    /// resume from them. Returns how many streams' positions were deleted. Default: none.
    async fn forget_positions(&mut self, pipeline: &str) -> Result<u64, ConnectorError> {
        let _ = pipeline;
        Ok(0)
    }

    /// Whether this sink can refuse single rows of a batch (and so wants each row's
    /// [`crate::RowMeta`], with its origin, to dead-letter them precisely). Default: no.
    fn wants_row_meta(&self) -> bool {
        false
    }

    /// Records refused for good since the last call (record-level failures found by `write`
    /// or `flush`). The runtime takes them every time the sink reports data durable, before it
    /// commits, and treats them like records a source rejected.
    fn take_rejected(&mut self) -> Vec<Rejected> {
        Vec::new()
    }
}
