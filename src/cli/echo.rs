//! `p2pipe echo`: an echo daemon on TCP and UDP, IPv4 and IPv6.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use p2pipe::{Daemon, Message, Pipe, Proto};

/// Arguments of `p2pipe echo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to serve on (an IP, or IP:PORT); repeatable. Default: 127.0.0.1 and ::1.
    #[arg(long = "bind", value_name = "ADDR")]
    bind: Vec<String>,
    /// Port for every address given without one (0 picks a free port).
    #[arg(long, default_value_t = 7777)]
    port: u16,
    /// Serve TCP (default: TCP and UDP when neither flag is given).
    #[arg(long)]
    tcp: bool,
    /// Serve UDP (default: TCP and UDP when neither flag is given).
    #[arg(long)]
    udp: bool,
    /// Seconds to let peers finish when stopping.
    #[arg(long, default_value_t = 5)]
    grace: u64,
}

fn parse_bind(s: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("invalid --bind {s:?}: expected an IP address or IP:PORT"))
}

/// Runs the echo daemon until Ctrl-C or SIGTERM, then stops it gracefully.
///
/// # Cancel safety
///
/// Dropping the future stops the daemon at once.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let protos: Vec<Proto> = match (args.tcp, args.udp) {
        (true, false) => vec![Proto::Tcp],
        (false, true) => vec![Proto::Udp],
        _ => vec![Proto::Tcp, Proto::Udp],
    };
    let explicit = !args.bind.is_empty();
    let addrs: Vec<SocketAddr> = if explicit {
        args.bind
            .iter()
            .map(|b| parse_bind(b, args.port))
            .collect::<Result<_, _>>()?
    } else {
        vec![
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port),
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), args.port),
        ]
    };
    let echo = |msg: Message, reply: Pipe| async move { reply.send(&msg.data).await };
    let mut builder = Daemon::builder(echo);
    let mut any_port = Vec::new();
    for addr in &addrs {
        for proto in &protos {
            if addr.port() == 0 {
                any_port.push((*proto, *addr));
            } else {
                builder = builder.listen(*proto, *addr);
            }
        }
    }
    // Port 0 entries share one port across addresses and protocols.
    if !any_port.is_empty() {
        let ips: Vec<IpAddr> = dedup(any_port.iter().map(|(_, a)| a.ip()));
        builder = builder.listen_all(ips, [0], protos.clone());
    }
    let daemon = match builder.start().await {
        Ok(d) => d,
        Err(e) if !explicit => {
            // The default ::1 may be missing on hosts without IPv6: serve IPv4 alone.
            tracing::warn!(error = %e, "falling back to 127.0.0.1 only");
            let mut b = Daemon::builder(echo);
            for proto in &protos {
                b = b.listen(
                    *proto,
                    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port),
                );
            }
            b.start().await?
        }
        Err(e) => return Err(e.into()),
    };
    {
        let mut out = std::io::stdout().lock();
        for (proto, addr) in daemon.local_addrs() {
            writeln!(out, "echo serving {proto} on {addr}")?;
        }
        out.flush()?;
    }
    crate::cli::stop_signal().await;
    let report = daemon.shutdown(Duration::from_secs(args.grace)).await;
    println!(
        "echo stopped ({} finished, {} stopped at the deadline)",
        crate::cli::count(report.finished as u64, "peer"),
        report.aborted
    );
    Ok(())
}

fn dedup(it: impl Iterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = Vec::new();
    for ip in it {
        if !v.contains(&ip) {
            v.push(ip);
        }
    }
    v
}
