//! The MQTT source: subscribes, batches messages by count and time, emits them, and
//! acknowledges each QoS 1/2 message only once the runtime has committed a position past it.
//! See the [crate docs](crate) for the guarantees.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tributary_core::config::ConfigError;
use tributary_core::dead_letter::Rejected;
use tributary_core::source::Committed;
use tributary_core::{
    Batch, BatchMeta, ConnectorError, Position, Source, SourceContext, StreamInfo,
};

use crate::client::{ConnectSettings, Connection, DriverEvent, Received};
use crate::config::{MqttSourceConfig, TlsConfig};
use crate::rows::RowBuilder;
use crate::topic::TopicTemplate;
use crate::MqttError;

/// The source's position: a local sequence number of messages received for this client id.
///
/// The broker holds the real state (the session and its unacknowledged messages); the sequence
/// only orders batches for the ack tracker and names output files, so that after a crash the
/// first batch of the next run (whose messages are the redelivered ones) overwrites the file
/// the crashed run wrote but did not commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttPosition {
    /// The client id whose session the sequence counts.
    pub client_id: String,
    /// Messages received before this point.
    pub seq: u64,
}

/// A QoS 1/2 message waiting for its position to be committed.
struct Unacked {
    seq: u64,
    epoch: u64,
    qos: u8,
    pkid: u16,
}

/// Reads an MQTT subscription. See the [crate docs](crate).
pub struct MqttSource {
    config: MqttSourceConfig,
    template: Option<TopicTemplate>,
    client_id: String,
    broker: String,
    host: String,
    port: u16,
    credentials: Option<(String, SecretString)>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl MqttSource {
    /// Builds the source of pipeline `pipeline` (its name is the default client id's suffix).
    pub fn new(config: MqttSourceConfig, pipeline: &str) -> Result<Self, ConfigError> {
        let template = config.validate()?;
        let broker = config.broker.resolve("source.broker")?;
        let (host, port, secure) = parse_broker(&broker).map_err(|message| ConfigError::Value {
            field: "source.broker".into(),
            message,
        })?;
        let tls = match (&config.tls, secure) {
            (Some(t), true) => Some(crate::tls::client_config(t)?),
            (None, true) => Some(crate::tls::client_config(&TlsConfig::default())?),
            (Some(_), false) => {
                return Err(ConfigError::Value {
                    field: "source.tls".into(),
                    message: format!(
                        "the broker {broker:?} is plain TCP: write mqtts://host:port to use TLS"
                    ),
                })
            }
            (None, false) => None,
        };
        let client_id = match &config.client_id {
            Some(id) => id.resolve("source.client_id")?,
            None => format!("tributary-{pipeline}"),
        };
        if client_id.is_empty() {
            return Err(ConfigError::Value {
                field: "source.client_id".into(),
                message: "must not be empty (a persistent session needs a stable id)".into(),
            });
        }
        let credentials = match &config.username {
            Some(user) => Some((
                user.resolve("source.username")?,
                match &config.password {
                    Some(p) => p.resolve_secret("source.password")?,
                    None => SecretString::from(String::new()),
                },
            )),
            None => None,
        };
        Ok(MqttSource {
            config,
            template,
            client_id,
            broker,
            host,
            port,
            credentials,
            tls,
        })
    }

    /// The client id in use.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    fn settings(&self, client_id: String, clean_start: bool) -> ConnectSettings {
        ConnectSettings {
            broker: self.broker.clone(),
            host: self.host.clone(),
            port: self.port,
            protocol: self.config.protocol,
            client_id,
            credentials: self.credentials.clone(),
            tls: self.tls.clone(),
            clean_start,
            session_expiry: self.config.session_expiry,
            keep_alive: self.config.keep_alive,
            window: self.config.window(),
            reconnect: self.config.reconnect.clone(),
        }
    }

    fn position(&self, seq: u64) -> Position {
        Position::encode(&MqttPosition {
            client_id: self.client_id.clone(),
            seq,
        })
        .expect("a position serialises")
    }
}

/// `host:port`, `mqtt://host:port` or `tcp://host:port` (port 1883 when left out), or
/// `mqtts://host:port` / `ssl://host:port` (TLS, port 8883 when left out). The flag says TLS.
fn parse_broker(text: &str) -> Result<(String, u16, bool), String> {
    let (rest, secure) =
        if let Some(r) = text.strip_prefix("mqtt://").or(text.strip_prefix("tcp://")) {
            (r, false)
        } else if let Some(r) = text
            .strip_prefix("mqtts://")
            .or(text.strip_prefix("ssl://"))
        {
            (r, true)
        } else if let Some((scheme, _)) = text.split_once("://") {
            return Err(format!(
                "{text:?}: unknown scheme {scheme:?} (mqtt:// for plain TCP, mqtts:// for TLS)"
            ));
        } else {
            (text, false)
        };
    let default_port = if secure { 8883 } else { 1883 };
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => port
            .parse()
            .map(|p| (host.trim_matches(['[', ']']).to_string(), p, secure))
            .map_err(|_| format!("{text:?}: the port is not a number")),
        Some(_) => Err(format!("{text:?}: no host")),
        None if rest.is_empty() => Err("empty broker address".into()),
        None => Ok((rest.to_string(), default_port, secure)),
    }
}

/// The batch being filled.
struct Filling {
    /// Sequence number of its first message.
    start: u64,
    /// Messages that become rows (skipped retained messages are only counted in the range).
    messages: Vec<(u64, Received)>,
    bytes: u64,
    deadline: Option<Instant>,
}

struct Run<'a> {
    source: &'a MqttSource,
    stream: Arc<str>,
    seq: u64,
    epoch: u64,
    unacked: VecDeque<Unacked>,
    /// QoS 1/2 messages received since the last batch that asked for a commit.
    unrequested: usize,
    filling: Filling,
    rows: RowBuilder,
    connected_once: bool,
}

impl Run<'_> {
    /// Emits the batch being filled (if it covers any message).
    async fn emit(&mut self, ctx: &SourceContext, commit_now: bool) -> Result<(), ConnectorError> {
        let start = self.filling.start;
        let end = self.seq;
        let messages = std::mem::take(&mut self.filling.messages);
        let bytes = std::mem::take(&mut self.filling.bytes);
        self.filling.start = end;
        self.filling.deadline = None;
        if commit_now {
            self.unrequested = 0;
        }
        if start == end {
            return Ok(());
        }
        let refs: Vec<&Received> = messages.iter().map(|(_, m)| m).collect();
        let built = self.rows.build(&refs).map_err(ConnectorError::classified)?;
        for (index, reason) in built.rejected {
            let (seq, m) = &messages[index];
            let rejected = Rejected {
                stream: self.stream.to_string(),
                position: Some(self.source.position(*seq)),
                message: reason,
                location: Some(format!("topic {} (message {seq})", m.topic)),
                raw: m.payload.to_vec(),
                headers: Vec::new(),
            };
            if ctx.reject(rejected).await.is_err() {
                return Ok(());
            }
        }
        let data = built
            .batch
            .unwrap_or_else(|| RecordBatch::new_empty(Arc::new(Schema::empty())));
        let mut meta = BatchMeta::new(
            self.stream.clone(),
            self.source.position(start),
            self.source.position(end),
            bytes,
        );
        meta.rows = Some(built.rows);
        meta.discarded = built.discarded;
        meta.commit_now = commit_now;
        let _ = ctx.emit(Batch { data, meta }).await;
        Ok(())
    }

    fn on_message(&mut self, m: Received) -> bool {
        let seq = self.seq;
        self.seq += 1;
        if m.qos > 0 {
            self.unacked.push_back(Unacked {
                seq,
                epoch: m.epoch,
                qos: m.qos,
                pkid: m.pkid,
            });
            self.unrequested += 1;
            if self.unacked.len() == usize::from(self.source.config.window()) * 2 {
                tracing::warn!(window = self.source.config.window(), "the broker sent twice the in-flight window without acknowledgements (for MQTT 3.1.1 set `max_inflight` to the broker's limit)");
            }
        }
        if self.filling.deadline.is_none() {
            self.filling.deadline = Some(Instant::now() + self.source.config.batch_timeout);
        }
        if m.retain && !self.source.config.retained {
            tracing::debug!(topic = %m.topic, "retained message skipped (retained: false)");
        } else {
            self.filling.bytes += m.payload.len() as u64;
            self.filling.messages.push((seq, m));
        }
        self.filling.messages.len() >= self.source.config.batch_size.get()
    }

    /// Half the window waiting: ask for a commit now, so the broker never stops for long.
    fn window_half_full(&self) -> bool {
        self.unrequested >= usize::from(self.source.config.window() / 2).max(1)
    }

    /// Acknowledges every message below the committed position.
    async fn ack_committed(
        &mut self,
        committed: &Committed,
        conn: &Connection,
    ) -> Result<(), ConnectorError> {
        let Some(end) = committed
            .get(self.stream.as_ref())
            .and_then(|p| p.decode::<MqttPosition>().ok())
            .map(|p| p.seq)
        else {
            return Ok(());
        };
        while self.unacked.front().is_some_and(|u| u.seq < end) {
            let u = self.unacked.pop_front().expect("checked");
            if !conn
                .ack(u.epoch, u.qos, u.pkid)
                .await
                .map_err(ConnectorError::classified)?
            {
                tracing::debug!(
                    seq = u.seq,
                    "not acknowledged: received on an earlier connection"
                );
            }
        }
        Ok(())
    }

    async fn on_connected(
        &mut self,
        conn: &Connection,
        session_present: bool,
        epoch: u64,
    ) -> Result<(), ConnectorError> {
        let c = &self.source.config;
        // Messages of earlier connections are redelivered on this one: never ack those.
        self.epoch = epoch;
        self.unacked.retain(|u| u.epoch == epoch);
        self.unrequested = self.unacked.len();
        if !session_present && !c.clean_start && self.connected_once {
            tracing::warn!(broker = %self.source.broker, client_id = %self.source.client_id,
                "the broker had no session for us: messages published while disconnected were not kept (session expired or broker restarted without persistence)");
        }
        tracing::info!(broker = %self.source.broker, client_id = %self.source.client_id, session_present, "connected to the MQTT broker");
        self.connected_once = true;
        // Subscribing again is harmless and picks up filters added to the config. MQTT 5 sends
        // retained messages for new subscriptions only; 3.1.1 may send them again, and they are
        // skipped unless `retained` is set.
        conn.subscribe(&c.topics, c.qos, c.retained)
            .await
            .map_err(ConnectorError::classified)
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[async_trait::async_trait]
impl Source for MqttSource {
    fn describe(&self) -> String {
        format!(
            "mqtt {} {} as {}",
            self.broker,
            self.config.topics.join(","),
            self.client_id
        )
    }

    async fn check(&mut self) -> Result<(), ConnectorError> {
        // A separate, clean session: the check must not take over or change the real one.
        let mut conn = Connection::start(self.settings(format!("{}-check", self.client_id), true));
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match conn.events.recv().await {
                    Some(DriverEvent::Connected { .. }) => return Ok(()),
                    Some(DriverEvent::Failed(e)) => return Err(e),
                    Some(DriverEvent::Lost { error }) => {
                        return Err(MqttError::Unreachable {
                            broker: self.broker.clone(),
                            error,
                        })
                    }
                    Some(_) => {}
                    None => return Err(MqttError::Closed("the connection task ended".into())),
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(MqttError::Unreachable {
                broker: self.broker.clone(),
                error: "no CONNACK within 10s".into(),
            })
        });
        conn.close(Duration::from_secs(2)).await;
        outcome.map_err(ConnectorError::classified)
    }

    async fn discover(&mut self) -> Result<Vec<StreamInfo>, ConnectorError> {
        Ok(vec![StreamInfo {
            name: self.config.stream.clone(),
            schema: None,
            detail: Some(format!(
                "MQTT {} from {}: the schema is inferred from messages as they arrive",
                self.config.topics.join(", "),
                self.broker
            )),
        }])
    }

    async fn run(&mut self, ctx: SourceContext) -> Result<(), ConnectorError> {
        let c = &self.config;
        let stream: Arc<str> = c.stream.as_str().into();
        let seq = match ctx.checkpoint(&stream) {
            Some(p) => {
                p.decode::<MqttPosition>()
                    .map_err(|e| {
                        ConnectorError::fatal(format!(
                            "stream {stream}: the committed position {p} is not an MQTT position: {e}"
                        ))
                        .with_hint("the stream was written by another source: run `tributary state reset <pipeline file>` or change `stream`")
                    })?
                    .seq
            }
            None => 0,
        };
        let stored = ctx.stored_schema(&stream)?;
        let mut committed = ctx.committed();
        let mut conn = Connection::start(self.settings(self.client_id.clone(), c.clean_start));
        let mut run = Run {
            source: self,
            stream: stream.clone(),
            seq,
            epoch: 0,
            unacked: VecDeque::new(),
            unrequested: 0,
            filling: Filling {
                start: seq,
                messages: Vec::new(),
                bytes: 0,
                deadline: None,
            },
            rows: RowBuilder::new(
                c.format,
                self.template.clone(),
                c.metadata.clone(),
                ctx.schema_policy(),
                stored,
            ),
            connected_once: false,
        };

        let result: Result<(), ConnectorError> = async {
            loop {
                tokio::select! {
                    _ = ctx.stopping() => return Ok(()),
                    changed = committed.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        let now = committed.borrow_and_update().clone();
                        run.ack_committed(&now, &conn).await?;
                    }
                    _ = sleep_until_opt(run.filling.deadline) => run.emit(&ctx, false).await?,
                    event = conn.events.recv() => match event {
                        None => return Err(ConnectorError::classified(MqttError::Closed("the connection task ended".into()))),
                        Some(DriverEvent::Message(m)) => {
                            let full = run.on_message(m);
                            let commit_now = run.window_half_full();
                            if full || commit_now {
                                run.emit(&ctx, commit_now).await?;
                            }
                        }
                        Some(DriverEvent::Connected { session_present, epoch }) => {
                            run.on_connected(&conn, session_present, epoch).await?;
                        }
                        Some(DriverEvent::Subscribed { refused }) => {
                            if let Some((index, reason)) = refused.into_iter().next() {
                                let filter = index.parse::<usize>().ok().and_then(|i| c.topics.get(i)).cloned().unwrap_or(index);
                                return Err(ConnectorError::classified(MqttError::SubscribeRefused {
                                    broker: self.broker.clone(),
                                    filter,
                                    reason,
                                }));
                            }
                        }
                        Some(DriverEvent::Lost { error }) => {
                            tracing::warn!(broker = %self.broker, error = %error, "MQTT connection lost, reconnecting");
                        }
                        Some(DriverEvent::Failed(e)) => return Err(ConnectorError::classified(e)),
                    },
                }
            }
        }
        .await;

        // Stopping (or failed): hand over what was read, then acknowledge what the final
        // commit covers. Messages received after this are not acknowledged: the broker keeps
        // them for the next run.
        if result.is_ok() {
            run.emit(&ctx, false).await?;
        }
        drop(ctx);
        let drained: Result<(), ConnectorError> = async {
            loop {
                tokio::select! {
                    changed = committed.changed() => {
                        let now = committed.borrow_and_update().clone();
                        run.ack_committed(&now, &conn).await?;
                        if changed.is_err() {
                            return Ok(());
                        }
                    }
                    event = conn.events.recv() => {
                        if event.is_none() {
                            return Ok(());
                        }
                    }
                }
            }
        }
        .await;
        conn.close(Duration::from_secs(5)).await;
        result.and(drained)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_parse() {
        assert_eq!(
            parse_broker("127.0.0.1:1883"),
            Ok(("127.0.0.1".into(), 1883, false))
        );
        assert_eq!(
            parse_broker("mqtt://broker:1884/"),
            Ok(("broker".into(), 1884, false))
        );
        assert_eq!(parse_broker("broker"), Ok(("broker".into(), 1883, false)));
        assert_eq!(parse_broker("mqtts://b"), Ok(("b".into(), 8883, true)));
        assert_eq!(parse_broker("ssl://b:9883"), Ok(("b".into(), 9883, true)));
        assert!(parse_broker("ws://b:80")
            .unwrap_err()
            .contains("unknown scheme"));
        assert!(parse_broker("b:x").unwrap_err().contains("port"));
    }
}
