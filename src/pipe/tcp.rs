//! TCP connections and listeners.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

use super::framing::{DynEncoder, MAX_HEADER};
use super::reader::Reader;
use super::shared::{register_child, Children, Core, Io};
use super::{EndReason, Error, Overflow, Pipe, PipeConfig, Proto, Result};
use crate::addr::canonical;
use crate::iface::bind;

/// Messages up to this size are copied next to their header and written in
/// one call; larger ones are written in place, header first.
const COALESCE: usize = 16 * 1024;

struct WriteState {
    half: OwnedWriteHalf,
    buf: BytesMut,
    /// The encoder of a [`Framing::codec`](super::Framing::codec) framing.
    encoder: Option<Box<dyn DynEncoder>>,
}

/// The sending half of a TCP pipe. Sends are serialised so that messages
/// never interleave on the wire.
pub(crate) struct Writer(tokio::sync::Mutex<Option<WriteState>>);

impl Writer {
    fn new(half: OwnedWriteHalf, encoder: Option<Box<dyn DynEncoder>>) -> Self {
        Writer(tokio::sync::Mutex::new(Some(WriteState {
            half,
            buf: BytesMut::new(),
            encoder,
        })))
    }

    /// Sends one message: framed by the pipe's framing, or as it is if `raw`.
    pub(crate) async fn send(&self, core: &Core, data: &[u8], raw: bool) -> Result<()> {
        let cfg = &core.cfg;
        let mut head = [0u8; MAX_HEADER];
        let (h, skip, trailer) = if raw {
            (0, 0, &b""[..])
        } else {
            cfg.framing.frame_header(data, cfg.max_frame, &mut head)?
        };
        // Outside the cooperative budget, as the reader's lock (see reader.rs).
        let mut guard = tokio::task::unconstrained(self.0.lock()).await;
        let Some(st) = guard.as_mut() else {
            return Err(Error::Ended(core.end_or_closed()));
        };
        match &mut st.encoder {
            Some(encoder) if !raw => {
                st.buf.clear();
                encoder.encode(data, &mut st.buf)?;
                until_closed(core, st.half.write_all(&st.buf)).await
            }
            _ => until_closed(core, st.write(&[&head[..h], &data[skip..], trailer])).await,
        }
    }

    /// Writes `parts` back to back with no other send between them: small messages are
    /// copied into one buffer and written in one call, larger ones part by part.
    pub(crate) async fn write(&self, core: &Core, parts: &[&[u8]]) -> Result<()> {
        let mut guard = tokio::task::unconstrained(self.0.lock()).await;
        let Some(st) = guard.as_mut() else {
            return Err(Error::Ended(core.end_or_closed()));
        };
        until_closed(core, st.write(parts)).await
    }

    /// Drops the write half (the OS sends FIN) if no send holds it.
    pub(crate) fn release(&self) {
        if let Ok(mut g) = self.0.try_lock() {
            g.take();
        }
    }

    /// Makes the close a reset (SO_LINGER 0) and drops the write half without FIN: when
    /// the socket is released, the peer gets RST and unsent data is discarded.
    pub(crate) async fn abort(&self) {
        let mut g = self.0.lock().await;
        if let Some(st) = g.take() {
            let _ = socket2::SockRef::from(st.half.as_ref())
                .set_linger(Some(std::time::Duration::ZERO));
            // Dropping the write half would send FIN first; forgetting it leaves the
            // close to the read half's release, which then resets.
            st.half.forget();
        }
    }

    /// Sends FIN after any send in progress, then drops the write half.
    pub(crate) async fn shutdown(&self) {
        let mut g = self.0.lock().await;
        if let Some(st) = g.as_mut() {
            let _ = st.half.shutdown().await;
        }
        g.take();
    }
}

impl WriteState {
    async fn write(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let nonempty = parts.iter().filter(|p| !p.is_empty()).count();
        if nonempty > 1 && total <= COALESCE {
            self.buf.clear();
            for p in parts {
                self.buf.put_slice(p);
            }
            return self.half.write_all(&self.buf).await;
        }
        for p in parts {
            self.half.write_all(p).await?;
        }
        Ok(())
    }
}

/// Runs a write, giving up if this side closes while it waits for room. The
/// writer's lock makes the write the only one waiting.
async fn until_closed(core: &Core, write: impl Future<Output = io::Result<()>>) -> Result<()> {
    tokio::pin!(write);
    poll_fn(|cx| {
        if let Poll::Ready(r) = write.as_mut().poll(cx) {
            return Poll::Ready(r.map_err(Error::Io));
        }
        core.write_waker.register(cx.waker());
        if core.is_closing() {
            return Poll::Ready(Err(Error::Ended(EndReason::Closed)));
        }
        Poll::Pending
    })
    .await
}

/// Connects to the first of `addrs` that answers.
pub(crate) async fn connect(
    target: &str,
    addrs: &[SocketAddr],
    cfg: Arc<PipeConfig>,
) -> Result<Arc<Core>> {
    let mut last: Option<io::Error> = None;
    let mut all_timed_out = true;
    for addr in addrs {
        let sock = match bind::tcp_socket_with(addr, cfg.bind, cfg.socket_options()) {
            Ok(s) => s,
            Err(e) => {
                if let Some(local) = cfg.bind {
                    return Err(Error::Bind {
                        addr: local,
                        source: e,
                    });
                }
                all_timed_out = false;
                last = Some(e);
                continue;
            }
        };
        match tokio::time::timeout(cfg.connect_timeout, sock.connect(*addr)).await {
            Ok(Ok(stream)) => return Ok(start(stream, cfg, None)?),
            Ok(Err(e)) => {
                all_timed_out = false;
                last = Some(e);
            }
            Err(_) => {}
        }
    }
    if all_timed_out && !addrs.is_empty() {
        return Err(Error::ConnectTimeout {
            target: target.to_string(),
            after: cfg.connect_timeout,
        });
    }
    Err(Error::Connect {
        target: target.to_string(),
        source: last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")),
    })
}

/// Makes a connection pipe. Its socket is read by whoever consumes it.
pub(super) fn start(
    stream: TcpStream,
    cfg: Arc<PipeConfig>,
    parent: Option<Arc<Core>>,
) -> io::Result<Arc<Core>> {
    stream.set_nodelay(cfg.nodelay)?;
    let local = canonical(stream.local_addr()?);
    let peer = canonical(stream.peer_addr()?);
    let (r, w) = stream.into_split();
    let reader = Reader::tcp(&cfg, r);
    let writer = Writer::new(w, cfg.framing.encoder());
    Ok(Core::new(
        Proto::Tcp,
        local,
        Some(peer),
        cfg,
        Io::Tcp(writer),
        parent,
        Some(reader),
    ))
}

/// Binds a listener and starts accepting.
pub(crate) fn listen(addr: SocketAddr, cfg: Arc<PipeConfig>) -> Result<Arc<Core>> {
    let l = bind::tcp_listener(addr, cfg.listen_backlog, cfg.socket_options())
        .map_err(|source| Error::Bind { addr, source })?;
    let local = canonical(l.local_addr()?);
    let children = Children::new(cfg.backlog, Overflow::Block);
    let core = Core::new(
        Proto::Tcp,
        local,
        None,
        cfg,
        Io::TcpListener(children),
        None,
        None,
    );
    let task = tokio::spawn(accept_loop(core.clone(), l));
    core.add_task(task);
    Ok(core)
}

async fn accept_loop(core: Arc<Core>, l: TcpListener) {
    let Io::TcpListener(children) = &core.io else {
        return;
    };
    loop {
        let stream = match l.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let child = match start(stream, core.cfg.clone(), Some(core.clone())) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "accepted connection failed at once");
                continue;
            }
        };
        let pipe = Pipe::from_core(child.clone());
        register_child(&core, children, &child, &pipe);
        if core.reads_peers() {
            child.ensure_background();
        }
        if children.backlog.push(pipe).await == super::queue::Pushed::Closed {
            return;
        }
    }
}
