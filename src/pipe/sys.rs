//! Socket creation. Everything that differs between operating systems lives here.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};

use super::PipeConfig;

fn socket(addr: &SocketAddr, ty: Type, proto: Protocol, cfg: &PipeConfig) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(*addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        // Set explicitly: the OS default differs between systems.
        s.set_only_v6(!cfg.dual_stack)?;
    }
    s.set_nonblocking(true)?;
    if let Some(dev) = &cfg.device {
        crate::iface::bind::bind_device(&s, dev)?;
    }
    Ok(s)
}

/// A TCP listener on `addr`, with SO_REUSEADDR so that a closed listener's
/// port can be bound again at once.
pub(crate) fn tcp_listener(addr: SocketAddr, cfg: &PipeConfig) -> io::Result<TcpListener> {
    let s = socket(&addr, Type::STREAM, Protocol::TCP, cfg)?;
    set_reuse_address(&s)?;
    s.bind(&addr.into())?;
    s.listen(cfg.listen_backlog)?;
    TcpListener::from_std(s.into())
}

/// A TCP socket ready to connect to `to`, bound first when the config asks.
pub(crate) fn tcp_connector(to: &SocketAddr, cfg: &PipeConfig) -> io::Result<TcpSocket> {
    let s = socket(to, Type::STREAM, Protocol::TCP, cfg)?;
    if let Some(local) = cfg.bind {
        s.bind(&local.into())?;
    }
    Ok(TcpSocket::from_std_stream(s.into()))
}

/// A UDP socket bound to `addr`.
pub(crate) fn udp_bind(addr: SocketAddr, cfg: &PipeConfig) -> io::Result<UdpSocket> {
    let s = socket(&addr, Type::DGRAM, Protocol::UDP, cfg)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

#[cfg(unix)]
fn set_reuse_address(s: &Socket) -> io::Result<()> {
    s.set_reuse_address(true)
}

#[cfg(not(unix))]
fn set_reuse_address(_: &Socket) -> io::Result<()> {
    // On Windows SO_REUSEADDR lets another process steal the port; leave it off.
    Ok(())
}
