//! Message handlers of UDP peer pipes, run in the listener's task.
//!
//! A UDP listener reads one socket for all its peers. If each peer's handler
//! ran in a task of its own, every datagram would go from the listener's task
//! through the peer's queue to that task: one task switch per datagram, and
//! the listener's next (usually empty) read of the socket would come before
//! the handler's answer. Instead the listener polls the peer's handler itself,
//! once, as soon as the datagram is read. A handler that finishes in that
//! poll, as an answer sent on a UDP socket does, costs no task at all. One
//! that has to wait is handed to a task of its own, which finishes it and
//! then handles, in order, whatever arrived for that peer meanwhile; when
//! nothing is left, the listener takes over again. So a slow handler holds up
//! only its own peer.
//!
//! The handler's future lives in one reusable box per peer: after the first
//! message, handling a datagram allocates nothing.

use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures::FutureExt;
use tokio_util::sync::ReusableBoxFuture;

use super::{Core, HandlerOutput, Message, Pipe};

/// A handler with its reusable future slot, behind a trait object.
pub(crate) trait Serve: Send {
    /// Puts the handler's future for `msg` in the slot.
    fn load(&mut self, msg: Message);
    /// Polls the slot.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

struct Server<F> {
    handler: Arc<F>,
    pipe: Pipe,
    slot: ReusableBoxFuture<'static, ()>,
}

impl<F, Fut> Serve for Server<F>
where
    F: Fn(Message, Pipe) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerOutput,
{
    fn load(&mut self, msg: Message) {
        // `map`, not an async block awaiting the future: that would hold it twice
        // over, and it is moved into the slot for every message.
        let fut = (self.handler)(msg, self.pipe.clone());
        self.slot.set(fut.map(HandlerOutput::report));
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.slot.poll(cx)
    }
}

/// Who handles a UDP peer's next message.
pub(crate) enum Inline {
    /// The listener, in its own task.
    Ready(Box<dyn Serve>),
    /// A task finishing a handler that had to wait; messages queue meanwhile.
    Busy,
}

pub(crate) fn new_server<F, Fut>(handler: Arc<F>, pipe: Pipe) -> Box<dyn Serve>
where
    F: Fn(Message, Pipe) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerOutput,
{
    Box::new(Server {
        handler,
        pipe,
        slot: ReusableBoxFuture::new(async {}),
    })
}

/// Polls the handler once; a panic counts as finished, and is logged.
fn poll_guarded(serve: &mut dyn Serve, cx: &mut Context<'_>) -> Poll<()> {
    match catch_unwind(AssertUnwindSafe(|| serve.poll(cx))) {
        Ok(p) => p,
        Err(_) => {
            tracing::error!("a pipe handler panicked");
            Poll::Ready(())
        }
    }
}

impl Core {
    fn inline(&self) -> MutexGuard<'_, Option<Inline>> {
        self.inline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs a handler for a UDP peer pipe. Messages already queued are
    /// handled first, by a task.
    pub(crate) fn install_inline(self: &Arc<Self>, serve: Box<dyn Serve>) {
        let mut g = self.inline();
        match self.flow.try_pop() {
            Ok(first) => {
                *g = Some(Inline::Busy);
                drop(g);
                tokio::spawn(drive(self.clone(), serve, first));
            }
            Err(_) => *g = Some(Inline::Ready(serve)),
        }
    }

    /// Drops the handler (the pipe ended), which also drops its pipe handle.
    pub(crate) fn clear_inline(&self) {
        let old = self.inline().take();
        drop(old);
    }

    /// Hands an unclaimed datagram to the installed handler: at once, in
    /// this task, if it is free; queued for its task if it is busy. Gives
    /// the message back if no handler is installed.
    pub(crate) fn handle_inline(self: &Arc<Self>, msg: Message) -> Result<(), Message> {
        let mut g = self.inline();
        let mut serve = match g.take() {
            None => return Err(msg),
            Some(Inline::Busy) => {
                *g = Some(Inline::Busy);
                drop(g);
                if self.flow.try_push(msg) != super::queue::Pushed::Queued {
                    self.dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                return Ok(());
            }
            Some(Inline::Ready(serve)) => serve,
        };
        *g = Some(Inline::Busy);
        drop(g);
        serve.load(msg);
        let mut cx = Context::from_waker(Waker::noop());
        match poll_guarded(serve.as_mut(), &mut cx) {
            Poll::Ready(()) => self.idle_or_drop(serve),
            // Its task polls it again at once, with a real waker.
            Poll::Pending => {
                tokio::spawn(finish(self.clone(), serve));
            }
        }
        Ok(())
    }

    /// Gives the handler back to the listener, unless the pipe ended.
    fn idle_or_drop(&self, serve: Box<dyn Serve>) {
        let mut g = self.inline();
        if g.is_some() {
            *g = Some(Inline::Ready(serve));
        } else {
            drop(g);
            drop(serve);
        }
    }
}

/// Finishes a handler that had to wait, then what queued behind it.
async fn finish(core: Arc<Core>, mut serve: Box<dyn Serve>) {
    poll_fn(|cx| poll_guarded(serve.as_mut(), cx)).await;
    next_or_idle(core, serve).await;
}

/// Handles `first`, then whatever queued, then hands back to the listener.
async fn drive(core: Arc<Core>, mut serve: Box<dyn Serve>, first: Message) {
    serve.load(first);
    poll_fn(|cx| poll_guarded(serve.as_mut(), cx)).await;
    next_or_idle(core, serve).await;
}

async fn next_or_idle(core: Arc<Core>, mut serve: Box<dyn Serve>) {
    loop {
        let next = {
            // Under the lock: the listener queues only while we are Busy.
            let mut g = core.inline();
            if g.is_none() {
                // The pipe ended: what is still queued goes unhandled.
                return;
            }
            match core.flow.try_pop() {
                Ok(m) => m,
                Err(_) => {
                    *g = Some(Inline::Ready(serve));
                    return;
                }
            }
        };
        serve.load(next);
        poll_fn(|cx| poll_guarded(serve.as_mut(), cx)).await;
    }
}
