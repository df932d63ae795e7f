//! The connect race: every allowed strategy started as happy eyeballs would, the first
//! authenticated path kept, the others stopped, and a report of it all.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::direct::{self, secs};
use super::node::{assumed_tcp, Inner};
use super::path::SecurePath;
use super::report::{Outcome, Report, Strategy};
use super::{come, commit, punch, relay, upgrade, Error};
use crate::identity::{unix_ms, FamilyEntry, PeerRecord, PublicKey};
use crate::nat::NatType;
use crate::pipe::Pipe;
use crate::traverse::punch::tcp::tcp_feasibility;
use crate::traverse::punch::{udp_feasibility, NatSummary};
use crate::{Af, Proto};

/// How a connect runs.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The strategies allowed (default: all of them).
    pub strategies: Vec<Strategy>,
    /// Start the relay at once, not after the node's relay delay: the fastest path to a
    /// first message, at the cost of an allocation that a direct path may make useless.
    pub fast: bool,
    /// The time limit of the whole connect (default: the node's, 10 s).
    pub limit: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            strategies: Strategy::ALL.to_vec(),
            fast: false,
            limit: None,
        }
    }
}

/// A connected peer: the path, and how it was found.
#[derive(Debug)]
pub struct Connection {
    /// The path, authenticated by the peer's key (and encrypted unless the node is not).
    pub pipe: Pipe,
    /// The peer's key.
    pub peer: PublicKey,
    /// What each strategy did.
    pub report: Report,
    via: watch::Receiver<Strategy>,
}

impl Connection {
    /// The strategy whose path carries the pipe now: the report's winner, or
    /// [`Strategy::Punch`] once a relayed path has moved to a punched one.
    pub fn via(&self) -> Strategy {
        *self.via.borrow()
    }

    /// Waits until the pipe moves to another path, and returns the new path's strategy;
    /// `None` if it never will (the path was not relayed, or the tries are over).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn moved(&mut self) -> Option<Strategy> {
        self.via.changed().await.ok()?;
        Some(*self.via.borrow())
    }
}

/// A way to a path under way: the path, or why there is none.
type PathFuture<'a> = Pin<Box<dyn Future<Output = Result<SecurePath, String>> + Send + 'a>>;

/// A strategy under way: when it ends, its path or its reason.
type Running<'a> =
    Pin<Box<dyn Future<Output = (Strategy, Result<SecurePath, String>)> + Send + 'a>>;

/// What a connect knows before it starts anything.
struct Plan<'a> {
    inner: &'a Arc<Inner>,
    peer: PublicKey,
    proto: Proto,
    /// The family the NAT-dependent strategies use.
    af: Af,
    /// The peer's NAT on that family, from its record.
    theirs: NatSummary,
    limit: Duration,
    fast: bool,
}

pub(crate) async fn run(
    inner: &Arc<Inner>,
    record: &PeerRecord,
    proto: Proto,
    opts: &ConnectOptions,
) -> Result<Connection, Error> {
    if record.node_id() == inner.identity.node_id() {
        return Err(Error::NotAPeer);
    }
    if record.expires_ms() <= unix_ms(SystemTime::now()) {
        return Err(Error::Expired {
            peer: record.node_id(),
        });
    }
    let limit = opts.limit.unwrap_or(inner.settings.limits.connect);
    let af = inner.nat_family();
    let plan = Plan {
        inner,
        peer: *record.public_key(),
        proto,
        af,
        theirs: their_nat(record, af),
        limit,
        fast: opts.fast,
    };
    let mut report = Report::new(record.node_id(), proto);
    let won = race(&plan, record, &opts.strategies, &mut report).await;
    let Some(path) = won else {
        return Err(Error::Unreachable(Box::new(report)));
    };
    report.path = Some((
        path.pipe.local_addr(),
        path.pipe.peer_addr().unwrap_or(path.pipe.local_addr()),
    ));
    let winner = report.winner.unwrap_or(Strategy::Direct);
    tracing::info!(peer = %report.peer, %proto, %winner, ms = report.elapsed.as_millis() as u64, "connected");
    let (tx, via) = watch::channel(winner);
    let upgradable = winner == Strategy::Relay
        && opts.strategies.contains(&Strategy::Punch)
        && plan.punchable().is_ok();
    if let (true, Some(mover)) = (upgradable, path.mover) {
        upgrade::start(
            inner,
            path.peer,
            proto,
            plan.af,
            path.hello.token,
            mover,
            tx,
        );
    }
    Ok(Connection {
        pipe: path.pipe,
        peer: path.peer,
        report,
        via,
    })
}

/// Runs `strategies` by `plan` until one makes a path that the peer confirms, or the
/// limit passes; records each in `report`. The others are dropped (stopped) on return.
async fn race(
    plan: &Plan<'_>,
    record: &PeerRecord,
    strategies: &[Strategy],
    report: &mut Report,
) -> Option<SecurePath> {
    let started = Instant::now();
    let mut running = FuturesUnordered::new();
    let mut under_way = Vec::new();
    for strategy in Strategy::ALL.into_iter().filter(|s| strategies.contains(s)) {
        match plan.start(strategy, record) {
            Ok(fut) => {
                under_way.push(strategy);
                running.push(fut);
            }
            Err(reason) => report.record(strategy, Outcome::Skipped(reason), started.elapsed()),
        }
    }
    let deadline = started + plan.limit;
    let mut won = None;
    while won.is_none() {
        let next = tokio::select! {
            next = running.next() => next,
            () = tokio::time::sleep_until(deadline) => break,
        };
        let Some((strategy, result)) = next else {
            break;
        };
        under_way.retain(|s| *s != strategy);
        let left = deadline.saturating_duration_since(Instant::now());
        let kept = match result {
            Ok(path) => commit::commit(&path.pipe, &path.hello.token, left)
                .await
                .map(|()| path),
            Err(reason) => Err(reason),
        };
        match kept {
            Ok(path) => {
                report.record(strategy, Outcome::Connected, started.elapsed());
                won = Some(path);
            }
            Err(reason) => report.record(strategy, Outcome::Failed(reason), started.elapsed()),
        }
    }
    drop(running);
    let elapsed = started.elapsed();
    for strategy in under_way {
        let outcome = match won {
            Some(_) => Outcome::Cancelled,
            None => Outcome::Failed(format!(
                "no path within the connect limit of {}",
                secs(plan.limit)
            )),
        };
        report.record(strategy, outcome, elapsed);
    }
    report.elapsed = elapsed;
    won
}

impl<'a> Plan<'a> {
    /// Starts `strategy`, or says why it cannot work between these two nodes.
    fn start(&self, strategy: Strategy, record: &PeerRecord) -> Result<Running<'a>, String> {
        let (inner, peer, proto, limit) = (self.inner, self.peer, self.proto, self.limit);
        let signalled = || self.signalled(record);
        let fut: PathFuture<'a> = match strategy {
            Strategy::Direct => {
                let (own, _) = direct::candidates(inner, record, proto);
                if own.is_empty() {
                    return Err("the peer's record offers no address this node can reach".into());
                }
                Box::pin(async move {
                    direct::dial(inner, &peer, &own, proto, Strategy::Direct, Inner::token()).await
                })
            }
            Strategy::Reverse => {
                signalled()?;
                self.reachable()?;
                let to: Vec<_> = inner
                    .listening
                    .iter()
                    .copied()
                    .take(super::request::MAX_COME)
                    .collect();
                Box::pin(async move {
                    come::connect(inner, &peer, proto, Strategy::Reverse, to, limit).await
                })
            }
            Strategy::Upnp => {
                let (_, theirs) = direct::candidates(inner, record, proto);
                let mine: Vec<_> = self.mapped_here();
                if theirs.is_empty() && mine.is_empty() {
                    return Err("neither node has a port mapped on its router".into());
                }
                if !mine.is_empty() {
                    signalled()?;
                }
                Box::pin(async move { upnp(inner, &peer, proto, theirs, mine, limit).await })
            }
            Strategy::Punch => {
                signalled()?;
                self.punchable()?;
                let delay = if self.theirs.nat_type == Some(NatType::Open) {
                    inner.settings.limits.stagger * 2
                } else {
                    Duration::ZERO
                };
                let af = self.af;
                Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    punch::connect(inner, &peer, proto, af, limit).await
                })
            }
            Strategy::Relay => {
                if inner.settings.turn.is_empty() {
                    return Err(relay::NO_RELAY.into());
                }
                signalled()?;
                let delay = if self.fast {
                    Duration::ZERO
                } else {
                    inner.settings.limits.relay_delay
                };
                Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    relay::connect(inner, &peer, proto, limit).await
                })
            }
        };
        Ok(Box::pin(async move { (strategy, fut.await) }))
    }

    /// Whether the peer can be signalled: this node has a broker the peer's record
    /// names.
    fn signalled(&self, record: &PeerRecord) -> Result<(), String> {
        if self.inner.signaller.is_none() {
            return Err(super::node::NO_SIGNALLING.into());
        }
        let theirs = &record.signalling().brokers;
        if !self
            .inner
            .settings
            .brokers
            .iter()
            .any(|b| theirs.contains(b))
        {
            return Err(format!(
                "no signalling broker in common (the peer uses {})",
                if theirs.is_empty() {
                    "none".to_string()
                } else {
                    theirs.join(", ")
                }
            ));
        }
        Ok(())
    }

    /// Whether the peer can connect to this node's own addresses.
    fn reachable(&self) -> Result<(), String> {
        let mine = &self.inner.family(self.af).nat;
        let blocked = match self.proto {
            Proto::Udp => !matches!(
                mine.nat_type,
                None | Some(NatType::Open | NatType::FullCone)
            ),
            Proto::Tcp => !assumed_tcp(mine).accepts(),
        };
        match (blocked, mine.nat_type) {
            (true, Some(NatType::UdpBlocked)) => {
                Err("this node's udp is blocked (no stun server answered it)".into())
            }
            (true, Some(t)) => Err(format!(
                "this node is behind a {t} nat that lets no new {} connection in",
                self.proto
            )),
            _ => Ok(()),
        }
    }

    /// Whether the punch can work, by the two NATs.
    fn punchable(&self) -> Result<(), String> {
        let mine = &self.inner.family(self.af).nat;
        let unknown = |whose: &str| {
            format!("{whose} nat is unknown (no stun answer), and a tcp punch needs to know it")
        };
        match (self.proto, mine.nat_type, self.theirs.nat_type) {
            (Proto::Tcp, None, _) => return Err(unknown("this node's")),
            (Proto::Tcp, _, None) => return Err(unknown("the peer's")),
            _ => {}
        }
        match self.proto {
            Proto::Udp => udp_feasibility(mine, &self.theirs)
                .map(drop)
                .map_err(|r| r.to_string()),
            Proto::Tcp => tcp_feasibility(&assumed_tcp(mine), &assumed_tcp(&self.theirs))
                .map(drop)
                .map_err(|r| r.to_string()),
        }
    }

    /// This node's ports mapped for the connect's protocol, on its external address.
    fn mapped_here(&self) -> Vec<std::net::SocketAddr> {
        let Some(ext) = self.inner.v4.external else {
            return Vec::new();
        };
        self.inner
            .mapped
            .iter()
            .filter(|(p, _, _)| *p == self.proto)
            .map(|(_, _, e)| std::net::SocketAddr::new(ext.ip(), e.port()))
            .collect()
    }
}

/// The port-mapping strategy: connect to the peer's mapped ports, and ask the peer to
/// connect to this node's; the first path wins.
async fn upnp(
    inner: &Arc<Inner>,
    peer: &PublicKey,
    proto: Proto,
    theirs: Vec<std::net::SocketAddr>,
    mine: Vec<std::net::SocketAddr>,
    limit: Duration,
) -> Result<SecurePath, String> {
    let mut ways: FuturesUnordered<PathFuture<'_>> = FuturesUnordered::new();
    if !theirs.is_empty() {
        ways.push(Box::pin(direct::dial(
            inner,
            peer,
            &theirs,
            proto,
            Strategy::Upnp,
            Inner::token(),
        )));
    }
    if !mine.is_empty() {
        ways.push(Box::pin(come::connect(
            inner,
            peer,
            proto,
            Strategy::Upnp,
            mine,
            limit,
        )));
    }
    let mut reasons = Vec::new();
    while let Some(result) = ways.next().await {
        match result {
            Ok(path) => return Ok(path),
            Err(r) => reasons.push(r),
        }
    }
    Err(reasons.join("; "))
}

/// The peer's NAT on `af`, from its record (unknown where it says nothing).
fn their_nat(record: &PeerRecord, af: Af) -> NatSummary {
    let family: Option<&FamilyEntry> = record
        .interfaces()
        .iter()
        .flat_map(|i| &i.families)
        .find(|f| f.af == af && f.nat_type.is_some())
        .or_else(|| {
            record
                .interfaces()
                .iter()
                .flat_map(|i| &i.families)
                .find(|f| f.af == af)
        });
    family.map_or_else(NatSummary::default, |f| NatSummary {
        nat_type: f.nat_type,
        mapping: f.mapping,
        filtering: f.filtering,
        port_allocation: f.port_allocation,
    })
}
