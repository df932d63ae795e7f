//! The `p2pipe` command: parsing, logging, and one module per subcommand.

mod addr;
mod connect;
mod echo;
mod fetch;
mod id;
mod interfaces;
mod listen;
mod map;
mod nat;
mod node;
mod search;
mod servers;
mod share;
mod shell;
mod via;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Networking that knows which network it is on.
#[derive(Debug, Parser)]
#[command(name = "p2pipe", version, about, long_about = None)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an echo daemon: every message is sent back unchanged.
    Echo(echo::Args),
    /// List the network interfaces, their addresses, and the default interface per family.
    Interfaces(interfaces::Args),
    /// Learn what the NAT in front of an interface does, per address family, from STUN
    /// servers (RFC 5780 and RFC 3489 vocabulary).
    Nat(nat::Args),
    /// Share a folder: run a file-sharing node (btpeer/btfiler compatible).
    Share(share::Args),
    /// Ask the network, through one node, who has a file.
    Search(search::Args),
    /// Download a file from a node, verified; rerun to resume.
    Fetch(fetch::Args),
    /// An interactive shell over a node: peers, files, search, fetch, add-peer,
    /// remove-peer, rebuild, quit (or exit).
    Shell(shell::Args),
    /// Print this node's id (creating its key file when missing).
    Id(id::Args),
    /// Map a local port on the router (PCP, NAT-PMP or UPnP IGD), keep it renewed, and
    /// delete it on Ctrl-C or SIGTERM.
    Map(map::Args),
    /// Print this node's signed address record: interfaces, NAT behaviour per family,
    /// signalling brokers.
    Addr(addr::Args),
    /// Run a P2P node: print its signed address, then echo every path that reaches it
    /// (TCP and UDP), until Ctrl-C or SIGTERM.
    Listen(listen::Args),
    /// Connect to a node by its signed address, racing every strategy (direct,
    /// reverse, punch, upnp, relay), send it messages and check their echoes.
    Connect(connect::Args),
}

/// Logs to stderr: warnings by default, info for p2pipe itself in a long-running node
/// (`share`, whose joins, searches and transfers are its news), more with `-v`.
fn init_logging(verbose: u8, long_running: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 if long_running => "warn,p2pipe=info",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Parses the command line and runs the subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(
        cli.verbose,
        matches!(cli.command, Command::Share(_) | Command::Listen(_)),
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("p2pipe: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Echo(args) => echo::run(args).await,
            Command::Interfaces(args) => interfaces::run(args).await,
            Command::Nat(args) => nat::run(args).await,
            Command::Share(args) => share::run(args).await,
            Command::Search(args) => search::run(args).await,
            Command::Fetch(args) => fetch::run(args).await,
            Command::Shell(args) => shell::run(args).await,
            Command::Id(args) => id::run(args).await,
            Command::Addr(args) => addr::run(args).await,
            Command::Map(args) => map::run(args).await,
            Command::Listen(args) => listen::run(args).await,
            Command::Connect(args) => connect::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2pipe: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `1 file`, `2 files`, `0 files`: a count with its noun, plural by `s`.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Waits for Ctrl-C, or SIGTERM on Unix.
///
/// # Cancel safety
///
/// Cancel safe.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
