//! Who reads a pipe's socket.
//!
//! A connection's socket is read by whoever consumes the pipe, in its own
//! task: the caller of `recv`, the task of an `on_message` handler or a link.
//! The message goes from the socket to its consumer with no task in between,
//! as it would in hand-written tokio code. Only when the pipe has no such
//! consumer but still needs reading (subscriptions waiting, an end handler,
//! a listener merging its peers) does a background task take the socket
//! over and feed the flow queue, which consumers then read instead. The
//! handover is one-way: once taken, the reader never goes back.
//!
//! Peers of a UDP listener have no reader of their own: the listener's task
//! reads the shared socket and hands each datagram to its peer's flow.

use std::future::{poll_fn, Future};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures::StreamExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::UdpSocket;
use tokio_util::codec::FramedRead;

use super::framing::FrameDecoder;
use super::{Core, EndReason, Io, Message, Proto};
use crate::addr::canonical;

/// The largest UDP payload over IPv4.
pub(crate) const MAX_DATAGRAM: usize = 65_507;

/// A socket and what reading it needs.
pub(crate) enum Reader {
    /// A TCP connection, cut into messages by its framing.
    Tcp(FramedRead<OwnedReadHalf, FrameDecoder>),
    /// A UDP socket of its own, with a receive buffer.
    Udp(Arc<UdpSocket>, Box<[u8]>),
    /// Messages a link's driver received for the pipe (see `relay.rs`).
    Relay(super::relay::Inbound),
}

impl Reader {
    pub(crate) fn tcp(core_cfg: &super::PipeConfig, half: OwnedReadHalf) -> Reader {
        let decoder = core_cfg
            .framing
            .decoder(core_cfg.max_frame, core_cfg.read_buffer);
        Reader::Tcp(FramedRead::with_capacity(
            half,
            decoder,
            core_cfg.read_buffer,
        ))
    }

    pub(crate) fn udp(sock: Arc<UdpSocket>) -> Reader {
        Reader::Udp(sock, vec![0u8; 65_536].into_boxed_slice())
    }

    /// Reads the next message, or why the pipe ended.
    ///
    /// Cancel safety: cancel safe; a frame is only taken in the poll that
    /// returns it.
    pub(crate) async fn next(&mut self, core: &Core) -> Result<Message, EndReason> {
        match self {
            Reader::Tcp(framed) => match framed.next().await {
                Some(Ok(data)) => Ok(Message {
                    data,
                    peer: core.peer.expect("a connection has a peer"),
                    local: core.local,
                    proto: Proto::Tcp,
                }),
                Some(Err(e)) => Err(EndReason::from(e)),
                None => Err(EndReason::Fin),
            },
            Reader::Udp(sock, buf) => {
                let max = core.cfg.max_frame.min(MAX_DATAGRAM);
                let mut errors = 0u32;
                loop {
                    match sock.recv_from(buf).await {
                        Ok((n, _)) if n > max => {
                            core.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((n, from)) => {
                            return Ok(Message {
                                data: Bytes::copy_from_slice(&buf[..n]),
                                peer: canonical(from),
                                local: core.local,
                                proto: Proto::Udp,
                            })
                        }
                        // ICMP errors surface here on some systems; they end nothing.
                        Err(_) if errors < 64 => errors += 1,
                        Err(e) => return Err(EndReason::from(e)),
                    }
                }
            }
            Reader::Relay(inbound) => match inbound.recv().await {
                Some((data, from)) => Ok(Message {
                    data,
                    peer: canonical(from),
                    local: core.local,
                    proto: core.proto,
                }),
                // The link is gone (a relay's allocation ended or was closed, a
                // secure path's raw pipe ended): as its driver says, else closed.
                None => Err(match &core.io {
                    Io::Udp(super::udp::Sender::Relay(link)) => link.end_reason(),
                    _ => None,
                }
                .unwrap_or(EndReason::Closed)),
            },
        }
    }
}

impl Core {
    /// Reads the next message with `reader`, unless the pipe is closed first.
    async fn read_with(&self, reader: &mut Reader) -> Result<Message, EndReason> {
        let next = reader.next(self);
        tokio::pin!(next);
        poll_fn(|cx| {
            if let Poll::Ready(r) = next.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            // One reader at a time holds the reader, so one waker suffices.
            self.read_waker.register(cx.waker());
            if self.is_closing() {
                return Poll::Ready(Err(self.end_or_closed()));
            }
            Poll::Pending
        })
        .await
    }

    /// Records the end of the stream found by a reader.
    fn read_ended(&self, reason: EndReason) {
        let broken = reason != EndReason::Fin;
        self.finish(reason);
        if broken {
            // A broken stream cannot be answered: release the socket now.
            if let Io::Tcp(w) = &self.io {
                w.release();
            }
        }
    }

    /// Reads inline for `recv`: the next message no subscription claims.
    /// `None` if a background task owns the reader (read the flow instead).
    pub(crate) async fn recv_inline(&self) -> Option<Result<Message, EndReason>> {
        // The lock is almost never contended; kept out of tokio's cooperative
        // budget, so that a message costs the budget of its read alone, as
        // in plain tokio code. Otherwise the reading task is made to yield
        // twice as often, and on a multi-thread runtime each forced yield
        // can wake the other worker to steal it.
        let mut slot = tokio::task::unconstrained(self.reader.lock()).await;
        let reader = slot.as_mut()?;
        loop {
            match self.read_with(reader).await {
                Ok(msg) => {
                    if !self.offer(&msg) {
                        return Some(Ok(msg));
                    }
                }
                Err(reason) => {
                    *slot = None;
                    self.read_ended(reason.clone());
                    return Some(Err(reason));
                }
            }
        }
    }

    /// Takes the reader for a consumer task, once nobody is using it.
    async fn take_reader(&self) -> Option<Reader> {
        self.reader.lock().await.take()
    }

    /// Makes sure the socket is read even if nobody calls `recv`: a task
    /// takes the reader over and feeds the flow.
    pub(crate) fn ensure_background(self: &Arc<Self>) {
        let listener_fed = self.proto == Proto::Udp && self.parent.is_some();
        if listener_fed || self.is_listener() || self.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let core = self.clone();
        let task = tokio::spawn(async move {
            let Some(mut reader) = core.take_reader().await else {
                return;
            };
            // On TCP the flow waits for room: the peer is pushed back.
            read_all(&core, &mut reader, |m| async {
                core.flow.push(m).await != super::queue::Pushed::Closed
            })
            .await;
        });
        self.add_task(task);
    }
}

/// Runs a consumer over a pipe's flow: `each` gets every message no
/// subscription claimed, one at a time, until the pipe ends or `each`
/// returns false. Messages already queued come first; then the consumer
/// reads the socket itself if the reader is free, else the flow.
pub(crate) async fn consume<F, Fut>(core: Arc<Core>, mut each: F)
where
    F: FnMut(Message) -> Fut,
    Fut: Future<Output = bool>,
{
    let reader = core.take_reader().await;
    while let Ok(m) = core.flow.try_pop() {
        if !each(m).await {
            return;
        }
    }
    match reader {
        Some(mut reader) => read_all(&core, &mut reader, each).await,
        None => {
            while let Some(m) = core.flow.pop().await {
                if !each(m).await {
                    return;
                }
            }
        }
    }
}

/// Reads until the stream ends or `each` returns false, offering every
/// message to the subscriptions and giving `each` those none claimed.
async fn read_all<F, Fut>(core: &Core, reader: &mut Reader, mut each: F)
where
    F: FnMut(Message) -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        match core.read_with(reader).await {
            Ok(msg) => {
                if !core.offer(&msg) && !each(msg).await {
                    return;
                }
            }
            Err(reason) => {
                core.read_ended(reason);
                return;
            }
        }
    }
}
