//! The errors of port mapping.

use std::net::IpAddr;
use std::time::Duration;

use super::Method;

/// Errors from asking a router for a port mapping, renewing it and deleting it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No default route through a gateway: there is no router to ask.
    #[error("no default gateway for {af}: no router to ask for a port mapping")]
    NoGateway {
        /// The address family looked up.
        af: crate::addr::Af,
    },
    /// The route table could not be read.
    #[error("cannot find the default gateway: {0}")]
    Route(#[source] crate::iface::Error),
    /// Nothing answered any method tried, within the time limit.
    #[error("no port mapping service answered at {gateway}: tried {tried}")]
    NoService {
        /// The gateway asked.
        gateway: IpAddr,
        /// The methods tried, in order, comma-separated.
        tried: String,
    },
    /// Every method tried failed; at least one answered and refused, or failed otherwise.
    #[error("no port mapping at {gateway}: {reasons}")]
    AllFailed {
        /// The gateway asked.
        gateway: IpAddr,
        /// Each method and why it failed, semicolon-separated.
        reasons: String,
    },
    /// One method got no answer within its time limit.
    #[error("{method} at {gateway}: no answer within {limit:?}")]
    NoAnswer {
        /// The method.
        method: Method,
        /// The gateway asked.
        gateway: IpAddr,
        /// The time limit that passed.
        limit: Duration,
    },
    /// The gateway answered with a result code other than success.
    #[error("{method} at {gateway} refused: {reason} (result code {code})")]
    Refused {
        /// The method.
        method: Method,
        /// The gateway that answered.
        gateway: IpAddr,
        /// The protocol's result code.
        code: u16,
        /// What the code means.
        reason: &'static str,
    },
    /// The gateway answered with a message that does not parse, or does not fit the
    /// request (a different port, protocol or nonce).
    #[error("{method} answer malformed: {reason}")]
    Malformed {
        /// The method.
        method: Method,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The gateway answered but does not speak this protocol version (a NAT-PMP-only
    /// gateway answering PCP).
    #[error("{method} at {gateway}: unsupported version, the gateway speaks version {version}")]
    UnsupportedVersion {
        /// The method.
        method: Method,
        /// The gateway that answered.
        gateway: IpAddr,
        /// The version it answered with.
        version: u8,
    },
    /// UPnP IGD: discovery or a control request failed.
    #[error("upnp at {gateway}: {what}: {reason}")]
    Upnp {
        /// The gateway (the default gateway, or the IGD found).
        gateway: IpAddr,
        /// What was being done.
        what: &'static str,
        /// What failed, as the IGD client reported it.
        reason: String,
    },
    /// A socket to ask the gateway through could not be made or used.
    #[error("{method} to {gateway}: {what}: {source}")]
    Io {
        /// The method.
        method: Method,
        /// The gateway.
        gateway: IpAddr,
        /// What was being done.
        what: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The mapping was not deleted within its time limit.
    #[error(
        "deleting the {method} mapping of {external} at {gateway}: no answer within {limit:?}"
    )]
    DeleteTimedOut {
        /// The method.
        method: Method,
        /// The gateway.
        gateway: IpAddr,
        /// The external address that was mapped.
        external: std::net::SocketAddr,
        /// The time limit that passed.
        limit: Duration,
    },
    /// The options cannot work: no method, a zero lifetime or limit, or a local address
    /// of the wrong kind.
    #[error("invalid port mapping options: {0}")]
    Invalid(&'static str),
}
