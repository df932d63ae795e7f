//! `p2pipe connect`: connect to a node by its signed address, send it numbered messages
//! of 64 bytes, check their echoes, and say how it went (as text, or as one JSON
//! object with `--json`, on success and on failure alike).

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use p2pipe::identity::{unix_ms, PeerRecord};
use p2pipe::p2p::{ConnectOptions, Connection, Report, Strategy};
use p2pipe::{Pipe, Proto};
use serde_json::json;

use super::node::NodeArgs;

/// The size of every message.
const MESSAGE: usize = 64;
/// The time limit of one echo.
const ECHO_LIMIT: Duration = Duration::from_secs(5);

/// Arguments of `p2pipe connect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The peer's signed address (`p2pipe1:...`, as `p2pipe listen` prints it).
    addr: String,
    #[command(flatten)]
    node: NodeArgs,
    /// The protocol of the path.
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"])]
    proto: String,
    /// The strategies to try, comma-separated: direct,reverse,punch,upnp,relay
    /// (default: all of them).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    strategy: Vec<Strategy>,
    /// How many messages to send.
    #[arg(long, default_value_t = 3, value_name = "N")]
    count: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// What happened, for the summary.
struct Outcome {
    ok: bool,
    report: Option<Report>,
    path: Option<(String, String)>,
    rtt: Option<Duration>,
    error: Option<String>,
}

/// Connects, exchanges the messages, prints the summary; fails (exit 1) when any step
/// did.
///
/// # Errors
///
/// Bad arguments or a node that cannot start (before anything is printed with
/// `--json`, the object says so), and any failure of the connect or the echoes.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let proto = if args.proto == "udp" {
        Proto::Udp
    } else {
        Proto::Tcp
    };
    let outcome = attempt(&args, proto).await;
    let peer = PeerRecord::parse(args.addr.trim(), unix_ms(SystemTime::now()))
        .map(|r| r.node_id().to_string())
        .ok();
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = summary_json(peer, proto, &outcome);
        writeln!(out, "{doc}")?;
    } else if let Some(report) = &outcome.report {
        writeln!(out, "{report}")?;
        if let Some(rtt) = outcome.rtt {
            writeln!(
                out,
                "{} echoes of {MESSAGE} bytes, median round trip {:.3} ms",
                args.count,
                ms(rtt)
            )?;
        }
    }
    out.flush()?;
    match outcome.error {
        None if outcome.ok => Ok(()),
        Some(e) => Err(e.into()),
        None => Err("failed".into()),
    }
}

/// Starts the node, connects, echoes, stops the node.
async fn attempt(args: &Args, proto: Proto) -> Outcome {
    let mut outcome = Outcome {
        ok: false,
        report: None,
        path: None,
        rtt: None,
        error: None,
    };
    let record = match PeerRecord::parse(args.addr.trim(), unix_ms(SystemTime::now())) {
        Ok(r) => r,
        Err(e) => {
            outcome.error = Some(format!("bad address: {e}"));
            return outcome;
        }
    };
    let node = match args.node.start().await {
        Ok(n) => n,
        Err(e) => {
            outcome.error = Some(e.to_string());
            return outcome;
        }
    };
    let opts = ConnectOptions {
        strategies: if args.strategy.is_empty() {
            Strategy::ALL.to_vec()
        } else {
            args.strategy.clone()
        },
        ..ConnectOptions::default()
    };
    match node.connect_with(&record, proto, &opts).await {
        Ok(Connection { pipe, report, .. }) => {
            outcome.path = report.path.map(|(l, r)| (l.to_string(), r.to_string()));
            outcome.report = Some(report);
            match echoes(&pipe, args.count).await {
                Ok(rtt) => {
                    outcome.rtt = rtt;
                    outcome.ok = true;
                }
                Err(e) => outcome.error = Some(e),
            }
            pipe.close().await;
        }
        Err(e) => {
            if let p2pipe::p2p::Error::Unreachable(report) = &e {
                outcome.report = Some((**report).clone());
            }
            outcome.error = Some(e.to_string());
        }
    }
    node.stop(Duration::from_secs(2)).await;
    outcome
}

/// Sends `count` numbered messages of [`MESSAGE`] bytes, one at a time, and checks each
/// echo; the median round trip.
async fn echoes(pipe: &Pipe, count: u32) -> Result<Option<Duration>, String> {
    let mut rtts = Vec::new();
    for i in 0..count {
        let mut msg = format!("p2pipe connect echo {i:08} ").into_bytes();
        msg.resize(MESSAGE, b'.');
        let sent = Instant::now();
        pipe.send(&msg)
            .await
            .map_err(|e| format!("send {i}: {e}"))?;
        let got = pipe
            .recv_timeout(ECHO_LIMIT)
            .await
            .map_err(|e| format!("echo {i}: {e}"))?;
        if got.data[..] != msg[..] {
            return Err(format!("echo {i} differs from what was sent"));
        }
        rtts.push(sent.elapsed());
    }
    rtts.sort();
    Ok(rtts.get(rtts.len() / 2).copied())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The one JSON object: the keys are fixed, whatever happened (null where unknown).
fn summary_json(peer: Option<String>, proto: Proto, o: &Outcome) -> serde_json::Value {
    let report = o.report.as_ref();
    let tried: Vec<serde_json::Value> = report
        .map(|r| {
            r.tried
                .iter()
                .map(|a| json!({"strategy": a.strategy.as_str(), "outcome": a.outcome.to_string(), "ms": ms(a.elapsed)}))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "ok": o.ok,
        "peer": peer,
        "proto": proto.to_string(),
        "strategy": report.and_then(|r| r.winner).map(Strategy::as_str),
        "local": o.path.as_ref().map(|p| p.0.clone()),
        "remote": o.path.as_ref().map(|p| p.1.clone()),
        "connect_ms": report.map(|r| ms(r.elapsed)),
        "rtt_ms": o.rtt.map(ms),
        "tried": tried,
    })
}
