//! What `p2pipe listen` and `p2pipe connect` share: the node's options, and starting
//! the node from them.

use std::net::SocketAddr;
use std::path::PathBuf;

use p2pipe::addr::Target;
use p2pipe::dns;
use p2pipe::p2p::Node;
use p2pipe::traverse::turn::{Credentials, TurnServer};

use super::servers;

/// The options of a P2P node.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// A signalling broker, mqtt://HOST:PORT (repeatable); replaces $P2PIPE_SIGNAL, the
    /// config file ($P2PIPE_SIGNAL_FILE or ~/.config/p2pipe/signal-brokers) and the
    /// built-in list.
    #[arg(long = "signal", value_name = "URL")]
    signal: Vec<String>,
    /// A STUN server (repeatable); the list is found as for `p2pipe nat`.
    #[arg(long = "stun", value_name = "HOST:PORT")]
    stun: Vec<String>,
    /// A TURN server for the relay strategy, turn://USER:PASS@HOST:PORT (repeatable;
    /// the first is used). Without one, no relay is tried.
    #[arg(long = "turn", value_name = "URL")]
    turn: Vec<TurnUrl>,
    /// The node key file; created (mode 0600) when missing. Default:
    /// $XDG_CONFIG_HOME/p2pipe/node.key or ~/.config/p2pipe/node.key.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// The port to listen on, TCP and UDP (default: one the system picks).
    #[arg(long, value_name = "P", default_value_t = 0)]
    port: u16,
    /// Listen on this address only (repeatable). Default: every address of every
    /// interface that is up, except loopback and link-local ones.
    #[arg(long, value_name = "IP")]
    bind: Vec<std::net::IpAddr>,
    /// Ask no STUN server (set by `p2pipe share --no-stun`).
    #[arg(skip)]
    no_stun: bool,
}

impl NodeArgs {
    /// The options of the node `p2pipe share` runs beside its file node, from its own
    /// options.
    pub fn for_share(
        signal: Vec<String>,
        stun: Vec<String>,
        no_stun: bool,
        turn: Vec<TurnUrl>,
        key_file: Option<PathBuf>,
        port: u16,
        bind: Vec<std::net::IpAddr>,
    ) -> NodeArgs {
        NodeArgs {
            signal,
            stun,
            turn,
            key_file,
            port,
            bind,
            no_stun,
        }
    }

    /// Starts the node these options describe.
    ///
    /// # Errors
    ///
    /// A bad broker or server, a key file that cannot be loaded, or a node that does
    /// not start (no broker answered, no address to listen on).
    pub async fn start(&self) -> Result<Node, Box<dyn std::error::Error>> {
        let (brokers, source) = servers::SIGNAL.resolve(&self.signal)?;
        for b in &brokers {
            p2pipe::identity::check_broker_url(b).map_err(|e| format!("{e} (from {source})"))?;
        }
        let stun = if self.no_stun {
            Vec::new()
        } else {
            servers::servers(&self.stun)?.0
        };
        let (me, _, _) = super::id::identity(self.key_file.clone())?;
        let mut builder = Node::builder(me).port(self.port);
        for ip in &self.bind {
            builder = builder.bind(*ip);
        }
        for b in brokers {
            builder = builder.signal(b);
        }
        for s in resolve(&stun, 3478).await? {
            builder = builder.stun(s);
        }
        for url in &self.turn {
            builder = builder.turn(turn_server(&url.0).await?);
        }
        Ok(builder.start().await?)
    }
}

/// Resolves `host:port` names (port `default` when missing) to addresses of both
/// families; names that do not resolve are left out with a warning.
async fn resolve(list: &[String], default: u16) -> Result<Vec<SocketAddr>, String> {
    let resolver = dns::default_resolver();
    let mut out = Vec::new();
    for s in list {
        let target = Target::parse(s, Some(default)).map_err(|e| format!("bad server {s}: {e}"))?;
        match resolver.resolve(&target, None, dns::DEFAULT_TIMEOUT).await {
            Ok(addrs) => {
                for a in addrs {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
            }
            Err(e) => eprintln!("warning: {s} left out: {e}"),
        }
    }
    Ok(out)
}

/// A `--turn` URL. It holds a password: its `Debug` shows only the host part, so the
/// options can be printed without it.
#[derive(Clone)]
pub struct TurnUrl(String);

impl std::str::FromStr for TurnUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<TurnUrl, Self::Err> {
        Ok(TurnUrl(s.to_owned()))
    }
}

impl std::fmt::Debug for TurnUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self.0.rsplit_once('@').map_or("?", |(_, host)| host);
        write!(f, "turn://...@{host}")
    }
}

/// A TURN server from `turn://USER:PASS@HOST:PORT` (port 3478 when missing). The
/// password appears in no error.
async fn turn_server(url: &str) -> Result<TurnServer, String> {
    let bad = |why: &str| {
        let shown = url.rsplit_once('@').map_or("turn://...", |(_, host)| host);
        format!("bad turn server ({why}): give turn://USER:PASS@HOST:PORT, not ...@{shown}")
    };
    let rest = url
        .strip_prefix("turn://")
        .ok_or_else(|| bad("not turn://"))?;
    let (login, host) = rest.rsplit_once('@').ok_or_else(|| bad("no user"))?;
    let (user, pass) = login.split_once(':').ok_or_else(|| bad("no password"))?;
    if user.is_empty() {
        return Err(bad("an empty user name"));
    }
    let addrs = resolve(&[host.to_string()], 3478).await?;
    let addr = addrs
        .first()
        .copied()
        .ok_or_else(|| format!("turn server {host} did not resolve"))?;
    let credentials = Credentials::new(user, pass).map_err(|e| bad(&e.to_string()))?;
    Ok(TurnServer::new(addr, credentials))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_url_debugs_without_its_password() {
        let url: TurnUrl = "turn://alice:s3cret@203.0.113.10:3479".parse().unwrap();
        assert_eq!(format!("{url:?}"), "turn://...@203.0.113.10:3479");
    }

    #[tokio::test]
    async fn a_turn_url_gives_its_server_and_a_bad_one_never_shows_the_password() {
        let s = turn_server("turn://alice:s3cret@203.0.113.10:3479")
            .await
            .unwrap();
        assert_eq!(s.udp, "203.0.113.10:3479".parse().unwrap());
        let s = turn_server("turn://alice:s3cret@[2001:db8::1]")
            .await
            .unwrap();
        assert_eq!(s.tcp, "[2001:db8::1]:3478".parse().unwrap());
        for bad in [
            "stun://alice:s3cret@203.0.113.10",
            "turn://alice@203.0.113.10",
            "turn://:s3cret@203.0.113.10",
            "turn://s3cret203.0.113.10",
        ] {
            let e = turn_server(bad).await.unwrap_err();
            assert!(!e.contains("s3cret"), "{e}");
            assert!(e.contains("turn://USER:PASS@HOST:PORT"), "{e}");
        }
    }
}
