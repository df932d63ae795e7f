//! The tokio driver of an [`Exchange`]: one UDP socket (made by `iface::bind`, bound to
//! the address the mapping is for, since NAT-PMP maps the request's source address and
//! PCP checks it), bytes in and out, and sleeps until the exchange's next deadline.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::exchange::{Exchange, Reply, Step};
use super::{pcp, Error};
use crate::iface::bind;

/// Runs `ex` from a socket bound to `local` (port 0) until it is answered or fails.
///
/// # Cancel safety
///
/// Cancel safe: dropping the future drops the socket; nothing else is held.
pub(crate) async fn run(local: IpAddr, ex: &mut Exchange) -> Result<Reply, Error> {
    let socket = bind::udp_socket(SocketAddr::new(local, 0), None).map_err(|source| Error::Io {
        method: ex.method(),
        gateway: ex.gateway().ip(),
        what: "bind",
        source,
    })?;
    // One byte over the largest answer, so that an oversized one is seen as such.
    let mut buf = [0u8; pcp::MAX_MESSAGE_LEN + 1];
    let mut step = ex.on_timeout(Instant::now());
    loop {
        step = match step {
            Step::Send => {
                // A failed send is as good as a lost datagram: the schedule goes on.
                if let Err(e) = socket.send_to(ex.request(), ex.gateway()).await {
                    tracing::debug!(gateway = %ex.gateway(), error = %e, "port mapping request not sent");
                }
                Step::Wait(ex.poll_timeout().unwrap_or_else(Instant::now))
            }
            Step::Wait(until) => tokio::select! {
                got = socket.recv_from(&mut buf) => match got {
                    Ok((n, from)) => ex.on_datagram(from, &buf[..n], Instant::now()),
                    Err(_) => Step::Wait(until),
                },
                _ = tokio::time::sleep_until(until.into()) => ex.on_timeout(Instant::now()),
            },
            Step::Answered(reply) => return Ok(reply),
            Step::Failed(e) => return Err(e),
        };
    }
}
