//! Reading a remote resource: RFC 7641 Observe (a notification per change, registration
//! renewed when notifications stop) or polling with GET, with RFC 7959 block-wise transfers for
//! representations larger than a datagram.
//!
//! One request is outstanding at a time (a registration, a poll or the next block). A
//! confirmable request is retransmitted with RFC 7252's exponential backoff (2 s × 1-1.5, four
//! times); a confirmable notification is acknowledged at once. A notification for a token we
//! no longer use is answered with RST, which tells the server to forget that observation.

use std::net::SocketAddr;
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, ObserveOption, Packet};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tributary_core::config::ConfigError;
use tributary_core::{ConnectorError, Source, SourceContext, StreamInfo};

use crate::config::{CoapSourceConfig, Mode};
use crate::proto::{self, CoapUrl};
use crate::rows::Batcher;
use crate::CoapError;

/// Observes or polls one CoAP resource. See the [module docs](self).
pub struct CoapSource {
    config: CoapSourceConfig,
    url: CoapUrl,
}

impl CoapSource {
    /// Builds the source.
    pub fn new(config: CoapSourceConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let url = CoapUrl::parse(&config.url.resolve("source.url")?).map_err(|message| {
            ConfigError::Value {
                field: "source.url".into(),
                message,
            }
        })?;
        Ok(CoapSource { config, url })
    }
}

/// What the outstanding request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Register,
    Poll,
    /// The next block of a representation (block number).
    Block(usize),
}

struct Outstanding {
    purpose: Purpose,
    token: Vec<u8>,
    message_id: u16,
    bytes: Vec<u8>,
    confirmable: bool,
    acked: bool,
    retransmits: u32,
    timeout: Duration,
    next_at: Instant,
    /// Give up waiting for the response at this time.
    give_up_at: Instant,
}

struct State {
    socket: UdpSocket,
    server: SocketAddr,
    next_mid: u16,
    outstanding: Option<Outstanding>,
    /// The token of the current observation.
    observing: Option<Vec<u8>>,
    last_notification: Instant,
    max_age: Duration,
    last_seq: Option<(u32, Instant)>,
    /// A block-wise representation being assembled.
    assembling: Vec<u8>,
    /// When to send the next registration or poll.
    next_request_at: Option<Instant>,
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn token() -> Vec<u8> {
    fastrand::u64(..).to_be_bytes()[..4].to_vec()
}

impl State {
    fn mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    async fn send(&self, p: &Packet) -> Result<(), CoapError> {
        let bytes = p
            .to_bytes()
            .map_err(|e| CoapError::Internal(format!("{e:?}")))?;
        self.socket
            .send_to(&bytes, self.server)
            .await
            .map_err(|e| CoapError::Io {
                peer: self.server.to_string(),
                error: e.to_string(),
            })?;
        Ok(())
    }

    async fn request(
        &mut self,
        mut p: Packet,
        purpose: Purpose,
        confirmable: bool,
    ) -> Result<(), CoapError> {
        let token = p.get_token().to_vec();
        let message_id = self.mid();
        p.header.message_id = message_id;
        self.send(&p).await?;
        let timeout = proto::ACK_TIMEOUT.mul_f64(1.0 + fastrand::f64() * 0.5);
        let now = Instant::now();
        self.outstanding = Some(Outstanding {
            purpose,
            token,
            message_id,
            bytes: p.to_bytes().unwrap_or_default(),
            confirmable,
            acked: false,
            retransmits: 0,
            timeout,
            next_at: now + timeout,
            // RFC 7252 MAX_TRANSMIT_WAIT is 93 s; a response to a NON request or after an
            // empty ACK is not waited for longer than that.
            give_up_at: now + Duration::from_secs(93),
        });
        Ok(())
    }
}

#[async_trait::async_trait]
impl Source for CoapSource {
    fn describe(&self) -> String {
        let mode = match self.config.mode {
            Mode::Observe => "observe",
            Mode::Poll => "poll",
        };
        format!(
            "coap {mode} coap://{}{}",
            self.url.authority,
            self.url.path_string()
        )
    }

    async fn discover(&mut self) -> Result<Vec<StreamInfo>, ConnectorError> {
        Ok(vec![StreamInfo {
            name: self.config.stream.clone(),
            schema: None,
            detail: Some(format!(
                "CoAP resource coap://{}{}: the schema is inferred from readings as they arrive",
                self.url.authority,
                self.url.path_string()
            )),
        }])
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        let c = self.config.clone();
        let server = tokio::net::lookup_host(&self.url.authority)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                ConnectorError::classified(CoapError::Io {
                    peer: self.url.authority.clone(),
                    error: "cannot resolve the host".into(),
                })
            })?;
        let bind = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = UdpSocket::bind(bind).await.map_err(|e| {
            ConnectorError::classified(CoapError::Io {
                peer: bind.into(),
                error: e.to_string(),
            })
        })?;
        let mut batcher = Batcher::new(
            &ctx,
            &c.stream,
            c.format,
            c.batch_size.get(),
            c.batch_timeout,
        )?;
        let mut st = State {
            socket,
            server,
            next_mid: fastrand::u16(..),
            outstanding: None,
            observing: None,
            last_notification: Instant::now(),
            max_age: Duration::from_secs(60),
            last_seq: None,
            assembling: Vec::new(),
            next_request_at: Some(Instant::now()),
        };
        let path = self.url.path_string();
        let source = server.to_string();
        let mut buf = vec![0u8; 65_536];
        loop {
            let retransmit_at = st.outstanding.as_ref().map(|o| {
                if o.confirmable && !o.acked {
                    o.next_at
                } else {
                    o.give_up_at
                }
            });
            let reregister_at = (c.mode == Mode::Observe && st.observing.is_some()).then(|| {
                st.last_notification + c.reregister_after.max(st.max_age + Duration::from_secs(5))
            });
            let next_request = st.next_request_at.filter(|_| st.outstanding.is_none());
            tokio::select! {
                _ = ctx.stopping() => break,
                _ = sleep_until_opt(batcher.deadline()) => { batcher.emit(&ctx, false).await?; }
                _ = sleep_until_opt(next_request) => {
                    st.next_request_at = None;
                    let confirmable = c.confirmable;
                    let mut p = proto::get(&self.url, confirmable, 0, &token());
                    // Ask for the block size up front (RFC 7959 §2.4: a client may suggest one).
                    proto::set_block(&mut p, CoapOption::Block2, 0, false, c.block_size);
                    let purpose = match c.mode {
                        Mode::Observe => {
                            p.set_observe_value(u32::from(ObserveOption::Register as u8));
                            st.observing = Some(p.get_token().to_vec());
                            st.last_seq = None;
                            Purpose::Register
                        }
                        Mode::Poll => Purpose::Poll,
                    };
                    st.assembling.clear();
                    st.request(p, purpose, confirmable).await.map_err(ConnectorError::classified)?;
                }
                _ = sleep_until_opt(reregister_at) => {
                    tracing::info!(resource = %path, "no notification for a while: registering again");
                    st.last_notification = Instant::now();
                    if st.outstanding.is_none() {
                        st.next_request_at = Some(Instant::now());
                    }
                }
                _ = sleep_until_opt(retransmit_at) => {
                    let Some(o) = st.outstanding.as_mut() else { continue };
                    if o.confirmable && !o.acked && o.retransmits < proto::MAX_RETRANSMIT {
                        o.retransmits += 1;
                        o.timeout *= 2;
                        o.next_at = Instant::now() + o.timeout;
                        let bytes = o.bytes.clone();
                        st.socket.send_to(&bytes, st.server).await.map_err(|e| ConnectorError::classified(CoapError::Io { peer: source.clone(), error: e.to_string() }))?;
                    } else {
                        tracing::warn!(resource = %path, "no response from the CoAP server; trying again in {:?}", c.interval);
                        st.outstanding = None;
                        st.observing = None;
                        st.next_request_at = Some(Instant::now() + c.interval);
                    }
                }
                received = st.socket.recv_from(&mut buf) => {
                    let Ok((n, from)) = received else { continue };
                    if from != st.server { continue; }
                    let Ok(p) = Packet::from_bytes(&buf[..n]) else {
                        tracing::debug!("ignoring a datagram that is not CoAP");
                        continue;
                    };
                    if let Some(reading) = handle(&mut st, &c, &self.url, p).await.map_err(ConnectorError::classified)? {
                        batcher.push(path.clone(), source.clone(), reading);
                        if batcher.full() {
                            batcher.emit(&ctx, false).await?;
                        }
                    }
                }
            }
        }
        batcher.emit(&ctx, false).await?;
        // Tell the server to stop notifying: RST the next notification (done by a later run's
        // unknown token), or deregister now.
        if let (Mode::Observe, Some(token)) = (c.mode, st.observing.take()) {
            let mut p = proto::get(&self.url, false, 0, &token);
            p.set_observe_value(u32::from(ObserveOption::Deregister as u8));
            p.header.message_id = st.mid();
            let _ = st.send(&p).await;
        }
        Ok(())
    }
}

/// Handles one message from the server; returns a complete reading, if this message ends one.
async fn handle(
    st: &mut State,
    c: &CoapSourceConfig,
    url: &CoapUrl,
    p: Packet,
) -> Result<Option<Vec<u8>>, CoapError> {
    let kind = p.header.get_type();
    let mid = p.header.message_id;
    // An empty ACK: the server got our request, the response comes separately.
    if p.header.code == MessageClass::Empty {
        if kind == MessageType::Acknowledgement {
            if let Some(o) = st.outstanding.as_mut().filter(|o| o.message_id == mid) {
                o.acked = true;
            }
        }
        return Ok(None);
    }
    let ours_outstanding = st
        .outstanding
        .as_ref()
        .is_some_and(|o| o.token == p.get_token());
    let ours_observation = st.observing.as_deref() == Some(p.get_token());
    if !ours_outstanding && !ours_observation {
        if kind == MessageType::Confirmable || kind == MessageType::NonConfirmable {
            // Not ours (an old observation): RST makes the server forget it.
            st.send(&proto::empty(MessageType::Reset, mid)).await?;
        }
        return Ok(None);
    }
    if kind == MessageType::Confirmable {
        st.send(&proto::empty(MessageType::Acknowledgement, mid))
            .await?;
    }
    let purpose = st
        .outstanding
        .as_ref()
        .filter(|_| ours_outstanding)
        .map(|o| o.purpose);
    if ours_outstanding {
        st.outstanding = None;
    }
    if !proto::is_success(&p) {
        tracing::warn!(resource = %url.path_string(), code = %proto::code(&p), payload = %String::from_utf8_lossy(&p.payload), "the CoAP server answered with an error; trying again in {:?}", c.interval);
        st.observing = None;
        st.next_request_at = Some(Instant::now() + c.interval);
        return Ok(None);
    }
    let observe = p.get_observe_value().and_then(|r| r.ok());
    if ours_observation && !matches!(purpose, Some(Purpose::Block(_))) {
        st.last_notification = Instant::now();
        st.max_age = p
            .get_first_option_as::<coap_lite::option_value::OptionValueU32>(CoapOption::MaxAge)
            .and_then(|r| r.ok())
            .map_or(Duration::from_secs(60), |v| {
                Duration::from_secs(u64::from(v.0))
            });
        match observe {
            Some(seq) => {
                if let Some((old, at)) = st.last_seq {
                    if !proto::fresher(old, seq, at.elapsed()) {
                        tracing::debug!(seq, "stale notification dropped (reordered)");
                        return Ok(None);
                    }
                }
                st.last_seq = Some((seq, Instant::now()));
            }
            None if purpose == Some(Purpose::Register) => {
                tracing::warn!(resource = %url.path_string(), "the server does not offer Observe for this resource: reading it again every {:?}", c.interval);
                st.observing = None;
                st.next_request_at = Some(Instant::now() + c.interval);
            }
            None => {}
        }
    }
    if matches!(purpose, Some(Purpose::Poll)) {
        st.next_request_at = Some(Instant::now() + c.interval);
    }
    // Block-wise: fetch the next block, or finish the representation.
    let block = proto::block(&p, CoapOption::Block2);
    let (num, more, size) = match &block {
        Some(b) => (usize::from(b.num), b.more, b.size().min(c.block_size)),
        None => (0, false, c.block_size),
    };
    if num == 0 {
        st.assembling.clear();
    }
    st.assembling.extend_from_slice(&p.payload);
    if more {
        // The next block at the size we asked for (a server may lower it; the offset counts).
        let offset = st.assembling.len();
        tracing::trace!(
            block = num,
            size,
            offset,
            "block-wise transfer: fetching the next block"
        );
        let mut next = proto::get(url, c.confirmable, 0, &token());
        proto::set_block(&mut next, CoapOption::Block2, offset / size, false, size);
        let confirmable = c.confirmable;
        st.request(next, Purpose::Block(offset / size), confirmable)
            .await?;
        return Ok(None);
    }
    Ok(Some(std::mem::take(&mut st.assembling)))
}
