//! [`MqttTransport`]: signalling through one MQTT broker, on `rumqttc`.
//!
//! One task drives the connection: it connects, subscribes to the node's topic with
//! QoS 1, delivers what arrives there to the [`Inbox`], matches the broker's PUBACKs to
//! publishes, and when the connection fails reconnects with exponential backoff and
//! subscribes again. Publishes are refused at once while the transport is not connected,
//! so a broker that is down never holds a caller up. Plain TCP only: TLS brokers are not
//! supported yet. See docs/p2p.md, "Brokers".

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet,
    Publish, QoS, SubscribeReasonCode,
};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::transport::{check_size, check_topic, Counters, MAX_TOPIC};
use super::{Error, Inbox, Transport, TransportStats, MAX_MESSAGE};

/// The bytes a QoS 1 PUBLISH adds to its payload and topic in the packet's remaining
/// length: the topic's 2-byte length and the 2-byte packet id.
const PUBLISH_OVERHEAD: usize = 4;

/// Timeouts and reconnect delays of an [`MqttTransport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqttSettings {
    /// The MQTT keep-alive, in whole seconds, at least 1 (default 5 s): a dead broker is
    /// noticed within about one and a half of it.
    pub keep_alive: Duration,
    /// The limit on TCP connect plus CONNACK (default 5 s).
    pub connect_timeout: Duration,
    /// The limit on a SUBACK after subscribing (default 5 s), checked at each event of
    /// the connection, so at least once a keep-alive.
    pub subscribe_timeout: Duration,
    /// The limit on a PUBACK after publishing (default 5 s).
    pub publish_timeout: Duration,
    /// The first reconnect delay (default 250 ms); it doubles after each failure.
    pub backoff_initial: Duration,
    /// The longest reconnect delay (default 30 s).
    pub backoff_max: Duration,
    /// The inbox is shared; this bounds the publishes queued inside the transport
    /// (default 64). Beyond it a publish fails as busy.
    pub queue: usize,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            keep_alive: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            subscribe_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            queue: 64,
        }
    }
}

/// A broker URL, `mqtt://HOST[:PORT]` (port 1883 by default; an IPv6 address in
/// brackets), split for `rumqttc`: the host keeps its brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    host: String,
    port: u16,
}

impl BrokerUrl {
    /// Parses `url`. `tcp://` is taken as `mqtt://`; TLS and websocket schemes are
    /// refused (not supported yet).
    pub fn parse(url: &str) -> Result<BrokerUrl, Error> {
        let bad = |reason| Error::Url {
            url: url.chars().take(256).collect(),
            reason,
        };
        let rest = match url.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => rest,
            Some(("mqtts" | "ssl" | "ws" | "wss", _)) => {
                return Err(bad("tls and websocket brokers are not supported yet"))
            }
            _ => return Err(bad("expected mqtt://HOST:PORT")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        // The lenient forms become the one checked by identity::split_broker_url.
        let has_port = match rest.rfind(']') {
            Some(i) => rest[i..].contains(':'),
            None => rest.contains(':'),
        };
        let canonical = if has_port {
            format!("mqtt://{rest}")
        } else {
            format!("mqtt://{rest}:1883")
        };
        let (host, port) = crate::identity::split_broker_url(&canonical).map_err(bad)?;
        Ok(BrokerUrl {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mqtt://{}:{}", self.host, self.port)
    }
}

/// Signalling through one MQTT broker (see the module docs).
///
/// ```no_run
/// use p2pipe::signal::{Inbox, MqttTransport, Transport};
/// # async fn demo() -> Result<(), p2pipe::signal::Error> {
/// let (inbox, mut arrivals) = Inbox::new(64);
/// let me = MqttTransport::start("mqtt://127.0.0.1:1883", "p2pipe/1/me", inbox, Default::default())?;
/// me.subscribed().await;
/// me.publish("p2pipe/1/someone", "hello".into()).await?;
/// if let Some(a) = arrivals.recv().await {
///     println!("{} bytes", a.payload.len());
/// }
/// me.stop().await;
/// # Ok(()) }
/// ```
pub struct MqttTransport {
    name: String,
    client: AsyncClient,
    shared: Arc<Shared>,
    settings: MqttSettings,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for MqttTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttTransport")
            .field("broker", &self.name)
            .field("stats", &self.stats())
            .finish()
    }
}

/// What the transport and its task share.
struct Shared {
    counters: Counters,
    acks: Mutex<Acks>,
    /// Whether subscribed now, and how many times it has been in all.
    subscribed: watch::Sender<(bool, u64)>,
    stop: watch::Sender<bool>,
}

/// Publishes waiting for their PUBACK. `rumqttc` gives a publish its packet id when its
/// event loop sends it, in the order publishes were queued, so a waiter is queued with
/// its publish (under this lock) and moved to `sent` at the event that names its id.
#[derive(Default)]
struct Acks {
    /// Publishes may be queued (connected and subscribed).
    open: bool,
    queued: VecDeque<oneshot::Sender<()>>,
    sent: HashMap<u16, oneshot::Sender<()>>,
}

impl Shared {
    fn acks(&self) -> MutexGuard<'_, Acks> {
        self.acks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MqttTransport {
    /// Starts a transport to the broker at `url` that receives on `topic` (this node's
    /// `p2pipe/1/<node id>`) into `inbox`. Returns at once; the task connects in the
    /// background ([`Transport::subscribed`] resolves when it receives). The client id is
    /// random, so the broker learns no more than the topic. Must be called within a
    /// tokio runtime, which the transport's task runs on.
    pub fn start(
        url: &str,
        topic: &str,
        inbox: Inbox,
        settings: MqttSettings,
    ) -> Result<MqttTransport, Error> {
        let broker = BrokerUrl::parse(url)?;
        check_topic(topic)?;
        let name = broker.to_string();
        let (client, eventloop) =
            AsyncClient::new(options(&broker, topic, &settings), settings.queue);
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            acks: Mutex::default(),
            subscribed: watch::Sender::new((false, 0)),
            stop: watch::Sender::new(false),
        });
        let driver = Driver {
            name: name.clone(),
            topic: topic.to_owned(),
            eventloop,
            client: client.clone(),
            inbox,
            shared: shared.clone(),
            settings,
            online: false,
            ever_connected: false,
            subscribing: None,
        };
        let task = tokio::spawn(driver.run());
        Ok(MqttTransport {
            name,
            client,
            shared,
            settings,
            task: tokio::sync::Mutex::new(Some(task)),
        })
    }

    /// Resolves once the transport has been subscribed `n` times in all: 1 after the
    /// first connection, 2 after the first reconnection, and so on. Cancel safe.
    pub async fn subscribed_times(&self, n: u64) {
        let mut rx = self.shared.subscribed.subscribe();
        let _ = rx.wait_for(|&(_, times)| times >= n).await;
    }

    /// Whether the transport's task has ended (after [`Transport::stop`]).
    pub fn is_finished(&self) -> bool {
        self.task
            .try_lock()
            .is_ok_and(|t| t.as_ref().is_none_or(JoinHandle::is_finished))
    }

    async fn publish_inner(&self, topic: &str, payload: Bytes) -> Result<(), Error> {
        check_topic(topic)?;
        check_size(payload.len())?;
        let broker = || self.name.clone();
        let acked = {
            let mut acks = self.shared.acks();
            if *self.shared.stop.borrow() {
                return Err(Error::Stopped { broker: broker() });
            }
            if !acks.open {
                return Err(Error::NotConnected { broker: broker() });
            }
            self.client
                .try_publish(topic, QoS::AtLeastOnce, false, Vec::from(payload))
                .map_err(|_| Error::Busy { broker: broker() })?;
            let (tx, rx) = oneshot::channel();
            acks.queued.push_back(tx);
            rx
        };
        let after = self.settings.publish_timeout;
        match tokio::time::timeout(after, acked).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::ConnectionLost { broker: broker() }),
            Err(_) => Err(Error::Timeout {
                broker: broker(),
                after,
            }),
        }
    }

    async fn stop_inner(&self) {
        self.shared.stop.send_replace(true);
        let _ = self.client.try_disconnect();
        let mut task = self.task.lock().await;
        let Some(handle) = task.as_mut() else { return };
        let limit = self.settings.connect_timeout + Duration::from_secs(1);
        if tokio::time::timeout(limit, &mut *handle).await.is_err() {
            tracing::warn!(broker = %self.name, "mqtt transport did not stop in time; aborted");
            handle.abort();
            let _ = handle.await;
        }
    }
}

impl Transport for MqttTransport {
    fn name(&self) -> &str {
        &self.name
    }

    fn publish<'a>(&'a self, topic: &'a str, payload: Bytes) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            // `published` is counted by the task, at the PUBACK.
            let r = self.publish_inner(topic, payload).await;
            if r.is_err() {
                Counters::bump(&self.shared.counters.publish_failed);
            }
            r
        })
    }

    fn subscribed(&self) -> BoxFuture<'_, ()> {
        let mut rx = self.shared.subscribed.subscribe();
        Box::pin(async move {
            // The sender lives in `shared`, as long as `self`.
            let _ = rx.wait_for(|&(now, _)| now).await;
        })
    }

    fn stats(&self) -> TransportStats {
        self.shared.counters.snapshot()
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.stop_inner())
    }
}

impl Drop for MqttTransport {
    /// Tells the task to disconnect and end; it does so on its own.
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
        let _ = self.client.try_disconnect();
    }
}

/// The `rumqttc` options: random client id, clean session, keep-alive, packet limits.
fn options(broker: &BrokerUrl, topic: &str, s: &MqttSettings) -> MqttOptions {
    let mut o = MqttOptions::new(random_client_id(), broker.host.clone(), broker.port);
    o.set_keep_alive(Duration::from_secs(s.keep_alive.as_secs().max(1)))
        .set_clean_session(true)
        .set_request_channel_capacity(s.queue.max(1))
        // A PUBLISH on our topic with more than MAX_MESSAGE bytes of payload is refused
        // by rumqttc from its fixed header, before the payload is read.
        .set_max_packet_size(
            MAX_MESSAGE + PUBLISH_OVERHEAD + topic.len(),
            MAX_MESSAGE + PUBLISH_OVERHEAD + MAX_TOPIC,
        );
    o
}

/// `p2pipe-` and 16 random hex digits: nothing about the node.
fn random_client_id() -> String {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).expect("the system random source");
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("p2pipe-{hex}")
}

/// How one connection ended.
enum End {
    Lost,
    Stopped,
}

/// The task that owns the `rumqttc` event loop.
struct Driver {
    name: String,
    topic: String,
    eventloop: EventLoop,
    client: AsyncClient,
    inbox: Inbox,
    shared: Arc<Shared>,
    settings: MqttSettings,
    /// Between a CONNACK and the connection's end.
    online: bool,
    ever_connected: bool,
    /// When the SUBSCRIBE went out, until its SUBACK.
    subscribing: Option<Instant>,
}

impl Driver {
    async fn run(mut self) {
        let mut net = NetworkOptions::new();
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(self.settings.connect_timeout.as_secs().max(1));
        self.eventloop.set_network_options(net);
        let mut backoff = Backoff::new(self.settings.backoff_initial, self.settings.backoff_max);
        let mut stop = self.shared.stop.subscribe();
        loop {
            let end = self.connection(&mut backoff).await;
            self.close();
            if matches!(end, End::Stopped) || *stop.borrow() {
                break;
            }
            let delay = backoff.next_delay();
            tracing::debug!(broker = %self.name, ?delay, "mqtt reconnecting after a delay");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        tracing::debug!(broker = %self.name, "mqtt transport stopped");
    }

    /// Polls one connection (connect, subscribe, traffic) until it ends.
    async fn connection(&mut self, backoff: &mut Backoff) -> End {
        let mut stop = self.shared.stop.subscribe();
        let mut stop_by = None;
        loop {
            if self.online && stop_by.is_none() && *stop.borrow() {
                stop_by = Some(tokio::time::Instant::now() + self.settings.connect_timeout);
            }
            let event = if let (true, Some(by)) = (self.online, stop_by) {
                // Stopping: the DISCONNECT is queued; give it a bounded time.
                match tokio::time::timeout_at(by, self.eventloop.poll()).await {
                    Ok(event) => event,
                    Err(_) => return End::Stopped,
                }
            } else if self.online {
                // Not cancelled while connected: a poll may be writing. Stopping goes
                // through the DISCONNECT request instead.
                self.eventloop.poll().await
            } else {
                tokio::select! {
                    event = self.eventloop.poll() => event,
                    _ = stop.wait_for(|s| *s) => return End::Stopped,
                }
            };
            let step = match event {
                Ok(event) => self.on_event(event, backoff),
                Err(e) => Some(self.on_error(&e)),
            };
            if let Some(end) = step {
                return end;
            }
            if self
                .subscribing
                .is_some_and(|t| t.elapsed() > self.settings.subscribe_timeout)
            {
                tracing::warn!(broker = %self.name, "mqtt subscription not acknowledged in time");
                return End::Lost;
            }
        }
    }

    /// Handles one event; `Some` when the connection ends.
    fn on_event(&mut self, event: Event, backoff: &mut Backoff) -> Option<End> {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => self.on_connected(backoff),
            Event::Incoming(Packet::SubAck(ack)) => {
                let ok = ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                if !ok {
                    tracing::warn!(broker = %self.name, "mqtt broker refused the subscription");
                    return Some(End::Lost);
                }
                self.subscribing = None;
                self.shared.acks().open = true;
                self.shared
                    .counters
                    .connected
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.shared
                    .subscribed
                    .send_modify(|(now, times)| (*now, *times) = (true, *times + 1));
                tracing::debug!(broker = %self.name, "mqtt subscribed");
            }
            Event::Incoming(Packet::Publish(p)) => self.on_publish(p),
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(tx) = self.shared.acks().sent.remove(&ack.pkid) {
                    Counters::bump(&self.shared.counters.published);
                    let _ = tx.send(());
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let mut acks = self.shared.acks();
                if let Some(tx) = acks.queued.pop_front() {
                    acks.sent.insert(pkid, tx);
                }
            }
            Event::Outgoing(Outgoing::Disconnect) => return Some(End::Stopped),
            _ => {}
        }
        None
    }

    fn on_connected(&mut self, backoff: &mut Backoff) {
        self.online = true;
        backoff.reset();
        if self.ever_connected {
            Counters::bump(&self.shared.counters.reconnects);
            tracing::info!(broker = %self.name, "mqtt reconnected");
        }
        self.ever_connected = true;
        self.subscribing = Some(Instant::now());
        // The queue is empty after a (re)connect: nothing is queued while not open.
        if self
            .client
            .try_subscribe(self.topic.as_str(), QoS::AtLeastOnce)
            .is_err()
        {
            tracing::warn!(broker = %self.name, "mqtt subscribe could not be queued");
        }
    }

    /// An arrival: delivered if it is on our topic and within the size bound.
    fn on_publish(&mut self, p: Publish) {
        let c = &self.shared.counters;
        let len = p.payload.len();
        if p.topic != self.topic || len > MAX_MESSAGE {
            Counters::bump(&c.dropped);
            tracing::debug!(broker = %self.name, len, "mqtt publish on another topic, or oversized, dropped");
        } else if self.inbox.deliver(p.payload) {
            Counters::bump(&c.received);
        } else {
            Counters::bump(&c.dropped);
            tracing::debug!(broker = %self.name, len, "signal inbox full or closed, arrival dropped");
        }
    }

    /// A failed poll: the connection (or the attempt) is over. A packet the broker sent
    /// that rumqttc refused (oversized, malformed) counts as a dropped arrival.
    fn on_error(&mut self, e: &ConnectionError) -> End {
        use rumqttc::StateError;
        let refused_packet = matches!(
            e,
            ConnectionError::MqttState(StateError::Deserialization(_))
        );
        if refused_packet {
            Counters::bump(&self.shared.counters.dropped);
        }
        // Never the error's Debug form: `NotConnAck` would carry a packet with a payload.
        let why = match e {
            ConnectionError::NotConnAck(_) => "the broker did not answer with a connack".to_owned(),
            e => e.to_string(),
        };
        if self.online {
            tracing::warn!(broker = %self.name, error = %why, "mqtt connection lost");
        } else if matches!(e, ConnectionError::ConnectionRefused(_)) {
            // Not a broker that is down: one that will not have us (e.g. it wants a login).
            tracing::warn!(broker = %self.name, error = %why, "mqtt broker refused the connection");
        } else {
            tracing::debug!(broker = %self.name, error = %why, "mqtt connect failed");
        }
        End::Lost
    }

    /// After a connection ends: deliver what it had read before failing, fail the
    /// waiting publishes and close the queue.
    fn close(&mut self) {
        // rumqttc reads packets in batches and buffers their events; after an error it
        // would hand the rest out only after the next CONNACK, where a stale PUBACK or
        // packet id could be taken for one of the new connection.
        for event in std::mem::take(&mut self.eventloop.state.events) {
            if let Event::Incoming(Packet::Publish(p)) = event {
                self.on_publish(p);
            }
        }
        let mut acks = self.shared.acks();
        // Anything still queued inside rumqttc is dropped at the next CONNACK (a clean
        // session), so no waiter can be matched to an older publish.
        self.eventloop.clean();
        acks.open = false;
        acks.queued.clear();
        acks.sent.clear();
        drop(acks);
        self.online = false;
        self.subscribing = None;
        self.shared
            .counters
            .connected
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.shared.subscribed.send_modify(|(now, _)| *now = false);
    }
}

/// Reconnect delays: doubling from `initial` to `max`, each drawn at random from its
/// upper half so that many nodes that lost one broker do not come back in step.
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(self.max);
        let mut r = [0u8; 4];
        let _ = getrandom::fill(&mut r);
        let frac = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
        base.mul_f64(0.5 + frac / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_default_port_and_bracketed_ipv6() {
        let u = BrokerUrl::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!(u.to_string(), "mqtt://127.0.0.1:1884");
        assert_eq!(
            BrokerUrl::parse("mqtt://broker.example/").unwrap().port,
            1883
        );
        let v6 = BrokerUrl::parse("tcp://[::1]:2000").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("[::1]", 2000));
    }

    #[test]
    fn broker_urls_that_cannot_be_used_are_refused_with_a_reason() {
        for (url, why) in [
            ("mqtts://b:8883", "not supported yet"),
            ("http://b", "expected mqtt://"),
            ("mqtt://::1:1883", "brackets"),
            ("mqtt://b:0", "bad port"),
            ("mqtt://b:99999", "bad port"),
            ("mqtt://:1883", "no host"),
            ("mqtt://[::1", "unclosed"),
            ("mqtt://user@b", "no host"),
        ] {
            let e = BrokerUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(url), "{url}: {e}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_limit_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(1));
        let d: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        let bases = [250, 500, 1000, 1000, 1000].map(Duration::from_millis);
        for (d, base) in d.iter().zip(bases) {
            assert!(
                *d >= base / 2 && *d <= base,
                "{d:?} not within half of {base:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(250));
    }

    #[test]
    fn client_ids_are_random_and_say_nothing_of_the_node() {
        let (a, b) = (random_client_id(), random_client_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), "p2pipe-".len() + 16);
    }
}
