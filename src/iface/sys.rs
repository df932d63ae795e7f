//! Reading the OS route table. Everything that differs between operating systems lives here.

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
