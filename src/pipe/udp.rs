//! UDP sockets, listeners and their peer pipes.

use std::net::{SocketAddr, SocketAddrV6};
use std::sync::{Arc, RwLock, Weak};

use tokio::net::UdpSocket;

use super::shared::{register_child, Children, Core, Io};
use super::{Error, Message, Overflow, Pipe, PipeConfig, Proto, Result};
use crate::addr::canonical;

use super::reader::{Reader, MAX_DATAGRAM};

/// A socket this pipe owns; `release` lets the port go at once.
pub(crate) struct Owned(RwLock<Option<Arc<UdpSocket>>>);

impl Owned {
    pub(super) fn new(sock: Arc<UdpSocket>) -> Self {
        Owned(RwLock::new(Some(sock)))
    }
    pub(crate) fn release(&self) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).take();
    }
    /// The socket, for the peers of a listener (dangling once released).
    fn weak(&self) -> Weak<UdpSocket> {
        match &*self.0.read().unwrap_or_else(|e| e.into_inner()) {
            Some(sock) => Arc::downgrade(sock),
            None => Weak::new(),
        }
    }
}

/// How a UDP pipe sends: on its own socket, on its listener's, or through a relay.
pub(crate) enum Sender {
    Own(Owned),
    Child(Weak<UdpSocket>),
    Relay(Arc<dyn super::relay::DatagramLink>),
}

impl Sender {
    /// How a peer of a listener that sends this way sends: on the listener's socket,
    /// or through its relay.
    fn for_peer(&self) -> Sender {
        match self {
            Sender::Own(o) => Sender::Child(o.weak()),
            Sender::Child(w) => Sender::Child(w.clone()),
            Sender::Relay(link) => Sender::Relay(link.clone()),
        }
    }
    pub(crate) fn release(&self) {
        if let Sender::Own(o) = self {
            o.release();
        }
    }
    /// Sends a datagram if it can go now, or says what to wait on. Almost every
    /// datagram goes out at once, under the socket's read lock and without holding the
    /// socket past it; only a full socket buffer (or relay) waits.
    fn attempt(&self, core: &Core, data: &[u8], to: SocketAddr) -> Result<Attempt> {
        let to = checked(core, data, to)?;
        let ended = || Error::Ended(core.end_or_closed());
        match self {
            Sender::Own(o) => {
                let sock = o.0.read().unwrap_or_else(|e| e.into_inner());
                let sock = sock.as_ref().ok_or_else(ended)?;
                Ok(match try_send(sock, data, to)? {
                    true => Attempt::Sent,
                    false => Attempt::Socket(sock.clone(), to),
                })
            }
            Sender::Child(w) => {
                let sock = if core.has_ended() { None } else { w.upgrade() };
                let sock = sock.ok_or_else(ended)?;
                Ok(match try_send(&sock, data, to)? {
                    true => Attempt::Sent,
                    false => Attempt::Socket(sock, to),
                })
            }
            Sender::Relay(link) => {
                if core.has_ended() {
                    return Err(ended());
                }
                Ok(match link.try_send_to(data, to)? {
                    true => Attempt::Sent,
                    false => Attempt::Relay(link.clone(), to),
                })
            }
        }
    }

    /// Sends a datagram if it can go now: `Ok(false)`, with nothing sent, if the
    /// socket (or relay) has no room.
    pub(crate) fn try_send_to(&self, core: &Core, data: &[u8], to: SocketAddr) -> Result<bool> {
        Ok(matches!(self.attempt(core, data, to)?, Attempt::Sent))
    }

    pub(crate) async fn send_to(&self, core: &Core, data: &[u8], to: SocketAddr) -> Result<()> {
        match self.attempt(core, data, to)? {
            Attempt::Sent => {}
            Attempt::Socket(sock, to) => {
                sock.send_to(data, to).await?;
            }
            Attempt::Relay(link, to) => link.send_to(data, to).await?,
        }
        Ok(())
    }
}

/// What a datagram that could not go at once waits on.
enum Attempt {
    Sent,
    Socket(Arc<UdpSocket>, SocketAddr),
    Relay(Arc<dyn super::relay::DatagramLink>, SocketAddr),
}

/// Checks a datagram's size, and gives the address to send it to: a dual-stack
/// IPv6 socket reaches IPv4 peers through mapped addresses. A message pipe over a link
/// labelled TCP (`relay.rs`) is bound by its frame limit alone.
fn checked(core: &Core, data: &[u8], to: SocketAddr) -> Result<SocketAddr> {
    let max = match core.proto {
        Proto::Udp => core.cfg.max_frame.min(MAX_DATAGRAM),
        Proto::Tcp => core.cfg.max_frame,
    };
    if data.len() > max {
        return Err(Error::TooLarge {
            len: data.len() as u64,
            max,
        });
    }
    Ok(match to {
        SocketAddr::V4(v4) if core.local.is_ipv6() => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        other => other,
    })
}

/// Sends a datagram if the socket can take it now: true if sent, false if the
/// caller must wait for room.
fn try_send(sock: &UdpSocket, data: &[u8], to: SocketAddr) -> Result<bool> {
    match sock.try_send_to(data, to) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(Error::Io(e)),
    }
}

fn bind(addr: SocketAddr, cfg: &PipeConfig) -> Result<Arc<UdpSocket>> {
    crate::iface::bind::udp_socket_with(addr, cfg.socket_options())
        .map(Arc::new)
        .map_err(|source| Error::Bind { addr, source })
}

/// A UDP pipe whose default peer is `peer`. It receives from anyone.
pub(crate) async fn connect(peer: SocketAddr, cfg: Arc<PipeConfig>) -> Result<Arc<Core>> {
    let local = cfg
        .bind
        .unwrap_or_else(|| SocketAddr::new(crate::addr::Af::of_socket(&peer).unspecified(), 0));
    let sock = bind(local, &cfg)?;
    let local = canonical(sock.local_addr()?);
    Ok(Core::new(
        Proto::Udp,
        local,
        Some(peer),
        cfg,
        Io::Udp(Sender::Own(Owned::new(sock.clone()))),
        None,
        Some(Reader::udp(sock)),
    ))
}

/// A UDP listener: every new peer address becomes a peer pipe.
pub(crate) fn listen(addr: SocketAddr, cfg: Arc<PipeConfig>) -> Result<Arc<Core>> {
    let sock = bind(addr, &cfg)?;
    let local = canonical(sock.local_addr()?);
    let sender = Sender::Own(Owned::new(sock.clone()));
    Ok(listener(local, cfg, sender, Reader::udp(sock)))
}

/// A UDP listener at `local` that sends with `sender` and reads what `reader` brings
/// (its own socket, or a relay): every new peer address becomes a peer pipe, which
/// sends the same way.
pub(crate) fn listener(
    local: SocketAddr,
    cfg: Arc<PipeConfig>,
    sender: Sender,
    reader: Reader,
) -> Arc<Core> {
    let children = Children::new(cfg.backlog, Overflow::DropNewest);
    let core = Core::new(
        Proto::Udp,
        local,
        None,
        cfg,
        Io::UdpListener(children, sender),
        None,
        None,
    );
    let task = tokio::spawn(read_loop(core.clone(), reader));
    core.add_task(task);
    core
}

/// Reads a listener's datagrams until it is closed or its reader ends (then its
/// peers, fed by this loop alone, end with it), and hands each to its peer.
async fn read_loop(core: Arc<Core>, mut reader: Reader) {
    let Io::UdpListener(children, sender) = &core.io else {
        return;
    };
    let mut last = None;
    loop {
        match reader.next(&core).await {
            Ok(msg) => demux(&core, children, sender, &mut last, msg),
            Err(reason) => {
                core.finish(reason);
                super::end::close_children(children, true);
                return;
            }
        }
    }
}

/// Hands a datagram to its peer's pipe, making the pipe for a new peer.
///
/// `last` remembers the peer of the previous datagram, which is usually the
/// peer of the next, so that most datagrams skip the lookup.
fn demux(
    listener: &Arc<Core>,
    children: &Children,
    sender: &Sender,
    last: &mut Option<(SocketAddr, Weak<Core>)>,
    msg: Message,
) {
    let cached = match last {
        Some((peer, child)) if *peer == msg.peer => child.upgrade().filter(|c| !c.has_ended()),
        _ => None,
    };
    if let Some(child) = cached {
        child.deliver_now(msg);
        return;
    }
    if let Some(child) = children.get(&msg.peer) {
        *last = Some((msg.peer, Arc::downgrade(&child)));
        child.deliver_now(msg);
        return;
    }
    if children.lock().len() >= listener.cfg.max_peers {
        listener
            .dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return;
    }
    let child = Core::new(
        Proto::Udp,
        listener.local,
        Some(msg.peer),
        listener.cfg.clone(),
        Io::Udp(sender.for_peer()),
        Some(listener.clone()),
        None,
    );
    let pipe = Pipe::from_core(child.clone());
    register_child(listener, children, &child, &pipe);
    *last = Some((msg.peer, Arc::downgrade(&child)));
    // Deliver before queueing the pipe, so the first datagram is there when
    // the pipe is accepted.
    child.deliver_now(msg);
    if children.backlog.try_push(pipe) != super::queue::Pushed::Queued {
        listener
            .dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
