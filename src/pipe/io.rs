//! A TCP pipe as a tokio byte stream: [`PipeIo`] implements [`AsyncRead`] and
//! [`AsyncWrite`], for code written against those traits
//! (`tokio::io::copy_bidirectional`, a TLS or HTTP library, a `Framed`).

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::ReusableBoxFuture;

use super::shared::Io;
use super::{EndReason, Error, Framing, Message, Pipe, Result};

/// The largest write buffer a [`PipeIo`] keeps for the next write.
const SPARE_MAX: usize = 64 * 1024;

/// A TCP connection with raw framing, as an [`AsyncRead`] + [`AsyncWrite`] byte stream.
/// Made by [`Pipe::io`].
///
/// Reading takes the pipe's flow, as [`Pipe::recv`] does, and hands its bytes out
/// in order, keeping what does not fit in the caller's buffer for the next read;
/// the end of the stream is a FIN from the peer (or this side's close). Writing goes
/// through the pipe's writer, so it never interleaves with the pipe's other sends
/// and counts in [`PipeStats::sent`](super::PipeStats::sent). As with a
/// `BufWriter`, a write may finish after `poll_write` has accepted its bytes:
/// `flush` waits for it, and its error, if any, comes from the next write or flush.
/// `shutdown` waits for pending writes, then closes the writing side (FIN); the
/// reading side stays open until the peer ends it.
///
/// Subscriptions of the pipe still see every chunk first, and take those they
/// match: give a pipe used as a byte stream no subscriptions.
pub struct PipeIo {
    pipe: Pipe,
    /// The `recv` in flight, while `reading`.
    read: ReusableBoxFuture<'static, Result<Message>>,
    reading: bool,
    /// What the last message held beyond the caller's buffer.
    leftover: Bytes,
    eof: bool,
    /// The write (or the shutdown) in flight, while `writing`; it gives its
    /// buffer back.
    write: ReusableBoxFuture<'static, (Result<()>, Vec<u8>)>,
    writing: bool,
    /// The buffer the next write copies into, reused from write to write.
    spare: Vec<u8>,
    shut: bool,
}

impl fmt::Debug for PipeIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipeIo")
            .field("pipe", &self.pipe)
            .field("buffered", &self.leftover.len())
            .field("shut", &self.shut)
            .finish()
    }
}

impl Pipe {
    /// This pipe as a byte stream that implements tokio's [`AsyncRead`] and
    /// [`AsyncWrite`] (see [`PipeIo`]). The pipe stays open while the stream
    /// or any other handle exists.
    ///
    /// ```no_run
    /// use p2pipe::{Pipe, Proto};
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// // Relay a plain TCP client through a pipe.
    /// let pipe = Pipe::connect(Proto::Tcp, "127.0.0.1:7000").await?;
    /// let mut io = pipe.io()?;
    /// let front = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let (mut client, _) = front.accept().await?;
    /// tokio::io::copy_bidirectional(&mut client, &mut io).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] for a UDP pipe (datagrams are not a byte stream), a
    /// listener, or a framing other than [`Framing::Raw`] (its messages are not the
    /// bytes on the wire); [`Error::HandlerAttached`] if a handler or link takes the
    /// pipe's flow.
    pub fn io(&self) -> Result<PipeIo> {
        let c = self.core();
        match &c.io {
            Io::Tcp(_) => {}
            Io::Udp(_) => {
                return Err(Error::Unsupported(
                    "a byte stream needs a TCP connection: UDP keeps datagrams apart",
                ))
            }
            Io::TcpListener(_) | Io::UdpListener(..) => {
                return Err(Error::Unsupported(
                    "a byte stream needs a connection, not a listener",
                ))
            }
        }
        if !matches!(c.cfg.framing, Framing::Raw) {
            return Err(Error::Unsupported(
                "a byte stream needs raw framing: framed messages are not the bytes on the wire",
            ));
        }
        if c.consumer.load(std::sync::atomic::Ordering::Acquire) != super::flow::PULL {
            return Err(Error::HandlerAttached);
        }
        Ok(PipeIo {
            pipe: self.clone(),
            read: ReusableBoxFuture::new(async { Err(Error::NoPeer) }),
            reading: false,
            leftover: Bytes::new(),
            eof: false,
            write: ReusableBoxFuture::new(async { (Ok(()), Vec::new()) }),
            writing: false,
            spare: Vec::new(),
            shut: false,
        })
    }
}

impl PipeIo {
    /// The pipe this stream reads and writes.
    pub fn pipe(&self) -> &Pipe {
        &self.pipe
    }

    /// Drives the write in flight, if any, to its end.
    fn poll_pending_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.writing {
            return Poll::Ready(Ok(()));
        }
        let (r, mut spare) = ready!(self.write.poll(cx));
        self.writing = false;
        if spare.capacity() <= SPARE_MAX {
            spare.clear();
            self.spare = spare;
        }
        Poll::Ready(r.map_err(io_error))
    }
}

impl AsyncRead for PipeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if !this.leftover.is_empty() {
                let n = buf.remaining().min(this.leftover.len());
                buf.put_slice(&this.leftover.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if !this.reading {
                let pipe = this.pipe.clone();
                this.read.set(async move { pipe.recv().await });
                this.reading = true;
            }
            let r = ready!(this.read.poll(cx));
            this.reading = false;
            match r {
                Ok(msg) => this.leftover = msg.data,
                Err(Error::Ended(EndReason::Fin | EndReason::Closed)) => this.eof = true,
                Err(e) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl AsyncWrite for PipeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending_write(cx))?;
        if this.shut {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the writing side of this pipe is shut down",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let pipe = this.pipe.clone();
        let mut data = std::mem::take(&mut this.spare);
        data.extend_from_slice(buf);
        this.write.set(async move {
            let r = pipe.send_raw(&data).await;
            (r, data)
        });
        this.writing = true;
        // Start it now; it finishes in a later write, flush or shutdown.
        if let Poll::Ready(Err(e)) = this.poll_pending_write(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_pending_write(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending_write(cx))?;
        if !this.shut {
            this.shut = true;
            let pipe = this.pipe.clone();
            this.write.set(async move {
                if let Io::Tcp(w) = &pipe.core().io {
                    w.shutdown().await;
                }
                (Ok(()), Vec::new())
            });
            this.writing = true;
        }
        this.poll_pending_write(cx)
    }
}

/// The I/O error a stream reports for a pipe error.
fn io_error(e: Error) -> io::Error {
    match e {
        Error::Io(e) => e,
        Error::Ended(EndReason::Reset) => io::Error::new(io::ErrorKind::ConnectionReset, e),
        Error::Ended(EndReason::Io(kind)) => io::Error::new(kind, e),
        Error::Ended(EndReason::Closed) => io::Error::new(io::ErrorKind::BrokenPipe, e),
        e => io::Error::other(e),
    }
}
