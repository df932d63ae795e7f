//! `p2pipe search`: ask the network, through one node, who has a file.
//!
//! The protocol has no end-of-results message, so a search stops on its own: at once
//! with `--count` answers; otherwise once answers stop coming (no new one for
//! `--quiet-ms` after the last), or at the `--wait` deadline, whichever is first. With
//! no answer at all it says so on stderr and exits with a non-zero status.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pipe::filer::{Error, FilerClient, FilerNode, Hit, NodeConfig, QueryId};

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
    /// The node to ask (HOST:PORT; a signed address is refused, see below).
    #[arg(long, value_name = "HOST:PORT")]
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

/// Searches for `key` through the node at `via`: a temporary node, listening on the
/// address that reaches `via`, is the return address for the answers (RESP). Returns
/// the answers, distinct, in the order they came: once `count` have come (0: no
/// limit), once none has come for `quiet` after the last, or when `wait` has passed.
/// An empty list means no answer came within `wait`.
///
/// # Cancel safety
///
/// Cancel safe: the temporary node is dropped, and answers still on their way find
/// nobody listening.
pub async fn search_via(
    via: &str,
    key: &str,
    ttl: u32,
    wait: Duration,
    quiet: Duration,
    count: usize,
) -> Result<Vec<Hit>, Box<dyn std::error::Error>> {
    if super::via::is_signed(via) {
        return Err(NOT_THROUGH_A_TUNNEL.into());
    }
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
        .query_history(ret.id(), key, ttl, qid, std::slice::from_ref(ret.id()))
        .await
    {
        Err(Error::NoReply) => c.query(ret.id(), key, ttl).await?,
        other => other?,
    }
    let mut hits: Vec<Hit> = Vec::new();
    let deadline = Instant::now() + wait;
    // Until the first answer, the deadline; after it, a quiet time past the last one.
    let mut until = deadline;
    while count == 0 || hits.len() < count {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(hit)) => {
                if hit.0.contains(key) && !hits.contains(&hit) {
                    hits.push(hit);
                    until = deadline.min(Instant::now() + quiet);
                }
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    ret.shutdown(Duration::from_secs(1)).await;
    Ok(hits)
}

/// Why a search cannot go to a signed address (yet).
pub const NOT_THROUGH_A_TUNNEL: &str = "search does not take a signed address yet: answers \
    (RESP) come back as new TCP connections from each node that has the file to the \
    searcher's own HOST:PORT, which a searcher behind a NAT cannot take, and a tunnel \
    carries connections from the fetcher to the sharer only; fetch by name with \
    \"p2pipe fetch NAME --from p2pipe1:...\" instead";

/// The `--wait` option (of `search` and `shell`) as a duration.
pub fn wait_secs(secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("invalid --wait {secs}: a number of seconds is needed"))
}

/// Prints every answer: `name owner`. No answer is an error ([`NoAnswer`]), which the
/// caller prints on stderr.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let wait = wait_secs(args.wait)?;
    let hits = search_via(
        &args.via,
        &args.key,
        args.ttl,
        wait,
        Duration::from_millis(args.quiet_ms),
        args.count,
    )
    .await?;
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
