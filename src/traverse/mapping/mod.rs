//! Port mappings asked of the router in front of this machine: PCP (RFC 6887), NAT-PMP
//! (RFC 6886) and UPnP IGD, behind one handle, [`Mapping`].
//!
//! [`Mapping::open`] asks the default gateway (from the route table) by each method in
//! turn, PCP first, and reports which one answered, the external address and the lease.
//! A background task renews the lease at half its lifetime; [`Mapping::close`] deletes
//! the mapping within a time limit, and dropping an open `Mapping` deletes it on a
//! best-effort basis.
//!
//! PCP and NAT-PMP are spoken on bytes: the wire forms ([`natpmp`], [`pcp`]) and one
//! request's retransmissions and matching ([`exchange`]) are sans-IO; a small tokio
//! driver moves the bytes. UPnP IGD goes through the `igd-next` crate.
//!
//! [`reachable`] is the theory the lab checks: whether a peer behind one kind of NAT
//! reaches a port mapped on a router of another kind.

mod error;
pub mod exchange;
mod handle;
pub mod natpmp;
pub mod pcp;
mod session;
mod theory;
mod udp;
mod upnp;

use std::fmt;

pub use error::Error;
pub use handle::{Lease, Mapping, Options};
pub use theory::{reachable, Refusal};

/// A way to ask a router for a port mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// The Port Control Protocol (RFC 6887), UDP port 5351.
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886), UDP port 5351.
    NatPmp,
    /// UPnP Internet Gateway Device: SSDP discovery, then SOAP over HTTP.
    Upnp,
}

impl Method {
    /// Every method, in the order [`Mapping::open`] tries them by default.
    pub const ALL: [Method; 3] = [Method::Pcp, Method::NatPmp, Method::Upnp];
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Pcp => "pcp",
            Method::NatPmp => "nat-pmp",
            Method::Upnp => "upnp",
        })
    }
}

impl std::str::FromStr for Method {
    type Err = Error;

    fn from_str(s: &str) -> Result<Method, Error> {
        Method::ALL
            .into_iter()
            .find(|m| m.to_string() == s)
            .ok_or(Error::Invalid(
                "unknown method: expected pcp, nat-pmp or upnp",
            ))
    }
}
