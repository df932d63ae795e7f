//! `p2pipe nat`: the NAT behaviour of an interface, per address family.
//!
//! The report says, per family, what the STUN servers told, or why the family was not
//! tested. Nothing unknown is left without its reason: in the text, `unknown: <why>`;
//! in the JSON, a `null` always has a `<field>_reason` beside it, at the top
//! (`"ipv6": null, "ipv6_reason": "none of the 2 stun servers has an ipv6 address"`)
//! and inside a report (`"mapping": null, "mapping_reason": "..."`, see
//! [`p2pipe::nat::Reasons`]).
//!
//! The command fails (exit status 1, after printing the report) when neither family got
//! an external address from a server; the error then says whether no server name
//! resolved (`no stun server name resolved (dns: ...)`) or no server answered (`no stun
//! server answered (asked: ...)`).

use std::io::Write;
use std::net::SocketAddr;

use p2pipe::dns::{self, Resolver};
use p2pipe::iface::Interface;
use p2pipe::nat::{self, NatReport, ProbeConfig};
use p2pipe::{Af, Target};

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
    /// Print one JSON object: {"interface": ..., "ipv4": {...} or null, "ipv6": ...,
    /// "stun_servers": [...], "interfaces": [...]}.
    ///
    /// A null always comes with its reason beside it as `<field>_reason`: `"ipv6": null,
    /// "ipv6_reason": "..."` for a family that was not tested, `"mapping": null,
    /// "mapping_reason": "..."` for a part of a report the servers could not tell (also
    /// nat_type, filtering, external, port_allocation), `"interface_reason"` when no
    /// interface has a default route.
    #[arg(long)]
    json: bool,
}

/// What was found for one family: a report, or why there is none.
#[derive(Debug)]
pub(super) enum Outcome {
    Report(Box<NatReport>),
    NotTested(String),
}

/// One family's test: its outcome, the servers it asked and the names that did not
/// resolve.
#[derive(Debug)]
pub(super) struct Family {
    pub(super) outcome: Outcome,
    /// The server addresses the probe asked (empty when it did not run).
    asked: Vec<SocketAddr>,
    /// Resolver errors of names that did not resolve at all (each names its host).
    unresolved: Vec<String>,
    /// How many names were looked up (or given as addresses).
    names: usize,
}

impl Family {
    fn answered(&self) -> bool {
        matches!(&self.outcome, Outcome::Report(r) if r.external.is_some())
    }
}

/// The servers of one family, resolved.
#[derive(Debug, Default)]
struct Resolved {
    addrs: Vec<SocketAddr>,
    /// Resolver errors of names that did not resolve at all.
    unresolved: Vec<String>,
    /// Names that resolve, but to no address of the family.
    other_family: usize,
}

/// Resolves `list` (`host:port`, port 3478 by default) to addresses of family `af`,
/// keeping their order; all lookups at once, each under the resolver's time limit.
///
/// # Errors
///
/// A server that is not a valid `host:port`.
async fn resolve(list: &[String], af: Af, resolver: &Resolver) -> Result<Resolved, String> {
    let targets = list
        .iter()
        .map(|s| Target::parse(s, Some(3478)).map_err(|e| format!("bad stun server {s}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let lookups = targets
        .iter()
        .map(|t| resolver.resolve(t, Some(af), dns::DEFAULT_TIMEOUT));
    let mut out = Resolved::default();
    for found in futures::future::join_all(lookups).await {
        match found {
            Ok(addrs) => {
                for a in addrs {
                    if Af::of_socket(&a) == af && !out.addrs.contains(&a) {
                        out.addrs.push(a);
                    }
                }
            }
            Err(p2pipe::error::Error::NoAddress { .. }) => out.other_family += 1,
            Err(e) => out.unresolved.push(e.to_string()),
        }
    }
    Ok(out)
}

/// Why a family has no server to ask, once its names are resolved.
fn no_server_reason(af: Af, names: usize, r: &Resolved) -> String {
    let af = af.to_string().to_lowercase();
    if r.unresolved.len() == names {
        return format!(
            "no stun server name resolved (dns: {})",
            r.unresolved.join("; ")
        );
    }
    let mut why = format!("none of the {names} stun servers has an {af} address");
    if !r.unresolved.is_empty() {
        why.push_str(&format!(
            "; {} did not resolve (dns: {})",
            r.unresolved.len(),
            r.unresolved.join("; ")
        ));
    }
    why
}

fn join<T: ToString>(items: &[T], sep: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

/// The error of a run where no family got an external address, or `None` when one did.
fn failure(families: &[(Af, Family)]) -> Option<String> {
    if families.iter().any(|(_, f)| f.answered()) {
        return None;
    }
    let asked: Vec<SocketAddr> = families
        .iter()
        .flat_map(|(_, f)| f.asked.iter().copied())
        .collect();
    if !asked.is_empty() {
        return Some(format!(
            "no stun server answered (asked: {})",
            join(&asked, ", ")
        ));
    }
    let mut unresolved: Vec<&String> = Vec::new();
    for e in families.iter().flat_map(|(_, f)| &f.unresolved) {
        if !unresolved.contains(&e) {
            unresolved.push(e);
        }
    }
    // No family asked anyone: either no name resolved at all, or each family had its
    // own reason (no address of that family, no route ...).
    if families
        .iter()
        .all(|(_, f)| f.names > 0 && f.unresolved.len() == f.names)
    {
        return Some(format!(
            "no stun server name resolved (dns: {})",
            join(&unresolved, "; ")
        ));
    }
    let why: Vec<String> = families
        .iter()
        .map(|(af, f)| match &f.outcome {
            Outcome::NotTested(why) => format!("{}: {why}", af.to_string().to_lowercase()),
            Outcome::Report(_) => format!("{}: no report", af.to_string().to_lowercase()),
        })
        .collect();
    Some(format!("no stun server was asked ({})", why.join("; ")))
}

/// The JSON document: every null has its `<field>_reason`.
fn json(
    interface: Option<&str>,
    families: &[(Af, Family)],
    list: &[String],
    nics: &[Interface],
) -> serde_json::Value {
    let mut doc = serde_json::Map::new();
    doc.insert("interface".into(), interface.into());
    if interface.is_none() {
        doc.insert(
            "interface_reason".into(),
            "no interface has a default route".into(),
        );
    }
    for (af, f) in families {
        let key = af.to_string().to_lowercase();
        match &f.outcome {
            Outcome::Report(r) => {
                let v = serde_json::to_value(r).unwrap_or_else(|e| {
                    doc.insert(format!("{key}_reason"), format!("not shown: {e}").into());
                    serde_json::Value::Null
                });
                doc.insert(key, v);
            }
            Outcome::NotTested(why) => {
                doc.insert(key.clone(), serde_json::Value::Null);
                doc.insert(format!("{key}_reason"), why.clone().into());
            }
        }
    }
    doc.insert("stun_servers".into(), list.into());
    doc.insert(
        "interfaces".into(),
        nics.iter()
            .map(|n| n.name.clone())
            .collect::<Vec<_>>()
            .into(),
    );
    serde_json::Value::Object(doc)
}

/// Runs the NAT tests and prints the report.
///
/// # Errors
///
/// Bad arguments, no interfaces, or no family got an external address (after the
/// report is printed).
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
    let resolver = dns::default_resolver();
    // Both families at once: a report costs the slower of the two, not their sum.
    let (v4, v6) = tokio::join!(
        family(Af::V4, &list, chosen.as_ref(), resolver),
        family(Af::V6, &list, chosen.as_ref(), resolver)
    );
    let families = [(Af::V4, v4), (Af::V6, v6)];
    let mut used_interface = chosen.as_ref().map(|n| n.name.clone());
    for af in [Af::V4, Af::V6] {
        if used_interface.is_none() {
            if let Ok(Some(nic)) = Interface::default_for(af) {
                used_interface = Some(nic.name);
            }
        }
    }
    let failed = failure(&families);

    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = json(used_interface.as_deref(), &families, &list, &nics);
        serde_json::to_writer(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        print_text(
            &mut out,
            used_interface.as_deref(),
            &families,
            &list,
            &source,
        )?;
        if let Some(why) = &failed {
            writeln!(out, "{why}; the interfaces are:")?;
            for nic in &nics {
                let v4 = nic.v4.iter().map(|a| a.ip.to_string());
                let v6 = nic.v6.iter().map(|a| a.ip.to_string());
                let addrs: Vec<String> = v4.chain(v6).collect();
                writeln!(out, "  {} {}", nic.name, addrs.join(" "))?;
            }
        }
    }
    out.flush()?;
    match failed {
        Some(why) => Err(why.into()),
        None => Ok(()),
    }
}

fn print_text(
    out: &mut impl Write,
    interface: Option<&str>,
    families: &[(Af, Family)],
    list: &[String],
    source: &servers::Source,
) -> std::io::Result<()> {
    match interface {
        Some(name) => writeln!(out, "interface {name}")?,
        None => writeln!(out, "interface: none with a default route")?,
    }
    for (af, f) in families {
        writeln!(out, "{af}")?;
        match &f.outcome {
            Outcome::NotTested(why) => writeln!(out, "  not tested: {why}")?,
            Outcome::Report(r) if r.external.is_none() => writeln!(
                out,
                "  no stun server answered (asked: {}; {} requests in {} ms): udp is blocked, or the servers are unreachable",
                join(&f.asked, ", "),
                r.requests,
                r.elapsed.as_millis()
            )?,
            Outcome::Report(r) => print_report(out, r)?,
        }
    }
    writeln!(out, "stun servers from {source}: {}", list.join(" "))?;
    let mut unresolved: Vec<&String> = Vec::new();
    for e in families.iter().flat_map(|(_, f)| &f.unresolved) {
        if !unresolved.contains(&e) {
            unresolved.push(e);
        }
    }
    if !unresolved.is_empty() {
        writeln!(out, "did not resolve: {}", join(&unresolved, "; "))?;
    }
    Ok(())
}

/// The value, or `unknown: <why>`.
fn known_or<T: std::fmt::Display>(v: &Option<T>, why: &Option<String>) -> String {
    match (v, why) {
        (Some(v), _) => v.to_string(),
        (None, Some(why)) => format!("unknown: {why}"),
        (None, None) => "unknown".to_owned(),
    }
}

fn print_report(out: &mut impl Write, r: &NatReport) -> std::io::Result<()> {
    let why = &r.reasons;
    let server = format!(
        "{} ({} transactions, {} requests, {} ms)",
        known_or(&r.server, &None),
        r.transactions,
        r.requests,
        r.elapsed.as_millis()
    );
    let rows = [
        ("nat type", known_or(&r.nat_type, &why.nat_type)),
        ("mapping", known_or(&r.mapping, &why.mapping)),
        ("filtering", known_or(&r.filtering, &why.filtering)),
        ("external", known_or(&r.external, &why.external)),
        (
            "port allocation",
            known_or(&r.port_allocation, &why.port_allocation),
        ),
        ("local", known_or(&r.local, &None)),
        ("server", server),
    ];
    for (label, value) in rows {
        writeln!(out, "  {label:<16} {value}")?;
    }
    Ok(())
}

/// Resolves `list` and runs the NAT tests of family `af`, from `chosen` or the default
/// route.
pub(super) async fn family(
    af: Af,
    list: &[String],
    chosen: Option<&Interface>,
    resolver: &Resolver,
) -> Family {
    let not_tested = |why: String, unresolved: Vec<String>| Family {
        outcome: Outcome::NotTested(why),
        asked: Vec::new(),
        unresolved,
        names: list.len(),
    };
    let mut cfg = ProbeConfig::default();
    if let Some(nic) = chosen {
        let ip = match af {
            Af::V4 => nic.v4.first().map(|a| a.ip.into()),
            Af::V6 => nic.v6.iter().find(|a| a.scope_id == 0).map(|a| a.ip.into()),
        };
        let Some(ip) = ip else {
            let why = format!(
                "{} has no {} address",
                nic.name,
                af.to_string().to_lowercase()
            );
            return not_tested(why, Vec::new());
        };
        cfg.local_ip = Some(ip);
        cfg.device = Some(nic.name.clone());
    }
    let resolved = match resolve(list, af, resolver).await {
        Ok(r) => r,
        Err(why) => return not_tested(why, Vec::new()),
    };
    if resolved.addrs.is_empty() {
        let why = no_server_reason(af, list.len(), &resolved);
        return not_tested(why, resolved.unresolved);
    }
    match nat::probe(af, &resolved.addrs, &cfg).await {
        Ok(mut r) => {
            if r.external.is_none() {
                r.reasons.external = Some(format!(
                    "no stun server answered (asked: {})",
                    join(&resolved.addrs, ", ")
                ));
            }
            Family {
                outcome: Outcome::Report(Box::new(r)),
                asked: resolved.addrs,
                unresolved: resolved.unresolved,
                names: list.len(),
            }
        }
        Err(e) => not_tested(e.to_string(), resolved.unresolved),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a current-thread runtime, under a time limit.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(10), f)
                    .await
                    .expect("took too long")
            })
    }

    /// A resolver that sends no query anywhere: no upstream servers, no hosts entries.
    fn offline() -> Resolver {
        Resolver::builder().no_hosts().build().unwrap()
    }

    #[test]
    fn a_report_prints_one_aligned_line_a_field_with_the_reason_of_each_unknown() {
        let r = NatReport {
            nat_type: None,
            mapping: Some(nat::Mapping::EndpointIndependent),
            filtering: None,
            external: Some("198.51.100.1:40000".parse().unwrap()),
            port_allocation: Some(nat::PortAllocation::Preserving),
            local: Some("192.168.1.5:40000".parse().unwrap()),
            server: Some("203.0.113.10:3478".parse().unwrap()),
            unknown: vec![nat::Unknown::ChangeIgnored],
            reasons: nat::Reasons {
                nat_type: Some("the filtering is unknown".into()),
                filtering: Some("change ignored".into()),
                ..nat::Reasons::default()
            },
            transactions: 3,
            requests: 4,
            ignored: 0,
            elapsed: std::time::Duration::from_millis(12),
        };
        let mut out = Vec::new();
        print_report(&mut out, &r).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "  nat type         unknown: the filtering is unknown\n\
             \x20 mapping          endpoint-independent\n\
             \x20 filtering        unknown: change ignored\n\
             \x20 external         198.51.100.1:40000\n\
             \x20 port allocation  preserving\n\
             \x20 local            192.168.1.5:40000\n\
             \x20 server           203.0.113.10:3478 (3 transactions, 4 requests, 12 ms)\n"
        );
    }

    #[test]
    fn names_that_do_not_resolve_are_told_apart_from_servers_that_do_not_answer() {
        let list = vec![
            "stun.example.invalid:3478".to_owned(),
            "other.example.invalid".to_owned(),
        ];
        let resolver = offline();
        let families: Vec<(Af, Family)> = [Af::V4, Af::V6]
            .into_iter()
            .map(|af| (af, block_on(family(af, &list, None, &resolver))))
            .collect();
        for (af, f) in &families {
            assert!(f.asked.is_empty(), "{af}: nothing to ask");
            let Outcome::NotTested(why) = &f.outcome else {
                panic!("{af}: {:?}", f.outcome)
            };
            assert!(
                why.starts_with("no stun server name resolved (dns: "),
                "{af}: {why}"
            );
            assert!(why.contains("\"stun.example.invalid\""), "{why}");
            assert!(why.contains("\"other.example.invalid\""), "{why}");
        }
        let err = failure(&families).expect("nothing answered");
        assert!(
            err.starts_with("no stun server name resolved (dns: "),
            "{err}"
        );
        assert!(!err.contains("answered"), "{err}");
        let doc = json(Some("lo"), &families, &list, &[]);
        assert!(doc["ipv4"].is_null());
        assert!(
            doc["ipv4_reason"]
                .as_str()
                .unwrap()
                .starts_with("no stun server name resolved"),
            "{doc}"
        );

        // Once one server was asked, the failure says it did not answer, and who.
        let asked: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut families = families;
        families[0].1 = Family {
            outcome: Outcome::NotTested("no reply".into()),
            asked: vec![asked],
            unresolved: Vec::new(),
            names: 1,
        };
        assert_eq!(
            failure(&families).unwrap(),
            "no stun server answered (asked: 127.0.0.1:9)"
        );
    }

    #[test]
    fn a_name_of_the_other_family_only_is_not_a_dns_failure() {
        let list = vec!["127.0.0.1:3478".to_owned(), "x.example.invalid".to_owned()];
        let r = block_on(resolve(&list, Af::V6, &offline())).unwrap();
        assert!(r.addrs.is_empty());
        assert_eq!(r.other_family, 1);
        assert_eq!(r.unresolved.len(), 1);
        let why = no_server_reason(Af::V6, list.len(), &r);
        assert!(
            why.starts_with(
                "none of the 2 stun servers has an ipv6 address; 1 did not resolve (dns: "
            ),
            "{why}"
        );
    }
}
