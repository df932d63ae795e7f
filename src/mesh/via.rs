//! The mesh across NATs: a mesh connection carried by a P2P path. The connecting side
//! reaches the peer's P2P node by its signed address ([`Node::connect`], which races
//! every way through), opens a tunnel entrance on that path and connects the mesh to
//! it; the other side serves the path that arrived at its node as a tunnel exit to its
//! own mesh listener. The mesh's own handshake then runs through the tunnel unchanged,
//! so mesh ids, signatures and trust work as on a direct connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Error, Mesh, Peer};
use crate::identity::PeerRecord;
use crate::p2p::{Arrival, Node, Tunnel, TunnelOptions};
use crate::Proto;

impl Mesh {
    /// Connects to the mesh node beside the P2P node whose signed address is `record`,
    /// through `node` (a TCP path, whatever NATs lie between), and completes the mesh
    /// handshake. The peer must serve its node's arrivals with
    /// [`Mesh::serve_arrival`]. The tunnel, and the path under it, close when this
    /// connection ends or the mesh stops.
    ///
    /// # Errors
    ///
    /// [`Error::P2p`] when no path reaches the peer (the error carries the connect's
    /// report), [`Error::Tunnel`], or as [`Mesh::connect`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a path or tunnel made so far is dropped, and closed.
    pub async fn connect_via(&self, node: &Node, record: &PeerRecord) -> Result<Peer, Error> {
        let conn = node.connect(record, Proto::Tcp).await?;
        let tunnel = Tunnel::entrance(conn.pipe, TunnelOptions::default()).await?;
        let at = tunnel
            .local_addr()
            .expect("a tunnel entrance has a local address");
        let peer = self.connect(at).await?;
        // The tunnel carries this one connection: it closes when the connection ends,
        // and the path with it, which ends the peer's exit too.
        match self.ended_token(&peer.id) {
            Some(ended) => self.hold(tunnel, Some(ended)),
            // Already over.
            None => tunnel.close(),
        }
        Ok(peer)
    }

    /// Serves `arrival`, a path that reached this side's P2P node, as a connection to
    /// this mesh: a tunnel exit to the mesh's first listener (on loopback when it
    /// listens on every address). The tunnel ends when the connecting side closes the
    /// path, as it does when the connection ends, or when this mesh stops.
    ///
    /// # Errors
    ///
    /// [`Error::Stopping`] when the mesh is stopping or listens nowhere.
    pub fn serve_arrival(&self, arrival: Arrival) -> Result<(), Error> {
        let Some(listen) = self.local_addrs().into_iter().next() else {
            return Err(Error::Stopping);
        };
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let target = SocketAddr::new(ip, listen.port());
        // Closed when the path ends: the connecting side closes it with its connection.
        self.hold(
            Tunnel::exit(arrival.pipe, target, TunnelOptions::default()),
            None,
        );
        Ok(())
    }
}
