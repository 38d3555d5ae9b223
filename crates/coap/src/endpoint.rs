//! The receiving endpoint: devices POST or PUT readings to Tributary over UDP.
//!
//! A request is answered only after its reading is durable: the endpoint adds it to a batch,
//! the batch is emitted with `commit_now` (so the answer does not wait for the pipeline's
//! `commit_interval`), and once the runtime has committed a position past the reading the
//! answer goes out: 2.01 Created (POST) or 2.04 Changed (PUT), piggybacked on the ACK of a
//! confirmable request, as a non-confirmable response otherwise; 4.00 Bad Request with the
//! reason when the payload went to the dead-letter destination. A device that gets no answer
//! retransmits the same message (same message id): while its reading is waiting the
//! retransmission is ignored, once answered the same answer is sent again, so each reading is
//! written once (within `exchange_lifetime`, in one process: after a crash between the commit
//! and the answer, the retransmission is written again: at least once).
//!
//! Large readings arrive block-wise (RFC 7959 Block1): each block but the last is answered at
//! once with 2.31 Continue, the whole body becomes one reading.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tributary_core::config::ConfigError;
use tributary_core::{ConnectorError, Source, SourceContext, StreamInfo};

use crate::config::CoapEndpointConfig;
use crate::proto;
use crate::rows::{committed_seq, Batcher};
use crate::CoapError;

/// Listens for readings. See the [module docs](self).
pub struct CoapEndpoint {
    config: CoapEndpointConfig,
    listen: String,
    /// The bound address, once running (for tests that listen on port 0).
    bound: std::sync::Arc<std::sync::Mutex<Option<SocketAddr>>>,
}

impl CoapEndpoint {
    /// Builds the endpoint.
    pub fn new(config: CoapEndpointConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let listen = config.listen.resolve("source.listen")?;
        Ok(CoapEndpoint {
            config,
            listen,
            bound: Default::default(),
        })
    }

    /// A handle that tells the address the endpoint listens on once it runs.
    pub fn bound_address(&self) -> std::sync::Arc<std::sync::Mutex<Option<SocketAddr>>> {
        self.bound.clone()
    }
}

enum Exchange {
    /// Written, waiting to be durable: retransmissions are ignored.
    Pending,
    /// Answered: retransmissions get the same answer.
    Done(Vec<u8>),
}

struct Waiting {
    seq: u64,
    peer: SocketAddr,
    request: Packet,
}

struct Endpoint<'a> {
    config: &'a CoapEndpointConfig,
    socket: UdpSocket,
    exchanges: HashMap<(SocketAddr, u16), (Exchange, Instant)>,
    waiting: VecDeque<Waiting>,
    rejected: HashMap<u64, String>,
    /// Block1 bodies being assembled, by peer and path.
    bodies: HashMap<(SocketAddr, String), Vec<u8>>,
    next_mid: u16,
}

impl Endpoint<'_> {
    async fn send(&self, bytes: &[u8], peer: SocketAddr) {
        if let Err(e) = self.socket.send_to(bytes, peer).await {
            tracing::warn!(peer = %peer, error = %e, "cannot answer a CoAP request");
        }
    }

    /// Answers at once (not a reading: errors, 2.31 Continue) and remembers the answer.
    async fn answer_now(&mut self, peer: SocketAddr, response: Packet) {
        let bytes = response.to_bytes().unwrap_or_default();
        self.send(&bytes, peer).await;
        self.exchanges.insert(
            (peer, response.header.message_id),
            (Exchange::Done(bytes), Instant::now()),
        );
    }

    fn fresh_mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    /// Handles a datagram; returns a reading to write.
    async fn receive(&mut self, peer: SocketAddr, data: &[u8], batcher: &mut Batcher) -> bool {
        let Ok(req) = Packet::from_bytes(data) else {
            tracing::debug!(peer = %peer, "ignoring a datagram that is not CoAP");
            return false;
        };
        let kind = req.header.get_type();
        let mid = req.header.message_id;
        if kind == MessageType::Acknowledgement || kind == MessageType::Reset {
            return false;
        }
        let key = (peer, mid);
        match self.exchanges.get(&key) {
            Some((Exchange::Pending, _)) => {
                tracing::debug!(peer = %peer, mid, "retransmission of a reading not yet durable: ignored");
                return false;
            }
            Some((Exchange::Done(bytes), _)) => {
                let bytes = bytes.clone();
                self.send(&bytes, peer).await;
                return false;
            }
            None => {}
        }
        let method = match req.header.code {
            MessageClass::Empty if kind == MessageType::Confirmable => {
                // CoAP ping.
                let rst = proto::empty(MessageType::Reset, mid)
                    .to_bytes()
                    .unwrap_or_default();
                self.send(&rst, peer).await;
                return false;
            }
            MessageClass::Request(m @ (RequestType::Post | RequestType::Put)) => m,
            MessageClass::Request(_) => {
                let mid = self.fresh_mid();
                let r = proto::response(
                    &req,
                    ResponseType::MethodNotAllowed,
                    b"POST or PUT readings".to_vec(),
                    mid,
                );
                self.answer_now(peer, r).await;
                return false;
            }
            _ => return false,
        };
        let path = proto::path_of(&req);
        if !self.config.accepts(&path) {
            let mid = self.fresh_mid();
            let r = proto::response(&req, ResponseType::NotFound, Vec::new(), mid);
            self.answer_now(peer, r).await;
            return false;
        }
        let mut payload = req.payload.clone();
        if let Some(b) = proto::block(&req, CoapOption::Block1) {
            let body = self.bodies.entry((peer, path.clone())).or_default();
            if b.num == 0 {
                body.clear();
            }
            if body.len() != usize::from(b.num) * b.size() {
                self.bodies.remove(&(peer, path.clone()));
                let mid = self.fresh_mid();
                let r =
                    proto::response(&req, ResponseType::RequestEntityIncomplete, Vec::new(), mid);
                self.answer_now(peer, r).await;
                return false;
            }
            body.extend_from_slice(&req.payload);
            if b.more {
                let fresh = self.fresh_mid();
                let mut r = proto::response(&req, ResponseType::Continue, Vec::new(), fresh);
                proto::set_block(
                    &mut r,
                    CoapOption::Block1,
                    usize::from(b.num),
                    true,
                    b.size(),
                );
                self.answer_now(peer, r).await;
                return false;
            }
            payload = self
                .bodies
                .remove(&(peer, path.clone()))
                .unwrap_or_default();
        }
        let _ = method;
        let seq = batcher.push(path, peer.to_string(), payload);
        self.exchanges
            .insert(key, (Exchange::Pending, Instant::now()));
        self.waiting.push_back(Waiting {
            seq,
            peer,
            request: req,
        });
        true
    }

    /// Answers every request whose reading is below the committed position.
    async fn answer_committed(&mut self, end: u64) {
        while self.waiting.front().is_some_and(|w| w.seq < end) {
            let w = self.waiting.pop_front().expect("checked");
            let fresh = self.fresh_mid();
            let mut r = match self.rejected.remove(&w.seq) {
                Some(reason) => proto::response(
                    &w.request,
                    ResponseType::BadRequest,
                    reason.into_bytes(),
                    fresh,
                ),
                None => {
                    let status = match w.request.header.code {
                        MessageClass::Request(RequestType::Put) => ResponseType::Changed,
                        _ => ResponseType::Created,
                    };
                    proto::response(&w.request, status, Vec::new(), fresh)
                }
            };
            if let Some(b) = proto::block(&w.request, CoapOption::Block1) {
                proto::set_block(
                    &mut r,
                    CoapOption::Block1,
                    usize::from(b.num),
                    false,
                    b.size(),
                );
            }
            let bytes = r.to_bytes().unwrap_or_default();
            self.send(&bytes, w.peer).await;
            self.exchanges.insert(
                (w.peer, w.request.header.message_id),
                (Exchange::Done(bytes), Instant::now()),
            );
        }
    }

    fn forget_old(&mut self) {
        let lifetime = self.config.exchange_lifetime;
        self.exchanges
            .retain(|_, (state, at)| matches!(state, Exchange::Pending) || at.elapsed() < lifetime);
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[async_trait::async_trait]
impl Source for CoapEndpoint {
    fn describe(&self) -> String {
        format!("coap endpoint udp://{}", self.listen)
    }

    async fn check(&mut self) -> Result<(), ConnectorError> {
        let s = UdpSocket::bind(&self.listen).await.map_err(|e| {
            ConnectorError::classified(CoapError::Io {
                peer: self.listen.clone(),
                error: e.to_string(),
            })
        })?;
        drop(s);
        Ok(())
    }

    async fn discover(&mut self) -> Result<Vec<StreamInfo>, ConnectorError> {
        Ok(vec![StreamInfo {
            name: self.config.stream.clone(),
            schema: None,
            detail: Some(format!(
                "readings POSTed or PUT to udp://{}: the schema is inferred as they arrive",
                self.listen
            )),
        }])
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        let c = &self.config;
        let socket = UdpSocket::bind(&self.listen).await.map_err(|e| {
            ConnectorError::classified(CoapError::Io {
                peer: self.listen.clone(),
                error: e.to_string(),
            })
            .with_hint("another process may use the port; set `listen`")
        })?;
        let local = socket.local_addr().ok();
        *self.bound.lock().unwrap_or_else(|p| p.into_inner()) = local;
        tracing::info!(listen = ?local, "CoAP endpoint listening");
        let mut batcher = Batcher::new(
            &ctx,
            &c.stream,
            c.format,
            c.batch_size.get(),
            c.batch_timeout,
        )?;
        let mut ep = Endpoint {
            config: c,
            socket,
            exchanges: HashMap::new(),
            waiting: VecDeque::new(),
            rejected: HashMap::new(),
            bodies: HashMap::new(),
            next_mid: fastrand::u16(..),
        };
        let stream = c.stream.clone();
        let mut committed = ctx.committed();
        let mut cleanup = tokio::time::interval(Duration::from_secs(10));
        let mut buf = vec![0u8; 65_536];
        loop {
            tokio::select! {
                _ = ctx.stopping() => break,
                _ = cleanup.tick() => ep.forget_old(),
                _ = sleep_until_opt(batcher.deadline()) => {
                    let commit_now = !ep.waiting.is_empty();
                    for (seq, reason) in batcher.emit(&ctx, commit_now).await? {
                        ep.rejected.insert(seq, reason);
                    }
                }
                changed = committed.changed() => {
                    if changed.is_err() { break; }
                    let now = committed.borrow_and_update().clone();
                    if let Some(end) = committed_seq(&now, &stream) {
                        ep.answer_committed(end).await;
                    }
                }
                received = ep.socket.recv_from(&mut buf) => {
                    let Ok((n, peer)) = received else { continue };
                    let data = buf[..n].to_vec();
                    if ep.receive(peer, &data, &mut batcher).await && batcher.full() {
                        for (seq, reason) in batcher.emit(&ctx, true).await? {
                            ep.rejected.insert(seq, reason);
                        }
                    }
                }
            }
        }
        // Stopping: hand over what was received, answer what the final commit covers.
        for (seq, reason) in batcher.emit(&ctx, true).await? {
            ep.rejected.insert(seq, reason);
        }
        drop(ctx);
        loop {
            let closed = committed.changed().await.is_err();
            let now = committed.borrow_and_update().clone();
            if let Some(end) = committed_seq(&now, &stream) {
                ep.answer_committed(end).await;
            }
            if closed {
                break;
            }
        }
        Ok(())
    }
}
