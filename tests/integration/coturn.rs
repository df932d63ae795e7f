//! A real coturn (`turnserver`) on loopback, for the TURN client's tests.
//!
//! [`Coturn::start`] runs coturn with long-term credentials (user `u`, password
//! [`PASSWORD`], realm `r`), UDP and TCP on one free port of one loopback address,
//! loopback peers allowed (RFC 6062 TCP relaying is on by default), and its log in a
//! temp dir. It waits until the TCP port accepts connections. Without coturn the test
//! is skipped through [`skip`] (a failure under `CI=true`). coturn is killed on drop.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use p2pipe::traverse::turn::{Credentials, TurnServer};

use crate::support::{skip, spawn_guard, until_listening, which};

/// The test user's password.
pub const PASSWORD: &str = "coturn-test-pw";
/// How many ports are tried before giving up.
const ATTEMPTS: usize = 5;

/// A running coturn, killed on drop.
pub struct Coturn {
    child: Option<Child>,
    /// Where it listens, for UDP and TCP.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// A port free for both UDP and TCP on `ip` right now.
fn free_port(ip: IpAddr) -> Option<u16> {
    let tcp = TcpListener::bind(SocketAddr::new(ip, 0)).ok()?;
    let port = tcp.local_addr().ok()?.port();
    UdpSocket::bind(SocketAddr::new(ip, port)).ok()?;
    Some(port)
}

impl Coturn {
    /// Starts coturn on `ip`; `None` (after [`skip`]) when it is not installed.
    pub async fn start(test: &str, ip: IpAddr) -> Option<Coturn> {
        Self::start_with(test, ip, &[]).await
    }

    /// As [`Coturn::start`], with more command-line options.
    pub async fn start_with(test: &str, ip: IpAddr, extra: &[&str]) -> Option<Coturn> {
        let Some(program) = which("turnserver") else {
            skip(test, "coturn is not installed (apt-get install coturn)");
            return None;
        };
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            match Self::run(&program, ip, extra).await {
                Ok(c) => return Some(c),
                Err(e) => last = e,
            }
        }
        panic!("{test}: coturn did not start: {last}");
    }

    async fn run(program: &PathBuf, ip: IpAddr, extra: &[&str]) -> Result<Coturn, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let _guard = spawn_guard().await;
        let port = free_port(ip).ok_or("no free port")?;
        let d = |f: &str| dir.path().join(f).display().to_string();
        let ip_s = ip.to_string();
        let child = Command::new(program)
            .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--lt-cred-mech"])
            .args(["--user", &format!("u:{PASSWORD}"), "--realm", "r"])
            .args(["--allow-loopback-peers", "--no-multicast-peers"])
            .args(["--listening-ip", &ip_s, "--relay-ip", &ip_s])
            .args(["--listening-port", &port.to_string()])
            .args([
                "--log-file",
                &d("turn.log"),
                "--simple-log",
                "--no-stdout-log",
            ])
            .args(["--pidfile", &d("turn.pid"), "--db", &d("turndb")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", program.display()))?;
        let mut c = Coturn {
            child: Some(child),
            addr: SocketAddr::new(ip, port),
            dir,
        };
        let child = c.child.as_mut().expect("just spawned");
        match until_listening("coturn", child, c.addr).await {
            Ok(()) => Ok(c),
            Err(e) => Err(format!("{e}:\n{}", c.log())),
        }
    }

    /// The server with the right credentials and realm.
    pub fn server(&self) -> TurnServer {
        self.server_with("u", PASSWORD)
    }

    /// The server with these credentials, expecting realm `r`.
    pub fn server_with(&self, user: &str, password: &str) -> TurnServer {
        let mut s = TurnServer::new(self.addr, Credentials::new(user, password).unwrap());
        s.realm = Some("r".into());
        s
    }

    /// coturn's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("turn.log")).unwrap_or_default()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
