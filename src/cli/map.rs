//! `p2pipe map`: a port mapping on the router, kept renewed until Ctrl-C or SIGTERM,
//! then deleted.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use p2pipe::traverse::mapping::{Lease, Mapping, Method, Options};
use p2pipe::Proto;

/// Arguments of `p2pipe map`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("port").required(true).args(["udp", "tcp"])))]
pub struct Args {
    /// Map this local UDP port.
    #[arg(long, value_name = "PORT")]
    udp: Option<u16>,
    /// Map this local TCP port.
    #[arg(long, value_name = "PORT")]
    tcp: Option<u16>,
    /// The local address to map (default: the one that reaches the gateway).
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// The gateway to ask (default: the default route's gateway).
    #[arg(long, value_name = "IP")]
    gateway: Option<IpAddr>,
    /// A method to try: pcp, nat-pmp or upnp; repeatable, tried in the order given
    /// (default: pcp, nat-pmp, upnp).
    #[arg(long = "method", value_name = "METHOD")]
    methods: Vec<Method>,
    /// The lease to ask for, in seconds; renewed at half of what is granted.
    #[arg(long, default_value_t = 7200, value_name = "SECS")]
    lifetime: u64,
    /// The time limit, in seconds, for making the mapping and for deleting it.
    #[arg(long, default_value_t = 6.0, value_name = "SECS")]
    timeout: f64,
    /// Print one JSON object per line (mapped, renewed, deleted) instead of text.
    #[arg(long)]
    json: bool,
}

/// Maps the port, prints it, prints each renewal, and deletes it on Ctrl-C or SIGTERM.
///
/// # Cancel safety
///
/// Dropping the future drops the mapping, which deletes it on a best-effort basis.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (proto, port) = match (args.udp, args.tcp) {
        (Some(p), _) => (Proto::Udp, p),
        (None, Some(p)) => (Proto::Tcp, p),
        (None, None) => return Err("give --udp PORT or --tcp PORT".into()),
    };
    let limit = Duration::try_from_secs_f64(args.timeout)
        .map_err(|_| format!("invalid --timeout {}", args.timeout))?;
    let opts = Options {
        methods: if args.methods.is_empty() {
            Method::ALL.to_vec()
        } else {
            args.methods.clone()
        },
        limit,
        lifetime: Duration::from_secs(args.lifetime),
        gateway: args.gateway,
        external_port: None,
    };
    let local = SocketAddr::new(args.bind.unwrap_or(Ipv4Addr::UNSPECIFIED.into()), port);
    // Polled once now, so that the signal handlers are in place before anything is
    // mapped: a Ctrl-C from here on ends in a deletion, even one during the open.
    let stop = crate::cli::stop_signal();
    tokio::pin!(stop);
    let _ = futures::poll!(&mut stop);
    let mapping = Mapping::open(proto, local, &opts).await?;
    let mut renewals = mapping.watch();
    print_event(args.json, "mapped", &renewals.borrow_and_update())?;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            changed = renewals.changed() => {
                if changed.is_err() {
                    break;
                }
                print_event(args.json, "renewed", &renewals.borrow_and_update())?;
            }
        }
    }
    let lease = mapping.lease();
    mapping.close(limit).await?;
    print_event(args.json, "deleted", &lease)?;
    Ok(())
}

fn print_event(json: bool, event: &str, l: &Lease) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let v = serde_json::json!({
            "event": event,
            "method": l.method.to_string(),
            "gateway": l.gateway,
            "proto": l.proto.to_string(),
            "local": l.local,
            "external": l.external,
            "lifetime": l.lifetime.as_secs(),
            "renewals": l.renewals,
        });
        writeln!(out, "{v}")?;
    } else {
        let what = match event {
            "mapped" => "mapped",
            "renewed" => "renewed the mapping of",
            _ => "deleted the mapping of",
        };
        writeln!(
            out,
            "{what} {} {} to {} by {} at {} (lease {} s)",
            l.proto,
            l.local,
            l.external,
            l.method,
            l.gateway,
            l.lifetime.as_secs()
        )?;
    }
    out.flush()
}
