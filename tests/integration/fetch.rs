//! Downloads that cannot lie: concurrent fetches into one folder, from the command line
//! and from two trusted sessions to one node; `-o` next to the user's own files; part
//! files that someone else changes; and Ctrl-C. In every case the final file is right
//! or absent, and "verified" is printed only for bytes checked on disk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use p2pipe::filer::{Error, FilerClient, Kind, StoreError, TrustedOp};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::filer::{node, node_with};
use crate::support::{loopbacks, succeeded, within};

/// A body that differs at every offset, so a shifted or doubled copy cannot pass.
fn body(len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Runs `p2pipe fetch ARGS` to its end.
async fn fetch_cmd(args: &[&str]) -> std::process::Output {
    crate::cli::p2pipe(&[&["fetch"], args].concat(), None).await
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn part_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.p2pipe-part"))
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Three `p2pipe fetch` processes into one folder at once, over each loopback family:
/// each one either lands the file verified, finds it already there, or is refused as
/// "already being fetched"; the file on disk is the node's, whole.
#[tokio::test]
async fn concurrent_fetches_into_one_folder_leave_one_verified_file() {
    let big = body(6_000_000);
    for ip in loopbacks("concurrent_fetches") {
        let (n, _d) = node(&ip.to_string(), &[("big.bin", &big)]).await;
        let from = n.local_addr().to_string();
        let into = tempfile::tempdir().unwrap();
        let dir = into.path().to_str().unwrap();
        let args = ["big.bin", "--from", &from, "-o", dir];
        let runs = (0..3).map(|_| fetch_cmd(&args));
        let outs = futures::future::join_all(runs).await;
        let mut landed = 0;
        for out in &outs {
            let (stdout, stderr) = text(out);
            if out.status.success() {
                assert!(
                    stdout.contains("sha-256 verified on disk"),
                    "{stdout} {stderr}"
                );
                landed += usize::from(stdout.starts_with("fetched big.bin"));
            } else {
                assert!(stderr.contains("already being fetched"), "{stderr}");
                assert!(stdout.is_empty(), "{stdout}");
            }
        }
        assert!(landed >= 1, "one download lands: {outs:?}");
        assert!(std::fs::read(into.path().join("big.bin")).unwrap() == big);
        assert_eq!(files_in(into.path()), vec!["big.bin".to_string()]);
    }
}

/// While another download holds the part file's lock, `fetch` is refused at once: the
/// part file and the final name are untouched.
#[tokio::test]
async fn a_fetch_is_refused_while_another_download_holds_the_part_file() {
    let (n, _d) = node("127.0.0.1", &[("f.bin", &body(100_000))]).await;
    let into = tempfile::tempdir().unwrap();
    let part = part_of(into.path(), "f.bin");
    std::fs::write(&part, b"someone else's bytes").unwrap();
    let held = std::fs::File::open(&part).unwrap();
    held.lock().unwrap();
    let from = n.local_addr().to_string();
    let args = [
        "f.bin",
        "--from",
        &from,
        "-o",
        into.path().to_str().unwrap(),
    ];
    let out = fetch_cmd(&args).await;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("already being fetched"), "{stderr}");
    assert!(
        stderr.contains(part.to_str().unwrap()),
        "names the part file: {stderr}"
    );
    assert_eq!(std::fs::read(&part).unwrap(), b"someone else's bytes");
    assert!(!into.path().join("f.bin").exists());
    // Once it is released, the same command resumes or restarts, and verifies.
    drop(held);
    let out = fetch_cmd(&args).await;
    let stdout = succeeded(&out);
    assert!(stdout.contains("did not match the node's copy"), "{stdout}");
    assert_eq!(
        std::fs::read(into.path().join("f.bin")).unwrap(),
        body(100_000)
    );
}

/// Two trusted sessions ask one node to fetch the same file: while another download
/// holds the node's part file the node refuses; at once, the node's copy is whole, the
/// node serves the right bytes, and each session hears either the download or a clear
/// refusal.
#[tokio::test]
async fn two_sessions_fetching_into_one_node_leave_a_file_it_serves_verified() {
    let secret = b"two shells".to_vec();
    let big = body(4_000_000);
    let (owner, _do) = node("127.0.0.1", &[("movie.bin", &big)]).await;
    let (n, dir) = node_with("127.0.0.1", &[], |c| c.secret = Some(secret.clone())).await;
    within(n.join("127.0.0.1", owner.local_addr().port(), 0))
        .await
        .unwrap();
    let c = FilerClient::new(n.local_addr()).timeout(std::time::Duration::from_secs(30));
    let find = || {
        c.trusted(
            &secret,
            TrustedOp::Find {
                key: "movie.bin".into(),
            },
        )
    };
    // While another download holds the node's part file, the node refuses at once and
    // leaves it alone.
    let part = part_of(dir.path(), "movie.bin");
    std::fs::write(&part, b"another download's bytes").unwrap();
    let held = std::fs::File::open(&part).unwrap();
    held.lock().unwrap();
    let r = within(find()).await.unwrap();
    let said = String::from_utf8_lossy(r[r.len() - 1].payload()).into_owned();
    assert_eq!(r[r.len() - 1].kind, Kind::ERRO, "{said}");
    assert!(said.contains("already being fetched"), "{said}");
    assert_eq!(std::fs::read(&part).unwrap(), b"another download's bytes");
    assert!(!dir.path().join("movie.bin").exists());
    drop(held);
    std::fs::remove_file(&part).unwrap();
    // Two sessions at once.
    let (r1, r2) = within(async { tokio::join!(find(), find()) }).await;
    let mut fetched = 0;
    for r in [r1.unwrap(), r2.unwrap()] {
        let last = &r[r.len() - 1];
        let said = String::from_utf8_lossy(last.payload()).into_owned();
        if last.kind == Kind::REPL {
            assert!(said.contains("fetched movie.bin 4000000 bytes"), "{said}");
            fetched += 1;
        } else {
            assert!(
                said.contains("already being fetched") || said.contains("already there"),
                "{said}"
            );
        }
    }
    assert!(fetched >= 1);
    assert!(std::fs::read(dir.path().join("movie.bin")).unwrap() == big);
    assert_eq!(files_in(dir.path()), vec!["movie.bin".to_string()]);
    // The node serves what it holds, and a client verifies it on its own disk.
    let info = within(c.file_info("movie.bin")).await.unwrap();
    assert_eq!(info.sha256, <[u8; 32]>::from(Sha256::digest(&big)));
    let into = tempfile::tempdir().unwrap();
    let got = within(c.fetch("movie.bin", into.path(), |_, _| {}))
        .await
        .unwrap();
    assert!(got.verified);
    assert!(std::fs::read(&got.path).unwrap() == big);
}

/// `-o FILE` onto an existing file of other content is refused without `--force`,
/// and touches nothing; with `--force` only a verified download replaces it.
#[tokio::test]
async fn output_onto_an_existing_file_needs_force_and_touches_nothing_else() {
    let want = body(50_000);
    let (n, _d) = node("127.0.0.1", &[("notes.txt", &want)]).await;
    let from = n.local_addr().to_string();
    let into = tempfile::tempdir().unwrap();
    let important = into.path().join("important.txt");
    std::fs::write(&important, b"my own important words").unwrap();
    std::fs::write(into.path().join("notes.txt"), b"my own notes").unwrap();
    let o = important.to_str().unwrap();
    let out = fetch_cmd(&["notes.txt", "--from", &from, "-o", o]).await;
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("already exists with other content"),
        "{stderr}"
    );
    assert!(stderr.contains("--force"), "{stderr}");
    assert!(stderr.contains(o), "names the path: {stderr}");
    assert_eq!(
        std::fs::read(&important).unwrap(),
        b"my own important words"
    );
    assert_eq!(
        std::fs::read(into.path().join("notes.txt")).unwrap(),
        b"my own notes"
    );
    assert_eq!(files_in(into.path()), vec!["important.txt", "notes.txt"]);

    let out = fetch_cmd(&["notes.txt", "--from", &from, "-o", o, "--force"]).await;
    let stdout = succeeded(&out);
    assert!(stdout.contains("sha-256 verified on disk"), "{stdout}");
    assert_eq!(std::fs::read(&important).unwrap(), want);
    assert_eq!(
        std::fs::read(into.path().join("notes.txt")).unwrap(),
        b"my own notes",
        "the file of the same name was not touched"
    );
    assert_eq!(files_in(into.path()), vec!["important.txt", "notes.txt"]);
}

/// `-o` a new name beside the user's own file of the remote name: that file stays,
/// and the new one is the node's. Fetching again says it is already there.
#[tokio::test]
async fn output_to_a_new_name_leaves_the_file_of_the_remote_name_alone() {
    let want = body(40_000);
    let (n, _d) = node("127.0.0.1", &[("notes.txt", &want)]).await;
    let from = n.local_addr().to_string();
    let into = tempfile::tempdir().unwrap();
    std::fs::write(into.path().join("notes.txt"), b"mine").unwrap();
    let other = into.path().join("other.txt");
    let o = other.to_str().unwrap();
    let stdout = succeeded(&fetch_cmd(&["notes.txt", "--from", &from, "-o", o]).await);
    assert!(stdout.starts_with("fetched notes.txt (40000 bytes, sha-256 verified on disk)"));
    assert!(stdout.trim_end().ends_with(o), "{stdout}");
    assert_eq!(std::fs::read(&other).unwrap(), want);
    assert_eq!(
        std::fs::read(into.path().join("notes.txt")).unwrap(),
        b"mine"
    );
    assert_eq!(files_in(into.path()), vec!["notes.txt", "other.txt"]);
    let again = succeeded(&fetch_cmd(&["notes.txt", "--from", &from, "-o", o]).await);
    assert!(
        again.contains("already there (40000 bytes, sha-256 verified on disk)"),
        "{again}"
    );
    assert!(!again.contains("resumed"), "{again}");
}

/// `-o` a folder that does not exist, or a path through a file: a clear error that
/// names the path, and nothing created, moved or left behind.
#[tokio::test]
async fn output_to_a_missing_folder_fails_naming_it_and_creates_nothing() {
    let (n, _d) = node("127.0.0.1", &[("notes.txt", b"hello")]).await;
    let from = n.local_addr().to_string();
    let into = tempfile::tempdir().unwrap();
    std::fs::write(into.path().join("notes.txt"), b"mine").unwrap();
    let missing = format!("{}/newdir/", into.path().display());
    let through = format!("{}/notes.txt/x", into.path().display());
    for (o, says) in [
        (missing.as_str(), "no such folder"),
        (through.as_str(), "not a folder"),
    ] {
        let out = fetch_cmd(&["notes.txt", "--from", &from, "-o", o]).await;
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{stdout}");
        assert!(stderr.contains(says), "{o}: {stderr}");
        assert!(stderr.contains(&*into.path().to_string_lossy()), "{stderr}");
        assert_eq!(files_in(into.path()), vec!["notes.txt"]);
        assert_eq!(
            std::fs::read(into.path().join("notes.txt")).unwrap(),
            b"mine"
        );
    }
}

/// Names the protocol cannot carry are refused before anything is sent, with a reason
/// (not the node's "incorrect arguments"): nothing listens at the address given.
#[tokio::test]
async fn names_the_protocol_cannot_carry_are_refused_locally() {
    let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let nobody = free.local_addr().unwrap().to_string();
    drop(free);
    let into = tempfile::tempdir().unwrap();
    let o = into.path().to_str().unwrap();
    for (name, why) in [
        ("my notes.txt", "whitespace"),
        ("", "empty"),
        ("../up.txt", "relative path component"),
    ] {
        let out = fetch_cmd(&[name, "--from", &nobody, "-o", o]).await;
        let (_, stderr) = text(&out);
        assert!(!out.status.success());
        assert!(stderr.contains("cannot fetch"), "{name:?}: {stderr}");
        assert!(stderr.contains(why), "{name:?}: {stderr}");
        assert!(!stderr.contains("incorrect arguments"), "{stderr}");
        assert!(!stderr.contains("connect"), "nothing was sent: {stderr}");
    }
    assert!(files_in(into.path()).is_empty());
}

/// A part file that someone else truncates, or whose start someone else rewrites,
/// while the download runs never lands: the check on disk fails and the part file is
/// discarded. (Appending is covered in the store's unit tests, where the download's
/// own writes are known to have reached the file first.)
#[tokio::test]
async fn a_part_file_changed_during_the_download_never_lands() {
    let big = body(4_000_000);
    let (n, _d) = node("127.0.0.1", &[("big.bin", &big)]).await;
    let c = FilerClient::new(n.local_addr());
    for tamper in ["truncate", "rewrite"] {
        let into = tempfile::tempdir().unwrap();
        let part = part_of(into.path(), "big.bin");
        let mut done_once = false;
        let r = within(c.fetch("big.bin", into.path(), |done, _| {
            if done > 1_000_000 && !done_once {
                done_once = true;
                // A separate handle: it writes from offset 0, whatever the download's
                // position.
                let mut f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
                match tamper {
                    "truncate" => f.set_len(1000).unwrap(),
                    _ => std::io::Write::write_all(&mut f, &[0u8; 4096]).unwrap(),
                }
            }
        }))
        .await;
        assert!(done_once, "the download was changed under way");
        match r {
            Err(Error::Download(StoreError::Tampered { .. } | StoreError::HashMismatch { .. })) => {
            }
            other => panic!("{tamper}: {other:?}"),
        }
        assert!(files_in(into.path()).is_empty(), "{tamper}: nothing left");
    }
}

/// A part file whose bytes differ from the start of the node's copy is found before
/// the rest is fetched, and started over.
#[tokio::test]
async fn a_corrupt_part_file_is_found_before_the_rest_is_fetched() {
    let big = body(2_000_000);
    let (n, _d) = node("127.0.0.1", &[("big.bin", &big)]).await;
    let c = FilerClient::new(n.local_addr());
    let into = tempfile::tempdir().unwrap();
    let mut bad = big[..500_000].to_vec();
    bad[1234] ^= 0xff;
    std::fs::write(part_of(into.path(), "big.bin"), &bad).unwrap();
    let mut first = None;
    let got = within(c.fetch("big.bin", into.path(), |done, _| {
        first.get_or_insert(done);
    }))
    .await
    .unwrap();
    assert!(got.restarted);
    assert_eq!(first, Some(0), "the fetch started over from byte 0");
    assert_eq!(got.transferred, 2_000_000);
    assert!(std::fs::read(&got.path).unwrap() == big);
    // A good part file is resumed from its end.
    std::fs::remove_file(&got.path).unwrap();
    std::fs::write(part_of(into.path(), "big.bin"), &big[..700_000]).unwrap();
    let got = within(c.fetch("big.bin", into.path(), |_, _| {}))
        .await
        .unwrap();
    assert!(!got.restarted);
    assert_eq!((got.resumed_from, got.transferred), (700_000, 1_300_000));
}

/// A node that answers `FINF`, then sends half a file and goes quiet.
async fn stalling_node(body: Vec<u8>) -> (SocketAddr, tokio::sync::oneshot::Receiver<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = l.local_addr().unwrap();
    let (stalled, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let sha: [u8; 32] = Sha256::digest(&body).into();
        let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
        let mut stalled = Some(stalled);
        let mut held = Vec::new();
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut head = [0u8; 8];
            if s.read_exact(&mut head).await.is_err() {
                continue;
            }
            let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
            let mut payload = vec![0u8; len.min(4096)];
            let _ = s.read_exact(&mut payload).await;
            let reply = |text: &[u8]| {
                let mut v = b"REPL".to_vec();
                v.extend_from_slice(&(text.len() as u32).to_be_bytes());
                v.extend_from_slice(text);
                v
            };
            match &head[..4] {
                b"FINF" => {
                    let _ = s
                        .write_all(&reply(format!("{} {hex}", body.len()).as_bytes()))
                        .await;
                }
                b"FRNG" => {
                    let mut v = b"REPL".to_vec();
                    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
                    v.extend_from_slice(&body[..body.len() / 2]);
                    let _ = s.write_all(&v).await;
                    if let Some(tx) = stalled.take() {
                        let _ = tx.send(());
                    }
                    held.push(s); // and say nothing more
                }
                _ => {}
            }
        }
    });
    (at, rx)
}

/// Ctrl-C during a download stops it with a hint to rerun; the rerun resumes and
/// verifies, and nothing unverified is ever at the final name.
#[tokio::test]
async fn ctrl_c_during_a_fetch_says_how_to_resume() {
    let big = body(3_000_000);
    let (at, stalled) = stalling_node(big.clone()).await;
    let into = tempfile::tempdir().unwrap();
    let o = into.path().to_str().unwrap().to_string();
    let from = at.to_string();
    let (child, guard) =
        crate::cli::spawn_p2pipe(&["fetch", "big.bin", "--from", &from, "-o", &o], &[]).await;
    drop(guard);
    // The ranged get was asked for, so the fetch is under way (and its Ctrl-C handler
    // installed); the node has gone quiet.
    within(stalled).await.unwrap();
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let out = within(child.wait_with_output()).await.unwrap();
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        out.status.code().is_some(),
        "it exited, not killed by the signal"
    );
    assert!(
        stderr.contains("rerun the same command to resume"),
        "{stderr}"
    );
    assert!(!into.path().join("big.bin").exists());
    // The rerun, against a node that answers, ends verified.
    let (n, _d) = node("127.0.0.1", &[("big.bin", &big)]).await;
    let from = n.local_addr().to_string();
    let stdout = succeeded(&fetch_cmd(&["big.bin", "--from", &from, "-o", &o]).await);
    assert!(stdout.contains("sha-256 verified on disk"), "{stdout}");
    assert!(std::fs::read(into.path().join("big.bin")).unwrap() == big);
}
