//! `p2pipe addr`: this node's signed address record, gathered from its interfaces, the
//! NAT tests against STUN servers, and the signalling brokers.
//!
//! The record goes to stdout on one line (the text form, or the JSON with `--json`); a
//! short summary goes to stderr. Without a STUN answer the record still comes out, with
//! the NAT fields unknown, after a warning.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use p2pipe::dns;
use p2pipe::identity::{self, NodeId, PeerRecord};
use p2pipe::iface::Interface;
use p2pipe::nat::NatReport;
use p2pipe::p2p;
use p2pipe::Af;

use super::nat::{self, Outcome};
use super::servers::{self, Source};

/// Arguments of `p2pipe addr`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A signalling broker, mqtt://HOST:PORT (repeatable); replaces $P2PIPE_SIGNAL, the
    /// config file ($P2PIPE_SIGNAL_FILE or ~/.config/p2pipe/signal-brokers) and the
    /// built-in list.
    #[arg(long = "signal", value_name = "URL")]
    signal: Vec<String>,
    /// A STUN server to ask (repeatable); the list is found as for `p2pipe nat`.
    #[arg(long = "stun", value_name = "HOST:PORT")]
    stun: Vec<String>,
    /// The node key file; created (mode 0600) when missing. Default:
    /// $XDG_CONFIG_HOME/p2pipe/node.key or ~/.config/p2pipe/node.key.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Print the record as JSON instead of its text form.
    #[arg(long)]
    json: bool,
    /// How long the record is valid, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    ttl: u64,
    /// The port this node listens on, given with each local address (0: none).
    #[arg(long, value_name = "P", default_value_t = 0)]
    port: u16,
}

/// Gathers, signs and prints the record.
///
/// # Errors
///
/// A broker URL that is not `mqtt://HOST:PORT` (before anything runs), a key file that
/// cannot be loaded or created, no interfaces, or a record that cannot be built.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (brokers, broker_source) = servers::SIGNAL.resolve(&args.signal)?;
    for b in &brokers {
        identity::check_broker_url(b).map_err(|e| format!("{e} (from {broker_source})"))?;
    }
    let (stun, _) = servers::servers(&args.stun)?;
    let (me, _, _) = super::id::identity(args.key_file)?;
    let nics = Interface::list()?;
    let reports = nat_reports(&stun).await;
    let entries = p2p::interface_entries(&nics, &[], &reports, args.port, &[]);
    let mut builder = PeerRecord::builder();
    for e in entries {
        builder = builder.interface(e);
    }
    for b in &brokers {
        builder = builder.broker(b.clone());
    }
    let now = identity::unix_ms(SystemTime::now());
    let record = builder.sign(&me, now, Duration::from_secs(args.ttl))?;

    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &record.to_json())?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", record.to_text())?;
    }
    out.flush()?;
    eprint!("{}", summary(&record, &broker_source, args.ttl));
    Ok(())
}

/// The NAT report of each family from the STUN servers, or `None` with a warning on
/// stderr when no server answered.
async fn nat_reports(stun: &[String]) -> Vec<(Af, NatReport)> {
    let resolver = dns::default_resolver();
    let (v4, v6) = tokio::join!(
        nat::family(Af::V4, stun, None, resolver),
        nat::family(Af::V6, stun, None, resolver)
    );
    let mut reports = Vec::new();
    for (af, f) in [(Af::V4, v4), (Af::V6, v6)] {
        let af_name = af.to_string().to_lowercase();
        match f.outcome {
            Outcome::Report(r) if r.external.is_some() => reports.push((af, *r)),
            Outcome::Report(r) => eprintln!(
                "warning: {af_name}: nat behaviour unknown: {}",
                r.reasons
                    .external
                    .as_deref()
                    .unwrap_or("no stun server answered")
            ),
            Outcome::NotTested(why) => {
                eprintln!("warning: {af_name}: nat behaviour unknown: {why}")
            }
        }
    }
    reports
}

/// The stderr summary: the node, each interface's addresses and NAT, the brokers.
fn summary(record: &PeerRecord, broker_source: &Source, ttl: u64) -> String {
    let id: NodeId = record.node_id();
    let mut s = format!("node {id}, record valid for {ttl} s\n");
    for i in record.interfaces() {
        for f in &i.families {
            let addrs: Vec<String> = f
                .local
                .iter()
                .map(|l| format!("{} ({})", l.addr.ip(), l.class.as_str()))
                .collect();
            let nat = match (&f.external, &f.nat_type) {
                (Some(ext), Some(t)) => format!("; external {ext}, nat {t}"),
                (Some(ext), None) => format!("; external {ext}"),
                _ => String::new(),
            };
            s.push_str(&format!(
                "  {} {}: {}{nat}\n",
                i.name,
                f.af.to_string().to_lowercase(),
                addrs.join(" ")
            ));
        }
    }
    let sig = record.signalling();
    s.push_str(&format!(
        "signalling on {} (from {broker_source}), topic {}\n",
        sig.brokers.join(" "),
        sig.topic
    ));
    s
}
