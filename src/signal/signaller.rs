//! The I/O shell around [`Signalling`]: what a node calls to signal its peers.
//!
//! A [`Signaller`] owns the node's [`Identity`], its [`Brokers`] and a [`Signalling`]
//! core. It reads the clock and draws the random bytes the core asks for; one task feeds
//! what the brokers deliver into the core and carries its outputs out: one-way messages
//! and requests to [`Signaller::recv`], responses to the [`Signaller::request`] waiting
//! for them, and the built-in record request ([`Signaller::fetch_record`]) answered from
//! [`Signaller::set_record`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{
    Arrivals, Brokers, BrokersStats, Config, Counters, Delivered, DeliveredRequest, Delivery,
    Error, MqttSettings, Payload, RequestId, Signalling, RANDOM_LEN,
};
use crate::identity::{unix_ms, Identity, NodeId, PeerRecord, PublicKey};

/// The payload of the built-in request for a node's current address record.
const RECORD_REQUEST: &[u8] = b"p2pipe/1/record?";

/// How many delivered messages wait for [`Signaller::recv`].
const INCOMING: usize = 256;

/// The settings of a [`Signaller`].
#[derive(Debug, Clone)]
pub struct SignallerConfig {
    /// The core's limits.
    pub core: Config,
    /// The MQTT transports' settings.
    pub mqtt: MqttSettings,
    /// How long [`Signaller::start`] waits for the first broker to subscribe (then for
    /// the others, as long again at most).
    pub subscribe_timeout: Duration,
}

impl Default for SignallerConfig {
    fn default() -> Self {
        SignallerConfig {
            core: Config::default(),
            mqtt: MqttSettings::default(),
            subscribe_timeout: Duration::from_secs(10),
        }
    }
}

/// A message delivered to this node, for [`Signaller::recv`].
#[derive(Debug)]
pub enum Incoming {
    /// A one-way message.
    Message {
        /// The sender's key, proven by the envelope.
        from: PublicKey,
        /// The payload.
        payload: Payload,
    },
    /// A request, to be answered with [`Signaller::respond`].
    Request(DeliveredRequest),
}

impl Incoming {
    /// The sender's key.
    pub fn from(&self) -> &PublicKey {
        match self {
            Incoming::Message { from, .. } => from,
            Incoming::Request(r) => &r.from,
        }
    }

    /// The sender's node id.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_key(self.from())
    }

    /// The payload.
    pub fn payload(&self) -> &Payload {
        match self {
            Incoming::Message { payload, .. } => payload,
            Incoming::Request(r) => &r.payload,
        }
    }
}

/// How many messages wait in a [`Watch`].
const WATCH_QUEUE: usize = 16;

/// The one-way messages of one sender, claimed by [`Signaller::watch`].
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<Payload>,
}

impl Watch {
    /// The next message; `None` once the signaller has stopped. Cancel safe.
    pub async fn recv(&mut self) -> Option<Payload> {
        self.rx.recv().await
    }
}

/// What a [`Signaller`] has counted: the core's deliveries and drops, and the brokers'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignallerCounters {
    /// The core's counters: delivered, and dropped per reason.
    pub core: Counters,
    /// The brokers' counters.
    pub brokers: BrokersStats,
}

/// What the receiving task and the callers share.
struct Shared {
    identity: Identity,
    brokers: Brokers,
    core: Mutex<Signalling>,
    waiters: Mutex<HashMap<RequestId, oneshot::Sender<Payload>>>,
    record: Mutex<Option<PeerRecord>>,
    /// One-way messages claimed by [`Signaller::watch`], per sender.
    watches: Mutex<Vec<(PublicKey, mpsc::Sender<Payload>)>>,
    /// Set by the receiving task when it ends: every transport's inbox has closed.
    ended: AtomicBool,
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Signalling> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watches(&self) -> MutexGuard<'_, Vec<(PublicKey, mpsc::Sender<Payload>)>> {
        self.watches.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives a one-way message from `from` to its watches; false if none is open.
    fn to_watches(&self, from: &PublicKey, payload: &Payload) -> bool {
        let mut given = false;
        for (key, tx) in self.watches().iter() {
            if key == from && !tx.is_closed() {
                given = true;
                if tx.try_send(payload.clone()).is_err() {
                    tracing::debug!("a signal watch is full: a message to it is lost");
                }
            }
        }
        given
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<RequestId, oneshot::Sender<Payload>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a sealed envelope to `to`'s topic through every broker.
    async fn publish(&self, to: &PublicKey, sealed: Bytes) -> Result<Delivery, Error> {
        let topic = NodeId::from_key(to).topic();
        self.brokers.publish(&topic, sealed).await
    }

    /// Ends the core's requests past their deadline, and their waits.
    fn expire(&self, now_ms: u64) {
        let expired = self.core().poll_timeouts(now_ms);
        let mut waiters = self.waiters();
        for id in expired {
            waiters.remove(&id);
        }
    }
}

/// Signalling for one node over several MQTT brokers (see the module docs).
pub struct Signaller {
    shared: Arc<Shared>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Signaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signaller")
            .field("node", &self.shared.identity.node_id())
            .field("brokers", &self.shared.brokers)
            .finish_non_exhaustive()
    }
}

/// The current time, unix ms.
fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Fresh random bytes for an envelope.
fn random() -> [u8; RANDOM_LEN] {
    let mut r = [0u8; RANDOM_LEN];
    getrandom::fill(&mut r).expect("the system random source");
    r
}

impl Signaller {
    /// Starts a transport per broker URL (`mqtt://HOST:PORT`), all subscribed to this
    /// node's topic ([`NodeId::topic`]), and the task that receives. Returns once one
    /// broker has subscribed and the others have too, or
    /// [`SignallerConfig::subscribe_timeout`] has passed again. Must be called within a
    /// tokio runtime. Cancel safety: dropping the future drops the started transports.
    ///
    /// # Errors
    ///
    /// A URL that cannot be used, or [`Error::NotSubscribed`] when no broker subscribed
    /// in time.
    pub async fn start<S: AsRef<str>>(
        identity: Identity,
        brokers: &[S],
        config: SignallerConfig,
    ) -> Result<Signaller, Error> {
        let topic = identity.node_id().topic();
        let (brokers, arrivals) = Brokers::mqtt(brokers, &topic, config.mqtt)?;
        let wait = config.subscribe_timeout;
        if tokio::time::timeout(wait, brokers.subscribed(1))
            .await
            .is_err()
        {
            brokers.stop().await;
            return Err(Error::NotSubscribed { topic, after: wait });
        }
        let all = brokers.transports().len();
        let _ = tokio::time::timeout(wait, brokers.subscribed(all)).await;
        let core = Signalling::for_identity(
            &identity,
            config.core,
            u64::from_le_bytes(random()[..8].try_into().expect("8 bytes")),
        );
        let shared = Arc::new(Shared {
            identity,
            brokers,
            core: Mutex::new(core),
            waiters: Mutex::default(),
            record: Mutex::default(),
            watches: Mutex::default(),
            ended: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(INCOMING);
        let task = tokio::spawn(receive(shared.clone(), arrivals, tx));
        Ok(Signaller {
            shared,
            incoming: tokio::sync::Mutex::new(rx),
            task: Mutex::new(Some(task)),
        })
    }

    /// This node's identity.
    pub fn identity(&self) -> &Identity {
        &self.shared.identity
    }

    /// Seals `payload` to `to` and publishes it through every broker; succeeds when one
    /// accepted it. Cancel safety: see [`Brokers::publish`].
    ///
    /// # Errors
    ///
    /// A payload too large to seal, or no broker accepted it.
    pub async fn send(&self, to: &PublicKey, payload: &[u8]) -> Result<Delivery, Error> {
        let sealed = self.shared.core().send(to, payload, now_ms(), random())?;
        self.shared.publish(to, sealed).await
    }

    /// The next one-way message or request delivered to this node; `None` once stopped.
    /// Cancel safe.
    pub async fn recv(&self) -> Option<Incoming> {
        self.incoming.lock().await.recv().await
    }

    /// Claims the one-way messages `from` sends while the returned [`Watch`] lives:
    /// they reach it, and every other watch on `from`, instead of [`Signaller::recv`].
    /// A protocol that waits for a peer's next message (the punch rendezvous waits for
    /// its ready) watches before it asks, so that a node reading `recv` elsewhere does
    /// not take the message first. Up to 16 messages wait in a watch; more are dropped.
    pub fn watch(&self, from: &PublicKey) -> Watch {
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let mut watches = self.shared.watches();
        watches.retain(|(_, tx)| !tx.is_closed());
        watches.push((*from, tx));
        Watch { rx }
    }

    /// Sends a request to `to` and waits for its response, at most `timeout`. Cancel
    /// safety: dropping the future abandons the request; its response will be dropped.
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`] naming the peer, or as [`Signaller::send`].
    pub async fn request(
        &self,
        to: &PublicKey,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Payload, Error> {
        let now = now_ms();
        self.shared.expire(now);
        let (tx, rx) = oneshot::channel();
        let (id, sealed) = {
            let mut core = self.shared.core();
            let (id, sealed) = core.request(to, payload, now, timeout, random())?;
            self.shared.waiters().insert(id, tx);
            (id, sealed)
        };
        let waited = async {
            self.shared.publish(to, sealed).await?;
            rx.await.map_err(|_| Error::Closed {
                node: self.shared.identity.node_id(),
            })
        };
        let result = tokio::time::timeout(timeout, waited).await;
        self.shared.waiters().remove(&id);
        self.shared.expire(now_ms());
        result.unwrap_or(Err(Error::TimedOut {
            peer: NodeId::from_key(to),
            after: timeout,
        }))
    }

    /// Answers `request` with `payload`. Cancel safety: see [`Brokers::publish`].
    ///
    /// # Errors
    ///
    /// As [`Signaller::send`].
    pub async fn respond(
        &self,
        request: &DeliveredRequest,
        payload: &[u8],
    ) -> Result<Delivery, Error> {
        let sealed = self
            .shared
            .core()
            .respond(request, payload, now_ms(), random())?;
        self.shared.publish(&request.from, sealed).await
    }

    /// The record this node gives to [`Signaller::fetch_record`] from now on.
    pub fn set_record(&self, record: PeerRecord) {
        *self.shared.record.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }

    /// Asks `peer` for its current address record and returns it verified: it parses,
    /// its signature holds, it has not expired and it is `peer`'s. Cancel safe as
    /// [`Signaller::request`].
    ///
    /// # Errors
    ///
    /// [`Error::TimedOut`], [`Error::NoRecord`] or [`Error::BadRecord`], naming the peer.
    pub async fn fetch_record(
        &self,
        peer: &PublicKey,
        timeout: Duration,
    ) -> Result<PeerRecord, Error> {
        let answer = self.request(peer, RECORD_REQUEST, timeout).await?;
        verify_record(peer, &answer, now_ms())
    }

    /// The core's counters and the brokers'.
    pub fn counters(&self) -> SignallerCounters {
        SignallerCounters {
            core: self.shared.core().counters(),
            brokers: self.shared.brokers.stats(),
        }
    }

    /// Disconnects from every broker and ends the receiving task; [`Signaller::recv`]
    /// then returns `None` once what was delivered has been read. Cancel safe: the
    /// transports stop either way.
    pub async fn stop(&self) {
        self.shared.brokers.stop().await;
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut task) = task {
            // The task ends when the transports' inboxes close; abort is a safety net.
            if tokio::time::timeout(Duration::from_secs(1), &mut task)
                .await
                .is_err()
            {
                tracing::warn!("signal receiving task did not end after stop");
                task.abort();
            }
        }
        self.shared.waiters().clear();
        self.shared.watches().clear();
    }

    /// Whether the receiving task has ended on its own, which it does once every
    /// transport's task has ended (after [`Signaller::stop`]).
    pub fn is_finished(&self) -> bool {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.ended.load(Ordering::Acquire)
            && task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for Signaller {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

/// The record in `answer`, if it is `peer`'s and valid at `now_ms`.
fn verify_record(peer: &PublicKey, answer: &[u8], now_ms: u64) -> Result<PeerRecord, Error> {
    let peer_id = NodeId::from_key(peer);
    if answer.is_empty() {
        return Err(Error::NoRecord { peer: peer_id });
    }
    let bad = |reason: String| Error::BadRecord {
        peer: peer_id,
        reason,
    };
    let text = std::str::from_utf8(answer).map_err(|_| bad("not text".into()))?;
    let record = PeerRecord::parse(text, now_ms).map_err(|e| bad(e.to_string()))?;
    if record.node_id() != peer_id {
        return Err(bad(format!("it is the record of {}", record.node_id())));
    }
    Ok(record)
}

/// Feeds what the brokers deliver into the core until every transport has stopped.
async fn receive(shared: Arc<Shared>, mut arrivals: Arrivals, out: mpsc::Sender<Incoming>) {
    while let Some(arrival) = arrivals.recv().await {
        let now = now_ms();
        shared.expire(now);
        let delivered = shared.core().on_message(&arrival.payload, now);
        match delivered {
            Ok(delivered) => dispatch(&shared, delivered, &out).await,
            Err(dropped) => {
                tracing::debug!(reason = %dropped, len = arrival.payload.len(), "signal dropped");
            }
        }
    }
    shared.ended.store(true, Ordering::Release);
}

/// Carries one delivered message where it goes.
async fn dispatch(shared: &Shared, delivered: Delivered, out: &mpsc::Sender<Incoming>) {
    let incoming = match delivered {
        Delivered::Response {
            request_id,
            payload,
            ..
        } => {
            if let Some(waiter) = shared.waiters().remove(&request_id) {
                let _ = waiter.send(payload);
            }
            return;
        }
        Delivered::Request(request) if &*request.payload == RECORD_REQUEST => {
            answer_record(shared, &request).await;
            return;
        }
        Delivered::Request(request) => Incoming::Request(request),
        Delivered::Message { from, payload } => {
            if shared.to_watches(&from, &payload) {
                return;
            }
            Incoming::Message { from, payload }
        }
    };
    if out.try_send(incoming).is_err() {
        tracing::debug!("signal inbox full or closed: a delivered message is lost");
    }
}

/// Answers the built-in record request: the record's text, or nothing if none is set.
async fn answer_record(shared: &Shared, request: &DeliveredRequest) {
    let text = (shared.record.lock().unwrap_or_else(|e| e.into_inner()))
        .as_ref()
        .map(PeerRecord::to_text)
        .unwrap_or_default();
    let sealed = shared
        .core()
        .respond(request, text.as_bytes(), now_ms(), random());
    let sent = match sealed {
        Ok(sealed) => shared.publish(&request.from, sealed).await.map(drop),
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "record request not answered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_accepted_only_from_the_node_it_belongs_to() {
        let now = 1_700_000_000_000;
        let alice = Identity::from_seed([1; 32]);
        let bob = Identity::from_seed([2; 32]);
        let record = PeerRecord::builder()
            .broker("mqtt://127.0.0.1:1883")
            .sign(&alice, now, Duration::from_secs(600))
            .expect("a record");
        let text = record.to_text();
        let ok = verify_record(&alice.public(), text.as_bytes(), now).expect("alice's");
        assert_eq!(ok.node_id(), alice.node_id());
        let err = verify_record(&bob.public(), text.as_bytes(), now).unwrap_err();
        assert!(matches!(err, Error::BadRecord { .. }), "{err}");
        assert!(err.to_string().contains(&bob.node_id().to_string()));
        let none = verify_record(&bob.public(), b"", now).unwrap_err();
        assert!(matches!(none, Error::NoRecord { .. }), "{none}");
    }
}
