//! Helpers shared by every integration test module: time limits, address
//! families on loopback, small conveniences around channels, and the record of
//! skipped tests ([`skip`]).
//!
//! Nothing here is specific to one layer, so the pipe and daemon tests can
//! both use it.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::panic::Location;
use std::sync::OnceLock;
use std::time::Duration;

/// The limit for any single await in a test. Generous, because a loaded CI
/// machine can be slow; a healthy run takes milliseconds.
pub const T: Duration = Duration::from_secs(10);

/// A short limit, for the few places that assert that something does *not*
/// happen (a receive that must time out).
pub const SHORT: Duration = Duration::from_millis(150);

/// Runs `f` under the time limit [`T`], panicking with the caller's location
/// if it does not finish in time. Every await in the tests goes through this.
///
/// ```ignore
/// let msg = within(pipe.recv()).await.unwrap();
/// ```
#[track_caller]
pub fn within<F: Future>(f: F) -> impl Future<Output = F::Output> {
    within_for(T, f)
}

/// As [`within`], with an explicit limit.
#[track_caller]
pub fn within_for<F: Future>(limit: Duration, f: F) -> impl Future<Output = F::Output> {
    let at = Location::caller();
    // Nearly every test comes here first: this run's record of skips starts now.
    skips();
    async move {
        match tokio::time::timeout(limit, f).await {
            Ok(v) => v,
            Err(_) => panic!("timed out after {limit:?} waiting at {at}"),
        }
    }
}

/// One way of reaching a server on loopback.
#[derive(Debug, Clone)]
pub struct Family {
    /// Short name for messages: `v4`, `v6` or `dual`.
    pub name: &'static str,
    /// The address a server listens on (port 0: any free port).
    pub listen: SocketAddr,
    /// Whether the listener must be dual-stack (`[::]` taking IPv4 too).
    pub dual_stack: bool,
    /// The addresses clients connect to (and come from), used in turn.
    pub clients: Vec<IpAddr>,
}

impl Family {
    /// The address the `i`-th client uses (clients take turns over the list).
    pub fn client_ip(&self, i: usize) -> IpAddr {
        self.clients[i % self.clients.len()]
    }

    /// The target the `i`-th client connects to for a server on `port`.
    pub fn target(&self, i: usize, port: u16) -> SocketAddr {
        SocketAddr::new(self.client_ip(i), port)
    }

    /// A local address of the `i`-th client's family, any port.
    pub fn client_bind(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.client_ip(i), 0)
    }

    /// The listen address with a given port.
    pub fn listen_on(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.listen.ip(), port)
    }
}

pub const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

fn v4() -> Family {
    Family {
        name: "v4",
        listen: SocketAddr::new(V4, 0),
        dual_stack: false,
        clients: vec![V4],
    }
}

fn v6() -> Family {
    Family {
        name: "v6",
        listen: SocketAddr::new(V6, 0),
        dual_stack: false,
        clients: vec![V6],
    }
}

fn dual() -> Family {
    Family {
        name: "dual",
        listen: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        dual_stack: true,
        clients: vec![V4, V6],
    }
}

/// Whether this machine can use IPv6 loopback and a dual-stack socket;
/// `Err` says why not. Checked once.
pub fn ipv6_status() -> &'static Result<(), String> {
    static STATUS: OnceLock<Result<(), String>> = OnceLock::new();
    STATUS.get_or_init(|| {
        use socket2::{Domain, Protocol, Socket, Type};
        let l = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0))
            .map_err(|e| format!("cannot bind [::1]: {e}"))?;
        let to = l.local_addr().map_err(|e| e.to_string())?;
        std::net::TcpStream::connect_timeout(&to, T)
            .map_err(|e| format!("cannot connect to {to}: {e}"))?;
        std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0))
            .map_err(|e| format!("cannot bind UDP [::1]: {e}"))?;
        let any: SocketAddr = (Ipv6Addr::UNSPECIFIED, 0).into();
        let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| e.to_string())?;
        s.set_only_v6(false)
            .map_err(|e| format!("no dual-stack sockets: {e}"))?;
        s.bind(&any.into())
            .map_err(|e| format!("cannot bind [::]: {e}"))?;
        Ok(())
    })
}

/// Whether the run is in CI, where a missing IPv6 is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// True if IPv6 cases can run. Otherwise prints why they are skipped, or
/// panics under `CI=true`.
pub fn ipv6_usable(test: &str) -> bool {
    match ipv6_status() {
        Ok(()) => true,
        Err(why) if in_ci() => panic!("{test}: IPv6 loopback is required under CI=true: {why}"),
        Err(why) => {
            skip(test, format!("IPv6 and dual-stack cases: {why}"));
            false
        }
    }
}

/// IPv4, IPv6 and dual-stack (the last two only where IPv6 works).
pub fn families(test: &str) -> Vec<Family> {
    let mut f = vec![v4()];
    if ipv6_usable(test) {
        f.push(v6());
        f.push(dual());
    }
    f
}

/// IPv4 and IPv6 only, for tests where dual-stack adds nothing.
pub fn single_families(test: &str) -> Vec<Family> {
    let mut f = vec![v4()];
    if ipv6_usable(test) {
        f.push(v6());
    }
    f
}

/// Receives from a channel under the time limit; panics if it closed.
#[track_caller]
pub fn next<T: Send>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl Future<Output = T> + '_ {
    let at = Location::caller();
    let recv = within(rx.recv());
    async move {
        match recv.await {
            Some(v) => v,
            None => panic!("channel closed while waiting at {at}"),
        }
    }
}

/// Spawning a process copies every open descriptor of this (one, shared)
/// test process into the child until it execs. A socket closed meanwhile
/// stays bound in the child, so a test that closes a port and binds it
/// again at once can fail with "address in use" whenever another test
/// spawns a process at that moment. Tests that rebind a port hold
/// [`rebind_guard`] from the close to the rebind; tests that spawn a process
/// hold [`spawn_guard`] across the spawn and until the child has shown that
/// it runs its own code (printed something, or exited): `spawn()` returns
/// once the child has exec'd, but the kernel may release the descriptors
/// that exec closed only when the child next runs.
static FORK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held while a test closes and rebinds a port: no process is spawned meanwhile.
pub async fn rebind_guard() -> tokio::sync::RwLockReadGuard<'static, ()> {
    within(FORK.read()).await
}

/// Held while a test spawns a process: no port is being rebound meanwhile.
pub async fn spawn_guard() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    within(FORK.write()).await
}

/// 127.0.0.1, and ::1 where IPv6 works (see [`ipv6_usable`]).
pub fn loopbacks(test: &str) -> Vec<IpAddr> {
    let mut v = vec![V4];
    if ipv6_usable(test) {
        v.push(V6);
    }
    v
}

/// As [`spawn_guard`], for synchronous code (the NAT lab spawns `ip`, `nft`
/// and coturn from plain threads). Works inside or outside a tokio runtime:
/// a helper thread takes the lock and hands the guard over, so the wait is
/// bounded by [`T`] either way.
pub fn spawn_guard_blocking() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // If the receiver gave up, the guard is dropped here at once.
        let _ = tx.send(FORK.blocking_write());
    });
    rx.recv_timeout(T)
        .unwrap_or_else(|e| panic!("could not take the spawn guard within {T:?}: {e}"))
}

/// A finished command's stdout as text, after asserting that it succeeded; otherwise
/// panics with both of its streams.
#[track_caller]
pub fn succeeded(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

// ---------------------------------------------------------------------------
// Skips
//
// A test that cannot run here (no IPv6, no NAT lab, no python3, too few open
// files...) calls [`skip`] and returns. Under `CI=true` that is a failure:
// [`skip`] panics. Elsewhere the test passes as far as libtest knows, so the
// skip must be seen some other way. libtest has no hook for the end of a run,
// and it captures what a passing test prints with `print!`/`eprint!` (those
// macros, also in threads the test spawns, write to its capture buffer), so:
//
// 1. [`skip`] writes `SKIPPED <test>: <reason>` at once through a
//    `std::io::stderr()` handle. Writes through the handle bypass the capture
//    (only the macros consult it), so the line shows with or without
//    `--nocapture`; `skips::` checks this by running the test binary.
// 2. The same line goes to `$CARGO_TARGET_TMPDIR/skipped-tests.txt`
//    ([`TALLY_FILE`]), which `.ci/run` prints at its end if present. The file
//    is removed the first time this process calls [`within_for`] or [`skip`],
//    so it never holds an older run's skips.
// 3. At that first call the process also registers an `atexit` handler, which
//    runs after libtest's summary, whether the run passed or failed, and
//    prints the whole list again under a heading: the tally at the end.
//
// A test that runs on a thread of its own, as libtest runs every test, is
// named by that thread's name (`module::test`, as `cargo test` lists it), so a
// helper that skips part of a test on its behalf names the right test.

/// Where this run's skips are recorded, one `SKIPPED <test>: <reason>` line
/// each; `P2PIPE_SKIP_TALLY` names another file (used by `skips::` to run a
/// test binary of its own without touching this run's record).
pub const TALLY_FILE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/skipped-tests.txt");

/// The heading of the list printed at the end of a run that skipped something.
pub const TALLY_HEADING: &str =
    "skipped tests, or parts of tests (libtest counts them as passed; CI=true fails them):";

fn tally_file() -> std::path::PathBuf {
    std::env::var_os("P2PIPE_SKIP_TALLY")
        .map(Into::into)
        .unwrap_or_else(|| TALLY_FILE.into())
}

/// This run's skips. The first call removes an older run's record and sets up
/// the list at exit.
fn skips() -> &'static std::sync::Mutex<Vec<String>> {
    static SKIPS: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    SKIPS.get_or_init(|| {
        let _ = std::fs::remove_file(tally_file());
        // SAFETY: registers a plain function with no arguments to run at exit.
        unsafe { libc::atexit(print_skips_at_exit) };
        std::sync::Mutex::new(Vec::new())
    })
}

/// Runs at exit, after libtest's summary: the list of skips, if any. Must not
/// panic (it is called from C), so every error is ignored.
extern "C" fn print_skips_at_exit() {
    use std::io::Write;
    let Some(list) = skips()
        .lock()
        .ok()
        .filter(|l| !l.is_empty())
        .map(|l| l.join(""))
    else {
        return;
    };
    let text = format!(
        "\n{TALLY_HEADING}\n{list}(listed in {})\n",
        tally_file().display()
    );
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// Records that `test` (or a part of it, which `reason` then names) cannot run
/// here, and why; the caller then returns or leaves that part out. Under
/// `CI=true` it panics instead: in CI nothing is skipped. `test` names the
/// caller in messages; the record names the test libtest runs on this thread
/// when there is one (see the design above).
#[track_caller]
pub fn skip(test: &str, reason: impl std::fmt::Display) {
    let list = skips();
    if in_ci() {
        panic!("{test}: cannot be skipped under CI=true: {reason}");
    }
    let name = match std::thread::current().name() {
        Some(n) if n != "main" && !n.starts_with("tokio-") => n.to_owned(),
        _ => test.to_owned(),
    };
    let line = format!("SKIPPED {name}: {reason}\n");
    let mut list = list.lock().unwrap_or_else(|e| e.into_inner());
    use std::io::Write;
    // Through the handle, not `eprint!`: libtest does not capture this.
    let _ = std::io::stderr().write_all(line.as_bytes());
    let file = tally_file();
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        let _ = writeln!(
            std::io::stderr(),
            "cannot record the skip in {}: {e}",
            file.display()
        );
    }
    list.push(line);
}

/// Finds `program` on PATH, or in /usr/sbin, /sbin, /usr/bin and /bin (root tools
/// and servers such as coturn and mosquitto).
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(std::path::PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Polls a TCP connect to `addr` until the server `what` (the process `child`) accepts
/// one, exits, or [`T`] passes. The connect decides readiness; the pause between
/// refused attempts only spaces them, leaving the server a core to start on.
pub async fn until_listening(
    what: &str,
    child: &mut std::process::Child,
    addr: SocketAddr,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if let Some(status) = child.try_wait().ok().flatten() {
            return Err(format!("{what} exited with {status}"));
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(format!("{what} did not listen on {addr} within {T:?}"));
        }
        let attempt = tokio::time::timeout(left, tokio::net::TcpStream::connect(addr));
        if let Ok(Ok(_)) = attempt.await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
