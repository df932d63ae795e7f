//! `p2pipe interfaces`: the machine's interfaces, their addresses, and the default
//! interface of each address family.

use std::io::Write;

use p2pipe::iface::{Interface, RoutePool};
use p2pipe::Af;

/// Arguments of `p2pipe interfaces`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object: {"interfaces": [...], "default": {"ipv4": NAME, "ipv6":
    /// NAME}, "routes": {"routes": [...]}}.
    #[arg(long)]
    json: bool,
    /// Ask STUN servers for each route's external address (without it, routes are
    /// listed with their NIC addresses only, and nothing is sent).
    #[arg(long)]
    routes: bool,
    /// A STUN server for --routes (repeatable); as for `p2pipe nat`.
    #[arg(long = "stun", value_name = "HOST:PORT")]
    stun: Vec<String>,
}

/// The default interface's name for `af`, or `None` (with a warning on stderr when the
/// route table could not be read).
fn default_name(af: Af) -> Option<String> {
    match Interface::default_for(af) {
        Ok(nic) => nic.map(|n| n.name),
        Err(e) => {
            eprintln!("p2pipe: no default {af} interface: {e}");
            None
        }
    }
}

/// The routes of every interface: planned from the addresses, and with their external
/// addresses from STUN when `lookup` is set.
async fn routes(
    nics: &[Interface],
    lookup: bool,
    stun: &[String],
) -> Result<RoutePool, Box<dyn std::error::Error>> {
    let mut pool = RoutePool::new();
    for af in [Af::V4, Af::V6] {
        let servers = if lookup {
            let (list, _) = super::servers::servers(stun)?;
            p2pipe::nat::resolve_servers(&list, af).await?
        } else {
            Vec::new()
        };
        for nic in nics.iter().filter(|n| !n.flags.loopback) {
            let found = if lookup {
                let cfg = p2pipe::nat::ProbeConfig::default().stun;
                p2pipe::nat::routes(nic, af, &servers, cfg).await
            } else {
                nic.route_plans(af)
                    .into_iter()
                    .map(|p| p.complete(None))
                    .collect()
            };
            for r in found {
                pool.push(r)?;
            }
        }
    }
    Ok(pool)
}

/// Lists the interfaces on stdout.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let nics = Interface::list()?;
    let def4 = default_name(Af::V4);
    let def6 = default_name(Af::V6);
    let pool = routes(&nics, args.routes, &args.stun).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = serde_json::json!({
            "interfaces": nics,
            "default": { "ipv4": def4, "ipv6": def6 },
            "routes": pool,
        });
        serde_json::to_writer(&mut out, &doc)?;
        writeln!(out)?;
        return Ok(());
    }
    for nic in &nics {
        let mut tags = Vec::new();
        if let Some(i) = nic.index {
            tags.push(format!("index {i}"));
        }
        tags.push(if nic.flags.up { "up" } else { "not running" }.to_owned());
        if nic.flags.loopback {
            tags.push("loopback".into());
        }
        if nic.flags.point_to_point {
            tags.push("point-to-point".into());
        }
        for (af, def) in [(Af::V4, &def4), (Af::V6, &def6)] {
            if def.as_deref() == Some(nic.name.as_str()) {
                tags.push(format!("default {}", af.to_string().to_lowercase()));
            }
        }
        writeln!(out, "{} ({})", nic.name, tags.join(", "))?;
        for a in &nic.v4 {
            writeln!(out, "    {}/{}  {}", a.ip, a.prefix, a.class)?;
        }
        for a in &nic.v6 {
            if a.scope_id != 0 {
                writeln!(out, "    {}%{}/{}  {}", a.ip, a.scope_id, a.prefix, a.class)?;
            } else {
                writeln!(out, "    {}/{}  {}", a.ip, a.prefix, a.class)?;
            }
        }
    }
    writeln!(out, "routes")?;
    for r in &pool {
        let nic: Vec<String> = r.nic().iter().map(ToString::to_string).collect();
        let ext = if r.ext().is_empty() {
            if args.routes {
                "unknown (no stun answer)".to_owned()
            } else {
                "not looked up (--routes asks stun)".to_owned()
            }
        } else {
            r.ext()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let af = r.af().to_string().to_lowercase();
        writeln!(out, "    {af} {} {} -> {ext}", r.interface(), nic.join(" "))?;
    }
    Ok(())
}
