//! The IO task around rumqttc's event loop, and the [`Publisher`] handle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill, Packet, Publish, PublishProperties, Subscribe, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{
    mqttbytes, AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Request, StateError,
};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::backoff::Backoff;
use super::topics;
use super::{read_password, validate, Inbound, MqttError, MqttSettings};

/// Why a publish was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The outgoing queue is full (the broker is away or slow): the message was dropped so
    /// that the caller never waits on the network.
    #[error("the MQTT outgoing queue is full; message dropped")]
    QueueFull,
    /// The IO task has ended (shut down, aborted, or its receiver was dropped).
    #[error("the MQTT connection task has ended")]
    Closed,
    #[error("payload of {len} bytes exceeds the {max} byte limit")]
    TooLarge { len: usize, max: usize },
}

/// The latest status, kept until it is in the outgoing queue.
#[derive(Default)]
struct StatusSlot {
    latest: Option<(Bytes, bool)>,
    /// `latest` still has to be queued (the queue was full, or the broker has just
    /// replaced it with the will after a reconnect).
    dirty: bool,
}

struct Shared {
    status_topic: String,
    events_topic: String,
    telemetry_topic: String,
    max_payload: usize,
    event_expiry: Option<u32>,
    status: Mutex<StatusSlot>,
    closed: AtomicBool,
}

/// Sets `closed` when the IO task ends, also when it is aborted (its future is dropped).
struct ClosedOnDrop(Arc<Shared>);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
    }
}

/// A cheap, cloneable handle for publishing. Every method returns at once: serving must
/// never wait on the network. Status is the one message that is not dropped: the latest
/// value is kept and sent when there is room, and again after every reconnect.
#[derive(Clone)]
pub struct Publisher {
    client: AsyncClient,
    shared: Arc<Shared>,
}

impl Publisher {
    fn check_len(&self, payload: &Bytes) -> Result<(), PublishError> {
        if payload.len() > self.shared.max_payload {
            return Err(PublishError::TooLarge {
                len: payload.len(),
                max: self.shared.max_payload,
            });
        }
        Ok(())
    }

    fn try_queue(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        props: Option<PublishProperties>,
    ) -> Result<(), PublishError> {
        let r = match props {
            Some(p) => self
                .client
                .try_publish_with_properties(topic, qos, retain, payload, p),
            None => self.client.try_publish(topic, qos, retain, payload),
        };
        // rumqttc folds "full" and "receiver gone" into one error
        r.map_err(|_| {
            if self.shared.closed.load(Ordering::Acquire) {
                PublishError::Closed
            } else {
                PublishError::QueueFull
            }
        })
    }

    /// Publishes this device's status on `devices/<id>/status` (QoS 1; `retained` should
    /// be true so that a dashboard sees it at once). Latest value wins: if the queue is
    /// full it is kept and sent when there is room, and it is republished after every
    /// reconnect (the will has overwritten it meanwhile), so callers need not.
    pub fn publish_status(
        &self,
        json: impl Into<Bytes>,
        retained: bool,
    ) -> Result<(), PublishError> {
        let json = json.into();
        self.check_len(&json)?;
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        let mut slot = lock(&self.shared.status);
        slot.latest = Some((json, retained));
        slot.dirty = true;
        self.flush_locked(&mut slot);
        Ok(())
    }

    /// Publishes a rollout progress event on `devices/<id>/events` (QoS 1) with the
    /// configured message expiry, so a device that was offline does not deliver stale
    /// progress hours later. Dropped with `QueueFull` rather than waiting.
    pub fn publish_event(&self, json: impl Into<Bytes>) -> Result<(), PublishError> {
        let json = json.into();
        self.check_len(&json)?;
        let props = self.shared.event_expiry.map(|s| PublishProperties {
            message_expiry_interval: Some(s),
            ..Default::default()
        });
        let topic = self.shared.events_topic.clone();
        self.try_queue(&topic, QoS::AtLeastOnce, false, json, props)
    }

    /// Publishes telemetry on `devices/<id>/telemetry` (QoS 0: the next report supersedes
    /// a lost one). Dropped with `QueueFull` rather than waiting.
    pub fn publish_telemetry(&self, json: impl Into<Bytes>) -> Result<(), PublishError> {
        let json = json.into();
        self.check_len(&json)?;
        let topic = self.shared.telemetry_topic.clone();
        self.try_queue(&topic, QoS::AtMostOnce, false, json, None)
    }

    /// Ends the session cleanly: queues an MQTT DISCONNECT after what is already queued;
    /// the IO task ends once it is sent. The broker then does NOT publish the will, so
    /// publish a final status first. (Aborting the task instead drops the connection and
    /// the will is published.)
    pub fn disconnect(&self) -> Result<(), PublishError> {
        self.client.try_disconnect().map_err(|_| {
            if self.shared.closed.load(Ordering::Acquire) {
                PublishError::Closed
            } else {
                PublishError::QueueFull
            }
        })
    }

    /// Whether the IO task has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    fn flush_locked(&self, slot: &mut StatusSlot) {
        if !slot.dirty {
            return;
        }
        if let Some((json, retained)) = &slot.latest {
            let topic = self.shared.status_topic.clone();
            if self
                .try_queue(&topic, QoS::AtLeastOnce, *retained, json.clone(), None)
                .is_ok()
            {
                slot.dirty = false;
            }
        } else {
            slot.dirty = false;
        }
    }

    /// Called by the IO task after every event: a status that found the queue full goes
    /// through the same queue (so it is never overtaken by an older status).
    fn flush_status(&self) {
        let mut slot = lock(&self.shared.status);
        self.flush_locked(&mut slot);
    }

    fn status_overwritten(&self) {
        let mut slot = lock(&self.shared.status);
        slot.dirty = slot.latest.is_some();
        self.flush_locked(&mut slot);
    }
}

fn lock(m: &Mutex<StatusSlot>) -> std::sync::MutexGuard<'_, StatusSlot> {
    // the slot holds plain data: a panic elsewhere cannot leave it half-written
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the connection: validates `settings`, reads the TLS and password files, and
/// spawns the IO task on the current tokio runtime. It connects in the background;
/// watch the receiver for [`Inbound::Up`] / [`Inbound::Down`].
///
/// `offline_will` is the retained payload the broker puts on `devices/<id>/status` when
/// the connection is lost without a DISCONNECT (e.g. [`super::DEFAULT_OFFLINE_WILL`]).
///
/// The receiver is bounded ([`MqttSettings::inbound_queue`]): when it is full the IO task
/// waits, stops reading from the broker and, past the keep-alive, is disconnected; so
/// drain it. Dropping the receiver ends the task (the connection drops, the will fires).
pub fn spawn(
    settings: MqttSettings,
    offline_will: Vec<u8>,
) -> Result<(Publisher, mpsc::Receiver<Inbound>, JoinHandle<()>), MqttError> {
    let url = validate(&settings)?;
    let max_payload = settings.max_packet_bytes as usize;
    if offline_will.is_empty() || offline_will.len() > max_payload {
        // an empty retained payload would delete the status instead of saying "offline"
        return Err(MqttError::Setting {
            name: "offline_will",
            reason: format!("must be 1 to {max_payload} bytes"),
        });
    }
    let id = settings.device_id.clone();
    let mut opts = MqttOptions::new(id.clone(), url.host.clone(), url.port);
    // clean start false + session expiry: the broker may keep subscriptions and queued
    // QoS 1 commands across short outages (the not-present case is handled in `run`)
    opts.set_keep_alive(settings.keep_alive)
        .set_clean_start(false)
        .set_session_expiry_interval(Some(settings.session_expiry.as_secs() as u32))
        .set_max_packet_size(Some(settings.max_packet_bytes))
        .set_outgoing_inflight_upper_limit(settings.inflight)
        .set_last_will(LastWill::new(
            topics::status(&id),
            offline_will,
            QoS::AtLeastOnce,
            true,
            None,
        ));
    if url.tls {
        let ca = settings
            .ca_file
            .as_deref()
            .ok_or_else(|| MqttError::Setting {
                name: "ca_file",
                reason: "mqtts:// needs a CA file".into(),
            })?;
        let client = settings
            .client_cert
            .as_deref()
            .zip(settings.client_key.as_deref());
        let config = shared::broker::client_config(ca, client)?;
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    }
    if let Some(user) = &settings.username {
        let password = match &settings.password_file {
            Some(p) => read_password(p)?,
            None => String::new(),
        };
        opts.set_credentials(user.clone(), password);
    }

    let (client, eventloop) = AsyncClient::new(opts, settings.outbound_queue);
    let shared = Arc::new(Shared {
        status_topic: topics::status(&id),
        events_topic: topics::events(&id),
        telemetry_topic: topics::telemetry(&id),
        max_payload,
        event_expiry: settings
            .event_expiry
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
        status: Mutex::new(StatusSlot::default()),
        closed: AtomicBool::new(false),
    });
    let publisher = Publisher { client, shared };
    let (tx, rx) = mpsc::channel(settings.inbound_queue);
    let task = Task {
        eventloop,
        publisher: publisher.clone(),
        tx,
        backoff: Backoff::new(settings.backoff_min, settings.backoff_max),
        device_id: id,
        fleet: settings.fleet.clone(),
        url: settings.url.clone(),
    };
    let handle = tokio::spawn(task.run());
    Ok((publisher, rx, handle))
}

struct Task {
    eventloop: EventLoop,
    publisher: Publisher,
    tx: mpsc::Sender<Inbound>,
    backoff: Backoff,
    device_id: String,
    fleet: String,
    url: String,
}

impl Task {
    fn subscription(&self) -> Request {
        Request::Subscribe(Subscribe::new_many(
            [
                Filter::new(topics::cmd(&self.device_id), QoS::AtLeastOnce),
                Filter::new(topics::rollout(&self.fleet), QoS::AtLeastOnce),
            ],
            None,
        ))
    }

    async fn run(mut self) {
        let _closed = ClosedOnDrop(self.publisher.shared.clone());
        // seeded once from the thread RNG: the task's RNG must be Send
        let mut rng = StdRng::from_rng(&mut rand::rng());
        // whether the broker has acknowledged our subscriptions in the current session
        let mut subscribed = false;
        // Up waits for the SubAck when we subscribe: then "Up" means commands flow
        let mut up_after_suback: Option<bool> = None;
        loop {
            let inbound = match self.eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    self.backoff.reset();
                    if !ack.session_present {
                        subscribed = false;
                    }
                    if !subscribed {
                        // ahead of anything queued: commands must flow before we report
                        self.eventloop.pending.push_front(self.subscription());
                    }
                    tracing::info!(
                        url = %self.url,
                        session_present = ack.session_present,
                        resubscribe = !subscribed,
                        "MQTT connected"
                    );
                    self.publisher.status_overwritten();
                    let up = Inbound::Up {
                        session_present: ack.session_present,
                    };
                    if subscribed {
                        Some(up)
                    } else {
                        up_after_suback = Some(ack.session_present);
                        None
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let refused: Vec<_> = ack
                        .return_codes
                        .iter()
                        .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                        .collect();
                    if refused.is_empty() {
                        subscribed = true;
                    } else {
                        // an ACL problem: reconnecting would not fix it, so say it loudly
                        tracing::error!(codes = ?refused, "MQTT subscription refused by the broker");
                    }
                    // Up even when refused: the connection works and status must go out
                    up_after_suback
                        .take()
                        .map(|session_present| Inbound::Up { session_present })
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    inbound_from_publish(&p, &self.device_id, &self.fleet)
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    tracing::info!("MQTT disconnected on request");
                    return;
                }
                Ok(_) => None,
                Err(e) => {
                    up_after_suback = None;
                    let error = describe(&e);
                    let retry_in = self.backoff.next_delay(&mut rng);
                    tracing::warn!(
                        url = %self.url,
                        %error,
                        attempt = self.backoff.attempt(),
                        retry_in_ms = retry_in.as_millis() as u64,
                        "MQTT connection down"
                    );
                    if self
                        .tx
                        .send(Inbound::Down { error, retry_in })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(retry_in).await;
                    None
                }
            };
            if let Some(event) = inbound {
                if self.tx.send(event).await.is_err() {
                    tracing::info!("MQTT receiver dropped; closing the connection");
                    return;
                }
            }
            self.publisher.flush_status();
        }
    }
}

/// The command in a publish, if it is on one of our topics and not expired.
fn inbound_from_publish(p: &Publish, device_id: &str, fleet: &str) -> Option<Inbound> {
    let Ok(topic) = std::str::from_utf8(&p.topic) else {
        tracing::debug!("MQTT publish with a non-UTF-8 topic dropped");
        return None;
    };
    let Some(source) = topics::classify(topic, device_id, fleet) else {
        tracing::debug!(topic, "MQTT publish on a topic we do not serve dropped");
        return None;
    };
    let expiry = p
        .properties
        .as_ref()
        .and_then(|props| props.message_expiry_interval);
    if expiry == Some(0) {
        // the broker should not forward it; if it does, acting on it would be wrong
        tracing::debug!(topic, "expired MQTT publish dropped");
        return None;
    }
    Some(Inbound::Command {
        source,
        payload: p.payload.clone(),
        retained: p.retain,
        expires_in: expiry.map(|s| Duration::from_secs(s.into())),
    })
}

/// The I/O error under a connection error, wherever rumqttc wrapped it.
fn io_of(e: &ConnectionError) -> Option<&std::io::Error> {
    match e {
        ConnectionError::Io(io)
        | ConnectionError::MqttState(StateError::Io(io))
        | ConnectionError::MqttState(StateError::Deserialization(mqttbytes::Error::Io(io))) => {
            Some(io)
        }
        _ => None,
    }
}

/// A one-line cause. TLS failures start with "TLS:" wherever rumqttc put them: a refused
/// client certificate only surfaces as an I/O error on the first read after the handshake
/// (TLS 1.3), wrapped in a "deserialization" error.
fn describe(e: &ConnectionError) -> String {
    if let ConnectionError::ConnectionRefused(code) = e {
        return format!("broker refused the connection: {code:?}");
    }
    if let ConnectionError::Timeout(_) = e {
        return "timed out connecting to the broker".to_owned();
    }
    if let ConnectionError::Tls(t) = e {
        return format!("TLS: {t}");
    }
    if let Some(io) = io_of(e) {
        if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return format!("TLS: {r}");
        }
        return format!("I/O: {io}");
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::topics::Source;

    fn publish(topic: &str, expiry: Option<u32>) -> Publish {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, "x", None);
        p.properties = expiry.map(|s| PublishProperties {
            message_expiry_interval: Some(s),
            ..Default::default()
        });
        p
    }

    #[test]
    fn publishes_become_commands() {
        let Some(Inbound::Command {
            source,
            payload,
            expires_in,
            retained,
        }) = inbound_from_publish(&publish("devices/d/cmd", Some(30)), "d", "f")
        else {
            panic!("not a command")
        };
        assert_eq!(source, Source::Device);
        assert_eq!(&payload[..], b"x");
        assert_eq!(expires_in, Some(Duration::from_secs(30)));
        assert!(!retained);
        assert!(matches!(
            inbound_from_publish(&publish("fleet/f/rollout", None), "d", "f"),
            Some(Inbound::Command {
                source: Source::Fleet,
                expires_in: None,
                ..
            })
        ));
        assert_eq!(
            inbound_from_publish(&publish("devices/d/cmd", Some(0)), "d", "f"),
            None
        );
        assert_eq!(
            inbound_from_publish(&publish("devices/e/cmd", None), "d", "f"),
            None
        );
    }

    #[test]
    fn tls_errors_are_named() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        );
        let s = describe(&ConnectionError::MqttState(StateError::Deserialization(
            mqttbytes::Error::Io(io),
        )));
        assert!(s.starts_with("TLS: "), "{s}");
        assert!(s.contains("CertificateRequired"), "{s}");
        let plain = describe(&ConnectionError::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        )));
        assert!(!plain.contains("TLS"), "{plain}");
    }
}
