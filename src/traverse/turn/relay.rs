//! [`Relay`]: one allocation on a TURN server, and the pipes through it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

use super::attr::{PROTO_TCP, PROTO_UDP};
use super::client::{Client, Config, Event};
use super::driver::{self, Key, Link, LinkReader, Shared};
use super::{tcp, Error, Transport, TurnServer};
use crate::pipe::relay::Inbound;
use crate::pipe::{Pipe, PipeConfig};
use crate::stun;

/// One allocation on a TURN server: a relayed address that peers send to, and pipes
/// that send from it.
///
/// Every operation waits at most the time limit given to
/// [`allocate`](Relay::allocate), and fails with [`Error::Timeout`] naming the server
/// when it passes. The allocation, its permissions and channels are refreshed in the
/// background for as long as the relay lives; [`close`](Relay::close) deletes it, and
/// dropping the relay asks the server to delete it without waiting.
pub struct Relay {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    transport: Transport,
    tcp_relay: bool,
    limit: Duration,
    /// What peers without a pipe of their own send, until [`listen`](Relay::listen)
    /// takes it.
    unheard: std::sync::Mutex<Option<Inbound>>,
    attempts: Mutex<mpsc::Receiver<(SocketAddr, u32)>>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("server", &self.shared.server)
            .field("transport", &self.transport)
            .field("tcp_relay", &self.tcp_relay)
            .field("relayed", &self.relayed_addr())
            .finish()
    }
}

impl Relay {
    /// Allocates a relayed UDP address on `server`, reached over `transport`, within
    /// `limit`. Later operations wait at most `limit` too.
    ///
    /// # Errors
    ///
    /// The server cannot be reached, refuses the credentials ([`Error::Unauthorized`])
    /// or the allocation, names another realm than expected, or does not answer
    /// within `limit`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future drops the socket; an allocation the server
    /// made meanwhile expires on its own.
    pub async fn allocate(
        server: &TurnServer,
        transport: Transport,
        limit: Duration,
    ) -> Result<Relay, Error> {
        Self::start(server, transport, PROTO_UDP, limit, PipeConfig::default()).await
    }

    /// Allocates a relayed TCP address on `server` (RFC 6062), over TCP, within
    /// `limit`: peers' connections become pipes through [`connect_tcp`](Self::connect_tcp)
    /// and [`accept_tcp`](Self::accept_tcp).
    ///
    /// # Errors
    ///
    /// As [`allocate`](Self::allocate); a server without RFC 6062 refuses with
    /// [`Error::Rejected`] (442).
    ///
    /// # Cancel safety
    ///
    /// As [`allocate`](Self::allocate).
    pub async fn allocate_tcp(server: &TurnServer, limit: Duration) -> Result<Relay, Error> {
        Self::start(
            server,
            Transport::Tcp,
            PROTO_TCP,
            limit,
            PipeConfig::default(),
        )
        .await
    }

    /// As [`allocate`](Self::allocate), or as [`allocate_tcp`](Self::allocate_tcp) when
    /// `tcp_relay` (then `transport` must be [`Transport::Tcp`]), with `cfg` for the pipes
    /// the relay makes.
    ///
    /// # Errors
    ///
    /// As [`allocate`](Self::allocate); [`Error::WrongTransport`] for a TCP relay over
    /// UDP.
    ///
    /// # Cancel safety
    ///
    /// As [`allocate`](Self::allocate).
    pub async fn allocate_with(
        server: &TurnServer,
        transport: Transport,
        tcp_relay: bool,
        limit: Duration,
        cfg: &PipeConfig,
    ) -> Result<Relay, Error> {
        if tcp_relay && transport == Transport::Udp {
            let (server, op) = (server.udp, "relay tcp");
            return Err(Error::WrongTransport {
                server,
                op,
                transport: "udp",
            });
        }
        let proto = if tcp_relay { PROTO_TCP } else { PROTO_UDP };
        Self::start(server, transport, proto, limit, cfg.clone()).await
    }

    async fn start(
        server: &TurnServer,
        transport: Transport,
        proto: u8,
        limit: Duration,
        cfg: PipeConfig,
    ) -> Result<Relay, Error> {
        let addr = server.addr(transport);
        let (link, reader) = tokio::time::timeout(limit, open_link(addr, transport))
            .await
            .map_err(|_| Error::Timeout {
                server: addr,
                op: "connect",
                waited: limit,
            })??;
        let client = Client::new(Config {
            server: addr,
            reliable: transport == Transport::Tcp,
            credentials: server.credentials.clone(),
            realm: server.realm.clone(),
            schedule: stun::Config::default(),
        });
        let (shared, unheard, attempts) = Shared::new(client, link, cfg);
        let ((), rx) = shared.start(Key::Allocate, |c, now| c.allocate(proto, now))?;
        let task = tokio::spawn(driver::run(shared.clone(), reader));
        let relay = Relay {
            shared,
            task,
            transport,
            tcp_relay: proto == PROTO_TCP,
            limit,
            unheard: std::sync::Mutex::new(Some(unheard)),
            attempts: Mutex::new(attempts),
        };
        relay.shared.wait(rx, "allocate", limit).await?;
        Ok(relay)
    }

    /// The relayed address: where peers send to reach this side.
    pub fn relayed_addr(&self) -> SocketAddr {
        self.shared
            .lock()
            .client
            .relayed()
            .unwrap_or(self.shared.server)
    }

    /// This side's address as the server sees it (its NAT's mapping), if the server
    /// said.
    pub fn mapped_addr(&self) -> Option<SocketAddr> {
        self.shared.lock().client.mapped()
    }

    /// The server's address.
    pub fn server(&self) -> SocketAddr {
        self.shared.server
    }

    /// Datagrams dropped so far at the relay: a relayed pipe's queue or the listener's
    /// was full, or the listener was closed. (What the listener itself drops, a peer
    /// beyond its backlog or `max_peers`, is in its own [`Pipe::stats`].)
    pub fn dropped(&self) -> u64 {
        self.shared.lock().dropped
    }

    /// Lets `peer`'s address send to the relayed address (a permission, refreshed
    /// every 4 minutes from then on).
    ///
    /// # Errors
    ///
    /// The server refuses, or does not answer within the relay's limit.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the permission may still be installed.
    pub async fn permit(&self, peer: SocketAddr) -> Result<(), Error> {
        let ((), rx) = self
            .shared
            .start(Key::Permit(peer), |c, now| c.permit(peer, now))?;
        self.shared
            .wait(rx, "create-permission", self.limit)
            .await
            .map(|_| ())
    }

    /// A UDP pipe to `peer` through the relay: a channel is bound to the peer (which
    /// also permits it), so data travels as ChannelData. Its local address is the
    /// relayed address.
    ///
    /// # Errors
    ///
    /// A TCP allocation ([`Error::WrongTransport`]); the server refuses the channel, or
    /// does not answer within the relay's limit.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the channel may still be bound.
    pub async fn pipe(&self, peer: SocketAddr) -> Result<Pipe, Error> {
        self.check_udp("make a udp pipe")?;
        let inbound = self.shared.route(peer)?;
        let (_, rx) = self
            .shared
            .start(Key::Channel(peer), |c, now| c.bind_channel(peer, now))?;
        self.shared.wait(rx, "channel-bind", self.limit).await?;
        Ok(self.shared.pipe(peer, inbound))
    }

    /// The relay's UDP listener: an ordinary listening [`Pipe`] whose local address is
    /// the relayed address. Each permitted peer ([`permit`](Self::permit)) that sends
    /// first, without a pipe of its own from [`pipe`](Self::pipe), becomes a peer pipe
    /// for [`Pipe::accept`] whose first message is that datagram; `recv`, `subscribe`,
    /// `on_message`, `on_up`, `send_to` and `close` work as on a listener from
    /// [`Pipe::listen`], and everything goes through the relay. Datagrams that arrive
    /// before the call wait for it (up to 1024 of them). There is one listener per
    /// relay; closing it drops what unknown peers send from then on; it ends when the
    /// relay stops.
    ///
    /// # Errors
    ///
    /// A TCP allocation ([`Error::WrongTransport`]); a second call ([`Error::Full`]).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the listener's reader is a task).
    pub fn listen(&self) -> Result<Pipe, Error> {
        self.check_udp("listen for udp peers")?;
        let unheard = self
            .unheard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match unheard {
            Some(unheard) => Ok(self.shared.listener(unheard)),
            None => Err(Error::Full {
                server: self.shared.server,
                what: "listeners",
                max: 1,
            }),
        }
    }

    /// A TCP pipe to `peer` through a TCP allocation (RFC 6062): a permission, Connect,
    /// then a new data connection to the server bound to the peer's connection. The
    /// pipe carries the peer's bytes unchanged.
    ///
    /// # Errors
    ///
    /// A UDP allocation ([`Error::WrongTransport`]); the server refuses or cannot reach
    /// the peer (447); no answer within the relay's limit.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a half-made data connection is dropped.
    pub async fn connect_tcp(&self, peer: SocketAddr) -> Result<Pipe, Error> {
        self.check_tcp("connect to a tcp peer")?;
        let connect = async {
            self.permit(peer).await?;
            let ((), rx) = self
                .shared
                .start(Key::Connect(peer), |c, now| c.connect(peer, now))?;
            match self.shared.wait(rx, "connect", self.limit).await? {
                Event::Connected { id, .. } => tcp::bind_data_connection(&self.shared, id).await,
                _ => Err(Error::Malformed("connect answered by another event".into())),
            }
        };
        tokio::time::timeout(self.limit, connect)
            .await
            .unwrap_or_else(|_| Err(self.timeout("connect")))
    }

    /// The next peer that connects to the relayed TCP address (RFC 6062), as a TCP pipe
    /// and the peer's address. Only permitted peers ([`permit`](Self::permit)) get
    /// through the server.
    ///
    /// # Errors
    ///
    /// A UDP allocation; no peer within the relay's limit; the data connection fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe while waiting for a peer; an attempt taken and then cancelled is
    /// lost (the server drops it after 30 s).
    pub async fn accept_tcp(&self) -> Result<(Pipe, SocketAddr), Error> {
        self.check_tcp("accept tcp peers")?;
        let accept = async {
            let attempt = self.attempts.lock().await.recv().await;
            let Some((peer, id)) = attempt else {
                return Err(self.shared.stopped());
            };
            let pipe = tcp::bind_data_connection(&self.shared, id).await?;
            Ok((pipe, peer))
        };
        tokio::time::timeout(self.limit, accept)
            .await
            .unwrap_or_else(|_| Err(self.timeout("accept")))
    }

    /// Deletes the allocation (Refresh with lifetime 0) and stops the relay; its pipes
    /// end.
    ///
    /// # Errors
    ///
    /// The server does not answer within the relay's limit (the allocation then
    /// expires on its own).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the relay still asks the server to delete it.
    pub async fn close(self) -> Result<(), Error> {
        let ((), rx) = self.shared.start(Key::Close, |c, now| c.close(now))?;
        self.shared
            .wait(rx, "refresh", self.limit)
            .await
            .map(|_| ())
    }

    fn timeout(&self, op: &'static str) -> Error {
        Error::Timeout {
            server: self.shared.server,
            op,
            waited: self.limit,
        }
    }

    fn check_udp(&self, op: &'static str) -> Result<(), Error> {
        match self.tcp_relay {
            false => Ok(()),
            true => Err(Error::WrongTransport {
                server: self.shared.server,
                op,
                transport: "tcp",
            }),
        }
    }

    fn check_tcp(&self, op: &'static str) -> Result<(), Error> {
        match self.tcp_relay {
            true => Ok(()),
            false => Err(Error::WrongTransport {
                server: self.shared.server,
                op,
                transport: "udp",
            }),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Ask the server to delete the allocation, without waiting (over TCP, the
        // connection's close deletes it anyway).
        let mut st = self.shared.lock();
        if st.client.close(std::time::Instant::now()).is_ok() {
            // The Refresh goes out after anything queued before it.
            while let Some(bytes) = st.client.poll_transmit() {
                if let Link::Udp(sock) = &self.shared.link {
                    let _ = sock.try_send_to(&bytes, self.shared.server);
                }
            }
        }
        drop(st);
        self.task.abort();
        self.shared.stop(Error::Stopped {
            server: self.shared.server,
        });
    }
}

/// Opens the socket to the server: a UDP socket, or a TCP connection.
async fn open_link(server: SocketAddr, transport: Transport) -> Result<(Link, LinkReader), Error> {
    let any = SocketAddr::new(crate::addr::Af::of_socket(&server).unspecified(), 0);
    match transport {
        Transport::Udp => {
            let sock = crate::iface::bind::udp_socket(any, None)
                .map(Arc::new)
                .map_err(|e| Error::io(server, "bind", e))?;
            let buf = vec![0u8; super::data::MAX_WIRE].into_boxed_slice();
            Ok((Link::Udp(sock.clone()), LinkReader::Udp(sock, buf)))
        }
        Transport::Tcp => {
            let (r, w) = tcp::connect(server).await?.into_split();
            let reader = LinkReader::Tcp {
                half: r,
                buf: bytes::BytesMut::new(),
                taken: 0,
            };
            let out = driver::TcpOut::new(w);
            Ok((Link::Tcp(tokio::sync::Mutex::new(out)), reader))
        }
    }
}
