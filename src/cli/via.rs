//! Reaching a file node by its signed address (`p2pipe1:...`): a P2P node connects to
//! the sharer's node over TCP, whatever NATs lie between them, and a tunnel entrance on
//! 127.0.0.1 carries every filer connection to the sharer's file node.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use p2pipe::identity::{unix_ms, PeerRecord};
use p2pipe::p2p::{Node, Tunnel, TunnelOptions};
use p2pipe::Proto;

use super::node::NodeArgs;

/// The prefix of a signed address.
pub const SIGNED: &str = "p2pipe1:";

/// Whether `addr` is a signed address rather than `host:port`.
pub fn is_signed(addr: &str) -> bool {
    addr.trim().starts_with(SIGNED)
}

/// A P2P node connected to a sharer, and the tunnel entrance to its file node.
pub struct Via {
    node: Node,
    tunnel: Tunnel,
}

impl Via {
    /// Starts a node from `opts`, connects to the node at `addr` over TCP and opens a
    /// tunnel entrance; says on stderr which strategy made the path.
    ///
    /// # Errors
    ///
    /// A bad or expired address, a node that does not start, a peer that cannot be
    /// reached (with the connect's report).
    pub async fn start(addr: &str, opts: &NodeArgs) -> Result<Via, Box<dyn std::error::Error>> {
        let record = PeerRecord::parse(addr.trim(), unix_ms(SystemTime::now()))
            .map_err(|e| format!("bad signed address: {e}"))?;
        let node = opts.start().await?;
        let conn = match node.connect(&record, Proto::Tcp).await {
            Ok(c) => c,
            Err(e) => {
                node.stop(Duration::from_secs(2)).await;
                return Err(format!("cannot reach {}: {e}", record.node_id()).into());
            }
        };
        let path = conn
            .report
            .path
            .map(|(l, r)| format!(" ({l} -> {r})"))
            .unwrap_or_default();
        eprintln!(
            "connected to {} by {} over tcp{path}",
            record.node_id(),
            conn.via()
        );
        let tunnel = match Tunnel::entrance(conn.pipe, TunnelOptions::default()).await {
            Ok(t) => t,
            Err(e) => {
                node.stop(Duration::from_secs(2)).await;
                return Err(e.into());
            }
        };
        Ok(Via { node, tunnel })
    }

    /// Where the file client connects: the tunnel's entrance.
    pub fn entrance(&self) -> SocketAddr {
        self.tunnel
            .local_addr()
            .expect("an entrance has an address")
    }

    /// Closes the tunnel and stops the node.
    pub async fn stop(self) {
        self.tunnel.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tunnel.closed()).await;
        self.node.stop(Duration::from_secs(2)).await;
    }
}
