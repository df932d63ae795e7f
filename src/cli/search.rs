//! `p2pipe search`: ask the network, through one node, who has a file.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use p2pipe::filer::client::FilerClient;
use p2pipe::filer::msg::QueryId;
use p2pipe::filer::node::{FilerNode, Hit, NodeConfig};
use p2pipe::filer::Error;

/// Arguments of `p2pipe search`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The text a file name must contain (case-sensitive).
    key: String,
    /// The node to ask.
    #[arg(long, value_name = "HOST:PORT")]
    via: String,
    /// How long to wait for answers, in seconds.
    #[arg(long, default_value_t = 3.0)]
    wait: f64,
    /// How many hops the query may travel.
    #[arg(long, default_value_t = 8)]
    ttl: u32,
    /// Stop after this many answers (0: wait the whole time).
    #[arg(long, default_value_t = 0)]
    count: usize,
}

/// Searches for `key` through the node at `via`: a temporary node, listening on the
/// address that reaches `via`, is the return address for the answers (RESP).
pub async fn search_via(
    via: &str,
    key: &str,
    ttl: u32,
    wait: Duration,
    count: usize,
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
        .query_history(ret.id(), key, ttl, qid, std::slice::from_ref(ret.id()))
        .await
    {
        Err(Error::NoReply) => c.query(ret.id(), key, ttl).await?,
        other => other?,
    }
    let mut hits: Vec<Hit> = Vec::new();
    let until = Instant::now() + wait;
    while count == 0 || hits.len() < count {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(hit)) => {
                if hit.0.contains(key) && !hits.contains(&hit) {
                    hits.push(hit);
                }
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    ret.shutdown(Duration::from_secs(1)).await;
    Ok(hits)
}

/// Prints every answer: `name owner`.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let hits = search_via(
        &args.via,
        &args.key,
        args.ttl,
        Duration::from_secs_f64(args.wait.max(0.0)),
        args.count,
    )
    .await?;
    if hits.is_empty() {
        println!("no answer for {} within {} s", args.key, args.wait);
    }
    for (name, owner) in hits {
        println!("{name} {owner}");
    }
    Ok(())
}
