//! The Pipe over loopback: echo, framing, subscriptions, accept, handlers,
//! links, end reasons, rebinding, frame limits and errors.
//!
//! Each test runs over IPv4, IPv6 and a dual-stack listener where that
//! applies (see [`families`]), and over TCP and UDP where both make sense.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use p2pipe::pipe::{EndEvent, EndReason, Error, Overflow};
use p2pipe::{Framing, Message, Pipe, PipeConfig, Proto};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_util::codec::Decoder;

use crate::support::{
    families, next, rebind_guard, single_families, within, within_for, Family, SHORT,
};

const PROTOS: [Proto; 2] = [Proto::Tcp, Proto::Udp];

// ---------------------------------------------------------------------------
// Helpers

/// The config a test uses: dual-stack when the family needs it, and lines on
/// TCP so that message boundaries survive the byte stream.
fn cfg(proto: Proto, fam: &Family) -> PipeConfig {
    let c = PipeConfig::default().dual_stack(fam.dual_stack);
    match proto {
        Proto::Tcp => c.framing(Framing::Lines),
        Proto::Udp => c,
    }
}

async fn listen(proto: Proto, fam: &Family, cfg: &PipeConfig) -> Pipe {
    within(Pipe::listen_with(proto, fam.listen, cfg))
        .await
        .unwrap_or_else(|e| panic!("{proto}/{}: listen on {}: {e}", fam.name, fam.listen))
}

/// The `i`-th client of a server on `port`, bound to its loopback address so
/// that its local address is exactly the peer address the server sees.
async fn client(proto: Proto, fam: &Family, i: usize, port: u16, cfg: &PipeConfig) -> Pipe {
    let cfg = cfg.clone().dual_stack(false).bind(fam.client_bind(i));
    let to = fam.target(i, port);
    within(Pipe::connect_with(proto, to, &cfg))
        .await
        .unwrap_or_else(|e| panic!("{proto}/{}: connect to {to}: {e}", fam.name))
}

/// A plain tokio TCP client, to put exact bytes on the wire.
async fn raw_tcp(fam: &Family, i: usize, port: u16) -> TcpStream {
    let s = within(TcpStream::connect(fam.target(i, port)))
        .await
        .expect("raw connect");
    s.set_nodelay(true).unwrap();
    s
}

async fn send(p: &Pipe, data: impl AsRef<[u8]>) {
    let data = data.as_ref();
    within(p.send(data))
        .await
        .unwrap_or_else(|e| panic!("send {:?}: {e}", String::from_utf8_lossy(data)));
}

async fn recv(p: &Pipe) -> Message {
    within(p.recv()).await.expect("recv")
}

async fn accept(server: &Pipe) -> Pipe {
    within(server.accept()).await.expect("accept")
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(&m.data).into_owned()
}

/// Every message of the pipe's flow, through an `on_message` handler.
fn forward(p: &Pipe) -> UnboundedReceiver<Message> {
    let (tx, rx) = unbounded_channel();
    p.on_message(move |m, _reply| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(m);
        }
    })
    .expect("attach handler");
    rx
}

/// Every end event of the pipe (and, on a listener, of its peers).
fn ends(p: &Pipe) -> UnboundedReceiver<EndEvent> {
    let (tx, rx) = unbounded_channel();
    p.on_end(move |ev| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(ev);
        }
    });
    rx
}

/// The peer address of every peer that comes up on a listener.
fn ups(p: &Pipe) -> UnboundedReceiver<Option<SocketAddr>> {
    let (tx, rx) = unbounded_channel();
    p.on_up(move |peer| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(peer.peer_addr());
        }
    });
    rx
}

// ---------------------------------------------------------------------------
// Echo

#[derive(Debug, Clone, Copy)]
enum Serve {
    /// `accept`, then `on_message` on every peer.
    Accept,
    /// `on_message` on the listener itself.
    ListenerHandler,
    /// `recv` on the listener (the peers' flows merged) and `send_to`.
    Merged,
}

async fn echo_server(proto: Proto, fam: &Family, serve: Serve) -> Pipe {
    let server = if fam.dual_stack {
        listen(proto, fam, &PipeConfig::default().dual_stack(true)).await
    } else {
        within(Pipe::listen(proto, fam.listen)).await.unwrap()
    };
    match serve {
        Serve::Accept => {
            let s = server.clone();
            tokio::spawn(async move {
                while let Ok(peer) = s.accept().await {
                    peer.on_message(|m, reply| async move { reply.send(&m.data).await })
                        .expect("first handler");
                }
            });
        }
        Serve::ListenerHandler => server
            .on_message(|m, reply| async move { reply.send(&m.data).await })
            .expect("first handler"),
        Serve::Merged => {
            let s = server.clone();
            tokio::spawn(async move {
                while let Ok(m) = s.recv().await {
                    if let Err(e) = s.send_to(&m.data, m.peer).await {
                        eprintln!("merged echo: send_to {}: {e}", m.peer);
                    }
                }
            });
        }
    }
    server
}

/// Echo over {TCP, UDP} x {v4, v6, dual} x three ways of serving, two
/// clients at a time, with `Pipe::connect` and the default (raw) framing.
/// One message is in flight per client, so a raw TCP read is one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_every_protocol_family_and_serving_style() {
    for fam in families("echo") {
        for proto in PROTOS {
            for serve in [Serve::Accept, Serve::ListenerHandler, Serve::Merged] {
                let ctx = format!("{proto}/{}/{serve:?}", fam.name);
                let server = echo_server(proto, &fam, serve).await;
                let port = server.local_addr().port();
                assert_eq!(server.proto(), proto);
                assert!(server.is_listener(), "{ctx}");
                let mut clients = Vec::new();
                for i in 0..2 {
                    let to = fam.target(i, port);
                    let c = within(Pipe::connect(proto, to)).await.unwrap();
                    assert_eq!(c.peer_addr(), Some(to), "{ctx}");
                    assert!(!c.is_listener());
                    clients.push((c, to));
                }
                for round in 0..3 {
                    for (i, (c, to)) in clients.iter().enumerate() {
                        let msg = format!("{ctx} client {i} round {round}");
                        send(c, &msg).await;
                        let back = recv(c).await;
                        assert_eq!(text(&back), msg, "{ctx}");
                        assert_eq!(back.peer, *to, "{ctx}: reply from the server's address");
                        assert_eq!(back.proto, proto);
                    }
                }
                for (c, _) in &clients {
                    assert_eq!(c.stats().sent, 3, "{ctx}");
                    assert_eq!(c.stats().received, 3, "{ctx}");
                }
                within(server.close()).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Framing

/// A user decoder: messages end with a NUL byte; 0xff is refused.
struct NulTerminated;

impl Decoder for NulTerminated {
    type Item = BytesMut;
    type Error = std::io::Error;
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        if buf.contains(&0xff) {
            return Err(std::io::Error::other("byte 0xff is not allowed"));
        }
        Ok(buf.iter().position(|&b| b == 0).map(|i| {
            let mut m = buf.split_to(i + 1);
            m.truncate(i);
            m
        }))
    }
}

struct FramingCase {
    name: &'static str,
    framing: Framing,
    /// Bytes a raw client writes, and the message each must become.
    inbound: Vec<(&'static [u8], &'static [u8])>,
    /// What the pipe is asked to send, and the bytes that must go out.
    outbound: Vec<(&'static [u8], &'static [u8])>,
}

fn framing_cases() -> Vec<FramingCase> {
    vec![
        FramingCase {
            name: "lines",
            framing: Framing::Lines,
            inbound: vec![
                (b"first line\n", b"first line"),
                (b"second, byte by byte\r\n", b"second, byte by byte"),
                (b"\n", b""),
                (b"last\n", b"last"),
            ],
            outbound: vec![(b"out", b"out\n"), (b"", b"\n")],
        },
        FramingCase {
            name: "length-prefixed",
            framing: Framing::LengthPrefixed,
            inbound: vec![
                (b"\x00\x00\x00\x05alpha", b"alpha"),
                (b"\x00\x00\x00\x0cbyte by byte", b"byte by byte"),
                (b"\x00\x00\x00\x00", b""),
                (b"\x00\x00\x00\x02\x00\xff", b"\x00\xff"),
            ],
            outbound: vec![(b"out", b"\x00\x00\x00\x03out"), (b"", b"\x00\x00\x00\x00")],
        },
        FramingCase {
            name: "btpeer",
            framing: Framing::Btpeer,
            inbound: vec![
                (b"PING\x00\x00\x00\x05hello", b"PINGhello"),
                (b"QUER\x00\x00\x00\x0cbyte by byte", b"QUERbyte by byte"),
                (b"QUIT\x00\x00\x00\x00", b"QUIT"),
                (b"REPL\x00\x00\x00\x01\n", b"REPL\n"),
            ],
            outbound: vec![
                (b"RESPfile.txt", b"RESP\x00\x00\x00\x08file.txt"),
                (b"NAME", b"NAME\x00\x00\x00\x00"),
            ],
        },
        FramingCase {
            name: "custom",
            framing: Framing::custom(|| NulTerminated),
            inbound: vec![
                (b"abc\x00", b"abc"),
                (b"byte by byte\x00", b"byte by byte"),
                (b"\x00", b""),
                (b"z\x00", b"z"),
            ],
            // A custom framing sends bytes as given.
            outbound: vec![(b"out\x00", b"out\x00")],
        },
    ]
}

/// Every framing on TCP: the first message in one write, the second one
/// byte at a time, the rest in a single write; then the pipe's own sends
/// must produce the exact bytes of the framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_framings_cut_and_reassemble_messages() {
    for fam in families("framing") {
        for case in framing_cases() {
            let ctx = format!("{}/{}", case.name, fam.name);
            let c = PipeConfig::default()
                .dual_stack(fam.dual_stack)
                .framing(case.framing.clone());
            let server = listen(Proto::Tcp, &fam, &c).await;
            let port = server.local_addr().port();
            let mut raw = raw_tcp(&fam, 0, port).await;
            let peer = accept(&server).await;
            assert_eq!(peer.peer_addr(), Some(raw.local_addr().unwrap()), "{ctx}");

            let (first, split, rest) = (
                case.inbound[0].0,
                case.inbound[1].0,
                case.inbound[2..]
                    .iter()
                    .flat_map(|(w, _)| w.iter().copied()),
            );
            within(raw.write_all(first)).await.unwrap();
            for b in split {
                within(raw.write_all(&[*b])).await.unwrap();
                within(raw.flush()).await.unwrap();
            }
            let rest: Vec<u8> = rest.collect();
            within(raw.write_all(&rest)).await.unwrap();
            for (_, want) in &case.inbound {
                let m = recv(&peer).await;
                assert_eq!(&m.data[..], *want, "{ctx}");
                assert_eq!(m.peer, raw.local_addr().unwrap(), "{ctx}");
            }

            for (data, wire) in &case.outbound {
                send(&peer, data).await;
                let mut got = vec![0u8; wire.len()];
                within(raw.read_exact(&mut got)).await.unwrap();
                assert_eq!(&got[..], *wire, "{ctx}: bytes on the wire");
            }
            // Nothing more than the frames was written.
            drop(raw);
            within(server.close()).await;
        }
    }
}

/// A custom decoder's error ends the connection with `BadFrame`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_decoder_error_ends_the_connection() {
    for fam in families("custom-error") {
        let c = PipeConfig::default()
            .dual_stack(fam.dual_stack)
            .framing(Framing::custom(|| NulTerminated));
        let server = listen(Proto::Tcp, &fam, &c).await;
        let mut raw = raw_tcp(&fam, 0, server.local_addr().port()).await;
        let peer = accept(&server).await;
        within(raw.write_all(b"fine\x00\xff")).await.unwrap();
        // A message complete before the bad byte may or may not have been
        // cut first (both are in one read); the end reason is what counts.
        match within(peer.ended()).await {
            EndReason::BadFrame(why) => assert!(why.contains("0xff"), "{}: {why}", fam.name),
            other => panic!("{}: expected BadFrame, got {other:?}", fam.name),
        }
        let mut buf = [0u8; 16];
        let n = within(raw.read(&mut buf)).await.unwrap_or(0);
        assert_eq!(n, 0, "{}: the connection is closed", fam.name);
    }
}

// ---------------------------------------------------------------------------
// Subscriptions

/// One message reaches every matching subscription (sharing its bytes),
/// none that does not match, and never the flow; listener subscriptions see
/// the messages of every peer. An unclaimed message goes to the peer's flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_fan_out_and_claim() {
    for fam in families("fan-out") {
        for proto in PROTOS {
            let ctx = format!("{proto}/{}", fam.name);
            let c = cfg(proto, &fam);
            let server = listen(proto, &fam, &c).await;
            let port = server.local_addr().port();
            let get = server.subscribe("^GET", None).unwrap();
            let any = server.subscribe("GET|PUT", None).unwrap();
            let put = server.subscribe("^PUT", None).unwrap();
            let cl = client(proto, &fam, 0, port, &c).await;

            send(&cl, "GET /index").await;
            let (a, b) = (
                within(get.recv()).await.unwrap(),
                within(any.recv()).await.unwrap(),
            );
            assert_eq!(&a.data[..], b"GET /index", "{ctx}");
            assert_eq!(a.data.as_ptr(), b.data.as_ptr(), "{ctx}: bytes shared");
            assert_eq!(a.peer, cl.local_addr(), "{ctx}");
            assert!(put.try_recv().is_none(), "{ctx}: ^PUT must not match");

            send(&cl, "PUT /x").await;
            let (a, b) = (
                within(any.recv()).await.unwrap(),
                within(put.recv()).await.unwrap(),
            );
            assert_eq!(&a.data[..], b"PUT /x", "{ctx}");
            assert_eq!(a.data.as_ptr(), b.data.as_ptr(), "{ctx}");
            assert!(get.try_recv().is_none(), "{ctx}");

            send(&cl, "DELETE /y").await;
            let peer = accept(&server).await;
            let m = recv(&peer).await;
            assert_eq!(
                text(&m),
                "DELETE /y",
                "{ctx}: claimed messages skip the flow"
            );
            assert_eq!(peer.stats().queued, 0, "{ctx}");
            assert!(get.is_empty() && any.is_empty() && put.is_empty(), "{ctx}");
            assert_eq!(
                (get.delivered(), any.delivered(), put.delivered()),
                (1, 2, 1)
            );
        }
    }
}

/// On a connection: claimed messages go to the subscription only, the rest
/// to `recv`, each in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_claim_messages_on_a_connection() {
    for fam in families("claim") {
        for proto in PROTOS {
            let ctx = format!("{proto}/{}", fam.name);
            let c = cfg(proto, &fam);
            let server = listen(proto, &fam, &c).await;
            let cl = client(proto, &fam, 0, server.local_addr().port(), &c).await;
            send(&cl, "hello").await;
            let peer = accept(&server).await;
            assert_eq!(text(&recv(&peer).await), "hello");

            let claims = cl.subscribe("^claim", None).unwrap();
            for m in ["claim 1", "free 1", "claim 2", "free 2"] {
                send(&peer, m).await;
            }
            assert_eq!(text(&recv(&cl).await), "free 1", "{ctx}");
            assert_eq!(text(&recv(&cl).await), "free 2", "{ctx}");
            assert_eq!(text(&within(claims.recv()).await.unwrap()), "claim 1");
            assert_eq!(text(&within(claims.recv()).await.unwrap()), "claim 2");
            assert_eq!(cl.stats().queued, 0, "{ctx}");
        }
    }
}

/// A peer filter on a UDP listener: two clients, a subscription filtered to
/// one of them sees only that one's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_peer_filter_on_udp_listener() {
    for fam in families("peer-filter") {
        let ctx = fam.name;
        let c = cfg(Proto::Udp, &fam);
        let server = listen(Proto::Udp, &fam, &c).await;
        let port = server.local_addr().port();
        let a = client(Proto::Udp, &fam, 0, port, &c).await;
        let b = client(Proto::Udp, &fam, 1, port, &c).await;
        assert_ne!(a.local_addr(), b.local_addr());

        let only_a = server.subscribe("", Some(a.local_addr())).unwrap();
        let only_b = server.subscribe("^from", Some(b.local_addr())).unwrap();
        let all = server.subscribe("", None).unwrap();
        // The listener reads one socket, so messages are dispatched in the
        // order they were sent. A message delivered to the wrong filtered
        // subscription would show up out of place in its sequence.
        for round in 1..=3 {
            send(&a, format!("from a {round}")).await;
            send(&b, format!("from b {round}")).await;
        }
        for (sub, who, from) in [(&only_a, "a", &a), (&only_b, "b", &b)] {
            for round in 1..=3 {
                let m = within(sub.recv()).await.unwrap();
                assert_eq!(text(&m), format!("from {who} {round}"), "{ctx}");
                assert_eq!(m.peer, from.local_addr(), "{ctx}");
            }
        }
        let mut seen = HashSet::new();
        for _ in 0..6 {
            let m = within(all.recv()).await.unwrap();
            let who = if m.peer == a.local_addr() { "a" } else { "b" };
            assert!(text(&m).starts_with(&format!("from {who}")), "{ctx}: {m:?}");
            seen.insert(text(&m));
        }
        assert_eq!(seen.len(), 6, "{ctx}");
        assert_eq!((only_a.dropped(), only_b.dropped()), (0, 0));
    }
}

/// A full subscription queue drops by its policy and counts what it drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_overflow_is_counted() {
    for fam in families("overflow") {
        let ctx = fam.name;
        // The config's default for subscriptions: 2 messages, drop newest.
        let c = cfg(Proto::Tcp, &fam).subscription_queue(2, Overflow::DropNewest);
        let server = listen(Proto::Tcp, &fam, &c).await;
        let cl = client(Proto::Tcp, &fam, 0, server.local_addr().port(), &c).await;
        let peer = accept(&server).await;

        let newest = peer.subscribe("^m", None).unwrap();
        let oldest = peer
            .subscribe_with("^m", None, 2, Overflow::DropOldest)
            .unwrap();
        // Block is not allowed for a subscription: it becomes drop-newest.
        let blocked = peer.subscribe_with("^m", None, 2, Overflow::Block).unwrap();
        let all = peer
            .subscribe_with("^m", None, 100, Overflow::DropNewest)
            .unwrap();
        for i in 1..=5 {
            send(&cl, format!("m{i}")).await;
        }
        for i in 1..=5 {
            assert_eq!(text(&within(all.recv()).await.unwrap()), format!("m{i}"));
        }
        // Messages are dispatched one after another: once a later one is out
        // of the flow, every queue has its final state for m1..m5.
        send(&cl, "after").await;
        assert_eq!(text(&recv(&peer).await), "after", "{ctx}");
        let texts = |s: &p2pipe::Subscription| {
            std::iter::from_fn(|| s.try_recv())
                .map(|m| text(&m))
                .collect::<Vec<_>>()
        };
        assert_eq!(newest.dropped(), 3, "{ctx}");
        assert_eq!(texts(&newest), ["m1", "m2"], "{ctx}");
        assert_eq!(oldest.dropped(), 3, "{ctx}");
        assert_eq!(texts(&oldest), ["m4", "m5"], "{ctx}");
        assert_eq!(blocked.dropped(), 3, "{ctx}");
        assert_eq!(texts(&blocked), ["m1", "m2"], "{ctx}");
        assert_eq!(all.dropped(), 0, "{ctx}");
        // The pipe itself lost nothing.
        assert_eq!(peer.stats().dropped, 0, "{ctx}");
    }
}

/// 1,000 subscriptions on one pipe, each receiving its own message and no
/// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscriptions_each_get_their_own() {
    const N: usize = 1000;
    for fam in families("1000-subs") {
        let ctx = fam.name;
        let c = cfg(Proto::Tcp, &fam);
        let server = listen(Proto::Tcp, &fam, &c).await;
        let cl = client(Proto::Tcp, &fam, 0, server.local_addr().port(), &c).await;
        let peer = accept(&server).await;
        let subs: Vec<_> = (0..N)
            .map(|i| peer.subscribe(&format!("^n{i}$"), None).unwrap())
            .collect();
        // Send in reverse so that no queue order can hide a mix-up.
        for i in (0..N).rev() {
            send(&cl, format!("n{i}")).await;
        }
        send(&cl, "unclaimed").await;
        // The flow sees only the unclaimed message, and it comes last.
        assert_eq!(text(&recv(&peer).await), "unclaimed", "{ctx}");
        for (i, s) in subs.iter().enumerate() {
            let m = s
                .try_recv()
                .unwrap_or_else(|| panic!("{ctx}: sub {i} got nothing"));
            assert_eq!(text(&m), format!("n{i}"), "{ctx}");
            assert!(s.is_empty(), "{ctx}: sub {i} got more than its own");
            assert_eq!(s.dropped(), 0);
        }
        assert_eq!(peer.stats().received, N as u64 + 1, "{ctx}");
    }
}

/// Dropping a subscription unsubscribes: what it would have claimed goes to
/// the flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_subscription_unsubscribes() {
    for fam in families("unsubscribe") {
        for proto in PROTOS {
            let ctx = format!("{proto}/{}", fam.name);
            let c = cfg(proto, &fam);
            let server = listen(proto, &fam, &c).await;
            let cl = client(proto, &fam, 0, server.local_addr().port(), &c).await;
            let sub = cl.subscribe("^x", None).unwrap();
            send(&cl, "hi").await;
            let peer = accept(&server).await;
            assert_eq!(text(&recv(&peer).await), "hi");

            send(&peer, "x1").await;
            assert_eq!(text(&within(sub.recv()).await.unwrap()), "x1", "{ctx}");
            drop(sub);
            send(&peer, "x2").await;
            assert_eq!(
                text(&recv(&cl).await),
                "x2",
                "{ctx}: after the drop, x2 reaches the flow (and x1 never did)"
            );
        }
    }
}

/// A subscription of a pipe that ends drains and then says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_ends_with_its_pipe() {
    for fam in families("sub-end") {
        let c = cfg(Proto::Tcp, &fam);
        let server = listen(Proto::Tcp, &fam, &c).await;
        let cl = client(Proto::Tcp, &fam, 0, server.local_addr().port(), &c).await;
        let peer = accept(&server).await;
        let sub = cl.subscribe("", None).unwrap();
        send(&peer, "last words").await;
        within(peer.close()).await;
        assert_eq!(text(&within(sub.recv()).await.unwrap()), "last words");
        match within(sub.recv()).await {
            Err(Error::Ended(EndReason::Fin)) => {}
            other => panic!("{}: expected Ended(Fin), got {other:?}", fam.name),
        }
        // Subscribing to an ended pipe gives a subscription that is over.
        let late = cl.subscribe("", None).unwrap();
        assert!(matches!(
            within(late.recv()).await,
            Err(Error::Ended(EndReason::Fin))
        ));
    }
}

// ---------------------------------------------------------------------------
// Accept

/// TCP clients connected one after another are accepted in that order,
/// each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_accept_in_connect_order_exactly_once() {
    const N: usize = 8;
    for fam in families("accept-order") {
        let ctx = fam.name;
        let c = cfg(Proto::Tcp, &fam);
        let server = listen(Proto::Tcp, &fam, &c).await;
        let port = server.local_addr().port();
        let mut clients = Vec::new();
        for i in 0..N {
            clients.push(client(Proto::Tcp, &fam, i, port, &c).await);
        }
        for (i, cl) in clients.iter().enumerate() {
            let peer = accept(&server).await;
            assert_eq!(
                peer.peer_addr(),
                Some(cl.local_addr()),
                "{ctx}: accept #{i} out of order"
            );
            assert_eq!(peer.local_addr().port(), port);
            assert_eq!(
                peer.local_addr().ip(),
                cl.peer_addr().unwrap().ip(),
                "{ctx}"
            );
        }
        // Exactly once: the next one accepted is a new client.
        let marker = client(Proto::Tcp, &fam, 0, port, &c).await;
        assert_eq!(accept(&server).await.peer_addr(), Some(marker.local_addr()));
    }
}

/// Datagrams from K client sockets make K peer pipes, in order, each with
/// only its own peer's data, and what came before `accept` is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_peers_become_child_pipes() {
    const K: usize = 4;
    for fam in families("udp-children") {
        let ctx = fam.name;
        let c = cfg(Proto::Udp, &fam);
        let server = listen(Proto::Udp, &fam, &c).await;
        let port = server.local_addr().port();
        let mut up = ups(&server);
        let mut clients = Vec::new();
        for i in 0..K {
            let cl = client(Proto::Udp, &fam, i, port, &c).await;
            send(&cl, format!("{i}: before accept")).await;
            // The listener has made the peer pipe (and queued the datagram).
            assert_eq!(next(&mut up).await, Some(cl.local_addr()), "{ctx}");
            clients.push(cl);
        }
        let mut peers = Vec::new();
        for (i, cl) in clients.iter().enumerate() {
            let peer = accept(&server).await;
            assert_eq!(peer.peer_addr(), Some(cl.local_addr()), "{ctx}: order");
            assert!(!peer.is_listener());
            let m = recv(&peer).await;
            assert_eq!(text(&m), format!("{i}: before accept"), "{ctx}");
            assert_eq!(m.peer, cl.local_addr());
            peers.push(peer);
        }
        for (i, cl) in clients.iter().enumerate().rev() {
            send(cl, format!("{i}: after accept")).await;
        }
        for (i, (peer, cl)) in peers.iter().zip(&clients).enumerate() {
            let m = recv(peer).await;
            assert_eq!(text(&m), format!("{i}: after accept"), "{ctx}");
            assert_eq!(m.peer, cl.local_addr());
            // A peer pipe replies to its own peer only.
            send(peer, format!("to {i}")).await;
            let r = recv(cl).await;
            assert_eq!(text(&r), format!("to {i}"), "{ctx}");
            assert_eq!(r.peer, fam.target(i, port), "{ctx}");
        }
        // Exactly once: known peers make no new pipe; a new one does.
        let marker = client(Proto::Udp, &fam, 0, port, &c).await;
        send(&marker, "marker").await;
        let p = accept(&server).await;
        assert_eq!(p.peer_addr(), Some(marker.local_addr()), "{ctx}");
        assert_eq!(next(&mut up).await, Some(marker.local_addr()), "{ctx}");
        assert_eq!(server.stats().dropped, 0);
    }
}

// ---------------------------------------------------------------------------
// Handlers and streams

/// `on_message` first gets what arrived before it was attached, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_message_gets_earlier_messages_first() {
    for fam in families("early") {
        for proto in PROTOS {
            let ctx = format!("{proto}/{}", fam.name);
            let c = cfg(proto, &fam);
            let server = listen(proto, &fam, &c).await;
            // The marker is claimed; once it is seen, everything sent before
            // it is waiting in the peer's flow.
            let mark = server.subscribe("^mark$", None).unwrap();
            let cl = client(proto, &fam, 0, server.local_addr().port(), &c).await;
            for m in ["early 1", "early 2", "mark"] {
                send(&cl, m).await;
            }
            within(mark.recv()).await.unwrap();
            let peer = accept(&server).await;
            assert_eq!(peer.stats().queued, 2, "{ctx}");
            let mut rx = forward(&peer);
            drop(peer); // the handler keeps the pipe open
            assert_eq!(text(&next(&mut rx).await), "early 1", "{ctx}");
            assert_eq!(text(&next(&mut rx).await), "early 2", "{ctx}");
            send(&cl, "late").await;
            assert_eq!(text(&next(&mut rx).await), "late", "{ctx}");
        }
    }
}

/// `stream()` yields the messages and ends when the peer closes (TCP) or the
/// pipe is closed (UDP, which has no end from the peer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_yields_messages_then_ends() {
    for fam in families("stream") {
        for proto in PROTOS {
            let ctx = format!("{proto}/{}", fam.name);
            let c = cfg(proto, &fam);
            let server = listen(proto, &fam, &c).await;
            let cl = client(proto, &fam, 0, server.local_addr().port(), &c).await;
            send(&cl, "hi").await;
            let peer = accept(&server).await;
            recv(&peer).await;
            let stream = cl.stream();
            for m in ["a", "b", "c"] {
                send(&peer, m).await;
            }
            match proto {
                Proto::Tcp => {
                    within(peer.close()).await;
                    let got: Vec<String> =
                        within(stream.map(|m| text(&m)).collect::<Vec<_>>()).await;
                    assert_eq!(got, ["a", "b", "c"], "{ctx}");
                    assert_eq!(cl.end_reason(), Some(EndReason::Fin), "{ctx}");
                }
                Proto::Udp => {
                    let mut stream = stream;
                    for want in ["a", "b", "c"] {
                        let m = within(stream.next()).await.expect("a message");
                        assert_eq!(text(&m), want, "{ctx}");
                    }
                    within(cl.close()).await;
                    assert!(within(stream.next()).await.is_none(), "{ctx}: ends");
                }
            }
        }
    }
}

/// `on_up` on a listener fires once per new peer; on a connection, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_up_fires_per_peer() {
    for fam in families("on-up") {
        for proto in PROTOS {
            let ctx = format!("{proto}/{}", fam.name);
            let c = cfg(proto, &fam);
            let server = listen(proto, &fam, &c).await;
            let port = server.local_addr().port();
            let mut up = ups(&server);
            let mut want = HashSet::new();
            let mut clients = Vec::new();
            for i in 0..3 {
                let cl = client(proto, &fam, i, port, &c).await;
                send(&cl, "one").await;
                send(&cl, "two").await;
                want.insert(Some(cl.local_addr()));
                clients.push(cl);
            }
            let mut got = HashSet::new();
            for _ in 0..3 {
                got.insert(next(&mut up).await);
            }
            assert_eq!(got, want, "{ctx}");
            // No second event for a known peer: the next is a new client.
            let last = client(proto, &fam, 0, port, &c).await;
            send(&last, "x").await;
            assert_eq!(next(&mut up).await, Some(last.local_addr()), "{ctx}");

            let mut own = ups(&last);
            assert_eq!(next(&mut own).await, last.peer_addr(), "{ctx}");
        }
    }
}

// ---------------------------------------------------------------------------
// Link

/// A relay of two pipes linked both ways carries data between two outside
/// clients, stays up with no other handle, and closing one side ends the
/// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_relays_both_ways_and_ends_together() {
    for fam in families("link") {
        for proto in PROTOS {
            let ctx = format!("{proto}/{}", fam.name);
            let c = cfg(proto, &fam);
            let side_a = listen(proto, &fam, &c).await;
            let side_b = listen(proto, &fam, &c).await;
            let x = client(proto, &fam, 0, side_a.local_addr().port(), &c).await;
            let y = client(proto, &fam, 1, side_b.local_addr().port(), &c).await;
            // Sent before the link: must be relayed once it is up.
            send(&x, "early from x").await;
            send(&y, "early from y").await;
            let a = accept(&side_a).await;
            let b = accept(&side_b).await;
            let (mut a_end, mut b_end) = (ends(&a), ends(&b));
            a.link(&b).unwrap();
            b.link(&a).unwrap();
            assert!(matches!(a.link(&b), Err(Error::HandlerAttached)));
            drop((a, b));

            assert_eq!(text(&recv(&y).await), "early from x", "{ctx}");
            assert_eq!(text(&recv(&x).await), "early from y", "{ctx}");
            for i in 0..3 {
                send(&x, format!("x{i}")).await;
                send(&y, format!("y{i}")).await;
                assert_eq!(text(&recv(&y).await), format!("x{i}"), "{ctx}");
                assert_eq!(text(&recv(&x).await), format!("y{i}"), "{ctx}");
            }
            if proto == Proto::Tcp {
                within(x.close()).await;
                assert_eq!(next(&mut a_end).await.reason, EndReason::Fin, "{ctx}");
                assert_eq!(next(&mut b_end).await.reason, EndReason::Closed, "{ctx}");
                assert_eq!(within(y.ended()).await, EndReason::Fin, "{ctx}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Ends

/// `on_end` and `ended()` report FIN when the peer closes and Reset when it
/// resets; the listener's `on_end` hears about each of its peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_handlers_see_fin_and_reset() {
    for fam in families("ends") {
        let ctx = fam.name;
        let c = cfg(Proto::Tcp, &fam);
        let server = listen(Proto::Tcp, &fam, &c).await;
        let port = server.local_addr().port();
        let mut listener_ends = ends(&server);

        // FIN: the peer's close().
        let cl = client(Proto::Tcp, &fam, 0, port, &c).await;
        let peer = accept(&server).await;
        let mut peer_ends = ends(&peer);
        assert_eq!(peer.end_reason(), None);
        within(cl.close()).await;
        let ev = next(&mut peer_ends).await;
        assert_eq!(ev.reason, EndReason::Fin, "{ctx}");
        assert_eq!(ev.peer, Some(cl.local_addr()), "{ctx}");
        assert_eq!(ev.local, peer.local_addr(), "{ctx}");
        assert_eq!(ev.proto, Proto::Tcp);
        assert_eq!(within(peer.ended()).await, EndReason::Fin, "{ctx}");
        assert_eq!(peer.end_reason(), Some(EndReason::Fin));
        assert_eq!(cl.end_reason(), Some(EndReason::Closed), "{ctx}");
        let lev = next(&mut listener_ends).await;
        assert_eq!(
            (lev.reason, lev.peer),
            (EndReason::Fin, Some(cl.local_addr()))
        );
        // A handler attached after the end is called at once.
        let mut late = ends(&peer);
        assert_eq!(next(&mut late).await.reason, EndReason::Fin, "{ctx}");
        // recv says why it is over.
        assert!(matches!(
            within(peer.recv()).await,
            Err(Error::Ended(EndReason::Fin))
        ));

        // Reset: SO_LINGER 0, then drop.
        let raw = raw_tcp(&fam, 1, port).await;
        let raw_local = raw.local_addr().unwrap();
        let peer = accept(&server).await;
        let mut peer_ends = ends(&peer);
        socket2::SockRef::from(&raw)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(raw);
        let ev = next(&mut peer_ends).await;
        assert_eq!(ev.reason, EndReason::Reset, "{ctx}");
        assert_eq!(ev.peer, Some(raw_local));
        assert_eq!(within(peer.ended()).await, EndReason::Reset, "{ctx}");
        let lev = next(&mut listener_ends).await;
        assert_eq!((lev.reason, lev.peer), (EndReason::Reset, Some(raw_local)));
        assert!(matches!(
            within(peer.send("anyone?")).await,
            Err(Error::Ended(_)) | Err(Error::Io(_))
        ));

        // The listener's own end.
        within(server.close()).await;
        let lev = next(&mut listener_ends).await;
        assert_eq!((lev.reason, lev.peer), (EndReason::Closed, None), "{ctx}");
    }
}

// ---------------------------------------------------------------------------
// Close and rebind

/// A closed listener's port can be bound again at once, on TCP and UDP,
/// with peers still around; accepted TCP connections outlive their
/// listener, UDP peers end with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_then_rebind_the_same_port() {
    for fam in families("rebind") {
        for proto in PROTOS {
            let ctx = format!("{proto}/{}", fam.name);
            let c = cfg(proto, &fam);
            let server = listen(proto, &fam, &c).await;
            let port = server.local_addr().port();
            let mut up = ups(&server);
            let cl = client(proto, &fam, 0, port, &c).await;
            send(&cl, "before").await;
            let peer = accept(&server).await;
            assert_eq!(text(&recv(&peer).await), "before");
            assert_eq!(next(&mut up).await, Some(cl.local_addr()));
            // A peer nobody accepted: it is closed with the listener.
            let unaccepted = client(proto, &fam, 1, port, &c).await;
            if proto == Proto::Udp {
                // (On TCP, data left unread would turn the close into a reset.)
                send(&unaccepted, "hello?").await;
            }
            assert_eq!(next(&mut up).await, Some(unaccepted.local_addr()));

            let _no_fork = rebind_guard().await;
            within(server.close()).await;
            assert_eq!(server.end_reason(), Some(EndReason::Closed));
            assert!(matches!(
                within(server.accept()).await,
                Err(Error::Ended(EndReason::Closed))
            ));
            let again = within(Pipe::listen_with(proto, fam.listen_on(port), &c))
                .await
                .unwrap_or_else(|e| panic!("{ctx}: rebind port {port} at once: {e}"));
            assert_eq!(again.local_addr().port(), port, "{ctx}");

            let cl2 = client(proto, &fam, 1, port, &c).await;
            send(&cl2, "after").await;
            let peer2 = accept(&again).await;
            assert_eq!(peer2.peer_addr(), Some(cl2.local_addr()), "{ctx}");
            assert_eq!(text(&recv(&peer2).await), "after", "{ctx}");

            match proto {
                Proto::Tcp => {
                    send(&cl, "still here").await;
                    assert_eq!(text(&recv(&peer).await), "still here", "{ctx}");
                    send(&peer, "so am I").await;
                    assert_eq!(text(&recv(&cl).await), "so am I", "{ctx}");
                    assert_eq!(within(unaccepted.ended()).await, EndReason::Fin, "{ctx}");
                }
                Proto::Udp => {
                    assert_eq!(within(peer.ended()).await, EndReason::Closed, "{ctx}");
                    assert!(matches!(
                        within(peer.send("x")).await,
                        Err(Error::Ended(EndReason::Closed))
                    ));
                }
            }
            within(again.close()).await;
            // And once more, now with nothing left on the port but a
            // connection of the first listener (TCP).
            let third = within(Pipe::listen_with(proto, fam.listen_on(port), &c))
                .await
                .unwrap_or_else(|e| panic!("{ctx}: second rebind of {port}: {e}"));
            assert_eq!(third.local_addr().port(), port);
        }
    }
}

// ---------------------------------------------------------------------------
// Frame limits

fn limited(fam: &Family) -> PipeConfig {
    PipeConfig::default()
        .dual_stack(fam.dual_stack)
        .framing(Framing::LengthPrefixed)
        .max_frame(1024)
}

/// A peer claiming a 4 GiB frame is cut off with TooLarge; the listener
/// goes on serving a well-behaved client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_ends_only_that_connection() {
    for fam in families("oversized") {
        let ctx = fam.name;
        let c = limited(&fam);
        let server = listen(Proto::Tcp, &fam, &c).await;
        let port = server.local_addr().port();
        let mut peer_ends = ends(&server);
        server
            .on_message(|m, reply| async move { reply.send(&m.data).await })
            .unwrap();

        let mut bad = raw_tcp(&fam, 0, port).await;
        within(bad.write_all(&u32::MAX.to_be_bytes()))
            .await
            .unwrap();
        let ev = next(&mut peer_ends).await;
        assert_eq!(ev.peer, Some(bad.local_addr().unwrap()), "{ctx}");
        assert_eq!(
            ev.reason,
            EndReason::TooLarge {
                len: u32::MAX as u64,
                max: 1024
            },
            "{ctx}"
        );
        let mut buf = [0u8; 8];
        let n = within(bad.read(&mut buf)).await.unwrap_or(0);
        assert_eq!(n, 0, "{ctx}: the offender's connection is closed");

        let good = client(Proto::Tcp, &fam, 1, port, &c).await;
        let full = vec![7u8; 1024];
        send(&good, &full).await;
        assert_eq!(&recv(&good).await.data[..], &full[..], "{ctx}");
    }
}

/// The stream ending inside a frame ends the pipe with Truncated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_is_reported() {
    for fam in families("truncated") {
        let c = limited(&fam);
        let server = listen(Proto::Tcp, &fam, &c).await;
        let mut raw = raw_tcp(&fam, 0, server.local_addr().port()).await;
        let peer = accept(&server).await;
        within(raw.write_all(&100u32.to_be_bytes())).await.unwrap();
        within(raw.write_all(&[1u8; 10])).await.unwrap();
        within(raw.shutdown()).await.unwrap();
        // Counted in bytes of the frame, header included.
        assert_eq!(
            within(peer.ended()).await,
            EndReason::Truncated {
                have: 14,
                want: 104
            },
            "{}",
            fam.name
        );
        assert!(matches!(
            within(peer.recv()).await,
            Err(Error::Ended(EndReason::Truncated { .. }))
        ));
    }
}

/// Sending more than `max_frame` fails and writes nothing; the connection
/// goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_too_large_fails_and_writes_nothing() {
    for fam in families("send-too-large") {
        for proto in PROTOS {
            let ctx = format!("{proto}/{}", fam.name);
            let c = limited(&fam);
            let server = listen(proto, &fam, &c).await;
            let cl = client(proto, &fam, 0, server.local_addr().port(), &c).await;
            match within(cl.send(vec![1u8; 1025])).await {
                Err(Error::TooLarge {
                    len: 1025,
                    max: 1024,
                }) => {}
                other => panic!("{ctx}: expected TooLarge, got {other:?}"),
            }
            assert_eq!(cl.stats().sent, 0, "{ctx}");
            send(&cl, "small").await;
            let peer = accept(&server).await;
            let m = recv(&peer).await;
            assert_eq!(text(&m), "small", "{ctx}: the first thing to arrive");
            assert_eq!(peer.stats().received, 1, "{ctx}");
            assert_eq!(cl.stats().sent, 1, "{ctx}");
        }
    }
}

/// A UDP datagram over `max_frame` is dropped and counted; later ones pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagram_over_the_limit_is_dropped_and_counted() {
    for fam in families("udp-too-large") {
        let ctx = fam.name;
        let server = listen(Proto::Udp, &fam, &limited(&fam)).await;
        let sock = within(UdpSocket::bind(fam.client_bind(0))).await.unwrap();
        let to = fam.target(0, server.local_addr().port());
        within(sock.send_to(&[0u8; 2000], to)).await.unwrap();
        within(sock.send_to(b"ok", to)).await.unwrap();
        let peer = accept(&server).await;
        assert_eq!(text(&recv(&peer).await), "ok", "{ctx}");
        assert_eq!(server.stats().dropped, 1, "{ctx}");
    }
}

// ---------------------------------------------------------------------------
// Errors

/// Connecting to a port with no listener is `Error::Connect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_closed_port_fails() {
    for fam in single_families("connect-refused") {
        // A socket bound but not listening holds the port, so nobody else
        // can start listening on it during the test.
        let holder = match fam.client_ip(0) {
            std::net::IpAddr::V4(_) => TcpSocket::new_v4(),
            std::net::IpAddr::V6(_) => TcpSocket::new_v6(),
        }
        .unwrap();
        holder.bind(fam.client_bind(0)).unwrap();
        let to = holder.local_addr().unwrap();
        match within(Pipe::connect(Proto::Tcp, to)).await {
            Err(Error::Connect { target, source }) => {
                assert_eq!(target, to.to_string(), "{}", fam.name);
                assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
            }
            other => panic!("{}: expected Error::Connect, got {other:?}", fam.name),
        }
    }
}

/// Misuse and timeouts give the documented errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_the_documented_ones() {
    for fam in families("errors") {
        for proto in PROTOS {
            let ctx = format!("{proto}/{}", fam.name);
            let c = cfg(proto, &fam);
            let server = listen(proto, &fam, &c).await;
            let cl = client(proto, &fam, 0, server.local_addr().port(), &c).await;

            // Nothing arrives.
            let limit = Duration::from_millis(50);
            match within(cl.recv_timeout(limit)).await {
                Err(Error::Timeout(d)) => assert_eq!(d, limit, "{ctx}"),
                other => panic!("{ctx}: expected Timeout, got {other:?}"),
            }
            let sub = cl.subscribe("x", None).unwrap();
            assert!(matches!(
                within(sub.recv_timeout(limit)).await,
                Err(Error::Timeout(_))
            ));

            // A listener has no single peer.
            assert!(
                matches!(within(server.send("x")).await, Err(Error::NoPeer)),
                "{ctx}"
            );
            // A listener has no connection to an address it never saw (TCP).
            let stranger: SocketAddr = fam.target(0, 9);
            if proto == Proto::Tcp {
                assert!(matches!(
                    within(server.send_to("x", stranger)).await,
                    Err(Error::UnknownPeer(a)) if a == stranger
                ));
                assert!(matches!(
                    within(cl.send_to("x", stranger)).await,
                    Err(Error::UnknownPeer(_))
                ));
            }
            assert!(matches!(
                within(cl.accept()).await,
                Err(Error::Unsupported(_))
            ));
            assert!(matches!(
                cl.subscribe("(unclosed", None),
                Err(Error::Pattern(_))
            ));

            // One flow consumer.
            cl.on_message(|_, _| async {}).unwrap();
            assert!(
                matches!(cl.on_message(|_, _| async {}), Err(Error::HandlerAttached)),
                "{ctx}"
            );
            assert!(matches!(
                within(cl.recv()).await,
                Err(Error::HandlerAttached)
            ));
            assert!(matches!(cl.link(&cl), Err(Error::HandlerAttached)));
            server.on_message(|_, _| async {}).unwrap();
            assert!(matches!(
                server.on_message(|_, _| async {}),
                Err(Error::HandlerAttached)
            ));
            assert!(matches!(
                within(server.accept()).await,
                Err(Error::HandlerAttached)
            ));
            assert!(matches!(
                within(server.recv()).await,
                Err(Error::HandlerAttached)
            ));
            assert!(matches!(server.link(&cl), Err(Error::Unsupported(_))));

            // Framing rules on send.
            if proto == Proto::Tcp {
                assert!(matches!(
                    within(cl.send("two\nlines")).await,
                    Err(Error::BadFrame(_))
                ));
                let bt = PipeConfig::default().framing(Framing::Btpeer);
                let btc = within(Pipe::connect_with(proto, cl.peer_addr().unwrap(), &bt))
                    .await
                    .unwrap();
                assert!(
                    matches!(within(btc.send("NO")).await, Err(Error::BadFrame(_))),
                    "{ctx}: a btpeer message starts with its 4-byte type"
                );
            }

            // A port in use cannot be bound again.
            match within(Pipe::listen_with(proto, server.local_addr(), &c)).await {
                Err(Error::Bind { addr, .. }) => assert_eq!(addr, server.local_addr()),
                other => panic!("{ctx}: expected Bind, got {other:?}"),
            }

            // After close: Ended.
            within(cl.close()).await;
            within(cl.close()).await; // twice is harmless
            let late = within(cl.send("late")).await;
            assert!(
                matches!(late, Err(Error::Ended(EndReason::Closed))),
                "{ctx}: {late:?}"
            );
        }
        // A merged listener cannot also be accepted from or get a handler.
        let server = listen(Proto::Udp, &fam, &cfg(Proto::Udp, &fam)).await;
        assert!(matches!(
            within_for(SHORT, server.recv_timeout(Duration::from_millis(10))).await,
            Err(Error::Timeout(_))
        ));
        assert!(matches!(
            within(server.accept()).await,
            Err(Error::HandlerAttached)
        ));
        assert!(matches!(
            server.on_message(|_, _| async {}),
            Err(Error::HandlerAttached)
        ));
    }
}

// ---------------------------------------------------------------------------
// Lifetime

/// A pipe with no handle left ends (the peer sees FIN); one with a handler
/// stays open without any handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_handle_or_handler_keeps_a_pipe_open() {
    for fam in families("lifetime") {
        let ctx = fam.name;
        let c = cfg(Proto::Tcp, &fam);
        let server = listen(Proto::Tcp, &fam, &c).await;
        let port = server.local_addr().port();

        let cl = client(Proto::Tcp, &fam, 0, port, &c).await;
        let peer = accept(&server).await;
        let copy = cl.clone();
        drop(cl);
        send(&copy, "a clone is a handle").await;
        assert_eq!(text(&recv(&peer).await), "a clone is a handle", "{ctx}");
        drop(copy);
        assert_eq!(within(peer.ended()).await, EndReason::Fin, "{ctx}");

        let cl = client(Proto::Tcp, &fam, 1, port, &c).await;
        let peer = accept(&server).await;
        let mut rx = forward(&cl);
        drop(cl);
        send(&peer, "still there?").await;
        assert_eq!(text(&next(&mut rx).await), "still there?", "{ctx}");
        assert_eq!(peer.end_reason(), None, "{ctx}");
        within(peer.close()).await;
        // The handler goes when the pipe ends.
        assert!(within(rx.recv()).await.is_none(), "{ctx}");
    }
}

/// On a dual-stack listener, IPv4 peers are plain IPv4 addresses; the
/// IPv4-mapped IPv6 form of the same address names the same peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_mapped_addresses_name_ipv4_peers() {
    let Some(fam) = families("mapped").into_iter().find(|f| f.dual_stack) else {
        return;
    };
    for proto in PROTOS {
        let ctx = format!("{proto}/{}", fam.name);
        let c = cfg(proto, &fam);
        let server = listen(proto, &fam, &c).await;
        let cl = client(proto, &fam, 0, server.local_addr().port(), &c).await;
        let SocketAddr::V4(v4) = cl.local_addr() else {
            panic!("{ctx}: client 0 is IPv4");
        };
        let mapped = SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port());
        let sub = server.subscribe("", Some(mapped)).unwrap();
        send(&cl, "hi").await;
        let m = within(sub.recv()).await.unwrap();
        assert_eq!(m.peer, cl.local_addr(), "{ctx}: canonical peer");
        within(server.send_to("back", mapped))
            .await
            .unwrap_or_else(|e| panic!("{ctx}: send_to mapped: {e}"));
        assert_eq!(text(&recv(&cl).await), "back", "{ctx}");
    }
}

// ---------------------------------------------------------------------------
// Flow limits

/// A full TCP flow stops reading instead of dropping: a small flow still
/// delivers everything, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_tcp_flow_pushes_back_without_loss() {
    for fam in families("tcp-pushback") {
        let c = cfg(Proto::Tcp, &fam).queue_capacity(2);
        let server = listen(Proto::Tcp, &fam, &c).await;
        let cl = client(Proto::Tcp, &fam, 0, server.local_addr().port(), &c).await;
        let peer = accept(&server).await;
        for i in 0..50 {
            send(&cl, format!("m{i}")).await;
        }
        for i in 0..50 {
            assert_eq!(text(&recv(&peer).await), format!("m{i}"), "{}", fam.name);
            assert!(peer.stats().queued <= 2);
        }
        assert_eq!(peer.stats().dropped, 0, "{}", fam.name);
    }
}

/// A full UDP flow drops new datagrams and counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_udp_flow_drops_and_counts() {
    for fam in families("udp-flow-full") {
        let ctx = fam.name;
        let c = cfg(Proto::Udp, &fam).queue_capacity(2);
        let server = listen(Proto::Udp, &fam, &c).await;
        let cl = client(Proto::Udp, &fam, 0, server.local_addr().port(), &c).await;
        send(&cl, "hi").await;
        let peer = accept(&server).await;
        assert_eq!(text(&recv(&peer).await), "hi");
        let done = cl.subscribe("^done$", None).unwrap();
        for i in 1..=5 {
            send(&peer, format!("d{i}")).await;
        }
        // Claimed, so it bypasses the full flow; it comes after d1..d5.
        send(&peer, "done").await;
        within(done.recv()).await.unwrap();
        assert_eq!(cl.stats().dropped, 3, "{ctx}");
        assert_eq!(cl.stats().queued, 2, "{ctx}");
        assert_eq!(text(&recv(&cl).await), "d1", "{ctx}");
        assert_eq!(text(&recv(&cl).await), "d2", "{ctx}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_stops_a_send_blocked_on_a_peer_that_does_not_read() {
    for fam in single_families("close_stops_a_blocked_send") {
        let server = within(tokio::net::TcpListener::bind(fam.target(0, 0)))
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        // 64 MiB cannot fit in the socket buffers of a peer that stops reading.
        let big = vec![7u8; 64 << 20];
        let cfg = PipeConfig::default().max_frame(big.len());
        let pipe = within(Pipe::connect_with(Proto::Tcp, addr, &cfg))
            .await
            .unwrap();
        let (mut peer, _) = within(server.accept()).await.unwrap();
        let sender = pipe.clone();
        let send = tokio::spawn(async move { sender.send(&big).await });
        // The first byte arriving proves the send is under way; then the
        // peer reads no more, so the send blocks.
        let mut first = [0u8; 1];
        within(peer.read_exact(&mut first)).await.unwrap();
        within(pipe.close()).await;
        let r = within(send).await.unwrap();
        assert!(
            matches!(r, Err(Error::Ended(EndReason::Closed))),
            "{}: {r:?}",
            fam.name
        );
        assert_eq!(pipe.end_reason(), Some(EndReason::Closed));
    }
}

/// UDP peers' handlers run in the listener's task until one has to wait;
/// then that peer's messages queue behind it, in order, and other peers are
/// still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_udp_handler_holds_up_only_its_own_peer() {
    for fam in families("a_waiting_udp_handler") {
        let c = cfg(Proto::Udp, &fam);
        let server = listen(Proto::Udp, &fam, &c).await;
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        let gate = release.clone();
        server
            .on_message(move |m, reply| {
                let gate = gate.clone();
                async move {
                    match &m.data[..] {
                        b"hold" => {
                            gate.notified().await;
                            reply.send("held").await
                        }
                        b"boom" => panic!("handler panic on purpose"),
                        _ => reply.send(&m.data).await,
                    }
                }
            })
            .unwrap();
        let port = server.local_addr().port();
        let a = client(Proto::Udp, &fam, 0, port, &c).await;
        let b = client(Proto::Udp, &fam, 1, port, &c).await;
        send(&a, "first").await;
        assert_eq!(text(&recv(&a).await), "first", "{}", fam.name);
        send(&a, "hold").await;
        send(&a, "a2").await;
        send(&a, "a3").await;
        // A's handler waits; B is served meanwhile.
        for i in 0..3 {
            let t = format!("b{i}");
            send(&b, &t).await;
            assert_eq!(text(&recv(&b).await), t, "{}", fam.name);
        }
        release.notify_one();
        for want in ["held", "a2", "a3"] {
            assert_eq!(text(&recv(&a).await), want, "{}: order kept", fam.name);
        }
        // A panic is logged; the peer is served on.
        send(&b, "boom").await;
        send(&b, "after").await;
        assert_eq!(text(&recv(&b).await), "after", "{}", fam.name);
        within(server.close()).await;
    }
}

/// `send_raw` writes bytes without framing: a btpeer header written by hand and a body
/// streamed in pieces arrive as one framed message.
#[tokio::test]
async fn send_raw_streams_a_body_after_a_hand_written_header() {
    for fam in crate::support::single_families("send_raw_streams") {
        let cfg = PipeConfig::default().framing(Framing::Btpeer);
        let server = within(Pipe::listen_with(Proto::Tcp, fam.listen, &cfg))
            .await
            .unwrap();
        let port = server.local_addr().port();
        let client = within(Pipe::connect_with(Proto::Tcp, fam.target(0, port), &cfg))
            .await
            .unwrap();
        let peer = within(server.accept()).await.unwrap();
        let body: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut head = b"REPL".to_vec();
        head.extend_from_slice(&(body.len() as u32).to_be_bytes());
        within(peer.send_raw(&head)).await.unwrap();
        for chunk in body.chunks(7_000) {
            within(peer.send_raw(chunk)).await.unwrap();
        }
        let msg = within(client.recv()).await.unwrap();
        assert_eq!(&msg.data[..4], b"REPL", "{}", fam.name);
        assert_eq!(&msg.data[4..], &body[..], "{}", fam.name);
    }
}

/// `abort` resets a TCP connection: the peer's read fails with a reset, not an end of
/// stream.
#[tokio::test]
async fn abort_resets_the_connection() {
    let server = within(Pipe::listen(Proto::Tcp, "127.0.0.1:0"))
        .await
        .unwrap();
    let mut client = within(TcpStream::connect(server.local_addr()))
        .await
        .unwrap();
    let peer = within(server.accept()).await.unwrap();
    within(peer.send(b"some")).await.unwrap();
    let mut got = [0u8; 4];
    within(client.read_exact(&mut got)).await.unwrap();
    within(peer.abort()).await;
    let mut rest = Vec::new();
    let err = within(client.read_to_end(&mut rest)).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test]
async fn raw_parts_from_many_senders_never_interleave() {
    for fam in families("send_raw_parts") {
        let lp = PipeConfig::default()
            .dual_stack(fam.dual_stack)
            .framing(Framing::LengthPrefixed);
        let server = listen(Proto::Tcp, &fam, &lp).await;
        let raw = PipeConfig::default();
        let c = client(Proto::Tcp, &fam, 0, server.local_addr().port(), &raw).await;
        let peer = accept(&server).await;
        // 16 tasks × 50 messages: a header on the stack and a payload of its own, some
        // small enough to be joined in one write, some far larger than that.
        let mut tasks = Vec::new();
        for t in 0..16u8 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50usize {
                    let len = if i % 5 == 0 { 100_000 + i } else { 10 + i };
                    let payload = vec![t; len];
                    let head = (len as u32).to_be_bytes();
                    c.send_raw_parts(&[&head, &payload]).await.unwrap();
                }
            }));
        }
        let mut per_task = [0usize; 16];
        for _ in 0..16 * 50 {
            let m = recv(&peer).await;
            let t = m.data[0];
            assert!(m.data.iter().all(|&b| b == t), "{}: interleaved", fam.name);
            let i = per_task[t as usize];
            let want = if i % 5 == 0 { 100_000 + i } else { 10 + i };
            assert_eq!(m.data.len(), want, "{}: task {t} message {i}", fam.name);
            per_task[t as usize] += 1;
        }
        for t in tasks {
            within(t).await.unwrap();
        }
        assert_eq!(c.stats().sent, 800);
    }
}

/// Every send method counts one message in `sent`, on TCP and UDP, over every family:
/// `send`, `send_to`, `send_raw` and `send_raw_parts` agree.
#[tokio::test]
async fn every_send_method_counts_one_sent_message() {
    for fam in families("sent-count") {
        for proto in PROTOS {
            let c = cfg(proto, &fam);
            let server = listen(proto, &fam, &c).await;
            let port = server.local_addr().port();
            let cl = client(proto, &fam, 0, port, &c).await;
            let peer = cl.peer_addr().expect("a connected client");
            // The framed sends add the newline; the raw ones carry their own.
            within(cl.send(b"one")).await.unwrap();
            within(cl.send_to(b"two", peer)).await.unwrap();
            within(cl.send_raw(b"three\n")).await.unwrap();
            within(cl.send_raw_parts(&[b"fo", b"ur\n"])).await.unwrap();
            assert_eq!(cl.stats().sent, 4, "{proto}/{}", fam.name);
            // All four arrived, as four messages.
            let accepted = within(server.accept()).await.unwrap();
            for want in ["one", "two", "three", "four"] {
                let m = within(accepted.recv()).await.unwrap();
                let got = String::from_utf8_lossy(&m.data);
                assert_eq!(got.trim_end(), want, "{proto}/{}", fam.name);
            }
            // A send that fails is not counted.
            let stranger: SocketAddr = SocketAddr::new(peer.ip(), 9);
            if proto == Proto::Tcp {
                assert!(within(cl.send_to(b"x", stranger)).await.is_err());
                assert_eq!(cl.stats().sent, 4, "{proto}/{}", fam.name);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The Pipe with tokio's traits and time limits

/// A TCP pipe with raw framing is a tokio byte stream: `copy_bidirectional` relays a raw
/// client to a raw echo peer through it, and a few hundred KiB come back intact.
#[tokio::test]
async fn a_raw_tcp_pipe_relays_with_copy_bidirectional() {
    for fam in single_families("pipe_io_copy") {
        // The echo peer: plain tokio.
        let echo = within(tokio::net::TcpListener::bind(fam.listen))
            .await
            .unwrap();
        let echo_addr = fam.target(0, echo.local_addr().unwrap().port());
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await.unwrap();
            w.shutdown().await.unwrap();
        });
        // The relay: a raw client's connection copied both ways through a pipe.
        let pipe = within(Pipe::connect(Proto::Tcp, echo_addr)).await.unwrap();
        let mut io = pipe.io().unwrap();
        let front = within(tokio::net::TcpListener::bind(fam.listen))
            .await
            .unwrap();
        let front_addr = fam.target(0, front.local_addr().unwrap().port());
        let relay = tokio::spawn(async move {
            let (mut s, _) = front.accept().await.unwrap();
            tokio::io::copy_bidirectional(&mut s, &mut io).await
        });
        // The client writes 300 KiB, ends its side, and reads everything back.
        let body: Vec<u8> = (0..300 * 1024u32)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let client = within(TcpStream::connect(front_addr)).await.unwrap();
        let (mut r, mut w) = client.into_split();
        let to_send = body.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&to_send).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        within(r.read_to_end(&mut back)).await.unwrap();
        within(writer).await.unwrap();
        assert_eq!(back.len(), body.len(), "{}", fam.name);
        assert!(back == body, "{}: the echoed bytes differ", fam.name);
        let (up, down) = within(relay).await.unwrap().unwrap();
        assert_eq!(
            (up, down),
            (body.len() as u64, body.len() as u64),
            "{}",
            fam.name
        );
        assert_eq!(within(pipe.ended()).await, EndReason::Fin, "{}", fam.name);
    }
}

/// A byte stream is refused where messages are not the bytes on the wire, or where
/// something else already takes the messages.
#[tokio::test]
async fn a_byte_stream_is_refused_for_udp_listeners_framing_and_handlers() {
    let unsupported = |r: Result<p2pipe::pipe::PipeIo, Error>| {
        assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
    };
    let tcp = within(Pipe::listen(Proto::Tcp, "127.0.0.1:0"))
        .await
        .unwrap();
    unsupported(tcp.io());
    let udp = within(Pipe::listen(Proto::Udp, "127.0.0.1:0"))
        .await
        .unwrap();
    unsupported(udp.io());
    let udp_client = within(Pipe::connect(Proto::Udp, udp.local_addr()))
        .await
        .unwrap();
    unsupported(udp_client.io());
    let lines = PipeConfig::default().framing(Framing::Lines);
    let framed = within(Pipe::connect_with(Proto::Tcp, tcp.local_addr(), &lines))
        .await
        .unwrap();
    unsupported(framed.io());
    let raw = within(Pipe::connect(Proto::Tcp, tcp.local_addr()))
        .await
        .unwrap();
    raw.on_message(|_, _| async {}).unwrap();
    assert!(matches!(raw.io(), Err(Error::HandlerAttached)));
}

/// A varint length before every payload: a codec written the tokio-util way.
struct Varint;

impl Decoder for Varint {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        let mut len = 0usize;
        for (i, &b) in buf.iter().enumerate().take(4) {
            len |= ((b & 0x7f) as usize) << (7 * i);
            if b & 0x80 == 0 {
                if buf.len() < i + 1 + len {
                    return Ok(None);
                }
                let mut frame = buf.split_to(i + 1 + len);
                let _ = frame.split_to(i + 1);
                return Ok(Some(frame));
            }
        }
        if buf.len() >= 4 {
            return Err(std::io::Error::other("varint longer than 4 bytes"));
        }
        Ok(None)
    }
}

impl tokio_util::codec::Encoder<bytes::Bytes> for Varint {
    type Error = std::io::Error;

    fn encode(&mut self, data: bytes::Bytes, out: &mut BytesMut) -> Result<(), std::io::Error> {
        let mut len = data.len();
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.extend_from_slice(&[b]);
                break;
            }
            out.extend_from_slice(&[b | 0x80]);
        }
        out.extend_from_slice(&data);
        Ok(())
    }
}

/// A pipe whose framing is a tokio-util codec talks to `Framed` with the same codec on a
/// plain tokio socket: every message arrives whole and in order, both ways.
#[tokio::test]
async fn a_codec_framing_talks_to_tokio_framed_both_ways() {
    let sizes = [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000, 5];
    let message =
        |i: usize, len: usize| -> Vec<u8> { (0..len).map(|j| (i * 31 + j) as u8).collect() };
    for fam in families("codec_framing") {
        let cfg = PipeConfig::default()
            .dual_stack(fam.dual_stack)
            .framing(Framing::codec(|| Varint));
        let server = listen(Proto::Tcp, &fam, &cfg).await;
        let raw = raw_tcp(&fam, 0, server.local_addr().port()).await;
        let mut framed = tokio_util::codec::Framed::new(raw, Varint);
        let peer = accept(&server).await;
        for (i, &len) in sizes.iter().enumerate() {
            within(futures::SinkExt::send(&mut framed, message(i, len).into()))
                .await
                .unwrap();
        }
        for (i, &len) in sizes.iter().enumerate() {
            let m = recv(&peer).await;
            assert_eq!(
                &m.data[..],
                &message(i, len)[..],
                "{}: to the pipe, #{i}",
                fam.name
            );
            send(&peer, message(100 + i, len)).await;
        }
        for (i, &len) in sizes.iter().enumerate() {
            let got = within(framed.next()).await.expect("a frame").unwrap();
            assert_eq!(
                &got[..],
                &message(100 + i, len)[..],
                "{}: from the pipe, #{i}",
                fam.name
            );
        }
        assert_eq!(peer.stats().sent, sizes.len() as u64, "{}", fam.name);
    }
}

/// `accept_from` gives the peer's address with its pipe, as tokio's `accept` does, on TCP
/// and UDP, over IPv4 and IPv6.
#[tokio::test]
async fn accept_from_gives_the_peers_address() {
    for fam in single_families("accept_from") {
        for proto in PROTOS {
            let c = cfg(proto, &fam);
            let server = listen(proto, &fam, &c).await;
            let cl = client(proto, &fam, 0, server.local_addr().port(), &c).await;
            // A UDP peer exists once it has sent something.
            send(&cl, b"hello").await;
            let (peer, addr) = within(server.accept_from()).await.unwrap();
            assert_eq!(addr, cl.local_addr(), "{proto}/{}", fam.name);
            assert_eq!(peer.peer_addr(), Some(addr), "{proto}/{}", fam.name);
            assert_eq!(text(&recv(&peer).await), "hello", "{proto}/{}", fam.name);
        }
    }
}

/// `recv` and `accept` under a `tokio::time::timeout` that fires first lose nothing: the
/// next connection and the next message are still delivered.
#[tokio::test]
async fn recv_and_accept_cut_short_by_a_timeout_lose_nothing() {
    for fam in families("timeouts") {
        for proto in PROTOS {
            let what = format!("{proto}/{}", fam.name);
            let c = cfg(proto, &fam);
            let server = listen(proto, &fam, &c).await;
            let early = tokio::time::timeout(SHORT, server.accept()).await;
            assert!(early.is_err(), "{what}: accept returned early");
            let cl = client(proto, &fam, 0, server.local_addr().port(), &c).await;
            send(&cl, b"one").await;
            let (peer, _) = within(server.accept_from()).await.unwrap();
            assert_eq!(text(&recv(&peer).await), "one", "{what}");
            let early = tokio::time::timeout(SHORT, peer.recv()).await;
            assert!(early.is_err(), "{what}: recv returned early");
            send(&cl, b"two").await;
            assert_eq!(text(&recv(&peer).await), "two", "{what}");
            let early = tokio::time::timeout(SHORT, cl.recv()).await;
            assert!(early.is_err(), "{what}: the client's recv returned early");
            send(&peer, b"three").await;
            assert_eq!(text(&recv(&cl).await), "three", "{what}");
        }
    }
}
