//! The `p2pipe` binary, run as a user would.

use std::net::SocketAddr;
use std::process::Stdio;

use p2pipe::{Pipe, Proto};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::spawn_guard;
use crate::support::{ipv6_usable, succeeded, within};

#[tokio::test]
async fn echo_command_serves_both_protocols_and_families_and_stops_on_sigterm() {
    let no_rebind = spawn_guard().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_p2pipe"))
        .args(["echo", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run p2pipe");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let want = if ipv6_usable("echo_command") { 4 } else { 2 };
    let mut served: Vec<(Proto, SocketAddr)> = Vec::new();
    while served.len() < want {
        let line = within(lines.next_line()).await.unwrap().expect("a line");
        let rest = line.strip_prefix("echo serving ").expect(&line);
        let (proto, addr) = rest.split_once(" on ").expect(&line);
        let proto = if proto == "tcp" {
            Proto::Tcp
        } else {
            Proto::Udp
        };
        served.push((proto, addr.parse().expect(addr)));
    }
    // The child has run its own code by now, so the sockets it inherited
    // until exec are gone (see support::spawn_guard).
    drop(no_rebind);
    assert!(served.iter().any(|(p, a)| *p == Proto::Tcp && a.is_ipv4()));
    assert!(served.iter().any(|(p, a)| *p == Proto::Udp && a.is_ipv4()));
    for (proto, addr) in &served {
        let c = within(Pipe::connect(*proto, *addr)).await.unwrap();
        within(c.send(b"cli echo")).await.unwrap();
        assert_eq!(&within(c.recv()).await.unwrap().data[..], b"cli echo");
    }
    let pid = child.id().expect("running").to_string();
    let no_rebind = spawn_guard().await;
    let status = within(Command::new("kill").args(["-TERM", &pid]).status())
        .await
        .unwrap();
    drop(no_rebind);
    assert!(status.success());
    let last = within(lines.next_line())
        .await
        .unwrap()
        .expect("a last line");
    assert!(last.starts_with("echo stopped"), "{last}");
    let exit = within(child.wait()).await.unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn echo_command_refuses_a_bad_bind_address() {
    let _no_rebind = spawn_guard().await;
    let out = within(
        Command::new(env!("CARGO_BIN_EXE_p2pipe"))
            .args(["echo", "--bind", "not-an-ip", "--port", "0"])
            .output(),
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid --bind"), "{err}");
}

/// `p2pipe nat --json` against the in-crate STUN server on 127.0.0.1 and 127.0.0.2:
/// the host is not behind a NAT, so the answer is "open", with the design's JSON.
#[tokio::test]
async fn nat_command_reports_json_against_a_loopback_server() {
    use p2pipe::stun::server::TestServer;
    let server = within(TestServer::start(
        "127.0.0.1".parse().unwrap(),
        "127.0.0.2".parse().unwrap(),
    ))
    .await
    .unwrap();
    let out = within(
        Command::new(env!("CARGO_BIN_EXE_p2pipe"))
            .args(["nat", "--json", "--interface", "lo", "--stun"])
            .arg(server.primary().to_string())
            .env_remove("P2PIPE_STUN")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    succeeded(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["interface"], "lo");
    let v4 = &v["ipv4"];
    assert_eq!(v4["nat_type"], "open", "{v}");
    assert_eq!(v4["mapping"], "endpoint-independent");
    assert_eq!(v4["filtering"], "endpoint-independent");
    assert_eq!(v4["port_allocation"]["pattern"], "preserving");
    let external: std::net::SocketAddr = v4["external"].as_str().unwrap().parse().unwrap();
    assert_eq!(external.ip().to_string(), "127.0.0.1");
    assert!(v["ipv6"].is_null(), "no ipv6 server was given");
    assert!(server.requests() >= 3);
}

/// With no server answering, the report says so and still lists the interfaces.
#[tokio::test]
async fn nat_command_says_when_no_server_answers() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let out = within(
        Command::new(env!("CARGO_BIN_EXE_p2pipe"))
            .args(["nat", "--interface", "lo", "--stun"])
            .arg(silent.local_addr().unwrap().to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no stun server answered"), "{text}");
    assert!(text.contains("the interfaces are:"), "{text}");
    assert!(text.contains("lo 127.0.0.1"), "{text}");
}

/// The server list comes from $P2PIPE_STUN when no flag is given, and a flag wins.
#[tokio::test]
async fn nat_command_takes_servers_from_the_environment() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let out = within(
        Command::new(env!("CARGO_BIN_EXE_p2pipe"))
            .args(["nat", "--interface", "lo"])
            .env("P2PIPE_STUN", format!("{addr}, 127.0.0.1:9"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "stun servers from $P2PIPE_STUN: {addr} 127.0.0.1:9"
        )),
        "{text}"
    );
}

/// The server list comes from the config file named by $P2PIPE_STUN_FILE when neither
/// flag nor $P2PIPE_STUN is set; a `--stun` flag beats both.
#[tokio::test]
async fn nat_command_takes_servers_from_a_config_file_and_flags_win() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("p2pipe-stun-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("stun-servers");
    std::fs::write(&file, format!("# lab servers\n{addr}\n")).unwrap();
    let run = |flag: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_p2pipe"));
        cmd.args(["nat", "--interface", "lo"])
            .env_remove("P2PIPE_STUN")
            .env("P2PIPE_STUN_FILE", &file)
            .kill_on_drop(true);
        if let Some(f) = flag {
            cmd.args(["--stun", f]);
        }
        cmd.output()
    };
    let out = within(run(None)).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let from_file = format!("stun servers from {}: {addr}", file.display());
    assert!(text.contains(&from_file), "{text}");
    let out = within(run(Some(&addr))).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("stun servers from --stun: {addr}")),
        "{text}"
    );
    // A named file that cannot be read is a clear error.
    std::fs::remove_file(&file).unwrap();
    let out = within(run(None)).await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `p2pipe share` process and its output lines.
struct Share {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    id: String,
}

impl Share {
    async fn start(dir: &std::path::Path, extra: &[&str]) -> Share {
        let guard = spawn_guard().await;
        let mut child = Command::new(env!("CARGO_BIN_EXE_p2pipe"))
            .arg("share")
            .arg(dir)
            .args(["--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run p2pipe share");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = within(lines.next_line()).await.unwrap().expect("a line");
        drop(guard);
        let id = first
            .split(" as ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .expect(&first)
            .to_owned();
        // Wait until joining is over: the peers line.
        loop {
            let l = within(lines.next_line()).await.unwrap().expect("a line");
            if l.starts_with("peers:") {
                break;
            }
        }
        Share { child, lines, id }
    }

    async fn stop(mut self) {
        let pid = self.child.id().expect("running").to_string();
        let st = within(Command::new("kill").args(["-TERM", &pid]).status())
            .await
            .unwrap();
        assert!(st.success());
        let last = within(self.lines.next_line()).await.unwrap();
        assert_eq!(last.as_deref(), Some("left the network"));
        assert!(within(self.child.wait()).await.unwrap().success());
    }
}

async fn p2pipe(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let guard = spawn_guard().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_p2pipe"))
        .args(args)
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run p2pipe");
    drop(guard);
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        use tokio::io::AsyncWriteExt;
        within(input.write_all(text.as_bytes())).await.unwrap();
    }
    drop(input);
    within(child.wait_with_output()).await.unwrap()
}

/// Three nodes run from the command line, as the README shows: a search, a fetch that
/// resumes, and a shell session with trusted commands.
#[tokio::test]
async fn three_node_session_from_the_command_line() {
    let root = tempfile::tempdir().unwrap();
    let (da, db, dc) = (
        root.path().join("a"),
        root.path().join("b"),
        root.path().join("c"),
    );
    for d in [&da, &db, &dc] {
        std::fs::create_dir(d).unwrap();
    }
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(da.join("holiday.mkv"), &big).unwrap();
    std::fs::write(da.join("notes.txt"), b"remember the milk").unwrap();
    let secret = root.path().join("secret");
    std::fs::write(&secret, "open sesame\n").unwrap();
    let secret_arg = secret.to_str().unwrap();

    let a = Share::start(&da, &[]).await;
    let b = Share::start(&db, &["--join", &a.id]).await;
    let c = Share::start(&dc, &["--join", &b.id, "--secret-file", secret_arg]).await;

    let out = p2pipe(
        &[
            "search", "holiday", "--via", &c.id, "--count", "1", "--wait", "8",
        ],
        None,
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), format!("holiday.mkv {}", a.id), "{text}");

    // A fetch interrupted earlier left a part file: the rerun resumes it.
    let into = root.path().join("downloads");
    std::fs::create_dir(&into).unwrap();
    std::fs::write(into.join(".holiday.mkv.p2pipe-part"), &big[..700_000]).unwrap();
    let out = p2pipe(
        &[
            "fetch",
            "holiday.mkv",
            "--from",
            &a.id,
            "-o",
            into.to_str().unwrap(),
        ],
        None,
    )
    .await;
    let text = succeeded(&out);
    assert!(
        text.contains("sha-256 verified, resumed: 1300000 bytes transferred"),
        "{text}"
    );
    assert_eq!(std::fs::read(into.join("holiday.mkv")).unwrap(), big);

    let session = "peers\nsearch notes\nfetch notes.txt\nfiles\nadd-peer 127.0.0.1:9 127.0.0.1 9\nremove-peer 127.0.0.1:9\nquit\n";
    let out = p2pipe(
        &["shell", &c.id, "--secret-file", secret_arg],
        Some(session),
    )
    .await;
    let text = succeeded(&out);
    assert!(text.contains("2 peers"), "{text}");
    assert!(text.contains(&format!("notes.txt  at {}", a.id)), "{text}");
    assert!(
        text.contains(&format!("\nfetched notes.txt 17 bytes from {}", a.id)),
        "{text}"
    );
    assert!(
        text.contains(&format!("notes.txt  17 bytes  at {}", c.id)),
        "{text}"
    );
    assert!(text.contains("\npeer added: 127.0.0.1:9"), "{text}");
    assert!(text.contains("\npeer removed: 127.0.0.1:9"), "{text}");
    // The protocol's tags stay on the wire; the shell does not show them.
    for tag in ["Find:", "Join:", "Quit:"] {
        assert!(!text.contains(tag), "{text}");
    }
    assert_eq!(
        std::fs::read(dc.join("notes.txt")).unwrap(),
        b"remember the milk"
    );

    // Without the secret the trusted commands are refused, and nothing changes.
    let out = p2pipe(
        &["shell", &c.id],
        Some("add-peer 127.0.0.1:9 127.0.0.1 9\npeers\n"),
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs the node's secret"), "{err}");
    assert!(text.contains("2 peers"), "{text}");
    assert!(!out.status.success(), "a piped shell whose command failed");

    for s in [c, b, a] {
        s.stop().await;
    }
}

// ---- `p2pipe shell` and `p2pipe search` against a node in this process ----

/// A node in this process sharing a fresh folder with `files`, on `ip`.
async fn filer_node(
    ip: std::net::IpAddr,
    files: &[(&str, &[u8])],
    secret: Option<&[u8]>,
) -> (p2pipe::filer::node::FilerNode, tempfile::TempDir) {
    use p2pipe::filer::node::{FilerNode, NodeConfig};
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in files {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    let mut cfg = NodeConfig::new(dir.path());
    cfg.stabilize_every = None;
    cfg.secret = secret.map(<[u8]>::to_vec);
    let node = within(FilerNode::start(SocketAddr::new(ip, 0), cfg))
        .await
        .unwrap();
    (node, dir)
}

/// Runs `p2pipe` with `stdin` as its input, its history under `state`.
async fn p2pipe_with_state(
    args: &[&str],
    stdin: &str,
    state: &std::path::Path,
) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let guard = spawn_guard().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_p2pipe"))
        .args(args)
        .env("XDG_STATE_HOME", state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run p2pipe");
    drop(guard);
    let mut input = child.stdin.take().unwrap();
    within(input.write_all(stdin.as_bytes())).await.unwrap();
    drop(input);
    within(child.wait_with_output()).await.unwrap()
}

/// Ctrl-C during a search that waits cancels that search only: the shell says so,
/// answers the next command, exits with 0 at `quit`, and saves its history.
#[tokio::test]
async fn ctrl_c_cancels_the_running_shell_command_and_the_shell_carries_on() {
    use tokio::io::AsyncWriteExt;
    let (node, _d) = filer_node(crate::support::V4, &[], None).await;
    let state = tempfile::tempdir().unwrap();
    let guard = spawn_guard().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_p2pipe"))
        .arg("shell")
        .arg(node.local_addr().to_string())
        .args(["--wait", "60"])
        .env("XDG_STATE_HOME", state.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run p2pipe shell");
    let mut input = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = within(lines.next_line()).await.unwrap().expect("a line");
    drop(guard);
    assert!(first.starts_with("connected to"), "{first}");
    within(input.write_all(b"search something-absent\n"))
        .await
        .unwrap();
    // The search is running once the node has its query.
    within(async {
        while node.stats().queries_received == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let pid = child.id().expect("running") as libc::pid_t;
    // SAFETY: kill has no memory effects; pid is our own child, still running.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let line = within(lines.next_line()).await.unwrap();
    assert_eq!(line.as_deref(), Some("cancelled"));
    within(input.write_all(b"peers\nquit\n")).await.unwrap();
    drop(input);
    let line = within(lines.next_line()).await.unwrap();
    assert_eq!(line.as_deref(), Some("0 peers"));
    assert_eq!(within(lines.next_line()).await.unwrap(), None);
    let out = within(child.wait_with_output()).await.unwrap();
    assert!(
        out.status.success(),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let history =
        std::fs::read_to_string(state.path().join("p2pipe").join("shell-history")).unwrap();
    for command in ["search something-absent", "peers", "quit"] {
        assert!(history.lines().any(|l| l == command), "{history}");
    }
}

/// Ctrl-C while a piped shell waits for its next line, before any command ran, does
/// not end it: the shell reads on, and `quit` ends it with 0 and its history saved.
#[tokio::test]
async fn ctrl_c_at_a_piped_shells_prompt_does_not_end_the_shell() {
    use tokio::io::AsyncWriteExt;
    let (node, _d) = filer_node(crate::support::V4, &[], None).await;
    let state = tempfile::tempdir().unwrap();
    let guard = spawn_guard().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_p2pipe"))
        .arg("shell")
        .arg(node.local_addr().to_string())
        .env("XDG_STATE_HOME", state.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run p2pipe shell");
    let mut input = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The shell catches Ctrl-C before it says it is connected.
    let first = within(lines.next_line()).await.unwrap().expect("a line");
    drop(guard);
    assert!(first.starts_with("connected to"), "{first}");
    let pid = child.id().expect("running") as libc::pid_t;
    // SAFETY: kill has no memory effects; pid is our own child, still running.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    within(input.write_all(b"quit\n")).await.unwrap();
    drop(input);
    assert_eq!(within(lines.next_line()).await.unwrap(), None);
    let out = within(child.wait_with_output()).await.unwrap();
    assert!(
        out.status.success(),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let history =
        std::fs::read_to_string(state.path().join("p2pipe").join("shell-history")).unwrap();
    assert!(history.lines().any(|l| l == "quit"), "{history}");
}

/// Results on stdout, errors on stderr; the reply texts without their protocol tags and
/// with singular counts; `help` lists `exit`; and a piped shell whose command failed
/// exits non-zero, still saving its history.
#[tokio::test]
async fn shell_prints_errors_on_stderr_and_a_piped_shell_with_a_failed_command_exits_non_zero() {
    let secret = b"shell secret";
    let (peer, _dp) = filer_node(crate::support::V4, &[], None).await;
    let (node, _d) = filer_node(crate::support::V4, &[("a.txt", b"abc")], Some(secret)).await;
    within(node.join("127.0.0.1", peer.local_addr().port(), 0))
        .await
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let secret_file = state.path().join("secret");
    std::fs::write(&secret_file, secret).unwrap();
    let at = node.local_addr().to_string();
    let args = ["shell", &at, "--secret-file", secret_file.to_str().unwrap()];

    let session = "help\npeers\nfiles\nadd-peer 127.0.0.1:9 127.0.0.1 9\nexit\n";
    let out = p2pipe_with_state(&args, session, state.path()).await;
    let text = succeeded(&out);
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("exit ")),
        "{text}"
    );
    assert!(text.lines().any(|l| l == "1 peer"), "{text}");
    assert!(text.lines().any(|l| l == "1 file"), "{text}");
    assert!(
        text.lines().any(|l| l == "peer added: 127.0.0.1:9"),
        "{text}"
    );
    assert!(!text.contains("Join:"), "{text}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let session = "frobnicate\npeers\nadd-peer 127.0.0.1:9 127.0.0.1 9\n";
    let out = p2pipe_with_state(&args, session, state.path()).await;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text} {err}");
    assert!(text.lines().any(|l| l == "2 peers"), "{text}");
    assert!(!text.contains("error"), "{text}");
    assert!(err.contains("error: unknown command frobnicate"), "{err}");
    assert!(
        err.contains("error: peer already inserted 127.0.0.1:9"),
        "{err}"
    );
    assert!(err.contains("p2pipe: 2 commands failed"), "{err}");
    // Ended by the end of its input after the failures: the history is saved.
    let history =
        std::fs::read_to_string(state.path().join("p2pipe").join("shell-history")).unwrap();
    for command in ["help", "exit", "frobnicate", "peers"] {
        assert!(history.lines().any(|l| l == command), "{history}");
    }
}

/// A search that is answered stops soon after its answer, long before `--wait`, over
/// IPv4 and IPv6.
#[tokio::test]
async fn search_stops_once_answers_stop_coming_instead_of_waiting_the_whole_time() {
    for ip in crate::support::loopbacks("search_stops_early") {
        let (node, _d) = filer_node(ip, &[("song.ogg", b"la la la")], None).await;
        let at = node.local_addr().to_string();
        let start = std::time::Instant::now();
        let out = p2pipe(&["search", "song", "--via", &at, "--wait", "20"], None).await;
        let took = start.elapsed();
        let text = succeeded(&out);
        assert_eq!(text.trim(), format!("song.ogg {}", node.id()), "{text}");
        assert!(took < std::time::Duration::from_secs(10), "{took:?} ({ip})");
    }
}

/// A search that no node answers fails: the reason once on stderr, nothing on stdout.
#[tokio::test]
async fn search_without_an_answer_fails_with_the_reason_on_stderr_only() {
    let (node, _d) = filer_node(crate::support::V4, &[("song.ogg", b"la")], None).await;
    let at = node.local_addr().to_string();
    let out = p2pipe(
        &["search", "nothing-here", "--via", &at, "--wait", "0.5"],
        None,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("no answer for nothing-here within 0.5 s")
            .count(),
        1,
        "{err}"
    );
}
