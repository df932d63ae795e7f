//! The state behind a [`Pipe`]: [`Core`], shared by every handle of a pipe
//! and by its tasks; [`Io`], what it does I/O with; the [`Children`] of a
//! listener; and the registered handlers.
//!
//! How a core reads lives in `reader.rs` (and `inline.rs` for UDP peers),
//! who consumes its flow in `flow.rs`, and how it ends in `end.rs`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures::future::BoxFuture;
use futures::task::AtomicWaker;
use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::flow::PULL;
use super::queue::Queue;
use super::reader::Reader;
use super::subscribe::Subscriptions;
use super::{
    inline, tcp, udp, EndEvent, EndReason, Message, Overflow, Pipe, PipeConfig, Proto, Result,
};

pub(super) type EndFn = Arc<dyn Fn(EndEvent) -> BoxFuture<'static, ()> + Send + Sync>;
pub(super) type UpFn = Arc<dyn Fn(Pipe) -> BoxFuture<'static, ()> + Send + Sync>;

/// The handlers of a pipe (for a listener, also those of its peers).
#[derive(Default)]
pub(super) struct Handlers {
    pub(super) end: Vec<EndFn>,
    pub(super) up: Vec<UpFn>,
}

/// What the pipe does I/O with.
pub(crate) enum Io {
    Tcp(tcp::Writer),
    Udp(udp::Sender),
    TcpListener(Children),
    UdpListener(Children, udp::Sender),
}

/// The peers of a listener.
pub(crate) struct Children {
    map: Mutex<HashMap<SocketAddr, Weak<Core>>>,
    pub(super) backlog: Queue<Pipe>,
}

impl Children {
    pub(super) fn new(backlog: usize, overflow: Overflow) -> Self {
        Children {
            map: Mutex::new(HashMap::new()),
            backlog: Queue::new(backlog, overflow),
        }
    }
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Weak<Core>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(super) fn get(&self, peer: &SocketAddr) -> Option<Arc<Core>> {
        self.lock().get(peer).and_then(Weak::upgrade)
    }
}

/// State shared by every handle of a pipe and by its tasks.
pub(crate) struct Core {
    pub(super) proto: Proto,
    pub(super) local: SocketAddr,
    pub(super) peer: Option<SocketAddr>,
    pub(super) cfg: Arc<PipeConfig>,
    pub(super) io: Io,
    pub(super) parent: Option<Arc<Core>>,
    pub(super) subs: Subscriptions,
    pub(super) flow: Queue<Message>,
    /// Who takes the flow: `PULL`, `HANDLER` or `MERGED`.
    pub(super) consumer: AtomicU8,
    pub(super) end: watch::Sender<Option<EndReason>>,
    /// Whether `end` holds a reason, readable without a lock.
    pub(super) ended: AtomicBool,
    pub(super) handlers: Mutex<Handlers>,
    pub(super) tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The socket's reader while no task owns it (see `reader.rs`).
    pub(super) reader: tokio::sync::Mutex<Option<Reader>>,
    /// Whether a background task has been asked to read.
    pub(super) background: AtomicBool,
    /// Set when this side closes the pipe: stops a reader waiting for data
    /// and a send waiting for room, each woken through its waker.
    pub(super) closing: AtomicBool,
    pub(super) read_waker: AtomicWaker,
    pub(super) write_waker: AtomicWaker,
    /// The message handler of a UDP peer pipe (see `inline.rs`).
    pub(super) inline: Mutex<Option<inline::Inline>>,
    pub(super) received: AtomicU64,
    pub(super) sent: AtomicU64,
    pub(super) dropped: AtomicU64,
}

impl Core {
    /// Counts a send call that succeeded; every send method goes through here.
    pub(super) fn count_sent(&self, r: Result<()>) -> Result<()> {
        if r.is_ok() {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    pub(super) fn new(
        proto: Proto,
        local: SocketAddr,
        peer: Option<SocketAddr>,
        cfg: Arc<PipeConfig>,
        io: Io,
        parent: Option<Arc<Core>>,
        reader: Option<Reader>,
    ) -> Arc<Core> {
        let overflow = match proto {
            Proto::Tcp => Overflow::Block,
            Proto::Udp => Overflow::DropNewest,
        };
        Arc::new(Core {
            proto,
            local,
            peer,
            flow: Queue::new(cfg.queue_capacity, overflow),
            cfg,
            io,
            parent,
            subs: Subscriptions::default(),
            consumer: AtomicU8::new(PULL),
            end: watch::channel(None).0,
            ended: AtomicBool::new(false),
            handlers: Mutex::new(Handlers::default()),
            tasks: Mutex::new(Vec::new()),
            reader: tokio::sync::Mutex::new(reader),
            background: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            read_waker: AtomicWaker::new(),
            write_waker: AtomicWaker::new(),
            inline: Mutex::new(None),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    pub(super) fn handlers(&self) -> std::sync::MutexGuard<'_, Handlers> {
        self.handlers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn add_task(&self, h: JoinHandle<()>) {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(h);
    }

    pub(super) fn is_listener(&self) -> bool {
        self.children().is_some()
    }

    /// Whether the pipe has ended (cheaper than `end_reason`).
    pub(super) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub(super) fn end_reason(&self) -> Option<EndReason> {
        self.end.borrow().clone()
    }

    /// Why the pipe ended, for an operation that finds it ended; a pipe
    /// closed before any reason was recorded counts as closed.
    pub(super) fn end_or_closed(&self) -> EndReason {
        self.end_reason().unwrap_or(EndReason::Closed)
    }

    /// The peers of a listener; `None` for any other pipe.
    pub(super) fn children(&self) -> Option<&Children> {
        match &self.io {
            Io::TcpListener(ch) | Io::UdpListener(ch, _) => Some(ch),
            _ => None,
        }
    }

    /// Offers a message to the subscriptions; true if one took it.
    pub(super) fn offer(&self, msg: &Message) -> bool {
        self.received.fetch_add(1, Ordering::Relaxed);
        let mine = self.subs.dispatch(msg);
        let parents = match &self.parent {
            Some(p) => p.subs.dispatch(msg),
            None => false,
        };
        mine || parents
    }

    /// Delivers a datagram without waiting (UDP peers of a listener): to a
    /// subscription, else to the peer's handler, else to its flow.
    pub(super) fn deliver_now(self: &Arc<Self>, msg: Message) {
        // A datagram dropped by a full flow is counted by the flow itself
        // (`PipeStats::dropped` adds the flow's count).
        if !self.offer(&msg) {
            if let Err(msg) = self.handle_inline(msg) {
                self.flow.try_push(msg);
            }
        }
    }

    pub(super) fn event(&self, reason: EndReason) -> EndEvent {
        EndEvent {
            proto: self.proto,
            local: self.local,
            peer: self.peer,
            reason,
        }
    }
}

/// Runs a handler future, turning a panic into a log line.
pub(super) async fn guarded(fut: impl Future<Output = ()>) {
    if AssertUnwindSafe(fut).catch_unwind().await.is_err() {
        tracing::error!("a pipe handler panicked");
    }
}

/// The handle all clones of a [`Pipe`] share: the last one to go shuts the pipe.
pub(super) struct Guard(pub(super) Arc<Core>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// Registers a new peer of a listener in its map and runs the up handlers.
pub(super) fn register_child(
    listener: &Arc<Core>,
    children: &Children,
    child: &Arc<Core>,
    pipe: &Pipe,
) {
    let peer = child.peer.expect("a child has a peer");
    children.lock().insert(peer, Arc::downgrade(child));
    let ups: Vec<UpFn> = listener.handlers().up.clone();
    for h in ups {
        tokio::spawn(guarded(h(pipe.clone())));
    }
}
