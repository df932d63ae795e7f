//! The stream tunnel between two P2P nodes on loopback, with a real mosquitto for
//! signalling: concurrent streams both ways with half-closes, the stream limit, and a
//! peer's garbage ending the tunnel but not the node. (The file commands through it:
//! `files_via`.)

use std::net::SocketAddr;

use p2pipe::identity::Identity;
use p2pipe::p2p::tunnel::TableError;
use p2pipe::p2p::{Node, Tunnel, TunnelError, TunnelOptions};
use p2pipe::Proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::mosquitto::Mosquitto;
use crate::support::{within, V4};

/// What the exit's target writes after the client's half-close.
const TRAILER: &[u8] = b"END";

/// A TCP server on 127.0.0.1 that echoes every connection as it reads, and once the
/// client has half-closed writes [`TRAILER`] and closes.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind((V4, 0)).await.expect("bind");
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.write_all(TRAILER).await;
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Two nodes on 127.0.0.1 signalling through `broker`.
async fn nodes(broker: &Mosquitto, seed: u8) -> (Node, Node) {
    let start = |s: u8| {
        Node::builder(Identity::from_seed([s; 32]))
            .bind(V4)
            .map_ports(false)
            .signal(broker.url())
            .start()
    };
    let a = within(start(seed)).await.expect("a starts");
    let b = within(start(seed + 1)).await.expect("b starts");
    (a, b)
}

/// `a` connects to `b` over TCP; the entrance at `a`, the exit at `b` towards `target`.
async fn tunnel(
    a: &Node,
    b: &Node,
    target: SocketAddr,
    exit_opts: TunnelOptions,
) -> (Tunnel, Tunnel) {
    let conn = within(a.connect(b.record(), Proto::Tcp))
        .await
        .expect("connected");
    let arrival = within(b.accept()).await.expect("an arrival");
    let exit = Tunnel::exit(arrival.pipe, target, exit_opts);
    let entrance = within(Tunnel::entrance(conn.pipe, TunnelOptions::default()))
        .await
        .expect("entrance");
    (entrance, exit)
}

/// Sends `data` through a connection to `at` while reading, half-closes, and returns
/// everything read until the other side closed.
async fn round_trip(at: SocketAddr, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let tcp = TcpStream::connect(at).await?;
    let (mut r, mut w) = tcp.into_split();
    let writer = async move {
        w.write_all(&data).await?;
        w.shutdown().await?;
        Ok::<_, std::io::Error>(w)
    };
    let reader = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await?;
        Ok::<_, std::io::Error>(got)
    };
    let (w, got) = tokio::try_join!(writer, reader)?;
    drop(w);
    Ok(got)
}

pub fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8)
        .collect()
}

#[tokio::test]
async fn a_tunnel_carries_concurrent_streams_both_ways_and_their_half_closes() {
    const TEST: &str = "tunnel::a_tunnel_carries_concurrent_streams";
    let Some(broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let (a, b) = nodes(&broker, 41).await;
    let target = echo_server().await;
    let (entrance, exit) = tunnel(&a, &b, target, TunnelOptions::default()).await;
    let at = entrance.local_addr().expect("an entrance has an address");
    assert!(at.ip().is_loopback(), "{at}");
    assert_eq!(exit.local_addr(), None);
    // Eight streams at once, of sizes across the data frame's limit.
    let sizes = [1, 10, 61_440, 61_441, 200_000, 1 << 20, 3, 500_000];
    let streams = sizes.iter().enumerate().map(|(i, &len)| async move {
        let data = pattern(i, len);
        let got = round_trip(at, data.clone()).await.expect("a round trip");
        assert_eq!(got.len(), len + TRAILER.len(), "stream {i}");
        assert!(got[..len] == data[..], "stream {i}: the echo differs");
        assert_eq!(&got[len..], TRAILER, "stream {i}");
    });
    within(futures::future::join_all(streams)).await;
    // The tunnel is still up for more, one after another.
    for i in 0..3 {
        let got = within(round_trip(at, b"again".to_vec())).await.unwrap();
        assert_eq!(got, b"againEND", "{i}");
    }
    entrance.close();
    assert!(within(entrance.closed()).await.is_ok());
    assert!(
        within(exit.closed()).await.is_ok(),
        "the exit ends with the pipe"
    );
    within(a.stop(crate::support::T)).await;
    within(b.stop(crate::support::T)).await;
}

/// Opens a stream through `at` and checks its echo, keeping it open.
async fn held(at: SocketAddr) -> TcpStream {
    let mut tcp = within(TcpStream::connect(at)).await.unwrap();
    within(tcp.write_all(b"ping")).await.unwrap();
    let mut buf = [0u8; 4];
    within(tcp.read_exact(&mut buf)).await.expect("an echo");
    assert_eq!(&buf, b"ping");
    tcp
}

#[tokio::test]
async fn streams_over_the_exits_limit_are_refused_with_a_reset_and_a_freed_slot_serves_again() {
    const TEST: &str = "tunnel::streams_over_the_exits_limit";
    let Some(broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let (a, b) = nodes(&broker, 43).await;
    let target = echo_server().await;
    let (entrance, exit) = tunnel(&a, &b, target, TunnelOptions::default().max_streams(2)).await;
    let at = entrance.local_addr().unwrap();
    let first = held(at).await;
    let _second = held(at).await;
    // A flood beyond the limit: each is closed without a byte, and the tunnel lives.
    for i in 0..5 {
        let mut over = within(TcpStream::connect(at)).await.unwrap();
        let _ = within(over.write_all(b"x")).await;
        let mut got = Vec::new();
        let r = within(over.read_to_end(&mut got)).await;
        assert!(got.is_empty(), "refused stream {i} got {got:?} ({r:?})");
    }
    // A stream that ends frees its slot: once the exit has seen it end, a new one is
    // served (tried until then: the exit learns of the end after the entrance does).
    let (mut r, mut w) = first.into_split();
    within(w.shutdown()).await.unwrap();
    let mut rest = Vec::new();
    within(r.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(rest, TRAILER);
    within(async {
        loop {
            if let Ok(got) = round_trip(at, b"again".to_vec()).await {
                if got == b"againEND" {
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(exit.local_addr().is_none());
    drop(entrance);
    assert!(within(exit.closed()).await.is_ok());
    within(a.stop(crate::support::T)).await;
    within(b.stop(crate::support::T)).await;
}

/// What a case's error must be.
type Expected = fn(&TableError) -> bool;

#[tokio::test]
async fn garbage_from_the_peer_ends_the_tunnel_with_a_clear_error_and_the_node_serves_on() {
    const TEST: &str = "tunnel::garbage_from_the_peer_ends_the_tunnel";
    let Some(broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let (a, b) = nodes(&broker, 45).await;
    let target = echo_server().await;
    // Garbage, then frames that parse but break the stream rules, each on a fresh path.
    let cases: [(&[u8], Expected); 4] = [
        (b"garbage", |e| matches!(e, TableError::Frame(_))),
        (b"\0\0", |e| matches!(e, TableError::Frame(_))),
        (&[0, 0, 0, 7, 2, b'x'], |e| {
            matches!(e, TableError::Unopened(7))
        }),
        (&[0, 0, 0, 0, 1], |e| matches!(e, TableError::Frame(_))),
    ];
    for (i, (garbage, expected)) in cases.into_iter().enumerate() {
        let conn = within(a.connect(b.record(), Proto::Tcp))
            .await
            .expect("connected");
        let arrival = within(b.accept()).await.expect("an arrival");
        let exit = Tunnel::exit(arrival.pipe, target, TunnelOptions::default());
        within(conn.pipe.send(garbage)).await.expect("sent");
        match within(exit.closed()).await {
            Err(TunnelError::Protocol(e)) => {
                assert!(expected(&e), "case {i}: {e}");
                assert!(
                    TunnelError::Protocol(e)
                        .to_string()
                        .contains("broke the tunnel protocol"),
                    "case {i}"
                );
            }
            other => panic!("case {i}: {other:?}"),
        }
        // The exit closed its pipe: the peer sees it end.
        let ended = within(conn.pipe.recv()).await;
        assert!(ended.is_err(), "case {i}: {ended:?}");
    }
    // The entrance refuses an open from the exit side the same way.
    let conn = within(a.connect(b.record(), Proto::Tcp))
        .await
        .expect("connected");
    let arrival = within(b.accept()).await.expect("an arrival");
    let entrance = within(Tunnel::entrance(conn.pipe, TunnelOptions::default()))
        .await
        .unwrap();
    within(arrival.pipe.send([0, 0, 0, 1, 1])).await.unwrap();
    assert!(
        matches!(
            within(entrance.closed()).await,
            Err(TunnelError::Protocol(TableError::OpenFromExit(1)))
        ),
        "the exit may not open streams"
    );
    // Both nodes serve on: a new tunnel carries a stream.
    let (entrance, _exit) = tunnel(&a, &b, target, TunnelOptions::default()).await;
    let got = within(round_trip(
        entrance.local_addr().unwrap(),
        b"still here".to_vec(),
    ))
    .await
    .unwrap();
    assert_eq!(got, b"still hereEND");
    within(a.stop(crate::support::T)).await;
    within(b.stop(crate::support::T)).await;
}
