//! One mapping's conversation with the gateway, whichever method made it: PCP and
//! NAT-PMP through the sans-IO [`Exchange`] and its UDP driver, UPnP IGD through
//! [`Upnp`]. [`Session::map`] both creates and renews; [`Session::delete`] removes.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::exchange::{Ask, Epoch, Exchange, Reply};
use super::upnp::Upnp;
use super::{natpmp, pcp, udp, Error, Method};
use crate::pipe::Proto;

/// What a mapping is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Want {
    /// UDP or TCP.
    pub proto: Proto,
    /// The local address (a specific address, not unspecified) and port.
    pub local: SocketAddr,
    /// Seconds asked for.
    pub lifetime: u32,
}

/// What the gateway granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Granted {
    /// The external address and port.
    pub external: SocketAddr,
    /// Seconds granted.
    pub lifetime: u32,
    /// The gateway's epoch shows it restarted since the previous answer (its mappings
    /// were lost, and this answer made the mapping anew).
    pub restarted: bool,
}

/// A mapping's method and the state it keeps between requests.
#[derive(Debug)]
pub(crate) enum Session {
    /// PCP: the nonce that renewals and the deletion repeat.
    Pcp {
        gateway: IpAddr,
        nonce: [u8; 12],
        epoch: Epoch,
    },
    /// NAT-PMP.
    NatPmp { gateway: IpAddr, epoch: Epoch },
    /// UPnP IGD: the device found.
    Upnp(Upnp),
}

impl Session {
    /// A session of `method` with `gateway`; UPnP searches for the device first, from
    /// `local`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn new(
        method: Method,
        gateway: IpAddr,
        local: IpAddr,
        deadline: Instant,
    ) -> Result<Session, Error> {
        Ok(match method {
            Method::Pcp => {
                let mut nonce = [0u8; 12];
                getrandom::fill(&mut nonce)
                    .map_err(|_| Error::Invalid("no randomness for a pcp nonce"))?;
                Session::Pcp {
                    gateway,
                    nonce,
                    epoch: Epoch::default(),
                }
            }
            Method::NatPmp => Session::NatPmp {
                gateway,
                epoch: Epoch::default(),
            },
            Method::Upnp => Session::Upnp(Upnp::discover(local, gateway, deadline).await?),
        })
    }

    /// The method.
    pub(crate) fn method(&self) -> Method {
        match self {
            Session::Pcp { .. } => Method::Pcp,
            Session::NatPmp { .. } => Method::NatPmp,
            Session::Upnp(_) => Method::Upnp,
        }
    }

    /// The gateway that holds the mapping.
    pub(crate) fn gateway(&self) -> IpAddr {
        match self {
            Session::Pcp { gateway, .. } | Session::NatPmp { gateway, .. } => *gateway,
            Session::Upnp(u) => u.ip(),
        }
    }

    /// Creates or renews the mapping, asking for `external_port` (0: the gateway picks;
    /// UPnP first tries the local port).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: the gateway may make a mapping that is not reported.
    pub(crate) async fn map(
        &mut self,
        want: &Want,
        external_port: u16,
        deadline: Instant,
    ) -> Result<Granted, Error> {
        match self {
            Session::Pcp {
                gateway,
                nonce,
                epoch,
            } => {
                let req = pcp_request(want, *nonce, external_port, want.lifetime);
                let reply = exchange(*gateway, want.local.ip(), Ask::Pcp(req), deadline).await?;
                granted(reply, None, epoch)
            }
            Session::NatPmp { gateway, epoch } => {
                let ip = natpmp_external(*gateway, want.local.ip(), deadline).await?;
                let req = natpmp::Request::Map {
                    proto: want.proto,
                    internal_port: want.local.port(),
                    external_port,
                    lifetime: want.lifetime,
                };
                let reply = exchange(*gateway, want.local.ip(), Ask::NatPmp(req), deadline).await?;
                granted(reply, Some(ip), epoch)
            }
            Session::Upnp(u) => {
                let external = u
                    .map(
                        want.proto,
                        want.local,
                        external_port,
                        want.lifetime,
                        deadline,
                    )
                    .await?;
                Ok(Granted {
                    external,
                    lifetime: want.lifetime,
                    restarted: false,
                })
            }
        }
    }

    /// Deletes the mapping of `want` to `external`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (the deletion may or may not have reached the gateway).
    pub(crate) async fn delete(
        &self,
        want: &Want,
        external: SocketAddr,
        deadline: Instant,
    ) -> Result<(), Error> {
        let ask = match self {
            Session::Pcp { nonce, .. } => Ask::Pcp(pcp_request(want, *nonce, external.port(), 0)),
            Session::NatPmp { .. } => Ask::NatPmp(natpmp::Request::Map {
                proto: want.proto,
                internal_port: want.local.port(),
                external_port: 0,
                lifetime: 0,
            }),
            Session::Upnp(u) => return u.delete(want.proto, external.port(), deadline).await,
        };
        exchange(self.gateway(), want.local.ip(), ask, deadline)
            .await
            .map(drop)
    }
}

fn pcp_request(want: &Want, nonce: [u8; 12], external_port: u16, lifetime: u32) -> pcp::MapRequest {
    let any = match want.local.ip() {
        IpAddr::V4(_) => IpAddr::from([0u8; 4]),
        IpAddr::V6(_) => IpAddr::from([0u8; 16]),
    };
    pcp::MapRequest {
        lifetime,
        client: want.local.ip(),
        nonce,
        proto: want.proto,
        internal_port: want.local.port(),
        external_port,
        external_ip: any,
    }
}

async fn exchange(
    gateway: IpAddr,
    local: IpAddr,
    ask: Ask,
    deadline: Instant,
) -> Result<Reply, Error> {
    let limit = deadline.saturating_duration_since(Instant::now());
    let mut ex = Exchange::new(SocketAddr::new(gateway, natpmp::SERVER_PORT), ask, limit);
    udp::run(local, &mut ex).await
}

async fn natpmp_external(
    gateway: IpAddr,
    local: IpAddr,
    deadline: Instant,
) -> Result<IpAddr, Error> {
    let ask = Ask::NatPmp(natpmp::Request::ExternalAddress);
    match exchange(gateway, local, ask, deadline).await? {
        Reply::ExternalAddress { ip, .. } => Ok(ip),
        Reply::Mapped { .. } => Err(Error::Malformed {
            method: Method::NatPmp,
            reason: "a map answer to an external address request",
        }),
    }
}

/// The grant in `reply`; `external_ip` stands in when the reply has none (NAT-PMP).
fn granted(reply: Reply, external_ip: Option<IpAddr>, epoch: &mut Epoch) -> Result<Granted, Error> {
    let Reply::Mapped {
        external_port,
        external_ip: answered,
        lifetime,
        epoch: server,
    } = reply
    else {
        return Err(Error::Malformed {
            method: Method::NatPmp,
            reason: "an external address answer to a map request",
        });
    };
    let ip = answered.or(external_ip).ok_or(Error::Malformed {
        method: Method::Pcp,
        reason: "no external address",
    })?;
    if external_port == 0 || lifetime == 0 {
        return Err(Error::Malformed {
            method: if answered.is_some() {
                Method::Pcp
            } else {
                Method::NatPmp
            },
            reason: "a mapping granted with port 0 or lifetime 0",
        });
    }
    Ok(Granted {
        external: SocketAddr::new(ip, external_port),
        lifetime,
        restarted: epoch.observe(server, Instant::now()),
    })
}
