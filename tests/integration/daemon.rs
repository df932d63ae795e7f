//! The Daemon: many listeners, one handler, limits and shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use p2pipe::pipe::EndReason;
use p2pipe::{Daemon, Framing, Message, Pipe, PipeConfig, Proto};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use crate::support::{loopbacks, within, T};

fn echo() -> impl Fn(Message, Pipe) -> futures::future::BoxFuture<'static, p2pipe::pipe::Result<()>>
       + Send
       + Sync
       + 'static {
    |msg: Message, reply: Pipe| Box::pin(async move { reply.send(&msg.data).await })
}

async fn round_trip(proto: Proto, to: SocketAddr, text: &[u8]) {
    let client = within(Pipe::connect(proto, to)).await.expect("connect");
    within(client.send(text)).await.expect("send");
    let got = within(client.recv()).await.expect("echo");
    assert_eq!(&got.data[..], text, "{proto} {to}");
    within(client.close()).await;
}

#[tokio::test]
async fn echo_on_every_protocol_and_family_with_one_port() {
    let ips = loopbacks(module_path!());
    let daemon = within(
        Daemon::builder(echo())
            .listen_all(ips.clone(), [0], [Proto::Tcp, Proto::Udp])
            .start(),
    )
    .await
    .expect("start");
    let bound = daemon.local_addrs().to_vec();
    assert_eq!(bound.len(), ips.len() * 2);
    let port = bound[0].1.port();
    assert_ne!(port, 0);
    assert!(
        bound.iter().all(|(_, a)| a.port() == port),
        "one port for all: {bound:?}"
    );
    for (proto, addr) in &bound {
        round_trip(*proto, *addr, format!("hello {proto} {addr}").as_bytes()).await;
    }
    assert_eq!(daemon.stats().accepted, bound.len() as u64);
    let report = within(daemon.shutdown(T)).await;
    assert_eq!(report.aborted, 0);
}

#[tokio::test]
async fn dual_stack_listener_serves_both_families() {
    if !crate::support::ipv6_usable("dual_stack_listener_serves_both_families") {
        return;
    }
    let daemon = within(
        Daemon::builder(echo())
            .config(PipeConfig::default().dual_stack(true))
            .listen_all(
                ["::".parse::<IpAddr>().unwrap()],
                [0],
                [Proto::Tcp, Proto::Udp],
            )
            .start(),
    )
    .await
    .expect("start");
    for (proto, addr) in daemon.local_addrs().to_vec() {
        for ip in ["127.0.0.1", "::1"] {
            let to = SocketAddr::new(ip.parse().unwrap(), addr.port());
            round_trip(proto, to, b"dual").await;
        }
    }
    within(daemon.shutdown(T)).await;
}

#[tokio::test]
async fn shutdown_frees_every_port_for_an_immediate_rebind() {
    let ips = loopbacks(module_path!());
    for _ in 0..3 {
        let first = within(
            Daemon::builder(echo())
                .listen_all(ips.clone(), [0], [Proto::Tcp, Proto::Udp])
                .start(),
        )
        .await
        .expect("start");
        let addrs = first.local_addrs().to_vec();
        // A connected client is still there when the daemon stops.
        let client = within(Pipe::connect(Proto::Tcp, addrs[0].1)).await.unwrap();
        within(client.send(b"x")).await.unwrap();
        within(client.recv()).await.unwrap();
        let no_fork = crate::support::rebind_guard().await;
        within(first.shutdown(T)).await;
        assert!(matches!(
            within(client.ended()).await,
            EndReason::Fin | EndReason::Reset
        ));

        let mut b = Daemon::builder(echo());
        for (proto, addr) in &addrs {
            b = b.listen(*proto, *addr);
        }
        let second = within(b.start()).await.expect("rebind at once");
        drop(no_fork);
        assert_eq!(second.local_addrs(), &addrs[..]);
        for (proto, addr) in &addrs {
            round_trip(*proto, *addr, b"again").await;
        }
        within(second.shutdown(T)).await;
    }
}

#[tokio::test]
async fn shutdown_waits_for_busy_handlers_until_the_deadline() {
    let release = Arc::new(Notify::new());
    let entered = Arc::new(Notify::new());
    let (r, e) = (release.clone(), entered.clone());
    let handler = move |msg: Message, reply: Pipe| {
        let (r, e) = (r.clone(), e.clone());
        async move {
            if &msg.data[..] == b"hold" {
                e.notify_one();
                r.notified().await;
            }
            reply.send(&msg.data).await
        }
    };
    let daemon = within(
        Daemon::builder(handler)
            .listen(Proto::Tcp, "127.0.0.1:0".parse().unwrap())
            .start(),
    )
    .await
    .unwrap();
    let addr = daemon.local_addrs()[0].1;
    let busy = within(Pipe::connect(Proto::Tcp, addr)).await.unwrap();
    let idle = within(Pipe::connect(Proto::Tcp, addr)).await.unwrap();
    within(idle.send(b"ping")).await.unwrap();
    within(idle.recv()).await.unwrap();
    within(busy.send(b"hold")).await.unwrap();
    within(entered.notified()).await;
    let report = within(daemon.shutdown(Duration::from_millis(300))).await;
    assert_eq!(report.aborted, 1, "{report:?}");
    assert_eq!(report.finished, 1, "{report:?}");
    within(busy.ended()).await;
    within(idle.ended()).await;
}

#[tokio::test]
async fn connection_limit_turns_extra_peers_away() {
    let daemon = within(
        Daemon::builder(echo())
            .max_connections(2)
            .listen(Proto::Tcp, "127.0.0.1:0".parse().unwrap())
            .start(),
    )
    .await
    .unwrap();
    let addr = daemon.local_addrs()[0].1;
    let mut kept = Vec::new();
    for _ in 0..2 {
        let c = within(Pipe::connect(Proto::Tcp, addr)).await.unwrap();
        within(c.send(b"in")).await.unwrap();
        within(c.recv()).await.unwrap();
        kept.push(c);
    }
    let extra = within(Pipe::connect(Proto::Tcp, addr)).await.unwrap();
    let reason = within(extra.ended()).await;
    assert!(
        matches!(reason, EndReason::Fin | EndReason::Reset),
        "{reason:?}"
    );
    assert_eq!(daemon.stats().rejected, 1);
    assert_eq!(daemon.stats().active, 2);
    // The two admitted peers are still served; freeing one admits another.
    round_trip_on(&kept[0], b"still here").await;
    within(kept.pop().unwrap().close()).await;
    let mut admitted = false;
    for _ in 0..50 {
        let c = within(Pipe::connect(Proto::Tcp, addr)).await.unwrap();
        if within(c.send(b"later")).await.is_ok() {
            if let Ok(m) = c.recv_timeout(Duration::from_millis(200)).await {
                assert_eq!(&m.data[..], b"later");
                admitted = true;
                break;
            }
        }
    }
    assert!(admitted, "a freed slot admits a new peer");
    within(daemon.shutdown(T)).await;
}

async fn round_trip_on(p: &Pipe, text: &[u8]) {
    within(p.send(text)).await.unwrap();
    assert_eq!(&within(p.recv()).await.unwrap().data[..], text);
}

#[tokio::test]
async fn idle_peers_are_closed() {
    for proto in [Proto::Tcp, Proto::Udp] {
        let daemon = within(
            Daemon::builder(echo())
                .idle_timeout(Duration::from_millis(150))
                .listen(proto, "127.0.0.1:0".parse().unwrap())
                .start(),
        )
        .await
        .unwrap();
        let addr = daemon.local_addrs()[0].1;
        let client = within(Pipe::connect(proto, addr)).await.unwrap();
        round_trip_on(&client, b"hello").await;
        if proto == Proto::Tcp {
            within(client.ended()).await;
        }
        // The daemon counts the idle close without the client doing anything.
        within(async {
            while daemon.stats().idle_closed == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert_eq!(daemon.stats().active, 0, "{proto}");
        within(daemon.shutdown(T)).await;
    }
}

#[tokio::test]
async fn failing_and_panicking_handlers_do_not_stop_the_daemon() {
    let handler = |msg: Message, reply: Pipe| async move {
        match &msg.data[..] {
            b"fail" => Err("refused".to_string()),
            b"panic" => panic!("handler panic on purpose"),
            _ => reply.send(&msg.data).await.map_err(|e| e.to_string()),
        }
    };
    // Length-prefixed, so that back-to-back TCP messages stay apart.
    let cfg = PipeConfig::default().framing(Framing::LengthPrefixed);
    let daemon = within(
        Daemon::builder(handler)
            .config(cfg.clone())
            .listen_all(loopbacks(module_path!()), [0], [Proto::Tcp, Proto::Udp])
            .start(),
    )
    .await
    .unwrap();
    for (proto, addr) in daemon.local_addrs().to_vec() {
        let a = within(Pipe::connect_with(proto, addr, &cfg)).await.unwrap();
        let b = within(Pipe::connect_with(proto, addr, &cfg)).await.unwrap();
        round_trip_on(&a, b"a1").await;
        round_trip_on(&b, b"b1").await;
        within(a.send(b"fail")).await.unwrap();
        round_trip_on(&a, b"a2").await; // an error leaves the peer served
        within(a.send(b"panic")).await.unwrap();
        if proto == Proto::Tcp {
            // A panic closes that peer only.
            within(a.ended()).await;
        }
        round_trip_on(&b, b"b2").await;
        let fresh = within(Pipe::connect_with(proto, addr, &cfg)).await.unwrap();
        round_trip_on(&fresh, b"new").await;
    }
    let s = daemon.stats();
    let listeners = daemon.local_addrs().len() as u64;
    assert_eq!(s.handler_errors, listeners);
    assert_eq!(s.handler_panics, listeners);
    within(daemon.shutdown(T)).await;
}

#[tokio::test]
async fn an_oversized_frame_ends_only_its_connection() {
    let cfg = PipeConfig::default()
        .framing(Framing::LengthPrefixed)
        .max_frame(1024);
    let daemon = within(
        Daemon::builder(echo())
            .config(cfg.clone())
            .listen_all(loopbacks(module_path!()), [0], [Proto::Tcp])
            .start(),
    )
    .await
    .unwrap();
    for (_, addr) in daemon.local_addrs().to_vec() {
        let mut raw = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
        within(raw.write_all(b"\xff\xff\xff\xffjunk"))
            .await
            .unwrap();
        // The daemon closes it: reading reaches EOF or a reset.
        let mut buf = [0u8; 16];
        let n = within(tokio::io::AsyncReadExt::read(&mut raw, &mut buf)).await;
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        let good = within(Pipe::connect_with(Proto::Tcp, addr, &cfg))
            .await
            .unwrap();
        round_trip_on(&good, b"framed").await;
    }
    within(daemon.shutdown(T)).await;
}
