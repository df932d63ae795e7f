//! The NAT lab: Linux network namespaces joined by veth pairs, nftables rules
//! on the routers that play each kind of NAT, and coturn as a third-party
//! STUN server on the "internet" side.
//!
//! ```text
//!  host ns                 rtr1 ns                       inet ns
//!  up1 198.18.1.2/24 --- lan 198.18.1.1/24
//!                          wan 198.51.100.1/30 --- r1 198.51.100.2/30
//!                                                       lo 203.0.113.10, 203.0.113.11
//!  up2 198.18.2.2/24 --- lan 198.18.2.1/24              (coturn, STUN only)
//!   (optional)             wan 198.51.100.5/30 --- r2 198.51.100.6/30
//!                          rtr2 ns
//! ```
//!
//! Every lab has its own namespace names (`p2l-<pid>-<n>-<role>`), so tests
//! build labs in parallel; [`Lab`]'s `Drop` stops coturn, deletes the
//! namespaces and the temporary directory, also when a test panics. Only
//! the documentation ranges 198.18.0.0/15, 198.51.100.0/24 and
//! 203.0.113.0/24 are used, and no interface leaves the lab's namespaces.
//!
//! Everything here is synchronous: commands run under a deadline and are
//! killed when it passes; sockets are created inside a namespace by
//! [`Lab::run_in`] (a thread that entered the namespace) and can then be used
//! from any thread or runtime. See docs/nat-lab.md.

#![allow(dead_code)] // The harness is shared with tests that come later.

use std::fmt;
use std::fs::File;
use std::net::{
    Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, UdpSocket,
};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::{in_ci, spawn_guard_blocking, which};

mod bench;
mod filer;
mod files;
mod mapping;
mod nat;
pub mod natdiscovery;
mod p2p;
mod peers;
mod punch;
mod services;
mod tcppunch;
mod tests;
mod turn;

pub use services::TurnServer;

pub use natdiscovery::{parse_natdiscovery, Behaviour, Discovery};

/// The default limit for one command or one closure run in a namespace.
pub const LAB_T: Duration = Duration::from_secs(30);

/// coturn's primary address; clients must use this one (see [`Lab::stun_primary`]).
pub const STUN_PRIMARY: SocketAddr = SocketAddr::V4(SocketAddrV4::new(STUN_IP1, 3478));
/// coturn's alternate address and port (RFC 5780 OTHER-ADDRESS).
pub const STUN_ALTERNATE: SocketAddr = SocketAddr::V4(SocketAddrV4::new(STUN_IP2, 3479));
const STUN_IP1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const STUN_IP2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
/// coturn's IPv6 addresses (the lab's IPv6 is plain routing: no NAT66; only the
/// firewall and blocking kinds, whose rules are `inet`, filter it).
const STUN6_IP1: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x10);
const STUN6_IP2: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x11);
/// coturn's primary IPv6 address and port.
pub const STUN6_PRIMARY: SocketAddr = SocketAddr::V6(SocketAddrV6::new(STUN6_IP1, 3478, 0, 0));

/// Skips the calling test (prints `SKIPPED <test>: <reason>` and returns)
/// when the lab cannot run here; panics instead under `CI=true`.
macro_rules! lab_or_skip {
    () => {{
        fn here() {}
        fn name_of<T>(_: T) -> &'static str {
            std::any::type_name::<T>()
        }
        let name = name_of(here).trim_end_matches("::here");
        // Drop the crate name: `lab::tests::...`, as cargo test shows it.
        let name = name.split_once("::").map_or(name, |(_, rest)| rest);
        if !$crate::lab::lab_available(name) {
            return;
        }
    }};
}
pub(crate) use lab_or_skip;

/// How a router treats traffic between its LAN (the host) and its WAN (the
/// internet). Each kind is one nftables ruleset, see [`NatKind::ruleset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// No NAT, everything forwarded: the host is seen at its own address.
    Open,
    /// Endpoint-independent mapping and filtering: anyone may send to a
    /// mapped port.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestrictedCone,
    /// A new random external port per destination, address-and-port-dependent
    /// filtering.
    Symmetric,
    /// No NAT, but a stateful firewall drops unsolicited inbound traffic.
    SymmetricUdpFirewall,
    /// All UDP dropped.
    UdpBlocked,
}

impl NatKind {
    /// Every kind, in a stable order.
    pub const ALL: [NatKind; 7] = [
        NatKind::Open,
        NatKind::FullCone,
        NatKind::RestrictedCone,
        NatKind::PortRestrictedCone,
        NatKind::Symmetric,
        NatKind::SymmetricUdpFirewall,
        NatKind::UdpBlocked,
    ];

    /// The design's `nat_type` name for this kind (`full-cone`, ...).
    pub fn name(self) -> &'static str {
        match self {
            NatKind::Open => "open",
            NatKind::FullCone => "full-cone",
            NatKind::RestrictedCone => "restricted-cone",
            NatKind::PortRestrictedCone => "port-restricted-cone",
            NatKind::Symmetric => "symmetric",
            NatKind::SymmetricUdpFirewall => "symmetric-udp-firewall",
            NatKind::UdpBlocked => "udp-blocked",
        }
    }

    /// Whether the router translates the host's address.
    pub fn translates(self) -> bool {
        !matches!(
            self,
            NatKind::Open | NatKind::SymmetricUdpFirewall | NatKind::UdpBlocked
        )
    }

    /// The nftables ruleset (for `nft -f -` in the router namespace) that
    /// plays this kind, with `wan` the router's WAN address and `host` the
    /// host's LAN address; `None` when nothing is needed (plain forwarding).
    ///
    /// Linux SNAT keeps the source port whenever it is free, which gives the
    /// endpoint-independent mapping of the cone kinds; conntrack's reverse
    /// entry gives address-and-port-dependent filtering; the cone kinds open
    /// it up with a DNAT in prerouting (for every sender, or for senders the
    /// host has sent to, kept in a dynamic set keyed by the host's source
    /// port, which equals the mapped port since it is preserved).
    pub fn ruleset(self, wan: Ipv4Addr, host: Ipv4Addr) -> Option<String> {
        let snat = |extra: &str| {
            format!(
                "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
                 oifname \"wan\" snat to {wan}{extra}\n  }}\n"
            )
        };
        let filter = |rules: &str| {
            format!(
                "table inet lab_filter {{\n  chain forward {{\n    \
                 type filter hook forward priority filter; policy accept;\n{rules}  }}\n}}\n"
            )
        };
        match self {
            NatKind::Open => None,
            NatKind::FullCone => Some(format!(
                "table ip lab_nat {{\n{}  chain prerouting {{\n    \
                 type nat hook prerouting priority dstnat; policy accept;\n    \
                 iifname \"wan\" udp dport 1024-65535 dnat to {host}\n  }}\n}}\n",
                snat("")
            )),
            NatKind::RestrictedCone => Some(format!(
                "table ip lab_nat {{\n  set seen {{\n    \
                 type ipv4_addr . inet_service; flags dynamic, timeout; timeout 120s;\n  }}\n  \
                 chain forward {{\n    type filter hook forward priority filter; policy accept;\n    \
                 iifname \"lan\" oifname \"wan\" meta l4proto udp update @seen {{ ip daddr . udp sport }}\n  }}\n  \
                 chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
                 iifname \"wan\" meta l4proto udp ip saddr . udp dport @seen dnat to {host}\n  }}\n{}}}\n",
                snat("")
            )),
            NatKind::PortRestrictedCone => Some(format!("table ip lab_nat {{\n{}}}\n", snat(""))),
            NatKind::Symmetric => Some(format!("table ip lab_nat {{\n{}}}\n", snat(" random"))),
            NatKind::SymmetricUdpFirewall => Some(filter(
                "    ct state established,related accept\n    iifname \"wan\" ct state new drop\n",
            )),
            NatKind::UdpBlocked => Some(filter("    meta l4proto udp drop\n")),
        }
    }

    /// What `turnutils_natdiscovery -m -f` should report behind this kind:
    /// (no NAT seen, mapping, filtering). `None` where no verdict is possible.
    /// A symmetric NAT may also be reported as address-dependent mapping
    /// (see [`NatKind::mapping_matches`]).
    pub fn expected(self) -> (bool, Option<Behaviour>, Option<Behaviour>) {
        use Behaviour::*;
        match self {
            NatKind::Open => (true, Some(EndpointIndependent), Some(EndpointIndependent)),
            NatKind::FullCone => (false, Some(EndpointIndependent), Some(EndpointIndependent)),
            NatKind::RestrictedCone => (false, Some(EndpointIndependent), Some(AddressDependent)),
            NatKind::PortRestrictedCone => (
                false,
                Some(EndpointIndependent),
                Some(AddressAndPortDependent),
            ),
            NatKind::Symmetric => (
                false,
                Some(AddressAndPortDependent),
                Some(AddressAndPortDependent),
            ),
            NatKind::SymmetricUdpFirewall => (
                true,
                Some(EndpointIndependent),
                Some(AddressAndPortDependent),
            ),
            NatKind::UdpBlocked => (false, None, None),
        }
    }

    /// Whether a reported mapping fits this kind: the expected one, or for
    /// [`NatKind::Symmetric`] either of the dependent mappings.
    pub fn mapping_matches(self, got: Option<Behaviour>) -> bool {
        match self {
            NatKind::Symmetric => matches!(
                got,
                Some(Behaviour::AddressDependent | Behaviour::AddressAndPortDependent)
            ),
            _ => got == self.expected().1,
        }
    }
}

impl NatKind {
    /// The nat layer's RFC 3489 name for what this kind plays.
    pub fn nat_type(self) -> p2pipe::nat::NatType {
        use p2pipe::nat::NatType;
        match self {
            NatKind::Open => NatType::Open,
            NatKind::FullCone => NatType::FullCone,
            NatKind::RestrictedCone => NatType::RestrictedCone,
            NatKind::PortRestrictedCone => NatType::PortRestrictedCone,
            NatKind::Symmetric => NatType::Symmetric,
            NatKind::SymmetricUdpFirewall => NatType::SymmetricUdpFirewall,
            NatKind::UdpBlocked => NatType::UdpBlocked,
        }
    }
}

/// A traversal table in markdown: one row per kind of peer A, one column per kind of
/// peer B, each cell `cell(a, b)` (docs/traversal.md).
pub fn pair_table(mut cell: impl FnMut(NatKind, NatKind) -> String) -> String {
    let mut table = String::from("| A \\ B |");
    for b in NatKind::ALL {
        table += &format!(" {} |", b.name());
    }
    table += "\n|---|";
    table += &"---|".repeat(NatKind::ALL.len());
    for a in NatKind::ALL {
        table += &format!("\n| {} |", a.name());
        for b in NatKind::ALL {
            table += &format!(" {} |", cell(a, b));
        }
    }
    table + "\n"
}

/// Writes a block's table to `target/traversal/<block>.md`, where
/// `scripts/traversal-tables` takes it into docs/traversal.md, and prints it.
pub fn write_traversal_table(block: &str, markdown: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("traversal");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let file = dir.join(format!("{block}.md"));
    std::fs::write(&file, markdown).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    println!("{markdown}");
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The limit for one lab of [`per_kind`], from its build to its drop: every
/// step inside has its own, shorter limit; this one bounds the sum.
pub const PER_KIND_T: Duration = Duration::from_secs(180);

/// Builds one fresh single-uplink lab per kind (with `loss_percent` at the router), all
/// at once on their own threads, runs `f` in each, and returns the results in the
/// order of `kinds`. A panic in any lab is raised here, and so is a lab that takes
/// longer than [`PER_KIND_T`].
pub fn per_kind<R, F>(kinds: &[NatKind], loss_percent: Option<u8>, f: F) -> Vec<(NatKind, R)>
where
    R: Send + 'static,
    F: Fn(&Lab, NatKind) -> R + Send + Sync + Clone + 'static,
{
    let started = Instant::now();
    let handles: Vec<_> = kinds
        .iter()
        .map(|&kind| {
            let f = f.clone();
            spawn_bounded(format!("lab {kind}"), move || {
                let lab = Lab::builder().uplink(kind, loss_percent).build();
                (kind, f(&lab, kind))
            })
        })
        .collect();
    // The labs run at once: one deadline for all of them.
    handles
        .into_iter()
        .map(|h| h.join_within(PER_KIND_T.saturating_sub(started.elapsed())))
        .collect()
}

/// A thread that tells when it ends (also by a panic), so that joining it can be
/// bounded: see [`Bounded::join_within`].
pub struct Bounded<R> {
    name: String,
    done: mpsc::Receiver<()>,
    handle: JoinHandle<R>,
}

/// Starts `f` on a thread named `name`, joined later with [`Bounded::join_within`].
pub fn spawn_bounded<R, F>(name: String, f: F) -> Bounded<R>
where
    R: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
{
    let (tx, done) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            // Dropped when `f` returns or unwinds: the receiver then sees the
            // channel closed.
            let _ended = tx;
            f()
        })
        .expect("spawn a thread");
    Bounded { name, done, handle }
}

impl<R> Bounded<R> {
    /// Waits at most `limit` for the thread to end and returns its result;
    /// `None` if it is still running then (the thread is left to run).
    pub fn try_join_within(self, limit: Duration) -> Option<std::thread::Result<R>> {
        match self.done.recv_timeout(limit) {
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            // Closed (or, never, a message): `f` is over, the join is immediate.
            _ => Some(self.handle.join()),
        }
    }

    /// As [`Bounded::try_join_within`], panicking if the thread is still
    /// running after `limit`, and passing a panic of the thread on.
    pub fn join_within(self, limit: Duration) -> R {
        let name = self.name.clone();
        match self.try_join_within(limit) {
            Some(Ok(r)) => r,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => panic!("thread `{name}` did not end within {limit:?}"),
        }
    }
}

/// One uplink of the host: a router of some kind, with optional loss.
#[derive(Debug, Clone, Copy)]
struct Uplink {
    kind: NatKind,
    loss_percent: Option<u8>,
}

/// Builds a [`Lab`] with one or two uplinks, or two peers (see
/// [`LabBuilder::peers`]).
#[derive(Debug, Default)]
#[must_use]
pub struct LabBuilder {
    uplinks: Vec<Uplink>,
    peers: bool,
}

impl LabBuilder {
    /// Adds an uplink (a router) of `kind`; `loss_percent` drops that share
    /// of the packets it forwards, both ways. At most two uplinks.
    pub fn uplink(mut self, kind: NatKind, loss_percent: Option<u8>) -> Self {
        assert!(self.uplinks.len() < 2, "the lab has at most two uplinks");
        assert!(
            loss_percent.is_none_or(|p| p <= 100),
            "loss is a percentage"
        );
        self.uplinks.push(Uplink { kind, loss_percent });
        self
    }

    /// Two peers instead of one host: peer 1 ("A") behind a router of kind
    /// `a`, peer 2 ("B") behind one of kind `b`, each in its own namespace
    /// (see [`Lab::ns_peer`]). Both translating routers use the same LAN,
    /// 198.18.1.0/24, as home networks do; a router that does not translate
    /// gives its peer a routed address, 198.19.N.2. coturn also relays (TURN,
    /// see [`Lab::turn`]) and mosquitto runs at [`Lab::broker`]. Each router
    /// drops new connections and datagrams addressed to itself from the WAN,
    /// as a home router does: no reset or port-unreachable reaches a peer
    /// that punches early.
    pub fn peers(mut self, a: NatKind, b: NatKind) -> Self {
        assert!(
            self.uplinks.is_empty(),
            "a peers lab has exactly two routers"
        );
        self.peers = true;
        self.uplink(a, None).uplink(b, None)
    }

    /// Creates the namespaces, links, routes and rulesets, starts coturn and
    /// waits until it answers. Panics (after cleaning up) if any step fails;
    /// call [`lab_available`] first.
    pub fn build(self) -> Lab {
        assert!(!self.uplinks.is_empty(), "the lab needs an uplink");
        let prereqs = Lab::prereqs();
        if let Err(why) = prereqs {
            panic!("the NAT lab cannot run here: {why}");
        }
        sweep_stale_labs();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("p2l-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let hosts = if self.peers {
            vec![format!("{prefix}-peer1"), format!("{prefix}-peer2")]
        } else {
            vec![format!("{prefix}-host")]
        };
        let mut lab = Lab {
            ns_inet: format!("{prefix}-inet"),
            hosts,
            peers: self.peers,
            prefix,
            routers: Vec::new(),
            uplinks: self.uplinks.clone(),
            namespaces: Vec::new(),
            dir,
            coturn: None,
            services: services::Services {
                mosquitto: None,
                turn: self.peers.then(TurnServer::new),
            },
        };
        lab.setup();
        lab
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running NAT lab. Dropping it stops coturn and removes everything.
pub struct Lab {
    ns_inet: String,
    /// The host namespace, or the two peers' (peer n at n - 1).
    hosts: Vec<String>,
    peers: bool,
    prefix: String,
    routers: Vec<String>,
    uplinks: Vec<Uplink>,
    /// Namespaces created so far, deleted on drop.
    namespaces: Vec<String>,
    dir: PathBuf,
    coturn: Option<Child>,
    services: services::Services,
}

/// A command's result with how long it took and whether it was killed.
#[derive(Debug)]
pub struct Exec {
    /// Exit status and captured output (the status is a kill when timed out).
    pub output: Output,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
    /// True if the deadline passed and the command was killed.
    pub timed_out: bool,
}

impl Exec {
    /// Standard output as text (lossy).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    /// Standard error as text (lossy).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Whether it exited by itself with status 0.
    pub fn success(&self) -> bool {
        !self.timed_out && self.output.status.success()
    }
}

/// The address a who-am-I server saw for a client, and the client's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The client socket's local address.
    pub local: SocketAddr,
    /// The source address the server saw (and sent back).
    pub seen: SocketAddr,
    /// How many requests were sent until a reply came (1 without loss).
    pub attempts: u32,
}

impl Lab {
    /// A builder; add one or two uplinks, then [`LabBuilder::build`].
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// Whether the lab can run: every program of [`PROGRAMS`], root, and
    /// network namespaces can be created. Checked once per process; `Err`
    /// says what is missing.
    pub fn prereqs() -> Result<(), String> {
        static STATUS: OnceLock<Result<(), String>> = OnceLock::new();
        STATUS
            .get_or_init(|| {
                missing_program(which)?;
                // SAFETY: geteuid has no preconditions.
                if unsafe { libc::geteuid() } != 0 {
                    return Err("not running as root".into());
                }
                let probe = format!("p2l-{}-probe", std::process::id());
                let add = run(ip(&["netns", "add", &probe]), None, LAB_T);
                let _ = run(ip(&["netns", "del", &probe]), None, LAB_T);
                if !add.success() {
                    return Err(format!(
                        "cannot create a network namespace: {}",
                        add.stderr()
                    ));
                }
                Ok(())
            })
            .clone()
    }

    /// coturn's primary address, 203.0.113.10:3478. Send requests here: coturn
    /// 4.6 answers requests sent to its alternate address with that same
    /// address as OTHER-ADDRESS, which breaks change-IP tests.
    pub fn stun_primary(&self) -> SocketAddr {
        STUN_PRIMARY
    }

    /// coturn's alternate address, 203.0.113.11:3479.
    pub fn stun_alternate(&self) -> SocketAddr {
        STUN_ALTERNATE
    }

    /// coturn's TURN service in a peers lab: its address (UDP and TCP) and
    /// this lab's long-term credentials.
    pub fn turn(&self) -> TurnServer {
        let turn = self.services.turn.clone();
        turn.expect("TURN runs in a peers lab (LabBuilder::peers)")
    }

    /// mosquitto's address in a peers lab, 203.0.113.20:1883 (anonymous).
    pub fn broker(&self) -> SocketAddr {
        assert!(
            self.peers,
            "mosquitto runs in a peers lab (LabBuilder::peers)"
        );
        services::BROKER
    }

    /// The number of uplinks (1 or 2).
    pub fn uplinks(&self) -> usize {
        self.uplinks.len()
    }

    /// The kind of uplink `n` (1-based).
    pub fn kind(&self, n: usize) -> NatKind {
        self.uplink(n).kind
    }

    /// The address the internet sees for traffic over uplink `n` (1-based):
    /// the router's WAN address, or the host's own where nothing translates.
    pub fn wan_ip(&self, n: usize) -> Ipv4Addr {
        if self.uplink(n).kind.translates() {
            router_wan_ip(n)
        } else {
            self.host_ip(n)
        }
    }

    /// The host's address on uplink `n` (1-based): 198.18.n.2; in a peers lab,
    /// peer n's address (see [`Lab::peer_ip`]).
    pub fn host_ip(&self, n: usize) -> Ipv4Addr {
        let kind = self.uplink(n).kind;
        match (self.peers, kind.translates()) {
            (false, _) => Ipv4Addr::new(198, 18, n as u8, 2),
            // Both private LANs are the same network, as at home.
            (true, true) => Ipv4Addr::new(198, 18, 1, 2),
            (true, false) => Ipv4Addr::new(198, 19, n as u8, 2),
        }
    }

    /// Router `n`'s LAN address (the host's gateway).
    fn lan_ip(&self, n: usize) -> Ipv4Addr {
        let [a, b, c, _] = self.host_ip(n).octets();
        Ipv4Addr::new(a, b, c, 1)
    }

    /// Peer `n`'s LAN address in a peers lab: 198.18.1.2 for both peers when
    /// their routers translate (the same private network: trying the other
    /// peer's LAN address reaches yourself), 198.19.n.2 (routed, seen from
    /// outside) when the router does not.
    pub fn peer_ip(&self, n: usize) -> Ipv4Addr {
        assert!(self.peers, "peer_ip is for a peers lab (LabBuilder::peers)");
        self.host_ip(n)
    }

    /// Peer `n`'s IPv6 address, 2001:db8:n::2 (routed, not translated).
    pub fn peer_ip6(&self, n: usize) -> Ipv6Addr {
        assert!(
            self.peers,
            "peer_ip6 is for a peers lab (LabBuilder::peers)"
        );
        self.host_ip6(n)
    }

    /// Peer `n`'s namespace (1 or 2) in a peers lab.
    pub fn ns_peer(&self, n: usize) -> &str {
        assert!(self.peers, "ns_peer is for a peers lab (LabBuilder::peers)");
        self.uplink(n);
        &self.hosts[n - 1]
    }

    /// The namespace of the host behind uplink `n`: the one host, or peer n.
    fn host_ns(&self, n: usize) -> &str {
        if self.peers {
            &self.hosts[n - 1]
        } else {
            &self.hosts[0]
        }
    }

    /// The host's IPv6 address on uplink `n` (there is no NAT66: also its external
    /// IPv6 address): 2001:db8:N::2.
    pub fn host_ip6(&self, n: usize) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, n as u16, 0, 0, 0, 0, 2)
    }

    /// The host's interface name for uplink `n` (1-based): `up1`, `up2`.
    pub fn host_nic(&self, n: usize) -> String {
        self.uplink(n);
        format!("up{n}")
    }

    /// The host namespace's name (a peers lab has two: [`Lab::ns_peer`]).
    pub fn ns_host(&self) -> &str {
        assert!(!self.peers, "a peers lab has two hosts: use ns_peer(n)");
        &self.hosts[0]
    }

    /// The internet namespace's name (coturn runs here).
    pub fn ns_inet(&self) -> &str {
        &self.ns_inet
    }

    /// Router `n`'s namespace name (1-based).
    pub fn ns_router(&self, n: usize) -> &str {
        self.uplink(n);
        &self.routers[n - 1]
    }

    /// Runs `program args` inside namespace `ns` under [`LAB_T`]; a command
    /// still running then is killed (its status says so).
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Output {
        self.exec_for(ns, LAB_T, program, args).output
    }

    /// As [`Lab::exec`], with an explicit limit, returning the wall time and
    /// whether the command was killed.
    pub fn exec_for(&self, ns: &str, limit: Duration, program: &str, args: &[&str]) -> Exec {
        self.exec_with_input(ns, limit, program, args, None)
    }

    /// As [`Lab::exec_for`], with `input` written to the command's stdin (then closed).
    pub fn exec_with_input(
        &self,
        ns: &str,
        limit: Duration,
        program: &str,
        args: &[&str],
        input: Option<&str>,
    ) -> Exec {
        let program = which(program).unwrap_or_else(|| PathBuf::from(program));
        let mut cmd = ip(&["netns", "exec", ns]);
        cmd.arg(program).args(args);
        run(cmd, input, limit)
    }

    /// Runs `f` on a fresh thread inside namespace `ns` and returns its
    /// result, under [`LAB_T`]. Sockets created in `f` (also by a
    /// current-thread tokio runtime built there) belong to that namespace for
    /// their whole life, wherever they are used afterwards.
    pub fn run_in<R, F>(&self, ns: &str, f: F) -> R
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        run_in_netns(ns, LAB_T, f)
    }

    /// As [`Lab::run_in`], with an explicit limit.
    pub fn run_in_for<R, F>(&self, ns: &str, limit: Duration, f: F) -> R
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        run_in_netns(ns, limit, f)
    }

    /// Starts `f` on a thread inside namespace `ns` and returns at once, for
    /// servers that run while the test goes on. Join it with
    /// [`Bounded::join_within`] (or make `f` stop by itself) before the lab is
    /// dropped.
    pub fn spawn_in<R, F>(&self, ns: &str, f: F) -> Bounded<R>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let path = netns_path(ns);
        spawn_bounded(format!("netns {ns}"), move || {
            enter_netns(&path);
            f()
        })
    }

    /// Starts a "who am I" UDP server in namespace `ns` on `bind` (port 0:
    /// any): it answers each datagram with the sender's address as text and
    /// records it (see [`WhoAmI::seen`]).
    pub fn whoami_server(&self, ns: &str, bind: SocketAddr) -> WhoAmI {
        let socket = self.run_in(ns, move || UdpSocket::bind(bind));
        let socket = socket.unwrap_or_else(|e| panic!("bind who-am-I server on {bind}: {e}"));
        WhoAmI::start(socket)
    }

    /// Starts a "who am I" TCP server in namespace `ns` on `bind` (port 0:
    /// any): it writes each client the address it sees as text, records it
    /// (see [`TcpWhoAmI::seen`]) and closes the connection.
    pub fn tcp_whoami_server(&self, ns: &str, bind: SocketAddr) -> TcpWhoAmI {
        let listener = self.run_in(ns, move || TcpListener::bind(bind));
        let listener =
            listener.unwrap_or_else(|e| panic!("bind TCP who-am-I server on {bind}: {e}"));
        TcpWhoAmI::start(listener)
    }

    /// Asks a [`WhoAmI`] server at `server` which address it sees, from a new
    /// UDP socket in namespace `ns`, bound with SO_BINDTODEVICE to `device`
    /// when given. Sends up to `tries` requests, waiting 300 ms for a reply
    /// after each; `None` if none came back.
    pub fn whoami(
        &self,
        ns: &str,
        device: Option<&str>,
        server: SocketAddr,
        tries: u32,
    ) -> Option<Seen> {
        let device = device.map(str::to_owned);
        self.run_in(ns, move || whoami_client(device.as_deref(), server, tries))
    }

    /// Runs `turnutils_natdiscovery -m -f` in the host namespace from the
    /// host's first address against [`Lab::stun_primary`], under `limit`.
    /// Returns the parsed report with the raw run.
    pub fn natdiscovery(&self, limit: Duration) -> (Discovery, Exec) {
        let local = self.host_ip(1).to_string();
        let server = STUN_PRIMARY.ip().to_string();
        let port = STUN_PRIMARY.port().to_string();
        let run = self.exec_for(
            self.ns_host(),
            limit,
            "turnutils_natdiscovery",
            &["-m", "-f", "-L", &local, "-p", &port, &server],
        );
        let text = format!("{}\n{}", run.stdout(), run.stderr());
        (parse_natdiscovery(&text), run)
    }

    /// How many UDP datagrams to coturn's ports (3478 and 3479) router `n`
    /// has taken from the host so far, (IPv4, IPv6): counted by nftables as
    /// they enter the router, before any loss or blocking rule, so it is what
    /// the host sent (see [`count_ruleset`]).
    pub fn stun_datagrams(&self, n: usize) -> (u64, u64) {
        let ns = self.ns_router(n).to_owned();
        let read = |counter: &str| {
            let r = self.exec(
                &ns,
                "nft",
                &["list", "counter", "inet", "lab_count", counter],
            );
            let text = String::from_utf8_lossy(&r.stdout).into_owned();
            text.split("packets ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "no counter {counter} in {ns}: {text}{}",
                        String::from_utf8_lossy(&r.stderr)
                    )
                })
        };
        (read("stun4"), read("stun6"))
    }

    /// Empties the conntrack table of every router (state left by an earlier
    /// exchange can change a filtering result). Needs `conntrack`.
    pub fn flush_conntrack(&self) -> Result<(), String> {
        which("conntrack").ok_or("`conntrack` not found")?;
        for ns in &self.routers {
            let r = self.exec_for(ns, LAB_T, "conntrack", &["-F"]);
            if !r.success() {
                return Err(format!("conntrack -F in {ns}: {}", r.stderr()));
            }
        }
        Ok(())
    }

    /// coturn's log so far (for failure messages).
    pub fn coturn_log(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default();
        s += &std::fs::read_to_string(self.dir.join("turnserver.out")).unwrap_or_default();
        s
    }

    fn uplink(&self, n: usize) -> Uplink {
        assert!(
            (1..=self.uplinks.len()).contains(&n),
            "uplink {n} does not exist (the lab has {})",
            self.uplinks.len()
        );
        self.uplinks[n - 1]
    }

    /// Creates everything; panics on the first failure (Drop cleans up).
    fn setup(&mut self) {
        std::fs::create_dir(&self.dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.dir.display()));
        let inet = self.ns_inet.clone();
        self.add_ns(&inet);
        // The internet carries traffic between routers (peer to peer).
        self.sysctl(&inet, "net/ipv4/ip_forward", "1");
        self.sysctl(&inet, "net/ipv6/conf/all/forwarding", "1");
        // coturn's addresses (and mosquitto's, in a peers lab) on the
        // internet's loopback.
        let mut loopback = vec![format!("{STUN_IP1}/32"), format!("{STUN_IP2}/32")];
        loopback.extend([STUN6_IP1, STUN6_IP2].map(|ip6| format!("{ip6}/128")));
        if self.peers {
            loopback.push(format!("{}/32", services::BROKER.ip()));
        }
        for addr in &loopback {
            let mut args = vec!["-n", &inet, "addr", "add", addr, "dev", "lo"];
            if addr.contains(':') {
                args.push("nodad");
            }
            ip_ok(&args);
        }
        for host in self.hosts.clone() {
            self.add_ns(&host);
            // The host answers on either uplink: loose reverse-path filtering,
            // or replies to a socket bound to up2 would be dropped (the route
            // back to the server goes out up1).
            self.sysctl(&host, "net/ipv4/conf/all/rp_filter", "0");
            self.sysctl(&host, "net/ipv4/conf/default/rp_filter", "0");
        }
        for n in 1..=self.uplinks.len() {
            self.add_router(n);
        }
        self.start_coturn();
        if self.peers {
            let broker = services::start_mosquitto(&inet, &self.dir);
            self.services.mosquitto = Some(broker);
        }
    }

    /// Router `n`: its namespace, the links to the internet and to its host,
    /// addresses, routes and its ruleset.
    fn add_router(&mut self, n: usize) {
        let (inet, host) = (self.ns_inet.clone(), self.host_ns(n).to_owned());
        let rtr = format!("{}-rtr{n}", self.prefix());
        self.add_ns(&rtr);
        self.routers.push(rtr.clone());
        let (wan, inet_side) = (router_wan_ip(n), inet_wan_ip(n));
        let (lan, hostip) = (self.lan_ip(n), self.host_ip(n));
        let (r, up) = (format!("r{n}"), format!("up{n}"));
        // The veth ends are created directly in their namespaces, so no name
        // ever appears in the root namespace.
        ip_ok(&[
            "link", "add", "wan", "netns", &rtr, "type", "veth", "peer", "name", &r, "netns", &inet,
        ]);
        ip_ok(&[
            "link", "add", "lan", "netns", &rtr, "type", "veth", "peer", "name", &up, "netns",
            &host,
        ]);
        // IPv6: 2001:db8:0:N::/64 on the WAN link, 2001:db8:N::/64 on the LAN.
        let (wan6, inet6) = (format!("2001:db8:0:{n}::1"), format!("2001:db8:0:{n}::2"));
        let (lan6, host6) = (format!("2001:db8:{n}::1"), self.host_ip6(n).to_string());
        for (ns, addr, dev) in [
            (&rtr, format!("{wan}/30"), "wan"),
            (&rtr, format!("{lan}/24"), "lan"),
            (&inet, format!("{inet_side}/30"), r.as_str()),
            (&host, format!("{hostip}/24"), up.as_str()),
        ] {
            ip_ok(&["-n", ns, "addr", "add", &addr, "dev", dev]);
        }
        for (ns, addr, dev) in [
            (&rtr, format!("{wan6}/64"), "wan"),
            (&inet, format!("{inet6}/64"), r.as_str()),
            (&rtr, format!("{lan6}/64"), "lan"),
            (&host, format!("{host6}/64"), up.as_str()),
        ] {
            ip_ok(&["-n", ns, "addr", "add", &addr, "dev", dev, "nodad"]);
        }
        for (ns, dev) in [
            (&rtr, "wan"),
            (&rtr, "lan"),
            (&inet, r.as_str()),
            (&host, up.as_str()),
        ] {
            ip_ok(&["-n", ns, "link", "set", dev, "up"]);
        }
        self.sysctl(&host, &format!("net/ipv4/conf/{up}/rp_filter"), "0");
        self.sysctl(&rtr, "net/ipv4/ip_forward", "1");
        self.sysctl(&rtr, "net/ipv6/conf/all/forwarding", "1");
        let [a, b, c, _] = lan.octets();
        let host_net = format!("{a}.{b}.{c}.0/24");
        let metric = (n * 100).to_string();
        for args in [
            vec!["-n", &rtr, "-6", "route", "add", "default", "via", &inet6],
            vec![
                "-n",
                &rtr,
                "route",
                "add",
                "default",
                "via",
                &inet_side.to_string(),
            ],
            vec![
                "-n",
                &inet,
                "-6",
                "route",
                "add",
                &format!("2001:db8:{n}::/64"),
                "via",
                &wan6,
            ],
            vec![
                "-n",
                &host,
                "route",
                "add",
                "default",
                "via",
                &lan.to_string(),
                "dev",
                &up,
                "metric",
                &metric,
            ],
            vec![
                "-n", &host, "-6", "route", "add", "default", "via", &lan6, "dev", &up, "metric",
                &metric,
            ],
        ] {
            ip_ok(&args);
        }
        // The internet routes the LAN back to its router where nothing
        // translates (two translating peers share one LAN: no route needed).
        if !(self.peers && self.uplinks[n - 1].kind.translates()) {
            ip_ok(&[
                "-n",
                &inet,
                "route",
                "add",
                &host_net,
                "via",
                &wan.to_string(),
            ]);
        }
        self.load_rules(n, &rtr, wan, hostip);
    }

    /// Loads router `n`'s nftables rules: the counters, its kind, its loss
    /// and, in a peers lab, the home router's own input filter.
    fn load_rules(&self, n: usize, rtr: &str, wan: Ipv4Addr, hostip: Ipv4Addr) {
        let uplink = self.uplinks[n - 1];
        let mut rules = count_ruleset();
        rules += &uplink.kind.ruleset(wan, hostip).unwrap_or_default();
        if let Some(p) = uplink.loss_percent {
            rules += &loss_ruleset(p);
        }
        if self.peers {
            rules += &services::router_input_ruleset();
        }
        let mut nft = ip(&["netns", "exec", rtr]);
        nft.arg(which("nft").expect("nft")).args(["-f", "-"]);
        let r = run(nft, Some(&rules), LAB_T);
        assert!(r.success(), "nft in {rtr} failed: {}\n{rules}", r.stderr());
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn add_ns(&mut self, ns: &str) {
        ip_ok(&["netns", "add", ns]);
        self.namespaces.push(ns.to_owned());
        // No duplicate address detection on the links made later: IPv6 would stay
        // unusable for a second or more after each link comes up.
        for scope in ["all", "default"] {
            self.sysctl(ns, &format!("net/ipv6/conf/{scope}/accept_dad"), "0");
            self.sysctl(ns, &format!("net/ipv6/conf/{scope}/dad_transmits"), "0");
        }
        ip_ok(&["-n", ns, "link", "set", "lo", "up"]);
    }

    /// Writes a sysctl of namespace `ns` (`key` as a path under /proc/sys),
    /// from a thread inside it: /proc/sys/net follows the writer's namespace.
    fn sysctl(&self, ns: &str, key: &str, value: &'static str) {
        let path = format!("/proc/sys/{key}");
        let r = self.run_in(ns, move || {
            std::fs::write(&path, value).map_err(|e| format!("{path}: {e}"))
        });
        r.unwrap_or_else(|e| panic!("sysctl in {ns}: {e}"));
    }

    /// Starts coturn in the internet namespace, STUN only (in a peers lab
    /// also TURN, see [`TurnServer::coturn_args`]), RFC 5780 on (two
    /// listening addresses and an alternate port), no CLI, TLS, DTLS or config
    /// file, everything it writes in the lab's directory; then waits until
    /// both its primary and its alternate address answer a binding request.
    fn start_coturn(&mut self) {
        let role = match &self.services.turn {
            Some(turn) => turn.coturn_args(),
            None => vec!["--stun-only".to_owned()],
        };
        let d = |f: &str| self.dir.join(f).to_string_lossy().into_owned();
        let out = File::create(self.dir.join("turnserver.out")).expect("create coturn output file");
        let err = out.try_clone().expect("dup coturn output file");
        let mut cmd = ip(&["netns", "exec", &self.ns_inet]);
        cmd.arg(which("turnserver").expect("turnserver"))
            .args(["-n", "--no-cli", "--no-tls", "--no-dtls"])
            .args(&role)
            .args(["-L", &STUN_IP1.to_string(), "-L", &STUN_IP2.to_string()])
            .args(["-L", &STUN6_IP1.to_string(), "-L", &STUN6_IP2.to_string()])
            .args(["--listening-port", "3478", "--alt-listening-port", "3479"])
            .args([
                "--log-file",
                &d("turnserver.log"),
                "--simple-log",
                "--no-stdout-log",
            ])
            .args(["--pidfile", &d("turnserver.pid"), "--db", &d("turndb")])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = {
            let _no_rebind = spawn_guard_blocking();
            cmd.spawn().expect("spawn turnserver")
        };
        self.coturn = Some(child);

        let deadline = Instant::now() + Duration::from_secs(15);
        let ns = self.ns_inet.clone();
        loop {
            if let Some(status) = self
                .coturn
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("turnserver exited with {status}:\n{}", self.coturn_log());
            }
            // Each probe waits up to 100 ms for a reply: a bounded poll.
            let ready = self.run_in(&ns, || {
                stun_binding(STUN_PRIMARY, Duration::from_millis(100)).is_some()
                    && stun_binding(STUN_ALTERNATE, Duration::from_millis(100)).is_some()
                    && stun_binding(STUN6_PRIMARY, Duration::from_millis(100)).is_some()
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "turnserver did not answer STUN within 15 s:\n{}",
                self.coturn_log()
            );
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.services.stop();
        if let Some(mut c) = self.coturn.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.drain(..).rev() {
            let r = run(ip(&["netns", "del", &ns]), None, LAB_T);
            if !r.success() {
                eprintln!("lab: could not delete namespace {ns}: {}", r.stderr());
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("hosts", &self.hosts)
            .field("inet", &self.ns_inet)
            .field("routers", &self.routers)
            .field("uplinks", &self.uplinks)
            .finish()
    }
}

/// The names of every network namespace on the machine (`ip netns list`).
pub fn netns_list() -> Vec<String> {
    let r = run(ip(&["netns", "list"]), None, LAB_T);
    assert!(r.success(), "ip netns list: {}", r.stderr());
    r.stdout()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The programs the lab runs: iproute2, nftables, coturn's server and
/// natdiscovery, `conntrack` ([`Lab::flush_conntrack`]) and mosquitto (a
/// peers lab's broker).
pub const PROGRAMS: [&str; 6] = [
    "ip",
    "nft",
    "turnserver",
    "turnutils_natdiscovery",
    "conntrack",
    "mosquitto",
];

/// `Err` naming the first of [`PROGRAMS`] that `find` does not find.
pub fn missing_program(find: impl Fn(&str) -> Option<PathBuf>) -> Result<(), String> {
    for p in PROGRAMS {
        find(p).ok_or_else(|| format!("`{p}` not found"))?;
    }
    Ok(())
}

/// True if the lab can run. Otherwise prints `SKIPPED <test>: <reason>`, or
/// panics under `CI=true`: in CI a lab test never skips silently.
pub fn lab_available(test: &str) -> bool {
    match Lab::prereqs() {
        Ok(()) => true,
        Err(why) if in_ci() => panic!("{test}: the NAT lab is required under CI=true: {why}"),
        Err(why) => {
            crate::support::skip(test, format!("the NAT lab cannot run here: {why}"));
            false
        }
    }
}

/// A UDP server that answers every datagram with the sender's address (as
/// text) and records it. Stopped and joined on drop.
pub struct WhoAmI {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SocketAddr>>>,
    stopper: UdpSocket,
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

const STOP: &[u8] = b"\0stop";

impl WhoAmI {
    fn start(socket: UdpSocket) -> WhoAmI {
        let addr = socket.local_addr().expect("local address");
        let stopper = socket.try_clone().expect("clone the server socket");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (done_tx, done) = mpsc::channel();
        let log = seen.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                if from == addr && &buf[..n] == STOP {
                    break;
                }
                log.lock().unwrap().push(from);
                let _ = socket.send_to(from.to_string().as_bytes(), from);
            }
            let _ = done_tx.send(());
        });
        WhoAmI {
            addr,
            seen,
            stopper,
            done,
            thread: Some(thread),
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every source address seen so far, in order.
    pub fn seen(&self) -> Vec<SocketAddr> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for WhoAmI {
    fn drop(&mut self) {
        // The stop datagram goes from the server's own socket to itself, over
        // the namespace's loopback.
        let _ = self.stopper.send_to(STOP, self.addr);
        if self.done.recv_timeout(LAB_T).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// A TCP server that writes each client the address it sees (as text),
/// records it and closes the connection. Stopped and joined on drop.
pub struct TcpWhoAmI {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SocketAddr>>>,
    /// The listener itself (a duplicate descriptor), to shut it down.
    stopper: TcpListener,
    thread: Option<Bounded<()>>,
}

impl TcpWhoAmI {
    fn start(listener: TcpListener) -> TcpWhoAmI {
        use std::io::Write;
        let addr = listener.local_addr().expect("local address");
        let stopper = listener.try_clone().expect("clone the listener");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let thread = spawn_bounded(format!("tcp who-am-i {addr}"), move || {
            // Ends when the listener is shut down: accept then fails.
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let Ok(from) = conn.peer_addr() else { continue };
                log.lock().unwrap().push(from);
                let _ = conn.write_all(from.to_string().as_bytes());
            }
        });
        TcpWhoAmI {
            addr,
            seen,
            stopper,
            thread: Some(thread),
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every client address seen so far, in order.
    pub fn seen(&self) -> Vec<SocketAddr> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TcpWhoAmI {
    fn drop(&mut self) {
        // Shutting a listening socket down wakes a blocked accept (Linux).
        let _ = socket2::SockRef::from(&self.stopper).shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            // Never panics here: a drop may run while a test panics.
            let _ = t.try_join_within(LAB_T);
        }
    }
}

fn whoami_client(device: Option<&str>, server: SocketAddr, tries: u32) -> Option<Seen> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("UDP socket");
    if let Some(d) = device {
        s.bind_device(Some(d.as_bytes()))
            .unwrap_or_else(|e| panic!("SO_BINDTODEVICE {d}: {e}"));
    }
    let any: SocketAddr = (Ipv4Addr::UNSPECIFIED, 0).into();
    s.bind(&any.into()).expect("bind");
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s.connect(server).expect("connect");
    let local = s.local_addr().unwrap();
    let mut buf = [0u8; 100];
    for attempt in 1..=tries {
        s.send(b"who").expect("send");
        if let Ok(n) = s.recv(&mut buf) {
            let text = std::str::from_utf8(&buf[..n]).expect("text reply");
            let seen = text
                .parse()
                .unwrap_or_else(|e| panic!("reply {text:?}: {e}"));
            return Some(Seen {
                local,
                seen,
                attempts: attempt,
            });
        }
    }
    None
}

/// Sends one raw STUN binding request (RFC 5389) to `to` from a new socket
/// and returns the response's size if one with the right transaction id
/// comes back within `wait`. Used for readiness: no dependency on the
/// crate's own STUN code.
pub fn stun_binding(to: SocketAddr, wait: Duration) -> Option<usize> {
    let any: SocketAddr = if to.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any).ok()?;
    let mut req = [0u8; 20];
    req[..4].copy_from_slice(&[0x00, 0x01, 0x00, 0x00]);
    req[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    let id = (std::process::id() as u64) << 32 | u64::from(COUNTER.fetch_add(1, Ordering::Relaxed));
    req[8..16].copy_from_slice(&id.to_be_bytes());
    s.send_to(&req, to).ok()?;
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let (n, from) = s.recv_from(&mut buf).ok()?;
        if from == to && n >= 20 && buf[..2] == [0x01, 0x01] && buf[8..20] == req[8..20] {
            return Some(n);
        }
    }
}

/// A ruleset dropping `percent` % of forwarded packets, both directions,
/// counting the drops (`nft list table inet lab_loss` shows them). `tc
/// netem` does not exist on these kernels.
pub fn loss_ruleset(percent: u8) -> String {
    format!(
        "table inet lab_loss {{\n  chain forward {{\n    \
         type filter hook forward priority filter - 10; policy accept;\n    \
         numgen random mod 100 < {percent} counter drop\n  }}\n}}\n"
    )
}

/// A ruleset counting the UDP datagrams from the host (entering on `lan`) to
/// coturn's ports, per family, in the named counters `stun4` and `stun6`. Its
/// chain comes before the loss table's (priority filter - 10) and the kinds'
/// filters, so it counts what the host sent, dropped or not.
pub fn count_ruleset() -> String {
    let ports = format!("{{ {}, {} }}", STUN_PRIMARY.port(), STUN_ALTERNATE.port());
    format!(
        "table inet lab_count {{\n  counter stun4 {{ }}\n  counter stun6 {{ }}\n  \
         chain forward {{\n    type filter hook forward priority filter - 20; policy accept;\n    \
         iifname \"lan\" meta nfproto ipv4 udp dport {ports} counter name \"stun4\"\n    \
         iifname \"lan\" meta nfproto ipv6 udp dport {ports} counter name \"stun6\"\n  }}\n}}\n"
    )
}

/// Router `n`'s WAN address: 198.51.100.1, 198.51.100.5.
fn router_wan_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, (4 * (n - 1) + 1) as u8)
}

/// The internet's end of router `n`'s WAN link: 198.51.100.2, 198.51.100.6.
fn inet_wan_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, (4 * (n - 1) + 2) as u8)
}

fn netns_path(ns: &str) -> PathBuf {
    Path::new("/var/run/netns").join(ns)
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: setns on a valid namespace descriptor; it affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Runs `f` on a new thread inside namespace `ns`, waiting at most `limit`.
/// A panic in `f` is passed on to the caller.
pub fn run_in_netns<R, F>(ns: &str, limit: Duration, f: F) -> R
where
    R: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
{
    let path = netns_path(ns);
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("netns {ns}"))
        .spawn(move || {
            enter_netns(&path);
            let _ = tx.send(f());
        })
        .expect("spawn a thread");
    match rx.recv_timeout(limit) {
        Ok(r) => {
            let _ = handle.join();
            r
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("closure in namespace {ns} did not finish within {limit:?}")
        }
    }
}

/// `ip` with arguments.
fn ip(args: &[&str]) -> Command {
    let mut c = Command::new(which("ip").unwrap_or_else(|| "ip".into()));
    c.args(args);
    c
}

/// Runs `ip args`, panicking with its error output if it fails.
fn ip_ok(args: &[&str]) {
    let r = run(ip(args), None, LAB_T);
    assert!(r.success(), "ip {} failed: {}", args.join(" "), r.stderr());
}

/// Spawns `cmd` (stdin from `input`, output captured) and waits at most
/// `limit`, killing it then. Holds the spawn guard across the spawn and for
/// up to 100 ms after it (or until exit), so no port is rebound while the
/// child may still hold this process's descriptors.
fn run(mut cmd: Command, input: Option<&str>, limit: Duration) -> Exec {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let guard = spawn_guard_blocking();
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if let Some(text) = input {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write to {cmd:?}: {e}"));
    }
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let first = rx.recv_timeout(limit.min(Duration::from_millis(100)));
    drop(guard);
    let mut timed_out = false;
    let result = match first {
        Ok(r) => r,
        Err(_) => match rx.recv_timeout(limit.saturating_sub(start.elapsed())) {
            Ok(r) => r,
            Err(_) => {
                timed_out = true;
                // SAFETY: the child is not reaped until wait_with_output
                // returns, so the pid still names it.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                rx.recv_timeout(LAB_T)
                    .unwrap_or_else(|_| panic!("{cmd:?} did not die after SIGKILL"))
            }
        },
    };
    let output = result.unwrap_or_else(|e| panic!("wait for {cmd:?}: {e}"));
    Exec {
        output,
        elapsed: start.elapsed(),
        timed_out,
    }
}

/// Removes labs left behind by test processes that no longer exist (killed
/// before their `Drop` ran): namespaces named `p2l-<pid>-...` whose pid is
/// gone, and the coturn still running inside them. Once per process; never
/// touches a namespace of a live process.
fn sweep_stale_labs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        for name in netns_list() {
            let name = name.as_str();
            let Some(pid) = name
                .strip_prefix("p2l-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let pids = run(ip(&["netns", "pids", name]), None, LAB_T);
            for p in pids.stdout().split_whitespace() {
                if let Ok(p) = p.parse::<libc::pid_t>() {
                    // SAFETY: plain kill of a process inside our own stale lab.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
            let _ = run(ip(&["netns", "del", name]), None, LAB_T);
            eprintln!("lab: removed stale namespace {name}");
        }
    });
}
