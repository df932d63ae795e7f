//! Files across NATs, as a user fetches and searches them: `p2pipe share --signal ...`
//! in one peer's namespace prints its signed address, and `p2pipe fetch NAME --from
//! p2pipe1:...`, `p2pipe search KEY --via p2pipe1:...` and the shell in the other's reach
//! the file node through a tunnel over the P2P path, across a symmetric NAT and a
//! port-restricted cone NAT, with the lab's broker, STUN and TURN.

use std::path::Path;

use super::p2p::Listener;
use super::{lab_or_skip, Lab, NatKind, LAB_T};

/// The options of the P2P side of a command in peer `n`'s namespace: the lab's broker,
/// STUN and TURN, a key file of its own, its IPv4 address only.
fn p2p_args(lab: &Lab, dir: &Path, who: &str, n: usize) -> Vec<String> {
    let t = lab.turn();
    vec![
        "--bind".into(),
        lab.peer_ip(n).to_string(),
        "--signal".into(),
        format!("mqtt://{}", lab.broker()),
        "--stun".into(),
        lab.stun_primary().to_string(),
        "--turn".into(),
        format!("turn://{}:{}@{}", t.user, t.password, t.udp),
        "--key-file".into(),
        dir.join(format!("{who}{n}.key")).display().to_string(),
    ]
}

/// Starts `p2pipe share FOLDER` with a P2P node in peer `n`'s namespace, and waits for
/// its signed address.
fn sharer(lab: &Lab, n: usize, folder: &Path, keys: &Path) -> Listener {
    let mut args = vec![
        "share".to_string(),
        folder.display().to_string(),
        "--port".into(),
        "0".into(),
    ];
    args.extend(p2p_args(lab, keys, "sharer", n));
    Listener::run(lab, n, &args, "p2p address ")
}

/// Bytes that are not all alike, so that a misplaced piece shows.
fn content(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The strategy named in fetch's "connected to ... by STRATEGY over tcp" line.
fn strategy_of(stderr: &str) -> Option<String> {
    let line = stderr.lines().find(|l| l.starts_with("connected to "))?;
    let (_, rest) = line.split_once(" by ")?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// A file is fetched and verified both ways between a peer behind a symmetric NAT
/// and one behind a port-restricted cone NAT: the sharer's signed address is all the
/// fetcher is given. Punching cannot cross a symmetric NAT towards a port-restricted
/// one, so the relay carries the tunnel; the fetch says so, and the sharer logs it.
#[test]
fn a_file_is_fetched_and_verified_across_a_symmetric_and_a_port_restricted_nat_both_ways() {
    lab_or_skip!();
    let lab = Lab::builder()
        .peers(NatKind::Symmetric, NatKind::PortRestrictedCone)
        .build();
    let keys = tempfile::tempdir().expect("temp dir");
    for (sharer_n, fetcher_n, len) in [(2, 1, 3 * 1024 * 1024 + 17), (1, 2, 700_001)] {
        let at = format!("sharer behind {:?}", lab.kind(sharer_n));
        let shared = tempfile::tempdir().expect("temp dir");
        let out = tempfile::tempdir().expect("temp dir");
        let original = content(len, sharer_n as u32 * 7919);
        std::fs::write(shared.path().join("data.bin"), &original).unwrap();
        let sharer = sharer(&lab, sharer_n, shared.path(), keys.path());
        assert!(sharer.addr.starts_with("p2pipe1:"), "{at}: {}", sharer.addr);
        let mut args: Vec<String> = vec![
            "fetch".into(),
            "data.bin".into(),
            "--from".into(),
            sharer.addr.clone(),
            "-o".into(),
            out.path().display().to_string(),
        ];
        args.extend(p2p_args(&lab, keys.path(), "fetcher", fetcher_n));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let exec = lab.exec_for(
            lab.ns_peer(fetcher_n),
            LAB_T,
            env!("CARGO_BIN_EXE_p2pipe"),
            &args,
        );
        let (stdout, stderr) = (exec.stdout(), exec.stderr());
        assert!(exec.success(), "{at}: fetch failed\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("sha-256 verified on disk"),
            "{at}: {stdout}"
        );
        let got = std::fs::read(out.path().join("data.bin")).expect("the file is there");
        assert_eq!(got.len(), original.len(), "{at}");
        assert!(got == original, "{at}: the bytes differ");
        let strategy = strategy_of(&stderr);
        assert_eq!(strategy.as_deref(), Some("relay"), "{at}: {stderr}");
        let (status, log) = sharer.stop();
        assert!(status.success(), "{at}: {status}: {log}");
        assert!(
            log.contains("p2p peer arrived over tcp by relay"),
            "{at}: the sharer did not log the relayed arrival:\n{log}"
        );
        assert!(log.contains("file served"), "{at}: {log}");
    }
}

/// `p2pipe search --via p2pipe1:...` and `p2pipe shell p2pipe1:...` from behind a
/// port-restricted cone NAT, to a sharer behind a symmetric NAT whose neighbour (a
/// plain node in the sharer's network, which the searcher cannot reach) has the file:
/// the sharer searches on the searcher's behalf and the answer comes back over the
/// relayed path; the shell lists the sharer's peers, searches, and has the sharer fetch
/// the neighbour's file into its folder.
#[test]
fn search_and_the_shell_reach_a_sharer_behind_a_symmetric_nat_by_its_signed_address() {
    lab_or_skip!();
    let lab = Lab::builder()
        .peers(NatKind::Symmetric, NatKind::PortRestrictedCone)
        .build();
    let (sharer_n, searcher_n) = (1, 2);
    let keys = tempfile::tempdir().expect("temp dir");
    let (shared, near) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(shared.path().join("own.txt"), b"the sharer's own").unwrap();
    let song = content(250_000, 31);
    std::fs::write(near.path().join("song-near.mp3"), &song).unwrap();
    let secret = keys.path().join("secret");
    std::fs::write(&secret, "open sesame\n").unwrap();
    let ip = lab.peer_ip(sharer_n).to_string();
    let mut args: Vec<String> = ["share", &shared.path().display().to_string()]
        .map(String::from)
        .to_vec();
    args.extend(["--port", "7102", "--secret-file"].map(String::from));
    args.push(secret.display().to_string());
    args.push("--trust-remote".into());
    args.extend(p2p_args(&lab, keys.path(), "sharer", sharer_n));
    let sharer = Listener::run(&lab, sharer_n, &args, "p2p address ");
    // The neighbour joins the sharer, so each has the other in its table once it says so.
    let near_args: Vec<String> = [
        "share",
        &near.path().display().to_string(),
        "--bind",
        &ip,
        "--port",
        "7101",
        "--no-stun",
        "--join",
        &format!("{ip}:7102"),
    ]
    .map(String::from)
    .to_vec();
    let neighbour = Listener::run(&lab, sharer_n, &near_args, "joined through ");
    let neighbour_id = format!("{ip}:7101");

    let mut args: Vec<String> = ["search", "song", "--via", &sharer.addr, "--wait", "10"]
        .map(String::from)
        .to_vec();
    args.extend(p2p_args(&lab, keys.path(), "searcher", searcher_n));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ns = lab.ns_peer(searcher_n);
    let exec = lab.exec_for(ns, LAB_T, env!("CARGO_BIN_EXE_p2pipe"), &args);
    let (stdout, stderr) = (exec.stdout(), exec.stderr());
    assert!(exec.success(), "search failed\n{stdout}\n{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("song-near.mp3 {neighbour_id}"),
        "{stderr}"
    );
    assert_eq!(strategy_of(&stderr).as_deref(), Some("relay"), "{stderr}");

    let mut args: Vec<String> = ["shell", &sharer.addr, "--secret-file"]
        .map(String::from)
        .to_vec();
    args.push(secret.display().to_string());
    args.extend(p2p_args(&lab, keys.path(), "searcher", searcher_n));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let script = "peers\nsearch song\nfetch song-near\nfiles\n";
    let bin = env!("CARGO_BIN_EXE_p2pipe");
    let exec = lab.exec_with_input(ns, LAB_T, bin, &args, Some(script));
    let (stdout, stderr) = (exec.stdout(), exec.stderr());
    assert!(exec.success(), "shell failed\n{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("  {neighbour_id} (")), "{stdout}");
    assert!(
        stdout.contains(&format!("song-near.mp3  at {neighbour_id}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "song-near.mp3  {} bytes  at {ip}:7102",
            song.len()
        )),
        "the sharer now shares the neighbour's file: {stdout}"
    );
    assert!(std::fs::read(shared.path().join("song-near.mp3")).unwrap() == song);
    let (status, log) = neighbour.stop();
    assert!(status.success(), "{status}: {log}");
    let (status, log) = sharer.stop();
    assert!(status.success(), "{status}: {log}");
    assert!(
        log.contains("search for an asker answered"),
        "the sharer did not log the search it ran: {log}"
    );
}
