//! The file commands with a signed address (`p2pipe1:...`), as a user runs them on
//! loopback with a real mosquitto: `share --signal` prints the address, and `fetch
//! --from`, `search --via` and the shell reach the node through a P2P node and a tunnel.
//! (Across two NATs: `lab::files`.)

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::mosquitto::Mosquitto;
use crate::support::{within, V4};
use crate::tunnel::pattern;

/// A running `p2pipe share --signal` on 127.0.0.1, and its signed address.
struct Sharer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    addr: String,
}

impl Sharer {
    /// Shares `dir` with a P2P node signalling through `url`, with `extra` options, and
    /// reads stdout up to the signed address.
    async fn start(dir: &std::path::Path, url: &str, key: &str, extra: &[&str]) -> Sharer {
        let mut args = vec![
            "share",
            dir.to_str().unwrap(),
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--no-stun",
            "--signal",
            url,
            "--key-file",
            key,
        ];
        args.extend_from_slice(extra);
        let (mut child, guard) = crate::cli::spawn_p2pipe(&args, &[]).await;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = within(async {
            loop {
                let line = lines.next_line().await.unwrap().expect("a line");
                if let Some(a) = line.strip_prefix("p2p address ") {
                    break a.to_string();
                }
            }
        })
        .await;
        drop(guard);
        Sharer { child, lines, addr }
    }

    /// Reads stdout up to a line that starts with `prefix`.
    async fn line_starting(&mut self, prefix: &str) -> String {
        within(async {
            loop {
                let line = self.lines.next_line().await.unwrap().expect("a line");
                if line.starts_with(prefix) {
                    break line;
                }
            }
        })
        .await
    }

    /// Stops it as Ctrl-C would, and checks it left cleanly.
    async fn stop(mut self) {
        let pid = self.child.id().expect("running").to_string();
        let killed = within(
            tokio::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status(),
        )
        .await
        .unwrap();
        assert!(killed.success());
        let status = within(self.child.wait()).await.unwrap();
        assert!(status.success(), "{status}");
    }
}

/// The P2P node options of a command that reaches a signed address on loopback: no
/// STUN server answers on the discard port, so the node starts without an external
/// address, as it may.
fn node_options<'a>(url: &'a str, key: &'a str) -> [&'a str; 8] {
    [
        "--bind",
        "127.0.0.1",
        "--stun",
        "127.0.0.1:9",
        "--signal",
        url,
        "--key-file",
        key,
    ]
}

/// `p2pipe fetch --from p2pipe1:...`: the file arrives verified through the tunnel.
#[tokio::test]
async fn share_and_fetch_by_signed_address_on_loopback() {
    const TEST: &str = "files_via::share_and_fetch_by_signed_address_on_loopback";
    let Some(broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let (shared, out) = (root.path().join("shared"), root.path().join("out"));
    std::fs::create_dir(&shared).unwrap();
    std::fs::create_dir(&out).unwrap();
    let original = pattern(5, 1_500_000);
    std::fs::write(shared.join("film.bin"), &original).unwrap();
    let key = |who: &str| root.path().join(who).display().to_string();
    let url = broker.url();
    let sharer = Sharer::start(&shared, &url, &key("sharer.key"), &[]).await;
    let fetcher = key("fetcher.key");
    let mut args = vec!["fetch", "film.bin", "--from", &sharer.addr, "-o"];
    args.push(out.to_str().unwrap());
    args.extend(node_options(&url, &fetcher));
    let fetched = crate::cli::p2pipe(&args, None).await;
    let stdout = String::from_utf8_lossy(&fetched.stdout);
    let stderr = String::from_utf8_lossy(&fetched.stderr);
    assert!(fetched.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("sha-256 verified on disk"), "{stdout}");
    // On one host both direct and reverse work, and they start together: either wins.
    assert!(
        stderr.contains(" by direct over tcp") || stderr.contains(" by reverse over tcp"),
        "{stderr}"
    );
    assert!(std::fs::read(out.join("film.bin")).unwrap() == original);
    sharer.stop().await;
}

/// `p2pipe search --via p2pipe1:...` and `p2pipe shell p2pipe1:...`: the sharer
/// searches its network on the searcher's behalf, and finds a file its neighbour has;
/// the shell lists the node's peers and files, searches, and has the node fetch the
/// neighbour's file into its folder (a trusted command, through the tunnel).
#[tokio::test]
async fn search_and_the_shell_reach_a_node_by_its_signed_address() {
    const TEST: &str = "files_via::search_and_the_shell_reach_a_node_by_its_signed_address";
    let Some(broker) = Mosquitto::start(TEST, V4).await else {
        return;
    };
    let song = pattern(9, 200_000);
    let (neighbour, _nd) = crate::filer::node("127.0.0.1", &[("song-b.mp3", &song)]).await;
    let root = tempfile::tempdir().unwrap();
    let shared = root.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("film.bin"), b"the sharer's own").unwrap();
    let secret = root.path().join("secret");
    std::fs::write(&secret, "open sesame\n").unwrap();
    let key = |who: &str| root.path().join(who).display().to_string();
    let url = broker.url();
    let join = neighbour.local_addr().to_string();
    let extra = [
        "--join",
        &join,
        "--secret-file",
        secret.to_str().unwrap(),
        "--trust-remote",
    ];
    let mut sharer = Sharer::start(&shared, &url, &key("sharer.key"), &extra).await;
    let joined = sharer.line_starting("joined through").await;
    assert!(joined.contains("1 peer added"), "{joined}");
    let searcher = key("searcher.key");

    let mut args = vec!["search", "song", "--via", &sharer.addr, "--wait", "8"];
    args.extend(node_options(&url, &searcher));
    let found = crate::cli::p2pipe(&args, None).await;
    let stdout = String::from_utf8_lossy(&found.stdout);
    let stderr = String::from_utf8_lossy(&found.stderr);
    assert!(found.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("song-b.mp3 {}", neighbour.id()),
        "{stderr}"
    );
    assert!(stderr.contains("connected to "), "{stderr}");

    let script = "peers\nfiles\nsearch song\nfetch song-b\nfiles\n";
    let mut args = vec!["shell", &sharer.addr, "--secret-file"];
    args.push(secret.to_str().unwrap());
    args.extend(node_options(&url, &searcher));
    let shell = crate::cli::p2pipe(&args, Some(script)).await;
    let stdout = String::from_utf8_lossy(&shell.stdout);
    let stderr = String::from_utf8_lossy(&shell.stderr);
    assert!(shell.status.success(), "{stdout}\n{stderr}");
    let neighbour_id = neighbour.id().to_string();
    assert!(
        stdout.contains(&format!("1 peer\n  {neighbour_id} (")),
        "{stdout}"
    );
    assert!(stdout.contains("film.bin  16 bytes  at "), "{stdout}");
    assert!(
        stdout.contains(&format!("song-b.mp3  at {neighbour_id}")),
        "{stdout}"
    );
    // The trusted fetch put the neighbour's file in the sharer's folder, verified.
    assert_eq!(std::fs::read(shared.join("song-b.mp3")).unwrap(), song);
    assert!(
        stdout.contains(&format!("song-b.mp3  {} bytes  at ", song.len())),
        "the node now shares it: {stdout}"
    );
    sharer.stop().await;
}

/// A malformed signed address is refused before any node starts, and share refuses a
/// secret with signalling unless trusted operations may come from anywhere.
#[tokio::test]
async fn a_bad_signed_address_and_a_secret_with_signalling_are_refused_with_reasons() {
    let root = tempfile::tempdir().unwrap();
    let secret = root.path().join("secret");
    std::fs::write(&secret, "s").unwrap();
    for (args, expected) in [
        (
            vec!["search", "k", "--via", "p2pipe1:AAAA"],
            "bad signed address",
        ),
        (vec!["shell", "p2pipe1:AAAA"], "bad signed address"),
        (
            vec!["fetch", "k", "--from", "p2pipe1:AAAA"],
            "bad signed address",
        ),
        (
            vec![
                "share",
                root.path().to_str().unwrap(),
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--no-stun",
                "--secret-file",
                secret.to_str().unwrap(),
                // Never reached: the arguments are refused before anything starts.
                "--signal",
                "mqtt://127.0.0.1:9",
            ],
            "--trust-remote",
        ),
    ] {
        let out = crate::cli::p2pipe(&args, None).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
