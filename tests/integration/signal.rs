//! Signalling transports against a real mosquitto (see `mosquitto.rs`): one broker and
//! two, brokers killed and restarted, a broker that sends garbage, what a plain MQTT
//! subscriber sees, and stopping.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use p2pipe::identity::{self, Identity, NodeId, PeerRecord};
use p2pipe::signal::{
    self, Brokers, Config, Inbox, Incoming, MqttSettings, MqttTransport, Outcome, Signaller,
    SignallerConfig, SignallerCounters, Signalling, Transport, MAX_MESSAGE, MAX_PAYLOAD,
    RANDOM_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::mosquitto::{Mosquitto, PlainClient};
use crate::support::{loopbacks, within, within_for, V4};

const ALICE: &str = "p2pipe/1/alice";
const BOB: &str = "p2pipe/1/bob";

/// Quick reconnects, so that tests that break a broker do not wait for long.
fn quick() -> MqttSettings {
    MqttSettings {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        ..MqttSettings::default()
    }
}

/// A transport on `broker` receiving on `topic`, subscribed, and its arrivals.
async fn node(
    broker: &Mosquitto,
    topic: &str,
) -> (
    MqttTransport,
    tokio::sync::mpsc::Receiver<p2pipe::signal::Arrival>,
) {
    let (inbox, rx) = Inbox::new(64);
    let t = MqttTransport::start(&broker.url(), topic, inbox, quick()).expect("start");
    within(t.subscribed()).await;
    (t, rx)
}

/// What a plain MQTT client subscribed to `topic` on `broker` sees while `send` runs:
/// the bytes a broker operator, or anyone allowed to subscribe, gets to read.
pub async fn plain_subscriber_sees(
    broker: &Mosquitto,
    topic: &str,
    send: impl std::future::Future<Output = ()>,
) -> Bytes {
    let mut plain = PlainClient::connect(broker, Some(topic)).await;
    send.await;
    plain.next().await
}

#[tokio::test]
async fn two_transports_exchange_messages_through_one_broker_over_ipv4_and_ipv6() {
    const TEST: &str = "signal::two_transports_exchange_messages_through_one_broker";
    for ip in loopbacks(TEST) {
        let Some(broker) = Mosquitto::start(TEST, ip).await else {
            return;
        };
        let (alice, mut to_alice) = node(&broker, ALICE).await;
        let (bob, mut to_bob) = node(&broker, BOB).await;
        for i in 0..5 {
            let m = Bytes::from(format!("to bob {i}"));
            within(alice.publish(BOB, m)).await.expect("publish");
        }
        for i in 0..5 {
            let a = within(to_bob.recv()).await.expect("an arrival");
            assert_eq!(a.payload, format!("to bob {i}").as_bytes(), "over {ip}");
        }
        within(bob.publish(ALICE, Bytes::from_static(b"to alice")))
            .await
            .expect("publish");
        assert_eq!(within(to_alice.recv()).await.unwrap().payload, "to alice");

        // The size bound: MAX_MESSAGE goes through, one byte more is refused at once.
        let largest = Bytes::from(vec![7u8; MAX_MESSAGE]);
        within(alice.publish(BOB, largest.clone()))
            .await
            .expect("publish");
        assert_eq!(within(to_bob.recv()).await.unwrap().payload, largest);
        let over = within(alice.publish(BOB, vec![7u8; MAX_MESSAGE + 1].into())).await;
        assert!(
            matches!(over, Err(signal::Error::TooLarge { .. })),
            "{over:?}"
        );

        let (a, b) = (alice.stats(), bob.stats());
        assert_eq!((a.published, a.publish_failed, a.received), (6, 1, 1));
        assert_eq!((b.published, b.received, b.dropped), (1, 6, 0));
        assert!(a.connected && b.connected);
        within(alice.stop()).await;
        within(bob.stop()).await;
    }
}

#[tokio::test]
async fn with_two_brokers_every_message_arrives_once_even_when_one_is_killed_midway() {
    const TEST: &str = "signal::with_two_brokers_every_message_arrives_once";
    let Some(mut first) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let Some(second) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let urls = [first.url(), second.url()];
    let (alice, _to_alice) = Brokers::mqtt(&urls, ALICE, quick()).expect("alice");
    let (bob, mut to_bob) = Brokers::mqtt(&urls, BOB, quick()).expect("bob");
    within(alice.subscribed(2)).await;
    within(bob.subscribed(2)).await;

    let mut delivered = HashSet::new();
    for round in ["before", "after"] {
        if round == "after" {
            first.kill();
        }
        for i in 0..10 {
            let m = Bytes::from(format!("{round} {i}"));
            let d = within(alice.publish(BOB, m)).await.expect("published");
            if round == "before" {
                let failed = d
                    .outcomes
                    .iter()
                    .any(|(_, o)| matches!(o, Outcome::Failed(_)));
                assert!(!failed, "both brokers are up: {d}");
            } else {
                assert!(matches!(d.outcomes[1].1, Outcome::Accepted), "{d}");
            }
        }
        for _ in 0..10 {
            let a = within(to_bob.recv()).await.expect("an arrival");
            assert!(delivered.insert(a.payload.clone()), "{:?} twice", a.payload);
        }
    }
    // Once bob's transports have stopped, whatever is left is the second copy of a
    // message already delivered: none of it may come out.
    within(bob.stop()).await;
    if let Some(a) = within(to_bob.recv()).await {
        panic!("{:?} was delivered twice", a.payload);
    }
    assert_eq!(delivered.len(), 20);
    let s = bob.stats();
    assert_eq!(s.total.received, 20 + s.duplicates, "{s:?}");
    let a = alice.stats();
    // Every publish went through the second broker; a PUBACK that came after the call
    // returned (another broker had accepted) is counted all the same.
    assert_eq!(a.brokers[1].transport.published, 20, "{a:?}");
    assert!(!a.brokers[0].transport.connected, "{a:?}");
    within(alice.stop()).await;
}

#[tokio::test]
async fn a_broker_restarted_on_the_same_port_is_reconnected_and_the_subscription_works_again() {
    const TEST: &str = "signal::a_broker_restarted_on_the_same_port_is_reconnected";
    let Some(mut broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let (alice, _) = node(&broker, ALICE).await;
    let (bob, mut to_bob) = node(&broker, BOB).await;
    within(alice.publish(BOB, Bytes::from_static(b"before")))
        .await
        .unwrap();
    assert_eq!(within(to_bob.recv()).await.unwrap().payload, "before");

    broker.kill();
    broker.restart().await;
    within(bob.subscribed_times(2)).await;
    within(alice.subscribed_times(2)).await;
    assert_eq!(bob.stats().reconnects, 1);
    assert_eq!(alice.stats().reconnects, 1);

    within(alice.publish(BOB, Bytes::from_static(b"after")))
        .await
        .unwrap();
    assert_eq!(within(to_bob.recv()).await.unwrap().payload, "after");
    within(alice.stop()).await;
    within(bob.stop()).await;
}

#[tokio::test]
async fn garbage_and_oversized_publishes_to_a_node_s_topic_do_not_end_its_transport_and_are_counted(
) {
    const TEST: &str = "signal::garbage_and_oversized_publishes_to_a_node_s_topic";
    let Some(broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let (bob, mut to_bob) = node(&broker, BOB).await;
    let plain = PlainClient::connect(&broker, None).await;

    // Garbage is opaque bytes to a transport: delivered, for the sealing layer to refuse.
    plain.publish(BOB, vec![0xff; 100]).await;
    assert_eq!(
        within(to_bob.recv()).await.unwrap().payload,
        vec![0xff; 100]
    );

    // Oversized: refused by rumqttc from the packet header; the connection goes, and
    // comes back.
    plain.publish(BOB, vec![0; MAX_MESSAGE + 1]).await;
    within(bob.subscribed_times(2)).await;
    plain.publish(BOB, b"still here".to_vec()).await;
    assert_eq!(within(to_bob.recv()).await.unwrap().payload, "still here");
    let s = bob.stats();
    assert_eq!((s.received, s.dropped, s.reconnects), (2, 1, 1), "{s:?}");
    within(bob.stop()).await;
}

/// Reads one MQTT packet: its first byte and its body.
async fn read_packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let kind = s.read_u8().await.expect("packet type");
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = s.read_u8().await.expect("remaining length");
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.expect("packet body");
    (kind, body)
}

/// A QoS 0 PUBLISH of `payload` on `topic` (small enough for a 1-byte length).
fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let len = 2 + topic.len() + payload.len();
    let mut p = vec![0x30, u8::try_from(len).expect("small")];
    p.extend_from_slice(&u16::try_from(topic.len()).unwrap().to_be_bytes());
    p.extend_from_slice(topic.as_bytes());
    p.extend_from_slice(payload);
    p
}

/// Accepts one MQTT connection and answers its CONNECT and SUBSCRIBE; returns it.
async fn accept_and_subscribe(l: &TcpListener) -> TcpStream {
    let (mut s, _) = l.accept().await.expect("accept");
    assert_eq!(read_packet(&mut s).await.0, 0x10, "CONNECT");
    s.write_all(&[0x20, 2, 0, 0]).await.expect("CONNACK");
    let (kind, body) = read_packet(&mut s).await;
    assert_eq!(kind, 0x82, "SUBSCRIBE");
    s.write_all(&[0x90, 3, body[0], body[1], 1])
        .await
        .expect("SUBACK");
    s
}

#[tokio::test]
async fn a_broker_that_sends_malformed_packets_and_other_topics_is_survived_and_counted() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("mqtt://{}", l.local_addr().unwrap());
    let (inbox, mut to_bob) = Inbox::new(8);
    let bob = MqttTransport::start(&url, BOB, inbox, quick()).expect("start");

    let mut first = within(accept_and_subscribe(&l)).await;
    within(bob.subscribed()).await;
    let mut bad = publish_packet("p2pipe/1/someone-else", b"not for bob");
    // A PUBLISH whose topic claims 200 bytes in a 5-byte packet.
    bad.extend_from_slice(&[0x30, 5, 0, 200, b'a', b'b', b'c']);
    within(first.write_all(&bad)).await.expect("write");

    let mut second = within(accept_and_subscribe(&l)).await;
    within(second.write_all(&publish_packet(BOB, b"good")))
        .await
        .expect("write");
    assert_eq!(within(to_bob.recv()).await.unwrap().payload, "good");
    let s = bob.stats();
    assert_eq!((s.received, s.dropped, s.reconnects), (1, 2, 1), "{s:?}");
    // Stopping sends a DISCONNECT to the broker.
    let stopping = tokio::spawn(async move {
        bob.stop().await;
        bob.is_finished()
    });
    assert_eq!(within(read_packet(&mut second)).await.0, 0xe0, "DISCONNECT");
    assert!(within(stopping).await.unwrap(), "the task ended");
}

#[tokio::test]
async fn a_plain_mqtt_subscriber_to_a_node_s_topic_sees_exactly_the_bytes_published() {
    const TEST: &str = "signal::a_plain_mqtt_subscriber_sees_exactly_the_bytes_published";
    let Some(broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let (alice, _) = node(&broker, ALICE).await;
    let (bob, mut to_bob) = node(&broker, BOB).await;
    let bytes = Bytes::from((0..=255u8).collect::<Vec<u8>>());
    let seen = plain_subscriber_sees(&broker, BOB, async {
        within(alice.publish(BOB, bytes.clone())).await.unwrap();
    })
    .await;
    assert_eq!(seen, bytes);
    assert_eq!(within(to_bob.recv()).await.unwrap().payload, bytes);
    within(alice.stop()).await;
    within(bob.stop()).await;
}

#[tokio::test]
async fn stopping_a_transport_ends_its_task_whether_its_broker_is_up_or_down() {
    const TEST: &str = "signal::stopping_a_transport_ends_its_task";
    let Some(mut broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let (bob, _) = node(&broker, BOB).await;
    within(bob.stop()).await;
    assert!(bob.is_finished());
    let after = within(bob.publish(ALICE, Bytes::from_static(b"late"))).await;
    assert!(
        matches!(after, Err(signal::Error::Stopped { .. })),
        "{after:?}"
    );

    // Down: the transport is between reconnect attempts, or in one.
    let (brokers, mut arrivals) = Brokers::mqtt(&[broker.url()], BOB, quick()).expect("start");
    within(brokers.subscribed(1)).await;
    broker.kill();
    let d = within(brokers.publish(ALICE, Bytes::from_static(b"nobody"))).await;
    assert!(matches!(d, Err(signal::Error::NotDelivered(_))), "{d:?}");
    within(brokers.stop()).await;
    assert!(
        within(arrivals.recv()).await.is_none(),
        "every transport task has ended"
    );
}

#[tokio::test]
async fn a_broker_that_never_acknowledges_does_not_hold_up_a_publish_through_the_others() {
    const TEST: &str = "signal::a_broker_that_never_acknowledges_does_not_hold_up_a_publish";
    let Some(broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let (_bob, mut to_bob) = node(&broker, BOB).await;
    // A broker that answers CONNECT and SUBSCRIBE, then swallows every PUBLISH.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let urls = [
        format!("mqtt://{}", silent.local_addr().unwrap()),
        broker.url(),
    ];
    let (alice, _) = Brokers::mqtt(&urls, ALICE, quick()).expect("start");
    let (_held_open, ()) =
        within(async { tokio::join!(accept_and_subscribe(&silent), alice.subscribed(2)) }).await;

    // Well under the silent broker's 5 s publish timeout.
    let d = within_for(
        Duration::from_secs(2),
        alice.publish(BOB, Bytes::from_static(b"hi")),
    )
    .await
    .expect("the live broker accepted");
    assert!(matches!(d.outcomes[0].1, Outcome::Pending), "{d}");
    assert!(matches!(d.outcomes[1].1, Outcome::Accepted), "{d}");
    assert_eq!(within(to_bob.recv()).await.unwrap().payload, "hi");
    within(alice.stop()).await;
}

#[tokio::test]
async fn a_broker_that_refuses_the_connection_is_retried_and_publishes_fail_at_once_meanwhile() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("mqtt://{}", l.local_addr().unwrap());
    let (inbox, _) = Inbox::new(8);
    let bob = MqttTransport::start(&url, BOB, inbox, quick()).expect("start");

    let (mut s, _) = within(l.accept()).await.expect("accept");
    assert_eq!(within(read_packet(&mut s)).await.0, 0x10, "CONNECT");
    // CONNACK, return code 5: not authorised.
    within(s.write_all(&[0x20, 2, 0, 5]))
        .await
        .expect("CONNACK");
    let early = within(bob.publish(ALICE, Bytes::from_static(b"early"))).await;
    assert!(
        matches!(early, Err(signal::Error::NotConnected { .. })),
        "{early:?}"
    );

    let _second = within(accept_and_subscribe(&l)).await;
    within(bob.subscribed()).await;
    let s = bob.stats();
    assert_eq!(
        (s.connected, s.reconnects, s.publish_failed),
        (true, 0, 1),
        "{s:?}"
    );
    within(bob.stop()).await;
}

/// Alice's and Bob's fixed identities.
fn alice_and_bob() -> (Identity, Identity) {
    (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]))
}

/// A signaller for `identity` on `brokers`, with quick reconnects.
async fn signaller(identity: Identity, brokers: &[String]) -> Signaller {
    let config = SignallerConfig {
        mqtt: quick(),
        ..SignallerConfig::default()
    };
    within(Signaller::start(identity, brokers, config))
        .await
        .expect("signaller started")
}

/// The next one-way message to `node`: its sender's node id and payload.
async fn next_message(node: &Signaller) -> (NodeId, Bytes) {
    match within(node.recv()).await.expect("a message") {
        m @ Incoming::Message { .. } => (m.node_id(), m.payload().clone().into_bytes()),
        other => panic!("not a one-way message: {other:?}"),
    }
}

#[tokio::test]
async fn two_signallers_exchange_sealed_messages_both_ways_and_a_request_through_one_broker_over_ipv4_and_ipv6(
) {
    const TEST: &str = "signal::two_signallers_exchange_sealed_messages";
    for ip in loopbacks(TEST) {
        let Some(broker) = Mosquitto::start(TEST, ip).await else {
            return;
        };
        let (a, b) = alice_and_bob();
        let (alice_key, bob_key) = (a.public(), b.public());
        let alice = signaller(a.clone(), &[broker.url()]).await;
        let bob = signaller(b.clone(), &[broker.url()]).await;

        within(alice.send(&bob_key, b"hello bob"))
            .await
            .expect("sent");
        assert_eq!(next_message(&bob).await, (a.node_id(), "hello bob".into()));
        within(bob.send(&alice_key, b"hello alice"))
            .await
            .expect("sent");
        assert_eq!(
            next_message(&alice).await,
            (b.node_id(), "hello alice".into())
        );

        let answer = async {
            let Some(Incoming::Request(request)) = bob.recv().await else {
                panic!("not a request");
            };
            assert_eq!(&*request.payload, b"your address?", "over {ip}");
            bob.respond(&request, b"192.0.2.7:4000")
                .await
                .expect("answered");
        };
        let ask = alice.request(&bob_key, b"your address?", Duration::from_secs(5));
        let (answer, ()) = within(async { tokio::join!(ask, answer) }).await;
        assert_eq!(&*answer.expect("an answer"), b"192.0.2.7:4000", "over {ip}");

        assert_eq!(alice.counters().core.delivered, 2, "over {ip}");
        assert_eq!(bob.counters().core.delivered, 2, "over {ip}");
        assert_eq!(bob.counters().core.dropped(), 0, "over {ip}");
        within(alice.stop()).await;
        within(bob.stop()).await;
        assert!(alice.is_finished() && bob.is_finished(), "a task remains");
        assert!(within(bob.recv()).await.is_none(), "bob still receives");
    }
}

#[tokio::test]
async fn a_watch_takes_every_one_way_message_of_its_sender_while_it_lives_and_recv_the_rest() {
    const TEST: &str = "signal::a_watch_takes_every_one_way_message";
    let Some(broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let (a, b) = alice_and_bob();
    let carol = Identity::from_seed([3; 32]);
    let bob_key = b.public();
    let alice = signaller(a.clone(), &[broker.url()]).await;
    let bob = signaller(b.clone(), &[broker.url()]).await;
    let carol_s = signaller(carol.clone(), &[broker.url()]).await;

    // Two watches on alice both get her messages; carol's go to recv.
    let mut first = bob.watch(&a.public());
    let mut second = bob.watch(&a.public());
    within(alice.send(&bob_key, b"ready 1"))
        .await
        .expect("sent");
    within(carol_s.send(&bob_key, b"from carol"))
        .await
        .expect("sent");
    assert_eq!(&*within(first.recv()).await.expect("watched"), b"ready 1");
    assert_eq!(&*within(second.recv()).await.expect("watched"), b"ready 1");
    assert_eq!(
        next_message(&bob).await,
        (carol.node_id(), "from carol".into())
    );

    // Once the watches are gone, alice's messages go to recv again.
    drop((first, second));
    within(alice.send(&bob_key, b"after")).await.expect("sent");
    assert_eq!(next_message(&bob).await, (a.node_id(), "after".into()));

    // A watch ends when the signaller stops.
    let mut last = bob.watch(&a.public());
    within(bob.stop()).await;
    assert!(
        within(last.recv()).await.is_none(),
        "the watch outlived the signaller"
    );
    within(alice.stop()).await;
    within(carol_s.stop()).await;
}

#[tokio::test]
async fn with_two_brokers_one_killed_midway_signalled_messages_go_on_and_none_is_delivered_twice() {
    const TEST: &str = "signal::with_two_brokers_one_killed_midway_signalled_messages_go_on";
    let Some(mut first) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let v6 = loopbacks(TEST).last().copied().unwrap_or(V4);
    let Some(second) = Mosquitto::start(TEST, v6).await else {
        return;
    };
    let urls = [first.url(), second.url()];
    let (a, b) = alice_and_bob();
    let alice = signaller(a, &urls).await;
    let bob = signaller(b.clone(), &urls).await;

    let mut deliveries: HashMap<Bytes, usize> = HashMap::new();
    for round in ["before", "after"] {
        if round == "after" {
            first.kill();
        }
        for i in 0..10 {
            let m = format!("{round} {i}");
            within(alice.send(&b.public(), m.as_bytes()))
                .await
                .expect("sent");
        }
        for _ in 0..10 {
            *deliveries.entry(next_message(&bob).await.1).or_default() += 1;
        }
    }
    within(bob.stop()).await;
    if let Some(m) = within(bob.recv()).await {
        panic!("{m:?} was delivered after the last one");
    }
    assert_eq!(deliveries.len(), 20, "{deliveries:?}");
    assert!(deliveries.values().all(|&n| n == 1), "{deliveries:?}");
    let c = bob.counters();
    assert_eq!(c.core.delivered, 20, "{c:?}");
    // Copies through the second broker are caught before the core, or by its replay
    // memory: either way, counted.
    assert_eq!(
        c.brokers.total.received,
        20 + c.brokers.duplicates + c.core.replayed,
        "{c:?}"
    );
    within(alice.stop()).await;
}

#[tokio::test]
async fn a_plain_subscriber_to_a_node_s_topic_sees_only_ciphertext_that_a_third_key_cannot_open() {
    const TEST: &str = "signal::a_plain_subscriber_to_a_node_s_topic_sees_only_ciphertext";
    let Some(broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    const SECRET: &[u8; 64] = b"the plaintext nobody but bob may read: 0123456789abcdefghijklmno";
    let (a, b) = alice_and_bob();
    let alice = signaller(a, &[broker.url()]).await;
    let bob = signaller(b.clone(), &[broker.url()]).await;
    let seen = plain_subscriber_sees(&broker, &b.node_id().topic(), async {
        within(alice.send(&b.public(), SECRET)).await.expect("sent");
    })
    .await;
    assert_eq!(next_message(&bob).await.1, &SECRET[..]);
    assert!(
        !seen.windows(SECRET.len()).any(|w| w == SECRET),
        "the plaintext went through the broker"
    );
    assert!(!seen.windows(16).any(|w| w == &SECRET[..16]));
    let carol = Identity::from_seed([3; 32]);
    let mut third = Signalling::for_identity(&carol, Config::default(), 0);
    assert!(third
        .on_message(&seen, identity::unix_ms(SystemTime::now()))
        .is_err());
    within(alice.stop()).await;
    within(bob.stop()).await;
}

#[tokio::test]
async fn fetch_record_returns_the_peer_s_verified_record_and_times_out_naming_a_node_nobody_serves()
{
    const TEST: &str = "signal::fetch_record_returns_the_peer_s_verified_record";
    let Some(broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let (a, b) = alice_and_bob();
    let alice = signaller(a, &[broker.url()]).await;
    let bob = signaller(b.clone(), &[broker.url()]).await;
    let now = identity::unix_ms(SystemTime::now());
    let record = PeerRecord::builder()
        .broker(broker.url())
        .sign(&b, now, Duration::from_secs(600))
        .expect("bob's record");
    bob.set_record(record.clone());

    let got = within(alice.fetch_record(&b.public(), Duration::from_secs(5)))
        .await
        .expect("bob's record");
    assert_eq!(got.node_id(), b.node_id());
    assert_eq!(got.to_text(), record.to_text());

    let nobody = Identity::from_seed([9; 32]);
    let after = Duration::from_millis(300);
    let err = within(alice.fetch_record(&nobody.public(), after))
        .await
        .expect_err("nobody answers");
    assert!(matches!(err, signal::Error::TimedOut { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("timed out after"), "{text}");
    assert!(text.contains(&nobody.node_id().to_string()), "{text}");
    assert_eq!(alice.counters().core.timed_out, 1);
    within(alice.stop()).await;
    within(bob.stop()).await;
}

/// Publishes `bad` on `topic` through `plain`, then `marker` (a real message) through the
/// same connection, which keeps their order: once `node` has delivered the marker, it has
/// dealt with `bad`. Returns the counters then.
async fn after_marker(
    plain: &PlainClient,
    node: &Signaller,
    topic: &str,
    bad: Vec<u8>,
    marker: Bytes,
) -> SignallerCounters {
    plain.publish(topic, bad).await;
    plain.publish(topic, marker.to_vec()).await;
    let (_, got) = next_message(node).await;
    assert_eq!(got.len(), 7, "the marker comes after the bad message");
    node.counters()
}

#[tokio::test]
async fn forged_replayed_truncated_misaddressed_and_garbage_messages_are_dropped_each_under_its_own_counter(
) {
    const TEST: &str = "signal::forged_replayed_truncated_misaddressed_and_garbage_messages";
    let Some(broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let (a, b) = alice_and_bob();
    let carol = Identity::from_seed([3; 32]);
    let topic = b.node_id().topic();
    let alice = signaller(a.clone(), &[broker.url()]).await;
    let bob = signaller(b.clone(), &[broker.url()]).await;
    let mut plain = PlainClient::connect(&broker, Some(&topic)).await;

    // A core of Alice's own in the test, to make envelopes to tamper with.
    let alice_core = Signalling::for_identity(&a, Config::default(), 0);
    let mut random = 0u8;
    let mut seal_to = |to: &Identity, payload: &[u8]| {
        random += 1;
        let now = identity::unix_ms(SystemTime::now());
        (alice_core.send(&to.public(), payload, now, [random; RANDOM_LEN])).expect("sealed")
    };
    let marker = |seal: &mut dyn FnMut(&Identity, &[u8]) -> Bytes| seal(&b, b"marker!");

    // A genuine message, which the plain client sees and then replays.
    within(alice.send(&b.public(), b"genuine"))
        .await
        .expect("sent");
    assert_eq!(next_message(&bob).await.1, "genuine");
    let seen = plain.next().await;
    let m = marker(&mut seal_to);
    let c = after_marker(&plain, &bob, &topic, seen.to_vec(), m).await;
    assert_eq!(c.brokers.duplicates + c.core.replayed, 1, "replayed: {c:?}");

    // Forged: Alice's envelope with Carol's key put in as the sender.
    let mut forged = seal_to(&b, b"from carol, says the header").to_vec();
    forged[2..34].copy_from_slice(carol.public().as_bytes());
    let m = marker(&mut seal_to);
    let c = after_marker(&plain, &bob, &topic, forged, m).await;
    assert_eq!(c.core.forged, 1, "forged: {c:?}");

    // Truncated: the first 100 bytes of a real envelope.
    let truncated = seal_to(&b, b"cut short")[..100].to_vec();
    let m = marker(&mut seal_to);
    let c = after_marker(&plain, &bob, &topic, truncated, m).await;
    assert_eq!(c.core.malformed, 1, "truncated: {c:?}");

    // Misaddressed: sealed to Carol, published on Bob's topic.
    let for_carol = seal_to(&carol, b"for carol").to_vec();
    let m = marker(&mut seal_to);
    let c = after_marker(&plain, &bob, &topic, for_carol, m).await;
    assert_eq!(c.core.misaddressed, 1, "misaddressed: {c:?}");

    // Garbage does not stop the node: the marker after it is delivered all the same.
    let m = marker(&mut seal_to);
    let c = after_marker(&plain, &bob, &topic, vec![0x5a; 300], m).await;
    assert_eq!(c.core.malformed, 2, "garbage: {c:?}");

    // Oversized: the largest payload fills MAX_MESSAGE exactly and is delivered; one
    // byte more is refused when it is sealed, before anything is sent.
    let largest = vec![7u8; MAX_PAYLOAD];
    let at_limit = seal_to(&b, &largest);
    assert_eq!(at_limit.len(), MAX_MESSAGE);
    plain.publish(&topic, at_limit.to_vec()).await;
    assert_eq!(next_message(&bob).await.1.len(), MAX_PAYLOAD);
    let over = within(alice.send(&b.public(), &vec![7u8; MAX_PAYLOAD + 1])).await;
    assert!(
        matches!(over, Err(signal::Error::PayloadTooLarge { .. })),
        "{over:?}"
    );

    let c = bob.counters();
    assert_eq!(
        c.core.delivered, 7,
        "genuine, 5 markers, the largest: {c:?}"
    );
    assert_eq!(c.core.dropped(), 4 + c.core.replayed, "{c:?}");
    within(alice.stop()).await;
    within(bob.stop()).await;
}
