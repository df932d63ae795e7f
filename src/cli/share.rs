//! `p2pipe share`: run a file-sharing node on a folder.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use p2pipe::filer::node::{FilerNode, NodeConfig};

/// Arguments of `p2pipe share`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The folder to share (downloads asked by a trusted client land here too).
    dir: PathBuf,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// The port to listen on (0: any free port).
    #[arg(long, default_value_t = 7000)]
    port: u16,
    /// A node to join through (repeatable), as btfiler's buildpeers does.
    #[arg(long, value_name = "HOST:PORT")]
    join: Vec<String>,
    /// How many hops to follow when joining.
    #[arg(long, default_value_t = 2)]
    hops: u32,
    /// The most peers in the table.
    #[arg(long, default_value_t = 64)]
    max_peers: usize,
    /// A file holding the node's secret; without one, trusted operations are off.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Accept trusted operations from any address, not only loopback.
    #[arg(long)]
    trust_remote: bool,
}

/// Reads a secret file: its bytes, without a trailing newline.
pub fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut s = std::fs::read(path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()).to_lowercase())?;
    while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        s.pop();
    }
    if s.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(s)
}

/// Splits `host:port` (or `[v6]:port`).
pub fn host_port(s: &str) -> Result<(String, u16), String> {
    let t = p2pipe::Target::parse(s, None).map_err(|e| format!("{s}: {e}"))?;
    match t {
        p2pipe::Target::Addr(a) => Ok((a.ip().to_string(), a.port())),
        p2pipe::Target::Host { host, port } => Ok((host, port)),
    }
}

/// Runs the node until Ctrl-C or SIGTERM, then leaves the network.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = NodeConfig::new(&args.dir);
    cfg.max_peers = args.max_peers;
    cfg.trusted_from_anywhere = args.trust_remote;
    if let Some(f) = &args.secret_file {
        cfg.secret = Some(read_secret(f)?);
    }
    let trusted = cfg.secret.is_some();
    let node = FilerNode::start(SocketAddr::new(args.bind, args.port), cfg).await?;
    let files = node.files().await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "sharing {} as {} ({} files{})",
        args.dir.display(),
        node.id(),
        files.len(),
        if trusted {
            ", trusted operations on"
        } else {
            ""
        }
    )?;
    out.flush()?;
    drop(out);
    for j in &args.join {
        let (host, port) = host_port(j)?;
        match node.join(&host, port, args.hops).await {
            Ok(n) => println!("joined through {j}: {n} peers added"),
            Err(e) => eprintln!("p2pipe: cannot join through {j}: {e}"),
        }
    }
    let peers: Vec<String> = node.peers().iter().map(|p| p.pid.to_string()).collect();
    println!(
        "peers: {}",
        if peers.is_empty() {
            "none".into()
        } else {
            peers.join(" ")
        }
    );
    super::stop_signal().await;
    node.shutdown(Duration::from_secs(5)).await;
    println!("left the network");
    Ok(())
}
