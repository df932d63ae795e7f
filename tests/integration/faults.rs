//! A fault-injecting relay built on Pipe `link`, and the file-sharing node through every
//! fault: each fetch and search ends in success or a clear error, never a hang, a panic,
//! or a file that looks complete but is not.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pipe::filer::client::FilerClient;
use p2pipe::filer::msg::QueryId;
use p2pipe::filer::node::{FilerNode, NodeConfig};
use p2pipe::{Framing, Pipe, PipeConfig, Proto};

use crate::support::{within, within_for};

/// What the relay does to the bytes going from the server back to the client.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Nothing: a clean relay.
    Clean,
    /// Resets the client's connection (RST) after this many bytes.
    ResetAfter(usize),
    /// Sends one byte at a time, this long apart.
    Drip(Duration),
    /// Closes the client's connection (FIN) after this many bytes.
    TruncateAfter(usize),
    /// At most this many bytes per second.
    Cap(u64),
    /// Passes everything, then waits this long before closing.
    CloseSlowly(Duration),
}

/// A relay in front of `upstream`, applying `fault` to each connection's replies.
/// The client-to-server direction is a plain Pipe `link`.
pub struct FaultRelay {
    listener: Pipe,
    task: tokio::task::JoinHandle<()>,
}

impl FaultRelay {
    pub async fn start(upstream: SocketAddr, fault: Fault) -> FaultRelay {
        let raw = PipeConfig::default().framing(Framing::Raw);
        let listener = within(Pipe::listen_with(Proto::Tcp, "127.0.0.1:0", &raw))
            .await
            .unwrap();
        let accept = listener.clone();
        let task = tokio::spawn(async move {
            while let Ok(down) = accept.accept().await {
                let raw = raw.clone();
                tokio::spawn(async move {
                    let Ok(up) = Pipe::connect_with(Proto::Tcp, upstream, &raw).await else {
                        down.abort().await;
                        return;
                    };
                    // Requests go up untouched.
                    if down.link(&up).is_err() {
                        return;
                    }
                    relay_down(&up, &down, fault).await;
                });
            }
        });
        FaultRelay { listener, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Server-to-client bytes, with the fault applied.
async fn relay_down(up: &Pipe, down: &Pipe, fault: Fault) {
    let mut sent = 0usize;
    let started = Instant::now();
    loop {
        let msg = match up.recv().await {
            Ok(m) => m,
            Err(_) => break,
        };
        let mut data = &msg.data[..];
        match fault {
            Fault::Clean | Fault::CloseSlowly(_) => {
                if down.send(data).await.is_err() {
                    return;
                }
            }
            Fault::ResetAfter(n) | Fault::TruncateAfter(n) => {
                let room = n.saturating_sub(sent).min(data.len());
                if room > 0 && down.send(&data[..room]).await.is_err() {
                    return;
                }
                sent += room;
                if sent >= n {
                    if matches!(fault, Fault::ResetAfter(_)) {
                        down.abort().await;
                    } else {
                        down.close().await;
                    }
                    up.close().await;
                    return;
                }
            }
            Fault::Drip(gap) => {
                while let Some((b, rest)) = data.split_first() {
                    if down.send([*b]).await.is_err() {
                        return;
                    }
                    data = rest;
                    tokio::time::sleep(gap).await;
                }
            }
            Fault::Cap(rate) => {
                for chunk in data.chunks(1024) {
                    sent += chunk.len();
                    // Pace: never ahead of `rate` bytes per second since the start.
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                    if down.send(chunk).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    if let Fault::CloseSlowly(d) = fault {
        tokio::time::sleep(d).await;
    }
    down.close().await;
}

async fn owner(body: &[u8]) -> (FilerNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("payload.bin"), body).unwrap();
    let mut cfg = NodeConfig::new(dir.path());
    cfg.stabilize_every = None;
    let node = within(FilerNode::start("127.0.0.1:0".parse().unwrap(), cfg))
        .await
        .unwrap();
    (node, dir)
}

/// Every fault, a fetch through it: success with the right bytes, or a clear error and
/// no file at the final path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_through_every_fault_succeeds_or_fails_clearly() {
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    let (node, _d) = owner(&body).await;
    let silence = Duration::from_millis(700);
    let cases = [
        (Fault::Clean, true),
        (Fault::ResetAfter(50_000), false),
        (Fault::TruncateAfter(120_000), false),
        (Fault::TruncateAfter(5), false),
        (Fault::Drip(Duration::from_millis(900)), false),
        (Fault::Cap(2_000_000), true),
        (Fault::CloseSlowly(Duration::from_millis(200)), true),
        (Fault::CloseSlowly(Duration::from_secs(3)), false),
    ];
    for (fault, should_succeed) in cases {
        let relay = FaultRelay::start(node.local_addr(), fault).await;
        let into = tempfile::tempdir().unwrap();
        let c = FilerClient::new(relay.addr()).timeout(silence);
        let r = within_for(
            Duration::from_secs(20),
            c.fetch("payload.bin", into.path(), |_, _| {}),
        )
        .await;
        let final_path = into.path().join("payload.bin");
        match r {
            Ok(got) => {
                assert!(should_succeed, "{fault:?} succeeded unexpectedly");
                assert!(got.verified);
                assert_eq!(std::fs::read(&final_path).unwrap(), body, "{fault:?}");
            }
            Err(e) => {
                assert!(!should_succeed, "{fault:?} failed: {e}");
                let text = e.to_string();
                assert!(
                    !text.is_empty() && text == text.to_lowercase(),
                    "{fault:?}: {text}"
                );
                assert!(
                    !final_path.exists(),
                    "{fault:?} left a file that looks complete"
                );
                println!("{fault:?}: {text}");
            }
        }
    }
    // A slow drip still succeeds when it stays within the silence limit.
    let small: Vec<u8> = b"tiny but dripped".to_vec();
    let (n2, _d2) = owner(&small).await;
    let relay = FaultRelay::start(n2.local_addr(), Fault::Drip(Duration::from_millis(2))).await;
    let into = tempfile::tempdir().unwrap();
    let got = within(FilerClient::new(relay.addr()).timeout(silence).fetch(
        "payload.bin",
        into.path(),
        |_, _| {},
    ))
    .await
    .unwrap();
    assert!(got.verified);
}

/// A search sent through every fault: acknowledged and answered, or a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_through_every_fault_succeeds_or_fails_clearly() {
    let (node, _d) = owner(b"x").await;
    let ret_dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::new(ret_dir.path());
    cfg.stabilize_every = None;
    let ret = within(FilerNode::start("127.0.0.1:0".parse().unwrap(), cfg))
        .await
        .unwrap();
    for fault in [
        Fault::Clean,
        Fault::ResetAfter(3),
        Fault::TruncateAfter(10),
        Fault::Drip(Duration::from_millis(5)),
        Fault::Cap(1_000),
        Fault::CloseSlowly(Duration::from_secs(3)),
    ] {
        let relay = FaultRelay::start(node.local_addr(), fault).await;
        let mut results = ret.results();
        let c = FilerClient::new(relay.addr()).timeout(Duration::from_millis(700));
        let r = within(c.query_history(
            ret.id(),
            "payload",
            3,
            QueryId(rand_id()),
            std::slice::from_ref(ret.id()),
        ))
        .await;
        match r {
            Ok(()) => {
                let (name, _) = within(results.recv()).await.unwrap();
                assert_eq!(name, "payload.bin", "{fault:?}");
            }
            Err(e) => {
                let text = e.to_string();
                assert!(!text.is_empty(), "{fault:?}");
                println!("search {fault:?}: {text}");
            }
        }
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0x5eed);
    N.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
}
