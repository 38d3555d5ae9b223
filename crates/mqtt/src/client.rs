//! The connection to the broker: rumqttc's event loop (MQTT 3.1.1 or 5) driven by its own
//! task, messages handed to the source over a channel, acknowledgements sent back only when
//! the source says the message is durable.
//!
//! rumqttc's event loop must be polled continuously (it sends pings, writes our acks and
//! reconnects when polled), so a task does nothing else. With `manual_acks` it never
//! acknowledges a QoS 1/2 message by itself; [`Connection::ack`] does, later, through the
//! client's request channel.
//!
//! **Connection epochs.** Packet identifiers belong to one connection's flow: after a
//! reconnect the broker resends every unacknowledged message (same identifier, DUP set) and
//! may reuse identifiers for new ones. An acknowledgement for a message received on an earlier
//! connection could therefore acknowledge a *different* message on the new one, before it is
//! durable. So every message carries the epoch of its connection, the epoch moves on when a
//! connection is lost, and an ack for an older epoch is dropped (the broker redelivers that
//! message; the output then holds it twice: at least once). The epoch lives under a mutex that
//! the driver holds while it bumps it and drains the request channel, so an ack is either
//! queued before the drain (and dropped by it) or sees the new epoch.
//!
//! **A rumqttc quirk worked around.** rumqttc keeps the identifiers of QoS 2 messages it has
//! acknowledged with PUBREC in memory only, and clears them on every reconnect. A new process
//! (or a reconnect) whose broker resends a PUBREL for a PUBREC sent before fails with
//! "unsolicited pubrel" and, reconnecting, gets the same PUBREL again, forever. Learning the
//! identifier of each failure is not enough: the PUBCOMP queued for one PUBREL is lost when the
//! next PUBREL of the same burst breaks the connection, so the broker resends it too. But a
//! PUBREC is only ever sent for durable data (manual acknowledgement), so every PUBREL the
//! broker sends is one to complete: before each connection the driver marks all 65,535
//! identifiers as known ([`Loop::know_every_qos2_id`]; rumqttc keeps no other state per
//! incoming identifier, so a new PUBLISH with a marked identifier is received as usual).
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as v5b;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tributary_core::retry::{Backoff, RetryPolicy};

use crate::config::Protocol;
use crate::MqttError;

/// The largest MQTT packet (256 MiB): rumqttc's default limit (10 KiB) would turn every larger
/// message into a disconnect and an endless redelivery.
const MAX_PACKET: u32 = 268_435_455;

/// A message as received.
#[derive(Debug)]
pub(crate) struct Received {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub pkid: u16,
    pub retain: bool,
    pub user_properties: Vec<(String, String)>,
    pub epoch: u64,
    pub received_at_ms: i64,
}

/// What the driver tells the source.
#[derive(Debug)]
pub(crate) enum DriverEvent {
    /// A connection is up (after CONNACK).
    Connected { session_present: bool, epoch: u64 },
    /// A message.
    Message(Received),
    /// The broker answered a subscription.
    Subscribed { refused: Vec<(String, String)> },
    /// The connection was lost; the driver reconnects.
    Lost { error: String },
    /// The driver gave up (refused credentials, reconnect budget spent).
    Failed(MqttError),
}

/// How to connect.
pub(crate) struct ConnectSettings {
    pub broker: String,
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    pub client_id: String,
    pub credentials: Option<(String, SecretString)>,
    /// TLS (an `mqtts://` broker).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub clean_start: bool,
    pub session_expiry: Duration,
    pub keep_alive: Duration,
    pub window: u16,
    pub reconnect: RetryPolicy,
}

enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

enum Loop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

enum Polled {
    ConnAck { session_present: bool },
    Publish(Received),
    SubAck(Vec<Option<String>>),
    Disconnected,
    Other,
}

enum PollError {
    /// An acknowledgement for a packet this state does not know (we never publish, and every
    /// PUBREL is known: see the module docs, so a broker bug).
    Unsolicited(u16),
    /// The broker refused the connection for a reason that retrying will not fix.
    Refused(String),
    /// The TLS handshake failed for a reason that retrying will not fix.
    Tls(String),
    Other(String),
}

fn tls_transport(config: &Arc<rustls::ClientConfig>) -> rumqttc::Transport {
    rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config.clone()))
}

/// A TLS failure that retrying will not fix: the broker's certificate is not trusted (wrong
/// CA, wrong host name, expired) or the handshake cannot agree.
fn tls_permanent(e: &rumqttc::TlsError) -> Option<String> {
    let rustls_error = match e {
        rumqttc::TlsError::TLS(r) => Some(r),
        rumqttc::TlsError::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    }?;
    match rustls_error {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::PeerIncompatible(_)
        | rustls::Error::AlertReceived(_) => Some(rustls_error.to_string()),
        _ => None,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn qos_u8(q: rumqttc::QoS) -> u8 {
    q as u8
}

fn qos5_u8(q: rumqttc::v5::mqttbytes::QoS) -> u8 {
    q as u8
}

impl Loop {
    async fn poll(&mut self, epoch: u64) -> Result<Polled, PollError> {
        match self {
            Loop::V4(el) => {
                use rumqttc::{ConnectionError, Event, Outgoing, Packet, StateError};
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(c))) => Ok(Polled::ConnAck {
                        session_present: c.session_present,
                    }),
                    Ok(Event::Incoming(Packet::Publish(p))) => Ok(Polled::Publish(Received {
                        topic: p.topic,
                        payload: p.payload,
                        qos: qos_u8(p.qos),
                        pkid: p.pkid,
                        retain: p.retain,
                        user_properties: Vec::new(),
                        epoch,
                        received_at_ms: now_ms(),
                    })),
                    Ok(Event::Incoming(Packet::SubAck(s))) => Ok(Polled::SubAck(
                        s.return_codes
                            .iter()
                            .map(|c| match c {
                                rumqttc::SubscribeReasonCode::Success(_) => None,
                                rumqttc::SubscribeReasonCode::Failure => Some("failure".into()),
                            })
                            .collect(),
                    )),
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => Ok(Polled::Disconnected),
                    Ok(_) => Ok(Polled::Other),
                    Err(ConnectionError::MqttState(StateError::Unsolicited(pkid))) => {
                        Err(PollError::Unsolicited(pkid))
                    }
                    Err(ConnectionError::ConnectionRefused(code)) => {
                        use rumqttc::ConnectReturnCode as C;
                        let reason = format!("{code:?}");
                        match code {
                            C::ServiceUnavailable | C::Success => Err(PollError::Other(reason)),
                            _ => Err(PollError::Refused(reason)),
                        }
                    }
                    Err(ConnectionError::Tls(e)) => Err(match tls_permanent(&e) {
                        Some(reason) => PollError::Tls(reason),
                        None => PollError::Other(e.to_string()),
                    }),
                    Err(e) => Err(PollError::Other(e.to_string())),
                }
            }
            Loop::V5(el) => {
                use rumqttc::v5::{ConnectionError, Event, StateError};
                use v5b::Packet;
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(c))) => Ok(Polled::ConnAck {
                        session_present: c.session_present,
                    }),
                    Ok(Event::Incoming(Packet::Publish(p))) => Ok(Polled::Publish(Received {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload,
                        qos: qos5_u8(p.qos),
                        pkid: p.pkid,
                        retain: p.retain,
                        user_properties: p
                            .properties
                            .map(|p| p.user_properties)
                            .unwrap_or_default(),
                        epoch,
                        received_at_ms: now_ms(),
                    })),
                    Ok(Event::Incoming(Packet::SubAck(s))) => Ok(Polled::SubAck(
                        s.return_codes
                            .iter()
                            .map(|c| match c {
                                v5b::SubscribeReasonCode::Success(_) => None,
                                other => Some(format!("{other:?}")),
                            })
                            .collect(),
                    )),
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => Ok(Polled::Disconnected),
                    Ok(_) => Ok(Polled::Other),
                    Err(ConnectionError::MqttState(StateError::Unsolicited(pkid))) => {
                        Err(PollError::Unsolicited(pkid))
                    }
                    Err(ConnectionError::ConnectionRefused(code)) => {
                        use v5b::ConnectReturnCode as C;
                        let reason = format!("{code:?}");
                        match code {
                            C::ServerUnavailable
                            | C::ServerBusy
                            | C::ConnectionRateExceeded
                            | C::QuotaExceeded
                            | C::UnspecifiedError
                            | C::ImplementationSpecificError
                            | C::Success => Err(PollError::Other(reason)),
                            _ => Err(PollError::Refused(reason)),
                        }
                    }
                    Err(ConnectionError::Tls(e)) => Err(match tls_permanent(&e) {
                        Some(reason) => PollError::Tls(reason),
                        None => PollError::Other(e.to_string()),
                    }),
                    Err(e) => Err(PollError::Other(e.to_string())),
                }
            }
        }
    }

    /// Drops queued acknowledgements (and whatever the broker will resend) after a lost
    /// connection.
    fn clean(&mut self) {
        match self {
            Loop::V4(el) => el.clean(),
            Loop::V5(el) => el.clean(),
        }
    }

    /// Makes the state know every QoS 2 packet identifier, so any PUBREL the broker sends is
    /// answered with PUBCOMP (see the module docs). Run before each connection: rumqttc
    /// forgets them in `clean`. Takes a few milliseconds.
    fn know_every_qos2_id(&mut self) {
        match self {
            Loop::V4(el) => {
                let before = el.state.events.len();
                for pkid in 1..=u16::MAX {
                    let mut p = rumqttc::Publish::new("", rumqttc::QoS::ExactlyOnce, Vec::new());
                    p.pkid = pkid;
                    let _ = el.state.handle_incoming_packet(rumqttc::Packet::Publish(p));
                    el.state.events.truncate(before);
                }
            }
            Loop::V5(el) => {
                let before = el.state.events.len();
                for pkid in 1..=u16::MAX {
                    let mut p = v5b::Publish::new(
                        "-",
                        rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
                        Vec::new(),
                        None,
                    );
                    p.pkid = pkid;
                    let _ = el.state.handle_incoming_packet(v5b::Packet::Publish(p));
                    el.state.events.truncate(before);
                }
            }
        }
    }
}

/// A running connection: events come out of [`Connection::events`].
pub(crate) struct Connection {
    pub events: mpsc::Receiver<DriverEvent>,
    client: Client,
    epoch: Arc<Mutex<u64>>,
    task: JoinHandle<()>,
}

impl Connection {
    /// Starts the driver task; the first connection attempt happens there.
    pub fn start(s: ConnectSettings) -> Connection {
        // The request channel carries our acks to the event loop. It must never be full when
        // the source acks: the source would wait for the driver, and the driver, stuck handing
        // the source a message, would never drain it. A broker keeps at most a window of
        // messages unacknowledged (Mosquitto honours the Receive Maximum: checked), so twice
        // the window should do; yet with that bound the backlog benchmark once stalled after
        // 45,000 messages in this very state (not explained). The bound is now far beyond any
        // window: flume allocates as the queue grows, and each entry acks a message we hold.
        let capacity = 1 << 22;
        let (client, event_loop) = match s.protocol {
            Protocol::V311 => {
                let mut o = rumqttc::MqttOptions::new(&s.client_id, &s.host, s.port);
                o.set_keep_alive(s.keep_alive)
                    .set_clean_session(s.clean_start)
                    .set_manual_acks(true)
                    .set_request_channel_capacity(capacity)
                    .set_max_packet_size(MAX_PACKET as usize, 1 << 20);
                if let Some((user, password)) = &s.credentials {
                    o.set_credentials(user, password.expose_secret());
                }
                if let Some(tls) = &s.tls {
                    o.set_transport(tls_transport(tls));
                }
                let (c, el) = rumqttc::AsyncClient::new(o, capacity);
                (Client::V4(c), Loop::V4(Box::new(el)))
            }
            Protocol::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(&s.client_id, &s.host, s.port);
                o.set_keep_alive(s.keep_alive)
                    .set_clean_start(s.clean_start)
                    .set_session_expiry_interval(Some(s.session_expiry.as_secs() as u32))
                    .set_receive_maximum(Some(s.window))
                    .set_max_packet_size(Some(MAX_PACKET))
                    .set_manual_acks(true)
                    .set_request_channel_capacity(capacity);
                if let Some((user, password)) = &s.credentials {
                    o.set_credentials(user, password.expose_secret());
                }
                if let Some(tls) = &s.tls {
                    o.set_transport(tls_transport(tls));
                }
                let (c, el) = rumqttc::v5::AsyncClient::new(o, capacity);
                (Client::V5(c), Loop::V5(Box::new(el)))
            }
        };
        let (tx, events) = mpsc::channel(4096);
        let epoch = Arc::new(Mutex::new(0u64));
        let task = tokio::spawn(drive(event_loop, tx, epoch.clone(), s.broker, s.reconnect));
        Connection {
            events,
            client,
            epoch,
            task,
        }
    }

    /// Acknowledges a durable message: PUBACK (QoS 1) or PUBREC (QoS 2; rumqttc answers the
    /// broker's PUBREL with PUBCOMP). Returns `false` when the message came on an earlier
    /// connection (the broker redelivers it; nothing is sent).
    pub async fn ack(&self, epoch: u64, qos: u8, pkid: u16) -> Result<bool, MqttError> {
        loop {
            {
                let current = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
                if *current != epoch {
                    return Ok(false);
                }
                let sent = match &self.client {
                    Client::V4(c) => {
                        let mut p = rumqttc::Publish::new("", to_qos(qos), Vec::new());
                        p.pkid = pkid;
                        c.try_ack(&p).is_ok()
                    }
                    Client::V5(c) => {
                        let mut p = v5b::Publish::new("", to_qos5(qos), Vec::new(), None);
                        p.pkid = pkid;
                        c.try_ack(&p).is_ok()
                    }
                };
                if sent {
                    return Ok(true);
                }
                // The channel is full (the driver writes some, then we try again) or closed.
                if self.task.is_finished() {
                    return Err(MqttError::Closed("the connection task ended".into()));
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Subscribes to `filters` at `qos`. MQTT 5: retained messages are sent only for a new
    /// subscription, and only when `retained` is set.
    pub async fn subscribe(
        &self,
        filters: &[String],
        qos: u8,
        retained: bool,
    ) -> Result<(), MqttError> {
        match &self.client {
            Client::V4(c) => c
                .subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), to_qos(qos))),
                )
                .await
                .map_err(|e| MqttError::Closed(e.to_string())),
            Client::V5(c) => c
                .subscribe_many(filters.iter().map(|f| {
                    let mut filter = v5b::Filter::new(f.clone(), to_qos5(qos));
                    filter.retain_forward_rule = if retained {
                        v5b::RetainForwardRule::OnNewSubscribe
                    } else {
                        v5b::RetainForwardRule::Never
                    };
                    filter
                }))
                .await
                .map_err(|e| MqttError::Closed(e.to_string())),
        }
    }

    /// Sends DISCONNECT (after every ack queued before it) and waits for the driver to end.
    pub async fn close(self, wait: Duration) {
        let Connection {
            mut events,
            client,
            task,
            ..
        } = self;
        let _ = match &client {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
        // Keep draining events so the driver is never stuck handing us a message.
        let drain = async { while events.recv().await.is_some() {} };
        if tokio::time::timeout(wait, drain).await.is_err() {
            task.abort();
        }
        let _ = task.await;
    }
}

fn to_qos(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn to_qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// Tells the source the driver gave up for good (the source may be gone already).
async fn fail(tx: &mpsc::Sender<DriverEvent>, error: MqttError) {
    let _ = tx.send(DriverEvent::Failed(error)).await;
}

/// The driver task: polls the event loop, forwards events, reconnects with backoff.
async fn drive(
    mut el: Loop,
    tx: mpsc::Sender<DriverEvent>,
    epoch: Arc<Mutex<u64>>,
    broker: String,
    policy: RetryPolicy,
) {
    let mut backoff = Backoff::new(policy.clone());
    let mut current = 0u64;
    el.know_every_qos2_id();
    loop {
        let polled = el.poll(current).await;
        let event = match polled {
            Ok(Polled::ConnAck { session_present }) => {
                backoff = Backoff::new(policy.clone());
                DriverEvent::Connected {
                    session_present,
                    epoch: current,
                }
            }
            Ok(Polled::Publish(m)) => DriverEvent::Message(m),
            Ok(Polled::SubAck(codes)) => DriverEvent::Subscribed {
                refused: codes
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, c)| c.map(|c| (i.to_string(), c)))
                    .collect(),
            },
            Ok(Polled::Disconnected) => return,
            Ok(Polled::Other) => continue,
            Err(error) => {
                {
                    // The connection is gone: acks of its messages must not reach the next one.
                    let mut e = epoch.lock().unwrap_or_else(|p| p.into_inner());
                    *e += 1;
                    current = *e;
                    el.clean();
                    el.know_every_qos2_id();
                }
                let message = match error {
                    PollError::Refused(reason) => {
                        let broker = broker.clone();
                        return fail(&tx, MqttError::Refused { broker, reason }).await;
                    }
                    PollError::Tls(reason) => {
                        let broker = broker.clone();
                        return fail(&tx, MqttError::Tls { broker, reason }).await;
                    }
                    PollError::Unsolicited(pkid) => {
                        format!(
                            "the broker acknowledged packet {pkid}, which this client never sent"
                        )
                    }
                    PollError::Other(message) => message,
                };
                let Some(delay) = backoff.next_delay(None) else {
                    let gave_up = MqttError::GaveUp {
                        broker: broker.clone(),
                        attempts: backoff.attempts(),
                        last: message,
                    };
                    return fail(&tx, gave_up).await;
                };
                if tx.send(DriverEvent::Lost { error: message }).await.is_err() {
                    return;
                }
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}
