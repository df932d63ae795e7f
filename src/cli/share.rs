//! `p2pipe share`: run a file-sharing node on a folder.
//!
//! Without a folder it shares `~/Public`, creating it if missing. Every argument is
//! checked before the node binds its port, so a typo costs nothing. By default the node
//! listens on every interface (`[::]`, dual-stack; `0.0.0.0` where IPv6 is missing), and
//! its id is the LAN address of the default interface, so that other machines can join
//! it; `--bind 127.0.0.1` keeps it to this machine. At start it prints its id, the
//! addresses others can reach it at, the files it left out and why, and the result of
//! each `--join`; in the background it asks STUN servers (as `p2pipe nat` does) for the
//! external address. Then it logs, at info level, the peers that join and leave, the
//! searches it answers, the files it serves and the trusted operations it accepts or
//! refuses.
//!
//! With `--signal` it also runs a P2P node beside the file node and prints its signed
//! address (`p2p address p2pipe1:...`): `p2pipe fetch --from`, `search --via` and
//! `shell` with that address reach the node from behind any NAT, every TCP path that arrives being served as a tunnel
//! exit to the file node's own listener (see docs/files-across-nats.md).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use p2pipe::addr::{AddrClass, Af};
use p2pipe::filer::{Error as FilerError, FilerNode, NodeConfig, PeerId, Skipped};
use p2pipe::iface::Interface;
use p2pipe::p2p::{Arrival, Node, Tunnel, TunnelOptions};
use p2pipe::Proto;

use super::node::NodeArgs;
use super::servers;

/// How long the background STUN request waits for an answer.
const STUN_WAIT: Duration = Duration::from_millis(1500);

/// Arguments of `p2pipe share`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The folder to share (downloads asked by a trusted client land here too); by
    /// default ~/Public, created if missing.
    dir: Option<PathBuf>,
    /// The address to listen on. By default every interface ([::], which takes IPv4
    /// too, or 0.0.0.0 without IPv6); 127.0.0.1 keeps the node to this machine.
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// The port to listen on (0: any free port).
    #[arg(long, default_value_t = 7000)]
    port: u16,
    /// The host others reach this node at, which makes its id HOST:PORT. By default
    /// the address it listens on, or for every interface the LAN address of the
    /// default one.
    #[arg(long, value_name = "HOST")]
    advertise: Option<String>,
    /// A node to join through (repeatable), as btfiler's buildpeers does.
    #[arg(long, value_name = "HOST:PORT")]
    join: Vec<String>,
    /// How many hops to follow when joining.
    #[arg(long, default_value_t = 2)]
    hops: u32,
    /// The most peers in the table (at least 1).
    #[arg(long, default_value_t = 64)]
    max_peers: usize,
    /// A file holding the node's secret; without one, trusted operations are off.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Accept trusted operations from any address, not only loopback.
    #[arg(long)]
    trust_remote: bool,
    /// A STUN server to learn the external address from (repeatable); replaces
    /// $P2PIPE_STUN, the config file and the built-in list, as for `p2pipe nat`.
    #[arg(long = "stun", value_name = "HOST:PORT")]
    stun: Vec<String>,
    /// Do not ask STUN servers for the external address.
    #[arg(long, conflicts_with = "stun")]
    no_stun: bool,
    /// A signalling broker, mqtt://HOST:PORT (repeatable): runs a P2P node beside the
    /// file node and prints its signed address, which `p2pipe fetch --from` takes to
    /// reach this node across NATs. The P2P node uses the --stun servers and listens
    /// on --bind (every interface by default).
    #[arg(long = "signal", value_name = "URL")]
    signal: Vec<String>,
    /// A TURN server for the P2P node's relay, turn://USER:PASS@HOST:PORT (repeatable;
    /// the first is used). Needs --signal.
    #[arg(long = "turn", value_name = "URL", requires = "signal")]
    turn: Vec<super::node::TurnUrl>,
    /// The P2P node's key file; created (mode 0600) when missing. Needs --signal.
    /// Default: $XDG_CONFIG_HOME/p2pipe/node.key or ~/.config/p2pipe/node.key.
    #[arg(long, value_name = "FILE", requires = "signal")]
    key_file: Option<PathBuf>,
    /// The port the P2P node listens on, TCP and UDP (default: one the system picks).
    #[arg(long, value_name = "P", default_value_t = 0, requires = "signal")]
    p2p_port: u16,
}

/// Reads a secret file: its bytes, without a trailing newline.
pub fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut s = std::fs::read(path).map_err(|e| {
        let e = e.to_string().to_lowercase();
        format!("cannot read secret file {}: {e}", path.display())
    })?;
    while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        s.pop();
    }
    if s.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(s)
}

/// Splits `host:port` (or `[v6]:port`); the error says why it is not one.
fn host_port(s: &str) -> Result<(String, u16), String> {
    match p2pipe::Target::parse(s, None) {
        Ok(p2pipe::Target::Addr(a)) => Ok((a.ip().to_string(), a.port())),
        Ok(p2pipe::Target::Host { host, port }) => Ok((host, port)),
        Err(p2pipe::error::Error::InvalidTarget { reason, .. }) => Err(reason.to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// Everything the node needs, checked before anything is bound.
struct Checked {
    dir: PathBuf,
    created: bool,
    joins: Vec<(String, String, u16)>,
    cfg: NodeConfig,
    stun: Option<Vec<String>>,
}

fn check(args: &Args) -> Result<Checked, String> {
    if args.max_peers == 0 {
        return Err("--max-peers must be at least 1".into());
    }
    let mut joins = Vec::with_capacity(args.join.len());
    for j in &args.join {
        let why = |reason: &str| format!("invalid --join {j}: {reason} (expected HOST:PORT)");
        let (host, port) = host_port(j).map_err(|e| why(&e))?;
        if port == 0 {
            return Err(why("port 0"));
        }
        joins.push((j.clone(), host, port));
    }
    if let Some(h) = &args.advertise {
        PeerId::new(h, 1).map_err(|e| format!("invalid --advertise {h}: {e}"))?;
    }
    let secret = args.secret_file.as_deref().map(read_secret).transpose()?;
    if secret.is_some() && !args.signal.is_empty() && !args.trust_remote {
        // A tunnel's connections reach the file node from loopback, where trusted
        // operations are taken: say so rather than let remote peers pass as local.
        return Err(
            "--secret-file with --signal: peers reached through the p2p node \
             connect from loopback, where trusted operations are allowed; pass \
             --trust-remote to accept them from any address that proves the secret"
                .into(),
        );
    }
    let loopback_only = args.bind.is_some_and(|ip| ip.is_loopback());
    // Asked when the node listens beyond loopback, or when servers are named.
    let stun = if args.no_stun || (loopback_only && args.stun.is_empty()) {
        None
    } else {
        Some(servers::servers(&args.stun)?.0)
    };
    let (dir, created) = folder(args.dir.as_deref())?;
    let mut cfg = NodeConfig::new(&dir);
    cfg.max_peers = args.max_peers;
    cfg.trusted_from_anywhere = args.trust_remote;
    cfg.secret = secret;
    cfg.advertise_host = args.advertise.clone();
    Ok(Checked {
        dir,
        created,
        joins,
        cfg,
        stun,
    })
}

/// The folder to share: the one given, which must exist, or `~/Public`, created if
/// missing. Also whether it was created.
fn folder(given: Option<&Path>) -> Result<(PathBuf, bool), String> {
    if let Some(dir) = given {
        return match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => Ok((dir.to_path_buf(), false)),
            Ok(_) => Err(format!("{} is not a folder", dir.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
                "no folder {}: create it, or run \"p2pipe share\" to share ~/Public",
                dir.display()
            )),
            Err(e) => Err(format!(
                "cannot open {}: {}",
                dir.display(),
                e.to_string().to_lowercase()
            )),
        };
    }
    let home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .filter(|h| !h.is_empty())
        .ok_or("no home folder ($HOME is not set): name the folder to share")?;
    let dir = PathBuf::from(home).join("Public");
    if dir.is_dir() {
        return Ok((dir, false));
    }
    std::fs::create_dir(&dir).map_err(|e| {
        let e = e.to_string().to_lowercase();
        format!("cannot create {}: {e}", dir.display())
    })?;
    Ok((dir, true))
}

/// Starts the node on `--bind`, or on `[::]` (dual-stack) falling back to `0.0.0.0`
/// where IPv6 cannot be bound.
async fn start(args: &Args, cfg: NodeConfig) -> Result<FilerNode, FilerError> {
    if let Some(ip) = args.bind {
        return FilerNode::start(SocketAddr::new(ip, args.port), cfg).await;
    }
    let any6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), args.port);
    match FilerNode::start(any6, cfg.clone()).await {
        Err(FilerError::Listen { kind, reason, .. })
            if !matches!(
                kind,
                std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            tracing::debug!(%reason, "cannot listen on [::], listening on 0.0.0.0");
            let any4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), args.port);
            FilerNode::start(any4, cfg).await
        }
        other => other,
    }
}

/// The addresses others can reach a node listening on `bound` at: the bound address
/// itself, or for a wildcard the addresses of the interfaces that are up (not loopback
/// or link-local; IPv6 only for `[::]`), the node's own id first.
fn reachable(bound: SocketAddr, id: &PeerId) -> Vec<String> {
    let port = bound.port();
    let mut out = vec![id.to_string()];
    if !bound.ip().is_unspecified() {
        return out;
    }
    let usable = |class: AddrClass| class.is_unicast() && class != AddrClass::LinkLocal;
    for nic in Interface::list().unwrap_or_default() {
        if !nic.flags.up || nic.flags.loopback {
            continue;
        }
        let v4 = nic
            .v4
            .iter()
            .filter(|a| usable(a.class))
            .map(|a| SocketAddr::new(a.ip.into(), port));
        let v6 = nic
            .v6
            .iter()
            .filter(|a| bound.is_ipv6() && usable(a.class))
            .map(|a| SocketAddr::new(a.ip.into(), port));
        for a in v4.chain(v6) {
            let a = a.to_string();
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// The "skipped" line: what was left out and why.
fn skipped_line(skipped: &Skipped) -> String {
    let mut reasons: Vec<(&str, Vec<String>)> = Vec::new();
    for (name, why) in &skipped.names {
        let quoted = format!("'{}'", name.escape_debug());
        match reasons.iter_mut().find(|(w, _)| w == why) {
            Some((_, names)) => names.push(quoted),
            None => reasons.push((why, vec![quoted])),
        }
    }
    let mut parts: Vec<String> = reasons
        .into_iter()
        .map(|(why, names)| {
            format!(
                "names the protocol cannot carry ({why}): {}",
                names.join(", ")
            )
        })
        .collect();
    let more = skipped.count - skipped.names.len();
    if more > 0 {
        parts.push(format!("and {more} more"));
    }
    format!(
        "skipped {}: {}; hidden files and part files are not shared",
        crate::cli::count(skipped.count as u64, "file"),
        parts.join("; ")
    )
}

/// Asks the STUN servers for the external address of each family the node listens on,
/// and prints what they say.
async fn external(list: Vec<String>, families: Vec<Af>, id: PeerId) {
    let config = p2pipe::stun::Config {
        initial_rto: Duration::from_millis(200),
        max_rto: Duration::from_millis(400),
        max_transmissions: 4,
        final_wait_multiplier: 2,
        expect_from: p2pipe::stun::ExpectFrom::Server,
    };
    let ask = |af: Af| {
        let list = &list;
        async move {
            let servers = tokio::time::timeout(STUN_WAIT, p2pipe::nat::resolve_servers(list, af))
                .await
                .ok()?
                .ok()?;
            if servers.is_empty() {
                return None;
            }
            let any = SocketAddr::new(af.unspecified(), 0);
            let socket = p2pipe::iface::bind::udp_socket(any, None).ok()?;
            let asked = p2pipe::stun::udp::first_answer(&socket, &servers, config);
            let (_, answer) = tokio::time::timeout(STUN_WAIT, asked).await.ok()?.ok()?;
            answer.mapped.map(|a| a.ip())
        }
    };
    let answers = futures::future::join_all(families.iter().map(|af| ask(*af))).await;
    let own: Vec<IpAddr> = Interface::list()
        .unwrap_or_default()
        .iter()
        .flat_map(|n| {
            let v4 = n.v4.iter().map(|a| IpAddr::from(a.ip));
            let v6 = n.v6.iter().map(|a| IpAddr::from(a.ip));
            v4.chain(v6).collect::<Vec<_>>()
        })
        .collect();
    let mut any = false;
    for ip in answers.into_iter().flatten() {
        any = true;
        if own.contains(&ip) {
            println!("external address {ip} (stun): this machine's own, no nat in front");
        } else {
            println!(
                "external address {ip} (stun): others outside the network reach this node only if the router forwards tcp port {} to {id}",
                id.port()
            );
        }
    }
    if !any {
        tracing::info!(
            servers = list.len(),
            "no stun server answered; the external address is unknown"
        );
    }
}

/// The P2P node's options, from `share`'s own.
fn node_args(args: &Args) -> NodeArgs {
    NodeArgs::for_share(
        args.signal.clone(),
        args.stun.clone(),
        args.no_stun,
        args.turn.clone(),
        args.key_file.clone(),
        args.p2p_port,
        args.bind
            .filter(|ip| !ip.is_unspecified())
            .into_iter()
            .collect(),
    )
}

/// Where a tunnel exit connects: the file node's listener (loopback for a wildcard).
fn exit_target(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, bound.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, bound.port()).into(),
        _ => bound,
    }
}

/// Serves every TCP path that reaches the P2P node as a tunnel exit to `target`, until
/// the node stops (or this future is dropped, which ends every tunnel).
async fn serve_arrivals(node: &Node, target: SocketAddr) {
    let mut tunnels = tokio::task::JoinSet::new();
    loop {
        let arrival = tokio::select! {
            a = node.accept() => a,
            Some(_) = tunnels.join_next() => continue,
        };
        let Some(arrival) = arrival else {
            return;
        };
        let who = arrival.node_id();
        let Arrival {
            pipe,
            strategy,
            proto,
            ..
        } = arrival;
        if proto != Proto::Tcp {
            tracing::info!(peer = %who, %proto, "p2p path closed: files travel over tcp paths only");
            tunnels.spawn(async move { pipe.close().await });
            continue;
        }
        tracing::info!(peer = %who, %strategy, "p2p peer arrived over tcp by {strategy}: serving files through a tunnel");
        let tunnel = Tunnel::exit(pipe, target, TunnelOptions::default());
        tunnels.spawn(async move {
            match tunnel.closed().await {
                Ok(()) => tracing::info!(peer = %who, "p2p tunnel closed"),
                Err(e) => tracing::warn!(peer = %who, error = %e, "p2p tunnel ended"),
            }
        });
    }
}

/// Says what is shared, where others reach it, and the P2P node's signed address.
async fn announce(
    node: &FilerNode,
    dir: &Path,
    trusted: bool,
    p2p: Option<&p2pipe::p2p::Node>,
) -> Result<(), Box<dyn std::error::Error>> {
    let bound = node.local_addr();
    let id = node.id().clone();
    let files = node.files().await?;
    println!(
        "sharing {} as {id} ({}{})",
        dir.display(),
        crate::cli::count(files.len() as u64, "file"),
        if trusted {
            ", trusted operations on"
        } else {
            ""
        }
    );
    if bound.ip().is_loopback() {
        println!("listening on {bound}: only this machine can reach it");
    } else {
        let at = reachable(bound, &id);
        let every = if bound.ip().is_unspecified() {
            " (every interface)"
        } else {
            ""
        };
        println!(
            "listening on {bound}{every}; others can reach it at {}",
            at.join(", ")
        );
    }
    if let Some(p2p) = p2p {
        println!("p2p address {}", p2p.record().to_text());
        println!(
            "p2p node {} on {}: others behind any nat use the address with \"p2pipe fetch NAME --from\", \"p2pipe search KEY --via\" or \"p2pipe shell\"",
            p2p.node_id(),
            p2p.local_addrs()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Joins through each contact, as btfiler's buildpeers does, and says how it went.
async fn join(node: &FilerNode, joins: &[(String, String, u16)], hops: u32) {
    for (j, host, port) in joins {
        match node.join(host, *port, hops).await {
            Ok(n) => println!(
                "joined through {j}: {} added, {} in the table",
                crate::cli::count(n as u64, "peer"),
                crate::cli::count(node.peers().len() as u64, "peer")
            ),
            Err(e) => eprintln!("p2pipe: cannot join through {j}: {e}"),
        }
    }
}

/// Runs the node until Ctrl-C or SIGTERM, then leaves the network.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let Checked {
        dir,
        created,
        joins,
        cfg,
        stun,
    } = check(&args)?;
    if created {
        println!("created {} (empty)", dir.display());
    }
    let trusted = cfg.secret.is_some();
    let node = start(&args, cfg).await?;
    // The P2P node starts after the file node, whose listener its tunnels reach.
    let p2p = if args.signal.is_empty() {
        None
    } else {
        match node_args(&args).start().await {
            Ok(n) => Some(n),
            Err(e) => {
                node.shutdown(Duration::from_secs(1)).await;
                return Err(format!("cannot start the p2p node: {e}").into());
            }
        }
    };
    let bound = node.local_addr();
    let id = node.id().clone();
    announce(&node, &dir, trusted, p2p.as_ref()).await?;
    let skipped = node.skipped().await?;
    if skipped.count > 0 {
        println!("{}", skipped_line(&skipped));
    }
    let stun_task = stun.map(|list| {
        let families = match bound.ip() {
            IpAddr::V6(ip) if ip.is_unspecified() => vec![Af::V4, Af::V6],
            ip => vec![Af::of(&ip)],
        };
        tokio::spawn(external(list, families, id.clone()))
    });
    if joins.is_empty() {
        println!("not joined to a network: others join this one with \"p2pipe share --join {id}\"");
    }
    join(&node, &joins, args.hops).await;
    // The signal handlers are in place before the user is told how to stop.
    let stop = super::stop_signal();
    tokio::pin!(stop);
    let _ = futures::poll!(stop.as_mut());
    println!("press Ctrl-C to leave the network");
    match &p2p {
        Some(p2p) => {
            let serve = serve_arrivals(p2p, exit_target(bound));
            tokio::select! {
                () = serve => stop.await,
                () = &mut stop => {}
            }
        }
        None => stop.await,
    }
    if let Some(t) = stun_task {
        t.abort();
    }
    if let Some(p2p) = p2p {
        p2p.stop(Duration::from_secs(2)).await;
    }
    node.shutdown(Duration::from_secs(5)).await;
    println!("left the network");
    Ok(())
}
