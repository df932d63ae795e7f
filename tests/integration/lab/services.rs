//! What a peers lab adds on the internet side and at its routers: coturn's
//! TURN credentials and flags, a mosquitto broker for signalling, and the
//! home router's input filter. See docs/nat-lab.md ("Two peers").

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{ip, run_in_netns, which, LAB_T, STUN_PRIMARY};
use crate::support::spawn_guard_blocking;

/// mosquitto's address in a peers lab, on the internet's loopback.
pub const BROKER: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 20), 1883));

/// The lab's TURN service: coturn at its primary address, with long-term
/// credentials made up for this lab.
#[derive(Clone)]
pub struct TurnServer {
    /// coturn's UDP address.
    pub udp: SocketAddr,
    /// coturn's TCP address (the same address and port).
    pub tcp: SocketAddr,
    /// The long-term credential's user name.
    pub user: String,
    /// Its password (never printed: see the `Debug` impl).
    pub password: String,
    /// coturn's realm.
    pub realm: String,
}

impl TurnServer {
    /// New credentials: a random password per lab.
    pub fn new() -> TurnServer {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        TurnServer {
            udp: STUN_PRIMARY,
            tcp: STUN_PRIMARY,
            user: "p2pipe".into(),
            password: format!("{:016x}", h.finish()),
            realm: "lab.p2pipe.test".into(),
        }
    }

    /// coturn's arguments for relaying with these credentials (in place of
    /// `--stun-only`): long-term credentials, relays on the primary
    /// addresses, UDP and TCP transports and RFC 6062 TCP relaying (on unless
    /// `--no-tcp-relay`).
    pub fn coturn_args(&self) -> Vec<String> {
        let relay6 = super::STUN6_IP1.to_string();
        [
            "--lt-cred-mech",
            "--user",
            &format!("{}:{}", self.user, self.password),
            "--realm",
            &self.realm,
            "--relay-ip",
            &STUN_PRIMARY.ip().to_string(),
            "--relay-ip",
            &relay6,
            "--min-port",
            "49152",
            "--max-port",
            "65535",
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnServer")
            .field("udp", &self.udp)
            .field("tcp", &self.tcp)
            .field("user", &self.user)
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

/// The processes a peers lab runs besides coturn.
#[derive(Default)]
pub struct Services {
    /// mosquitto at [`BROKER`].
    pub mosquitto: Option<Child>,
    /// coturn's TURN credentials, in a peers lab.
    pub turn: Option<TurnServer>,
}

impl Services {
    /// Stops mosquitto (if running).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.mosquitto.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts mosquitto in namespace `inet` at [`BROKER`] (anonymous clients, no
/// persistence, its log in `dir`), and waits until it accepts a connection
/// (a bounded poll, 100 ms per try, 15 s in all).
pub fn start_mosquitto(inet: &str, dir: &Path) -> Child {
    let conf = dir.join("mosquitto.conf");
    let log = dir.join("mosquitto.log");
    std::fs::write(&conf, crate::mosquitto::config(BROKER)).expect("write mosquitto.conf");
    let stderr = std::fs::File::create(&log).expect("create mosquitto.log");
    let mut cmd = ip(&["netns", "exec", inet]);
    cmd.arg(which("mosquitto").expect("mosquitto"))
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut child = {
        let _no_rebind = spawn_guard_blocking();
        cmd.spawn().expect("spawn mosquitto")
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("mosquitto exited with {status}:\n{log}");
        }
        let up = run_in_netns(inet, LAB_T, || {
            TcpStream::connect_timeout(&BROKER, Duration::from_millis(100)).is_ok()
        });
        if up {
            return child;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("mosquitto did not accept connections at {BROKER} within 15 s:\n{log}");
        }
        // A poll interval, not synchronisation: readiness is the connect above.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A home router's own input filter: new connections and datagrams from the
/// WAN addressed to the router itself are dropped silently (no reset, no
/// port-unreachable), except replies to its own STUN requests, which a
/// port-mapping daemon on the router needs.
pub fn router_input_ruleset() -> String {
    "table inet lab_router {\n  chain input {\n    \
     type filter hook input priority filter; policy accept;\n    \
     iifname \"wan\" ip saddr 203.0.113.0/24 udp sport { 3478, 3479 } accept\n    \
     iifname \"wan\" ct state new drop\n  }\n}\n"
        .into()
}
