//! `p2pipe interfaces`: the machine's interfaces, their addresses, and the default
//! interface of each address family.

use std::io::Write;

use p2pipe::iface::Interface;
use p2pipe::Af;

/// Arguments of `p2pipe interfaces`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object: {"interfaces": [...], "default": {"ipv4": NAME, "ipv6": NAME}}.
    #[arg(long)]
    json: bool,
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

/// Lists the interfaces on stdout.
pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let nics = Interface::list()?;
    let def4 = default_name(Af::V4);
    let def6 = default_name(Af::V6);
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = serde_json::json!({
            "interfaces": nics,
            "default": { "ipv4": def4, "ipv6": def6 },
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
    Ok(())
}
