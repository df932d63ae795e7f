//! Everything that differs between operating systems lives here: reading the OS route
//! table, and the socket options `bind.rs` sets.

use crate::addr::Af;

use super::table::RouteTable;
use super::Error;

/// The route table of one address family, as the OS gives it.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn route_table(af: Af) -> Result<RouteTable, Error> {
    use super::table::{parse_proc_ipv6_route, parse_proc_route};
    let (path, parse): (&'static str, fn(&str) -> RouteTable) = match af {
        Af::V4 => ("/proc/net/route", parse_proc_route),
        Af::V6 => ("/proc/net/ipv6_route", parse_proc_ipv6_route),
    };
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse(&text)),
        // No IPv6 in the kernel: no file, and no IPv6 routes.
        Err(e) if af == Af::V6 && e.kind() == std::io::ErrorKind::NotFound => {
            Ok(RouteTable::default())
        }
        Err(source) => Err(Error::ReadRoutes { path, source }),
    }
}

/// The route table of one address family: not implemented on this system.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn route_table(af: Af) -> Result<RouteTable, Error> {
    let _ = af;
    Err(Error::Unsupported(
        "reading the route table is only implemented on linux",
    ))
}

/// Binds `socket` to the network device named `device` (`SO_BINDTODEVICE`).
#[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
pub(crate) fn bind_device(socket: &socket2::Socket, device: &str) -> std::io::Result<()> {
    socket.bind_device(Some(device.as_bytes()))
}

/// Binding to a device by name: not supported on this system.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
pub(crate) fn bind_device(_socket: &socket2::Socket, _device: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "binding to a device by name is not supported on this system",
    ))
}

/// Lets a closed listener's port be bound again at once (`SO_REUSEADDR`).
#[cfg(unix)]
pub(crate) fn set_reuse_address(socket: &socket2::Socket) -> std::io::Result<()> {
    socket.set_reuse_address(true)
}

/// Leaves `SO_REUSEADDR` off: on Windows it would let another process take the port.
#[cfg(not(unix))]
pub(crate) fn set_reuse_address(_socket: &socket2::Socket) -> std::io::Result<()> {
    Ok(())
}

/// Lets several sockets share one local address and port (`SO_REUSEADDR` and
/// `SO_REUSEPORT`): each of them must set this before binding.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn set_reuse_port(socket: &socket2::Socket) -> std::io::Result<()> {
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)
}

/// Sharing a local port: only implemented on Linux and Android, where `SO_REUSEPORT`
/// means one thing.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn set_reuse_port(_socket: &socket2::Socket) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "sharing a local port (so_reuseport) is only implemented on linux",
    ))
}
