//! A real mosquitto broker for the signalling tests, and plain MQTT clients beside it.
//!
//! [`Mosquitto::start`] runs the Debian `mosquitto` binary (2.x) with a config file
//! generated in a temp dir, on a free loopback port (never 1883, so a system service
//! does not matter), and waits until it accepts TCP connections. Without mosquitto the
//! test is skipped through [`skip`] (a failure under `CI=true`, where `.ci/run` installs
//! it). The broker is killed when dropped.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot};

use crate::support::{skip, spawn_guard, until_listening, which, within};

/// How many times a start on a fresh port is tried before giving up.
const ATTEMPTS: usize = 5;

/// A running mosquitto, killed on drop.
pub struct Mosquitto {
    child: Option<Child>,
    /// The address it listens on.
    pub addr: SocketAddr,
    program: PathBuf,
    dir: tempfile::TempDir,
}

/// The config of a test broker listening on `addr`: anonymous clients, no
/// persistence, its log on stderr.
pub fn config(addr: SocketAddr) -> String {
    format!(
        "listener {} {}\nallow_anonymous true\npersistence false\nlog_dest stderr\nset_tcp_nodelay true\n",
        addr.port(),
        addr.ip()
    )
}

impl Mosquitto {
    /// Starts a broker on `ip` and a free port; `None` (after [`skip`]) when mosquitto is
    /// not installed.
    pub async fn start(test: &str, ip: IpAddr) -> Option<Mosquitto> {
        let Some(program) = which("mosquitto") else {
            skip(
                test,
                "mosquitto is not installed (apt-get install mosquitto)",
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let mut m = Mosquitto {
            child: None,
            addr: SocketAddr::new(ip, 0),
            program,
            dir,
        };
        for attempt in 1..=ATTEMPTS {
            match m.run_on(None).await {
                Ok(()) => return Some(m),
                Err(e) if attempt == ATTEMPTS => panic!("{test}: mosquitto did not start: {e}"),
                Err(_) => continue,
            }
        }
        unreachable!()
    }

    /// The broker's URL, `mqtt://HOST:PORT`.
    pub fn url(&self) -> String {
        match self.addr.ip() {
            IpAddr::V4(ip) => format!("mqtt://{ip}:{}", self.addr.port()),
            IpAddr::V6(ip) => format!("mqtt://[{ip}]:{}", self.addr.port()),
        }
    }

    /// Kills the broker (as a crash would: no goodbye to its clients) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same address, after [`Mosquitto::kill`].
    pub async fn restart(&mut self) {
        let port = self.addr.port();
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            match self.run_on(Some(port)).await {
                Ok(()) => return,
                Err(e) => last = e,
            }
        }
        panic!("mosquitto did not restart on {}: {last}", self.addr);
    }

    /// Writes the config and starts mosquitto on `port` (a free one when `None`), then
    /// waits until it accepts connections. The spawn guard is held from choosing the
    /// port to readiness, so no other test spawns or rebinds meanwhile.
    async fn run_on(&mut self, port: Option<u16>) -> Result<(), String> {
        let _guard = spawn_guard().await;
        let port = match port {
            Some(p) => p,
            None => {
                let l = TcpListener::bind(SocketAddr::new(self.addr.ip(), 0))
                    .map_err(|e| format!("bind {}: {e}", self.addr.ip()))?;
                l.local_addr().expect("local addr").port()
            }
        };
        self.addr.set_port(port);
        let conf = self.dir.path().join("mosquitto.conf");
        let log = self.dir.path().join("mosquitto.log");
        std::fs::write(&conf, config(self.addr)).expect("write mosquitto.conf");
        let stderr = std::fs::File::create(&log).expect("create mosquitto.log");
        let child = Command::new(&self.program)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.program.display()))?;
        let ready = until_listening("mosquitto", self.child.insert(child), self.addr).await;
        if let Err(e) = ready {
            self.kill();
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("{e}; its log:\n{log}"));
        }
        Ok(())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain MQTT client (raw `rumqttc`, no p2pipe code): what anyone with access to a
/// broker can do. It ends with the test (its task is aborted on drop).
pub struct PlainClient {
    /// The client, to publish with.
    pub client: AsyncClient,
    /// Payloads that arrived on the subscribed topic, if any.
    pub seen: mpsc::UnboundedReceiver<Bytes>,
    task: tokio::task::JoinHandle<()>,
}

impl PlainClient {
    /// Connects to `broker` (subscribing to `topic` with QoS 1 if given) and returns once
    /// the broker has acknowledged. Its packet limit is 1 MiB, so it can send payloads
    /// that a transport must refuse.
    pub async fn connect(broker: &Mosquitto, topic: Option<&str>) -> PlainClient {
        let ip = broker.addr.ip().to_string();
        // Each client its own id: a broker disconnects the older of two with one id.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "plain-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut o = MqttOptions::new(id, ip, broker.addr.port());
        o.set_max_packet_size(1 << 20, 1 << 20)
            .set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(o, 16);
        if let Some(t) = topic {
            client
                .subscribe(t, QoS::AtLeastOnce)
                .await
                .expect("queue subscribe");
        }
        let (ready_tx, ready) = oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let wait_for_suback = topic.is_some();
        let (tx, seen) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(ev) = eventloop.poll().await {
                match ev {
                    Event::Incoming(Packet::ConnAck(_)) if !wait_for_suback => {
                        ready_tx.take().map(|r| r.send(()));
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        ready_tx.take().map(|r| r.send(()));
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        let _ = tx.send(p.payload);
                    }
                    _ => {}
                }
            }
        });
        within(ready).await.expect("the plain client connected");
        PlainClient { client, seen, task }
    }

    /// Publishes `payload` to `topic` with QoS 1 (queued; the broker's PUBACK is not
    /// awaited).
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) {
        within(self.client.publish(topic, QoS::AtLeastOnce, false, payload))
            .await
            .expect("queue publish");
    }

    /// The next payload this client saw on its topic.
    pub async fn next(&mut self) -> Bytes {
        within(self.seen.recv())
            .await
            .expect("the plain client is running")
    }
}

impl Drop for PlainClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}
