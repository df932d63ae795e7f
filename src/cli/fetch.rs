//! `p2pipe fetch`: download a file from a node, with a progress bar; rerun to resume.
//!
//! The download goes to a locked part file beside its destination and is put in place
//! only once the bytes on disk match the node's SHA-256 (see `p2pipe::filer::Destination`).
//! "Verified" is printed only for bytes that were read back and checked.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use p2pipe::filer::{Destination, Error, Fetched, FilerClient, StoreError};

use super::node::NodeArgs;
use super::via::{self, Via};

/// Arguments of `p2pipe fetch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file's name on the node.
    name: String,
    /// The node that has it: HOST:PORT, or the signed address (`p2pipe1:...`) that
    /// `p2pipe share --signal ...` prints, reached across NATs through a P2P node (the
    /// options below).
    #[arg(long, value_name = "HOST:PORT|p2pipe1:...")]
    from: String,
    /// Where to save it: an existing folder (the file keeps its name), or a new file
    /// in an existing folder (default: the current folder).
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    output: Option<PathBuf>,
    /// Replace an existing file of other content (only by a verified download).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    node: NodeArgs,
}

/// Downloads with a progress bar (on a terminal), verified, resumable.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let out = args.output.clone().unwrap_or_else(|| PathBuf::from("."));
    // Checked before anything is sent or written: the name, and where it goes.
    let dest = Destination::output(&out, &args.name)?.replace(args.force);
    if !via::is_signed(&args.from) {
        let target = p2pipe::Target::parse(&args.from, None)?;
        return download(&args, &dest, FilerClient::new(target)).await;
    }
    // A signed address: the same download, through a tunnel to the sharer's node.
    let via = Via::start(&args.from, &args.node).await?;
    let got = download(&args, &dest, FilerClient::new(via.entrance())).await;
    via.stop().await;
    got
}

/// Downloads through `client` into `dest`, with the progress bar; the summary line.
async fn download(
    args: &Args,
    dest: &Destination,
    client: FilerClient,
) -> Result<(), Box<dyn std::error::Error>> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .map_err(|e| e.to_string())?
        .progress_chars("=> "),
    );
    bar.set_message(args.name.clone());
    let (done, total) = (AtomicU64::new(0), AtomicU64::new(0));
    let fetch = client.fetch_to(&args.name, dest, |d, t| {
        done.store(d, Ordering::Relaxed);
        total.store(t, Ordering::Relaxed);
        bar.set_length(t);
        bar.set_position(d);
    });
    let got = tokio::select! {
        got = fetch => got,
        _ = super::stop_signal() => {
            bar.abandon();
            return Err(interrupted(dest, done.load(Ordering::Relaxed), total.load(Ordering::Relaxed)).into());
        }
    };
    bar.finish_and_clear();
    match got {
        Ok(got) => {
            println!("{}", summary(&args.name, &got));
            Ok(())
        }
        Err(Error::Download(e @ StoreError::Exists(_))) if !args.force => {
            Err(format!("{e}; pass --force to replace it").into())
        }
        Err(e) => Err(e.into()),
    }
}

/// What a user reads after Ctrl-C: what was kept, and how to go on.
fn interrupted(dest: &Destination, done: u64, total: u64) -> String {
    let part = dest.part_path();
    if !part.exists() {
        return "interrupted before the download began; nothing was written".into();
    }
    format!(
        "interrupted after {done} of {total} bytes; {} keeps them; rerun the same command to resume",
        display(part)
    )
}

/// The line printed for a finished fetch. It says "verified" only when the bytes on
/// disk were checked against the node's SHA-256.
fn summary(name: &str, got: &Fetched) -> String {
    let path = display(&got.path);
    let bytes = crate::cli::count(got.size, "byte");
    if got.already_there {
        return format!(
            "{path} is already there ({bytes}, sha-256 verified on disk); nothing fetched"
        );
    }
    let how = if got.verified {
        "sha-256 verified on disk"
    } else {
        "length checked; the node gave no hash to verify"
    };
    let mut extra = String::new();
    if got.restarted {
        extra.push_str("; the part file did not match the node's copy and was fetched again");
    } else if got.resumed_from > 0 {
        extra = format!(
            "; resumed at byte {}, {} transferred",
            got.resumed_from,
            crate::cli::count(got.transferred, "byte")
        );
    }
    format!("fetched {name} ({bytes}, {how}{extra}) to {path}")
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(size: u64, transferred: u64, resumed_from: u64) -> Fetched {
        Fetched {
            path: PathBuf::from("/d/f"),
            size,
            transferred,
            resumed_from,
            verified: true,
            already_there: false,
            restarted: false,
        }
    }

    #[test]
    fn the_summary_says_what_happened_and_verified_only_when_checked() {
        assert_eq!(
            summary("f", &fetched(1, 1, 0)),
            "fetched f (1 byte, sha-256 verified on disk) to /d/f"
        );
        assert_eq!(
            summary("f", &fetched(10, 4, 6)),
            "fetched f (10 bytes, sha-256 verified on disk; resumed at byte 6, 4 bytes transferred) to /d/f"
        );
        let mut there = fetched(10, 0, 10);
        there.already_there = true;
        assert_eq!(
            summary("f", &there),
            "/d/f is already there (10 bytes, sha-256 verified on disk); nothing fetched"
        );
        let mut plain = fetched(3, 3, 0);
        plain.verified = false;
        let s = summary("f", &plain);
        assert!(!s.contains("verified on"), "{s}");
        assert!(s.contains("no hash"), "{s}");
    }
}
