//! The STUN client over TCP (RFC 5389 section 7.2.2): one Binding request on a new
//! connection, no retransmissions, one overall time limit.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{udp::random_txid, Error, Request, Response, HEADER_LEN, MAX_MESSAGE_LEN};

/// A Binding answer over TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpAnswer {
    /// The response.
    pub response: Response,
    /// The local address the connection used.
    pub local: SocketAddr,
}

/// Connects to `server` (bound to `local` and the device `device` when given), sends a
/// Binding request and reads its response, all within `limit`.
///
/// The response's length is checked against [`MAX_MESSAGE_LEN`] before it is read; a
/// response with another transaction id is an error.
///
/// # Errors
///
/// Connecting, sending or reading fails; the time limit passes ([`Error::NoAnswer`]);
/// or the response is invalid.
///
/// # Cancel safety
///
/// Cancel safe: the connection is dropped.
pub async fn binding(
    server: SocketAddr,
    local: Option<SocketAddr>,
    device: Option<&str>,
    limit: Duration,
) -> Result<TcpAnswer, Error> {
    match tokio::time::timeout(limit, exchange(server, local, device)).await {
        Ok(r) => r,
        Err(_) => Err(Error::NoAnswer {
            what: "a binding request over tcp",
            waited: limit,
        }),
    }
}

async fn exchange(
    server: SocketAddr,
    local: Option<SocketAddr>,
    device: Option<&str>,
) -> Result<TcpAnswer, Error> {
    let socket =
        crate::iface::bind::tcp_socket(&server, local, device).map_err(|e| Error::io("bind", e))?;
    let mut stream = socket
        .connect(server)
        .await
        .map_err(|e| Error::io("connect", e))?;
    let local = stream.local_addr().map_err(|e| Error::io("connect", e))?;
    let response = ask(&mut stream).await?;
    Ok(TcpAnswer { response, local })
}

/// Sends a Binding request on `stream`, an open connection to a STUN server, and reads
/// its response, within `limit`; the connection stays open (it holds the mapping).
/// Checks as [`binding`].
///
/// # Errors
///
/// As [`binding`].
///
/// # Cancel safety
///
/// Not cancel safe: a cancelled call may leave part of a message on the connection.
pub async fn binding_on(stream: &mut TcpStream, limit: Duration) -> Result<Response, Error> {
    match tokio::time::timeout(limit, ask(stream)).await {
        Ok(r) => r,
        Err(_) => Err(Error::NoAnswer {
            what: "a binding request over tcp",
            waited: limit,
        }),
    }
}

async fn ask(stream: &mut TcpStream) -> Result<Response, Error> {
    let request = Request::binding(random_txid());
    let mut wire = bytes::BytesMut::new();
    request.emit(&mut wire);
    stream
        .write_all(&wire)
        .await
        .map_err(|e| Error::io("send", e))?;
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    stream
        .read_exact(&mut buf[..HEADER_LEN])
        .await
        .map_err(|e| Error::io("receive", e))?;
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let end = HEADER_LEN + len;
    if end > MAX_MESSAGE_LEN {
        return Err(Error::TooLong { len: end });
    }
    stream
        .read_exact(&mut buf[HEADER_LEN..end])
        .await
        .map_err(|e| Error::io("receive", e))?;
    let response = Response::parse(&buf[..end])?;
    if response.txid != request.txid {
        return Err(Error::Decode(
            "the response answers another transaction".into(),
        ));
    }
    Ok(response)
}
