//! Byte streams over one message pipe, as `ssh -L` does: the [`Tunnel`].
//!
//! One end is the *entrance*: a TCP listener on `127.0.0.1` whose every connection
//! becomes a stream. The other end is the *exit*: every stream opened by the peer
//! becomes a TCP connection to one fixed target. Bytes flow both ways; a half-close
//! (FIN) is carried to the other side, a failure on either side resets the stream
//! there too. `p2pipe share` serves its file node through exits and `p2pipe fetch`
//! reaches it through an entrance, over a [`Node`](super::Node)'s authenticated and
//! encrypted TCP pipe.
//!
//! ```no_run
//! use p2pipe::p2p::{Node, Tunnel, TunnelOptions};
//! use p2pipe::Proto;
//! # async fn demo(node: Node, peer: p2pipe::identity::PeerRecord) -> Result<(), Box<dyn std::error::Error>> {
//! let conn = node.connect(&peer, Proto::Tcp).await?;
//! let tunnel = Tunnel::entrance(conn.pipe, TunnelOptions::default()).await?;
//! // Every TCP connection to this address reaches the peer's exit target.
//! println!("connect to {}", tunnel.local_addr().unwrap());
//! # Ok(()) }
//! ```
//!
//! # Wire
//!
//! Each message of the pipe is one frame: a stream id (u32), a kind (open, data, fin,
//! reset), and for data 1 to [`MAX_DATA`] bytes; see `frame.rs`, the sans-IO core.
//! Only the entrance opens streams, with ids that only grow.
//!
//! # Limits, and head-of-line blocking
//!
//! A tunnel has at most [`TunnelOptions::max_streams`] streams open; an open over the
//! limit is answered with a reset (the local connection at the entrance is closed).
//! A frame that does not parse or breaks the stream rules ends the tunnel with
//! [`TunnelError::Protocol`]; the node and its other pipes go on.
//!
//! There is no flow control per stream: every stream shares the one ordered pipe. A
//! stream whose local side reads slowly holds up the frames behind its own, for every
//! stream, once its queue (16 frames, about 1 MiB) is full; after
//! [`TunnelOptions::stall`] of that, it is reset and the others go on. A file transfer
//! through a tunnel is as fast as the pipe; many streams at once share it in arrival
//! order, not fairly.

mod frame;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::pipe::{EndReason, Error as PipeError, Pipe};
use frame::{header, Frame, Kind, Role, Route, Table};

pub use frame::{FrameError, TableError, MAX_DATA};

/// Frames queued for one stream's local side.
const QUEUE: usize = 16;

/// How a tunnel runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TunnelOptions {
    /// The most streams open at once (default 64).
    pub max_streams: usize,
    /// The exit's time limit for connecting to its target (default 5 s).
    pub connect_timeout: Duration,
    /// How long a send to the peer, a write to a local connection, or a stream's full
    /// queue may block before the tunnel (for a send) or the stream (otherwise) gives
    /// up (default 30 s).
    pub stall: Duration,
}

impl Default for TunnelOptions {
    fn default() -> Self {
        TunnelOptions {
            max_streams: 64,
            connect_timeout: Duration::from_secs(5),
            stall: Duration::from_secs(30),
        }
    }
}

impl TunnelOptions {
    /// Sets the most streams open at once.
    pub fn max_streams(mut self, n: usize) -> Self {
        self.max_streams = n;
        self
    }
}

/// Why a tunnel ended other than by the pipe closing.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// The entrance's listener could not be bound.
    #[error("cannot listen for the tunnel's entrance: {0}")]
    Listen(String),
    /// The peer sent what the tunnel's wire does not allow.
    #[error("the peer broke the tunnel protocol: {0}")]
    Protocol(#[from] TableError),
    /// The pipe failed or ended abnormally.
    #[error("the tunnel's pipe failed: {0}")]
    Pipe(String),
    /// A send to the peer did not complete within the stall limit.
    #[error("the peer took no data for {0:?}")]
    Stalled(Duration),
}

/// A stream tunnel over one message pipe; see the [module docs](self). Dropping it
/// ends it: the pipe is closed and every local connection of it with it.
#[derive(Debug)]
pub struct Tunnel {
    local: Option<SocketAddr>,
    cancel: CancellationToken,
    done: watch::Receiver<Option<Result<(), TunnelError>>>,
}

impl Tunnel {
    /// The entrance end: listens on `127.0.0.1` (a port the system picks) and carries
    /// every connection made there to the peer's exit, over `pipe`.
    ///
    /// # Errors
    ///
    /// The listener cannot be bound.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is started until it returns.
    pub async fn entrance(pipe: Pipe, opts: TunnelOptions) -> Result<Tunnel, TunnelError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| TunnelError::Listen(e.to_string()))?;
        let local = listener
            .local_addr()
            .map_err(|e| TunnelError::Listen(e.to_string()))?;
        Ok(Self::spawn(
            pipe,
            Role::Entrance,
            Some(listener),
            None,
            Some(local),
            opts,
        ))
    }

    /// The exit end: connects every stream the peer opens over `pipe` to `target`.
    /// Must be called within a tokio runtime.
    pub fn exit(pipe: Pipe, target: SocketAddr, opts: TunnelOptions) -> Tunnel {
        Self::spawn(pipe, Role::Exit, None, Some(target), None, opts)
    }

    fn spawn(
        pipe: Pipe,
        role: Role,
        listener: Option<TcpListener>,
        target: Option<SocketAddr>,
        local: Option<SocketAddr>,
        opts: TunnelOptions,
    ) -> Tunnel {
        let cancel = CancellationToken::new();
        let (tx, done) = watch::channel(None);
        let driver = Driver {
            table: Table::new(role, opts.max_streams),
            tasks: JoinSet::new(),
            ids: HashMap::new(),
            pipe,
            target,
            opts,
        };
        tokio::spawn(driver.run(listener, cancel.clone(), tx));
        Tunnel {
            local,
            cancel,
            done,
        }
    }

    /// The entrance's address (`127.0.0.1:PORT`); `None` for an exit.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// Waits for the tunnel to end: `Ok` when its pipe was closed (by either side) or
    /// [`close`](Self::close) was called.
    ///
    /// # Errors
    ///
    /// Why it ended otherwise.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn closed(&self) -> Result<(), TunnelError> {
        let mut done = self.done.clone();
        let r = match done.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or(Ok(())),
            // The driver is gone without a word: it was aborted with the runtime.
            Err(_) => Ok(()),
        };
        r
    }

    /// Ends the tunnel: its pipe is closed, its local connections with it.
    pub fn close(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What the driver hands a stream's task.
#[derive(Debug)]
enum Event {
    Data(Bytes),
    Fin,
    Reset,
}

/// A stream as the driver holds it.
struct Handle {
    tx: mpsc::Sender<Event>,
    task: AbortHandle,
}

/// The task that reads the pipe and owns the stream table.
struct Driver {
    table: Table<Handle>,
    tasks: JoinSet<(u32, Result<(), TunnelError>)>,
    /// The stream of each task, to take it out of the table however it ended.
    ids: HashMap<tokio::task::Id, u32>,
    pipe: Pipe,
    target: Option<SocketAddr>,
    opts: TunnelOptions,
}

impl Driver {
    async fn run(
        mut self,
        listener: Option<TcpListener>,
        cancel: CancellationToken,
        done: watch::Sender<Option<Result<(), TunnelError>>>,
    ) {
        // Cancelling also ends a wait inside `serve` (a full stream queue, a send).
        let result = tokio::select! {
            r = self.serve(listener.as_ref()) => r,
            () = cancel.cancelled() => Ok(()),
        };
        if let Err(e) = &result {
            tracing::debug!(error = %e, "tunnel ended");
        }
        self.tasks.abort_all();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.pipe.close()).await;
        let _ = done.send(Some(result));
    }

    async fn serve(&mut self, listener: Option<&TcpListener>) -> Result<(), TunnelError> {
        let accept = || async {
            match listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        loop {
            tokio::select! {
                msg = self.pipe.recv() => match msg {
                    Ok(m) => self.on_message(m.data).await?,
                    Err(PipeError::Ended(EndReason::Fin | EndReason::Closed)) => return Ok(()),
                    Err(e) => return Err(TunnelError::Pipe(e.to_string())),
                },
                accepted = accept() => match accepted {
                    Ok((tcp, _)) => self.open_local(tcp).await?,
                    Err(e) => {
                        // Out of descriptors, say: the tunnel goes on.
                        tracing::warn!(error = %e, "tunnel entrance cannot accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(joined) = self.tasks.join_next_with_id() => {
                    let (task, result) = match joined {
                        Ok((task, (_, r))) => (task, r),
                        Err(e) => (e.id(), Ok(())),
                    };
                    if let Some(id) = self.ids.remove(&task) {
                        self.table.remove(id);
                    }
                    result?;
                }
            }
        }
    }

    /// A frame from the peer.
    async fn on_message(&mut self, msg: Bytes) -> Result<(), TunnelError> {
        let frame = Frame::parse(&msg).map_err(TableError::from)?;
        let id = frame.stream;
        match self.table.route(&frame)? {
            Route::Ignore => Ok(()),
            Route::Refuse => {
                tracing::debug!(stream = id, "tunnel stream refused: too many open");
                self.send(&header(id, Kind::Reset)).await
            }
            Route::Start => {
                let target = self.target.expect("an exit has a target");
                self.start(id, Local::Connect(target));
                Ok(())
            }
            Route::Deliver => {
                let event = match frame.kind {
                    Kind::Data => Event::Data(msg.slice(frame::HEADER..)),
                    Kind::Fin => Event::Fin,
                    Kind::Reset | Kind::Open => Event::Reset,
                };
                self.deliver(id, event).await
            }
        }
    }

    /// Queues an event for a stream; a stream whose queue stays full for the stall
    /// limit is reset (both here and at the peer).
    async fn deliver(&mut self, id: u32, event: Event) -> Result<(), TunnelError> {
        let Some(handle) = self.table.get(id) else {
            return Ok(());
        };
        let tx = handle.tx.clone();
        let event = match tx.try_send(event) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(e)) => e,
        };
        if tokio::time::timeout(self.opts.stall, tx.send(event))
            .await
            .is_err()
        {
            tracing::debug!(
                stream = id,
                "tunnel stream reset: its local side reads nothing"
            );
            if let Some(h) = self.table.remove(id) {
                h.task.abort();
            }
            self.send(&header(id, Kind::Reset)).await?;
        }
        Ok(())
    }

    /// A connection at the entrance: a new stream, or closed at once when the table is
    /// full.
    async fn open_local(&mut self, tcp: TcpStream) -> Result<(), TunnelError> {
        let Some(id) = self.table.open_local() else {
            tracing::warn!(
                max = self.opts.max_streams,
                "tunnel entrance: too many streams open, connection closed"
            );
            return Ok(());
        };
        self.send(&header(id, Kind::Open)).await?;
        self.start(id, Local::Accepted(tcp));
        Ok(())
    }

    /// Starts the task of a stream and records it in the table.
    fn start(&mut self, id: u32, local: Local) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = self.spawn_stream(id, local, rx);
        self.table.insert(id, Handle { tx, task });
    }

    fn spawn_stream(&mut self, id: u32, local: Local, rx: mpsc::Receiver<Event>) -> AbortHandle {
        let task = self
            .tasks
            .spawn(stream(self.pipe.clone(), id, local, rx, self.opts.clone()));
        self.ids.insert(task.id(), id);
        task
    }

    async fn send(&self, frame: &[u8]) -> Result<(), TunnelError> {
        send(&self.pipe, frame, self.opts.stall).await
    }
}

/// Sends one frame to the peer, under the stall limit.
async fn send(pipe: &Pipe, frame: &[u8], stall: Duration) -> Result<(), TunnelError> {
    match tokio::time::timeout(stall, pipe.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(TunnelError::Pipe(e.to_string())),
        Err(_) => Err(TunnelError::Stalled(stall)),
    }
}

/// A stream's local side: accepted at the entrance, or to connect at the exit.
enum Local {
    Accepted(TcpStream),
    Connect(SocketAddr),
}

/// How a stream's local side ended.
enum End {
    /// Both directions finished.
    Done,
    /// The peer reset it, or the tunnel is ending.
    Remote,
    /// It failed here: the peer is told with a reset.
    Local,
}

/// One stream: local bytes to the peer as data frames, the peer's frames to the local
/// side. Returns its id; an error only when the pipe failed.
async fn stream(
    pipe: Pipe,
    id: u32,
    local: Local,
    mut rx: mpsc::Receiver<Event>,
    opts: TunnelOptions,
) -> (u32, Result<(), TunnelError>) {
    let tcp = match local {
        Local::Accepted(tcp) => Ok(tcp),
        Local::Connect(target) => {
            match tokio::time::timeout(opts.connect_timeout, TcpStream::connect(target)).await {
                Ok(Ok(tcp)) => Ok(tcp),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", opts.connect_timeout)),
            }
        }
    };
    let mut tcp = match tcp {
        Ok(tcp) => tcp,
        Err(e) => {
            tracing::warn!(stream = id, error = %e, "tunnel exit cannot reach its target");
            return (id, send(&pipe, &header(id, Kind::Reset), opts.stall).await);
        }
    };
    let _ = tcp.set_nodelay(true);
    let end = {
        let (mut r, mut w) = tcp.split();
        let up = async {
            // One buffer for the stream's life: the header, then what is read.
            let mut buf = vec![0u8; frame::MAX_FRAME];
            buf[..frame::HEADER].copy_from_slice(&header(id, Kind::Data));
            loop {
                match r.read(&mut buf[frame::HEADER..]).await {
                    Ok(0) => {
                        send(&pipe, &header(id, Kind::Fin), opts.stall).await?;
                        return Ok(true);
                    }
                    Ok(n) => send(&pipe, &buf[..frame::HEADER + n], opts.stall).await?,
                    Err(_) => return Ok(false),
                }
            }
        };
        let down = async {
            while let Some(event) = rx.recv().await {
                match event {
                    Event::Data(b) => {
                        match tokio::time::timeout(opts.stall, w.write_all(&b)).await {
                            Ok(Ok(())) => {}
                            _ => return End::Local,
                        }
                    }
                    Event::Fin => {
                        return match tokio::time::timeout(opts.stall, w.shutdown()).await {
                            Ok(Ok(())) => End::Done,
                            _ => End::Local,
                        };
                    }
                    Event::Reset => return End::Remote,
                }
            }
            End::Remote
        };
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                sent = &mut up, if !up_done => match sent {
                    Ok(true) => up_done = true,
                    Ok(false) => break End::Local,
                    Err(e) => return (id, Err(e)),
                },
                got = &mut down, if !down_done => match got {
                    End::Done => down_done = true,
                    other => break other,
                },
            }
            if up_done && down_done {
                break End::Done;
            }
        }
    };
    match end {
        End::Done => (id, Ok(())),
        End::Remote => {
            // A reset closes the local connection with a reset too.
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            (id, Ok(()))
        }
        End::Local => (id, send(&pipe, &header(id, Kind::Reset), opts.stall).await),
    }
}
