//! Sockets bound to a chosen interface: by source address, and by device name where the
//! OS allows it (`SO_BINDTODEVICE` on Linux).
//!
//! This is the one place that makes sockets: the layers above (the STUN client, the NAT
//! probe, the pipe, the filer) create theirs here, so that "bind to this NIC" and "IPv6
//! only" mean the same everywhere. What differs between operating systems
//! (`SO_BINDTODEVICE`, `SO_REUSEADDR`, `SO_REUSEPORT`) lives in `iface/sys.rs`.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};

use super::sys;

/// What a socket is bound to besides its address. The default is no device, an
/// IPv6-only socket, and a local port of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketOptions<'a> {
    /// The network device to bind to by name (`SO_BINDTODEVICE`; Linux only).
    pub device: Option<&'a str>,
    /// Whether an IPv6 socket takes IPv4 too (`IPV6_V6ONLY` off). IPv4 sockets ignore it.
    pub dual_stack: bool,
    /// Whether the local port may be shared (`SO_REUSEADDR` and `SO_REUSEPORT`): several
    /// sockets of this user that all set it (a listener, outgoing connections, a STUN
    /// connection) bind the same address and port at once, as TCP hole punching needs.
    /// Linux and Android only: elsewhere making such a socket fails with
    /// [`io::ErrorKind::Unsupported`].
    pub reuse_port: bool,
}

impl<'a> SocketOptions<'a> {
    /// Options that bind to `device` when given, IPv6-only.
    pub fn device(device: Option<&'a str>) -> Self {
        SocketOptions {
            device,
            dual_stack: false,
            reuse_port: false,
        }
    }

    /// These options with the local port shared ([`reuse_port`](Self::reuse_port) on).
    pub fn shared_port(self) -> Self {
        SocketOptions {
            reuse_port: true,
            ..self
        }
    }
}

/// A UDP socket bound to `local`, and to the device `device` when given. An IPv6 socket
/// is IPv6-only. The socket is non-blocking, ready for tokio.
///
/// # Errors
///
/// What the OS says: the address is in use or not local, or binding to a device is not
/// allowed (it needs `CAP_NET_RAW` on Linux) or not supported.
pub fn udp_socket(local: SocketAddr, device: Option<&str>) -> io::Result<UdpSocket> {
    udp_socket_with(local, SocketOptions::device(device))
}

/// A UDP socket bound to `local`, with `opts`.
///
/// # Errors
///
/// As [`udp_socket`].
pub fn udp_socket_with(local: SocketAddr, opts: SocketOptions<'_>) -> io::Result<UdpSocket> {
    let s = new_socket(&local, Type::DGRAM, Protocol::UDP, opts)?;
    s.bind(&local.into())?;
    UdpSocket::from_std(s.into())
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
) -> io::Result<TcpSocket> {
    tcp_socket_with(remote, local, SocketOptions::device(device))
}

/// A TCP socket ready to connect to an address of `remote`'s family, bound first to
/// `local` when given, with `opts`.
///
/// # Errors
///
/// As [`udp_socket`].
pub fn tcp_socket_with(
    remote: &SocketAddr,
    local: Option<SocketAddr>,
    opts: SocketOptions<'_>,
) -> io::Result<TcpSocket> {
    let s = new_socket(remote, Type::STREAM, Protocol::TCP, opts)?;
    if let Some(local) = local {
        s.bind(&local.into())?;
    }
    Ok(TcpSocket::from_std_stream(s.into()))
}

/// A TCP listener on `local` with room for `backlog` pending connections, with `opts`.
/// On Unix it sets `SO_REUSEADDR`, so that a closed listener's port can be bound again
/// at once (on Windows that option would let another process take the port, so it is
/// left off).
///
/// # Errors
///
/// As [`udp_socket`].
pub fn tcp_listener(
    local: SocketAddr,
    backlog: i32,
    opts: SocketOptions<'_>,
) -> io::Result<TcpListener> {
    let s = new_socket(&local, Type::STREAM, Protocol::TCP, opts)?;
    sys::set_reuse_address(&s)?;
    s.bind(&local.into())?;
    s.listen(backlog)?;
    TcpListener::from_std(s.into())
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
    opts: SocketOptions<'_>,
) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(*addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        // Set explicitly: the OS default differs between systems.
        s.set_only_v6(!opts.dual_stack)?;
    }
    s.set_nonblocking(true)?;
    if opts.reuse_port {
        sys::set_reuse_port(&s)?;
    }
    if let Some(dev) = opts.device {
        bind_device(&s, dev)?;
    }
    Ok(s)
}

/// Binds `socket` to the network device named `device`, so that its packets leave through
/// that device whatever the route table says.
///
/// # Errors
///
/// [`io::ErrorKind::Unsupported`] off Linux, Android and Fuchsia; on Linux, fails without
/// `CAP_NET_RAW` or if there is no such device.
pub fn bind_device(socket: &Socket, device: &str) -> io::Result<()> {
    sys::bind_device(socket, device)
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;

    fn loopbacks() -> [SocketAddr; 2] {
        ["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()]
    }

    #[tokio::test]
    async fn a_shared_port_holds_a_listener_and_a_connection_from_the_same_port() {
        for any in loopbacks() {
            let shared = SocketOptions::default().shared_port();
            let listener = tcp_listener(any, 8, shared).unwrap();
            let port = listener.local_addr().unwrap();
            let elsewhere = tcp_listener(any, 8, SocketOptions::default()).unwrap();
            let to = elsewhere.local_addr().unwrap();
            let out = tcp_socket_with(&to, Some(port), shared).unwrap();
            let stream = tokio::time::timeout(std::time::Duration::from_secs(5), out.connect(to))
                .await
                .expect("connects within 5 s")
                .unwrap();
            assert_eq!(stream.local_addr().unwrap(), port, "{any}");
            let (_, from) = elsewhere.accept().await.unwrap();
            assert_eq!(from, port, "{any}");
        }
    }

    #[tokio::test]
    async fn without_a_shared_port_the_second_socket_is_refused() {
        for any in loopbacks() {
            let listener = tcp_listener(any, 8, SocketOptions::default()).unwrap();
            let port = listener.local_addr().unwrap();
            let err = tcp_socket_with(&port, Some(port), SocketOptions::default().shared_port())
                .expect_err("a port held without sharing cannot be shared");
            assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{any}: {err}");
        }
    }
}
