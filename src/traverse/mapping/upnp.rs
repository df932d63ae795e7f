//! UPnP IGD port mappings through `igd-next`: SSDP discovery from the address the
//! mapping is for (so on its interface), AddPortMapping with a lease (again to renew),
//! DeletePortMapping. Every call runs under the caller's deadline.
//!
//! `igd-next` makes its own sockets (the SSDP search, HTTP to the gateway), the one
//! place in the crate where sockets are not made by `iface::bind`: its API takes only
//! the address to bind the search to.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use igd_next::aio::tokio::Tokio;
use igd_next::{AddPortError, PortMappingProtocol, SearchOptions};

use super::{Error, Method};
use crate::pipe::Proto;

/// What the mappings are called on the gateway.
pub const DESCRIPTION: &str = "p2pipe";

/// An Internet Gateway Device found by SSDP.
pub(crate) struct Upnp {
    gateway: igd_next::aio::Gateway<Tokio>,
}

impl std::fmt::Debug for Upnp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upnp").field("gateway", &self.ip()).finish()
    }
}

fn protocol(proto: Proto) -> PortMappingProtocol {
    match proto {
        Proto::Udp => PortMappingProtocol::UDP,
        Proto::Tcp => PortMappingProtocol::TCP,
    }
}

/// Runs `f` until `deadline`; past it, [`Error::NoAnswer`] naming `gateway`.
async fn before<T, E: std::fmt::Display>(
    gateway: IpAddr,
    what: &'static str,
    deadline: Instant,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    let limit = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::Upnp {
            gateway,
            what,
            reason: e.to_string(),
        }),
        Err(_) => Err(Error::NoAnswer {
            method: Method::Upnp,
            gateway,
            limit,
        }),
    }
}

impl Upnp {
    /// Searches for an IGD from `local`, until `deadline`; `gateway` (the default
    /// gateway) names the search in errors.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn discover(
        local: IpAddr,
        gateway: IpAddr,
        deadline: Instant,
    ) -> Result<Upnp, Error> {
        let mut opts = SearchOptions::default();
        opts.bind_addr = SocketAddr::new(local, 0);
        let limit = deadline.saturating_duration_since(Instant::now());
        opts.timeout = Some(limit);
        opts.single_search_timeout = Some(limit);
        let found = tokio::time::timeout(limit, igd_next::aio::tokio::search_gateway(opts)).await;
        match found {
            Ok(Ok(gateway)) => Ok(Upnp { gateway }),
            Ok(Err(igd_next::SearchError::NoResponseWithinTimeout)) | Err(_) => {
                Err(Error::NoAnswer {
                    method: Method::Upnp,
                    gateway,
                    limit,
                })
            }
            Ok(Err(e)) => Err(Error::Upnp {
                gateway,
                what: "search",
                reason: e.to_string(),
            }),
        }
    }

    /// The IGD's address.
    pub(crate) fn ip(&self) -> IpAddr {
        self.gateway.addr.ip()
    }

    /// Maps `local` for `lifetime` seconds, to `external_port` when not 0, else to the
    /// same port as `local` or, if that one is taken, any port. Returns the external
    /// address.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a mapping may be made on the gateway and not reported.
    pub(crate) async fn map(
        &self,
        proto: Proto,
        local: SocketAddr,
        external_port: u16,
        lifetime: u32,
        deadline: Instant,
    ) -> Result<SocketAddr, Error> {
        let ip = self.ip();
        let limit = deadline.saturating_duration_since(Instant::now());
        let p = protocol(proto);
        let wanted = if external_port == 0 {
            local.port()
        } else {
            external_port
        };
        let add = self
            .gateway
            .add_port(p, wanted, local, lifetime, DESCRIPTION);
        let port = match tokio::time::timeout_at(deadline.into(), add).await {
            Ok(Ok(())) => wanted,
            Ok(Err(AddPortError::PortInUse | AddPortError::SamePortValuesRequired))
                if external_port == 0 =>
            {
                let any = self.gateway.add_any_port(p, local, lifetime, DESCRIPTION);
                before(ip, "add any port", deadline, any).await?
            }
            Ok(Err(e)) => {
                return Err(Error::Upnp {
                    gateway: ip,
                    what: "add port mapping",
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(Error::NoAnswer {
                    method: Method::Upnp,
                    gateway: ip,
                    limit,
                })
            }
        };
        let external = before(
            ip,
            "get external address",
            deadline,
            self.gateway.get_external_ip(),
        );
        Ok(SocketAddr::new(external.await?, port))
    }

    /// Deletes the mapping of `external_port`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (the deletion may or may not have reached the gateway).
    pub(crate) async fn delete(
        &self,
        proto: Proto,
        external_port: u16,
        deadline: Instant,
    ) -> Result<(), Error> {
        let remove = self.gateway.remove_port(protocol(proto), external_port);
        before(self.ip(), "delete port mapping", deadline, remove).await
    }
}
