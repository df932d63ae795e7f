//! A signalling round trip through a local mosquitto: p2pipe's `MqttTransport` beside a
//! raw `rumqttc` client pair doing the same ping-pong, interleaved round by round.
//!
//! - `mqtt_round_trip_200B`: node A publishes 200 B to B's topic and waits for B's echo
//!   on its own topic, 200 times a round. Raw: two `rumqttc::AsyncClient`s, each with an
//!   event loop task; A's `publish` only queues (it does not wait for the PUBACK), B
//!   echoes from its event loop. p2pipe: two `MqttTransport`s; A's `publish` returns
//!   at the broker's PUBACK, then A waits for the echo in its inbox; B echoes from a task
//!   reading its inbox. Same broker, QoS 1 for publishes and subscriptions on both sides.
//!
//! The bench starts its own mosquitto on a free loopback port (and says so and stops if
//! mosquitto is not installed). As in `benches/daemon.rs`, every round measures raw and
//! p2pipe back to back, in alternating order; the figure to quote is the median of the
//! per-round ratios, on a 2-worker runtime and then on a current-thread one.
//!
//! Run with `cargo bench --bench signal`; `P2PIPE_ROUNDS` sets the rounds (default 15).
//! See docs/performance.md.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use p2pipe::identity::{Identity, PublicKey};
use p2pipe::signal::{
    Arrival, Inbox, Incoming, MqttSettings, MqttTransport, Signaller, SignallerConfig, Transport,
};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use tokio::sync::mpsc;

mod interleave;
use interleave::{compare, Side};

const ROUND_TRIPS: usize = 200;
const SIZE: usize = 200;
const PING: &str = "p2pipe/1/bench-ping";
const PONG: &str = "p2pipe/1/bench-pong";
/// The raw pair's topics: their own, so the two sides never see each other's messages.
const RAW_PING: &str = "raw/ping";
const RAW_PONG: &str = "raw/pong";

/// A mosquitto of the bench's own, killed on drop.
struct Broker {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts mosquitto on a free port of 127.0.0.1 and waits until it accepts TCP
    /// connections; `None` if mosquitto is not installed.
    fn start() -> Option<Broker> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let program = std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin")])
            .map(|d| d.join("mosquitto"))
            .find(|p| p.is_file())?;
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\nset_tcp_nodelay true\n"),
        )
        .expect("write mosquitto.conf");
        let child = Command::new(program)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        let broker = Broker {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(broker.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Some(broker)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The raw side: A's client and the echoes arriving on A's topic.
struct Raw(AsyncClient, mpsc::UnboundedReceiver<Bytes>, Bytes);
impl Side for Raw {
    async fn round(&mut self) -> Duration {
        let t = Instant::now();
        for _ in 0..ROUND_TRIPS {
            self.0
                .publish(RAW_PONG, QoS::AtLeastOnce, false, self.2.to_vec())
                .await
                .expect("queue");
            self.1.recv().await.expect("the echo");
        }
        t.elapsed()
    }
}

/// A raw client subscribed to `topic`, connected and subscribed when this returns;
/// arrivals on it go to the receiver, or are echoed to `echo_to` if given.
async fn raw_client(
    addr: SocketAddr,
    topic: &str,
    echo_to: Option<&'static str>,
) -> (AsyncClient, mpsc::UnboundedReceiver<Bytes>) {
    let mut o = MqttOptions::new(format!("raw-{topic}"), addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(32 << 10, 32 << 10);
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true); // as MqttTransport sets it
    eventloop.set_network_options(net);
    client
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let echo = client.clone();
    tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        while let Ok(ev) = eventloop.poll().await {
            match ev {
                Event::Incoming(Packet::SubAck(_)) => {
                    ready_tx.take().map(|r| r.send(()));
                }
                Event::Incoming(Packet::Publish(p)) => match echo_to {
                    Some(to) => {
                        let _ = echo.try_publish(to, QoS::AtLeastOnce, false, p.payload.to_vec());
                    }
                    None => {
                        let _ = tx.send(p.payload);
                    }
                },
                _ => {}
            }
        }
    });
    ready.await.expect("subscribed");
    (client, rx)
}

/// p2pipe's side: A's transport and its inbox.
struct Ours(MqttTransport, mpsc::Receiver<Arrival>, Bytes);
impl Side for Ours {
    async fn round(&mut self) -> Duration {
        let t = Instant::now();
        for _ in 0..ROUND_TRIPS {
            self.0.publish(PONG, self.2.clone()).await.expect("publish");
            self.1.recv().await.expect("the echo");
        }
        t.elapsed()
    }
}

/// Two transports: A on PING, and B on PONG echoing to PING from a task.
async fn ours(url: &str) -> (Ours, Arc<MqttTransport>) {
    let (a_in, a_rx) = Inbox::new(64);
    let (b_in, mut b_rx) = Inbox::new(64);
    let a = MqttTransport::start(url, PING, a_in, MqttSettings::default()).expect("start");
    let b = MqttTransport::start(url, PONG, b_in, MqttSettings::default()).expect("start");
    a.subscribed().await;
    b.subscribed().await;
    let b = Arc::new(b);
    let echo = b.clone();
    tokio::spawn(async move {
        while let Some(m) = b_rx.recv().await {
            let _ = echo.publish(PING, m.payload).await;
        }
    });
    (Ours(a, a_rx, Bytes::from(vec![7u8; SIZE])), b)
}

/// p2pipe's whole signalling path: A's `Signaller` seals 200 B to B, B's opens it and
/// seals it back from a task, A opens the echo.
struct Sealed(Signaller, PublicKey, Bytes);
impl Side for Sealed {
    async fn round(&mut self) -> Duration {
        let t = Instant::now();
        for _ in 0..ROUND_TRIPS {
            self.0.send(&self.1, &self.2).await.expect("send");
            self.0.recv().await.expect("the echo");
        }
        t.elapsed()
    }
}

/// Two signallers on the same broker; B echoes every message to its sender.
async fn sealed(url: &str) -> (Sealed, Arc<Signaller>) {
    let urls = [url];
    let start = |id| Signaller::start(id, &urls, SignallerConfig::default());
    let a = start(Identity::generate()).await.expect("start a");
    let b = Arc::new(start(Identity::generate()).await.expect("start b"));
    let b_key = b.identity().public();
    let echo = b.clone();
    tokio::spawn(async move {
        while let Some(m) = echo.recv().await {
            if let Incoming::Message { from, payload } = m {
                let _ = echo.send(&from, &payload).await;
            }
        }
    });
    (Sealed(a, b_key, Bytes::from(vec![7u8; SIZE])), b)
}

fn main() {
    let Some(broker) = Broker::start() else {
        println!("signal bench: mosquitto is not installed (apt-get install mosquitto); skipped");
        return;
    };
    let url = format!("mqtt://{}", broker.addr);
    let addr = broker.addr;
    interleave::on_both_runtimes(move |rounds| {
        let url = url.clone();
        async move { all(addr, &url, rounds).await }
    });
}

async fn all(addr: SocketAddr, url: &str, rounds: usize) {
    let (raw_a, raw_rx) = raw_client(addr, RAW_PING, None).await;
    let _raw_b = raw_client(addr, RAW_PONG, Some(RAW_PING)).await;
    let mut raw = Raw(raw_a, raw_rx, Bytes::from(vec![7u8; SIZE]));
    let (mut ours, b) = ours(url).await;
    compare(
        "mqtt_round_trip_200B",
        "p2pipe",
        rounds,
        &mut raw,
        &mut ours,
    )
    .await;
    println!(
        "p2pipe transports: A {:?}; B {:?}",
        ours.0.stats(),
        b.stats()
    );
    ours.0.stop().await;
    b.stop().await;

    let (mut sealed, b) = sealed(url).await;
    compare(
        "sealed_round_trip_200B",
        "p2pipe",
        rounds,
        &mut raw,
        &mut sealed,
    )
    .await;
    println!("p2pipe signallers: A {:?}", sealed.0.counters());
    sealed.0.stop().await;
    b.stop().await;
}
