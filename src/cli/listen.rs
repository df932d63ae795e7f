//! `p2pipe listen`: a node that prints its signed address, then echoes every message on
//! every path that reaches it, TCP and UDP, until Ctrl-C or SIGTERM.

use std::io::Write;
use std::time::Duration;

use p2pipe::p2p::Arrival;

use super::node::NodeArgs;

/// Arguments of `p2pipe listen`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    node: NodeArgs,
}

/// Runs the node until a stop signal.
///
/// # Errors
///
/// The node does not start (see [`NodeArgs::start`]).
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let node = args.node.start().await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", node.record().to_text())?;
        out.flush()?;
    }
    eprintln!(
        "node {} listening on {}",
        node.node_id(),
        node.local_addrs()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let serve = async {
        while let Some(arrival) = node.accept().await {
            echo(arrival);
        }
    };
    tokio::select! {
        () = serve => {}
        () = super::stop_signal() => {}
    }
    let report = node.stop(Duration::from_secs(2)).await;
    eprintln!(
        "stopped: {} port mappings deleted, {} relays closed",
        report.mappings_deleted, report.relays_closed
    );
    Ok(())
}

/// Logs an arrival and echoes what it sends.
fn echo(arrival: Arrival) {
    let peer = arrival
        .pipe
        .peer_addr()
        .map_or_else(|| "a relay".to_string(), |a| a.to_string());
    eprintln!(
        "arrival: {} over {} by {} from {peer}",
        arrival.node_id(),
        arrival.proto,
        arrival.strategy
    );
    let handled = arrival
        .pipe
        .on_message(|msg, reply| async move { reply.send(&msg.data).await });
    if let Err(e) = handled {
        eprintln!("warning: cannot serve {}: {e}", arrival.node_id());
    }
}
