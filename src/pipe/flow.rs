//! Who consumes a pipe's flow: `recv` and `stream` (the default), one
//! handler or link, or, for a listener, its own flow into which its peers'
//! flows are merged. A pipe has exactly one consumer, claimed once.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::reader::consume;
use super::shared::{guarded, Core};
use super::{inline, queue, Error, HandlerOutput, Message, Pipe, Proto, Result};

/// The flow is read with `recv` and `stream`.
pub(super) const PULL: u8 = 0;
/// The flow goes to a handler or a link.
pub(super) const HANDLER: u8 = 1;
/// A listener's peers' flows are merged into its own.
pub(super) const MERGED: u8 = 2;

impl Core {
    /// Makes sure this pipe is read even if nobody calls `recv`. On a
    /// listener, the same for every peer, now and later.
    pub(super) fn read_in_background(self: &Arc<Self>) {
        match self.children() {
            Some(ch) => {
                let peers: Vec<Arc<Core>> = ch.lock().values().filter_map(Weak::upgrade).collect();
                for p in peers {
                    p.ensure_background();
                }
            }
            None => self.ensure_background(),
        }
    }

    /// Whether a new peer of this listener must be read in the background
    /// (the listener subscribes to its peers' messages or their ends).
    pub(super) fn reads_peers(&self) -> bool {
        self.subs.len() > 0 || !self.handlers().end.is_empty()
    }
}

impl Pipe {
    /// Claims the pipe's flow for one kind of consumer.
    pub(super) fn take_flow(&self, who: u8) -> Result<()> {
        match self
            .core()
            .consumer
            .compare_exchange(PULL, who, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::HandlerAttached),
        }
    }

    /// Starts merging the flows of a listener's peers into its own flow.
    pub(super) fn merge_flows(&self) -> Result<()> {
        let c = self.core();
        if self.take_flow(MERGED).is_err() {
            // Fine if an earlier call started the merge.
            return match c.consumer.load(Ordering::Acquire) {
                MERGED => Ok(()),
                _ => Err(Error::HandlerAttached),
            };
        }
        let core = c.clone();
        let task = tokio::spawn(async move {
            let Some(ch) = core.children() else {
                return;
            };
            while let Some(child) = ch.backlog.pop().await {
                child.core().consumer.store(MERGED, Ordering::Release);
                let target = Arc::downgrade(&core);
                tokio::spawn(async move {
                    let source = child.core().clone();
                    consume(source, move |m| {
                        let target = target.clone();
                        async move {
                            match target.upgrade() {
                                Some(t) => t.flow.push(m).await != queue::Pushed::Closed,
                                None => false,
                            }
                        }
                    })
                    .await;
                    drop(child);
                });
            }
            core.flow.close();
        });
        c.add_task(task);
        Ok(())
    }

    /// Has the listener of a UDP peer pipe run `handler` for each of the peer's
    /// datagrams (see `inline.rs`), without claiming the flow. False, and nothing
    /// installed, for any other pipe.
    pub(crate) fn serve_inline<F, Fut>(&self, handler: Arc<F>) -> bool
    where
        F: Fn(Message, Pipe) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutput,
    {
        let core = self.core();
        if self.proto() != Proto::Udp || core.parent.is_none() {
            return false;
        }
        core.install_inline(inline::new_server(handler, self.clone()));
        if core.end_reason().is_some() {
            core.clear_inline();
        }
        true
    }

    pub(super) fn attach<F, Fut>(&self, handler: Arc<F>) -> Result<()>
    where
        F: Fn(Message, Pipe) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutput,
    {
        self.take_flow(HANDLER)?;
        let pipe = self.clone();
        if self.is_listener() {
            tokio::spawn(async move {
                let Some(ch) = pipe.core().children() else {
                    return;
                };
                while let Some(child) = ch.backlog.pop().await {
                    let _ = child.attach(handler.clone());
                }
            });
        } else if self.proto() == Proto::Udp && self.core().parent.is_some() {
            // A UDP peer of a listener: its listener runs the handler.
            self.serve_inline(handler);
        } else {
            let core = pipe.core().clone();
            tokio::spawn(consume(core, move |m| {
                let fut = handler(m, pipe.clone());
                async move {
                    guarded(async move { fut.await.report() }).await;
                    true
                }
            }));
        }
        Ok(())
    }
}
