//! `p2pipe nat`: the NAT behaviour of an interface, per address family.

use std::io::Write;

use p2pipe::iface::Interface;
use p2pipe::nat::{self, NatReport, ProbeConfig};
use p2pipe::Af;

use super::servers;

/// Arguments of `p2pipe nat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A STUN server to ask (repeatable); replaces $P2PIPE_STUN, the config file
    /// ($P2PIPE_STUN_FILE or ~/.config/p2pipe/stun-servers) and the built-in list.
    #[arg(long = "stun", value_name = "HOST:PORT")]
    stun: Vec<String>,
    /// Test this interface (bound by name and address) instead of the default one.
    #[arg(long, value_name = "NAME")]
    interface: Option<String>,
    /// Print one JSON object: {"interface": ..., "ipv4": {...} or null, "ipv6": ...}.
    #[arg(long)]
    json: bool,
}

/// What was found for one family: a report, or why there is none.
enum Outcome {
    Report(NatReport),
    NotTested(String),
}

/// Runs the NAT tests and prints the report.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (list, source) = servers::servers(&args.stun)?;
    let nics = Interface::list()?;
    let chosen =
        match &args.interface {
            Some(name) => Some(nics.iter().find(|n| &n.name == name).cloned().ok_or_else(
                || {
                    let names: Vec<&str> = nics.iter().map(|n| n.name.as_str()).collect();
                    format!("no interface named {name} (have: {})", names.join(", "))
                },
            )?),
            None => None,
        };
    // Both families at once: a report costs the slower of the two, not their sum.
    let (v4, v6) = tokio::join!(
        family(Af::V4, &list, chosen.as_ref()),
        family(Af::V6, &list, chosen.as_ref())
    );
    let outcomes = [(Af::V4, v4), (Af::V6, v6)];
    let mut used_interface = chosen.as_ref().map(|n| n.name.clone());
    for af in [Af::V4, Af::V6] {
        if used_interface.is_none() {
            if let Ok(Some(nic)) = Interface::default_for(af) {
                used_interface = Some(nic.name);
            }
        }
    }
    let answered = outcomes
        .iter()
        .any(|(_, o)| matches!(o, Outcome::Report(r) if r.external.is_some()));

    let mut out = std::io::stdout().lock();
    if args.json {
        let value = |o: &Outcome| match o {
            Outcome::Report(r) => serde_json::to_value(r).unwrap_or(serde_json::Value::Null),
            Outcome::NotTested(_) => serde_json::Value::Null,
        };
        let doc = serde_json::json!({
            "interface": used_interface,
            "ipv4": value(&outcomes[0].1),
            "ipv6": value(&outcomes[1].1),
            "stun_servers": list,
            "interfaces": nics.iter().map(|n| &n.name).collect::<Vec<_>>(),
        });
        serde_json::to_writer(&mut out, &doc)?;
        writeln!(out)?;
        return Ok(());
    }
    match &used_interface {
        Some(name) => writeln!(out, "interface {name}")?,
        None => writeln!(out, "interface: none with a default route")?,
    }
    for (af, outcome) in &outcomes {
        writeln!(out, "{af}")?;
        match outcome {
            Outcome::NotTested(why) => writeln!(out, "  not tested: {why}")?,
            Outcome::Report(r) if r.external.is_none() => writeln!(
                out,
                "  no stun server answered ({} asked, {} requests in {} ms): udp is blocked, or the servers are unreachable",
                list.len(),
                r.requests,
                r.elapsed.as_millis()
            )?,
            Outcome::Report(r) => print_report(&mut out, r)?,
        }
    }
    writeln!(out, "stun servers from {source}: {}", list.join(" "))?;
    if !answered {
        writeln!(out, "no stun server answered; the interfaces are:")?;
        for nic in &nics {
            let v4 = nic.v4.iter().map(|a| a.ip.to_string());
            let v6 = nic.v6.iter().map(|a| a.ip.to_string());
            let addrs: Vec<String> = v4.chain(v6).collect();
            writeln!(out, "  {} {}", nic.name, addrs.join(" "))?;
        }
    }
    Ok(())
}

fn unknown_or<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "unknown".to_owned(), ToString::to_string)
}

fn print_report(out: &mut impl Write, r: &NatReport) -> std::io::Result<()> {
    writeln!(out, "  nat type         {}", unknown_or(&r.nat_type))?;
    writeln!(out, "  mapping          {}", unknown_or(&r.mapping))?;
    writeln!(out, "  filtering        {}", unknown_or(&r.filtering))?;
    writeln!(out, "  external         {}", unknown_or(&r.external))?;
    writeln!(out, "  port allocation  {}", unknown_or(&r.port_allocation))?;
    writeln!(out, "  local            {}", unknown_or(&r.local))?;
    writeln!(
        out,
        "  server           {} ({} transactions, {} requests, {} ms)",
        unknown_or(&r.server),
        r.transactions,
        r.requests,
        r.elapsed.as_millis()
    )?;
    if !r.unknown.is_empty() {
        let why: Vec<String> = r
            .unknown
            .iter()
            .map(|u| {
                serde_json::to_value(u)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect();
        writeln!(out, "  unknown because  {}", why.join(", "))?;
    }
    Ok(())
}

async fn family(af: Af, list: &[String], chosen: Option<&Interface>) -> Outcome {
    let mut cfg = ProbeConfig::default();
    if let Some(nic) = chosen {
        {
            let ip = match af {
                Af::V4 => nic.v4.first().map(|a| a.ip.into()),
                Af::V6 => nic.v6.iter().find(|a| a.scope_id == 0).map(|a| a.ip.into()),
            };
            let Some(ip) = ip else {
                return Outcome::NotTested(format!(
                    "{} has no {} address",
                    nic.name,
                    af.to_string().to_lowercase()
                ));
            };
            cfg.local_ip = Some(ip);
            cfg.device = Some(nic.name.clone());
        }
    }
    let servers = match nat::resolve_servers(list, af).await {
        Ok(s) => s,
        Err(e) => return Outcome::NotTested(e.to_string()),
    };
    if servers.is_empty() {
        return Outcome::NotTested(format!(
            "none of the {} stun servers has an {} address (names that do not resolve are skipped)",
            list.len(),
            af.to_string().to_lowercase()
        ));
    }
    match nat::probe(af, &servers, &cfg).await {
        Ok(r) => Outcome::Report(r),
        Err(e) => Outcome::NotTested(e.to_string()),
    }
}
