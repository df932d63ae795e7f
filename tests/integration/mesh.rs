//! The peer mesh on loopback: events, broadcast, limits, duplicates, the handshake
//! timeout, framing of any bytes, compression bombs, signatures, and a 20-node mesh.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use p2pipe::identity::Identity;
use p2pipe::mesh::session::{Handshake, Local, Step};
use p2pipe::mesh::wire::{self, Frame, MeshId, Signed};
use p2pipe::mesh::{
    Backoff, Direction, DisconnectReason, Error, Event, Events, HandshakeError, Mesh, MeshBuilder,
    Outgoing, RefuseCode,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{families, within, Family, T};

fn node(id: &str, fam: &Family) -> MeshBuilder {
    Mesh::builder(id)
        .listen(fam.listen)
        .config(p2pipe::PipeConfig::default().dual_stack(fam.dual_stack))
}

fn addr_of(m: &Mesh, fam: &Family, i: usize) -> SocketAddr {
    fam.target(i, m.local_addrs()[0].port())
}

#[track_caller]
fn next(ev: &mut Events) -> impl std::future::Future<Output = Event> + '_ {
    let at = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(T, ev.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("event stream ended, at {at}"),
            Err(_) => panic!("no event within {T:?}, at {at}"),
        }
    }
}

/// The next message event's sender and payload, skipping connection events.
async fn next_msg(ev: &mut Events) -> (String, Bytes) {
    loop {
        if let Event::Message(m) = next(ev).await {
            return (m.from.to_string(), m.data);
        }
    }
}

#[tokio::test]
async fn events_come_in_order_for_connect_and_disconnect_on_both_sides() {
    for fam in families("mesh events") {
        let (a, mut ea) = within(node("a", &fam).start()).await.unwrap();
        let (b, mut eb) = within(Mesh::builder("b").start()).await.unwrap();
        let pa = within(b.connect(addr_of(&a, &fam, 0))).await.unwrap();
        assert_eq!(
            (&*pa.id, pa.direction),
            ("a", Direction::Outbound),
            "{}",
            fam.name
        );
        assert_eq!(pa.listen_port, a.local_addrs()[0].port());

        let Event::InboundConnected(pb) = next(&mut ea).await else {
            panic!("{}: a's first event", fam.name)
        };
        assert_eq!((&*pb.id, pb.direction), ("b", Direction::Inbound));
        assert_eq!(pb.listen_port, 0, "b does not listen");
        assert_eq!(next(&mut eb).await, Event::OutboundConnected(pa.clone()));

        within(b.send_to("a", "hello")).await.unwrap();
        within(a.send_to("b", "back")).await.unwrap();
        assert_eq!(next_msg(&mut ea).await, ("b".into(), Bytes::from("hello")));
        assert_eq!(next_msg(&mut eb).await, ("a".into(), Bytes::from("back")));

        assert!(within(b.disconnect("a")).await);
        let Event::OutboundDisconnected(d) = next(&mut eb).await else {
            panic!("{}: b's disconnect event", fam.name)
        };
        assert_eq!((&*d.peer.id, d.reason), ("a", DisconnectReason::Local));
        let Event::InboundDisconnected(d) = next(&mut ea).await else {
            panic!("{}: a's disconnect event", fam.name)
        };
        assert_eq!(
            (&*d.peer.id, d.reason),
            ("b", DisconnectReason::Bye("disconnect".into()))
        );
        assert!(a.peers().is_empty() && b.peers().is_empty());
        assert!(matches!(
            within(a.send_to("b", "x")).await,
            Err(Error::UnknownPeer(_))
        ));

        // Stopping: the event, then the stream ends.
        let r = within(a.stop(T)).await;
        assert!(r.clean);
        assert_eq!(next(&mut ea).await, Event::Stopping);
        assert_eq!(within(ea.recv()).await, None);
        within(b.stop(T)).await;
    }
}

/// A handler that sends what it is given, as an event, down `tx`.
fn record<T: Send + 'static>(
    tx: &tokio::sync::mpsc::UnboundedSender<Event>,
    wrap: fn(T) -> Event,
) -> impl Fn(Mesh, T) -> std::future::Ready<()> + Send + Sync + 'static {
    let tx = tx.clone();
    move |_, x| {
        tx.send(wrap(x)).unwrap();
        std::future::ready(())
    }
}

#[tokio::test]
async fn handlers_see_the_same_events_as_the_stream() {
    let fam = &families("mesh handlers")[0];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let t5 = tx.clone();
    let (a, mut ea) = within(
        node("a", fam)
            .on_inbound_connected(record(&tx, Event::InboundConnected))
            .on_outbound_connected(record(&tx, Event::OutboundConnected))
            .on_inbound_disconnected(record(&tx, Event::InboundDisconnected))
            .on_outbound_disconnected(record(&tx, Event::OutboundDisconnected))
            .on_message(move |mesh, m| {
                let t = t5.clone();
                async move {
                    // A handler can answer through the mesh it is given.
                    if &m.data[..] == b"ping" {
                        mesh.send_to(&m.from, "pong").await.unwrap();
                    }
                    t.send(Event::Message(m)).unwrap()
                }
            })
            .on_stopping(move |_| {
                let t = tx.clone();
                async move { t.send(Event::Stopping).unwrap() }
            })
            .start(),
    )
    .await
    .unwrap();
    let (b, _) = within(node("b", fam).start()).await.unwrap();
    let (c, mut ec) = within(Mesh::builder("c").start()).await.unwrap();
    within(c.connect(addr_of(&a, fam, 0))).await.unwrap();
    within(a.connect(addr_of(&b, fam, 0))).await.unwrap();
    within(c.send_to("a", "ping")).await.unwrap();
    within(b.send_to("a", "from b")).await.unwrap();
    assert_eq!(next_msg(&mut ec).await, ("a".into(), Bytes::from("pong")));
    let mut handled = Vec::new();
    for _ in 0..4 {
        handled.push(within(rx.recv()).await.unwrap());
    }
    within(c.stop(T)).await;
    handled.push(within(rx.recv()).await.unwrap());
    within(a.stop(T)).await;
    while let Ok(e) = rx.try_recv() {
        handled.push(e);
    }
    let mut stream = Vec::new();
    while let Some(e) = within(ea.recv()).await {
        stream.push(e);
    }
    assert_eq!(stream, handled);
    let kinds: Vec<&str> = stream
        .iter()
        .map(|e| match e {
            Event::InboundConnected(_) => "in+",
            Event::OutboundConnected(_) => "out+",
            Event::InboundDisconnected(_) => "in-",
            Event::OutboundDisconnected(_) => "out-",
            Event::Message(_) => "msg",
            Event::Stopping => "stop",
        })
        .collect();
    assert_eq!(
        kinds,
        ["in+", "out+", "msg", "msg", "in-", "stop", "out-"],
        "{stream:?}"
    );
    let Event::OutboundDisconnected(d) = &stream[6] else {
        unreachable!()
    };
    assert_eq!(d.reason, DisconnectReason::Stopping);
    let Event::InboundDisconnected(d) = &stream[4] else {
        unreachable!()
    };
    assert_eq!(d.reason, DisconnectReason::Bye("stopping".into()));
    within(b.stop(T)).await;
}

#[tokio::test]
async fn broadcast_skips_the_peers_it_is_told_to() {
    for fam in families("mesh broadcast") {
        let (hub, _) = within(node("hub", &fam).start()).await.unwrap();
        let mut evs = Vec::new();
        let mut nodes = Vec::new();
        for (i, id) in ["b", "c", "d"].into_iter().enumerate() {
            let (m, e) = within(Mesh::builder(id).start()).await.unwrap();
            within(m.connect(addr_of(&hub, &fam, i))).await.unwrap();
            nodes.push(m);
            evs.push(e);
        }
        let r = within(hub.broadcast("first", &["c"])).await;
        let mut sent: Vec<&str> = r.sent.iter().map(|s| &**s).collect();
        sent.sort();
        assert_eq!(sent, ["b", "d"], "{}", fam.name);
        assert!(r.failed.is_empty());
        let r = within(hub.broadcast(Outgoing::new("second"), &[])).await;
        assert_eq!(r.sent.len(), 3);
        for (i, e) in evs.iter_mut().enumerate() {
            let (from, first) = next_msg(e).await;
            assert_eq!(from, "hub");
            if i == 1 {
                // c's first message is the second broadcast: the first never came.
                assert_eq!(first, "second", "{}", fam.name);
            } else {
                assert_eq!(first, "first");
                assert_eq!(next_msg(e).await.1, "second");
            }
        }
        assert_eq!(hub.stats().messages_out, 5);
        for m in &nodes {
            within(m.stop(T)).await;
        }
        within(hub.stop(T)).await;
    }
}

#[tokio::test]
async fn inbound_and_outbound_limits_hold_apart() {
    let fam = &families("mesh limits")[0];
    let (a, mut ea) = within(node("a", fam).max_inbound(2).start()).await.unwrap();
    let addr = addr_of(&a, fam, 0);
    let mut clients = Vec::new();
    for id in ["b", "c"] {
        let (m, _) = within(Mesh::builder(id).start()).await.unwrap();
        within(m.connect(addr)).await.unwrap();
        clients.push(m);
    }
    let (d, _) = within(Mesh::builder("d").start()).await.unwrap();
    match within(d.connect(addr)).await {
        Err(Error::Handshake {
            source:
                HandshakeError::Refused {
                    code: RefuseCode::Limit,
                    ..
                },
            ..
        }) => {}
        other => panic!("third inbound: {other:?}"),
    }
    assert_eq!(a.stats().inbound, 2);
    assert_eq!(a.stats().refused, 1);
    // Room again once one leaves.
    within(clients[0].stop(T)).await;
    loop {
        if let Event::InboundDisconnected(x) = next(&mut ea).await {
            assert_eq!(&*x.peer.id, "b");
            break;
        }
    }
    within(d.connect(addr)).await.unwrap();

    // Outbound: its own limit, checked before connecting, whatever the inbound count.
    let (e, _) = within(Mesh::builder("e").max_outbound(1).start())
        .await
        .unwrap();
    let (f, _) = within(node("f", fam).start()).await.unwrap();
    within(e.connect(addr_of(&f, fam, 0))).await.unwrap();
    assert!(matches!(
        within(e.connect(addr)).await,
        Err(Error::OutboundLimit(1))
    ));
    assert_eq!(e.stats().outbound, 1);
    for m in [&clients[1], &d, &e, &f, &a] {
        within(m.stop(T)).await;
    }
}

#[tokio::test]
async fn a_second_connection_to_the_same_id_is_refused() {
    let fam = &families("mesh duplicates")[0];
    let (a, _) = within(node("a", fam).start()).await.unwrap();
    let (b, mut eb) = within(node("b", fam).start()).await.unwrap();
    within(b.connect(addr_of(&a, fam, 0))).await.unwrap();
    match within(b.connect(addr_of(&a, fam, 0))).await {
        Err(Error::Handshake {
            source:
                HandshakeError::Refused {
                    code: RefuseCode::Duplicate,
                    ..
                },
            ..
        }) => {}
        other => panic!("second connection: {other:?}"),
    }
    // The other way round, from the smaller id: when two nodes open connections to
    // each other, both keep the one the smaller id opened, so this one replaces b's.
    let p = within(a.connect(addr_of(&b, fam, 0))).await.unwrap();
    assert_eq!(p.direction, Direction::Outbound);
    loop {
        if let Event::OutboundDisconnected(d) = next(&mut eb).await {
            assert_eq!(d.reason, DisconnectReason::Replaced);
            break;
        }
    }
    // And now b's new one is the duplicate.
    match within(b.connect(addr_of(&a, fam, 0))).await {
        Err(Error::Handshake {
            source:
                HandshakeError::Refused {
                    code: RefuseCode::Duplicate,
                    ..
                },
            ..
        }) => {}
        other => panic!("b's connection after a's: {other:?}"),
    }
    assert_eq!(b.peer("a").unwrap().direction, Direction::Inbound);
    // A node that reaches itself is refused, and is not its own peer.
    match within(a.connect(addr_of(&a, fam, 0))).await {
        Err(Error::Handshake {
            source:
                HandshakeError::Refused {
                    code: RefuseCode::SelfConnection,
                    ..
                },
            ..
        }) => {}
        other => panic!("connection to self: {other:?}"),
    }
    assert!(a.peer("a").is_none());
    assert_eq!((a.peers().len(), b.peers().len()), (1, 1));
    within(b.send_to("a", "still up")).await.unwrap();
    within(a.stop(T)).await;
    within(b.stop(T)).await;
}

#[tokio::test]
async fn two_nodes_connecting_at_once_keep_one_connection() {
    let fam = &families("mesh simultaneous")[0];
    for round in 0..10 {
        let (a, _) = within(node("a", fam).start()).await.unwrap();
        let (b, mut eb) = within(node("b", fam).start()).await.unwrap();
        let (ra, rb) = within(async {
            tokio::join!(
                a.connect(addr_of(&b, fam, 0)),
                b.connect(addr_of(&a, fam, 0))
            )
        })
        .await;
        assert!(ra.is_ok() || rb.is_ok(), "round {round}: {ra:?} {rb:?}");
        // Both keep the connection the smaller id opened.
        let pa = a.peers();
        let pb = b.peers();
        assert_eq!((pa.len(), pb.len()), (1, 1), "round {round}");
        assert_eq!(pa[0].direction, Direction::Outbound, "round {round}");
        assert_eq!(pb[0].direction, Direction::Inbound, "round {round}");
        within(a.send_to("b", "over the kept one")).await.unwrap();
        assert_eq!(next_msg(&mut eb).await.1, "over the kept one");
        within(a.stop(T)).await;
        within(b.stop(T)).await;
    }
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_timeout_and_blocks_no_one() {
    let fam = &families("mesh silent peer")[0];
    let (a, mut ea) = within(
        node("a", fam)
            .handshake_timeout(Duration::from_millis(1500))
            .start(),
    )
    .await
    .unwrap();
    let addr = addr_of(&a, fam, 0);
    let mut silent = within(TcpStream::connect(addr)).await.unwrap();
    // Half a HELLO, then nothing.
    let mut half = within(TcpStream::connect(addr)).await.unwrap();
    let hello = emitted(&Frame::Hello(wire::Hello {
        id: MeshId::new("half").unwrap(),
        listen_port: 0,
        nonce: [0; 32],
        key: None,
    }));
    within(half.write_all(&hello[..10])).await.unwrap();
    // Others connect meanwhile, at once.
    let mut others = Vec::new();
    for id in ["b", "c"] {
        let (m, _) = within(Mesh::builder(id).start()).await.unwrap();
        within(m.connect(addr)).await.unwrap();
        others.push(m);
        assert!(matches!(next(&mut ea).await, Event::InboundConnected(p) if &*p.id == id));
    }
    // Both came in while the silent ones were still waiting out their timeout.
    assert_eq!(
        a.stats().handshake_timeouts,
        0,
        "others waited for the silent peers"
    );
    // Then both silent ones are closed by the node.
    for s in [&mut silent, &mut half] {
        let mut buf = [0u8; 16];
        let n = within(s.read(&mut buf)).await.unwrap_or(0);
        assert_eq!(n, 0, "the node closes a silent peer without a word");
    }
    assert_eq!(a.stats().handshake_timeouts, 2);
    assert_eq!(a.stats().inbound, 2);
    within(a.stop(T)).await;
}

#[tokio::test]
async fn every_byte_value_and_the_empty_message_round_trip() {
    let all: Vec<u8> = (0..=255u8).collect();
    let mut big = vec![0u8; 1 << 20];
    for (i, b) in big.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    for fam in families("mesh bytes") {
        let (a, mut ea) = within(node("a", &fam).start()).await.unwrap();
        let (b, _) = within(Mesh::builder("b").start()).await.unwrap();
        within(b.connect(addr_of(&a, &fam, 0))).await.unwrap();
        let cases: Vec<Vec<u8>> = vec![
            all.clone(),
            b"one\x04two\x04".to_vec(),
            Vec::new(),
            vec![0x04],
            Vec::new(),
            big.clone(),
        ];
        for c in &cases {
            within(b.send_to("a", c.clone())).await.unwrap();
        }
        within(b.send_to("a", Outgoing::new(all.clone()).compressed()))
            .await
            .unwrap();
        within(b.send_to("a", Outgoing::new(Vec::new()).compressed()))
            .await
            .unwrap();
        for c in &cases {
            assert_eq!(&next_msg(&mut ea).await.1[..], &c[..], "{}", fam.name);
        }
        for want in [&all[..], b""] {
            let Event::Message(m) = next(&mut ea).await else {
                panic!("a message")
            };
            assert!(m.compressed);
            assert_eq!(&m.data[..], want);
        }
        // JSON, compressed or not.
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Chat {
            nick: String,
            text: String,
        }
        let msg = Chat {
            nick: "b".into(),
            text: "é\u{4}\0".into(),
        };
        within(b.send_to("a", Outgoing::json(&msg).unwrap()))
            .await
            .unwrap();
        within(b.send_to("a", Outgoing::json(&msg).unwrap().compressed()))
            .await
            .unwrap();
        for _ in 0..2 {
            let Event::Message(m) = next(&mut ea).await else {
                panic!("a message")
            };
            assert_eq!(m.json::<Chat>().unwrap(), msg);
        }
        assert_eq!(a.stats().messages_in, 10);
        within(b.stop(T)).await;
        within(a.stop(T)).await;
    }
}

#[tokio::test]
async fn a_message_over_the_limit_is_refused_before_sending() {
    let fam = &families("mesh size")[0];
    let (a, _) = within(node("a", fam).max_message(1000).start())
        .await
        .unwrap();
    let (b, _) = within(Mesh::builder("b").max_message(1000).start())
        .await
        .unwrap();
    within(b.connect(addr_of(&a, fam, 0))).await.unwrap();
    assert!(matches!(
        within(b.send_to("a", vec![1u8; 1001])).await,
        Err(Error::TooLarge {
            len: 1001,
            max: 1000
        })
    ));
    within(b.send_to("a", vec![1u8; 1000])).await.unwrap();
    within(a.stop(T)).await;
    within(b.stop(T)).await;
}

#[tokio::test]
async fn a_decompression_bomb_is_dropped_and_counted() {
    let fam = &families("mesh bomb")[0];
    let (a, mut ea) = within(node("a", fam).max_decompressed(1 << 20).start())
        .await
        .unwrap();
    let (b, _) = within(Mesh::builder("b").start()).await.unwrap();
    within(b.connect(addr_of(&a, fam, 0))).await.unwrap();
    // 256 MiB of zeros, about 250 KiB on the wire.
    let bomb = Outgoing::new(vec![0u8; 256 << 20]).compressed();
    within(b.send_to("a", bomb)).await.unwrap();
    within(b.send_to("a", Outgoing::new(vec![7u8; 1 << 20]).compressed()))
        .await
        .unwrap();
    within(b.send_to("a", "after")).await.unwrap();
    // The bomb never arrives; the bounded one and the next do, on the same connection.
    assert_eq!(next_msg(&mut ea).await.1.len(), 1 << 20);
    assert_eq!(next_msg(&mut ea).await.1, "after");
    let s = a.stats();
    assert_eq!((s.too_large, s.messages_in, s.inbound), (1, 2, 1));
    within(a.stop(T)).await;
    within(b.stop(T)).await;
}

/// A hand-driven signing peer: completes the handshake with the sans-IO core over a raw
/// socket, and can then send frames the mesh would never build.
struct RawPeer {
    sock: TcpStream,
    tx: p2pipe::mesh::session::Sender,
    /// The transcript hash `T` of the handshake (docs/mesh.md), from the two HELLOs.
    th: [u8; 32],
}

impl RawPeer {
    /// A signed DATA frame for `payload` at `seq`, signed by `by` over exactly the bytes a
    /// message's signature covers on this connection (docs/mesh.md):
    /// `SHA-256("p2pipe-mesh/1 msg" ‖ T ‖ role ‖ seq ‖ flags ‖ payload)`, the role being
    /// this side's, the initiator (`b'i'`).
    fn signed_by(&self, by: &Identity, seq: u64, payload: &[u8]) -> Bytes {
        let flags = wire::FLAG_SIGNED;
        let mut h = Sha256::new();
        h.update(b"p2pipe-mesh/1 msg");
        h.update(self.th);
        h.update([b'i']);
        h.update(seq.to_be_bytes());
        h.update([flags]);
        h.update(payload);
        let digest: [u8; 32] = h.finalize().into();
        let sig = by.sign(&digest).to_bytes();
        data(flags, Some(Signed { seq, sig }), payload)
    }
}

/// A frame's wire form, length prefix included.
fn emitted(f: &Frame) -> Bytes {
    let mut out = BytesMut::new();
    f.emit(&mut out);
    out.freeze()
}

/// A DATA frame's wire form.
fn data(flags: u8, signed: Option<Signed>, payload: &[u8]) -> Bytes {
    emitted(&Frame::Data {
        flags,
        signed,
        payload: Bytes::copy_from_slice(payload),
    })
}

async fn read_frame(sock: &mut TcpStream) -> Bytes {
    let mut len = [0u8; 4];
    within(sock.read_exact(&mut len)).await.unwrap();
    let mut b = vec![0u8; u32::from_be_bytes(len) as usize];
    within(sock.read_exact(&mut b)).await.unwrap();
    b.into()
}

async fn raw_peer(addr: SocketAddr, id: &str, key: Identity) -> Result<RawPeer, HandshakeError> {
    raw_handshake(addr, id, Some(key)).await
}

/// Completes a handshake by hand (signed when `key` is given) over a raw socket.
async fn raw_handshake(
    addr: SocketAddr,
    id: &str,
    key: Option<Identity>,
) -> Result<RawPeer, HandshakeError> {
    let mut sock = within(TcpStream::connect(addr)).await.unwrap();
    let local = Local {
        id: MeshId::new(id).unwrap(),
        listen_port: 0,
        key,
    };
    let (mut hs, hello) = Handshake::initiator(&local, [42; 32]);
    within(sock.write_all(&hello)).await.unwrap();
    // T = SHA-256("p2pipe-mesh/1" ‖ len ‖ HELLO_i ‖ len ‖ HELLO_a): each HELLO with its
    // length prefix, as sent.
    let mut th = Sha256::new();
    th.update(b"p2pipe-mesh/1");
    th.update(&hello);
    let mut theirs = true;
    loop {
        let f = read_frame(&mut sock).await;
        if std::mem::take(&mut theirs) {
            th.update((f.len() as u32).to_be_bytes());
            th.update(&f);
        }
        match hs.on_frame(f)? {
            Step::Send(out) => within(sock.write_all(&out)).await.unwrap(),
            Step::Decide(_) => break,
        }
    }
    let (session, _) = hs.accept(1 << 20);
    Ok(RawPeer {
        sock,
        tx: session.tx,
        th: th.finalize().into(),
    })
}

fn key(seed: u8) -> Identity {
    Identity::from_seed([seed; 32])
}

#[tokio::test]
async fn forged_signatures_are_refused() {
    let fam = &families("mesh signatures")[0];
    let (a, mut ea) = within(node("a", fam).identity(&key(1)).start())
        .await
        .unwrap();
    let addr = addr_of(&a, fam, 0);
    let mut m = raw_peer(addr, "mallory", key(2)).await.unwrap();
    assert!(
        matches!(next(&mut ea).await, Event::InboundConnected(p) if p.key == Some(key(2).public()))
    );

    // 1. A genuine message.
    let good = m.tx.data(b"genuine", false);
    within(m.sock.write_all(&good)).await.unwrap();
    // 2. The same frame again: a replay.
    within(m.sock.write_all(&good)).await.unwrap();
    // 3. A payload changed after signing.
    let mut tampered = m.tx.data(b"pay 1 coin", false).to_vec();
    let n = tampered.len();
    tampered[n - 6..n].copy_from_slice(b"999999");
    within(m.sock.write_all(&tampered)).await.unwrap();
    // 4. The very bytes a message's signature covers on this connection (a fresh
    //    sequence number, the flags, the payload), signed by another key: one mallory's
    //    handshake did not prove (what SecureNode took: a key the message itself carries).
    let forged = m.signed_by(&key(3), 4, b"forged");
    within(m.sock.write_all(&forged)).await.unwrap();
    // 5. No signature at all.
    within(m.sock.write_all(&data(0, None, b"unsigned")))
        .await
        .unwrap();
    // 6. A genuine one after all that (sequence 3).
    let last = m.tx.data(b"still me", false);
    within(m.sock.write_all(&last)).await.unwrap();
    // 7. The forged frame's twin, signed by mallory's own key: taken, so the frame in 4
    //    was a real message in all but its key.
    let twin = m.signed_by(&key(2), 4, b"forged");
    let parts = |f: &Bytes| match Frame::parse(&f[4..]).unwrap() {
        Frame::Data {
            flags,
            signed: Some(s),
            payload,
        } => ((flags, s.seq, payload), s.sig),
        f => panic!("not signed data: {f:?}"),
    };
    let ((same, sig_twin), (as_forged, sig_forged)) = (parts(&twin), parts(&forged));
    assert_eq!(same, as_forged);
    assert_ne!(sig_twin, sig_forged);
    within(m.sock.write_all(&twin)).await.unwrap();

    let Event::Message(first) = next(&mut ea).await else {
        panic!("message")
    };
    assert_eq!((&first.data[..], first.signed), (&b"genuine"[..], true));
    assert_eq!(next_msg(&mut ea).await.1, "still me");
    let Event::Message(twin) = next(&mut ea).await else {
        panic!("message")
    };
    assert_eq!((&twin.data[..], twin.signed), (&b"forged"[..], true));
    let s = a.stats();
    assert_eq!((s.bad_signatures, s.replays, s.messages_in), (3, 1, 3));
    within(a.stop(T)).await;
}

#[tokio::test]
async fn a_key_is_bound_to_its_id() {
    let fam = &families("mesh key binding")[0];
    let (a, _) = within(
        node("a", fam)
            .identity(&key(1))
            .trust("bob", key(5).public())
            .start(),
    )
    .await
    .unwrap();
    let addr = addr_of(&a, fam, 0);
    // "bob" is pinned: another key is refused.
    assert!(matches!(
        raw_peer(addr, "bob", key(6)).await.err(),
        Some(HandshakeError::Refused {
            code: RefuseCode::BadKey,
            ..
        })
    ));
    drop(raw_peer(addr, "bob", key(5)).await.unwrap());
    // "carol" is bound by her first handshake, for the mesh's life.
    let carol = raw_peer(addr, "carol", key(7)).await.unwrap();
    drop(carol);
    within(async {
        while a.peer("carol").is_some() || a.peer("bob").is_some() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(matches!(
        raw_peer(addr, "carol", key(8)).await.err(),
        Some(HandshakeError::Refused {
            code: RefuseCode::BadKey,
            ..
        })
    ));
    raw_peer(addr, "carol", key(7)).await.unwrap();
    // A node that does not sign cannot join a signing one, nor the other way round.
    let (plain, _) = within(Mesh::builder("plain").start()).await.unwrap();
    assert!(matches!(
        within(plain.connect(addr)).await,
        Err(Error::Handshake {
            source: HandshakeError::Refused {
                code: RefuseCode::SigningMismatch,
                ..
            },
            ..
        })
    ));
    // Two signing meshes talk, and their messages are marked signed.
    let (b, mut eb) = within(node("b", fam).identity(&key(9)).start())
        .await
        .unwrap();
    within(a.connect(addr_of(&b, fam, 0))).await.unwrap();
    within(a.send_to("b", Outgoing::new("signed and small").compressed()))
        .await
        .unwrap();
    let Event::Message(m) = ({
        next(&mut eb).await;
        next(&mut eb).await
    }) else {
        panic!("message")
    };
    assert!(m.signed && m.compressed && &m.data[..] == b"signed and small");
    for x in [&a, &b, &plain] {
        within(x.stop(T)).await;
    }
}

/// A mesh made from a node identity takes the node id as its mesh id, and a peer that
/// gives a node id as its id must prove the key that id comes from.
#[tokio::test]
async fn a_node_identity_is_the_mesh_id_and_node_ids_must_match_their_keys() {
    for fam in families("mesh identity") {
        let (alice_key, bob_key) = (key(11), key(12));
        let alice_id = alice_key.node_id().to_string();
        let (a, mut ea) = within(
            Mesh::with_identity(&alice_key)
                .listen(fam.listen)
                .config(p2pipe::PipeConfig::default().dual_stack(fam.dual_stack))
                .start(),
        )
        .await
        .unwrap();
        assert_eq!(a.id(), alice_id);
        let addr = addr_of(&a, &fam, 0);
        // Mallory claims bob's node id with her own key: refused before any binding.
        let bob_id = bob_key.node_id().to_string();
        assert!(matches!(
            raw_peer(addr, &bob_id, key(13)).await.err(),
            Some(HandshakeError::Refused {
                code: RefuseCode::BadKey,
                ..
            })
        ));
        // Bob, with his own key, is taken, and his messages come from his node id.
        let (b, _) = within(Mesh::with_identity(&bob_key).start()).await.unwrap();
        within(b.connect(addr)).await.unwrap();
        within(b.send_to(&alice_id, "hello")).await.unwrap();
        let Event::InboundConnected(p) = next(&mut ea).await else {
            panic!("connect")
        };
        assert_eq!((&*p.id, p.key), (bob_id.as_str(), Some(bob_key.public())));
        let (from, data) = next_msg(&mut ea).await;
        assert_eq!((from, &data[..]), (bob_id, &b"hello"[..]));
        within(a.stop(T)).await;
        within(b.stop(T)).await;
    }
}

#[tokio::test]
async fn a_peer_that_stops_answering_keepalives_is_dropped() {
    let fam = &families("mesh keepalive")[0];
    let (a, mut ea) = within(
        node("a", fam)
            .identity(&key(1))
            .keepalive(Some(Duration::from_millis(50)))
            .start(),
    )
    .await
    .unwrap();
    let _m = raw_peer(addr_of(&a, fam, 0), "mute", key(2)).await.unwrap();
    assert!(matches!(next(&mut ea).await, Event::InboundConnected(_)));
    let Event::InboundDisconnected(d) = next(&mut ea).await else {
        panic!("disconnect")
    };
    assert_eq!(d.reason, DisconnectReason::Keepalive);
    // A live peer answers them and stays.
    let (b, _) = within(
        Mesh::builder("b")
            .identity(&key(3))
            .keepalive(Some(Duration::from_millis(50)))
            .start(),
    )
    .await
    .unwrap();
    within(b.connect(addr_of(&a, fam, 0))).await.unwrap();
    assert!(matches!(next(&mut ea).await, Event::InboundConnected(_)));
    // Eight keepalive intervals of silence: the node's PINGs and b's PONGs keep it.
    let quiet = tokio::time::timeout(Duration::from_millis(400), ea.recv()).await;
    assert!(quiet.is_err(), "b was dropped: {quiet:?}");
    assert!(a.peer("b").is_some());
    within(a.stop(T)).await;
    within(b.stop(T)).await;
}

#[tokio::test]
async fn keep_connected_reconnects_after_a_drop() {
    let fam = &families("mesh reconnect")[0];
    let (a, _) = within(node("a", fam).start()).await.unwrap();
    let (b, mut eb) = within(Mesh::builder("b").start()).await.unwrap();
    b.keep_connected(
        addr_of(&a, fam, 0),
        Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
        },
    );
    assert!(matches!(next(&mut eb).await, Event::OutboundConnected(_)));
    within(async {
        while a.peer("b").is_none() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(within(a.disconnect("b")).await);
    assert!(matches!(
        next(&mut eb).await,
        Event::OutboundDisconnected(_)
    ));
    assert!(matches!(next(&mut eb).await, Event::OutboundConnected(p) if &*p.id == "a"));
    within(b.stop(T)).await;
    within(a.stop(T)).await;
}

#[tokio::test]
async fn a_panicking_handler_is_counted_and_the_mesh_goes_on() {
    let fam = &families("mesh handler panic")[0];
    let (a, mut ea) = within(
        node("a", fam)
            .on_message(|_, m| async move {
                if &m.data[..] == b"boom" {
                    panic!("handler asked to panic");
                }
            })
            .start(),
    )
    .await
    .unwrap();
    let (b, _) = within(Mesh::builder("b").start()).await.unwrap();
    within(b.connect(addr_of(&a, fam, 0))).await.unwrap();
    within(b.send_to("a", "boom")).await.unwrap();
    within(b.send_to("a", "fine")).await.unwrap();
    assert_eq!(next_msg(&mut ea).await.1, "boom");
    assert_eq!(next_msg(&mut ea).await.1, "fine");
    assert_eq!(a.stats().handler_panics, 1);
    within(a.stop(T)).await;
    within(b.stop(T)).await;
}

#[tokio::test]
async fn a_twenty_node_mesh_broadcast_reaches_every_other_node_once() {
    for fam in families("mesh twenty nodes") {
        const N: usize = 20;
        let mut nodes: Vec<Mesh> = Vec::new();
        let mut evs: Vec<Events> = Vec::new();
        for i in 0..N {
            let (m, e) = within(node(&format!("n{i:02}"), &fam).start())
                .await
                .unwrap();
            nodes.push(m);
            evs.push(e);
        }
        // Every node connects to every node before it: a full mesh of 190 links.
        let nodes = Arc::new(nodes);
        let mut joins = Vec::new();
        for i in 1..N {
            let nodes = nodes.clone();
            let fam = fam.clone();
            joins.push(tokio::spawn(async move {
                for j in 0..i {
                    nodes[i]
                        .connect(addr_of(&nodes[j], &fam, i + j))
                        .await
                        .unwrap();
                }
            }));
        }
        for j in joins {
            within(j).await.unwrap();
        }
        for (i, m) in nodes.iter().enumerate() {
            assert_eq!(m.peers().len(), N - 1, "{}: n{i:02}", fam.name);
        }
        let r = within(nodes[7].broadcast("hello all", &[])).await;
        assert_eq!((r.sent.len(), r.failed.len()), (N - 1, 0));
        let r = within(nodes[7].broadcast("end", &[])).await;
        assert_eq!(r.sent.len(), N - 1);
        for (i, e) in evs.iter_mut().enumerate() {
            if i == 7 {
                continue;
            }
            // Once: the message right after "hello all" is "end".
            assert_eq!(next_msg(e).await, ("n07".into(), Bytes::from("hello all")));
            assert_eq!(next_msg(e).await, ("n07".into(), Bytes::from("end")));
        }
        for (i, m) in nodes.iter().enumerate() {
            if i != 7 {
                assert_eq!(m.stats().messages_in, 2);
            }
        }
        for m in nodes.iter() {
            within(m.stop(T)).await;
        }
    }
}

#[tokio::test]
async fn hostile_bytes_end_only_their_own_connection() {
    let fam = &families("mesh hostile bytes")[0];
    let (a, mut ea) = within(node("a", fam).max_message(4096).start())
        .await
        .unwrap();
    let addr = addr_of(&a, fam, 0);
    let (b, _) = within(Mesh::builder("b").start()).await.unwrap();
    within(b.connect(addr)).await.unwrap();
    assert!(matches!(next(&mut ea).await, Event::InboundConnected(_)));

    // Before the handshake: a length claim over the 512-byte handshake bound ends the
    // connection on the spot, before any room is reserved for it.
    let mut s = within(TcpStream::connect(addr)).await.unwrap();
    within(s.write_all(&u32::MAX.to_be_bytes())).await.unwrap();
    let mut rest = Vec::new();
    let end = within(s.read_to_end(&mut rest)).await;
    assert!(end.is_err() || rest.is_empty(), "{end:?} {rest:?}");

    // Garbage where a HELLO should be.
    let mut s = within(TcpStream::connect(addr)).await.unwrap();
    within(s.write_all(b"\x00\x00\x00\x05GET /")).await.unwrap();
    assert_eq!(read_frame(&mut s).await[0], 0x03);

    // After the handshake: an unknown frame kind, then a frame over the message bound.
    let (mut m, _) = (raw_unsigned(addr, "mallory").await, next(&mut ea).await);
    within(m.write_all(&data(0, None, b"fine"))).await.unwrap();
    within(m.write_all(b"\x00\x00\x00\x01\x7f")).await.unwrap();
    assert_eq!(
        next_msg(&mut ea).await,
        ("mallory".into(), Bytes::from("fine"))
    );
    let Event::InboundDisconnected(d) = next(&mut ea).await else {
        panic!("mallory is dropped")
    };
    assert!(
        matches!(d.reason, DisconnectReason::Error(_)),
        "{:?}",
        d.reason
    );
    let mut m = raw_unsigned(addr, "mallory").await;
    assert!(matches!(next(&mut ea).await, Event::InboundConnected(_)));
    within(m.write_all(&(5000u32).to_be_bytes())).await.unwrap();
    assert!(matches!(next(&mut ea).await, Event::InboundDisconnected(_)));

    // b was never disturbed.
    within(b.send_to("a", "still here")).await.unwrap();
    assert_eq!(
        next_msg(&mut ea).await,
        ("b".into(), Bytes::from("still here"))
    );
    let s = a.stats();
    assert_eq!(
        (s.protocol_errors, s.handshake_failures, s.inbound),
        (1, 2, 1)
    );
    within(a.stop(T)).await;
    within(b.stop(T)).await;
}

/// Completes an unsigned handshake by hand; returns the raw socket.
async fn raw_unsigned(addr: SocketAddr, id: &str) -> TcpStream {
    raw_handshake(addr, id, None).await.unwrap().sock
}

#[tokio::test]
async fn a_send_cancelled_part_way_resets_the_connection() {
    let fam = &families("mesh cancelled send")[0];
    // a stops reading once its event queue is full and nobody reads its stream.
    let (a, ea) = within(node("a", fam).event_capacity(1).start())
        .await
        .unwrap();
    let (b, mut eb) = within(Mesh::builder("b").start()).await.unwrap();
    within(b.connect(addr_of(&a, fam, 0))).await.unwrap();
    assert!(matches!(next(&mut eb).await, Event::OutboundConnected(_)));
    let chunk = Bytes::from(vec![9u8; 1 << 20]);
    let mut blocked = false;
    for _ in 0..64 {
        let send = b.send_to("a", chunk.clone());
        if tokio::time::timeout(Duration::from_millis(200), send)
            .await
            .is_err()
        {
            blocked = true;
            break;
        }
    }
    assert!(blocked, "64 MiB went through a peer that reads nothing");
    // The frame cut short cannot be followed by another: the connection is reset.
    let Event::OutboundDisconnected(d) = next(&mut eb).await else {
        panic!("disconnect")
    };
    assert_eq!(
        d.reason,
        DisconnectReason::Error("send cancelled part-way".into())
    );
    assert!(b.peer("a").is_none());
    within(b.stop(T)).await;
    // A stream kept but never read holds the node up: stop gives up at its deadline,
    // stops the rest at once, and says so.
    let r = within(a.stop(Duration::from_millis(300))).await;
    assert!(!r.clean);
    drop(ea);
}
