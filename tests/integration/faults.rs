//! A fault-injecting relay built on Pipe `link`, and the file-sharing node through every
//! fault: each fetch and search ends in success or a clear error, never a hang, a panic,
//! or a file that looks complete but is not.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pipe::filer::{FilerClient, FilerNode, NodeConfig, QueryId};
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

/// A search sent through every fault: where the reply gets through whole (clean, a slow
/// drip, a rate cap), the query is acknowledged and its result arrives; where it is cut
/// or held open past the time limit, a clear error of the right kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_through_every_fault_succeeds_or_fails_clearly() {
    use p2pipe::filer::Error;
    /// What a search through a fault must come to.
    enum Outcome {
        /// Acknowledged, and its result arrives.
        Succeeds,
        /// An error that passes the check.
        Fails(fn(&Error) -> bool),
    }
    let cases = [
        (Fault::Clean, Outcome::Succeeds),
        // Reset inside the acknowledgement's header: a receive error, or the end of the
        // stream if the reset comes after the bytes are read.
        (
            Fault::ResetAfter(3),
            Outcome::Fails(|e| matches!(e, Error::Io { .. } | Error::Truncated { got: 3, .. })),
        ),
        // The acknowledgement (`Query ACK: fault-2.bin`: 8 + 22 bytes) cut after 10.
        (
            Fault::TruncateAfter(10),
            Outcome::Fails(|e| {
                matches!(
                    e,
                    Error::Truncated {
                        got: 10,
                        expected: 30
                    }
                )
            }),
        ),
        // 30 bytes, 5 ms apart: well within the time limit.
        (Fault::Drip(Duration::from_millis(5)), Outcome::Succeeds),
        (Fault::Cap(1_000), Outcome::Succeeds),
        // The connection held open past the time limit.
        (
            Fault::CloseSlowly(Duration::from_secs(3)),
            Outcome::Fails(|e| matches!(e, Error::Timeout(_))),
        ),
    ];
    // One file per case, so that a result is never taken for another case's.
    let dir = tempfile::tempdir().unwrap();
    for i in 0..cases.len() {
        std::fs::write(dir.path().join(format!("fault-{i}.bin")), b"x").unwrap();
    }
    let mut cfg = NodeConfig::new(dir.path());
    cfg.stabilize_every = None;
    let node = within(FilerNode::start("127.0.0.1:0".parse().unwrap(), cfg))
        .await
        .unwrap();
    let ret_dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::new(ret_dir.path());
    cfg.stabilize_every = None;
    let ret = within(FilerNode::start("127.0.0.1:0".parse().unwrap(), cfg))
        .await
        .unwrap();
    for (i, (fault, outcome)) in cases.into_iter().enumerate() {
        let file = format!("fault-{i}.bin");
        let relay = FaultRelay::start(node.local_addr(), fault).await;
        let mut results = ret.results();
        let c = FilerClient::new(relay.addr()).timeout(Duration::from_millis(700));
        let r = within(c.query_history(
            ret.id(),
            &file,
            3,
            QueryId(rand_id()),
            std::slice::from_ref(ret.id()),
        ))
        .await;
        match (r, outcome) {
            (Ok(()), Outcome::Succeeds) => {
                let owner = within(async {
                    loop {
                        match results.recv().await.unwrap() {
                            (name, owner) if name == file => return owner,
                            _ => continue,
                        }
                    }
                })
                .await;
                assert_eq!(owner, *node.id(), "{fault:?}");
            }
            (Ok(()), Outcome::Fails(_)) => panic!("{fault:?} succeeded, but it spoils the reply"),
            (Err(e), Outcome::Succeeds) => panic!("{fault:?} failed: {e}"),
            (Err(e), Outcome::Fails(expected)) => {
                let text = e.to_string();
                assert!(expected(&e), "{fault:?} failed with another error: {e:?}");
                assert!(
                    !text.is_empty() && text == text.to_lowercase(),
                    "{fault:?}: {text}"
                );
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
