//! `p2pipe fetch`: download a file from a node, with a progress bar; rerun to resume.

use std::path::{Path, PathBuf};

use p2pipe::filer::client::FilerClient;

/// Arguments of `p2pipe fetch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file's name on the node.
    name: String,
    /// The node that has it.
    #[arg(long, value_name = "HOST:PORT")]
    from: String,
    /// Where to save it: a folder, or a file path (default: the current folder).
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    output: Option<PathBuf>,
}

/// Downloads with a progress bar (on a terminal), verified, resumable.
pub async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let out = args.output.unwrap_or_else(|| PathBuf::from("."));
    let (dir, rename_to) = if out.is_dir() {
        (out.clone(), None)
    } else {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        (parent, Some(out.clone()))
    };
    let target = p2pipe::Target::parse(&args.from, None)?;
    let client = FilerClient::new(target);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .map_err(|e| e.to_string())?
        .progress_chars("=> "),
    );
    bar.set_message(args.name.clone());
    let got = client
        .fetch(&args.name, &dir, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await;
    bar.finish_and_clear();
    let got = got?;
    let mut path = got.path.clone();
    if let Some(to) = rename_to {
        if to != path {
            std::fs::rename(&path, &to)?;
            path = to;
        }
    }
    let how = if got.verified {
        "sha-256 verified"
    } else {
        "length checked; the node gave no hash"
    };
    let resumed = if got.transferred < got.size {
        format!(", resumed: {} bytes transferred", got.transferred)
    } else {
        String::new()
    };
    println!(
        "fetched {} ({} bytes, {how}{resumed}) to {}",
        args.name,
        got.size,
        display(&path)
    );
    Ok(())
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
