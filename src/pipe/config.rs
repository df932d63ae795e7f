//! [`PipeConfig`]: the options of connecting and listening.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Framing, Overflow};
use crate::addr::Af;
use crate::iface::bind::SocketOptions;

/// Options for connecting and listening. `PipeConfig::default()` suits most uses.
///
/// ```
/// use p2pipe::{Framing, PipeConfig};
/// let cfg = PipeConfig::default().framing(Framing::Lines).max_frame(4096);
/// ```
#[derive(Debug, Clone)]
pub struct PipeConfig {
    pub(crate) framing: Framing,
    pub(crate) max_frame: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) sub_capacity: usize,
    pub(crate) sub_overflow: Overflow,
    pub(crate) backlog: usize,
    pub(crate) listen_backlog: i32,
    pub(crate) max_peers: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) resolve_timeout: Duration,
    pub(crate) bind: Option<SocketAddr>,
    pub(crate) family: Option<Af>,
    pub(crate) device: Option<String>,
    pub(crate) dual_stack: bool,
    pub(crate) nodelay: bool,
    pub(crate) read_buffer: usize,
}

impl Default for PipeConfig {
    fn default() -> Self {
        PipeConfig {
            framing: Framing::Raw,
            max_frame: 1 << 20,
            queue_capacity: 1024,
            sub_capacity: 256,
            sub_overflow: Overflow::DropNewest,
            backlog: 1024,
            listen_backlog: 1024,
            max_peers: 65_536,
            connect_timeout: Duration::from_secs(10),
            resolve_timeout: crate::dns::DEFAULT_TIMEOUT,
            bind: None,
            family: None,
            device: None,
            dual_stack: false,
            nodelay: true,
            read_buffer: 64 * 1024,
        }
    }
}

impl PipeConfig {
    /// How a TCP stream is cut into messages (default [`Framing::Raw`]).
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }
    /// The largest message, in bytes, either way (default 1 MiB). A peer that
    /// sends or claims a larger frame is disconnected.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }
    /// Messages the flow holds for `recv` or a handler (default 1024).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }
    /// Default queue size and overflow policy of subscriptions (256, drop newest).
    /// [`Overflow::Block`] is not allowed here: a subscription must never
    /// hold up its pipe.
    pub fn subscription_queue(mut self, capacity: usize, overflow: Overflow) -> Self {
        self.sub_capacity = capacity.max(1);
        self.sub_overflow = never_block(overflow);
        self
    }
    /// Peers a listener holds for `accept` (default 1024).
    pub fn backlog(mut self, n: usize) -> Self {
        self.backlog = n.max(1);
        self.listen_backlog = n.clamp(1, i32::MAX as usize) as i32;
        self
    }
    /// Most peers a UDP listener tracks at once (default 65,536). Datagrams
    /// from further new peers are dropped and counted.
    pub fn max_peers(mut self, n: usize) -> Self {
        self.max_peers = n.max(1);
        self
    }
    /// Time limit for a TCP connect, per address tried (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Time limit for name resolution (default 5 s).
    pub fn resolve_timeout(mut self, d: Duration) -> Self {
        self.resolve_timeout = d;
        self
    }
    /// Local address to bind before connecting (the route's address). Also
    /// fixes the family that names resolve to.
    pub fn bind(mut self, local: SocketAddr) -> Self {
        self.bind = Some(local);
        self
    }
    /// Send through `route`: bind its first NIC address (any port) and resolve names
    /// to its family only. Binding by address picks the NIC wherever the route table
    /// agrees; add [`device`](Self::device) with the route's interface to force it
    /// (that needs `CAP_NET_RAW` on Linux).
    pub fn route(mut self, route: &crate::iface::Route) -> Self {
        self.bind = Some(route.bind_addr(0));
        self.family = Some(route.af());
        self
    }
    /// Only connect to addresses of this family.
    pub fn family(mut self, af: Af) -> Self {
        self.family = Some(af);
        self
    }
    /// Bind to a network device by name (SO_BINDTODEVICE; Linux only).
    pub fn device(mut self, name: impl Into<String>) -> Self {
        self.device = Some(name.into());
        self
    }
    /// Let an IPv6 listener on `[::]` accept IPv4 too. Off by default:
    /// IPv6 sockets are IPv6-only unless asked. IPv4 peers then appear with
    /// their IPv4 addresses, not as mapped IPv6.
    pub fn dual_stack(mut self, yes: bool) -> Self {
        self.dual_stack = yes;
        self
    }
    /// TCP_NODELAY (default on).
    pub fn nodelay(mut self, yes: bool) -> Self {
        self.nodelay = yes;
        self
    }
    /// Bytes read at a time on TCP (default 64 KiB).
    pub fn read_buffer(mut self, bytes: usize) -> Self {
        self.read_buffer = bytes.max(512);
        self
    }

    /// What the socket factory ([`crate::iface::bind`]) binds to besides the address.
    pub(super) fn socket_options(&self) -> SocketOptions<'_> {
        SocketOptions {
            device: self.device.as_deref(),
            dual_stack: self.dual_stack,
            reuse_port: false,
        }
    }

    pub(super) fn family_for_connect(&self) -> Option<Af> {
        self.bind.map(|b| Af::of_socket(&b)).or(self.family)
    }
}

/// A subscription's policy: [`Overflow::Block`] becomes [`Overflow::DropNewest`],
/// because a subscription must never hold up its pipe.
pub(super) fn never_block(overflow: Overflow) -> Overflow {
    match overflow {
        Overflow::Block => Overflow::DropNewest,
        o => o,
    }
}
