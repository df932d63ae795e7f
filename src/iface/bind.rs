//! Sockets bound to a chosen interface: by source address, and by device name where the
//! OS allows it (`SO_BINDTODEVICE` on Linux).
//!
//! The layers above (the STUN client, the pipe) create their sockets here, so that
//! "bind to this NIC" means the same everywhere.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// A UDP socket bound to `local`, and to the device `device` when given. An IPv6 socket
/// is IPv6-only. The socket is non-blocking, ready for tokio.
///
/// # Errors
///
/// What the OS says: the address is in use or not local, or binding to a device is not
/// allowed (it needs `CAP_NET_RAW` on Linux) or not supported.
pub fn udp_socket(local: SocketAddr, device: Option<&str>) -> io::Result<tokio::net::UdpSocket> {
    let s = new_socket(&local, Type::DGRAM, Protocol::UDP, device)?;
    s.bind(&local.into())?;
    tokio::net::UdpSocket::from_std(s.into())
}

/// A TCP socket ready to connect to an address of `remote`'s family, bound first to
/// `local` when given, and to the device `device` when given.
///
/// # Errors
///
/// As [`udp_socket`].
pub fn tcp_socket(
    remote: &SocketAddr,
    local: Option<SocketAddr>,
    device: Option<&str>,
) -> io::Result<tokio::net::TcpSocket> {
    let s = new_socket(remote, Type::STREAM, Protocol::TCP, device)?;
    if let Some(local) = local {
        s.bind(&local.into())?;
    }
    Ok(tokio::net::TcpSocket::from_std_stream(s.into()))
}

/// The source address the OS would use to reach `to` (through `device`, when given),
/// learned by connecting a UDP socket, which sends nothing.
///
/// # Errors
///
/// No route to `to`, or the device cannot be bound.
///
/// # Cancel safety
///
/// Cancel safe.
pub async fn source_towards(to: SocketAddr, device: Option<&str>) -> io::Result<std::net::IpAddr> {
    let any = SocketAddr::new(crate::addr::Af::of_socket(&to).unspecified(), 0);
    let s = udp_socket(any, device)?;
    s.connect(to).await?;
    Ok(s.local_addr()?.ip())
}

fn new_socket(
    addr: &SocketAddr,
    ty: Type,
    proto: Protocol,
    device: Option<&str>,
) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(*addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    if let Some(dev) = device {
        bind_device(&s, dev)?;
    }
    Ok(s)
}

/// Binds `socket` to the network device named `device`, so that its packets leave through
/// that device whatever the route table says.
///
/// # Errors
///
/// Unsupported off Linux, Android and Fuchsia; on Linux, fails without `CAP_NET_RAW` or
/// if there is no such device.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
pub fn bind_device(socket: &Socket, device: &str) -> io::Result<()> {
    socket.bind_device(Some(device.as_bytes()))
}

/// Binds `socket` to the network device named `device`.
///
/// # Errors
///
/// Always [`io::ErrorKind::Unsupported`] on this system.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
pub fn bind_device(_socket: &Socket, _device: &str) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "binding to a device by name is not supported on this system",
    ))
}
