//! Port mappings (`traverse::mapping`) against miniupnpd on a lab router: each method
//! maps UDP and TCP ports that the internet then reaches, renews them, and deletes them
//! on `close()` and when `p2pipe map` gets SIGINT; with no miniupnpd the open fails
//! clearly within its limit. The ignored `every_pair_of_kinds_matches_the_table` runs
//! every ordered pair of kinds in the two-peer lab and writes
//! `target/traversal/mapping.md`.
//!
//! [`MiniUpnpd`] runs miniupnpd (Debian's `miniupnpd-nftables`) on a router: it needs
//! the STUN server to learn its external address (every lab address is reserved, and
//! miniupnpd maps nothing for a reserved one), and its nftables chains created
//! beforehand (Debian's `nft_init.sh` needs iptables).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use p2pipe::traverse::mapping::{self, Mapping, Method, Options};
use p2pipe::Proto;

use super::{
    ip, lab_or_skip, pair_table, run, run_in_netns, which, write_traversal_table, Lab, NatKind,
    LAB_T, STUN_PRIMARY,
};
use crate::support::{skip, spawn_guard_blocking};

/// Far longer than a reply within the lab takes (well under a millisecond).
const WAIT: Duration = Duration::from_millis(500);

/// The lease the tests ask for: short, so that renewals come within a test.
const SHORT_LEASE: Duration = Duration::from_secs(4);

/// miniupnpd on router `n` of a lab, stopped (and its chains left to the namespace's
/// deletion) on drop.
pub struct MiniUpnpd {
    child: Option<Child>,
    router: String,
    log: PathBuf,
    leases: PathBuf,
}

/// Whether miniupnpd is installed; prints SKIPPED (or panics under CI=true) when not.
pub(super) fn miniupnpd_or_skip(test: &str) -> bool {
    if which("miniupnpd").is_some() {
        return true;
    }
    assert!(
        !crate::support::in_ci(),
        "{test}: miniupnpd is required under CI=true"
    );
    skip(
        test,
        "`miniupnpd` not found (Debian package miniupnpd-nftables)",
    );
    false
}

/// The chains miniupnpd fills, created before it starts: its forward filter chain
/// (jumped to from a forward hook) and its nat chains (hooked just before the lab's own
/// nat chains, so that a mapping wins over a cone kind's catch-all DNAT).
///
/// And one rule for the router's own traffic: the lab's kinds SNAT everything leaving
/// `wan`, the router's own datagrams included, so a symmetric router would give its own
/// STUN requests random ports and miniupnpd would call it a restrictive NAT and map
/// nothing. A real router's NAT leaves its own traffic alone; so does this one, by
/// binding the router's own address to itself first (a nat chain that binds ends the
/// hook's nat chains).
fn chains_ruleset(wan: Ipv4Addr) -> String {
    format!(
        "table inet filter {{\n\
         \x20 chain forward {{ type filter hook forward priority filter - 5; policy accept; jump miniupnpd; }}\n\
         \x20 chain miniupnpd {{ }}\n\
         \x20 chain prerouting_miniupnpd {{ type nat hook prerouting priority dstnat - 5; policy accept; }}\n\
         \x20 chain postrouting_miniupnpd {{ type nat hook postrouting priority srcnat - 5; policy accept; }}\n\
         \x20 chain router_own {{ type nat hook postrouting priority srcnat - 10; policy accept; \
         oifname \"wan\" ip saddr {wan} snat ip to {wan}; }}\n\
         }}\n"
    )
}

/// Held only while miniupnpd starts: STUN answers from coturn's other address or port
/// (RFC 5780 tests) are new flows to the router, which a full-cone kind's catch-all DNAT
/// would send on to the host; miniupnpd would then see 1 answer of 4, call the router a
/// restrictive NAT and map nothing. Binding them to the router itself first keeps them
/// there. Deleted once miniupnpd is ready, so the kinds are as the lab made them.
fn stun_to_self_ruleset(wan: Ipv4Addr) -> String {
    format!(
        "table inet lab_mapping_stun {{\n\
         \x20 chain prerouting {{ type nat hook prerouting priority dstnat - 10; policy accept; \
         iifname \"wan\" ip saddr 203.0.113.0/24 udp sport {{ 3478, 3479 }} dnat ip to {wan}; }}\n\
         }}\n"
    )
}

/// Runs `nft ARGS` in namespace `ns` with `input` on stdin, panicking on failure.
fn nft(ns: &str, args: &[&str], input: Option<&str>) -> String {
    let mut cmd = ip(&["netns", "exec", ns]);
    cmd.arg(which("nft").expect("nft")).args(args);
    let r = run(cmd, input, LAB_T);
    assert!(
        r.success(),
        "nft {args:?} in {ns}: {}\n{input:?}",
        r.stderr()
    );
    r.stdout()
}

fn config(lab_dir: &std::path::Path, n: usize) -> String {
    let leases = lab_dir.join(format!("miniupnpd{n}.leases"));
    format!(
        "ext_ifname=wan\nlistening_ip=lan\nhttp_port=0\n\
         enable_natpmp=yes\nenable_upnp=yes\nsecure_mode=yes\nsystem_uptime=yes\n\
         ext_perform_stun=yes\next_stun_host={stun_ip}\next_stun_port={stun_port}\n\
         min_lifetime=2\nmax_lifetime=86400\nlease_file={leases}\n\
         uuid=3d3cec3a-8cf0-11e0-98ee-00000000000{n}\n\
         allow 1024-65535 198.18.0.0/15 1024-65535\n\
         deny 0-65535 0.0.0.0/0 0-65535\n",
        stun_ip = STUN_PRIMARY.ip(),
        stun_port = STUN_PRIMARY.port(),
        leases = leases.display(),
    )
}

impl MiniUpnpd {
    /// Starts miniupnpd on router `n` (its chains first) and waits until it says port
    /// forwarding is enabled (a bounded poll of its log, 15 s in all).
    pub fn start(lab: &Lab, n: usize) -> MiniUpnpd {
        let router = lab.ns_router(n).to_owned();
        let wan = super::router_wan_ip(n);
        nft(&router, &["-f", "-"], Some(&chains_ruleset(wan)));
        nft(&router, &["-f", "-"], Some(&stun_to_self_ruleset(wan)));
        let conf = lab.dir.join(format!("miniupnpd{n}.conf"));
        std::fs::write(&conf, config(&lab.dir, n)).expect("write miniupnpd.conf");
        let log = lab.dir.join(format!("miniupnpd{n}.log"));
        let out = File::create(&log).expect("create miniupnpd log");
        let err = out.try_clone().expect("dup miniupnpd log");
        let mut cmd = ip(&["netns", "exec", &router]);
        cmd.arg(which("miniupnpd").expect("miniupnpd"))
            .arg("-f")
            .arg(&conf)
            .arg("-d")
            // Its own pid file: miniupnpd refuses to start when the default one names a
            // running miniupnpd (another lab's).
            .arg("-P")
            .arg(lab.dir.join(format!("miniupnpd{n}.pid")))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = {
            let _no_rebind = spawn_guard_blocking();
            cmd.spawn().expect("spawn miniupnpd")
        };
        let mut upnpd = MiniUpnpd {
            child: Some(child),
            router,
            log,
            leases: lab.dir.join(format!("miniupnpd{n}.leases")),
        };
        upnpd.wait_ready();
        nft(
            &upnpd.router,
            &["delete", "table", "inet", "lab_mapping_stun"],
            None,
        );
        upnpd
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = self.log();
            if log.contains("Port forwarding is now enabled") {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("miniupnpd exited with {status}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "miniupnpd did not enable port forwarding within 15 s:\n{log}"
            );
            // A poll interval, not synchronisation: readiness is the log line above.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// miniupnpd's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What tests look at on the router, to take into another thread.
    pub fn view(&self) -> RouterView {
        RouterView {
            router: self.router.clone(),
            leases: self.leases.clone(),
        }
    }
}

/// A router's miniupnpd state as the tests read it: its nftables chains and its lease
/// file.
#[derive(Clone, Debug)]
pub struct RouterView {
    router: String,
    leases: PathBuf,
}

impl RouterView {
    /// The router's miniupnpd chains as `nft` lists them.
    pub fn chains(&self) -> String {
        nft(&self.router, &["list", "table", "inet", "filter"], None)
    }

    /// Whether the router forwards external port `port` of `proto` (a DNAT rule in
    /// miniupnpd's prerouting chain; nft shows miniupnpd's protocol match as the raw
    /// IPv4 protocol byte, `@nh,72,8 0x11` for UDP).
    pub fn forwards(&self, proto: Proto, port: u16) -> bool {
        let number = match proto {
            Proto::Udp => 17,
            Proto::Tcp => 6,
        };
        let needle = format!("@nh,72,8 {number:#x} th dport {port} dnat");
        self.chains().lines().any(|l| l.contains(&needle))
    }

    /// The lease file's line for external port `port` of `proto`, if any.
    pub fn lease_line(&self, proto: Proto, port: u16) -> Option<String> {
        let text = std::fs::read_to_string(&self.leases).unwrap_or_default();
        let head = format!("{}:{port}:", proto.to_string().to_uppercase());
        text.lines()
            .find(|l| l.starts_with(&head))
            .map(str::to_owned)
    }
}

impl Drop for MiniUpnpd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A one-host lab behind a port-restricted cone with miniupnpd on its router; `None`
/// (SKIPPED printed) without miniupnpd.
fn lab_with_miniupnpd(test: &str) -> Option<(Lab, MiniUpnpd)> {
    if !miniupnpd_or_skip(test) {
        return None;
    }
    let lab = Lab::builder()
        .uplink(NatKind::PortRestrictedCone, None)
        .build();
    let upnpd = MiniUpnpd::start(&lab, 1);
    Some((lab, upnpd))
}

/// A current-thread runtime, for code run inside a namespace's thread.
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// From namespace `ns`: the address a UDP who-am-I server at `to` sees, if it answers.
fn reach_udp(ns: &str, to: SocketAddr) -> Option<SocketAddr> {
    run_in_netns(ns, LAB_T, move || super::whoami_client(None, to, 3)).map(|s| s.seen)
}

/// From namespace `ns`: the address a TCP who-am-I server at `to` sees, if it answers.
fn reach_tcp(ns: &str, to: SocketAddr) -> Option<SocketAddr> {
    run_in_netns(ns, LAB_T, move || {
        let mut conn = TcpStream::connect_timeout(&to, WAIT).ok()?;
        conn.set_read_timeout(Some(WAIT)).ok()?;
        let mut text = String::new();
        conn.read_to_string(&mut text).ok()?;
        text.parse().ok()
    })
}

fn reach(ns: &str, proto: Proto, to: SocketAddr) -> Option<SocketAddr> {
    match proto {
        Proto::Udp => reach_udp(ns, to),
        Proto::Tcp => reach_tcp(ns, to),
    }
}

/// Who-am-I servers for both protocols in namespace `ns` on `ip` (any port).
struct Servers {
    udp: super::WhoAmI,
    tcp: super::TcpWhoAmI,
}

impl Servers {
    fn start(lab: &Lab, ns: &str, ip: Ipv4Addr) -> Servers {
        Servers {
            udp: lab.whoami_server(ns, (ip, 0).into()),
            tcp: lab.tcp_whoami_server(ns, (ip, 0).into()),
        }
    }

    fn addr(&self, proto: Proto) -> SocketAddr {
        match proto {
            Proto::Udp => self.udp.addr(),
            Proto::Tcp => self.tcp.addr(),
        }
    }
}

fn options(method: Method, lifetime: Duration) -> Options {
    Options {
        methods: vec![method],
        limit: Duration::from_secs(5),
        lifetime,
        ..Options::default()
    }
}

#[test]
fn each_method_maps_udp_and_tcp_ports_that_the_internet_reaches_until_closed() {
    lab_or_skip!();
    let Some((lab, upnpd)) = lab_with_miniupnpd(
        "lab::mapping::each_method_maps_udp_and_tcp_ports_that_the_internet_reaches_until_closed",
    ) else {
        return;
    };
    let servers = Servers::start(&lab, lab.ns_host(), lab.host_ip(1));
    let targets = [Proto::Udp, Proto::Tcp].map(|p| (p, servers.addr(p)));
    let (router, inet, wan) = (upnpd.view(), lab.ns_inet().to_owned(), lab.wan_ip(1));
    let inet_ip = IpAddr::from([198, 51, 100, 2]);
    let seen = lab.run_in_for(lab.ns_host(), Duration::from_secs(60), move || {
        rt().block_on(async move {
            let mut seen = Vec::new();
            for method in Method::ALL {
                for (proto, local) in targets {
                    let opts = options(method, Duration::from_secs(60));
                    let m = Mapping::open(proto, local, &opts)
                        .await
                        .unwrap_or_else(|e| panic!("{method} {proto}: {e}"));
                    let ext = m.external();
                    assert_eq!((m.method(), ext.ip()), (method, IpAddr::V4(wan)));
                    assert!(
                        router.forwards(proto, ext.port()),
                        "{method} {proto} {ext} not in the router:\n{}",
                        router.chains()
                    );
                    let from_inet = reach(&inet, proto, ext);
                    m.close(Duration::from_secs(2))
                        .await
                        .unwrap_or_else(|e| panic!("{method} {proto} close: {e}"));
                    assert!(
                        !router.forwards(proto, ext.port()),
                        "{method} {proto} {ext} still in the router after close"
                    );
                    let after = reach(&inet, proto, ext);
                    seen.push((method, proto, from_inet, after));
                }
            }
            seen
        })
    });
    for (method, proto, from_inet, after) in seen {
        let from = from_inet.unwrap_or_else(|| {
            panic!(
                "{method} {proto}: the internet did not reach the host through the mapping\n{}",
                upnpd.log()
            )
        });
        assert_eq!(from.ip(), inet_ip, "{method} {proto}");
        assert_eq!(after, None, "{method} {proto}: reached after close");
    }
}

#[test]
fn without_a_mapping_service_the_open_fails_naming_the_gateway_within_its_limit() {
    lab_or_skip!();
    let lab = Lab::builder()
        .uplink(NatKind::PortRestrictedCone, None)
        .build();
    let local = SocketAddr::from((lab.host_ip(1), 5000));
    let limit = Duration::from_millis(1500);
    let (result, elapsed) = lab.run_in(lab.ns_host(), move || {
        rt().block_on(async move {
            let opts = Options {
                limit,
                ..Options::default()
            };
            let start = Instant::now();
            let r = Mapping::open(Proto::Udp, local, &opts)
                .await
                .map(|m| m.external());
            (r.map_err(|e| e.to_string()), start.elapsed())
        })
    });
    assert_eq!(
        result,
        Err("no port mapping service answered at 198.18.1.1: tried pcp, nat-pmp, upnp".to_owned())
    );
    assert!(
        elapsed >= limit - Duration::from_millis(100)
            && elapsed < limit + Duration::from_millis(500),
        "{elapsed:?}"
    );
}

/// The expiry the router's lease file records for a mapping (unix seconds: the fifth
/// field of `PROTO:EXT_PORT:IP:INT_PORT:EXPIRY:DESCRIPTION`).
fn expiry(line: &str) -> u64 {
    let field = line.split(':').nth(4).unwrap_or_default();
    field
        .parse()
        .unwrap_or_else(|_| panic!("no expiry in lease line {line:?}"))
}

#[test]
fn each_method_renews_a_short_lease_at_the_router_before_it_ends() {
    lab_or_skip!();
    let Some((lab, upnpd)) = lab_with_miniupnpd(
        "lab::mapping::each_method_renews_a_short_lease_at_the_router_before_it_ends",
    ) else {
        return;
    };
    let router = upnpd.view();
    let host = lab.host_ip(1);
    let report = lab.run_in_for(lab.ns_host(), Duration::from_secs(30), move || {
        rt().block_on(async move {
            let mut report = Vec::new();
            let mut open = Vec::new();
            for (i, method) in Method::ALL.into_iter().enumerate() {
                let local = SocketAddr::from((host, 41000 + i as u16));
                let m = Mapping::open(Proto::Udp, local, &options(method, SHORT_LEASE))
                    .await
                    .unwrap_or_else(|e| panic!("{method}: {e}"));
                let first = router.lease_line(Proto::Udp, m.external().port());
                open.push((m.lease(), m, first));
            }
            for (lease, m, first) in open {
                let mut watch = m.watch();
                // Two renewals: the second comes after the first lease would have ended.
                let limit = (lease.granted_at + lease.lifetime * 2).into();
                let renewed = tokio::time::timeout_at(limit, async {
                    while watch.borrow_and_update().renewals < 2 {
                        watch.changed().await.expect("renewal task ended");
                    }
                })
                .await;
                let now = router.lease_line(Proto::Udp, lease.external.port());
                let still = router.forwards(Proto::Udp, lease.external.port());
                report.push((lease, renewed.is_ok(), first, now, still, Instant::now()));
                m.close(Duration::from_secs(2)).await.expect("close");
            }
            report
        })
    });
    for (lease, renewed, first, now, still, at) in report {
        let method = lease.method;
        assert!(
            renewed,
            "{method}: not renewed twice within twice the lease {:?}",
            lease.lifetime
        );
        assert!(
            lease.lifetime <= SHORT_LEASE,
            "{method}: granted {:?}",
            lease.lifetime
        );
        assert!(
            at > lease.granted_at + lease.lifetime,
            "{method}: checked before the first lease ended"
        );
        assert!(
            still,
            "{method}: the router no longer forwards after the first lease ended"
        );
        let (first, now) = (
            first.expect("no lease line at first"),
            now.expect("no lease line after renewals"),
        );
        assert!(
            expiry(&now) > expiry(&first),
            "{method}: the router's lease did not move: {first} then {now}"
        );
    }
}

/// `p2pipe map ARGS` running in namespace `ns`, its output lines read on a thread.
struct MapCli {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl MapCli {
    fn spawn(ns: &str, args: &[&str]) -> MapCli {
        let mut cmd = ip(&["netns", "exec", ns]);
        cmd.arg(env!("CARGO_BIN_EXE_p2pipe"))
            .arg("map")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = {
            let _no_rebind = spawn_guard_blocking();
            cmd.spawn().expect("spawn p2pipe map")
        };
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        MapCli { child, lines }
    }

    /// The next line of output, within `limit`.
    fn line(&self, limit: Duration) -> String {
        self.lines
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("no line from p2pipe map within {limit:?}: {e}"))
    }

    /// Sends `signal` (`ip netns exec` execs the command: the pid is p2pipe's).
    fn signal(&self, signal: libc::c_int) {
        // SAFETY: the child is not reaped before `wait_within`, so the pid names it.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// The exit status within `limit` (a bounded poll of `try_wait`).
    fn wait_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "p2pipe map did not exit within {limit:?}"
            );
            // A poll interval, not synchronisation: the exit is what is awaited.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for MapCli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn p2pipe_map_deletes_its_mapping_on_sigint_and_sigterm() {
    lab_or_skip!();
    let Some((lab, upnpd)) =
        lab_with_miniupnpd("lab::mapping::p2pipe_map_deletes_its_mapping_on_sigint_and_sigterm")
    else {
        return;
    };
    let router = upnpd.view();

    // SIGINT, JSON output, the default methods (PCP answers first).
    let mut cli = MapCli::spawn(lab.ns_host(), &["--udp", "42000", "--json"]);
    let mapped: serde_json::Value =
        serde_json::from_str(&cli.line(Duration::from_secs(10))).expect("a JSON line");
    assert_eq!(mapped["event"], "mapped", "{mapped}");
    assert_eq!(mapped["method"], "pcp", "{mapped}");
    assert_eq!(mapped["local"], "198.18.1.2:42000", "{mapped}");
    let external: SocketAddr = mapped["external"].as_str().unwrap().parse().unwrap();
    assert_eq!(external.ip(), IpAddr::V4(lab.wan_ip(1)));
    assert!(router.forwards(Proto::Udp, external.port()));
    cli.signal(libc::SIGINT);
    let status = cli.wait_within(Duration::from_secs(10));
    let deleted: serde_json::Value =
        serde_json::from_str(&cli.line(Duration::from_secs(1))).expect("a JSON line");
    assert!(status.success(), "{status}");
    assert_eq!(deleted["event"], "deleted", "{deleted}");
    assert_eq!(deleted["external"], mapped["external"]);
    assert!(
        !router.forwards(Proto::Udp, external.port()),
        "still mapped after SIGINT"
    );

    // SIGTERM, text output, UPnP.
    let mut cli = MapCli::spawn(lab.ns_host(), &["--tcp", "42001", "--method", "upnp"]);
    let mapped = cli.line(Duration::from_secs(10));
    let prefix = "mapped tcp 198.18.1.2:42001 to ";
    assert!(
        mapped.starts_with(prefix) && mapped.contains(" by upnp at 198.18.1.1"),
        "{mapped}"
    );
    let external: SocketAddr = mapped[prefix.len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(router.forwards(Proto::Tcp, external.port()));
    cli.signal(libc::SIGTERM);
    let status = cli.wait_within(Duration::from_secs(10));
    let deleted = cli.line(Duration::from_secs(1));
    assert!(status.success(), "{status}");
    assert!(
        deleted.starts_with(&format!(
            "deleted the mapping of tcp 198.18.1.2:42001 to {external}"
        )),
        "{deleted}"
    );
    assert!(
        !router.forwards(Proto::Tcp, external.port()),
        "still mapped after SIGTERM"
    );
}

/// What happened for one protocol of one pair: reached or not, and how long the attempt
/// took.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    proto: Proto,
    reached: bool,
    took: Duration,
}

/// A two-peer lab of `a` and `b`, miniupnpd on B's router: B maps a UDP and a TCP
/// who-am-I server's ports (any method, PCP first), and A tries to reach each at its
/// external address.
fn pair_outcomes(a: NatKind, b: NatKind) -> [Outcome; 2] {
    let lab = Lab::builder().peers(a, b).build();
    let upnpd = MiniUpnpd::start(&lab, 2);
    let servers = Servers::start(&lab, lab.ns_peer(2), lab.peer_ip(2));
    let targets = [Proto::Udp, Proto::Tcp].map(|p| (p, servers.addr(p)));
    // B's router's own WAN address: what miniupnpd maps on, whether or not the router
    // translates B's address.
    let (peer_a, wan_b) = (lab.ns_peer(1).to_owned(), super::router_wan_ip(2));
    let outcomes = lab.run_in_for(lab.ns_peer(2), Duration::from_secs(60), move || {
        rt().block_on(async move {
            let mut outcomes = Vec::new();
            for (proto, local) in targets {
                let opts = Options {
                    lifetime: Duration::from_secs(60),
                    ..Options::default()
                };
                let m = Mapping::open(proto, local, &opts)
                    .await
                    .unwrap_or_else(|e| panic!("{a} to {b}: {proto}: {e}"));
                assert_eq!(m.external().ip(), IpAddr::V4(wan_b), "{a} to {b}: {proto}");
                let start = Instant::now();
                let reached = reach(&peer_a, proto, m.external()).is_some();
                outcomes.push(Outcome {
                    proto,
                    reached,
                    took: start.elapsed(),
                });
                m.close(Duration::from_secs(2)).await.expect("close");
            }
            outcomes
        })
    });
    drop(upnpd);
    [outcomes[0], outcomes[1]]
}

/// Checks each outcome against `mapping::reachable`; the table cell for it.
fn check_against_theory(a: NatKind, b: NatKind, o: Outcome) -> String {
    let theory = mapping::reachable(a.nat_type(), b.nat_type(), o.proto);
    assert_eq!(
        o.reached,
        theory.is_ok(),
        "{a} to a mapping behind {b} over {}: reached {}, theory {theory:?}",
        o.proto,
        o.reached
    );
    let ms = o.took.as_millis();
    match theory {
        Ok(()) => format!("works ({ms} ms)"),
        Err(r) => format!("cannot: {r} ({ms} ms)"),
    }
}

#[test]
fn a_peer_reaches_a_mapping_behind_another_nat_where_the_theory_says_it_can() {
    lab_or_skip!();
    if !miniupnpd_or_skip(
        "lab::mapping::a_peer_reaches_a_mapping_behind_another_nat_where_the_theory_says_it_can",
    ) {
        return;
    }
    let pairs = [
        (NatKind::Symmetric, NatKind::PortRestrictedCone),
        (NatKind::UdpBlocked, NatKind::Symmetric),
        (NatKind::FullCone, NatKind::SymmetricUdpFirewall),
    ];
    let runs: Vec<_> = pairs
        .map(|(a, b)| {
            super::spawn_bounded(format!("mapping {a} to {b}"), move || pair_outcomes(a, b))
        })
        .into();
    for ((a, b), run) in pairs.into_iter().zip(runs) {
        for o in run.join_within(super::PER_KIND_T) {
            check_against_theory(a, b, o);
        }
    }
}

/// Every ordered pair of kinds: peer A of each kind reaches (or, per the theory,
/// cannot reach) a UDP and a TCP port mapped on peer B's router, B of each kind. Writes
/// `target/traversal/mapping.md`. Run by `scripts/traversal-tables mapping`.
#[test]
#[ignore = "49 labs: run by scripts/traversal-tables"]
fn every_pair_of_kinds_matches_the_table() {
    lab_or_skip!();
    if !miniupnpd_or_skip("lab::mapping::every_pair_of_kinds_matches_the_table") {
        return;
    }
    let pairs: Vec<(NatKind, NatKind)> = NatKind::ALL
        .iter()
        .flat_map(|&a| NatKind::ALL.iter().map(move |&b| (a, b)))
        .collect();
    let mut cells = std::collections::HashMap::new();
    // Four labs at a time.
    for chunk in pairs.chunks(4) {
        let runs: Vec<_> = chunk
            .iter()
            .map(|&(a, b)| {
                super::spawn_bounded(format!("mapping {a} to {b}"), move || pair_outcomes(a, b))
            })
            .collect();
        for (&(a, b), run) in chunk.iter().zip(runs) {
            for o in run.join_within(super::PER_KIND_T) {
                cells.insert((a, b, o.proto), check_against_theory(a, b, o));
            }
        }
    }
    let mut md = String::from(
        "Peer B maps a port on its router (miniupnpd: PCP answers first); peer A sends to \
         B's router's external address and that port. Rows: the kind of A; columns: the \
         kind of B; the time is A's attempt.\n",
    );
    for proto in [Proto::Udp, Proto::Tcp] {
        md += &format!("\n{}\n\n", proto.to_string().to_uppercase());
        md += &pair_table(|a, b| cells[&(a, b, proto)].clone());
    }
    write_traversal_table("mapping", &md);
}

/// How a [`HostileGateway`] answers.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// A NAT-PMP-only gateway: PCP gets "unsupported version", NAT-PMP is granted.
    NatPmpOnly,
    /// Every request gets `n` bytes of 0xff.
    Garbage(usize),
}

/// A gateway written for the test, at router 1's LAN address, port 5351: it answers
/// as `how` says, until dropped. Counts the requests it got.
struct HostileGateway {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    requests: std::sync::Arc<std::sync::atomic::AtomicU32>,
    thread: Option<super::Bounded<()>>,
}

impl HostileGateway {
    fn start(lab: &Lab, how: Hostile) -> HostileGateway {
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        let bind = SocketAddr::from((Ipv4Addr::new(198, 18, 1, 1), 5351));
        let socket = lab
            .run_in(lab.ns_router(1), move || std::net::UdpSocket::bind(bind))
            .expect("bind the hostile gateway");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let requests = std::sync::Arc::new(AtomicU32::new(0));
        let (halt, count) = (stop.clone(), requests.clone());
        let thread = super::spawn_bounded("hostile gateway".into(), move || {
            let mut buf = [0u8; 1500];
            while !halt.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let answer = hostile_answer(how, &buf[..n]);
                let _ = socket.send_to(&answer, from);
            }
        });
        HostileGateway {
            stop,
            requests,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> u32 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for HostileGateway {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.try_join_within(LAB_T);
        }
    }
}

fn hostile_answer(how: Hostile, req: &[u8]) -> Vec<u8> {
    let n = match how {
        Hostile::Garbage(n) => return vec![0xff; n],
        Hostile::NatPmpOnly => req.len(),
    };
    match (req.first(), n) {
        // NAT-PMP external address: 198.51.100.1, epoch 7.
        (Some(0), 2) => vec![0, 128, 0, 0, 0, 0, 0, 7, 198, 51, 100, 1],
        // NAT-PMP MAP: granted as asked (the internal port as the external one when
        // none is suggested), 60 s or 0 for a deletion.
        (Some(0), 12) => {
            let (op, internal) = (req[1], [req[4], req[5]]);
            let external = if req[6..8] == [0, 0] {
                internal
            } else {
                [req[6], req[7]]
            };
            let lifetime = if req[8..12] == [0; 4] { 0u32 } else { 60 };
            let mut a = vec![0, 128 + op, 0, 0, 0, 0, 0, 7, internal[0], internal[1]];
            a.extend_from_slice(&external);
            a.extend_from_slice(&lifetime.to_be_bytes());
            a
        }
        // Anything else (PCP): NAT-PMP's "unsupported version".
        _ => vec![
            0,
            128 + req.get(1).copied().unwrap_or(0) % 128,
            0,
            1,
            0,
            0,
            0,
            7,
        ],
    }
}

/// Opens a UDP mapping of 198.18.1.2:5000 in `lab`'s host namespace with `opts`: the
/// method or the error, and how long it took.
fn open_in_host(lab: &Lab, opts: Options) -> (Result<Method, String>, Duration) {
    let local = SocketAddr::from((lab.host_ip(1), 5000));
    lab.run_in(lab.ns_host(), move || {
        rt().block_on(async move {
            let start = Instant::now();
            let r = match Mapping::open(Proto::Udp, local, &opts).await {
                Ok(m) => {
                    let method = m.method();
                    m.close(Duration::from_secs(1))
                        .await
                        .map(|()| method)
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            (r, start.elapsed())
        })
    })
}

#[test]
fn a_nat_pmp_only_gateway_is_asked_by_nat_pmp_at_once_and_garbage_fails_within_the_limit() {
    lab_or_skip!();
    let lab = Lab::builder()
        .uplink(NatKind::PortRestrictedCone, None)
        .build();
    let limit = Duration::from_millis(1500);
    let opts = Options {
        limit,
        lifetime: Duration::from_secs(60),
        ..Options::default()
    };
    {
        let gw = HostileGateway::start(&lab, Hostile::NatPmpOnly);
        let (r, took) = open_in_host(&lab, opts.clone());
        assert_eq!(r, Ok(Method::NatPmp));
        // PCP's "unsupported version" ends its turn at once: no waiting out its share.
        assert!(took < limit / 3, "{took:?}");
        // PCP once, NAT-PMP address and map, the deletion.
        assert_eq!(gw.requests(), 4);
    }
    for (size, pcp, natpmp) in [
        (
            3,
            "shorter than any answer",
            "shorter than the 8-byte header",
        ),
        (1200, "longer than 1100 bytes", "longer than any answer"),
    ] {
        let _gw = HostileGateway::start(&lab, Hostile::Garbage(size));
        let opts = Options {
            methods: vec![Method::Pcp, Method::NatPmp],
            ..opts.clone()
        };
        let (r, took) = open_in_host(&lab, opts);
        assert_eq!(
            r,
            Err(format!(
                "no port mapping at 198.18.1.1: pcp answer malformed: {pcp}; nat-pmp answer malformed: {natpmp}"
            ))
        );
        assert!(
            took >= limit - Duration::from_millis(100) && took < limit + Duration::from_millis(500),
            "{took:?}"
        );
    }
}
