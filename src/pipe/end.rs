//! How a pipe ends: the first reason recorded wins, queues close, end
//! handlers run, and the socket is released. [`Close`] says whether this side
//! ends a TCP connection with FIN or with RST.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::shared::{guarded, Children, Core, EndFn, Io};
use super::EndReason;

/// How this side ends a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Close {
    /// Shut down: FIN after whatever is being sent.
    Fin,
    /// Reset: RST (SO_LINGER 0); data not yet sent is discarded.
    Reset,
}

/// Shuts a core down when dropped.
struct ShutdownOnDrop<'a>(&'a Arc<Core>);

impl Drop for ShutdownOnDrop<'_> {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

impl Core {
    /// Closes the pipe from this side (`Pipe::close` and `Pipe::abort`):
    /// records `Closed`, stops waiting readers and senders, ends a TCP
    /// connection as `how` says, releases the socket and waits until the
    /// pipe's tasks are gone.
    pub(super) async fn close(self: &Arc<Self>, how: Close) {
        // Record the reason before the FIN goes out: the peer may answer it
        // by closing too, and the reader must not see that first and end the
        // pipe with `Fin` instead of `Closed`.
        self.finish(EndReason::Closed);
        // A send blocked on a peer that does not read gives up now.
        self.interrupt();
        // Released even if this future is dropped while the FIN or RST waits
        // for a send to give up.
        let release = ShutdownOnDrop(self);
        if let Io::Tcp(w) = &self.io {
            match how {
                Close::Fin => w.shutdown().await,
                Close::Reset => w.abort().await,
            }
        }
        drop(release);
        self.join_tasks().await;
    }

    /// Marks the pipe ended (the first reason wins), closes its queues and
    /// runs the end handlers, its own and its listener's.
    pub(super) fn finish(&self, reason: EndReason) {
        let mut first = false;
        self.end.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason.clone());
                first = true;
            }
            first
        });
        if !first {
            return;
        }
        self.ended.store(true, Ordering::Release);
        tracing::debug!(proto = %self.proto, local = %self.local, peer = ?self.peer, %reason, "pipe ended");
        self.flow.close();
        self.subs.close_all();
        let mut handlers: Vec<EndFn> = self.handlers().end.clone();
        if let Some(p) = &self.parent {
            handlers.extend(p.handlers().end.iter().cloned());
        }
        if !handlers.is_empty() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let ev = self.event(reason);
                for h in handlers {
                    rt.spawn(guarded(h(ev.clone())));
                }
            }
        }
        // A UDP peer's handler holds a handle to its pipe: let both go.
        self.clear_inline();
    }

    /// Stops whoever waits to read or to send (this side is closing).
    pub(super) fn interrupt(&self) {
        self.closing.store(true, Ordering::Release);
        self.read_waker.wake();
        self.write_waker.wake();
    }

    /// Whether this side has closed the pipe.
    pub(super) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Ends the pipe now: stops its tasks and releases its socket.
    pub(super) fn shutdown(self: &Arc<Self>) {
        self.finish(EndReason::Closed);
        self.interrupt();
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            t.abort();
        }
        if let Ok(mut r) = self.reader.try_lock() {
            r.take();
        }
        match &self.io {
            Io::Tcp(w) => w.release(),
            Io::Udp(s) => s.release(),
            Io::UdpListener(children, sock) => {
                sock.release();
                close_children(children, true);
            }
            Io::TcpListener(children) => close_children(children, false),
        }
        if let (Some(parent), Some(peer)) = (&self.parent, self.peer) {
            if let Some(c) = parent.children() {
                let mut map = c.lock();
                if map
                    .get(&peer)
                    .is_some_and(|w| w.as_ptr() == Arc::as_ptr(self))
                {
                    map.remove(&peer);
                }
            }
        }
    }

    /// Waits until the pipe's I/O tasks are gone (after `shutdown`).
    pub(super) async fn join_tasks(&self) {
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }
}

pub(super) fn close_children(children: &Children, all: bool) {
    children.backlog.close();
    // Peers nobody accepted are closed with the listener.
    drop(children.backlog.drain());
    if all {
        let peers: Vec<Arc<Core>> = children
            .lock()
            .drain()
            .filter_map(|(_, w)| w.upgrade())
            .collect();
        for c in peers {
            c.finish(EndReason::Closed);
        }
    }
}
