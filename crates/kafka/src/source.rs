//! The Kafka source: a consumer-group member that commits offsets only after the data is
//! durable.
//!
//! One librdkafka [`BaseConsumer`] is polled on a blocking thread. Messages are gathered per
//! topic (one topic = one stream) until `batch_size` messages or `batch_wait` have passed,
//! decoded (`json` under the pipeline's `schema_policy`, `string`, `raw`), given the Kafka
//! metadata columns asked for, and emitted. A batch's position is the map partition → next
//! offset of its topic, as far as this process has read.
//!
//! **Offsets are committed to the group only after the runtime made the batch durable**: the
//! source watches [`SourceContext::committed`] and commits the offsets it carries, per
//! partition, in order (the runtime's ack tracker releases positions in emit order only).
//! `enable.auto.commit` and `enable.auto.offset.store` are off.
//!
//! **Rebalances** (eager or cooperative): on revoke, the buffered messages are emitted, the
//! runtime is asked to commit at once ([`SourceContext::request_commit`]), the source waits up
//! to `drain_timeout` for the revoked partitions' batches to be durable, commits their offsets
//! synchronously and only then lets the partitions go. What is not durable by then is read
//! again by the next owner (at-least-once; the duplicate window is what was in flight). A
//! partition's offsets are only committed while this member owns it, and never below where
//! its current assignment started, so a late batch can never move a group offset backwards.
//! A graceful stop does the same for every partition.
//!
//! Reading a partition starts at the group's committed offset, or at the pipeline's own durable
//! position when that is ahead (the state store's, a transactional sink's stored positions, or
//! what this run committed since: the group commit, which comes after, was lost to a crash or a
//! broker restart). A partition with neither starts as `start` says (earliest, latest, a
//! timestamp or explicit offsets).
//!
//! **Retry topics.** A record carrying `tributary.retry.not_before` in the future (written by
//! the Kafka dead-letter destination's retry tiers) is not read yet: its partition is paused
//! and rewound to it, and resumed when the time comes, so other partitions keep flowing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use serde::{Deserialize, Serialize};
use tributary_core::config::ConfigError;
use tributary_core::dead_letter::Rejected;
use tributary_core::error::ConnectorError;
use tributary_core::source::Committed;
use tributary_core::{Batch, BatchMeta, Position, RowMeta, Source, SourceContext, StreamInfo};
use tributary_formats::json::StreamDecoder;

use crate::config::{KafkaSourceConfig, MetadataColumn, StartFrom, ValueFormat};
use crate::error::{client, KafkaConnectorError};

/// A topic's position: partition → the offset of the next message to read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TopicPosition(pub BTreeMap<i32, i64>);

type Tp = (String, i32);

/// Per-message metadata kept until the batch is built.
struct MessageMeta {
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Range<usize>>,
    headers: Vec<(String, Option<Range<usize>>)>,
    payload: Option<Range<usize>>,
    /// The `tributary.*` headers of a record that failed before (retry topics), kept for
    /// [`RowMeta`] when the sink wants it.
    carried: Vec<(String, Vec<u8>)>,
}

/// Messages of one topic not yet emitted.
#[derive(Default)]
struct TopicBuffer {
    start: BTreeMap<i32, i64>,
    bytes: Vec<u8>,
    messages: Vec<MessageMeta>,
}

/// Consumer state shared by the poll loop and the rebalance callback (one thread: the lock is
/// never contended; it exists because librdkafka calls the callback through `&self`).
#[derive(Default)]
struct State {
    buffers: BTreeMap<String, TopicBuffer>,
    buffered: usize,
    first_buffered: Option<Instant>,
    /// Per topic: partition → next offset read (buffered included).
    next: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Next offset of the last emitted batch, per partition.
    emitted: HashMap<Tp, i64>,
    /// Offset last committed to the group by this member, per partition.
    committed: HashMap<Tp, i64>,
    /// First offset read since the partition was assigned: commits never go below it.
    floor: HashMap<Tp, i64>,
    /// Where a newly assigned partition should start, where known (the group's committed
    /// offset, or the configured start): the first record read is checked against it.
    expected_start: HashMap<Tp, i64>,
    assigned: BTreeSet<Tp>,
    /// When the last assignment handed this member nothing (cleared by any partition
    /// assigned): see [`OrphanGuard`].
    empty_assignment_at: Option<Instant>,
    /// Partitions paused until a retried record's `tributary.retry.not_before`: the offset to
    /// read again and when.
    paused: HashMap<Tp, (i64, Instant)>,
    /// The partition of the last message added, whose bookkeeping is done (cleared when
    /// assignments change).
    last_tp: Option<Tp>,
    at_end: BTreeSet<Tp>,
    decoders: HashMap<String, StreamDecoder>,
    /// `format: avro`: per topic, the decoder that follows the writer schemas.
    avro_decoders: HashMap<String, tributary_formats::avro::StreamDecoder>,
    /// `format: avro | json_schema`: the writer schemas by id.
    registry: Option<crate::registry::SourceSchemas>,
    /// The pipeline is stopping: the channel to the sink is closed.
    stopped: bool,
    error: Option<ConnectorError>,
}

/// The consumer's context: rebalance and commit callbacks, with what they need.
struct SourceCallbacks {
    state: Mutex<State>,
    ctx: SourceContext,
    rt: tokio::runtime::Handle,
    settings: Arc<Settings>,
}

/// What the decoding and batching code needs from the config.
struct Settings {
    config: KafkaSourceConfig,
    group: String,
}

impl ClientContext for SourceCallbacks {
    fn error(&self, error: KafkaError, reason: &str) {
        // With `stop_at_end`, librdkafka also reports each partition's end here; the source
        // handles it from the message stream, so it is not worth a warning.
        if error.rdkafka_error_code() == Some(rdkafka::error::RDKafkaErrorCode::PartitionEOF) {
            tracing::debug!(reason, "Kafka consumer reached the end of a partition");
        } else {
            tracing::warn!(error = %error, reason, "Kafka consumer");
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::log_to_tracing(level, fac, log_message);
    }
}

impl ConsumerContext for SourceCallbacks {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr as E;
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            E::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = self.on_assign(consumer, tpl, cooperative) {
                    self.lock().error.get_or_insert(e);
                }
            }
            E::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.on_revoke(consumer, tpl, cooperative);
            }
            other => {
                tracing::warn!(error = ?other, "Kafka rebalance error");
                let _ = consumer.unassign();
                self.lock().assigned.clear();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, offsets = %describe_tpl(offsets), "offset commit failed (it is retried with the next commit)");
            // Forget what was assumed committed, so the next commit (or the drain) sends it again.
            let mut st = self.lock();
            for e in offsets.elements() {
                st.committed.remove(&(e.topic().to_string(), e.partition()));
            }
        }
    }
}

fn describe_tpl(tpl: &TopicPartitionList) -> String {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}@{:?}", e.topic(), e.partition(), e.offset()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl SourceCallbacks {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_assign(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        cooperative: bool,
    ) -> Result<(), ConnectorError> {
        let mut committed = consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(10))
            .map_err(client("read the group's committed offsets"))?;
        self.apply_own_positions(tpl, &mut committed)?;
        self.apply_start(consumer, tpl, &committed)?;
        let result = if cooperative {
            consumer.incremental_assign(tpl)
        } else {
            consumer.assign(tpl)
        };
        result.map_err(client("assign partitions"))?;
        let mut st = self.lock();
        for (e, c) in tpl.elements().iter().zip(committed.elements()) {
            let tp = (e.topic().to_string(), e.partition());
            st.floor.remove(&tp);
            st.last_tp = None;
            st.at_end.remove(&tp);
            match (c.offset(), e.offset()) {
                (Offset::Offset(n), _) | (_, Offset::Offset(n)) => {
                    st.expected_start.insert(tp.clone(), n);
                    // Positions name where reading starts, so that a batch's start position
                    // differs between runs that start from different offsets (sinks name
                    // output after it: a resumed run must not overwrite an earlier run's file
                    // unless it re-reads the same records).
                    st.next.entry(tp.0.clone()).or_default().insert(tp.1, n);
                }
                _ => {
                    st.expected_start.remove(&tp);
                }
            }
            st.assigned.insert(tp);
        }
        st.empty_assignment_at = st.assigned.is_empty().then(Instant::now);
        tracing::info!(group = %self.settings.group, partitions = %describe_tpl(tpl), committed = %describe_tpl(&committed), "partitions assigned");
        Ok(())
    }

    /// Where the pipeline's own durable positions (its state store, a transactional sink's
    /// stored positions, or what this run committed since: [`SourceContext::committed`]) are
    /// ahead of the group's committed offsets,
    /// reading starts there: the data up to them is durable, and the group's commit, which
    /// comes after, was lost to a crash. This is what makes a transactional sink exactly-once
    /// for a Kafka source. A position behind the group's offset is ignored (another member
    /// read further since).
    fn apply_own_positions(
        &self,
        tpl: &mut TopicPartitionList,
        committed: &mut TopicPartitionList,
    ) -> Result<(), ConnectorError> {
        // The durable positions as of now: the start positions at first, then what the
        // runtime committed since (a partition assigned again after a rebalance or a broker
        // restart within this run).
        let durable = self.ctx.committed().borrow().clone();
        for e in committed.clone().elements() {
            let Some(own) = durable
                .get(e.topic())
                .and_then(|p| p.decode::<TopicPosition>().ok())
                .and_then(|p| p.0.get(&e.partition()).copied())
            else {
                continue;
            };
            let group = match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            };
            if group.is_some_and(|g| g >= own) {
                continue;
            }
            tracing::info!(
                topic = e.topic(), partition = e.partition(), offset = own, group_offset = ?group,
                "resuming from the pipeline's own position, ahead of the group's committed offset \
                 (the data up to it is durable; the group commit after it was lost)"
            );
            for list in [&mut *tpl, &mut *committed] {
                list.set_partition_offset(e.topic(), e.partition(), Offset::Offset(own))
                    .map_err(client("set the start offsets"))?;
            }
        }
        Ok(())
    }

    /// Partitions without a committed offset start where `start` says (earliest and latest
    /// are librdkafka's `auto.offset.reset`; timestamps and explicit offsets are set here).
    fn apply_start(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
        committed: &TopicPartitionList,
    ) -> Result<(), ConnectorError> {
        let start = &self.settings.config.start;
        if matches!(start, StartFrom::Earliest | StartFrom::Latest) {
            return Ok(());
        }
        let mut fresh = TopicPartitionList::new();
        for e in committed.elements() {
            if !matches!(e.offset(), Offset::Offset(_)) {
                fresh
                    .add_partition_offset(e.topic(), e.partition(), Offset::Beginning)
                    .map_err(client("build the start offsets"))?;
            }
        }
        if fresh.count() == 0 {
            return Ok(());
        }
        let starts = match start {
            StartFrom::Timestamp(t) => {
                let at = humantime::parse_rfc3339_weak(t)
                    .map_err(|e| KafkaConnectorError::Invalid(format!("start.timestamp: {e}")))?;
                let ms = at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                fresh
                    .set_all_offsets(Offset::Offset(ms))
                    .map_err(client("build the start offsets"))?;
                consumer
                    .offsets_for_times(fresh, Duration::from_secs(10))
                    .map_err(client("look up offsets for start.timestamp"))?
            }
            StartFrom::Offsets(map) => {
                for e in fresh.clone().elements() {
                    if let Some(o) = map.get(e.topic()).and_then(|m| m.get(&e.partition())) {
                        fresh
                            .set_partition_offset(e.topic(), e.partition(), Offset::Offset(*o))
                            .map_err(client("build the start offsets"))?;
                    }
                }
                fresh
            }
            StartFrom::Earliest | StartFrom::Latest => unreachable!("returned above"),
        };
        for e in starts.elements() {
            // offsets_for_times answers End for a time after the last message.
            tpl.set_partition_offset(e.topic(), e.partition(), e.offset())
                .map_err(client("set the start offsets"))?;
        }
        tracing::info!(start = %describe_tpl(&starts), "partitions without a committed offset start as configured");
        Ok(())
    }

    fn on_revoke(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
        cooperative: bool,
    ) {
        let revoked: BTreeSet<Tp> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let lost = consumer.assignment_lost();
        if lost {
            tracing::warn!(partitions = %describe_tpl(tpl), "partitions lost (session expired): their offsets are not committed; the new owner reads what was not committed");
        } else {
            self.drain(consumer, &revoked);
        }
        let result = if cooperative {
            consumer.incremental_unassign(tpl)
        } else {
            consumer.unassign()
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "unassign partitions");
        }
        let mut st = self.lock();
        for tp in &revoked {
            st.assigned.remove(tp);
            st.floor.remove(tp);
            st.last_tp = None;
            st.expected_start.remove(tp);
            st.at_end.remove(tp);
            st.paused.remove(tp);
            st.emitted.remove(tp);
            st.committed.remove(tp);
            if let Some(parts) = st.next.get_mut(&tp.0) {
                parts.remove(&tp.1);
            }
        }
        st.empty_assignment_at = None;
        tracing::info!(group = %self.settings.group, partitions = %describe_tpl(tpl), "partitions revoked");
    }

    /// Emits what is buffered, waits (up to `drain_timeout`) until the batches of `partitions`
    /// are durable, and commits their offsets synchronously.
    fn drain(&self, consumer: &BaseConsumer<Self>, partitions: &BTreeSet<Tp>) {
        self.emit_buffered();
        let deadline = Instant::now() + self.settings.config.drain_timeout;
        let mut committed_rx = self.ctx.committed();
        loop {
            let durable = committed_rx.borrow_and_update().clone();
            let pending: Vec<Tp> = {
                let st = self.lock();
                partitions
                    .iter()
                    .filter(|tp| {
                        st.emitted.get(*tp).is_some_and(|emitted| {
                            durable_offset(&durable, tp).is_none_or(|d| d < *emitted)
                        })
                    })
                    .cloned()
                    .collect()
            };
            if pending.is_empty() || self.lock().stopped || self.ctx.sink_gone() {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(partitions = ?pending, "batches not durable within drain_timeout: the next owner reads them again");
                break;
            }
            self.ctx.request_commit();
            let wait = committed_rx.changed();
            let changed = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_millis(200), wait).await });
            if matches!(changed, Ok(Err(_))) {
                break; // the runtime is gone
            }
        }
        let durable = self.ctx.committed().borrow().clone();
        self.commit(consumer, &durable, Some(partitions), CommitMode::Sync);
    }

    /// Commits the durable offsets of owned partitions (all, or only `only`) that moved.
    fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        durable: &Committed,
        only: Option<&BTreeSet<Tp>>,
        mode: CommitMode,
    ) {
        let mut tpl = TopicPartitionList::new();
        let st = self.lock();
        let mut moved = Vec::new();
        for (topic, position) in durable.iter() {
            let Ok(position) = position.decode::<TopicPosition>() else {
                continue;
            };
            for (partition, offset) in position.0 {
                let tp = (topic.clone(), partition);
                if only.is_some_and(|o| !o.contains(&tp)) || !st.assigned.contains(&tp) {
                    continue;
                }
                if st.floor.get(&tp).is_none_or(|f| offset < *f) {
                    continue; // from before this assignment: never move the group back
                }
                if st.committed.get(&tp).is_some_and(|c| *c >= offset) {
                    continue;
                }
                if tpl
                    .add_partition_offset(topic, partition, Offset::Offset(offset))
                    .is_ok()
                {
                    moved.push((tp, offset));
                }
            }
        }
        drop(st);
        if moved.is_empty() {
            return;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                let mut st = self.lock();
                for (tp, offset) in moved {
                    st.committed.insert(tp, offset);
                }
                tracing::debug!(offsets = %describe_tpl(&tpl), "offsets committed");
            }
            Err(e) => {
                tracing::warn!(error = %e, offsets = %describe_tpl(&tpl), "offset commit failed (retried with the next commit)")
            }
        }
    }

    /// Adds one message to its topic's buffer, unless it is a retried record whose time has
    /// not come: then it returns when that is, and the caller pauses the partition and seeks
    /// back to the record.
    fn add(&self, m: &BorrowedMessage<'_>) -> Option<Instant> {
        let mut st = self.lock();
        let topic = m.topic();
        let partition = m.partition();
        let offset = m.offset();
        // Messages come in runs from one partition: the per-partition bookkeeping (and the
        // allocation of its key) is done when the partition changes, or while some partition is
        // at its end or paused.
        let seen = st
            .last_tp
            .as_ref()
            .is_some_and(|(t, p)| *p == partition && t == topic);
        if !seen || !st.at_end.is_empty() || !st.paused.is_empty() {
            let tp = (topic.to_string(), partition);
            if !st.floor.contains_key(&tp) {
                st.floor.insert(tp.clone(), offset);
                if let Some(expected) = st.expected_start.remove(&tp) {
                    if offset > expected {
                        tracing::warn!(
                            topic,
                            partition,
                            expected,
                            first = offset,
                            "the first record after the assignment is past the start offset: \
                             offsets {expected}..{offset} were skipped by the broker (compaction \
                             or transaction markers explain small gaps; tansu skips the rest of a \
                             record batch when a fetch starts inside it, see docs/kafka.md)"
                        );
                    }
                }
            }
            st.at_end.remove(&tp);
            if let Some((from, _)) = st.paused.get(&tp) {
                if offset >= *from {
                    // Fetched before the pause took effect: read again after it.
                    return None;
                }
            }
            st.last_tp = Some(tp);
        }
        if let Some(wait) = m.headers().and_then(not_before) {
            let until = Instant::now() + wait;
            st.paused
                .insert((topic.to_string(), partition), (offset, until));
            st.last_tp = None;
            return Some(until);
        }
        let starts_batch = st.buffers.get(topic).is_none_or(|b| b.messages.is_empty());
        if !st.next.contains_key(topic) {
            st.next.insert(topic.to_string(), BTreeMap::new());
        }
        let next = st.next.get_mut(topic).expect("inserted above");
        // The batch's start position: where every partition of the topic stood before it.
        let before = starts_batch.then(|| next.clone());
        next.insert(partition, offset + 1);
        if st.first_buffered.is_none() {
            st.first_buffered = Some(Instant::now());
        }
        st.buffered += 1;
        if !st.buffers.contains_key(topic) {
            st.buffers.insert(topic.to_string(), TopicBuffer::default());
        }
        let buffer = st.buffers.get_mut(topic).expect("inserted above");
        if let Some(before) = before {
            buffer.start = before;
        }
        let mut push = |bytes: Option<&[u8]>| {
            bytes.map(|b| {
                let start = buffer.bytes.len();
                buffer.bytes.extend_from_slice(b);
                start..buffer.bytes.len()
            })
        };
        let payload = push(m.payload());
        let want = &self.settings.config.metadata;
        let key = if want.contains(&MetadataColumn::Key) {
            push(m.key())
        } else {
            None
        };
        let headers = match m.headers() {
            Some(h) if want.contains(&MetadataColumn::Headers) => h
                .iter()
                .map(|h| (h.key.to_string(), push(h.value)))
                .collect(),
            _ => Vec::new(),
        };
        let carried = match m.headers() {
            Some(h) if self.ctx.wants_row_meta() => h
                .iter()
                .filter(|h| h.key.starts_with("tributary."))
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect(),
            _ => Vec::new(),
        };
        buffer.messages.push(MessageMeta {
            partition,
            offset,
            timestamp: m.timestamp().to_millis(),
            key,
            headers,
            payload,
            carried,
        });
        None
    }

    /// Whether the buffers should be emitted now.
    /// `check_time`: also whether `batch_wait` has passed (a clock read: the poll loop asks
    /// only every few hundred messages while they flow, and on every idle turn).
    fn due(&self, check_time: bool) -> bool {
        let st = self.lock();
        st.buffered >= self.settings.config.batch_size.get()
            || (check_time
                && st
                    .first_buffered
                    .is_some_and(|t| t.elapsed() >= self.settings.config.batch_wait))
    }

    /// How long the poll may wait before the buffers are due.
    fn poll_timeout(&self) -> Duration {
        let st = self.lock();
        match st.first_buffered {
            Some(t) => self
                .settings
                .config
                .batch_wait
                .saturating_sub(t.elapsed())
                .min(Duration::from_millis(100)),
            None => Duration::from_millis(100),
        }
    }

    /// Decodes and emits every topic's buffer.
    fn emit_buffered(&self) {
        let mut st = self.lock();
        if st.stopped {
            return;
        }
        let buffers = std::mem::take(&mut st.buffers);
        st.buffered = 0;
        st.first_buffered = None;
        for (topic, buffer) in buffers {
            if buffer.messages.is_empty() {
                continue;
            }
            let end = st.next.get(&topic).cloned().unwrap_or_default();
            let built = self.build(&mut st, &topic, &buffer);
            let (data, rejected, discarded, rows) = match built {
                Ok(b) => b,
                Err(e) => {
                    st.error.get_or_insert(e);
                    st.stopped = true;
                    return;
                }
            };
            for r in rejected {
                if self.rt.block_on(self.ctx.reject(r)).is_err() {
                    st.stopped = true;
                    return;
                }
            }
            let encode = |p: &BTreeMap<i32, i64>| {
                Position::encode(&TopicPosition(p.clone())).expect("a map of numbers encodes")
            };
            let mut meta = BatchMeta::new(
                topic.as_str().into(),
                encode(&buffer.start),
                encode(&end),
                buffer.bytes.len() as u64,
            );
            meta.discarded = discarded;
            meta.rows = rows;
            if self
                .rt
                .block_on(self.ctx.emit(Batch { data, meta }))
                .is_err()
            {
                st.stopped = true;
                return;
            }
            let partitions: BTreeSet<i32> = buffer.messages.iter().map(|m| m.partition).collect();
            for partition in partitions {
                if let Some(next) = end.get(&partition) {
                    st.emitted.insert((topic.clone(), partition), *next);
                }
            }
        }
    }

    /// Decodes a topic's buffer in Confluent's wire format (`format: avro | json_schema`):
    /// the header of each message, its writer schema by id (fetched once), the payload. Bad
    /// headers, unknown ids and payloads that do not decode come back as rejections with
    /// their index; indexes are those of `buffer.messages`.
    fn decode_framed(
        &self,
        st: &mut State,
        topic: &str,
        buffer: &TopicBuffer,
    ) -> Result<tributary_formats::json::Decoded, ConnectorError> {
        use tributary_formats::{avro, confluent};
        let config = &self.settings.config;
        let bytes = &buffer.bytes;
        let frames: Vec<Result<(u32, &[u8]), String>> = buffer
            .messages
            .iter()
            .map(|m| match &m.payload {
                None => Err("a null value (tombstone) has no schema id".to_string()),
                Some(r) => confluent::split(&bytes[r.clone()]),
            })
            .collect();
        let registry = st
            .registry
            .as_mut()
            .expect("registry formats have a registry");
        if config.format == ValueFormat::Protobuf {
            // Each message to JSON with its schema, then the JSON decoder (schema policy).
            let mut decoders: HashMap<u32, Result<Arc<crate::protobuf::ProtoDecoder>, String>> =
                HashMap::new();
            for (id, _) in frames.iter().flatten() {
                if !decoders.contains_key(id) {
                    let d = self.rt.block_on(registry.proto(*id))?;
                    decoders.insert(*id, d);
                }
            }
            let bodies: Vec<Result<Vec<u8>, String>> = frames
                .iter()
                .map(|f| {
                    let (id, body) = f.as_ref().map_err(Clone::clone)?;
                    let decoder = decoders[id].as_ref().map_err(Clone::clone)?;
                    let value = decoder
                        .decode(body)
                        .map_err(|e| format!("not a Protobuf message of schema id {id}: {e}"))?;
                    Ok(serde_json::to_vec(&value).expect("JSON values serialize"))
                })
                .collect();
            let framed: Vec<Result<&[u8], String>> = bodies
                .iter()
                .map(|b| b.as_deref().map_err(Clone::clone))
                .collect();
            // A new stream starts from the Arrow form of the first message's type (typed
            // timestamps and maps), not from what JSON inference would make of it.
            let seed = || {
                frames
                    .iter()
                    .flatten()
                    .find_map(|(id, body)| decoders[id].as_ref().ok()?.arrow_schema(body))
            };
            return self.decode_json_payloads(st, topic, &framed, seed);
        }
        let mut writers: HashMap<u32, Result<Arc<avro::Writer>, String>> = HashMap::new();
        for (id, _) in frames.iter().flatten() {
            if !writers.contains_key(id) {
                let w = self.rt.block_on(registry.writer(*id))?;
                writers.insert(*id, w);
            }
        }
        let records: Vec<avro::Framed<'_>> = frames
            .iter()
            .map(|f| match f {
                Err(e) => Err(e.clone()),
                Ok((id, body)) => match &writers[id] {
                    Ok(w) => Ok((w, *body)),
                    Err(e) => Err(e.clone()),
                },
            })
            .collect();
        let stored = || -> Result<Option<Schema>, ConnectorError> {
            Ok(self.ctx.stored_schema(topic)?.map(|s| without_metadata(&s)))
        };
        if config.format == ValueFormat::Avro {
            if !st.avro_decoders.contains_key(topic) {
                let decoder = avro::StreamDecoder::new(stored()?, self.ctx.schema_policy());
                st.avro_decoders.insert(topic.to_string(), decoder);
            }
            let decoder = st.avro_decoders.get_mut(topic).expect("inserted above");
            return Ok(decoder.decode(&records).decoded);
        }
        // JSON Schema: each payload validated against its writer schema (as Confluent's
        // JSONDeserializer does), then decoded under the schema policy.
        let registry = st
            .registry
            .as_mut()
            .expect("registry formats have a registry");
        let mut validators = HashMap::new();
        for (id, _) in frames.iter().flatten() {
            if !validators.contains_key(id) {
                let v = self.rt.block_on(registry.validator(*id))?;
                validators.insert(*id, v);
            }
        }
        let payloads: Vec<Result<&[u8], String>> = records
            .iter()
            .zip(&frames)
            .map(|(r, f)| {
                let (_, body) = r.as_ref().map_err(Clone::clone)?;
                if let Ok((id, _)) = f {
                    let validator = validators[id].as_ref().map_err(Clone::clone)?;
                    // Not JSON at all: the decoder says so.
                    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) {
                        validator.validate(&doc).map_err(|e| {
                            format!("does not match its JSON Schema (schema id {id}): {e}")
                        })?;
                    }
                }
                Ok(*body)
            })
            .collect();
        self.decode_json_payloads(st, topic, &payloads, || None)
    }

    /// Decodes JSON payloads (or why a message has none) of a topic under the schema policy;
    /// rejections keep the messages' indexes.
    /// `seed`: the schema a stream without a stored one starts from (else inferred).
    fn decode_json_payloads(
        &self,
        st: &mut State,
        topic: &str,
        payloads: &[Result<&[u8], String>],
        seed: impl FnOnce() -> Option<Schema>,
    ) -> Result<tributary_formats::json::Decoded, ConnectorError> {
        if !st.decoders.contains_key(topic) {
            let stored = self
                .ctx
                .stored_schema(topic)?
                .map(|s| without_metadata(&s))
                .or_else(seed);
            let decoder = StreamDecoder::new(stored, self.ctx.schema_policy());
            st.decoders.insert(topic.to_string(), decoder);
        }
        let decoder = st.decoders.get_mut(topic).expect("inserted above");
        let mut rejected = Vec::new();
        let mut good = Vec::new();
        for (index, r) in payloads.iter().enumerate() {
            match r {
                Ok(body) => good.push((index, *body)),
                Err(message) => rejected.push(tributary_formats::json::Rejection {
                    index,
                    message: message.clone(),
                }),
            }
        }
        let mut decoded = decoder.decode(good.iter().map(|(_, b)| *b)).decoded;
        for r in &mut decoded.rejected {
            r.index = good[r.index].0;
        }
        for i in &mut decoded.discarded_indexes {
            *i = good[*i].0;
        }
        decoded.rejected.extend(rejected);
        decoded.rejected.sort_by_key(|r| r.index);
        Ok(decoded)
    }

    /// Builds one topic's batch: (rows, rejected messages, discarded count, per-row metadata
    /// when the sink wants it).
    #[allow(clippy::type_complexity)]
    fn build(
        &self,
        st: &mut State,
        topic: &str,
        buffer: &TopicBuffer,
    ) -> Result<(RecordBatch, Vec<Rejected>, u64, Option<Vec<RowMeta>>), ConnectorError> {
        let config = &self.settings.config;
        let bytes = &buffer.bytes;
        let slice = |r: &Option<Range<usize>>| r.as_ref().map(|r| &bytes[r.clone()]);
        let reject = |m: &MessageMeta, message: String| Rejected {
            stream: topic.to_string(),
            position: Position::encode(&serde_json::json!({
                "topic": topic, "partition": m.partition, "offset": m.offset
            }))
            .ok(),
            message: format!("{topic}/{}@{}: {message}", m.partition, m.offset),
            location: Some(format!("{topic}/{}@{}", m.partition, m.offset)),
            raw: slice(&m.payload).unwrap_or_default().to_vec(),
            headers: m.carried.clone(),
        };
        let mut rejected = Vec::new();
        let mut kept: Vec<usize> = Vec::with_capacity(buffer.messages.len());
        let mut discarded = 0;
        let (values, value_fields): (Vec<ArrayRef>, Fields) = match config.format {
            ValueFormat::Json
            | ValueFormat::Avro
            | ValueFormat::JsonSchema
            | ValueFormat::Protobuf => {
                let decoded = if config.format == ValueFormat::Json {
                    if !st.decoders.contains_key(topic) {
                        let stored = self.ctx.stored_schema(topic)?.map(|s| without_metadata(&s));
                        st.decoders.insert(
                            topic.to_string(),
                            StreamDecoder::new(stored, self.ctx.schema_policy()),
                        );
                    }
                    let decoder = st.decoders.get_mut(topic).expect("inserted above");
                    // A tombstone (null value) becomes a row of nulls: its key and metadata
                    // remain.
                    decoder
                        .decode(
                            buffer
                                .messages
                                .iter()
                                .map(|m| slice(&m.payload).unwrap_or(b"{}")),
                        )
                        .decoded
                } else {
                    self.decode_framed(st, topic, buffer)?
                };
                let mut skip = vec![false; buffer.messages.len()];
                for r in decoded.rejected {
                    skip[r.index] = true;
                    rejected.push(reject(&buffer.messages[r.index], r.message));
                }
                for i in decoded.discarded_indexes {
                    skip[i] = true;
                }
                discarded = decoded.discarded;
                kept.extend((0..buffer.messages.len()).filter(|i| !skip[*i]));
                let schema = decoded.batch.schema();
                (decoded.batch.columns().to_vec(), schema.fields().clone())
            }
            ValueFormat::String => {
                let mut b = StringBuilder::new();
                for (i, m) in buffer.messages.iter().enumerate() {
                    match slice(&m.payload).map(std::str::from_utf8) {
                        None => b.append_null(),
                        Some(Ok(s)) => b.append_value(s),
                        Some(Err(e)) => {
                            rejected.push(reject(m, format!("value is not UTF-8: {e}")));
                            continue;
                        }
                    }
                    kept.push(i);
                }
                let field = Field::new(&config.value_column, DataType::Utf8, true);
                (vec![Arc::new(b.finish()) as ArrayRef], vec![field].into())
            }
            ValueFormat::Raw => {
                let mut b = BinaryBuilder::new();
                for (i, m) in buffer.messages.iter().enumerate() {
                    b.append_option(slice(&m.payload));
                    kept.push(i);
                }
                let field = Field::new(&config.value_column, DataType::Binary, true);
                (vec![Arc::new(b.finish()) as ArrayRef], vec![field].into())
            }
        };
        let mut fields: Vec<Arc<Field>> = value_fields.iter().cloned().collect();
        let mut columns = values;
        let msgs: Vec<&MessageMeta> = kept.iter().map(|i| &buffer.messages[*i]).collect();
        for want in &config.metadata {
            let (field, column) = metadata_column(*want, topic, &msgs, bytes);
            fields.push(Arc::new(field));
            columns.push(column);
        }
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let data = RecordBatch::try_new_with_options(
            schema,
            columns,
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(msgs.len())),
        )
        .map_err(|e| ConnectorError::fatal(format!("topic {topic}: cannot build a batch: {e}")))?;
        let rows = self.ctx.wants_row_meta().then(|| {
            msgs.iter()
                .map(|m| RowMeta {
                    headers: m.carried.clone(),
                    timestamp_ms: m.timestamp,
                    origin: Position::encode(&serde_json::json!({
                        "topic": topic, "partition": m.partition, "offset": m.offset
                    }))
                    .ok(),
                    location: Some(format!("{topic}/{}@{}", m.partition, m.offset)),
                    ..Default::default()
                })
                .collect()
        });
        Ok((data, rejected, discarded, rows))
    }
}

fn durable_offset(durable: &Committed, tp: &Tp) -> Option<i64> {
    durable
        .get(&tp.0)?
        .decode::<TopicPosition>()
        .ok()?
        .0
        .get(&tp.1)
        .copied()
}

/// The stored schema without the metadata columns (they are added after decoding).
fn without_metadata(schema: &Schema) -> Schema {
    const NAMES: [&str; 6] = [
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
        "kafka_timestamp",
        "kafka_key",
        "kafka_headers",
    ];
    Schema::new(
        schema
            .fields()
            .iter()
            .filter(|f| !NAMES.contains(&f.name().as_str()))
            .cloned()
            .collect::<Vec<_>>(),
    )
}

fn header_fields() -> Fields {
    vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ]
    .into()
}

fn metadata_column(
    want: MetadataColumn,
    topic: &str,
    msgs: &[&MessageMeta],
    bytes: &[u8],
) -> (Field, ArrayRef) {
    let name = want.column();
    let slice = |r: &Option<Range<usize>>| r.as_ref().map(|r| &bytes[r.clone()]);
    match want {
        MetadataColumn::Topic => (
            Field::new(name, DataType::Utf8, false),
            Arc::new(StringArray::from(vec![topic; msgs.len()])),
        ),
        MetadataColumn::Partition => (
            Field::new(name, DataType::Int32, false),
            Arc::new(Int32Array::from_iter_values(
                msgs.iter().map(|m| m.partition),
            )),
        ),
        MetadataColumn::Offset => (
            Field::new(name, DataType::Int64, false),
            Arc::new(Int64Array::from_iter_values(msgs.iter().map(|m| m.offset))),
        ),
        MetadataColumn::Timestamp => (
            Field::new(
                name,
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
            Arc::new(
                TimestampMillisecondArray::from(
                    msgs.iter().map(|m| m.timestamp).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
        ),
        MetadataColumn::Key => (
            Field::new(name, DataType::Binary, true),
            Arc::new(BinaryArray::from(
                msgs.iter().map(|m| slice(&m.key)).collect::<Vec<_>>(),
            )),
        ),
        MetadataColumn::Headers => {
            let mut keys = StringBuilder::new();
            let mut values = BinaryBuilder::new();
            let mut offsets = vec![0i32];
            for m in msgs {
                for (k, v) in &m.headers {
                    keys.append_value(k);
                    values.append_option(slice(v));
                }
                offsets.push(offsets.last().copied().unwrap_or(0) + m.headers.len() as i32);
            }
            let entries = StructArray::new(
                header_fields(),
                vec![Arc::new(keys.finish()), Arc::new(values.finish())],
                None,
            );
            let item = Arc::new(Field::new("item", DataType::Struct(header_fields()), false));
            let list = ListArray::new(
                item.clone(),
                arrow_buffer_offsets(offsets),
                Arc::new(entries),
                None,
            );
            (
                Field::new(name, DataType::List(item), false),
                Arc::new(list),
            )
        }
    }
}

fn arrow_buffer_offsets(offsets: Vec<i32>) -> arrow_buffer::OffsetBuffer<i32> {
    arrow_buffer::OffsetBuffer::new(offsets.into())
}

/// Reads Kafka topics as a consumer-group member. See the [module docs](self).
pub struct KafkaSource {
    config: KafkaSourceConfig,
    brokers: String,
}

impl KafkaSource {
    /// Builds the source (no connection yet).
    pub fn new(config: KafkaSourceConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let brokers = config.brokers.resolve("source.brokers")?;
        if let (Some(r), true) = (&config.registry, config.format.uses_registry()) {
            // Checks the URL and credentials now, not at the first message.
            crate::registry::SourceSchemas::new(config.format, r)?;
        }
        Ok(KafkaSource { config, brokers })
    }

    fn client_config(&self, group: &str) -> Result<ClientConfig, ConfigError> {
        let c = &self.config;
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("client.id", format!("tributary-{group}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match c.start {
                    StartFrom::Latest => "latest",
                    _ => "earliest",
                },
            )
            .set("enable.partition.eof", c.stop_at_end.to_string())
            .set(
                "session.timeout.ms",
                c.session_timeout.as_millis().to_string(),
            )
            .set("fetch.wait.max.ms", c.fetch_wait.as_millis().to_string())
            .set(
                "fetch.queue.backoff.ms",
                c.fetch_queue_backoff.as_millis().to_string(),
            );
        for (k, v) in &c.options {
            cc.set(k, v.resolve(&format!("source.options.{k}"))?);
        }
        Ok(cc)
    }

    fn value_schema(&self) -> Option<Schema> {
        let c = &self.config;
        let value = match c.format {
            ValueFormat::Json
            | ValueFormat::Avro
            | ValueFormat::JsonSchema
            | ValueFormat::Protobuf => return None,
            ValueFormat::String => Field::new(&c.value_column, DataType::Utf8, true),
            ValueFormat::Raw => Field::new(&c.value_column, DataType::Binary, true),
        };
        Some(Schema::new(vec![value]))
    }

    /// Checks that the brokers answer and every topic exists.
    fn check_topics(&self) -> Result<Vec<(String, usize)>, ConnectorError> {
        let cc = self
            .client_config("tributary-check")
            .map_err(|e| ConnectorError::fatal(e.to_string()))?;
        let consumer: BaseConsumer = cc.create().map_err(client("create the Kafka consumer"))?;
        let mut out = Vec::new();
        for topic in &self.config.topics {
            let md = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map_err(client(format!("reach the Kafka brokers {}", self.brokers)))
                .map_err(|e| {
                    ConnectorError::from(e).with_hint("is the broker running and `brokers` right?")
                })?;
            let partitions = md
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len())
                .unwrap_or(0);
            if partitions == 0 {
                return Err(ConnectorError::fatal(format!(
                    "topic {topic} does not exist on {}",
                    self.brokers
                ))
                .with_hint("create it, or fix `topics`"));
            }
            out.push((topic.clone(), partitions));
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Source for KafkaSource {
    fn describe(&self) -> String {
        format!(
            "kafka {} topics {}{}",
            self.brokers,
            self.config.topics.join(","),
            self.config
                .group
                .as_ref()
                .map(|g| format!(" group {g}"))
                .unwrap_or_default()
        )
    }

    async fn check(&mut self) -> Result<(), ConnectorError> {
        let this = KafkaSource {
            config: self.config.clone(),
            brokers: self.brokers.clone(),
        };
        tokio::task::spawn_blocking(move || this.check_topics().map(drop))
            .await
            .map_err(|e| ConnectorError::fatal(format!("Kafka check thread: {e}")))?
    }

    async fn discover(&mut self) -> Result<Vec<StreamInfo>, ConnectorError> {
        let this = KafkaSource {
            config: self.config.clone(),
            brokers: self.brokers.clone(),
        };
        let topics = tokio::task::spawn_blocking(move || this.check_topics())
            .await
            .map_err(|e| ConnectorError::fatal(format!("Kafka check thread: {e}")))??;
        let schema = self.value_schema().map(Arc::new);
        Ok(topics
            .into_iter()
            .map(|(name, partitions)| StreamInfo {
                name,
                schema: schema.clone(),
                detail: Some(format!(
                    "{partitions} partition(s), {} values",
                    match self.config.format {
                        ValueFormat::Json => "JSON",
                        ValueFormat::String => "string",
                        ValueFormat::Raw => "raw",
                        ValueFormat::Avro => "Avro (schema registry)",
                        ValueFormat::JsonSchema => "JSON Schema (schema registry)",
                        ValueFormat::Protobuf => "Protobuf (schema registry)",
                    }
                )),
            })
            .collect())
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        let group = self
            .config
            .group
            .clone()
            .unwrap_or_else(|| ctx.pipeline().to_string());
        let cc = self
            .client_config(&group)
            .map_err(|e| ConnectorError::fatal(e.to_string()))?;
        let mut state = State::default();
        if let (Some(r), true) = (&self.config.registry, self.config.format.uses_registry()) {
            state.registry = Some(
                crate::registry::SourceSchemas::new(self.config.format, r)
                    .map_err(|e| ConnectorError::fatal(e.to_string()))?,
            );
        }
        let callbacks = SourceCallbacks {
            state: Mutex::new(state),
            ctx,
            rt: tokio::runtime::Handle::current(),
            settings: Arc::new(Settings {
                config: self.config.clone(),
                group,
            }),
        };
        let topics = self.config.topics.clone();
        tokio::task::spawn_blocking(move || -> Result<(), ConnectorError> {
            let consumer: BaseConsumer<SourceCallbacks> = cc
                .create_with_context(callbacks)
                .map_err(client("create the Kafka consumer"))?;
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            consumer
                .subscribe(&names)
                .map_err(client(format!("subscribe to {}", topics.join(","))))?;
            let result = poll_loop(&consumer);
            // Leaving the group revokes the partitions: the callback drains and commits.
            consumer.unsubscribe();
            let _ = consumer.poll(Duration::from_millis(100));
            result
        })
        .await
        .map_err(|e| ConnectorError::fatal(format!("Kafka consumer thread: {e}")))?
    }
}

/// Polls until the run stops (or, with `stop_at_end`, every partition is read).
fn poll_loop(consumer: &BaseConsumer<SourceCallbacks>) -> Result<(), ConnectorError> {
    let cb = consumer.context().clone();
    let mut committed_rx = cb.ctx.committed();
    let stop_at_end = cb.settings.config.stop_at_end;
    let (mut busy, mut since_clock) = (false, 0u32);
    let mut orphan = OrphanGuard::new(&cb.settings);
    loop {
        if let Some(e) = cb.lock().error.take() {
            return Err(e);
        }
        if cb.ctx.is_stopping() || cb.lock().stopped {
            break;
        }
        resume_due(consumer);
        // While messages flow, poll without waiting (and without computing how long to wait);
        // once the queue is empty, wait until the buffers are due.
        let timeout = if busy {
            Duration::ZERO
        } else {
            cb.poll_timeout()
        };
        let polled = consumer.poll(timeout);
        busy = matches!(polled, Some(Ok(_)));
        match polled {
            Some(Ok(m)) if cb.add(&m).is_some() => {
                pause_at(consumer, m.topic(), m.partition(), m.offset());
            }
            Some(Ok(_)) => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => mark_at_end(consumer, partition),
            Some(Err(e)) => {
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    return Err(KafkaConnectorError::Fatal { code, reason }.into());
                }
                match e.rdkafka_error_code() {
                    Some(
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
                    ) => {
                        return Err(ConnectorError::from(KafkaConnectorError::Client {
                            what: "consume".into(),
                            source: e,
                        })
                        .with_hint("create the topic, or fix `topics`"));
                    }
                    _ => {
                        tracing::warn!(error = %e, "Kafka consumer (librdkafka retries by itself)")
                    }
                }
            }
            None => {}
        }
        if !busy {
            orphan.check(consumer);
        }
        since_clock = if busy { since_clock.wrapping_add(1) } else { 0 };
        if cb.due(!busy || since_clock % 256 == 0) {
            cb.emit_buffered();
        }
        if committed_rx.has_changed().unwrap_or(false) {
            let durable = committed_rx.borrow_and_update().clone();
            cb.commit(consumer, &durable, None, CommitMode::Async);
        }
        if stop_at_end {
            let st = cb.lock();
            let done = !st.assigned.is_empty()
                && st.buffered == 0
                && st.assigned.iter().all(|tp| st.at_end.contains(tp));
            drop(st);
            if done {
                tracing::info!("every assigned partition is read to its end (stop_at_end)");
                break;
            }
        }
    }
    // Stopping: emit what is buffered, wait for it to be durable, commit.
    let assigned = cb.lock().assigned.clone();
    cb.drain(consumer, &assigned);
    if let Some(e) = cb.lock().error.take() {
        return Err(e);
    }
    Ok(())
}

/// Rejoins a group that was formed with nothing assigned to its only member.
///
/// Seen with tansu 0.6 (the test broker), never possible with Apache Kafka, whose assignors give
/// every partition to a group's only member: a consumer restarted within the session timeout
/// of a killed one (a supervisor restarting a crashed pipeline) joins while the dead member is
/// still the group's leader; the broker evicts the dead leader while the new member waits as a
/// follower, then accepts the follower's SyncGroup (which carries no assignments) as the
/// leader's, and the group is stable with no partition assigned to anyone. The member
/// heartbeats forever and reads nothing. So: when the last assignment was empty for twice the
/// session timeout (at least 10 s) and the group (DescribeGroups) lists this member alone while
/// the subscribed topics have partitions, leave the group and join again. Leaving clears the
/// broker's leader, and the member joins as the leader of a new generation.
struct OrphanGuard {
    wait: Duration,
    group: String,
    topics: Vec<String>,
}

impl OrphanGuard {
    fn new(settings: &Settings) -> Self {
        OrphanGuard {
            wait: (settings.config.session_timeout * 2).max(Duration::from_secs(10)),
            group: settings.group.clone(),
            topics: settings.config.topics.clone(),
        }
    }

    fn check(&mut self, consumer: &BaseConsumer<SourceCallbacks>) {
        let cb = consumer.context();
        let empty_for = match cb.lock().empty_assignment_at {
            Some(at) => at.elapsed(),
            None => return,
        };
        if empty_for < self.wait {
            return;
        }
        // Checked once per wait, whatever the outcome.
        cb.lock().empty_assignment_at = Some(Instant::now());
        let timeout = Duration::from_secs(5);
        let alone = consumer
            .fetch_group_list(Some(&self.group), timeout)
            .ok()
            .and_then(|l| {
                l.groups()
                    .iter()
                    .find(|g| g.name() == self.group)
                    .map(|g| g.members().len() == 1)
            })
            .unwrap_or(false);
        if !alone {
            return;
        }
        let partitions: usize = self
            .topics
            .iter()
            .filter_map(|t| consumer.fetch_metadata(Some(t), timeout).ok())
            .flat_map(|md| {
                md.topics()
                    .iter()
                    .map(|t| t.partitions().len())
                    .collect::<Vec<_>>()
            })
            .sum();
        if partitions == 0 {
            return;
        }
        tracing::warn!(
            group = %self.group, partitions, waited = ?empty_for,
            "this member is the group's only one and was assigned none of the topics' \
             partitions (a broker fault: tansu forms such a group when a consumer restarts \
             right after a kill); leaving the group and joining it again"
        );
        let names: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.unsubscribe();
        if let Err(e) = consumer.subscribe(&names) {
            cb.lock()
                .error
                .get_or_insert(ConnectorError::from(KafkaConnectorError::Client {
                    what: format!("subscribe to {} again", self.topics.join(",")),
                    source: e,
                }));
        }
    }
}

/// The wait a retried record asks for (`tributary.retry.not_before`, ms since the epoch), if
/// its time has not come.
fn not_before(headers: &rdkafka::message::BorrowedHeaders) -> Option<Duration> {
    let h = headers
        .iter()
        .find(|h| h.key == crate::dead_letter::NOT_BEFORE_HEADER)?;
    let ms: u64 = std::str::from_utf8(h.value?).ok()?.trim().parse().ok()?;
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    at.duration_since(std::time::SystemTime::now()).ok()
}

/// Pauses a partition and seeks back to `offset`, a retried record that must wait: the
/// other partitions (the main topic's above all) keep flowing.
fn pause_at(consumer: &BaseConsumer<SourceCallbacks>, topic: &str, partition: i32, offset: i64) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    if let Err(e) = consumer.pause(&tpl) {
        tracing::warn!(topic, partition, error = %e, "pause a partition for a retry delay");
    }
    if let Err(e) = consumer.seek(
        topic,
        partition,
        Offset::Offset(offset),
        Duration::from_secs(10),
    ) {
        tracing::warn!(topic, partition, offset, error = %e, "seek back to a delayed retry");
    }
    tracing::debug!(
        topic,
        partition,
        offset,
        "partition paused until a retried record's time"
    );
}

/// Resumes the paused partitions whose retried record's time has come.
fn resume_due(consumer: &BaseConsumer<SourceCallbacks>) {
    let cb = consumer.context();
    let mut st = cb.lock();
    if st.paused.is_empty() {
        return;
    }
    let now = Instant::now();
    let due: Vec<Tp> = st
        .paused
        .iter()
        .filter(|(_, (_, until))| *until <= now)
        .map(|(tp, _)| tp.clone())
        .collect();
    if due.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for tp in &due {
        st.paused.remove(tp);
        tpl.add_partition(&tp.0, tp.1);
    }
    drop(st);
    if let Err(e) = consumer.resume(&tpl) {
        tracing::warn!(partitions = %describe_tpl(&tpl), error = %e, "resume partitions after a retry delay");
    }
}

/// librdkafka reports the end of a partition by number only: check each assigned topic's
/// partition of that number against its high watermark.
///
/// The watermark is the one librdkafka cached from the last Fetch response, not a ListOffsets
/// request: tansu answers ListOffsets(latest) with the base offset of the newest record batch
/// plus one, which is short of the end by the rest of that batch, while its Fetch responses
/// carry the right high watermark.
fn mark_at_end(consumer: &BaseConsumer<SourceCallbacks>, partition: i32) {
    let cb = consumer.context();
    let candidates: Vec<Tp> = cb
        .lock()
        .assigned
        .iter()
        .filter(|tp| tp.1 == partition)
        .cloned()
        .collect();
    for tp in candidates {
        let Some(high) = cached_high_watermark(consumer, &tp.0, tp.1) else {
            continue;
        };
        let next = cb
            .lock()
            .next
            .get(&tp.0)
            .and_then(|m| m.get(&tp.1))
            .copied();
        let position = match next {
            Some(n) => Some(n),
            None => consumer.position().ok().and_then(|p| {
                match p.find_partition(&tp.0, tp.1).map(|e| e.offset()) {
                    Some(Offset::Offset(n)) => Some(n),
                    _ => None,
                }
            }),
        };
        if position.is_some_and(|p| p >= high) || (position.is_none() && high == 0) {
            cb.lock().at_end.insert(tp);
        }
    }
}

/// The high watermark librdkafka cached from the partition's last Fetch response.
fn cached_high_watermark(
    consumer: &BaseConsumer<SourceCallbacks>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives; the topic is a valid C
    // string; librdkafka only writes the two out-parameters.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_gets_the_typed_fetch_waits_and_options_win() {
        let property = |config: &KafkaSourceConfig, key: &str| {
            let cc = KafkaSource::new(config.clone())
                .expect("valid")
                .client_config("g")
                .expect("valid");
            cc.get(key).map(str::to_string)
        };
        let mut config = KafkaSourceConfig::new("127.0.0.1:9", vec!["t".into()]);
        assert_eq!(
            property(&config, "fetch.wait.max.ms").as_deref(),
            Some("100")
        );
        assert_eq!(
            property(&config, "fetch.queue.backoff.ms").as_deref(),
            Some("20")
        );
        config.fetch_wait = Duration::from_millis(20);
        config.fetch_queue_backoff = Duration::from_millis(7);
        assert_eq!(
            property(&config, "fetch.wait.max.ms").as_deref(),
            Some("20")
        );
        assert_eq!(
            property(&config, "fetch.queue.backoff.ms").as_deref(),
            Some("7")
        );
        for key in ["fetch.wait.max.ms", "fetch.queue.backoff.ms"] {
            config.options.insert(
                key.into(),
                tributary_core::config::VarStr::new("5".to_string()),
            );
            assert_eq!(property(&config, key).as_deref(), Some("5"), "{key}");
        }
    }
}
