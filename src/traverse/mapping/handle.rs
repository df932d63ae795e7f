//! [`Mapping`]: a port mapping held open, renewed in the background, deleted on close.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use super::session::{Granted, Session, Want};
use super::{natpmp, Error, Method};
use crate::addr::Af;
use crate::iface::{bind, Interface};
use crate::pipe::Proto;

/// The time limit of the best-effort deletion when an open [`Mapping`] is dropped.
pub const DROP_DELETE_LIMIT: Duration = Duration::from_secs(2);

/// How [`Mapping::open`] asks for a mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The methods to try, in order (default: PCP, NAT-PMP, UPnP).
    pub methods: Vec<Method>,
    /// The time limit of the whole open, shared between the methods: each gets an equal
    /// share of what is left when its turn comes (default 6 s).
    pub limit: Duration,
    /// The lease asked for (default 2 hours, RFC 6886's recommendation); the gateway
    /// may grant another. Whole seconds.
    pub lifetime: Duration,
    /// The gateway to ask (default: the default route's gateway).
    pub gateway: Option<IpAddr>,
    /// The external port asked for (default: the gateway picks; UPnP first tries the
    /// local port).
    pub external_port: Option<u16>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            methods: Method::ALL.to_vec(),
            limit: Duration::from_secs(6),
            lifetime: Duration::from_secs(7200),
            gateway: None,
            external_port: None,
        }
    }
}

/// A mapping as the gateway last granted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The method that made it.
    pub method: Method,
    /// The gateway that holds it.
    pub gateway: IpAddr,
    /// UDP or TCP.
    pub proto: Proto,
    /// The local address and port mapped.
    pub local: SocketAddr,
    /// The external address and port.
    pub external: SocketAddr,
    /// The lifetime granted.
    pub lifetime: Duration,
    /// When it was granted (or last renewed).
    pub granted_at: Instant,
    /// How many times it was renewed.
    pub renewals: u32,
}

impl Lease {
    /// When it ends unless renewed.
    pub fn expires_at(&self) -> Instant {
        self.granted_at + self.lifetime
    }
}

/// A port mapping on the router, renewed at half its lifetime by a background task
/// until [`Mapping::close`] (or, best-effort, drop) deletes it.
#[derive(Debug)]
pub struct Mapping {
    lease: watch::Receiver<Lease>,
    session: Arc<Mutex<Session>>,
    renewer: JoinHandle<()>,
    want: Want,
    open: bool,
}

impl Mapping {
    /// Maps `local` (an address of this machine, or unspecified for the one that
    /// reaches the gateway; a port that is not 0) for `proto`, asking the gateway by each
    /// of `opts.methods` in turn until one grants it, all within `opts.limit`.
    ///
    /// Needs a tokio runtime (the renewal task is spawned on it).
    ///
    /// # Errors
    ///
    /// [`Error::NoService`] naming the gateway when nothing answered; [`Error::AllFailed`]
    /// when something answered but no mapping was made; [`Error::NoGateway`] without a
    /// default gateway; [`Error::Invalid`] for options that cannot work.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: cancelled mid-request, a mapping may be left on the gateway
    /// until its lease ends.
    pub async fn open(proto: Proto, local: SocketAddr, opts: &Options) -> Result<Mapping, Error> {
        check(local, opts)?;
        let deadline = Instant::now() + opts.limit;
        let gateway = gateway_for(local, opts)?;
        let local = concrete(local, gateway, opts.methods[0]).await?;
        let want = Want {
            proto,
            local,
            lifetime: u32::try_from(opts.lifetime.as_secs()).unwrap_or(u32::MAX),
        };
        let (session, granted) = first_grant(gateway, &want, opts, deadline).await?;
        Ok(Mapping::start(session, want, granted, opts.limit))
    }

    fn start(session: Session, want: Want, granted: Granted, limit: Duration) -> Mapping {
        let lease = Lease {
            method: session.method(),
            gateway: session.gateway(),
            proto: want.proto,
            local: want.local,
            external: granted.external,
            lifetime: Duration::from_secs(granted.lifetime.into()),
            granted_at: Instant::now(),
            renewals: 0,
        };
        tracing::info!(method = %lease.method, gateway = %lease.gateway, local = %lease.local,
            external = %lease.external, lifetime = lease.lifetime.as_secs(), "port mapped");
        let (tx, rx) = watch::channel(lease);
        let session = Arc::new(Mutex::new(session));
        let renewer = tokio::spawn(renew(session.clone(), want, tx, limit));
        Mapping {
            lease: rx,
            session,
            renewer,
            want,
            open: true,
        }
    }

    /// The lease as last granted.
    pub fn lease(&self) -> Lease {
        self.lease.borrow().clone()
    }

    /// A receiver that sees each renewal.
    pub fn watch(&self) -> watch::Receiver<Lease> {
        self.lease.clone()
    }

    /// The external address and port.
    pub fn external(&self) -> SocketAddr {
        self.lease.borrow().external
    }

    /// The method that made the mapping.
    pub fn method(&self) -> Method {
        self.lease.borrow().method
    }

    /// Stops renewing and deletes the mapping, within `limit`.
    ///
    /// # Errors
    ///
    /// [`Error::DeleteTimedOut`] when the gateway did not confirm within `limit`; the
    /// gateway's refusal otherwise. Either way the mapping ends with its lease.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (the deletion may or may not have reached the gateway).
    pub async fn close(mut self, limit: Duration) -> Result<(), Error> {
        self.open = false;
        self.renewer.abort();
        let lease = self.lease();
        let deadline = Instant::now() + limit;
        let timed_out = Error::DeleteTimedOut {
            method: lease.method,
            gateway: lease.gateway,
            external: lease.external,
            limit,
        };
        let delete = async {
            let session = self.session.lock().await;
            session.delete(&self.want, lease.external, deadline).await
        };
        match tokio::time::timeout(limit, delete).await {
            Ok(Err(Error::NoAnswer { .. })) | Err(_) => Err(timed_out),
            Ok(result) => {
                tracing::info!(method = %lease.method, gateway = %lease.gateway,
                    external = %lease.external, "port mapping deleted");
                result
            }
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        self.renewer.abort();
        if !self.open {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let session = self.session.clone();
        let want = self.want;
        let external = self.lease.borrow().external;
        rt.spawn(async move {
            let deadline = Instant::now() + DROP_DELETE_LIMIT;
            let delete = async { session.lock().await.delete(&want, external, deadline).await };
            match tokio::time::timeout(DROP_DELETE_LIMIT, delete).await {
                Ok(Ok(())) => tracing::debug!(%external, "port mapping deleted on drop"),
                Ok(Err(e)) => {
                    tracing::warn!(%external, error = %e, "port mapping not deleted on drop")
                }
                Err(_) => {
                    tracing::warn!(%external, "port mapping not deleted on drop: no answer in time")
                }
            }
        });
    }
}

fn check(local: SocketAddr, opts: &Options) -> Result<(), Error> {
    if opts.methods.is_empty() {
        return Err(Error::Invalid("no method to try"));
    }
    if opts.limit.is_zero() {
        return Err(Error::Invalid("a zero time limit"));
    }
    if opts.lifetime.as_secs() == 0 {
        return Err(Error::Invalid("a lifetime under one second"));
    }
    if local.port() == 0 {
        return Err(Error::Invalid("local port 0: map a bound port"));
    }
    Ok(())
}

/// The gateway to ask: the one given, or the default route's of `local`'s family.
fn gateway_for(local: SocketAddr, opts: &Options) -> Result<IpAddr, Error> {
    if let Some(gw) = opts.gateway {
        return Ok(gw);
    }
    let af = Af::of_socket(&local);
    Interface::default_gateway(af)
        .map_err(Error::Route)?
        .and_then(|r| r.gateway)
        .ok_or(Error::NoGateway { af })
}

/// `local` with its address made concrete: the source address towards the gateway when
/// it is unspecified (NAT-PMP maps the request's source address).
async fn concrete(local: SocketAddr, gateway: IpAddr, method: Method) -> Result<SocketAddr, Error> {
    if !local.ip().is_unspecified() {
        return Ok(local);
    }
    let to = SocketAddr::new(gateway, natpmp::SERVER_PORT);
    let ip = bind::source_towards(to, None)
        .await
        .map_err(|source| Error::Io {
            method,
            gateway,
            what: "find the local address towards the gateway",
            source,
        })?;
    Ok(SocketAddr::new(ip, local.port()))
}

/// Tries each method in turn, each with an equal share of the time left.
async fn first_grant(
    gateway: IpAddr,
    want: &Want,
    opts: &Options,
    deadline: Instant,
) -> Result<(Session, Granted), Error> {
    let mut failures: Vec<(Method, Error)> = Vec::new();
    let external_port = opts.external_port.unwrap_or(0);
    for (i, &method) in opts.methods.iter().enumerate() {
        let left = (opts.methods.len() - i) as u32;
        let share = deadline.saturating_duration_since(Instant::now()) / left;
        let until = Instant::now() + share;
        let attempt = async {
            let mut session = Session::new(method, gateway, want.local.ip(), until).await?;
            let granted = session.map(want, external_port, until).await?;
            Ok::<_, Error>((session, granted))
        };
        match attempt.await {
            Ok(found) => return Ok(found),
            Err(e) => {
                tracing::debug!(%method, %gateway, error = %e, "no port mapping by this method");
                failures.push((method, e));
            }
        }
    }
    Err(no_mapping(gateway, failures))
}

fn no_mapping(gateway: IpAddr, failures: Vec<(Method, Error)>) -> Error {
    let names = |f: &[(Method, Error)]| {
        f.iter()
            .map(|(m, _)| m.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if failures
        .iter()
        .all(|(_, e)| matches!(e, Error::NoAnswer { .. }))
    {
        return Error::NoService {
            gateway,
            tried: names(&failures),
        };
    }
    let reasons = failures
        .iter()
        .map(|(m, e)| match e {
            Error::NoAnswer { .. } => format!("{m}: no answer"),
            e => e.to_string(),
        })
        .collect::<Vec<_>>()
        .join("; ");
    Error::AllFailed { gateway, reasons }
}

/// Renews at half the lifetime; after a failure, tries again every eighth of it (at
/// least a second apart) until it works or the mapping is closed.
async fn renew(
    session: Arc<Mutex<Session>>,
    want: Want,
    lease: watch::Sender<Lease>,
    limit: Duration,
) {
    let mut next = {
        let l = lease.borrow();
        l.granted_at + l.lifetime / 2
    };
    loop {
        tokio::time::sleep_until(next.into()).await;
        let current = lease.borrow().clone();
        let retry = (current.lifetime / 8).max(Duration::from_secs(1));
        let deadline = Instant::now() + limit.min(current.lifetime / 2).max(Duration::from_secs(1));
        let result = session
            .lock()
            .await
            .map(&want, current.external.port(), deadline)
            .await;
        match result {
            Ok(g) => {
                if g.restarted {
                    tracing::info!(gateway = %current.gateway, "the gateway restarted; mapping made anew");
                }
                let now = Instant::now();
                lease.send_modify(|l| {
                    l.external = g.external;
                    l.lifetime = Duration::from_secs(g.lifetime.into());
                    l.granted_at = now;
                    l.renewals += 1;
                });
                next = now + Duration::from_secs(g.lifetime.into()) / 2;
                tracing::debug!(external = %g.external, lifetime = g.lifetime, "port mapping renewed");
            }
            Err(e) => {
                tracing::warn!(external = %current.external, error = %e, "port mapping not renewed; trying again");
                next = Instant::now() + retry;
            }
        }
    }
}
