//! `p2pipe search`: ask the network, through one node, who has a file.
//!
//! The protocol has no end-of-results message, so a search stops on its own: at once
//! with `--count` answers; otherwise once answers stop coming (no new one for
//! `--quiet-ms` after the last), or at the `--wait` deadline, whichever is first. With
//! no answer at all it says so on stderr and exits with a non-zero status.
//!
//! A node at `HOST:PORT` is sent a query whose answers come back as new connections to
//! a return address this command listens on, as btfiler does. A signed address
//! (`p2pipe1:...`) is reached across NATs through a P2P node and a tunnel, and asked to
//! search on the searcher's behalf and answer on the same connection (`SRCH`), since no
//! node of the sharer's network can connect back to a searcher behind a NAT.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pipe::filer::{Answers, Error, FilerClient, FilerNode, Hit, NodeConfig, QueryId};

use super::node::NodeArgs;
use super::via::{self, Via};

/// Arguments of `p2pipe search`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Stops at --count answers, or once answers stop coming (--quiet-ms \
    after the last), or at --wait. With no answer at all, says so on stderr and exits \
    with a non-zero status."
)]
pub struct Args {
    /// The text a file name must contain (case-sensitive).
    key: String,
    /// The node to ask: HOST:PORT, or the signed address (`p2pipe1:...`) that `p2pipe
    /// share --signal ...` prints, reached across NATs through a P2P node (the options
    /// below).
    #[arg(long, value_name = "HOST:PORT|p2pipe1:...")]
    via: String,
    /// The longest to wait for answers, in seconds.
    #[arg(long, default_value_t = 3.0)]
    wait: f64,
    /// After an answer, stop once no new one has come for this long, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_QUIET.as_millis() as u64)]
    quiet_ms: u64,
    /// How many hops the query may travel.
    #[arg(long, default_value_t = 8)]
    ttl: u32,
    /// Stop after this many answers (0: stop when answers stop coming).
    #[arg(long, default_value_t = 0)]
    count: usize,
    #[command(flatten)]
    node: NodeArgs,
}

/// How long a search waits for a further answer after the last one, by default.
pub const DEFAULT_QUIET: Duration = Duration::from_millis(300);

/// No answer came within the wait.
#[derive(Debug)]
pub struct NoAnswer {
    /// What was searched for.
    pub key: String,
    /// How long the search waited.
    pub wait: Duration,
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no answer for {} within {} s",
            self.key,
            self.wait.as_secs_f64()
        )
    }
}

impl std::error::Error for NoAnswer {}

/// How one search goes: the key, the hops, and when it stops (see [`Answers`]).
#[derive(Debug, Clone)]
pub struct Search {
    /// The text a file name must contain.
    pub key: String,
    /// How many hops the query may travel.
    pub ttl: u32,
    /// The longest to wait.
    pub wait: Duration,
    /// After an answer, how long to wait for a further one.
    pub quiet: Duration,
    /// How many answers are enough (0: no limit).
    pub count: usize,
}

/// Searches through the node at `via`: `HOST:PORT` (with a return address, as btfiler
/// does) or a signed address, reached through a P2P node started from `node` and asked
/// to search on the searcher's behalf ([`on_behalf`]). Returns the distinct answers in
/// the order they came; an empty list means no answer came within the wait.
///
/// # Cancel safety
///
/// Cancel safe: the temporary nodes are dropped, and answers still on their way find
/// nobody listening.
pub async fn search_via(
    via: &str,
    node: &NodeArgs,
    s: &Search,
) -> Result<Vec<Hit>, Box<dyn std::error::Error>> {
    if !via::is_signed(via) {
        return with_return_address(via, s).await;
    }
    let tunnel = Via::start(via, node).await?;
    let hits = on_behalf(&FilerClient::new(tunnel.entrance()), s).await;
    tunnel.stop().await;
    hits
}

/// Asks the node behind `client` to search on the searcher's behalf and answer on the
/// same connection (`SRCH`).
///
/// # Cancel safety
///
/// Cancel safe: the node's search ends on its own.
pub async fn on_behalf(
    client: &FilerClient,
    s: &Search,
) -> Result<Vec<Hit>, Box<dyn std::error::Error>> {
    match client.search(&s.key, s.ttl, s.wait, s.quiet, s.count).await {
        Err(Error::NoReply) => Err(NO_SRCH.into()),
        r => Ok(r?),
    }
}

/// What a node without the search extension means for a signed address.
const NO_SRCH: &str = "the node does not search on a searcher's behalf (SRCH): it is not a \
    p2pipe node, or an older one";

/// Searches through the node at `HOST:PORT` as btfiler does: a temporary node, listening
/// on the address that reaches `via`, is the return address for the answers (RESP).
pub async fn with_return_address(
    via: &str,
    s: &Search,
) -> Result<Vec<Hit>, Box<dyn std::error::Error>> {
    let target = p2pipe::Target::parse(via, None)?;
    let addrs = p2pipe::dns::resolve(&target, None).await?;
    let to = *addrs.first().ok_or("the node's name did not resolve")?;
    let local = p2pipe::iface::bind::source_towards(to, None).await?;
    let empty = tempfile::tempdir()?;
    let mut cfg = NodeConfig::new(empty.path());
    cfg.stabilize_every = None;
    let ret = FilerNode::start(SocketAddr::new(local, 0), cfg).await?;
    let mut rx = ret.results();
    let c = FilerClient::new(to);
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).map_err(|e| e.to_string())?;
    let qid = QueryId(u64::from_be_bytes(id));
    match c
        .query_history(ret.id(), &s.key, s.ttl, qid, std::slice::from_ref(ret.id()))
        .await
    {
        Err(Error::NoReply) => c.query(ret.id(), &s.key, s.ttl).await?,
        other => other?,
    }
    let mut answers = Answers::new(&s.key, Instant::now(), s.wait, s.quiet, s.count);
    while !answers.is_done(Instant::now()) {
        let until = tokio::time::Instant::from_std(answers.until());
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Ok(hit)) => {
                answers.offer(hit, Instant::now());
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    ret.shutdown(Duration::from_secs(1)).await;
    Ok(answers.into_hits())
}

/// The `--wait` option (of `search` and `shell`) as a duration.
pub fn wait_secs(secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("invalid --wait {secs}: a number of seconds is needed"))
}

/// Prints every answer: `name owner`. No answer is an error ([`NoAnswer`]), which the
/// caller prints on stderr.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let wait = wait_secs(args.wait)?;
    let search = Search {
        key: args.key.clone(),
        ttl: args.ttl,
        wait,
        quiet: Duration::from_millis(args.quiet_ms),
        count: args.count,
    };
    let hits = search_via(&args.via, &args.node, &search).await?;
    if hits.is_empty() {
        return Err(Box::new(NoAnswer {
            key: args.key,
            wait,
        }));
    }
    for (name, owner) in hits {
        println!("{name} {owner}");
    }
    Ok(())
}
