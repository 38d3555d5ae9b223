//! [`HttpSource`]: pages → Arrow batches, with a resumable position per stream.
//!
//! A run is a **pass** over the endpoint: from the first page to the paginator's end (or a
//! stop condition). Every batch's end position says where the next request goes (`next`:
//! an offset, a page number, a cursor, a URL, or `done`) and carries the pass's incremental
//! state, so a run killed at any point resumes with the page after the last durable batch.
//! A run that starts after a finished pass begins a new one: from the start for full loads,
//! from the last cursor (minus `lookback`) for incremental loads.
//!
//! Incremental bookkeeping in the position: `since` (the cursor value this pass asks from),
//! `max_cursor` and `boundary` (hashes of the records at `max_cursor`, so that the next pass,
//! which asks from that same value with a `>=` filter, skips exactly the records it already
//! has: `skip_at` and `skip`). Records older than `since` that a server sends anyway are
//! counted as skipped.
//!
//! **Dependent resources** (`children`): for every record a parent page keeps, each child
//! endpoint is read (all its pages) before the parent's records join the parent's batch, and
//! child batches are emitted before the parent batch that holds their parents. A child's
//! position names the parent record it has reached (pass, page of the pass, index on the
//! page) and where that record's child pages stand; the parent's position moves past a page
//! only after all of its children are in. So after a crash the parent asks for its page
//! again and the children already durable are not asked for again: each child record lands
//! once. With children, passes are numbered (in the parent's and the children's positions),
//! so a new pass takes nothing of the last one's as done; each pass's batches start at new
//! positions (file sinks write new files). Child pages are read one after the other; a child
//! page that fails with a record error (404 for a deleted parent, bad JSON) is dead-lettered
//! and the next parent record goes on.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::Schema;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinHandle;
use tributary_core::config::ConfigError;
use tributary_core::dead_letter::Rejected;
use tributary_core::error::{Classify, ErrorClass};
use tributary_core::{
    Batch, BatchMeta, ConnectorError, Position, Source, SourceContext, StreamInfo,
};
use tributary_formats::json::{StreamDecoded, StreamDecoder};

use crate::client::{Client, HttpError, Response};
use crate::config::{HttpSourceConfig, Paginator};
use crate::page::{excerpt, Body};

/// Addressable pages dead-lettered one after the other before the run gives up (the next
/// run asks for the last of them again).
const MAX_FAILED_IN_ROW: u32 = 5;

/// Where the next request of a pass goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "at", rename_all = "snake_case")]
pub enum Next {
    /// The first request (paginators without addressable pages).
    First,
    /// An offset.
    Offset {
        /// The offset.
        offset: u64,
    },
    /// A page number.
    Page {
        /// The page.
        page: u64,
    },
    /// A cursor from the previous page.
    Cursor {
        /// The cursor.
        cursor: String,
    },
    /// A URL from the previous page (API key parameters removed).
    Url {
        /// The URL.
        url: String,
    },
    /// The pass is complete.
    Done,
}

/// The HTTP source's position (one per stream).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpPosition {
    /// The next request.
    pub next: Next,
    /// Pages read in this pass.
    #[serde(default)]
    pub pages: u64,
    /// Records received in this pass.
    #[serde(default)]
    pub records: u64,
    /// The pass, counted only for a source with children (their positions name it, so that
    /// a new pass takes nothing of the last one's as done): 0 for the first, one more for each
    /// pass after a finished one. Without children it stays 0 and out of the encoding, so a
    /// full load's new pass starts at the same position as the last one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pass: u64,
    /// The incremental cursor value this pass asks from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Value>,
    /// The highest cursor value seen (this pass or before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cursor: Option<Value>,
    /// Hashes of the records whose cursor is `max_cursor`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boundary: Vec<String>,
    /// The previous pass's `max_cursor`: records at it whose hash is in `skip` are not new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_at: Option<Value>,
    /// The previous pass's `boundary`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<String>,
}

/// A child stream's position: the parent record reached and its child pages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildPosition {
    /// The parent's pass.
    pub pass: u64,
    /// The parent page: pages the parent had read in the pass before it.
    pub page: u64,
    /// The parent record's index on that page.
    pub record: u64,
    /// The parent record's child pages (`next: done` once all are in).
    pub at: HttpPosition,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The REST API source.
pub struct HttpSource {
    config: HttpSourceConfig,
    client: Arc<Client>,
    base: Url,
    params: Vec<(String, String)>,
    stream: Arc<str>,
    children: Vec<ChildSpec>,
}

/// A dependent endpoint: its pages are read with `source` (the parent's client), its URL
/// made from `path` and a parent record.
struct ChildSpec {
    source: HttpSource,
    path: String,
    /// Query parameters, `{field}` placeholders unfilled.
    params: Vec<(String, String)>,
    /// (JSON pointer in the parent record, the child column as a JSON string).
    parent_fields: Vec<(String, String)>,
}

impl HttpSource {
    /// Validates the config, resolves templates and secrets, and builds the client.
    pub fn new(config: HttpSourceConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let url = config.url.resolve("url")?;
        let base = Url::parse(&url).map_err(|e| ConfigError::Value {
            field: "url".into(),
            message: format!("{url:?} is not a URL: {e}"),
        })?;
        let client = Client::new(&config, &base)?;
        let mut params = Vec::new();
        for (k, v) in &config.params {
            let field = format!("params.{k}");
            params.push((k.clone(), v.resolve(&field)?));
        }
        let stream: Arc<str> = match &config.stream {
            Some(s) => s.as_str().into(),
            None => base
                .path_segments()
                .and_then(|mut s| s.rfind(|p| !p.is_empty()))
                .unwrap_or("api")
                .into(),
        };
        let client = Arc::new(client);
        let children = config
            .children
            .iter()
            .map(|c| ChildSpec {
                source: HttpSource {
                    config: c.derive(&config),
                    client: client.clone(),
                    base: base.clone(),
                    params: Vec::new(),
                    stream: c.stream.as_str().into(),
                    children: Vec::new(),
                },
                path: c.path.clone(),
                params: c
                    .params
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                parent_fields: c
                    .parent_fields
                    .iter()
                    .map(|(from, to)| {
                        (
                            field_pointer(from),
                            serde_json::to_string(to).expect("a string serialises"),
                        )
                    })
                    .collect(),
            })
            .collect();
        Ok(HttpSource {
            config,
            client,
            base,
            params,
            stream,
            children,
        })
    }

    /// The stream name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    fn first_next(&self) -> Next {
        match &self.config.paginator {
            Paginator::Offset { start, .. } => Next::Offset { offset: *start },
            Paginator::PageNumber { start, .. } => Next::Page { page: *start },
            _ => Next::First,
        }
    }

    /// A fresh pass, after `done` (or the first run).
    fn new_pass(&self, previous: Option<HttpPosition>) -> HttpPosition {
        let inc = self.config.incremental.as_ref();
        let previous_pass = previous.as_ref().map(|p| p.pass);
        let (max, boundary) = previous
            .map(|p| (p.max_cursor, p.boundary))
            .unwrap_or((None, Vec::new()));
        let since = inc.map(|i| match &max {
            Some(m) => lookback(m, i.lookback),
            None => i.initial_value.clone(),
        });
        HttpPosition {
            next: self.first_next(),
            pages: 0,
            records: 0,
            pass: match previous_pass {
                Some(p) if !self.children.is_empty() => p + 1,
                _ => 0,
            },
            since,
            skip_at: max.clone().filter(|_| inc.is_some()),
            skip: if inc.is_some() {
                boundary.clone()
            } else {
                Vec::new()
            },
            max_cursor: max.filter(|_| inc.is_some()),
            boundary: if inc.is_some() { boundary } else { Vec::new() },
        }
    }

    fn start_position(
        &self,
        checkpoint: Option<&Position>,
    ) -> Result<HttpPosition, ConnectorError> {
        let Some(p) = checkpoint else {
            return Ok(self.new_pass(None));
        };
        let pos: HttpPosition = p.decode().map_err(|e| {
            ConnectorError::fatal(format!(
                "stream {}: the committed position {p} is not an HTTP position: {e}",
                self.stream
            ))
            .with_hint("the stream was written by another source: run `tributary state reset <pipeline file>` or change `stream`")
        })?;
        Ok(if pos.next == Next::Done {
            self.new_pass(Some(pos))
        } else {
            pos
        })
    }

    fn request_url(&self, next: &Next, since: Option<&Value>) -> Result<Url, ConnectorError> {
        self.request_url_from(&self.base, next, since)
    }

    /// The URL of the request `next` on the endpoint at `base`.
    fn request_url_from(
        &self,
        base: &Url,
        next: &Next,
        since: Option<&Value>,
    ) -> Result<Url, ConnectorError> {
        if let Next::Url { url } = next {
            return Url::parse(url).map_err(|e| {
                ConnectorError::fatal(format!(
                    "stream {}: stored next URL {url:?}: {e}",
                    self.stream
                ))
            });
        }
        let mut url = base.clone();
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &self.params {
                if v.contains("{cursor}") {
                    let c = since.map(cursor_text).unwrap_or_default();
                    q.append_pair(k, &v.replace("{cursor}", &c));
                } else {
                    q.append_pair(k, v);
                }
            }
            match (&self.config.paginator, next) {
                (
                    Paginator::Offset {
                        offset_param,
                        limit_param,
                        end_param,
                        limit,
                        ..
                    },
                    Next::Offset { offset },
                ) => {
                    q.append_pair(offset_param, &offset.to_string());
                    match end_param {
                        Some(e) => q.append_pair(e, &(offset + limit).to_string()),
                        None => q.append_pair(limit_param, &limit.to_string()),
                    };
                }
                (
                    Paginator::PageNumber {
                        page_param,
                        size_param,
                        size,
                        ..
                    },
                    Next::Page { page },
                ) => {
                    q.append_pair(page_param, &page.to_string());
                    if let (Some(p), Some(s)) = (size_param, size) {
                        q.append_pair(p, &s.to_string());
                    }
                }
                (
                    Paginator::Cursor { cursor_param, .. }
                    | Paginator::HeaderCursor { cursor_param, .. },
                    Next::Cursor { cursor },
                ) => {
                    q.append_pair(cursor_param, cursor);
                }
                _ => {}
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        Ok(url)
    }

    /// Total number of pages (as a bound on `Next`), when the response tells it.
    fn addressable_end(&self, body: &Body<'_>, response: &Response) -> Option<Next> {
        let header = |name: &Option<String>| {
            name.as_ref()
                .and_then(|h| response.headers.get(h.as_str()))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        match &self.config.paginator {
            Paginator::Offset {
                total_path,
                total_header,
                start,
                ..
            } => {
                let total = total_path
                    .as_deref()
                    .and_then(|p| body.count(p))
                    .or_else(|| header(total_header))?;
                Some(Next::Offset {
                    offset: start + total,
                })
            }
            Paginator::PageNumber {
                start,
                size,
                total_pages_path,
                total_path,
                total_header,
                ..
            } => {
                let pages = match total_pages_path.as_deref().and_then(|p| body.count(p)) {
                    Some(p) => p,
                    None => {
                        let total = total_path
                            .as_deref()
                            .and_then(|p| body.count(p))
                            .or_else(|| header(total_header))?;
                        total.div_ceil((*size)?.max(1))
                    }
                };
                Some(Next::Page {
                    page: start + pages,
                })
            }
            _ => None,
        }
    }

    /// Where the pass goes after `current`, given its response.
    fn following(
        &self,
        current: &Next,
        body: &Body<'_>,
        response: &Response,
        records_on_page: usize,
        pos: &HttpPosition,
    ) -> Next {
        let stop = &self.config.stop;
        if records_on_page == 0 && stop.empty_page {
            return Next::Done;
        }
        if let Some(p) = &stop.has_more_path {
            if body.value(p) == Some(Value::Bool(false)) {
                return Next::Done;
            }
        }
        if let Some(total) = stop.total_path.as_deref().and_then(|p| body.count(p)) {
            if pos.records >= total {
                return Next::Done;
            }
        }
        if stop.max_pages.is_some_and(|m| pos.pages >= m) {
            return Next::Done;
        }
        let end = self.addressable_end(body, response);
        let before_end = |n: &Next| match (n, &end) {
            (Next::Offset { offset }, Some(Next::Offset { offset: e })) => offset < e,
            (Next::Page { page }, Some(Next::Page { page: e })) => page < e,
            _ => true,
        };
        let next = match (&self.config.paginator, current) {
            (Paginator::None {}, _) => Next::Done,
            (Paginator::Offset { limit, .. }, Next::Offset { offset }) => Next::Offset {
                offset: offset + limit,
            },
            (Paginator::PageNumber { .. }, Next::Page { page }) => Next::Page { page: page + 1 },
            (Paginator::Cursor { cursor_path, .. }, _) => match body.text(cursor_path) {
                Some(c) => Next::Cursor { cursor: c },
                None => Next::Done,
            },
            (Paginator::HeaderCursor { header, .. }, _) => match response
                .headers
                .get(header.as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
            {
                Some(c) => Next::Cursor {
                    cursor: c.to_string(),
                },
                None => Next::Done,
            },
            (Paginator::NextUrl { next_url_path }, _) => match body
                .text(next_url_path)
                .and_then(|u| response.url.join(&u).ok())
            {
                Some(u) => Next::Url {
                    url: self.client.strip_secrets(&u).to_string(),
                },
                None => Next::Done,
            },
            (Paginator::LinkHeader {}, _) => match link_next(&response.headers, &response.url) {
                Some(u) => Next::Url {
                    url: self.client.strip_secrets(&u).to_string(),
                },
                None => Next::Done,
            },
            _ => Next::Done,
        };
        // A server that hands back the same cursor or URL would loop for ever.
        if &next == current && !matches!(current, Next::First) {
            tracing::warn!(stream = %self.stream, "the next page is the page just read: stopping");
            return Next::Done;
        }
        if before_end(&next) {
            next
        } else {
            Next::Done
        }
    }

    /// Pages addressable up front once the end is known: every remaining one.
    fn plan(&self, from: &Next, end: &Next) -> Vec<Next> {
        match (&self.config.paginator, from, end) {
            (
                Paginator::Offset { limit, .. },
                Next::Offset { offset },
                Next::Offset { offset: e },
            ) => (0..)
                .map(|i| offset + i * limit)
                .take_while(|o| o < e)
                .map(|offset| Next::Offset { offset })
                .collect(),
            (Paginator::PageNumber { .. }, Next::Page { page }, Next::Page { page: e }) => {
                (*page..*e).map(|page| Next::Page { page }).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Whether responses tell the number of records or pages (so the rest can be planned).
    fn knows_total(&self) -> bool {
        match &self.config.paginator {
            Paginator::Offset {
                total_path,
                total_header,
                ..
            } => total_path.is_some() || total_header.is_some(),
            Paginator::PageNumber {
                total_pages_path,
                total_path,
                total_header,
                ..
            } => total_pages_path.is_some() || total_path.is_some() || total_header.is_some(),
            _ => false,
        }
    }

    fn addressable(&self) -> bool {
        matches!(
            self.config.paginator,
            Paginator::Offset { .. } | Paginator::PageNumber { .. }
        )
    }

    /// The position after `pos` without reading its page (addressable paginators): the page
    /// that failed is skipped.
    fn page_after(&self, pos: &HttpPosition) -> HttpPosition {
        let mut after = pos.clone();
        after.pages += 1;
        after.next = match (&self.config.paginator, &pos.next) {
            (Paginator::Offset { limit, .. }, Next::Offset { offset }) => Next::Offset {
                offset: offset + limit,
            },
            (_, Next::Page { page }) => Next::Page { page: page + 1 },
            _ => Next::Done,
        };
        after
    }

    fn cursor_of(&self, record: &str) -> Option<Value> {
        let inc = self.config.incremental.as_ref()?;
        let pointer = if inc.cursor_path.starts_with('/') {
            inc.cursor_path.clone()
        } else {
            format!("/{}", inc.cursor_path)
        };
        let body = Body::parse(record.as_bytes()).ok()?;
        body.value(&pointer)
    }

    fn spawn(
        &self,
        next: &Next,
        since: Option<&Value>,
    ) -> Result<JoinHandle<Result<Response, HttpError>>, ConnectorError> {
        let url = self.request_url(next, since)?;
        let client = self.client.clone();
        Ok(tokio::spawn(async move { client.get(&url).await }))
    }
}

/// Records gathered for the next batch of one stream (`P`: its position type).
struct Pending<P> {
    start: P,
    end: P,
    buf: Vec<u8>,
    ranges: Vec<Range<usize>>,
    /// The pages the records came from: (index of the page's first record in `ranges`,
    /// the page's redacted URL), in order.
    pages: Vec<(usize, String)>,
    /// Each record's number on its page.
    numbers: Vec<u32>,
    source_bytes: u64,
    filtered: u64,
}

impl<P: Clone> Pending<P> {
    /// Adds the records of one page (record number on the page, text), `add` writing each
    /// record's text into the buffer.
    fn push_page<'r>(
        &mut self,
        location: &str,
        records: impl IntoIterator<Item = (usize, &'r str)>,
        mut add: impl FnMut(&str, &mut Vec<u8>),
    ) {
        self.pages.push((self.ranges.len(), location.to_string()));
        for (i, record) in records {
            let start = self.buf.len();
            add(record, &mut self.buf);
            self.ranges.push(start..self.buf.len());
            self.numbers.push(i as u32);
        }
    }

    /// Where record `index` of the batch came from: its page's URL and its number there.
    fn location(&self, index: usize) -> String {
        let page = self.pages.partition_point(|(first, _)| *first <= index);
        let url = page.checked_sub(1).map_or("", |p| self.pages[p].1.as_str());
        format!("{url} record {}", self.numbers[index])
    }

    /// The batch after `previous`, from `at`, with room for as much as `previous` held (the
    /// buffer is not grown again from nothing for every batch).
    fn after(at: P, previous: &Self) -> Self {
        let mut next = Self::new(at);
        next.buf.reserve(previous.buf.len());
        next.ranges.reserve(previous.ranges.len());
        next.numbers.reserve(previous.numbers.len());
        next
    }

    fn new(at: P) -> Self {
        Pending {
            start: at.clone(),
            end: at,
            buf: Vec::new(),
            ranges: Vec::new(),
            pages: Vec::new(),
            numbers: Vec::new(),
            source_bytes: 0,
            filtered: 0,
        }
    }
}

/// A parent batch being decoded: the decoder, what it decodes, the result.
type Decoding = JoinHandle<(StreamDecoder, Pending<HttpPosition>, StreamDecoded)>;

struct Run<'a> {
    source: &'a HttpSource,
    ctx: &'a SourceContext,
    /// The parent's decoder (`None` while a batch is being decoded).
    decoder: Option<StreamDecoder>,
    decoding: Option<Decoding>,
    pending: Pending<HttpPosition>,
    children: Vec<ChildRun>,
}

/// A child stream during a run.
struct ChildRun {
    stream: Arc<str>,
    decoder: StreamDecoder,
    pending: Pending<ChildPosition>,
    /// The committed position when the run started: parent records up to it are done.
    resume: Option<ChildPosition>,
    /// Child pages dead-lettered one after the other (see [`MAX_FAILED_IN_ROW`]).
    failed_in_row: u32,
}

/// What became of a page.
enum PageOutcome {
    /// Read: the position after it.
    Read(HttpPosition),
    /// Dead-lettered (not JSON, no records array).
    DeadLettered,
    /// The run is stopping while the page's children were read: the page is not taken.
    Stopped,
}

fn encode<P: Serialize>(p: &P) -> Result<Position, ConnectorError> {
    Position::encode(p)
        .map_err(|e| ConnectorError::fatal(format!("encoding an HTTP position: {e}")))
}

/// Decodes and emits what `pending` gathered for `stream`; its start moves to its end.
/// `false` when the run is stopping (the batch was not taken).
async fn emit<P: Clone + Serialize>(
    ctx: &SourceContext,
    stream: &Arc<str>,
    decoder: &mut StreamDecoder,
    pending: &mut Pending<P>,
) -> Result<bool, ConnectorError> {
    let next_start = pending.end.clone();
    let next = Pending::after(next_start, pending);
    let p = std::mem::replace(pending, next);
    let decoded = decoder.decode_in(&p.buf, &p.ranges);
    emit_decoded(ctx, stream, p, decoded).await
}

/// Emits a decoded batch of `p`: its rejections first, then the batch. `false` when the run
/// is stopping.
async fn emit_decoded<P: Clone + Serialize>(
    ctx: &SourceContext,
    stream: &Arc<str>,
    p: Pending<P>,
    decoded: StreamDecoded,
) -> Result<bool, ConnectorError> {
    let start = encode(&p.start)?;
    for r in &decoded.decoded.rejected {
        let rejected = Rejected {
            stream: stream.to_string(),
            position: Some(start.clone()),
            message: r.message.clone(),
            location: Some(p.location(r.index)),
            raw: p.buf[p.ranges[r.index].clone()].to_vec(),
            headers: Vec::new(),
        };
        if ctx.reject(rejected).await.is_err() {
            return Ok(false);
        }
    }
    if let Some(change) = &decoded.change {
        tracing::debug!(stream = %stream, change = %change.describe(), "API record schema changed");
    }
    let mut meta = BatchMeta::new(stream.clone(), start, encode(&p.end)?, p.source_bytes);
    meta.discarded = decoded.decoded.discarded + p.filtered;
    Ok(ctx
        .emit(Batch {
            data: decoded.decoded.batch,
            meta,
        })
        .await
        .is_ok())
}

impl Run<'_> {
    /// Emits everything gathered: the children first (their parents are in the parent's
    /// batch), then the parent's batch in flight, then what the parent gathered since.
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        if self.emit_ready().await? {
            self.start_decoding();
            self.finish_decoding().await?;
        }
        Ok(())
    }

    /// Like [`Run::flush`], but the parent's new batch is decoded on a blocking thread
    /// while the next pages are fetched and split (it is emitted by the next flush).
    async fn flush_overlapped(&mut self) -> Result<(), ConnectorError> {
        if self.emit_ready().await? {
            self.start_decoding();
        }
        Ok(())
    }

    /// What both flushes do first: count the client's retries, emit the children's batches,
    /// then the parent's batch in flight. `false` when the run is stopping.
    async fn emit_ready(&mut self) -> Result<bool, ConnectorError> {
        self.ctx
            .retried("http.get", self.source.client.take_retries());
        for c in &mut self.children {
            if (!c.pending.ranges.is_empty() || c.pending.start != c.pending.end)
                && !emit(self.ctx, &c.stream, &mut c.decoder, &mut c.pending).await?
            {
                return Ok(false);
            }
        }
        self.finish_decoding().await
    }

    /// Hands the parent's gathered records to a blocking thread for decoding.
    fn start_decoding(&mut self) {
        let next_start = self.pending.end.clone();
        let next = Pending::after(next_start, &self.pending);
        let p = std::mem::replace(&mut self.pending, next);
        let mut decoder = self.decoder.take().expect("no decode in flight");
        self.decoding = Some(tokio::task::spawn_blocking(move || {
            // The records lie back to back in one buffer: decoded where they are.
            let decoded = decoder.decode_in(&p.buf, &p.ranges);
            (decoder, p, decoded)
        }));
    }

    /// Emits the parent's batch in flight, if any. `false` when the run is stopping.
    async fn finish_decoding(&mut self) -> Result<bool, ConnectorError> {
        let Some(task) = self.decoding.take() else {
            return Ok(true);
        };
        let (decoder, p, decoded) = task
            .await
            .map_err(|e| ConnectorError::fatal(format!("decoding API records: {e}")))?;
        self.decoder = Some(decoder);
        emit_decoded(self.ctx, &self.source.stream, p, decoded).await
    }

    async fn dead_letter_page(
        &mut self,
        at: &HttpPosition,
        location: String,
        message: String,
        raw: Vec<u8>,
    ) -> Result<(), ConnectorError> {
        let stream = self.source.stream.to_string();
        self.dead_letter(stream, encode(at)?, location, message, raw)
            .await
    }

    /// Hands a bad page or record of `stream` to the runtime's `on_error` policy.
    async fn dead_letter(
        &mut self,
        stream: String,
        position: Position,
        location: String,
        message: String,
        raw: Vec<u8>,
    ) -> Result<(), ConnectorError> {
        let rejected = Rejected {
            stream,
            position: Some(position),
            message,
            location: Some(location),
            raw,
            headers: Vec::new(),
        };
        let _ = self.ctx.reject(rejected).await;
        Ok(())
    }

    /// Adds one page's records (after reading their children): the position after the page.
    async fn page(
        &mut self,
        at: &HttpPosition,
        response: Response,
    ) -> Result<PageOutcome, ConnectorError> {
        let location = self.source.client.redact(&response.url);
        let body = match Body::page(&response.body, self.source.config.records.as_deref()) {
            Ok(b) => b,
            Err(e) => {
                let message = format!("{location}: the response is not valid JSON: {e}");
                self.dead_letter_page(
                    at,
                    location,
                    message,
                    excerpt(&response.body, 4096).into_bytes(),
                )
                .await?;
                return Ok(PageOutcome::DeadLettered);
            }
        };
        let records = match body.records(self.source.config.records.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("{location}: {e}");
                self.dead_letter_page(
                    at,
                    location,
                    message,
                    excerpt(&response.body, 4096).into_bytes(),
                )
                .await?;
                return Ok(PageOutcome::DeadLettered);
            }
        };
        let mut pos = at.clone();
        pos.pages += 1;
        pos.records += records.len() as u64;
        let incremental = self.source.config.incremental.is_some();
        let mut kept = Vec::with_capacity(records.len());
        let mut filtered = 0;
        for (i, record) in records.iter().enumerate() {
            if incremental {
                if let Some(c) = self.source.cursor_of(record) {
                    if pos.since.as_ref().is_some_and(|s| compare(&c, s).is_lt()) {
                        filtered += 1;
                        continue;
                    }
                    let hash = fnv64(record.as_bytes());
                    if pos.skip_at.as_ref().is_some_and(|s| compare(&c, s).is_eq())
                        && pos.skip.contains(&hash)
                    {
                        filtered += 1;
                        continue;
                    }
                    match pos.max_cursor.as_ref().map(|m| compare(&c, m)) {
                        None | Some(std::cmp::Ordering::Greater) => {
                            pos.max_cursor = Some(c);
                            pos.boundary = vec![hash];
                        }
                        Some(std::cmp::Ordering::Equal) => {
                            if !pos.boundary.contains(&hash) {
                                pos.boundary.push(hash);
                            }
                        }
                        Some(std::cmp::Ordering::Less) => {}
                    }
                }
            }
            kept.push((i, *record));
        }
        // Children before their parents: the parent's position passes this page only once
        // every child of it is gathered (and so emitted before the parent's batch).
        if !self.children.is_empty() {
            for (i, record) in &kept {
                let parent = Body::parse(record.as_bytes()).ok();
                for c in 0..self.children.len() {
                    if !self
                        .child_records(c, at, *i as u64, record, parent.as_ref())
                        .await?
                    {
                        return Ok(PageOutcome::Stopped);
                    }
                }
            }
        }
        self.pending.filtered += filtered;
        self.pending.push_page(&location, kept, |record, buf| {
            buf.extend_from_slice(record.as_bytes())
        });
        pos.next = self
            .source
            .following(&at.next, &body, &response, records.len(), &pos);
        self.pending.source_bytes += response.body.len() as u64;
        self.pending.end = pos.clone();
        Ok(PageOutcome::Read(pos))
    }

    /// Reads child `c`'s pages for the parent record `index` of the page at `at`, unless a
    /// run before this one already did. `false` when the run is stopping.
    async fn child_records(
        &mut self,
        c: usize,
        at: &HttpPosition,
        index: u64,
        parent: &str,
        parent_body: Option<&Body<'_>>,
    ) -> Result<bool, ConnectorError> {
        let spec = &self.source.children[c];
        let child = &spec.source;
        let mut pos = child.new_pass(None);
        if let Some(r) = self.children[c]
            .resume
            .as_ref()
            .filter(|r| r.pass == at.pass)
        {
            match (r.page, r.record).cmp(&(at.pages, index)) {
                std::cmp::Ordering::Greater => return Ok(true),
                std::cmp::Ordering::Equal if r.at.next == Next::Done => return Ok(true),
                std::cmp::Ordering::Equal => pos = r.at.clone(),
                std::cmp::Ordering::Less => {}
            }
        }
        let mark = |pos: &HttpPosition| ChildPosition {
            pass: at.pass,
            page: at.pages,
            record: index,
            at: pos.clone(),
        };
        let base = match child_url(spec, &self.source.base, parent_body) {
            Ok(u) => u,
            Err(message) => {
                let message = format!(
                    "child {}: parent record {index} of page {} of the pass: {message}",
                    child.stream,
                    at.pages + 1
                );
                let mut done = pos.clone();
                done.next = Next::Done;
                self.reject_child(
                    c,
                    mark(&pos),
                    format!("parent record {index}"),
                    message,
                    parent.as_bytes().to_vec(),
                )
                .await?;
                self.children[c].pending.end = mark(&done);
                return Ok(true);
            }
        };
        let fields: Vec<(&str, &str)> = spec
            .parent_fields
            .iter()
            .map(|(pointer, column)| {
                let raw = parent_body
                    .and_then(|b| b.pointer(pointer))
                    .unwrap_or("null");
                (column.as_str(), raw)
            })
            .collect();
        while pos.next != Next::Done {
            if self.ctx.is_stopping() {
                return Ok(false);
            }
            let url = child.request_url_from(&base, &pos.next, None)?;
            let result = tokio::select! {
                r = child.client.get(&url) => r,
                _ = self.ctx.stopping() => return Ok(false),
            };
            let location = child.client.redact(&url);
            let failure = match result {
                Err(e) if e.class() != ErrorClass::Record => {
                    self.flush().await?;
                    let hint = match e.status() {
                        Some(401) => "check the credentials (auth)",
                        _ => "the server kept failing: the next run resumes at this parent record",
                    };
                    return Err(ConnectorError::new(ErrorClass::Fatal, e).with_hint(hint));
                }
                Err(e) => {
                    let raw = match &e {
                        HttpError::Status { body, .. } => body.clone().into_bytes(),
                        _ => Vec::new(),
                    };
                    Some((format!("child {}: {e}", child.stream), raw))
                }
                Ok(response) => match Body::page(&response.body, child.config.records.as_deref())
                    .and_then(|body| {
                        let records = body.records(child.config.records.as_deref())?;
                        Ok((body, records))
                    }) {
                    Err(e) => Some((
                        format!("child {}: {location}: {e}", child.stream),
                        excerpt(&response.body, 4096).into_bytes(),
                    )),
                    Ok((body, records)) => {
                        let n = records.len();
                        let run = &mut self.children[c];
                        run.failed_in_row = 0;
                        run.pending.push_page(
                            &location,
                            records.iter().copied().enumerate(),
                            |record, buf| with_fields(record, &fields, buf),
                        );
                        run.pending.source_bytes += response.body.len() as u64;
                        let mut after = pos.clone();
                        after.pages += 1;
                        after.records += n as u64;
                        after.next = child.following(&pos.next, &body, &response, n, &after);
                        pos = after;
                        None
                    }
                },
            };
            if let Some((message, raw)) = failure {
                self.reject_child(c, mark(&pos), location, message, raw)
                    .await?;
                let run = &mut self.children[c];
                run.failed_in_row += 1;
                pos = if child.addressable() && run.failed_in_row < MAX_FAILED_IN_ROW {
                    child.page_after(&pos)
                } else {
                    // The rest of this record's pages depend on the failed one.
                    let mut done = pos.clone();
                    done.next = Next::Done;
                    done
                };
            }
            let run = &mut self.children[c];
            run.pending.end = mark(&pos);
            if run.pending.ranges.len() >= self.source.config.batch_rows
                && !emit(self.ctx, &run.stream, &mut run.decoder, &mut run.pending).await?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn reject_child(
        &mut self,
        c: usize,
        at: ChildPosition,
        location: String,
        message: String,
        raw: Vec<u8>,
    ) -> Result<(), ConnectorError> {
        let stream = self.children[c].stream.to_string();
        self.dead_letter(stream, encode(&at)?, location, message, raw)
            .await
    }
}

/// The child endpoint's URL for one parent record: `path` and `params` with the record's
/// values in their `{field}` placeholders (the path's percent-encoded), resolved against the
/// parent's URL.
fn child_url(spec: &ChildSpec, parent_url: &Url, parent: Option<&Body<'_>>) -> Result<Url, String> {
    let fill = |template: &str, encode: bool| -> Result<String, String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            out.push_str(&rest[..open]);
            let name = &rest[open + 1..open + close];
            let value = parent
                .and_then(|b| b.text(&field_pointer(name)))
                .ok_or_else(|| format!("no value for {{{name}}} (in {template:?})"))?;
            if encode {
                percent_encode_segment(&value, &mut out);
            } else {
                out.push_str(&value);
            }
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    };
    let path = fill(&spec.path, true)?;
    let mut url = parent_url
        .join(&path)
        .map_err(|e| format!("{path:?} is not a URL: {e}"))?;
    if !spec.params.is_empty() {
        let mut pairs = Vec::with_capacity(spec.params.len());
        for (k, v) in &spec.params {
            pairs.push((k.as_str(), fill(v, false)?));
        }
        url.query_pairs_mut().extend_pairs(pairs);
    }
    Ok(url)
}

/// `name` as a JSON pointer: `id` → `/id`; a pointer stays as it is.
fn field_pointer(name: &str) -> String {
    if name.starts_with('/') {
        name.to_string()
    } else {
        format!("/{}", name.replace('~', "~0").replace('/', "~1"))
    }
}

/// Appends `value` percent-encoded for a URL path segment (RFC 3986 unreserved kept).
fn percent_encode_segment(value: &str, out: &mut String) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Appends `record` with `fields` (JSON-string column, raw JSON value) put first, when it
/// is an object; as it is otherwise (the decoder refuses it with its reason).
fn with_fields(record: &str, fields: &[(&str, &str)], out: &mut Vec<u8>) {
    let trimmed = record.trim_start();
    let Some(rest) = trimmed.strip_prefix('{').filter(|_| !fields.is_empty()) else {
        out.extend_from_slice(record.as_bytes());
        return;
    };
    out.push(b'{');
    for (i, (column, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(column.as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    }
    if !rest.trim_start().starts_with('}') {
        out.push(b',');
    }
    out.extend_from_slice(rest.as_bytes());
}

#[async_trait::async_trait]
impl Source for HttpSource {
    fn describe(&self) -> String {
        format!("http {}", self.client.redact(&self.base))
    }

    async fn check(&mut self) -> Result<(), ConnectorError> {
        let pos = self.new_pass(None);
        let url = self.request_url(&pos.next, pos.since.as_ref())?;
        self.client
            .get(&url)
            .await
            .map_err(ConnectorError::classified)?;
        Ok(())
    }

    async fn discover(&mut self) -> Result<Vec<StreamInfo>, ConnectorError> {
        let pos = self.new_pass(None);
        let url = self.request_url(&pos.next, pos.since.as_ref())?;
        let response = self
            .client
            .get(&url)
            .await
            .map_err(ConnectorError::classified)?;
        let body = Body::parse(&response.body)
            .map_err(|e| ConnectorError::fatal(format!("{}: {e}", self.client.redact(&url))))?;
        let records = body
            .records(self.config.records.as_deref())
            .map_err(|e| ConnectorError::fatal(format!("{}: {e}", self.client.redact(&url))))?;
        let schema: Option<Schema> =
            tributary_formats::json::infer(records.iter().map(|r| r.as_bytes()));
        let mut streams = vec![StreamInfo {
            name: self.stream.to_string(),
            schema: schema.map(Arc::new),
            detail: Some(format!(
                "{} records on the first page of {}",
                records.len(),
                self.client.redact(&self.base)
            )),
        }];
        for spec in &self.children {
            streams.push(StreamInfo {
                name: spec.source.stream.to_string(),
                schema: None,
                detail: Some(format!(
                    "child of {}: {} for each record",
                    self.stream, spec.path
                )),
            });
        }
        Ok(streams)
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        let stored = ctx.stored_schema(&self.stream)?;
        let mut pos = self.start_position(ctx.checkpoint(&self.stream))?;
        tracing::info!(stream = %self.stream, next = ?pos.next, "HTTP pass");
        let mut children = Vec::with_capacity(self.children.len());
        for spec in &self.children {
            let stream = spec.source.stream.clone();
            let resume: Option<ChildPosition> = match ctx.checkpoint(&stream) {
                None => None,
                Some(p) => Some(p.decode().map_err(|e| {
                    ConnectorError::fatal(format!(
                        "stream {stream}: the committed position {p} is not a child position: {e}"
                    ))
                    .with_hint("the stream was written by another source: run `tributary state reset <pipeline file>` or change the child's `stream`")
                })?),
            };
            let start = resume.clone().unwrap_or_else(|| ChildPosition {
                pass: pos.pass,
                page: 0,
                record: 0,
                at: spec.source.new_pass(None),
            });
            children.push(ChildRun {
                decoder: StreamDecoder::new(ctx.stored_schema(&stream)?, ctx.schema_policy()),
                stream,
                pending: Pending::new(start),
                resume,
                failed_in_row: 0,
            });
        }
        let mut run = Run {
            source: self,
            ctx: &ctx,
            decoder: Some(StreamDecoder::new(stored, ctx.schema_policy())),
            decoding: None,
            pending: Pending::new(pos.clone()),
            children,
        };
        let concurrency = self.config.concurrency.get() as usize;
        // Requests in flight, in page order: (what was asked, the task).
        let mut inflight: VecDeque<(Next, JoinHandle<Result<Response, HttpError>>)> =
            VecDeque::new();
        // Pages known to exist, not yet requested (addressable paginators with a known end).
        let mut planned: VecDeque<Next> = VecDeque::new();
        // Dead-lettered pages in a row: an API that answers 404 past its last page would
        // otherwise be asked for pages for ever.
        let mut failed_in_row = 0u32;
        let abort = |inflight: &mut VecDeque<(Next, JoinHandle<Result<Response, HttpError>>)>| {
            for (_, t) in inflight.drain(..) {
                t.abort();
            }
        };
        while pos.next != Next::Done {
            if ctx.is_stopping() {
                abort(&mut inflight);
                return Ok(());
            }
            while inflight.len() < concurrency {
                let Some(n) = planned.pop_front() else { break };
                let task = self.spawn(&n, pos.since.as_ref())?;
                inflight.push_back((n, task));
            }
            if inflight.is_empty() {
                let task = self.spawn(&pos.next, pos.since.as_ref())?;
                inflight.push_back((pos.next.clone(), task));
            }
            let (asked, task) = inflight.pop_front().expect("one in flight");
            debug_assert_eq!(asked, pos.next);
            let result = tokio::select! {
                r = task => r.map_err(|e| ConnectorError::fatal(format!("HTTP request task: {e}")))?,
                _ = ctx.stopping() => {
                    abort(&mut inflight);
                    return Ok(());
                }
            };
            let response = match result {
                Ok(r) => r,
                Err(e) => {
                    let class = e.class();
                    if class != ErrorClass::Record {
                        abort(&mut inflight);
                        // What is gathered is good: keep it, so a re-run starts at the failure.
                        run.flush().await?;
                        let hint = match e.status() {
                            Some(401) => "check the credentials (auth)",
                            _ => "the server kept failing: the next run resumes at this page",
                        };
                        return Err(ConnectorError::new(
                            if class == ErrorClass::Transient {
                                ErrorClass::Fatal
                            } else {
                                class
                            },
                            e,
                        )
                        .with_hint(hint));
                    }
                    let location = match &e {
                        HttpError::Status { url, .. }
                        | HttpError::TooLarge { url, .. }
                        | HttpError::Redirect { url, .. } => url.clone(),
                        other => other.to_string(),
                    };
                    let raw = match &e {
                        HttpError::Status { body, .. } => body.clone().into_bytes(),
                        _ => Vec::new(),
                    };
                    let at = pos.clone();
                    run.dead_letter_page(&at, location, e.to_string(), raw)
                        .await?;
                    failed_in_row += 1;
                    if self.addressable() && failed_in_row < MAX_FAILED_IN_ROW {
                        // The next page is known without this one: go on.
                        let mut after = self.page_after(&pos);
                        if planned.is_empty()
                            && inflight.is_empty()
                            && self.config.stop.max_pages.is_some_and(|m| after.pages >= m)
                        {
                            after.next = Next::Done;
                        }
                        run.pending.end = after.clone();
                        pos = after;
                        continue;
                    }
                    // The rest of the pass depends on this page: end the run here; the next
                    // run asks for it again.
                    abort(&mut inflight);
                    run.flush().await?;
                    return Ok(());
                }
            };
            let parallel_start =
                planned.is_empty() && inflight.is_empty() && self.knows_total() && concurrency > 1;
            let body_end = if parallel_start {
                Body::parse(&response.body)
                    .ok()
                    .and_then(|b| self.addressable_end(&b, &response))
            } else {
                None
            };
            let after = match run.page(&pos, response).await? {
                PageOutcome::Read(after) => after,
                PageOutcome::Stopped => {
                    abort(&mut inflight);
                    run.flush().await?;
                    return Ok(());
                }
                PageOutcome::DeadLettered => {
                    // Dead-lettered (not JSON): skip it when the pages are addressable.
                    failed_in_row += 1;
                    if self.addressable() && failed_in_row < MAX_FAILED_IN_ROW {
                        let after = self.page_after(&pos);
                        run.pending.end = after.clone();
                        pos = after;
                        continue;
                    }
                    abort(&mut inflight);
                    run.flush().await?;
                    return Ok(());
                }
            };
            failed_in_row = 0;
            if after.next == Next::Done {
                abort(&mut inflight);
                planned.clear();
            } else if let Some(end) = body_end {
                let mut all = self.plan(&after.next, &end);
                if let Some(m) = self.config.stop.max_pages {
                    all.truncate(m.saturating_sub(after.pages) as usize);
                }
                planned = all.into();
                // The planned pages are requested by the loop; `after.next` is the first one.
                if planned.is_empty() {
                    pos = after;
                    pos.next = Next::Done;
                    run.pending.end = pos.clone();
                    continue;
                }
            }
            pos = after;
            // Ask for the next page before decoding this batch: the request travels while
            // the records turn into Arrow (the only overlap a page-after-page API allows).
            if pos.next != Next::Done && inflight.is_empty() && planned.is_empty() {
                let task = self.spawn(&pos.next, pos.since.as_ref())?;
                inflight.push_back((pos.next.clone(), task));
            }
            if run.pending.ranges.len() >= self.config.batch_rows {
                run.flush_overlapped().await?;
            }
        }
        run.flush().await?;
        Ok(())
    }
}

/// The `rel="next"` target of RFC 8288 `Link` headers, resolved against the response URL.
pub(crate) fn link_next(headers: &reqwest::header::HeaderMap, base: &Url) -> Option<Url> {
    for value in headers.get_all(reqwest::header::LINK) {
        let Ok(text) = value.to_str() else { continue };
        // Links are separated by commas outside `<…>` and quotes.
        let mut rest = text;
        while let Some(open) = rest.find('<') {
            let close = open + rest[open..].find('>')?;
            let target = &rest[open + 1..close];
            let after = &rest[close + 1..];
            let params_end = after.find('<').unwrap_or(after.len());
            let params = &after[..params_end];
            let is_next = params.split(';').any(|p| {
                let p = p.trim().trim_end_matches(',').trim();
                let Some((k, v)) = p.split_once('=') else {
                    return false;
                };
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            });
            if is_next {
                return base.join(target).ok();
            }
            rest = &after[params_end..];
        }
    }
    None
}

/// Orders cursor values: numbers as numbers, RFC 3339 times as times, other text as text.
pub(crate) fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => x
                .as_f64()
                .unwrap_or(0.0)
                .total_cmp(&y.as_f64().unwrap_or(0.0)),
        },
        (Value::String(x), Value::String(y)) => {
            match (
                humantime::parse_rfc3339_weak(x),
                humantime::parse_rfc3339_weak(y),
            ) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                _ => x.cmp(y),
            }
        }
        _ => cursor_text(a).cmp(&cursor_text(b)),
    }
}

fn cursor_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The cursor value moved back by `lookback` (RFC 3339 times and Unix seconds).
fn lookback(v: &Value, by: Duration) -> Value {
    if by.is_zero() {
        return v.clone();
    }
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i - by.as_secs() as i64),
            None => Value::from(n.as_f64().unwrap_or(0.0) - by.as_secs_f64()),
        },
        Value::String(s) => match humantime::parse_rfc3339_weak(s) {
            Ok(t) => {
                let back = t.checked_sub(by).unwrap_or(std::time::UNIX_EPOCH);
                let text = if s.contains('.') {
                    humantime::format_rfc3339_millis(back).to_string()
                } else {
                    humantime::format_rfc3339_seconds(back).to_string()
                };
                Value::String(text)
            }
            Err(_) => v.clone(),
        },
        _ => v.clone(),
    }
}

/// FNV-1a, 64 bits, as hex: stable across versions (it is stored in positions).
fn fnv64(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn link_headers_yield_rel_next() {
        let base = Url::parse("http://h/items?_page=1").unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            HeaderValue::from_static(r#"<http://h/items?_page=1>; rel="first", <http://h/items?_page=2>; rel="next", <http://h/items?_page=9>; rel="last""#),
        );
        assert_eq!(
            link_next(&h, &base).unwrap().as_str(),
            "http://h/items?_page=2"
        );
        h.insert(
            "link",
            HeaderValue::from_static(r#"</items?page=3&a=b,c>; title="x;y"; rel="prev next""#),
        );
        assert_eq!(
            link_next(&h, &base).unwrap().as_str(),
            "http://h/items?page=3&a=b,c"
        );
        h.insert(
            "link",
            HeaderValue::from_static(r#"<http://h/items?_page=1>; rel="prev""#),
        );
        assert!(link_next(&h, &base).is_none());
    }

    #[test]
    fn cursors_compare_as_times_numbers_or_text_and_look_back() {
        let a = Value::from("2026-01-01T10:00:00Z");
        let b = Value::from("2026-01-01T09:00:00.500+00:00");
        assert!(compare(&a, &b).is_gt());
        assert!(compare(&Value::from(10), &Value::from(9)).is_gt());
        assert!(compare(&Value::from("b"), &Value::from("a")).is_gt());
        assert_eq!(
            lookback(&a, Duration::from_secs(3600)),
            Value::from("2026-01-01T09:00:00Z")
        );
        assert_eq!(
            lookback(&Value::from(100), Duration::from_secs(30)),
            Value::from(70)
        );
        assert_eq!(
            fnv64(b""),
            "cbf29ce484222325",
            "FNV-1a offset basis: positions depend on it"
        );
    }
}
