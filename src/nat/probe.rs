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
) -> Result<(TestOutcome<SocketAddr>, TestOutcome<SocketAddr>, Tally), Error> {
    let mut tally = Tally::default();
    let mut ts = vec![
        Transaction::new(
            server,
            Request::binding(udp::random_txid()).with_change(true, true),
            stun::Config {
                expect_from: ExpectFrom::Either(want2, server),
                ..config
            },
        )?,
        Transaction::new(
            server,
            Request::binding(udp::random_txid()).with_change(false, true),
            stun::Config {
                expect_from: ExpectFrom::Either(want3, server),
                ..config
            },
        )?,
    ];
    let run = udp::run(&socket, &mut ts).await;
    tally.add(&ts, &run);
    Ok((source_of(&ts[0]), source_of(&ts[1]), tally))
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
    let servers: Vec<SocketAddr> = servers
        .iter()
        .copied()
        .filter(|s| Af::of_socket(s) == af)
        .collect();
    let first = *servers.first().ok_or(Error::NoServer(af))?;
    let device = cfg.device.as_deref();
    let local_ip = match cfg.local_ip {
        Some(ip) => ip,
        None => crate::iface::bind::source_towards(first, device)
            .await
            .map_err(|e| Error::NoLocalAddress(af, e.to_string().to_lowercase()))?,
    };
    let bind = |port| {
        let at = SocketAddr::new(local_ip, port);
        match crate::iface::bind::udp_socket(at, device) {
            // Binding to a device needs privileges; the source address still picks the
            // NIC wherever the route table agrees.
            Err(e) if device.is_some() && e.kind() == std::io::ErrorKind::PermissionDenied => {
                tracing::warn!(
                    ?device,
                    "cannot bind to the device, binding by address only: {e}"
                );
                crate::iface::bind::udp_socket(at, None)
            }
            other => other,
        }
        .map_err(|e| Error::Stun(stun::Error::io("bind", e)))
    };
    let main = bind(0)?;
    let local = main
        .local_addr()
        .map_err(|e| Error::Stun(stun::Error::io("bind", e)))?;
    let mut tally = Tally::default();
    let mut obs = Observations {
        local: Some(local),
        server: Some(first),
        ..Observations::default()
    };

    // Test I, to every server at once.
    let mut test1 = transactions(&servers, cfg.stun)?;
    let usable = |t: &Transaction| {
        t.response()
            .and_then(|r| r.other_address)
            .is_some_and(|o| o.ip() != t.server().ip() && o.port() != t.server().port())
    };
    let mut run = udp::run_until(&main, &mut test1, |ts| {
        ts.iter().any(|t| t.is_finished() && t.response().is_some())
    })
    .await;
    if test1.iter().any(|t| t.response().is_some()) && !test1.iter().any(usable) {
        let more = tokio::time::timeout(
            cfg.rfc5780_grace,
            udp::run_until(&main, &mut test1, |ts| ts.iter().any(usable)),
        )
        .await;
        if let Ok(more) = more {
            run.sent += more.sent;
            run.ignored += more.ignored;
            run.unmatched += more.unmatched;
        }
    }
    tally.add(&test1, &run);
    let chosen = test1
        .iter()
        .find(|t| usable(t))
        .or_else(|| test1.iter().find(|t| t.response().is_some()));
    match chosen {
        None => obs.test1 = TestOutcome::NoReply,
        Some(t) => {
            let r = t.response().expect("chosen for its response");
            obs.server = Some(t.server());
            obs.test1 = TestOutcome::Reply(Binding {
                mapped: r.mapped.expect("a success response has a mapped address"),
                other: r.other_address,
            });
        }
    }
    let server = obs.server.expect("set above");

    if matches!(obs.test1, TestOutcome::Reply(_)) {
        let samples = async {
            if obs.behind_nat() != Some(true) {
                return Ok::<_, Error>((Vec::new(), Tally::default()));
            }
            let sockets = (0..cfg.port_samples)
                .map(|_| bind(0))
                .collect::<Result<Vec<_>, _>>()?;
            let runs = sockets.iter().map(|s| async move {
                let mut ts = transactions(&[server], cfg.stun)?;
                let run = udp::run(s, &mut ts).await;
                let local = s.local_addr().map_err(|e| stun::Error::io("bind", e))?;
                Ok::<_, Error>((ts, run, local))
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
        };
        let mapping = async {
            let mut tally = Tally::default();
            let (mut m2, mut m3) = (TestOutcome::NotRun, TestOutcome::NotRun);
            if let (true, Some(to)) = (obs.wants_mapping_tests(), obs.mapping2_target()) {
                m2 = mapped_from(&main, to, cfg.stun, &mut tally).await?;
                let seen = Observations {
                    mapping2: m2,
                    ..obs.clone()
                };
                if seen.wants_mapping3() {
                    let to = seen.other().expect("mapping tests need the other address");
                    m3 = mapped_from(&main, to, cfg.stun, &mut tally).await?;
                }
            }
            Ok::<_, Error>((m2, m3, tally))
        };
        let filtering = async {
            let (Some(want2), Some(want3)) = (obs.filtering2_source(), obs.filtering3_source())
            else {
                return Ok::<_, Error>((
                    TestOutcome::NotRun,
                    TestOutcome::NotRun,
                    Tally::default(),
                ));
            };
            filtering_round(bind(0)?, server, want2, want3, cfg.filtering).await
        };
        let (samples, mapping, filtering) = tokio::join!(samples, mapping, filtering);
        let (samples, t1) = samples?;
        let (m2, m3, t2) = mapping?;
        let (mut f2, mut f3, t3) = filtering?;
        for t in [t1, t2, t3] {
            tally.merge(t);
        }
        // A filtering test that got no reply decides the type. Where packets are seen
        // to be lost, one silent schedule is not enough evidence: run the silent tests
        // once more, from a fresh socket, and keep any reply.
        let silent = f2 == TestOutcome::NoReply || f3 == TestOutcome::NoReply;
        if silent && tally.loss_seen(cfg.filtering.initial_rto) {
            if let (Some(want2), Some(want3)) = (obs.filtering2_source(), obs.filtering3_source()) {
                let (g2, g3, t4) =
                    filtering_round(bind(0)?, server, want2, want3, cfg.filtering).await?;
                tally.merge(t4);
                if f2 == TestOutcome::NoReply {
                    f2 = g2;
                }
                if f3 == TestOutcome::NoReply {
                    f3 = g3;
                }
            }
        }
        obs.port_samples = samples;
        obs.mapping2 = m2;
        obs.mapping3 = m3;
        obs.filtering2 = f2;
        obs.filtering3 = f3;
    }

    let c = classify(&obs);
    Ok(NatReport {
        nat_type: c.nat_type,
        mapping: c.mapping,
        filtering: c.filtering,
        external: c.external,
        port_allocation: c.port_allocation,
        local: Some(local),
        server: Some(server),
        unknown: c.unknown,
        reasons: c.reasons,
        transactions: tally.transactions,
        requests: tally.requests,
        ignored: tally.ignored,
        elapsed: started.elapsed(),
    })
}

/// Plain Binding transactions, one per server.
fn transactions(servers: &[SocketAddr], config: stun::Config) -> Result<Vec<Transaction>, Error> {
    servers
        .iter()
        .map(|s| Transaction::new(*s, Request::binding(udp::random_txid()), config))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Stun)
}

/// One Binding request from `socket` to `to`: the mapped address it saw.
async fn mapped_from(
    socket: &UdpSocket,
    to: SocketAddr,
    config: stun::Config,
    tally: &mut Tally,
) -> Result<TestOutcome<SocketAddr>, Error> {
    let mut ts = transactions(&[to], config)?;
    let run = udp::run(socket, &mut ts).await;
    tally.add(&ts, &run);
    Ok(match ts[0].response().and_then(|r| r.mapped) {
        Some(m) => TestOutcome::Reply(m),
        None => TestOutcome::NoReply,
    })
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
    let servers: Vec<SocketAddr> = servers
        .iter()
        .copied()
        .filter(|s| Af::of_socket(s) == af)
        .collect();
    let plans = nic.route_plans(af);
    let asks = plans.iter().map(|plan| {
        let servers = &servers;
        async move {
            if servers.is_empty() {
                return None;
            }
            let local = SocketAddr::new(plan.probe_from(), 0);
            // Binding to the device needs privileges; the source address alone still
            // picks the NIC on most hosts.
            let socket = crate::iface::bind::udp_socket(local, Some(&nic.name))
                .or_else(|_| crate::iface::bind::udp_socket(local, None))
                .ok()?;
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
