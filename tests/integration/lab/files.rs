//! Files across NATs, as a user fetches them: `p2pipe share --signal ...` in one peer's
//! namespace prints its signed address, and `p2pipe fetch NAME --from p2pipe1:...` in
//! the other's downloads the file through a tunnel over the P2P path, across a
//! symmetric NAT and a port-restricted cone NAT, with the lab's broker, STUN and TURN.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};

use super::{lab_or_skip, Lab, NatKind, LAB_T};
use crate::support::spawn_guard_blocking;

/// The options of the P2P side of a command in peer `n`'s namespace: the lab's broker,
/// STUN and TURN, a key file of its own, its IPv4 address only.
fn p2p_args(lab: &Lab, dir: &Path, who: &str, n: usize) -> Vec<String> {
    let t = lab.turn();
    vec![
        "--bind".into(),
        lab.peer_ip(n).to_string(),
        "--signal".into(),
        format!("mqtt://{}", lab.broker()),
        "--stun".into(),
        lab.stun_primary().to_string(),
        "--turn".into(),
        format!("turn://{}:{}@{}", t.user, t.password, t.udp),
        "--key-file".into(),
        dir.join(format!("{who}{n}.key")).display().to_string(),
    ]
}

/// A `p2pipe share` running in a peer's namespace.
struct Sharer {
    child: Child,
    /// The signed address it printed.
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Sharer {
    /// Starts `p2pipe share DIR` in peer `n`'s namespace and waits for its signed
    /// address.
    fn start(lab: &Lab, n: usize, folder: &Path, keys: &Path) -> Sharer {
        let mut cmd = Command::new(crate::support::which("ip").unwrap_or_else(|| "ip".into()));
        cmd.args([
            "netns",
            "exec",
            lab.ns_peer(n),
            env!("CARGO_BIN_EXE_p2pipe"),
            "share",
        ])
        .arg(folder)
        .args(["--port", "0"])
        .args(p2p_args(lab, keys, "sharer", n))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = {
            let _guard = spawn_guard_blocking();
            cmd.spawn().expect("spawn p2pipe share")
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
            let mut sent = false;
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(addr) = line.strip_prefix("p2p address ") {
                        let _ = tx.send(addr.to_string());
                        sent = true;
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(LAB_T) {
            Ok(a) => a,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "no signed address from p2pipe share: {e}\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        Sharer {
            child,
            addr,
            stderr,
        }
    }

    /// Stops it with SIGTERM; its exit status and what it wrote to stderr.
    fn stop(mut self) -> (ExitStatus, String) {
        // SAFETY: the child has not been reaped, so its pid still names it.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let (tx, rx) = mpsc::channel();
        let mut child = self.child.take_over();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = rx
            .recv_timeout(LAB_T)
            .expect("p2pipe share stops within the limit after SIGTERM")
            .expect("wait");
        (status, self.stderr.lock().unwrap().clone())
    }
}

/// Moves a child out, leaving a finished one in its place.
trait TakeOver {
    fn take_over(&mut self) -> Child;
}

impl TakeOver for Child {
    fn take_over(&mut self) -> Child {
        let mut done = Command::new("true").spawn().expect("spawn true");
        let _ = done.wait();
        std::mem::replace(self, done)
    }
}

impl Drop for Sharer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes that are not all alike, so that a misplaced piece shows.
fn content(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The strategy named in fetch's "connected to ... by STRATEGY over tcp" line.
fn strategy_of(stderr: &str) -> Option<String> {
    let line = stderr.lines().find(|l| l.starts_with("connected to "))?;
    let (_, rest) = line.split_once(" by ")?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// A file is fetched and verified both ways between a peer behind a symmetric NAT
/// and one behind a port-restricted cone NAT: the sharer's signed address is all the
/// fetcher is given. Punching cannot cross a symmetric NAT towards a port-restricted
/// one, so the relay carries the tunnel; the fetch says so, and the sharer logs it.
#[test]
fn a_file_is_fetched_and_verified_across_a_symmetric_and_a_port_restricted_nat_both_ways() {
    lab_or_skip!();
    let lab = Lab::builder()
        .peers(NatKind::Symmetric, NatKind::PortRestrictedCone)
        .build();
    let keys = tempfile::tempdir().expect("temp dir");
    for (sharer_n, fetcher_n, len) in [(2, 1, 3 * 1024 * 1024 + 17), (1, 2, 700_001)] {
        let at = format!("sharer behind {:?}", lab.kind(sharer_n));
        let shared = tempfile::tempdir().expect("temp dir");
        let out = tempfile::tempdir().expect("temp dir");
        let original = content(len, sharer_n as u32 * 7919);
        std::fs::write(shared.path().join("data.bin"), &original).unwrap();
        let sharer = Sharer::start(&lab, sharer_n, shared.path(), keys.path());
        assert!(sharer.addr.starts_with("p2pipe1:"), "{at}: {}", sharer.addr);
        let mut args: Vec<String> = vec![
            "fetch".into(),
            "data.bin".into(),
            "--from".into(),
            sharer.addr.clone(),
            "-o".into(),
            out.path().display().to_string(),
        ];
        args.extend(p2p_args(&lab, keys.path(), "fetcher", fetcher_n));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let exec = lab.exec_for(
            lab.ns_peer(fetcher_n),
            LAB_T,
            env!("CARGO_BIN_EXE_p2pipe"),
            &args,
        );
        let (stdout, stderr) = (exec.stdout(), exec.stderr());
        assert!(exec.success(), "{at}: fetch failed\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("sha-256 verified on disk"),
            "{at}: {stdout}"
        );
        let got = std::fs::read(out.path().join("data.bin")).expect("the file is there");
        assert_eq!(got.len(), original.len(), "{at}");
        assert!(got == original, "{at}: the bytes differ");
        let strategy = strategy_of(&stderr);
        assert_eq!(strategy.as_deref(), Some("relay"), "{at}: {stderr}");
        let (status, log) = sharer.stop();
        assert!(status.success(), "{at}: {status}: {log}");
        assert!(
            log.contains("p2p peer arrived over tcp by relay"),
            "{at}: the sharer did not log the relayed arrival:\n{log}"
        );
        assert!(log.contains("file served"), "{at}: {log}");
    }
}
