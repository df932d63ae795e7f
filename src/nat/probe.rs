//! Running the NAT tests over UDP: the I/O around [`classify`](super::classify).
//!
//! Three kinds of socket, all bound to the same local address (and device):
//!
//! - the main socket runs test I (to every server at once, keeping the first that
//!   answers with a usable OTHER-ADDRESS) and then the mapping tests;
//! - a filtering socket, which only ever talks to the chosen server's primary address,
//!   runs both filtering tests at once, so that the mapping tests cannot open its holes;
//! - fresh sockets give the port-allocation samples; their first packets go out before
//!   any other of the second phase, so that a sequential NAT allocates them one after
//!   another.
//!
//! Everything after test I runs concurrently: a full report takes one round trip plus
//! the give-up time of a filtering test that gets no reply.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::classify::{classify, Binding, Observations, PortSample, TestOutcome};
use super::{Error, NatReport};
use crate::addr::{Af, Target};
use crate::stun::{self, udp, ExpectFrom, Request, Transaction};

/// How the NAT tests run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// The retransmission schedule of the tests that expect a reply: test I, the
    /// mapping tests and the port samples. The default sends at 0, 100, 250, 400, ...,
    /// 1150 ms (9 sends) and gives up at 1350 ms. Extra sends cost only when packets are
    /// lost: with 20% loss each way, a test misses its reply about once in 10,000.
    pub stun: stun::Config,
    /// The schedule of the two filtering tests, whose replies a filtering NAT stops:
    /// their give-up time is what a report costs. The default sends 7 times (0 to 850
    /// ms) and gives up at 1050 ms; with 20% loss each way, a reply that should come is
    /// missed about once in 1,300 runs.
    pub filtering: stun::Config,
    /// How long, after a first answer without a usable OTHER-ADDRESS, to wait for
    /// another server's answer with one.
    pub rfc5780_grace: Duration,
    /// Fresh sockets sampled for the port-allocation pattern (at least 3 to tell).
    pub port_samples: usize,
    /// The local address to send from; by default, the one the OS picks to reach the
    /// first server.
    pub local_ip: Option<IpAddr>,
    /// The network device to bind to (`SO_BINDTODEVICE` on Linux).
    pub device: Option<String>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            stun: stun::Config {
                initial_rto: Duration::from_millis(100),
                max_rto: Duration::from_millis(150),
                max_transmissions: 9,
                final_wait_multiplier: 2,
                expect_from: ExpectFrom::Server,
            },
            filtering: stun::Config {
                initial_rto: Duration::from_millis(100),
                max_rto: Duration::from_millis(150),
                max_transmissions: 7,
                final_wait_multiplier: 2,
                expect_from: ExpectFrom::Server,
            },
            rfc5780_grace: Duration::from_millis(300),
            port_samples: 3,
            local_ip: None,
            device: None,
        }
    }
}

/// Counters over all the sockets of one probe.
#[derive(Debug, Default)]
struct Tally {
    transactions: u32,
    requests: u32,
    ignored: u32,
    /// Round trips of replies that came to a single transmission.
    clean_rtt: Option<Duration>,
    /// Replies that came late, after retransmissions: evidence of loss.
    late: u32,
}

impl Tally {
    fn add(&mut self, ts: &[Transaction], run: &udp::RunStats) {
        self.transactions += ts.len() as u32;
        self.requests += run.sent;
        self.ignored += run.ignored + run.unmatched;
        for t in ts {
            let Some(rtt) = t.answered_in() else { continue };
            if t.stats().transmissions <= 1 {
                self.clean_rtt = Some(self.clean_rtt.map_or(rtt, |r| r.min(rtt)));
            } else {
                self.late += 1;
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.transactions += other.transactions;
        self.requests += other.requests;
        self.ignored += other.ignored;
        self.late += other.late;
        self.clean_rtt = match (self.clean_rtt, other.clean_rtt) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Whether packets seem to be lost on the path: a reply needed retransmissions
    /// although replies on this path normally come before the first one is due.
    fn loss_seen(&self, first_rto: Duration) -> bool {
        self.late > 0 && self.clean_rtt.is_none_or(|rtt| rtt < first_rto)
    }
}

/// Both filtering tests at once, from a fresh socket that only talks to `server`:
/// where each reply came from.
async fn filtering_round(
    socket: UdpSocket,
    server: SocketAddr,
    want2: SocketAddr,
    want3: SocketAddr,
    config: stun::Config,
) -> (TestOutcome<SocketAddr>, TestOutcome<SocketAddr>, Tally) {
    let mut tally = Tally::default();
    let mut ts = vec![
        Transaction::new(
            server,
            Request::binding(udp::random_txid()).with_change(true, true),
            stun::Config {
                expect_from: ExpectFrom::Either(want2, server),
                ..config
            },
        ),
        Transaction::new(
            server,
            Request::binding(udp::random_txid()).with_change(false, true),
            stun::Config {
                expect_from: ExpectFrom::Either(want3, server),
                ..config
            },
        ),
    ];
    let run = udp::run(&socket, &mut ts).await;
    tally.add(&ts, &run);
    (source_of(&ts[0]), source_of(&ts[1]), tally)
}

/// Resolves `servers` (`host:port`, port 3478 by default) to addresses of family `af`,
/// keeping their order and dropping names that do not resolve. Every lookup runs under
/// the resolver's time limit, and all run at once.
///
/// # Errors
///
/// A server that is not a valid `host:port` is an error; one that does not resolve is
/// only dropped.
///
/// # Cancel safety
///
/// Cancel safe.
pub async fn resolve_servers(servers: &[String], af: Af) -> Result<Vec<SocketAddr>, Error> {
    let targets = servers
        .iter()
        .map(|s| {
            Target::parse(s, Some(3478)).map_err(|e| {
                Error::Stun(stun::Error::Resolve {
                    server: s.clone(),
                    message: e.to_string(),
                })
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let lookups = targets.iter().map(|t| crate::dns::resolve(t, Some(af)));
    let mut out = Vec::new();
    for found in futures::future::join_all(lookups).await {
        for a in found.into_iter().flatten() {
            if Af::of_socket(&a) == af && !out.contains(&a) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// Runs the NAT tests for family `af` against `servers` and classifies the result.
///
/// `servers` are asked for test I all at once; the first to answer with a usable
/// OTHER-ADDRESS (RFC 5780 support) is used for the rest. A server without it still
/// gives the external address; the behaviour is then unknown.
///
/// # Errors
///
/// No server of family `af`, or no local address to send from (no route, or no such
/// device). A server that does not answer is not an error: the report says
/// `udp-blocked`.
///
/// # Cancel safety
///
/// Cancel safe: nothing outlives the future but the OS's NAT state.
pub async fn probe(af: Af, servers: &[SocketAddr], cfg: &ProbeConfig) -> Result<NatReport, Error> {
    let started = Instant::now();
    let servers = of_family(servers, af);
    let first = *servers.first().ok_or(Error::NoServer(af))?;
    let sockets = Sockets {
        ip: local_ip(af, first, cfg).await?,
        device: cfg.device.as_deref(),
    };
    let main = sockets.bind()?;
    let local = local_addr(&main)?;
    let mut tally = Tally::default();
    let (server, test1) = test1(&main, &servers, cfg, &mut tally).await;
    let mut obs = Observations {
        local: Some(local),
        server: Some(server.unwrap_or(first)),
        test1,
        ..Observations::default()
    };
    if matches!(obs.test1, TestOutcome::Reply(_)) {
        second_phase(&main, &sockets, &mut obs, cfg, &mut tally).await?;
    }
    Ok(report(&obs, tally, started))
}

/// The servers of family `af`, in their order.
fn of_family(servers: &[SocketAddr], af: Af) -> Vec<SocketAddr> {
    servers
        .iter()
        .copied()
        .filter(|s| Af::of_socket(s) == af)
        .collect()
}

/// The local address to send from: the configured one, or the one the OS picks to
/// reach `first` (through the configured device).
async fn local_ip(af: Af, first: SocketAddr, cfg: &ProbeConfig) -> Result<IpAddr, Error> {
    match cfg.local_ip {
        Some(ip) => Ok(ip),
        None => crate::iface::bind::source_towards(first, cfg.device.as_deref())
            .await
            .map_err(|e| Error::NoLocalAddress(af, e.to_string().to_lowercase())),
    }
}

/// Where every socket of one probe is bound: one local address, and a device.
struct Sockets<'a> {
    ip: IpAddr,
    device: Option<&'a str>,
}

impl Sockets<'_> {
    /// A fresh socket on the probe's address (any port) and device.
    fn bind(&self) -> Result<UdpSocket, Error> {
        bind_udp(SocketAddr::new(self.ip, 0), self.device)
            .map_err(|e| Error::Stun(stun::Error::io("bind", e)))
    }
}

/// A UDP socket bound to `at` and to `device`. Binding to a device needs privileges
/// (and is Linux's): where it is refused or unsupported, the socket is bound by
/// address only, with a warning, since the source address still picks the NIC wherever
/// the route table agrees. Any other failure (no such device, say) is an error.
fn bind_udp(at: SocketAddr, device: Option<&str>) -> std::io::Result<UdpSocket> {
    use std::io::ErrorKind::{PermissionDenied, Unsupported};
    match crate::iface::bind::udp_socket(at, device) {
        Err(e) if device.is_some() && matches!(e.kind(), PermissionDenied | Unsupported) => {
            tracing::warn!(?device, error = %e, "cannot bind to the device, binding by address only");
            crate::iface::bind::udp_socket(at, None)
        }
        other => other,
    }
}

fn local_addr(socket: &UdpSocket) -> Result<SocketAddr, Error> {
    socket
        .local_addr()
        .map_err(|e| Error::Stun(stun::Error::io("bind", e)))
}

/// Test I, to every server at once from `main`: the server chosen (the first to answer
/// with a usable OTHER-ADDRESS, else the first to answer) and what it showed. After a
/// first answer without a usable OTHER-ADDRESS, the others get
/// [`rfc5780_grace`](ProbeConfig::rfc5780_grace) to give one.
async fn test1(
    main: &UdpSocket,
    servers: &[SocketAddr],
    cfg: &ProbeConfig,
    tally: &mut Tally,
) -> (Option<SocketAddr>, TestOutcome<Binding>) {
    let mut ts = transactions(servers, cfg.stun);
    let mut run = udp::run_until(main, &mut ts, |ts| {
        ts.iter().any(|t| t.is_finished() && t.response().is_some())
    })
    .await;
    if ts.iter().any(|t| t.response().is_some()) && !ts.iter().any(usable) {
        let more = tokio::time::timeout(
            cfg.rfc5780_grace,
            udp::run_until(main, &mut ts, |ts| ts.iter().any(usable)),
        )
        .await;
        if let Ok(more) = more {
            run.sent += more.sent;
            run.ignored += more.ignored;
            run.unmatched += more.unmatched;
        }
    }
    tally.add(&ts, &run);
    let chosen = ts
        .iter()
        .find(|t| usable(t))
        .or_else(|| ts.iter().find(|t| t.response().is_some()));
    match chosen {
        None => (None, TestOutcome::NoReply),
        Some(t) => (Some(t.server()), test1_outcome(t)),
    }
}

/// What an answered test I transaction showed.
fn test1_outcome(t: &Transaction) -> TestOutcome<Binding> {
    match t.response() {
        None => TestOutcome::NoReply,
        Some(r) => TestOutcome::Reply(Binding {
            mapped: r.mapped.expect("a success response has a mapped address"),
            other: r.other_address,
        }),
    }
}

/// Whether a test I transaction got an answer with a usable OTHER-ADDRESS, as
/// [`Observations::other`] judges it.
fn usable(t: &Transaction) -> bool {
    let seen = Observations {
        server: Some(t.server()),
        test1: test1_outcome(t),
        ..Observations::default()
    };
    seen.other().is_some()
}

/// Everything after test I, at once: the port samples, the mapping tests and the
/// filtering tests; then the silent filtering tests once more where loss is seen.
async fn second_phase(
    main: &UdpSocket,
    sockets: &Sockets<'_>,
    obs: &mut Observations,
    cfg: &ProbeConfig,
    tally: &mut Tally,
) -> Result<(), Error> {
    let (samples, mapping, filtering) = tokio::join!(
        port_samples(sockets, obs, cfg),
        mapping_tests(main, obs, cfg),
        filtering_tests(sockets, obs, cfg),
    );
    let (samples, t1) = samples?;
    let (m2, m3, t2) = mapping;
    let (f2, f3, t3) = filtering?;
    for t in [t1, t2, t3] {
        tally.merge(t);
    }
    obs.port_samples = samples;
    obs.mapping2 = m2;
    obs.mapping3 = m3;
    obs.filtering2 = f2;
    obs.filtering3 = f3;
    retry_silent_filtering(sockets, obs, cfg, tally).await
}

/// The port-allocation samples, from behind a NAT only: one Binding request to the
/// chosen server from each of [`port_samples`](ProbeConfig::port_samples) fresh
/// sockets.
async fn port_samples(
    sockets: &Sockets<'_>,
    obs: &Observations,
    cfg: &ProbeConfig,
) -> Result<(Vec<PortSample>, Tally), Error> {
    let server = obs.server.expect("test I chose a server");
    if obs.behind_nat() != Some(true) {
        return Ok((Vec::new(), Tally::default()));
    }
    let fresh = (0..cfg.port_samples)
        .map(|_| sockets.bind())
        .collect::<Result<Vec<_>, _>>()?;
    let runs = fresh.iter().map(|s| async move {
        let mut ts = transactions(&[server], cfg.stun);
        let run = udp::run(s, &mut ts).await;
        Ok::<_, Error>((ts, run, local_addr(s)?))
    });
    let mut tally = Tally::default();
    let mut out = Vec::new();
    for r in futures::future::join_all(runs).await {
        let (ts, run, local) = r?;
        tally.add(&ts, &run);
        if let Some(m) = ts[0].response().and_then(|r| r.mapped) {
            out.push(PortSample {
                local: local.port(),
                mapped: m.port(),
            });
        }
    }
    Ok((out, tally))
}

/// Mapping tests II and III, from the main socket, where test I asks for them.
async fn mapping_tests(
    main: &UdpSocket,
    obs: &Observations,
    cfg: &ProbeConfig,
) -> (TestOutcome<SocketAddr>, TestOutcome<SocketAddr>, Tally) {
    let mut tally = Tally::default();
    let (mut m2, mut m3) = (TestOutcome::NotRun, TestOutcome::NotRun);
    if let (true, Some(to)) = (obs.wants_mapping_tests(), obs.mapping2_target()) {
        m2 = mapped_from(main, to, cfg.stun, &mut tally).await;
        let seen = Observations {
            mapping2: m2,
            ..obs.clone()
        };
        if seen.wants_mapping3() {
            let to = seen.other().expect("mapping tests need the other address");
            m3 = mapped_from(main, to, cfg.stun, &mut tally).await;
        }
    }
    (m2, m3, tally)
}

/// Both filtering tests from a fresh socket, where test I gave a usable other address.
async fn filtering_tests(
    sockets: &Sockets<'_>,
    obs: &Observations,
    cfg: &ProbeConfig,
) -> Result<(TestOutcome<SocketAddr>, TestOutcome<SocketAddr>, Tally), Error> {
    let (Some(server), Some(want2), Some(want3)) =
        (obs.server, obs.filtering2_source(), obs.filtering3_source())
    else {
        return Ok((TestOutcome::NotRun, TestOutcome::NotRun, Tally::default()));
    };
    Ok(filtering_round(sockets.bind()?, server, want2, want3, cfg.filtering).await)
}

/// A filtering test that got no reply decides the type. Where packets are seen to be
/// lost, one silent schedule is not enough evidence: the silent tests run once more,
/// from a fresh socket, and any reply is kept.
async fn retry_silent_filtering(
    sockets: &Sockets<'_>,
    obs: &mut Observations,
    cfg: &ProbeConfig,
    tally: &mut Tally,
) -> Result<(), Error> {
    let silent = obs.filtering2 == TestOutcome::NoReply || obs.filtering3 == TestOutcome::NoReply;
    if !silent || !tally.loss_seen(cfg.filtering.initial_rto) {
        return Ok(());
    }
    let (g2, g3, t4) = filtering_tests(sockets, obs, cfg).await?;
    tally.merge(t4);
    if obs.filtering2 == TestOutcome::NoReply {
        obs.filtering2 = g2;
    }
    if obs.filtering3 == TestOutcome::NoReply {
        obs.filtering3 = g3;
    }
    Ok(())
}

/// The report: the classification of `obs`, with the probe's counters.
fn report(obs: &Observations, tally: Tally, started: Instant) -> NatReport {
    let c = classify(obs);
    NatReport {
        nat_type: c.nat_type,
        mapping: c.mapping,
        filtering: c.filtering,
        external: c.external,
        port_allocation: c.port_allocation,
        local: obs.local,
        server: obs.server,
        unknown: c.unknown,
        reasons: c.reasons,
        transactions: tally.transactions,
        requests: tally.requests,
        ignored: tally.ignored,
        elapsed: started.elapsed(),
    }
}

/// Plain Binding transactions, one per server.
fn transactions(servers: &[SocketAddr], config: stun::Config) -> Vec<Transaction> {
    servers
        .iter()
        .map(|s| Transaction::new(*s, Request::binding(udp::random_txid()), config))
        .collect()
}

/// One Binding request from `socket` to `to`: the mapped address it saw.
async fn mapped_from(
    socket: &UdpSocket,
    to: SocketAddr,
    config: stun::Config,
    tally: &mut Tally,
) -> TestOutcome<SocketAddr> {
    let mut ts = transactions(&[to], config);
    let run = udp::run(socket, &mut ts).await;
    tally.add(&ts, &run);
    match ts[0].response().and_then(|r| r.mapped) {
        Some(m) => TestOutcome::Reply(m),
        None => TestOutcome::NoReply,
    }
}

/// Where a change request's reply came from: the transaction accepted it only from
/// the expected address or from the server itself.
fn source_of(t: &Transaction) -> TestOutcome<SocketAddr> {
    match t.answered_from() {
        None => TestOutcome::NoReply,
        Some(from) => TestOutcome::Reply(from),
    }
}

/// The routes of `nic` for family `af`, with their external addresses filled in by
/// STUN: each of the NIC's route plans asks `servers` (all at once) from its first
/// address, bound to the NIC by name where the OS allows it. A plan whose probe gets no
/// answer still becomes a route, with an unknown external address.
///
/// # Cancel safety
///
/// Cancel safe.
pub async fn routes(
    nic: &crate::iface::Interface,
    af: Af,
    servers: &[SocketAddr],
    config: stun::Config,
) -> Vec<crate::iface::Route> {
    let servers = of_family(servers, af);
    let plans = nic.route_plans(af);
    let asks = plans.iter().map(|plan| {
        let servers = &servers;
        async move {
            if servers.is_empty() {
                return None;
            }
            let local = SocketAddr::new(plan.probe_from(), 0);
            let socket = bind_udp(local, Some(&nic.name)).ok()?;
            let (_, r) = udp::first_answer(&socket, servers, config).await.ok()?;
            r.mapped.map(|m| m.ip())
        }
    });
    let seen = futures::future::join_all(asks).await;
    plans
        .into_iter()
        .zip(seen)
        .map(|(plan, ext)| plan.complete(ext))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;
    use crate::stun::tests::{plain_v4, response, SUCCESS};
    use crate::stun::TransactionId;

    /// A test I transaction to 203.0.113.10:3478, answered with this OTHER-ADDRESS value.
    fn answered(other: Vec<u8>) -> Transaction {
        let server: SocketAddr = "203.0.113.10:3478".parse().unwrap();
        let txid = [5; 12];
        let request = Request::binding(TransactionId(txid));
        let mut t = Transaction::new(server, request, ProbeConfig::default().stun);
        let now = Instant::now();
        let _ = t.start(now);
        let mapped = (0x0001, plain_v4([198, 51, 100, 7], 40000));
        let bytes = response(SUCCESS, txid, &[mapped, (0x802c, other)]);
        let _ = t.handle_input(server, &bytes, now);
        assert!(t.response().is_some(), "the reply is accepted");
        t
    }

    #[test]
    fn an_other_address_of_the_other_family_is_not_usable() {
        let mut v6 = vec![0, 2];
        v6.extend_from_slice(&3479u16.to_be_bytes());
        v6.extend_from_slice(&"2001:db8::11".parse::<Ipv6Addr>().unwrap().octets());
        let t = answered(v6);
        assert!(t.response().unwrap().other_address.unwrap().is_ipv6());
        assert!(!usable(&t));
        assert!(usable(&answered(plain_v4([203, 0, 113, 11], 3479))));
    }
}
