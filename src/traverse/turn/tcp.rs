//! TCP to the server: the control connection, and RFC 6062 data connections, each of
//! which is bound to one peer connection and then carries the peer's bytes.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client::check_connection_bind;
use super::driver::Shared;
use super::Error;
use crate::pipe::Pipe;
use crate::stun::{HEADER_LEN, MAX_MESSAGE_LEN};

/// Connects to the server over TCP.
pub(crate) async fn connect(server: SocketAddr) -> Result<TcpStream, Error> {
    let socket = crate::iface::bind::tcp_socket(&server, None, None)
        .map_err(|e| Error::io(server, "bind", e))?;
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| Error::io(server, "connect", e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| Error::io(server, "connect", e))?;
    Ok(stream)
}

/// Opens a data connection to the server, binds it to the peer connection `id`
/// (ConnectionBind, RFC 6062 section 5.4), and makes it a TCP pipe. The answer is read
/// to its last byte and no further, so the peer's first bytes stay for the pipe.
pub(crate) async fn bind_data_connection(shared: &Shared, id: u32) -> Result<Pipe, Error> {
    let server = shared.server;
    let (txid, request) = shared.lock().client.connection_bind(id)?;
    let mut stream = connect(server).await?;
    stream
        .write_all(&request)
        .await
        .map_err(|e| Error::io(server, "send", e))?;
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    let read = |e| Error::io(server, "receive", e);
    stream
        .read_exact(&mut buf[..HEADER_LEN])
        .await
        .map_err(read)?;
    let end = HEADER_LEN + usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if end > MAX_MESSAGE_LEN || buf[0] & 0xc0 != 0 {
        let reason = format!("a connection-bind answer of {end} bytes");
        return Err(Error::Stream { server, reason });
    }
    stream
        .read_exact(&mut buf[HEADER_LEN..end])
        .await
        .map_err(read)?;
    check_connection_bind(server, txid, &buf[..end])?;
    Pipe::adopt_tcp(stream, &shared.pipe_cfg).map_err(|e| Error::Io {
        addr: server,
        op: "adopt a data connection",
        kind: std::io::ErrorKind::Other,
        message: e.to_string(),
    })
}
