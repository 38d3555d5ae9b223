//! The in-order acknowledgement tracker.
//!
//! Sinks may make batches durable out of order (a Kafka producer acknowledges partitions
//! independently; a parallel writer finishes files in any order). The source position may only
//! move past a batch once **every** batch before it is durable too, or a crash would skip data.
//! [`AckTracker`] enforces that: batches are registered in the order the source emitted them,
//! completed in any order, and [`AckTracker::take_committable`] yields, per stream, the end
//! position of the longest fully durable prefix. A failed batch blocks everything after it.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::batch::Position;
use crate::state::FileRecord;

/// Identifies one registered batch (a sequence number in emit order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(u64);

impl BatchId {
    /// The sequence number.
    pub fn seq(self) -> u64 {
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    InFlight,
    Durable,
    Failed,
}

#[derive(Debug)]
struct Entry {
    stream: Arc<str>,
    end: Position,
    completes: Vec<FileRecord>,
    status: Status,
}

/// What a durable prefix releases: the last position per stream and the files it completes.
#[derive(Debug, Default)]
pub struct Committable {
    /// Per stream, the end position of its last batch in the prefix (in first-seen order).
    pub positions: Vec<(Arc<str>, Position)>,
    /// Files completed by batches in the prefix, with their stream.
    pub files: Vec<(Arc<str>, FileRecord)>,
}

/// Misuse of the tracker: completing a batch that was never registered or already committed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AckError {
    /// The id is not in flight.
    #[error("batch {0} is not in flight (never registered, or already committed)")]
    Unknown(u64),
}

/// Tracks in-flight batches and releases positions strictly in order.
#[derive(Debug, Default)]
pub struct AckTracker {
    /// Sequence number of `pending[0]`.
    base: u64,
    pending: VecDeque<Entry>,
}

impl AckTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the next batch in emit order; `end` is the position to commit once it and
    /// everything before it are durable.
    pub fn register(&mut self, stream: Arc<str>, end: Position) -> BatchId {
        self.register_with_files(stream, end, Vec::new())
    }

    /// Like [`AckTracker::register`], for a batch that also completes `files` (ledger entries
    /// released together with its position).
    pub fn register_with_files(
        &mut self,
        stream: Arc<str>,
        end: Position,
        completes: Vec<FileRecord>,
    ) -> BatchId {
        let id = BatchId(self.base + self.pending.len() as u64);
        self.pending.push_back(Entry {
            stream,
            end,
            completes,
            status: Status::InFlight,
        });
        id
    }

    fn entry(&mut self, id: BatchId) -> Result<&mut Entry, AckError> {
        let index = id.0.checked_sub(self.base).ok_or(AckError::Unknown(id.0))?;
        self.pending
            .get_mut(index as usize)
            .ok_or(AckError::Unknown(id.0))
    }

    /// Marks a batch durable. Order does not matter.
    pub fn complete(&mut self, id: BatchId) -> Result<(), AckError> {
        self.entry(id)?.status = Status::Durable;
        Ok(())
    }

    /// Marks every registered batch durable (a sink's `flush()` covers all it was given).
    pub fn complete_all(&mut self) {
        for entry in &mut self.pending {
            if entry.status == Status::InFlight {
                entry.status = Status::Durable;
            }
        }
    }

    /// Marks a batch failed: no position at or after it will ever be released.
    pub fn fail(&mut self, id: BatchId) -> Result<(), AckError> {
        self.entry(id)?.status = Status::Failed;
        Ok(())
    }

    /// Pops the durable prefix and returns, per stream, the last end position in it (streams in
    /// the order they first appear). Empty when nothing new can be committed.
    pub fn take_committable(&mut self) -> Vec<(Arc<str>, Position)> {
        self.take_committable_with_files().positions
    }

    /// Like [`AckTracker::take_committable`], also returning the files the prefix completes.
    pub fn take_committable_with_files(&mut self) -> Committable {
        let mut out = Committable::default();
        while self
            .pending
            .front()
            .is_some_and(|e| e.status == Status::Durable)
        {
            let entry = self.pending.pop_front().expect("front checked above");
            self.base += 1;
            out.files.extend(
                entry
                    .completes
                    .into_iter()
                    .map(|f| (entry.stream.clone(), f)),
            );
            match out.positions.iter_mut().find(|(s, _)| *s == entry.stream) {
                Some(slot) => slot.1 = entry.end,
                None => out.positions.push((entry.stream, entry.end)),
            }
        }
        out
    }

    /// Batches registered but not yet released.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Whether a failed batch is blocking the prefix.
    pub fn is_blocked(&self) -> bool {
        self.pending.iter().any(|e| e.status == Status::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pos(n: u64) -> Position {
        Position::encode(&n).unwrap()
    }

    #[test]
    fn out_of_order_completions_release_only_the_prefix() {
        let mut t = AckTracker::new();
        let s: Arc<str> = "s".into();
        let ids: Vec<_> = (1..=4).map(|n| t.register(s.clone(), pos(n))).collect();
        t.complete(ids[2]).unwrap();
        t.complete(ids[1]).unwrap();
        assert!(
            t.take_committable().is_empty(),
            "batch 1 is still in flight"
        );
        t.complete(ids[0]).unwrap();
        assert_eq!(t.take_committable(), vec![(s.clone(), pos(3))]);
        assert_eq!(t.in_flight(), 1);
        t.complete(ids[3]).unwrap();
        assert_eq!(t.take_committable(), vec![(s, pos(4))]);
        assert_eq!(t.complete(ids[0]), Err(AckError::Unknown(0)));
    }

    #[test]
    fn a_failed_batch_blocks_everything_after_it() {
        let mut t = AckTracker::new();
        let s: Arc<str> = "s".into();
        let a = t.register(s.clone(), pos(1));
        let b = t.register(s.clone(), pos(2));
        let c = t.register(s.clone(), pos(3));
        t.complete(a).unwrap();
        t.fail(b).unwrap();
        t.complete(c).unwrap();
        assert_eq!(t.take_committable(), vec![(s.clone(), pos(1))]);
        assert!(t.take_committable().is_empty());
        assert!(t.is_blocked());
    }

    #[test]
    fn streams_commit_independently_within_the_prefix() {
        let mut t = AckTracker::new();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        t.register(a.clone(), pos(1));
        t.register(b.clone(), pos(10));
        t.register(a.clone(), pos(2));
        t.complete_all();
        assert_eq!(t.take_committable(), vec![(a, pos(2)), (b, pos(10))]);
    }

    proptest! {
        /// Whatever the completion order, a position is released exactly when every batch up
        /// to it is durable, and positions are released in increasing order.
        #[test]
        fn any_completion_order_releases_the_longest_durable_prefix(
            order in (1usize..40).prop_flat_map(|n| Just((0..n).collect::<Vec<_>>()).prop_shuffle())
        ) {
            let mut t = AckTracker::new();
            let s: Arc<str> = "s".into();
            let ids: Vec<_> = (0..order.len()).map(|n| t.register(s.clone(), pos(n as u64))).collect();
            let mut durable = vec![false; order.len()];
            let mut last_released: Option<u64> = None;
            for &i in &order {
                t.complete(ids[i]).unwrap();
                durable[i] = true;
                let prefix = durable.iter().take_while(|d| **d).count();
                let released = t.take_committable();
                let expected = if prefix == 0 { None } else { Some(prefix as u64 - 1) };
                if expected != last_released {
                    prop_assert_eq!(released, vec![(s.clone(), pos(expected.unwrap()))]);
                    last_released = expected;
                } else {
                    prop_assert!(released.is_empty());
                }
            }
            prop_assert_eq!(t.in_flight(), 0);
        }
    }
}
