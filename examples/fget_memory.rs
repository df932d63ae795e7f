//! Peak memory of a file transfer: one process serves a file, another fetches it, and
//! each reports its peak resident set (`VmHWM` in `/proc/self/status`). Run it with two
//! sizes; the peaks should be the same, since files are streamed, never held whole.
//!
//! ```sh
//! cargo run --release --example fget_memory -- 256M
//! cargo run --release --example fget_memory -- 2G
//! ```
//!
//! The size takes a `K`, `M` or `G` suffix (powers of 1024). The file is written in a new
//! folder under `P2PIPE_MEMORY_DIR` (default: the system's temporary folder), filled
//! with bytes that do not repeat, and removed at the end with the fetched copy, so
//! twice the size must be free there. This process writes the file, starts the serving
//! node as a child process (this program with `serve DIR`), fetches the file with
//! [`FilerClient::fetch`] (`FINF`, then `FRNG` into a hashed part file, verified,
//! renamed), and prints both peaks. Linux only (it reads `/proc`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use p2pipe::filer::{FilerClient, FilerNode, NodeConfig};

/// The shared file's name.
const NAME: &str = "data.bin";

/// A line of `/proc/self/status` (`VmHWM`, `VmRSS`), in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `256M`, `2G`, `64K` or a byte count.
fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, shift) = match t.chars().last()?.to_ascii_uppercase() {
        'K' => (&t[..t.len() - 1], 10),
        'M' => (&t[..t.len() - 1], 20),
        'G' => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    num.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Writes `size` bytes that do not repeat at any power of two, 64 KiB at a time.
fn write_file(path: &Path, size: u64) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = ((at + i as u64).wrapping_mul(2_654_435_761) >> 13) as u8;
        }
        f.write_all(&buf[..n])?;
        at += n as u64;
    }
    f.sync_all()
}

/// The child: serves `dir`, prints its address, waits for its input to close, then
/// prints its peak and resident set, in KiB.
async fn serve(dir: &Path) {
    let mut cfg = NodeConfig::new(dir);
    cfg.stabilize_every = None;
    let node = FilerNode::start("127.0.0.1:0".parse().expect("address"), cfg)
        .await
        .expect("start the node");
    println!("{} {}", node.local_addr(), status_kib("VmHWM"));
    // Blocks this worker until the parent is done; the other serves.
    tokio::task::spawn_blocking(|| {
        let mut rest = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut rest);
    })
    .await
    .expect("stdin");
    println!("{} {}", status_kib("VmHWM"), status_kib("VmRSS"));
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() == 2 && args[0] == "serve" {
        return serve(Path::new(&args[1])).await;
    }
    let Some(size) = args.first().and_then(|a| parse_size(a)) else {
        eprintln!("usage: fget_memory SIZE   (e.g. 256M, 2G)");
        std::process::exit(2);
    };
    let base = std::env::var_os("P2PIPE_MEMORY_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let root = tempfile::tempdir_in(base).expect("temporary folder");
    let shared = root.path().join("shared");
    let dest = root.path().join("dest");
    std::fs::create_dir(&shared).expect("shared folder");
    std::fs::create_dir(&dest).expect("destination folder");
    let t = Instant::now();
    write_file(&shared.join(NAME), size).expect("write the file");
    println!(
        "file: {size} bytes ({:.2} GiB) in {}, written in {:.1} s",
        size as f64 / f64::from(1u32 << 30),
        root.path().display(),
        t.elapsed().as_secs_f64()
    );

    let mut child = Command::new(std::env::current_exe().expect("this program"))
        .arg("serve")
        .arg(&shared)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the serving node");
    let mut out = BufReader::new(child.stdout.take().expect("child output"));
    let mut line = String::new();
    out.read_line(&mut line).expect("the node's address");
    let mut words = line.split_whitespace();
    let addr: SocketAddr = words
        .next()
        .and_then(|a| a.parse().ok())
        .expect("an address");
    let node_start: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);

    let client_start = status_kib("VmHWM");
    let t = Instant::now();
    // The node hashes the file before it answers FINF: a generous limit.
    let fetched = FilerClient::new(addr)
        .timeout(Duration::from_secs(600))
        .fetch(NAME, &dest, |_, _| {})
        .await
        .expect("fetch");
    let took = t.elapsed().as_secs_f64();
    assert!(fetched.verified && fetched.size == size, "{fetched:?}");
    let client_peak = status_kib("VmHWM");

    drop(child.stdin.take());
    line.clear();
    out.read_line(&mut line).expect("the node's peak");
    let mut words = line.split_whitespace();
    let node_peak: u64 = words.next().and_then(|v| v.parse().ok()).expect("a peak");
    let node_rss: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let _ = child.wait();

    println!(
        "fetched and verified in {took:.1} s ({:.0} MB/s, FINF's hashing included)",
        size as f64 / took / 1e6
    );
    println!(
        "serving node:    VmHWM {} (after start {}, VmRSS at the end {})",
        mib(node_peak),
        mib(node_start),
        mib(node_rss)
    );
    println!(
        "fetching client: VmHWM {} (before the fetch {})",
        mib(client_peak),
        mib(client_start)
    );
    drop(root);
}
