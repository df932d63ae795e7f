//! `p2pipe id`: this node's id, from its key file (created when missing).

use std::io::Write;
use std::path::PathBuf;

use p2pipe::identity::{Created, Identity};

use super::servers;

/// Arguments of `p2pipe id`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node key file; created (mode 0600) when missing. Default:
    /// $XDG_CONFIG_HOME/p2pipe/node.key or ~/.config/p2pipe/node.key.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Print one JSON object: {"node_id", "public_key", "key_file", "created"}.
    #[arg(long)]
    json: bool,
}

/// The key file to use: the flag, else `node.key` in the config folder.
///
/// # Errors
///
/// Neither the flag nor a config folder (no `XDG_CONFIG_HOME` and no `HOME`).
pub fn key_file(flag: Option<PathBuf>) -> Result<PathBuf, String> {
    flag.or_else(|| servers::config_dir().map(|d| d.join("node.key")))
        .ok_or_else(|| "no key file: give --key-file, or set XDG_CONFIG_HOME or HOME".to_owned())
}

/// Loads this node's identity from `flag`'s key file (or the default one), creating it
/// when missing and saying so on stderr.
///
/// # Errors
///
/// The key file cannot be found, read, created, or is open to other users.
pub fn identity(flag: Option<PathBuf>) -> Result<(Identity, PathBuf, Created), String> {
    let path = key_file(flag)?;
    let (id, created) = Identity::load_or_create(&path).map_err(|e| e.to_string())?;
    if created == Created::New {
        eprintln!("created a new node key at {}", path.display());
    }
    Ok((id, path, created))
}

/// Prints the node id.
///
/// # Errors
///
/// As [`identity`], and a failed write.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (id, path, created) = identity(args.key_file)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = serde_json::json!({
            "node_id": id.node_id(),
            "public_key": hex(id.public().as_bytes()),
            "key_file": path,
            "created": created == Created::New,
        });
        serde_json::to_writer(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", id.node_id())?;
    }
    out.flush()?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
