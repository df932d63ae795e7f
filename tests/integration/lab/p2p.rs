//! `p2pipe listen` and `p2pipe connect` between two peers behind two real kernel NATs,
//! as a user runs them: the listener prints its signed address, the connector races
//! every strategy through the lab's mosquitto, coturn (STUN and TURN) and routers, and
//! prints one JSON object. `every_pair_of_kinds_connects` (ignored; run by
//! `scripts/traversal-tables connect`) is the whole matrix, written to
//! `target/traversal/connect.md`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use p2pipe::identity::Identity;
use p2pipe::p2p::{Node, Strategy};
use p2pipe::Proto;
use serde_json::Value;

use super::{lab_or_skip, Lab, NatKind, LAB_T};
use crate::support::spawn_guard_blocking;

/// The port both nodes listen on: the same on both private LANs, so that dialling the
/// other's LAN address reaches yourself.
const PORT: &str = "4000";

/// The options of a node in peer `n`'s namespace: its IPv4 address only (the lab routes
/// IPv6 without a NAT, and the kinds are IPv4's), the lab's broker and STUN server, a
/// key file of its own, and the TURN server when `relay`.
fn node_args(lab: &Lab, dir: &Path, n: usize, relay: bool) -> Vec<String> {
    let mut args = vec![
        "--bind".to_string(),
        lab.peer_ip(n).to_string(),
        "--signal".into(),
        format!("mqtt://{}", lab.broker()),
        "--stun".into(),
        lab.stun_primary().to_string(),
        "--key-file".into(),
        dir.join(format!("node{n}.key")).display().to_string(),
        "--port".into(),
        PORT.into(),
    ];
    if relay {
        let t = lab.turn();
        args.push("--turn".into());
        args.push(format!("turn://{}:{}@{}", t.user, t.password, t.udp));
    }
    args
}

/// A `p2pipe` command running in a peer's namespace until it is stopped, which prints
/// a node's signed address on its stdout: `p2pipe listen`, `p2pipe share --signal`.
pub(super) struct Listener {
    child: Child,
    /// The signed address it printed.
    pub(super) addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Listener {
    /// Starts `p2pipe listen ARGS` in peer `n`'s namespace and waits for its address,
    /// the first line it prints.
    fn start(lab: &Lab, n: usize, args: &[String]) -> Listener {
        let mut all = vec!["listen".to_string()];
        all.extend_from_slice(args);
        Listener::run(lab, n, &all, "")
    }

    /// Starts `p2pipe ARGS` in peer `n`'s namespace and waits for the first line of its
    /// stdout that starts with `prefix`: the signed address follows it.
    pub(super) fn run(lab: &Lab, n: usize, args: &[String], prefix: &'static str) -> Listener {
        let mut cmd = Command::new(which_ip());
        cmd.args([
            "netns",
            "exec",
            lab.ns_peer(n),
            env!("CARGO_BIN_EXE_p2pipe"),
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = {
            let _guard = spawn_guard_blocking();
            cmd.spawn().expect("spawn p2pipe")
        };
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end, so that the command never blocks on a full pipe.
            let mut told = false;
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let (false, Some(addr)) = (told, line.strip_prefix(prefix)) {
                    told = tx.send(addr.to_string()).is_ok();
                }
            }
        });
        let addr = match rx.recv_timeout(LAB_T) {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "no address from p2pipe {args:?}: {e}\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        Listener {
            child,
            addr,
            stderr,
        }
    }

    /// Stops it with SIGTERM; its exit status and what it wrote to stderr.
    pub(super) fn stop(mut self) -> (ExitStatus, String) {
        // SAFETY: the child has not been reaped, so its pid still names it.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let (tx, rx) = mpsc::channel();
        let mut child = std::mem::replace(&mut self.child, dummy());
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = rx
            .recv_timeout(LAB_T)
            .expect("p2pipe stops within the limit after SIGTERM")
            .expect("wait");
        (status, self.stderr.lock().unwrap().clone())
    }
}

/// A finished child, to leave in a listener that has been stopped.
fn dummy() -> Child {
    let mut c = Command::new("true").spawn().expect("spawn true");
    let _ = c.wait();
    c
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which_ip() -> PathBuf {
    crate::support::which("ip").unwrap_or_else(|| "ip".into())
}

/// What `p2pipe connect` printed, and its exit status.
struct Connected {
    json: Value,
    ok: bool,
    stderr: String,
}

/// Runs `p2pipe connect ADDR --json` in peer `n`'s namespace.
fn connect(lab: &Lab, n: usize, addr: &str, args: &[String], extra: &[&str]) -> Connected {
    let mut all: Vec<&str> = vec!["connect", addr];
    all.extend(args.iter().map(String::as_str));
    all.extend_from_slice(extra);
    all.push("--json");
    let exec = lab.exec_for(lab.ns_peer(n), LAB_T, env!("CARGO_BIN_EXE_p2pipe"), &all);
    let stdout = String::from_utf8_lossy(&exec.output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&exec.output.stderr).to_string();
    assert!(!exec.timed_out, "p2pipe connect timed out\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one line on stdout: {stdout:?}\n{stderr}"
    );
    let json: Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let ok = exec.output.status.success();
    assert_eq!(
        json["ok"].as_bool(),
        Some(ok),
        "exit status and ok agree: {json}"
    );
    Connected { json, ok, stderr }
}

/// The outcome of `strategy` in a connect's `tried` list.
fn outcome<'a>(json: &'a Value, strategy: &str) -> Option<&'a str> {
    json["tried"]
        .as_array()?
        .iter()
        .find(|t| t["strategy"] == strategy)
        .and_then(|t| t["outcome"].as_str())
}

/// The keys of the one JSON object, whatever happened.
const KEYS: [&str; 9] = [
    "ok",
    "peer",
    "proto",
    "strategy",
    "local",
    "remote",
    "connect_ms",
    "rtt_ms",
    "tried",
];

fn check_shape(json: &Value) {
    let obj = json.as_object().expect("an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = KEYS.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want, "{json}");
}

#[test]
fn two_port_restricted_peers_connect_over_tcp_and_udp_and_echo_with_the_exact_json() {
    lab_or_skip!();
    let lab = Lab::builder()
        .peers(NatKind::PortRestrictedCone, NatKind::PortRestrictedCone)
        .build();
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = Listener::start(&lab, 2, &node_args(&lab, dir.path(), 2, false));
    assert!(listener.addr.starts_with("p2pipe1:"), "{}", listener.addr);
    let args = node_args(&lab, dir.path(), 1, false);
    for proto in ["tcp", "udp"] {
        let c = connect(&lab, 1, &listener.addr, &args, &["--proto", proto]);
        check_shape(&c.json);
        assert!(c.ok, "{proto}: {}\n{}", c.json, c.stderr);
        assert_eq!(c.json["proto"], proto);
        assert_eq!(c.json["strategy"], "punch", "{}", c.json);
        assert_eq!(outcome(&c.json, "punch"), Some("connected"));
        assert!(
            c.json["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0),
            "{}",
            c.json
        );
        let peer = c.json["peer"].as_str().expect("the peer's node id");
        assert!(listener.addr.len() > peer.len());
        // The direct attempt at the shared private address reached the connector's
        // own host, and was refused there.
        let direct = outcome(&c.json, "direct").unwrap_or_default();
        assert!(
            direct.starts_with("failed") || direct.starts_with("cancelled"),
            "{direct}"
        );
    }
    let (status, stderr) = listener.stop();
    assert!(status.success(), "{status}: {stderr}");
    for arrival in ["over tcp by punch", "over udp by punch"] {
        assert!(
            stderr.contains(arrival),
            "{arrival:?} not logged:\n{stderr}"
        );
    }
}

#[test]
fn two_symmetric_peers_connect_through_the_relay_and_without_one_are_told_why() {
    lab_or_skip!();
    let lab = Lab::builder()
        .peers(NatKind::Symmetric, NatKind::Symmetric)
        .build();
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = Listener::start(&lab, 2, &node_args(&lab, dir.path(), 2, true));
    for proto in ["udp", "tcp"] {
        let c = connect(
            &lab,
            1,
            &listener.addr,
            &node_args(&lab, dir.path(), 1, true),
            &["--proto", proto],
        );
        assert!(c.ok, "{proto}: {}\n{}", c.json, c.stderr);
        assert_eq!(c.json["strategy"], "relay", "{}", c.json);
        let punch = outcome(&c.json, "punch").unwrap_or_default();
        assert!(punch.contains("unpredictable"), "{punch}");
    }
    let c = connect(
        &lab,
        1,
        &listener.addr,
        &node_args(&lab, dir.path(), 1, false),
        &["--proto", "udp"],
    );
    check_shape(&c.json);
    assert!(!c.ok, "{}", c.json);
    assert_eq!(c.json["strategy"], Value::Null);
    assert_eq!(
        outcome(&c.json, "relay"),
        Some("skipped: no relay is configured")
    );
    assert!(c.stderr.contains("unpredictable"), "{}", c.stderr);
}

#[test]
fn only_the_direct_strategy_to_the_shared_private_address_is_refused_as_this_node_itself() {
    lab_or_skip!();
    let lab = Lab::builder()
        .peers(NatKind::FullCone, NatKind::FullCone)
        .build();
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = Listener::start(&lab, 2, &node_args(&lab, dir.path(), 2, false));
    let args = node_args(&lab, dir.path(), 1, false);
    let c = connect(&lab, 1, &listener.addr, &args, &["--strategy", "direct"]);
    assert!(!c.ok, "{}", c.json);
    let direct = outcome(&c.json, "direct").unwrap_or_default();
    assert!(direct.contains("itself"), "{direct}");
    assert_eq!(
        c.json["tried"].as_array().map(Vec::len),
        Some(1),
        "{}",
        c.json
    );
}

/// What one connect in the matrix gave: the winning strategy and the time to connect,
/// or the reason it failed.
fn cell_of(c: &Connected) -> Result<(String, f64), String> {
    if c.ok {
        let strategy = c.json["strategy"].as_str().unwrap_or("?").to_string();
        Ok((strategy, c.json["connect_ms"].as_f64().unwrap_or(f64::NAN)))
    } else {
        Err(c
            .stderr
            .lines()
            .last()
            .unwrap_or("failed")
            .trim()
            .to_string())
    }
}

/// Whether part 2's theory says `a` can reach `b` over `proto` without a relay.
fn works_without_relay(a: NatKind, b: NatKind, proto: &str) -> bool {
    use p2pipe::traverse::punch::tcp::tcp_feasibility;
    use p2pipe::traverse::punch::{udp_feasibility, NatSummary};
    match proto {
        "udp" => udp_feasibility(
            &NatSummary::of_type(a.nat_type()),
            &NatSummary::of_type(b.nat_type()),
        )
        .is_ok(),
        _ => tcp_feasibility(
            &super::tcppunch::tcp_summary(a),
            &super::tcppunch::tcp_summary(b),
        )
        .is_ok(),
    }
}

/// One pair's four connects (TCP and UDP, with a relay and without), in a fresh lab;
/// the cells and what contradicts the theory.
fn pair_cells(a: NatKind, b: NatKind) -> ([String; 2], Vec<String>) {
    let lab = Lab::builder().peers(a, b).build();
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = Listener::start(&lab, 2, &node_args(&lab, dir.path(), 2, true));
    let mut wrong = Vec::new();
    let cells = ["tcp", "udp"].map(|proto| {
        let mut parts = Vec::new();
        for relay in [true, false] {
            let args = node_args(&lab, dir.path(), 1, relay);
            let c = connect(&lab, 1, &listener.addr, &args, &["--proto", proto]);
            let expected = relay || works_without_relay(a, b, proto);
            let got = cell_of(&c);
            if got.is_ok() != expected {
                wrong.push(format!(
                    "{a} -> {b} over {proto}, relay {relay}: {}",
                    c.json
                ));
            }
            parts.push(match got {
                Ok((s, ms)) => format!("{s} {ms:.0} ms"),
                Err(_) => "cannot".to_string(),
            });
        }
        parts.join(" / ")
    });
    drop(listener);
    (cells, wrong)
}

/// The matrix's cells: per ordered pair, the TCP and the UDP cell.
type Cells = std::collections::HashMap<(NatKind, NatKind), [String; 2]>;

#[test]
#[ignore = "every ordered pair of kinds, TCP and UDP, with and without a relay: 49 labs; run by scripts/traversal-tables p2p"]
fn every_pair_of_kinds_matches_the_table() {
    lab_or_skip!();
    let pairs: Vec<(NatKind, NatKind)> = NatKind::ALL
        .iter()
        .flat_map(|&a| NatKind::ALL.iter().map(move |&b| (a, b)))
        .collect();
    let cells: Arc<Mutex<Cells>> = Arc::default();
    let wrong: Arc<Mutex<Vec<String>>> = Arc::default();
    let queue = Arc::new(Mutex::new(pairs));
    // Three labs at a time: each is mostly waiting.
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let (queue, cells, wrong) = (queue.clone(), cells.clone(), wrong.clone());
            super::spawn_bounded(format!("p2p matrix {i}"), move || loop {
                let Some((a, b)) = queue.lock().unwrap().pop() else {
                    break;
                };
                let (c, w) = pair_cells(a, b);
                cells.lock().unwrap().insert((a, b), c);
                wrong.lock().unwrap().extend(w);
            })
        })
        .collect();
    for w in workers {
        w.join_within(std::time::Duration::from_secs(3600));
    }
    let cells = cells.lock().unwrap();
    let mut md = String::new();
    for (i, proto) in ["tcp", "udp"].iter().enumerate() {
        md += &format!("\n**{proto}** (A connects to B; with a relay / without):\n\n");
        md += &super::pair_table(|a, b| cells[&(a, b)][i].clone());
    }
    super::write_traversal_table("p2p", &md);
    let wrong = wrong.lock().unwrap();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Drops what each router forwards to or from the other's WAN address: no direct path
/// between the peers either way, while the relay (at coturn) still works. The rules
/// count.
fn block_direct(lab: &Lab) {
    for (n, other) in [(1, 2), (2, 1)] {
        let wan = lab.wan_ip(other).to_string();
        let rules = format!(
            "add table inet p2pblock\n\
             add chain inet p2pblock guard {{ type filter hook forward priority -10; }}\n\
             add rule inet p2pblock guard ip daddr {wan} counter drop\n\
             add rule inet p2pblock guard ip saddr {wan} counter drop\n"
        );
        let nft = crate::support::which("nft").expect("nft");
        let mut cmd = super::ip(&["netns", "exec", lab.ns_router(n)]);
        cmd.arg(nft).args(["-f", "-"]);
        let out = super::run(cmd, Some(&rules), LAB_T).output;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Packets the blocks have dropped.
fn blocked(lab: &Lab) -> u64 {
    [1, 2]
        .iter()
        .map(|&n| {
            let out = lab.exec(
                lab.ns_router(n),
                "nft",
                &["list", "table", "inet", "p2pblock"],
            );
            String::from_utf8_lossy(&out.stdout)
                .split("packets ")
                .skip(1)
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

fn unblock_direct(lab: &Lab) {
    for n in [1, 2] {
        let out = lab.exec(
            lab.ns_router(n),
            "nft",
            &["delete", "table", "inet", "p2pblock"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A node in peer `n`'s namespace, for the in-process tests: on its IPv4 address only,
/// with the lab's broker, STUN and TURN, a quick first upgrade, and `encrypt`.
async fn lab_node(
    lab_turn: p2pipe::traverse::turn::TurnServer,
    ip: std::net::Ipv4Addr,
    n: u8,
    encrypt: bool,
) -> Node {
    Node::builder(Identity::from_seed([n; 32]))
        .bind(ip.into())
        .signal(format!("mqtt://{}", super::services::BROKER))
        .stun(super::STUN_PRIMARY)
        .turn(lab_turn)
        .upgrade_delay(Duration::from_millis(300))
        .encrypt(encrypt)
        .start()
        .await
        .expect("the node starts")
}

/// Node 2, in peer 2's namespace, echoing every message on every path that reaches it
/// until [`EchoNode::stop`].
struct EchoNode {
    record: p2pipe::identity::PeerRecord,
    done: tokio::sync::oneshot::Sender<()>,
    thread: super::Bounded<(Vec<p2pipe::identity::NodeId>, p2pipe::p2p::StopReport)>,
}

impl EchoNode {
    fn start(lab: &Lab, encrypt: bool) -> EchoNode {
        let (tell, told) = mpsc::channel();
        let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
        let (turn, ip) = (super::turn::server(lab), lab.peer_ip(2));
        let thread = lab.spawn_in(lab.ns_peer(2), move || {
            super::turn::runtime().block_on(async move {
                let node = lab_node(turn, ip, 2, encrypt).await;
                tell.send(node.record().clone()).unwrap();
                let mut arrived = Vec::new();
                let serve = async {
                    while let Some(a) = node.accept().await {
                        arrived.push(a.node_id());
                        a.pipe
                            .on_message(|m, reply| async move { reply.send(&m.data).await })
                            .unwrap();
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = tokio::time::timeout(LAB_T * 4, done_rx) => {}
                }
                (arrived, node.stop(Duration::from_secs(2)).await)
            })
        });
        let record = told.recv_timeout(LAB_T).expect("node 2's record");
        EchoNode {
            record,
            done,
            thread,
        }
    }

    /// Stops the node: who arrived, and what the stop released.
    fn stop(self) -> (Vec<p2pipe::identity::NodeId>, p2pipe::p2p::StopReport) {
        let _ = self.done.send(());
        self.thread.join_within(LAB_T)
    }
}

/// What the connecting side saw of a relayed connection that moved.
#[derive(Debug)]
struct Moved {
    winner: Option<Strategy>,
    report: String,
    moved: Option<Strategy>,
    sent: u32,
    echoed: u32,
    out_of_order: Vec<String>,
}

/// Sends numbered messages every 5 ms over `conn` until it has moved and 100 more
/// echoes came back, checking that every echo is the next number.
async fn stream_across_the_move(mut conn: p2pipe::p2p::Connection) -> Moved {
    let pipe = conn.pipe.clone();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut sender = Some(tokio::spawn({
        let pipe = pipe.clone();
        async move {
            let mut n = 0u32;
            loop {
                pipe.send(format!("{n:08}")).await.expect("send");
                n += 1;
                tokio::select! {
                    _ = &mut stop_rx => return n,
                    () = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
        }
    }));
    let (mut echoed, mut out_of_order, mut moved, mut after) = (0u32, Vec::new(), None, 0);
    let mut stop = Some(stop_tx);
    let mut sent = None;
    loop {
        if sent == Some(echoed) {
            break;
        }
        tokio::select! {
            m = conn.moved(), if moved.is_none() => moved = Some(m),
            m = tokio::time::timeout(LAB_T, pipe.recv()) => {
                let m = m.expect("an echo in time").expect("an echo");
                let want = format!("{echoed:08}");
                if m.data[..] != *want.as_bytes() {
                    out_of_order.push(format!("{} for {want}", String::from_utf8_lossy(&m.data)));
                }
                echoed += 1;
                if moved.is_some() {
                    after += 1;
                }
            }
        }
        if after == 100 {
            if let (Some(tx), Some(task)) = (stop.take(), sender.take()) {
                let _ = tx.send(());
                let n = tokio::time::timeout(LAB_T, task)
                    .await
                    .expect("the sender ends");
                sent = Some(n.expect("the sender"));
            }
        }
    }
    Moved {
        winner: conn.report.winner,
        report: conn.report.to_string(),
        moved: moved.flatten(),
        sent: sent.unwrap_or(0),
        echoed,
        out_of_order,
    }
}

#[test]
fn a_relayed_connection_moves_to_the_punched_path_once_punching_is_allowed_losing_nothing() {
    lab_or_skip!();
    for proto in [Proto::Udp, Proto::Tcp] {
        let lab = Lab::builder()
            .peers(NatKind::PortRestrictedCone, NatKind::PortRestrictedCone)
            .build();
        block_direct(&lab);
        let b = EchoNode::start(&lab, true);
        let record = b.record.clone();
        let (turn, ip1) = (super::turn::server(&lab), lab.peer_ip(1));
        let (won_tx, won_rx) = mpsc::channel();
        let a = lab.spawn_in(lab.ns_peer(1), move || {
            super::turn::runtime().block_on(async move {
                let node = lab_node(turn, ip1, 1, true).await;
                let conn = node.connect(&record, proto).await.expect("connected");
                won_tx.send(conn.report.winner).unwrap();
                let seen = stream_across_the_move(conn).await;
                node.stop(Duration::from_secs(2)).await;
                seen
            })
        });
        // Once the race is over, let an upgrade's punch meet the block, then lift it.
        let won = won_rx.recv_timeout(LAB_T).expect("a connected");
        assert_eq!(won, Some(Strategy::Relay), "{proto}");
        let before = blocked(&lab);
        let started = std::time::Instant::now();
        while blocked(&lab) == before {
            assert!(started.elapsed() < LAB_T, "no upgrade punch met the block");
            std::thread::yield_now();
        }
        unblock_direct(&lab);
        let seen = a.join_within(LAB_T * 3);
        let (_, stopped) = b.stop();
        assert_eq!(seen.winner, Some(Strategy::Relay), "{proto}: {seen:?}");
        assert_eq!(seen.moved, Some(Strategy::Punch), "{proto}: {seen:?}");
        assert!(seen.out_of_order.is_empty(), "{proto}: {seen:?}");
        assert_eq!(
            seen.echoed, seen.sent,
            "{proto}: every message, once: {seen:?}"
        );
        assert!(stopped.relays_closed >= 1, "{proto}: {stopped:?}");
    }
}

/// Everything that crosses the lab's internet namespace while it runs: a packet socket
/// there, read until `stop` is set.
fn capture(lab: &Lab, stop: Arc<std::sync::atomic::AtomicBool>) -> super::Bounded<Vec<u8>> {
    lab.spawn_in(lab.ns_inet(), move || {
        // SAFETY: plain socket calls on a descriptor this function owns and closes.
        unsafe {
            let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto);
            assert!(
                fd >= 0,
                "a packet socket: {}",
                std::io::Error::last_os_error()
            );
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            let set = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            assert_eq!(set, 0);
            let mut all = Vec::new();
            let mut buf = vec![0u8; 65_536];
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n > 0 {
                    all.extend_from_slice(&buf[..n as usize]);
                }
            }
            libc::close(fd);
            all
        }
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// In one lab, B echoes and A connects by `strategies` over each protocol, sending a
/// canary; what crossed the internet namespace meanwhile.
fn canaries_across(lab: &Lab, encrypt: bool, canary: &'static str) -> (Vec<String>, Vec<u8>) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tap = capture(lab, stop.clone());
    let b = EchoNode::start(lab, encrypt);
    let record = b.record.clone();
    let (turn, ip1) = (super::turn::server(lab), lab.peer_ip(1));
    let ways = lab.run_in(lab.ns_peer(1), move || {
        super::turn::runtime().block_on(async move {
            let node = lab_node(turn, ip1, 1, encrypt).await;
            let mut ways = Vec::new();
            for proto in [Proto::Tcp, Proto::Udp] {
                for strategy in [Strategy::Punch, Strategy::Relay] {
                    let opts = p2pipe::p2p::ConnectOptions {
                        strategies: vec![strategy],
                        fast: true,
                        ..Default::default()
                    };
                    let conn = node
                        .connect_with(&record, proto, &opts)
                        .await
                        .expect("connected");
                    conn.pipe.send(canary).await.unwrap();
                    let echo = conn.pipe.recv_timeout(LAB_T).await.unwrap();
                    assert_eq!(&echo.data[..], canary.as_bytes());
                    ways.push(format!("{proto} by {strategy}"));
                    conn.pipe.close().await;
                }
            }
            node.stop(Duration::from_secs(2)).await;
            ways
        })
    });
    b.stop();
    stop.store(true, std::sync::atomic::Ordering::Release);
    (ways, tap.join_within(LAB_T))
}

#[test]
fn traffic_on_the_lab_internet_shows_no_plaintext_and_without_encryption_it_does() {
    lab_or_skip!();
    let lab = Lab::builder()
        .peers(NatKind::FullCone, NatKind::FullCone)
        .build();
    let canary = "p2pipe plaintext canary: if you can read this, it was not encrypted";
    let (ways, seen) = canaries_across(&lab, true, canary);
    assert_eq!(ways.len(), 4, "{ways:?}");
    assert!(
        seen.len() > 10_000,
        "the tap saw the traffic: {} bytes",
        seen.len()
    );
    assert!(!contains(&seen, canary.as_bytes()), "plaintext on the wire");
    // The control: the same exchange unencrypted shows the canary, so the tap works.
    let lab = Lab::builder()
        .peers(NatKind::FullCone, NatKind::FullCone)
        .build();
    let (_, seen) = canaries_across(&lab, false, canary);
    assert!(
        contains(&seen, canary.as_bytes()),
        "the tap missed the clear canary"
    );
}

#[test]
fn a_stranger_sending_into_a_punched_hole_is_ignored_and_the_path_carries_on() {
    lab_or_skip!();
    let lab = Lab::builder()
        .peers(NatKind::FullCone, NatKind::FullCone)
        .build();
    let b = EchoNode::start(&lab, true);
    let record = b.record.clone();
    let (hole_tx, hole_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (turn, ip1) = (super::turn::server(&lab), lab.peer_ip(1));
    let a = lab.spawn_in(lab.ns_peer(1), move || {
        super::turn::runtime().block_on(async move {
            let node = lab_node(turn, ip1, 1, true).await;
            let opts = p2pipe::p2p::ConnectOptions {
                strategies: vec![Strategy::Punch],
                ..Default::default()
            };
            let conn = node
                .connect_with(&record, Proto::Udp, &opts)
                .await
                .expect("punched");
            let (_, remote) = conn.report.path.expect("a path");
            hole_tx.send(remote).unwrap();
            tokio::task::spawn_blocking(move || go_rx.recv_timeout(LAB_T))
                .await
                .unwrap()
                .unwrap();
            // The path still works after the stranger's packets.
            conn.pipe.send(b"still here").await.unwrap();
            let echo = conn.pipe.recv_timeout(LAB_T).await.unwrap();
            node.stop(Duration::from_secs(2)).await;
            echo.data.to_vec()
        })
    });
    let hole = hole_rx.recv_timeout(LAB_T).expect("the punched address");
    let answered = lab.run_in(lab.ns_inet(), move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(crate::support::SHORT)).unwrap();
        // Garbage, and packets shaped like each handshake message and like data.
        for first in [0u8, 1, 2, 3, 0x10, 0xff] {
            let mut p = vec![first; 96];
            p[1..9].copy_from_slice(b"stranger");
            s.send_to(&p, hole).unwrap();
        }
        let mut buf = [0u8; 2048];
        s.recv_from(&mut buf).is_ok()
    });
    go_tx.send(()).unwrap();
    assert_eq!(a.join_within(LAB_T * 2), b"still here");
    let (arrived, _) = b.stop();
    assert!(!answered, "the stranger got an answer");
    let a_id = Identity::from_seed([1; 32]).node_id();
    assert_eq!(arrived, [a_id], "only the connecting node arrived");
}

/// Runs of each strategy in the time-to-connect report.
const RUNS: usize = 20;

/// The median and the 95th percentile of `ms`.
fn median_p95(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95))
}

/// In a fresh lab of `a` and `b`: [`RUNS`] connects by `strategy` over `proto`, each
/// followed by one 64-byte echo; the times to the committed path and to the first echo,
/// in ms. B is an echoing node; A connects again and again with the same node.
fn time_strategy(a: NatKind, b: NatKind, strategy: Strategy, proto: Proto) -> (Vec<f64>, Vec<f64>) {
    let lab = Lab::builder().peers(a, b).build();
    let b = EchoNode::start(&lab, true);
    let record = b.record.clone();
    let (turn, ip1) = (super::turn::server(&lab), lab.peer_ip(1));
    let times = lab.run_in_for(lab.ns_peer(1), LAB_T * 4, move || {
        super::turn::runtime().block_on(async move {
            let node = lab_node(turn, ip1, 1, true).await;
            let opts = p2pipe::p2p::ConnectOptions {
                strategies: vec![strategy],
                fast: true,
                ..Default::default()
            };
            let (mut connect, mut first) = (Vec::new(), Vec::new());
            for _ in 0..RUNS {
                let start = std::time::Instant::now();
                let conn = node
                    .connect_with(&record, proto, &opts)
                    .await
                    .expect("connected");
                connect.push(start.elapsed().as_secs_f64() * 1e3);
                conn.pipe.send([7u8; 64]).await.unwrap();
                conn.pipe.recv_timeout(LAB_T).await.unwrap();
                first.push(start.elapsed().as_secs_f64() * 1e3);
                conn.pipe.close().await;
            }
            node.stop(Duration::from_secs(2)).await;
            (connect, first)
        })
    });
    b.stop();
    times
}

/// The baseline in a lab of `a` and an open `b`: a plain tokio connect (TCP) or socket
/// (UDP) to an echo server on B, and its first 64-byte echo, [`RUNS`] times, in ms.
fn time_raw(proto: Proto) -> Vec<f64> {
    let lab = Lab::builder()
        .peers(NatKind::PortRestrictedCone, NatKind::Open)
        .build();
    let addr = std::net::SocketAddr::new(lab.peer_ip(2).into(), 4100);
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = lab.spawn_in(lab.ns_peer(2), move || {
        super::turn::runtime().block_on(async move {
            let echo = p2pipe::Pipe::listen(proto, addr).await.unwrap();
            ready_tx.send(()).unwrap();
            for _ in 0..RUNS {
                let peer = tokio::time::timeout(LAB_T, echo.accept())
                    .await
                    .unwrap()
                    .unwrap();
                let m = peer.recv_timeout(LAB_T).await.unwrap();
                peer.send(&m.data).await.unwrap();
            }
        })
    });
    ready_rx.recv_timeout(LAB_T).unwrap();
    let times = lab.run_in(lab.ns_peer(1), move || {
        super::turn::runtime().block_on(async move {
            let mut first = Vec::new();
            for _ in 0..RUNS {
                let start = std::time::Instant::now();
                match proto {
                    Proto::Tcp => {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                        s.write_all(&[7u8; 64]).await.unwrap();
                        let mut buf = [0u8; 64];
                        s.read_exact(&mut buf).await.unwrap();
                    }
                    Proto::Udp => {
                        let s = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
                        s.send_to(&[7u8; 64], addr).await.unwrap();
                        let mut buf = [0u8; 64];
                        tokio::time::timeout(LAB_T, s.recv_from(&mut buf))
                            .await
                            .unwrap()
                            .unwrap();
                    }
                }
                first.push(start.elapsed().as_secs_f64() * 1e3);
            }
            first
        })
    });
    server.join_within(LAB_T);
    times
}

#[test]
#[ignore = "the time-to-connect report: 20 connects per strategy and protocol in fresh labs; run by scripts/traversal-tables p2p-time"]
fn time_to_connect_per_strategy() {
    lab_or_skip!();
    use NatKind::{Open, PortRestrictedCone as Prc};
    // Where each strategy is the one that works: direct to an open node, reverse from
    // one, punch and the relay between two port-restricted NATs.
    let cases = [
        (Strategy::Direct, Prc, Open),
        (Strategy::Reverse, Open, Prc),
        (Strategy::Punch, Prc, Prc),
        (Strategy::Relay, Prc, Prc),
    ];
    let mut md = String::from(
        "| strategy | proto | lab (A → B) | connect median | connect p95 | first echo median | first echo p95 | first echo ÷ raw tokio |\n|---|---|---|---|---|---|---|---|\n",
    );
    for proto in [Proto::Tcp, Proto::Udp] {
        let (raw, _) = median_p95(time_raw(proto));
        md += &format!(
            "| raw tokio (baseline) | {proto} | {Prc} → {Open} | – | – | {raw:.2} ms | – | 1.0 |\n"
        );
        for (strategy, a, b) in cases {
            let (connect, first) = time_strategy(a, b, strategy, proto);
            let (cm, cp) = median_p95(connect);
            let (fm, fp) = median_p95(first);
            md += &format!(
                "| {strategy} | {proto} | {a} → {b} | {cm:.1} ms | {cp:.1} ms | {fm:.1} ms | {fp:.1} ms | {:.0} |\n",
                fm / raw
            );
        }
    }
    // One table per build: the test profile's, and the release one's (`--release`).
    let block = if cfg!(debug_assertions) {
        "p2p-time"
    } else {
        "p2p-time-release"
    };
    super::write_traversal_table(block, &md);
}

#[test]
fn a_port_mapped_on_either_router_connects_where_nothing_else_can() {
    lab_or_skip!();
    const TEST: &str = "lab::p2p::a_port_mapped_on_either_router_connects_where_nothing_else_can";
    if !super::mapping::miniupnpd_or_skip(TEST) {
        return;
    }
    // The symmetric side can neither punch to the port-restricted one nor be reached:
    // only the mapping works, made by B (A connects to it) or by A (B is asked to come).
    for (mapper, kinds) in [
        (2, (NatKind::Symmetric, NatKind::PortRestrictedCone)),
        (1, (NatKind::PortRestrictedCone, NatKind::Symmetric)),
    ] {
        let lab = Lab::builder().peers(kinds.0, kinds.1).build();
        let _upnpd = super::mapping::MiniUpnpd::start(&lab, mapper);
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = Listener::start(&lab, 2, &node_args(&lab, dir.path(), 2, false));
        let args = node_args(&lab, dir.path(), 1, false);
        for proto in ["tcp", "udp"] {
            let at = format!("mapped by {mapper}, {proto}");
            let c = connect(&lab, 1, &listener.addr, &args, &["--proto", proto]);
            assert!(c.ok, "{at}: {}\n{}", c.json, c.stderr);
            assert_eq!(c.json["strategy"], "upnp", "{at}: {}", c.json);
            let punch = outcome(&c.json, "punch").unwrap_or_default();
            assert!(punch.contains("unpredictable"), "{at}: {punch}");
        }
        let (status, stderr) = listener.stop();
        assert!(status.success(), "{stderr}");
        assert!(stderr.contains("by upnp"), "{stderr}");
        if mapper == 2 {
            assert!(stderr.contains("2 port mappings deleted"), "{stderr}");
        }
    }
}
