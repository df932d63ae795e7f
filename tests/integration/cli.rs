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
    use crate::stun::server::TestServer;
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

/// With no server answering, the report says so, still lists the interfaces, and the
/// command fails.
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
    assert!(!out.status.success());
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
            .args(["--bind", "127.0.0.1", "--port", "0", "--no-stun"])
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
        // Wait until joining is over: the last line of the start-up.
        loop {
            let l = within(lines.next_line()).await.unwrap().expect("a line");
            if l.starts_with("press Ctrl-C") {
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

/// Runs `p2pipe ARGS` to its end, with `stdin` as its input (closed after it). HOME is
/// the temporary folder, so nothing of the user's is read or written.
pub async fn p2pipe(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    p2pipe_env(args, stdin, &[]).await
}

/// As [`p2pipe`], with `env` set as well.
pub async fn p2pipe_env(
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &std::ffi::OsStr)],
) -> std::process::Output {
    let (mut child, guard) = spawn_p2pipe(args, env).await;
    drop(guard);
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        use tokio::io::AsyncWriteExt;
        within(input.write_all(text.as_bytes())).await.unwrap();
    }
    drop(input);
    within(child.wait_with_output()).await.unwrap()
}

/// Starts `p2pipe ARGS` with piped stdin, stdout and stderr, HOME the temporary folder
/// and `env` set. It returns the spawn guard too: hold it until the child has shown it
/// runs (see `support::spawn_guard`).
pub async fn spawn_p2pipe(
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> (
    tokio::process::Child,
    tokio::sync::RwLockWriteGuard<'static, ()>,
) {
    let guard = spawn_guard().await;
    let child = Command::new(env!("CARGO_BIN_EXE_p2pipe"))
        .args(args)
        .env("HOME", std::env::temp_dir())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run p2pipe");
    (child, guard)
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
        text.contains(
            "sha-256 verified on disk; resumed at byte 700000, 1300000 bytes transferred"
        ),
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
) -> (p2pipe::filer::FilerNode, tempfile::TempDir) {
    crate::filer::node_with(&ip.to_string(), files, |c| {
        c.secret = secret.map(<[u8]>::to_vec)
    })
    .await
}

/// Runs `p2pipe` with `stdin` as its input, its history under `state`.
async fn p2pipe_with_state(
    args: &[&str],
    stdin: &str,
    state: &std::path::Path,
) -> std::process::Output {
    p2pipe_env(args, Some(stdin), &[("XDG_STATE_HOME", state.as_os_str())]).await
}

/// Ctrl-C during a search that waits cancels that search only: the shell says so,
/// answers the next command, exits with 0 at `quit`, and saves its history.
#[tokio::test]
async fn ctrl_c_cancels_the_running_shell_command_and_the_shell_carries_on() {
    use tokio::io::AsyncWriteExt;
    let (node, _d) = filer_node(crate::support::V4, &[], None).await;
    let state = tempfile::tempdir().unwrap();
    let at = node.local_addr().to_string();
    let state_env = [("XDG_STATE_HOME", state.path().as_os_str())];
    let (mut child, guard) = spawn_p2pipe(&["shell", &at, "--wait", "60"], &state_env).await;
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
    let at = node.local_addr().to_string();
    let state_env = [("XDG_STATE_HOME", state.path().as_os_str())];
    let (mut child, guard) = spawn_p2pipe(&["shell", &at], &state_env).await;
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

// ---------------------------------------------------------------------------------------
// `p2pipe share` for a newcomer: the default folder, every argument checked before the
// port is bound, a clear error for a port in use, every interface by default, the start-up
// report (files skipped, plurals, the external address) and the info logs of a node.
// ---------------------------------------------------------------------------------------

mod newcomer {
    use std::path::Path;
    use std::process::Stdio;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
    use tokio::process::{Child, ChildStderr, ChildStdout, Command};

    use crate::support::{ipv6_usable, spawn_guard, succeeded, within};

    /// A running `p2pipe share` with `HOME` set, its start-up lines (up to the "press
    /// Ctrl-C" line), and its stdout and stderr to read on.
    struct Node {
        child: Child,
        out: Lines<BufReader<ChildStdout>>,
        err: Lines<BufReader<ChildStderr>>,
        startup: Vec<String>,
    }

    impl Node {
        async fn start(home: &Path, args: &[&str]) -> Node {
            let guard = spawn_guard().await;
            let mut child = Command::new(env!("CARGO_BIN_EXE_p2pipe"))
                .arg("share")
                .args(args)
                .env("HOME", home)
                .env_remove("RUST_LOG")
                .env_remove("P2PIPE_STUN")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("run p2pipe share");
            let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
            let err = BufReader::new(child.stderr.take().unwrap()).lines();
            let mut startup = Vec::new();
            // Held until the child has printed: it runs its own code by then.
            let mut guard = Some(guard);
            loop {
                let l = within(out.next_line())
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("share ended during start-up: {startup:?}"));
                guard.take();
                let last = l.starts_with("press Ctrl-C");
                startup.push(l);
                if last {
                    break;
                }
            }
            Node {
                child,
                out,
                err,
                startup,
            }
        }

        /// The start-up line that starts with `prefix`.
        fn line(&self, prefix: &str) -> &str {
            self.startup
                .iter()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no line {prefix:?} in {:?}", self.startup))
        }

        /// The node's id, from "sharing DIR as ID (...)".
        fn id(&self) -> String {
            let l = self.line("sharing ");
            let after = l.rsplit(" as ").next().expect(l);
            after.split(' ').next().expect(l).to_owned()
        }

        /// The next log line (stderr) that `want` accepts.
        async fn log(&mut self, want: impl Fn(&str) -> bool) -> String {
            loop {
                let l = within(self.err.next_line())
                    .await
                    .unwrap()
                    .expect("the node logs on");
                if want(&l) {
                    return l;
                }
            }
        }

        /// The next line on stdout that `want` accepts, looking at the start-up first.
        async fn out(&mut self, want: impl Fn(&str) -> bool) -> String {
            if let Some(l) = self.startup.iter().find(|l| want(l)) {
                return l.clone();
            }
            loop {
                let l = within(self.out.next_line())
                    .await
                    .unwrap()
                    .expect("the node prints on");
                if want(&l) {
                    return l;
                }
            }
        }

        async fn stop(mut self) {
            let pid = self.child.id().expect("running").to_string();
            let st = within(Command::new("kill").args(["-TERM", &pid]).status())
                .await
                .unwrap();
            assert!(st.success());
            let mut rest = Vec::new();
            while let Some(l) = within(self.out.next_line()).await.unwrap() {
                rest.push(l);
            }
            assert_eq!(rest.last().map(String::as_str), Some("left the network"));
            assert!(within(self.child.wait()).await.unwrap().success());
        }
    }

    /// Runs `p2pipe ARGS` with `HOME` set, expecting it to end by itself.
    async fn p2pipe_exits(home: &Path, args: &[&str]) -> std::process::Output {
        let _guard = spawn_guard().await;
        within(
            Command::new(env!("CARGO_BIN_EXE_p2pipe"))
                .args(args)
                .env("HOME", home)
                .env_remove("P2PIPE_STUN")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap()
    }

    /// Runs `p2pipe share ARGS` with `HOME` set, expecting it to end by itself.
    async fn share_exits(home: &Path, args: &[&str]) -> std::process::Output {
        let mut all = vec!["share"];
        all.extend(args);
        p2pipe_exits(home, &all).await
    }

    /// A NAME request: the id a node answers with.
    async fn name_of(at: std::net::SocketAddr) -> String {
        let mut s = within(tokio::net::TcpStream::connect(at)).await.unwrap();
        within(s.write_all(b"NAME\0\0\0\0")).await.unwrap();
        let mut out = Vec::new();
        within(s.read_to_end(&mut out)).await.unwrap();
        assert_eq!(&out[..4], b"REPL", "{out:?}");
        String::from_utf8(out[8..].to_vec()).unwrap()
    }

    fn folder_with(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(d.path().join(f), b"hello").unwrap();
        }
        d
    }

    #[tokio::test]
    async fn share_without_a_folder_creates_and_shares_home_public() {
        let home = tempfile::tempdir().unwrap();
        let public = home.path().join("Public");
        let local = ["--bind", "127.0.0.1", "--port", "0", "--no-stun"];
        let n = Node::start(home.path(), &local).await;
        assert_eq!(
            n.startup[0],
            format!("created {} (empty)", public.display())
        );
        let sharing = format!("sharing {} as 127.0.0.1:", public.display());
        assert!(n.startup[1].starts_with(&sharing), "{:?}", n.startup);
        assert!(n.startup[1].ends_with("(0 files)"), "{:?}", n.startup);
        assert!(public.is_dir());
        n.stop().await;
        // The second time it is there: shared as it is, and "1 file" is singular.
        std::fs::write(public.join("a.txt"), b"a").unwrap();
        let n = Node::start(home.path(), &local).await;
        assert!(n.startup[0].starts_with(&sharing), "{:?}", n.startup);
        assert!(n.startup[0].ends_with("(1 file)"), "{:?}", n.startup);
        n.stop().await;
    }

    #[tokio::test]
    async fn share_of_a_missing_folder_fails_naming_it_with_a_hint() {
        let home = tempfile::tempdir().unwrap();
        let missing = home.path().join("no").join("such");
        let out = share_exits(
            home.path(),
            &[missing.to_str().unwrap(), "--port", "0", "--no-stun"],
        )
        .await;
        assert!(!out.status.success());
        assert!(out.stdout.is_empty(), "{:?}", out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "no folder {}: create it, or run \"p2pipe share\" to share ~/Public",
                missing.display()
            )),
            "{err}"
        );
        assert!(!home.path().join("Public").exists(), "nothing created");
    }

    /// Each bad argument is refused before the port is bound: with the port held by the
    /// test, the error is the argument's, not "cannot listen", and nothing is printed.
    #[tokio::test]
    async fn share_checks_every_argument_before_binding_its_port() {
        let home = tempfile::tempdir().unwrap();
        let dir = folder_with(&["a.txt"]);
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port().to_string();
        let missing = home.path().join("missing-secret");
        let missing = missing.to_str().unwrap();
        let no_dir = home.path().join("no-dir");
        let no_dir = no_dir.to_str().unwrap();
        let d = dir.path().to_str().unwrap();
        let cases: [(&[&str], String); 6] = [
            (&[d, "--join", "foo"], "invalid --join foo: ".into()),
            (
                &[d, "--join", "127.0.0.1:9", "--join", "[::1"],
                "invalid --join [::1: ".into(),
            ),
            (
                &[d, "--max-peers", "0"],
                "--max-peers must be at least 1".into(),
            ),
            (
                &[d, "--secret-file", missing],
                format!("cannot read secret file {missing}"),
            ),
            (&[d, "--advertise", "a b"], "invalid --advertise a b".into()),
            (&[no_dir], format!("no folder {no_dir}")),
        ];
        for (args, want) in cases {
            let mut all = args.to_vec();
            all.extend(["--bind", "127.0.0.1", "--port", &port, "--no-stun"]);
            let out = share_exits(home.path(), &all).await;
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?}: {err}");
            assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
            assert!(err.contains(&want), "{args:?}: {err}");
            assert!(
                !err.contains("cannot listen"),
                "{args:?} bound first: {err}"
            );
        }
        drop(held);
    }

    /// A port in use is an error naming the address, on a given address and on the
    /// default (every interface).
    #[tokio::test]
    async fn share_on_a_port_in_use_says_which_address_it_cannot_listen_on() {
        let home = tempfile::tempdir().unwrap();
        let dir = folder_with(&[]);
        let d = dir.path().to_str().unwrap();
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port().to_string();
        let out = share_exits(
            home.path(),
            &[d, "--bind", "127.0.0.1", "--port", &port, "--no-stun"],
        )
        .await;
        assert!(!out.status.success());
        assert!(out.stdout.is_empty(), "{:?}", out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "cannot listen on 127.0.0.1:{port}: address in use"
            )),
            "{err}"
        );
        assert!(!err.contains("local file"), "{err}");
        // Every interface includes 127.0.0.1: [::] (dual-stack) or 0.0.0.0 is taken too.
        let out = share_exits(home.path(), &[d, "--port", &port, "--no-stun"]).await;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot listen on "), "{err}");
        assert!(err.contains(&format!(":{port}: address in use")), "{err}");
        drop(held);
    }

    /// By default the node listens on every interface, is reached over 127.0.0.1 (and
    /// ::1, dual-stack) alike, and its id is an address others can use, not a wildcard.
    #[tokio::test]
    async fn share_listens_on_every_interface_by_default_with_an_id_others_can_use() {
        let home = tempfile::tempdir().unwrap();
        let dir = folder_with(&[]);
        let n = Node::start(
            home.path(),
            &[dir.path().to_str().unwrap(), "--port", "0", "--no-stun"],
        )
        .await;
        let id = n.id();
        let (host, port) = id.rsplit_once(':').expect(&id);
        let host = host.trim_matches(|c| c == '[' || c == ']');
        let ip: std::net::IpAddr = host.parse().expect(host);
        assert!(!ip.is_unspecified(), "{id}");
        let listening = n.line("listening on ");
        let any = if ipv6_usable("share_listens_on_every_interface") {
            "[::]"
        } else {
            "0.0.0.0"
        };
        assert!(
            listening.starts_with(&format!(
                "listening on {any}:{port} (every interface); others can reach it at {id}"
            )),
            "{listening}"
        );
        let port: u16 = port.parse().unwrap();
        assert_eq!(name_of(([127, 0, 0, 1], port).into()).await, id);
        if any == "[::]" {
            let v6: std::net::SocketAddr = format!("[::1]:{port}").parse().unwrap();
            assert_eq!(name_of(v6).await, id);
        }
        n.stop().await;
    }

    #[tokio::test]
    async fn share_says_which_files_it_skips_and_why() {
        let home = tempfile::tempdir().unwrap();
        let dir = folder_with(&["a.txt", "my notes.txt", ".hidden"]);
        let n = Node::start(
            home.path(),
            &[
                dir.path().to_str().unwrap(),
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--no-stun",
            ],
        )
        .await;
        assert!(n.line("sharing ").ends_with("(1 file)"), "{:?}", n.startup);
        assert_eq!(
            n.line("skipped "),
            "skipped 1 file: names the protocol cannot carry (whitespace or control characters): 'my notes.txt'; hidden files and part files are not shared"
        );
        assert_eq!(
            n.line("listening on "),
            format!("listening on {}: only this machine can reach it", n.id())
        );
        n.stop().await;
    }

    /// The external address comes from the STUN server given (here on loopback), in the
    /// background.
    #[tokio::test]
    async fn share_prints_the_external_address_a_stun_server_sees() {
        use crate::stun::server::TestServer;
        let server = within(TestServer::start(
            "127.0.0.1".parse().unwrap(),
            "127.0.0.2".parse().unwrap(),
        ))
        .await
        .unwrap();
        let home = tempfile::tempdir().unwrap();
        let dir = folder_with(&[]);
        let stun = server.primary().to_string();
        let mut n = Node::start(
            home.path(),
            &[
                dir.path().to_str().unwrap(),
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--stun",
                &stun,
            ],
        )
        .await;
        let l = n.out(|l| l.starts_with("external address")).await;
        assert_eq!(
            l,
            "external address 127.0.0.1 (stun): this machine's own, no nat in front"
        );
        assert!(server.requests() >= 1);
        n.stop().await;
    }

    /// A node logs, at info level without -v: a peer joining, a search it answers, a file
    /// it serves, a trusted operation refused (never the secret tried), a peer leaving.
    #[tokio::test]
    async fn share_logs_joins_searches_files_served_and_trusted_operations() {
        use p2pipe::filer::{FilerClient, PeerId, TrustedOp};
        let home = tempfile::tempdir().unwrap();
        let (da, db) = (folder_with(&["a.txt"]), folder_with(&[]));
        let local = ["--bind", "127.0.0.1", "--port", "0", "--no-stun"];
        let mut a_args = vec![da.path().to_str().unwrap()];
        a_args.extend(local);
        let mut a = Node::start(home.path(), &a_args).await;
        let a_id = a.id();
        let mut b_args = vec![db.path().to_str().unwrap(), "--join", &a_id];
        b_args.extend(local);
        let b = Node::start(home.path(), &b_args).await;
        let b_id = b.id();
        assert_eq!(
            b.line("joined through "),
            format!("joined through {a_id}: 1 peer added, 1 peer in the table")
        );
        assert!(
            !b.startup.iter().any(|l| l.starts_with("peers:")),
            "{:?}",
            b.startup
        );
        let l = a
            .log(|l| l.contains("peer joined") && l.contains(&b_id))
            .await;
        assert!(l.contains("INFO"), "{l}");

        let out = p2pipe_exits(
            home.path(),
            &[
                "search", "a.tx", "--via", &a_id, "--count", "1", "--wait", "8",
            ],
        )
        .await;
        assert_eq!(succeeded(&out).trim(), format!("a.txt {a_id}"));
        let l = a.log(|l| l.contains("search answered")).await;
        assert!(l.contains("key=\"a.tx\"") && l.contains("hits=1"), "{l}");

        let at: std::net::SocketAddr = a_id.parse().unwrap();
        let mut s = within(tokio::net::TcpStream::connect(at)).await.unwrap();
        within(s.write_all(b"FGET\0\0\0\x05a.txt")).await.unwrap();
        let mut got = Vec::new();
        within(s.read_to_end(&mut got)).await.unwrap();
        assert_eq!(&got[8..], b"hello");
        let l = a.log(|l| l.contains("file served")).await;
        assert!(l.contains("name=\"a.txt\"") && l.contains("bytes=5"), "{l}");

        let tried = b"not-the-secret-4711";
        let op = TrustedOp::AddPeer {
            pid: PeerId::parse("127.0.0.1:9").unwrap(),
            host: "127.0.0.1".into(),
            port: 9,
        };
        assert!(within(FilerClient::new(at).trusted(tried, op))
            .await
            .is_err());
        let l = a.log(|l| l.contains("trusted operation refused")).await;
        assert!(l.contains("op=\"ADDP\"") || l.contains("op=ADDP"), "{l}");
        assert!(!l.contains("not-the-secret"), "{l}");

        b.stop().await;
        let l = a
            .log(|l| l.contains("peer left (quit)") && l.contains(&b_id))
            .await;
        assert!(l.contains("INFO"), "{l}");
        a.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// `p2pipe nat`: its exit status, and a reason beside every null of its JSON.
// ---------------------------------------------------------------------------------------

/// Every null in `v`, at any depth, as a path, unless a non-empty `<key>_reason` string
/// sits beside it.
fn nulls_without_reason(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                let at = format!("{path}/{k}");
                if child.is_null() {
                    let reason = map.get(&format!("{k}_reason")).and_then(|r| r.as_str());
                    if reason.is_none_or(str::is_empty) {
                        out.push(at);
                    }
                } else {
                    nulls_without_reason(child, &at, out);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let at = format!("{path}/{i}");
                if child.is_null() {
                    out.push(at);
                } else {
                    nulls_without_reason(child, &at, out);
                }
            }
        }
        _ => {}
    }
}

#[track_caller]
fn assert_every_null_has_a_reason(v: &serde_json::Value) {
    let mut bare = Vec::new();
    nulls_without_reason(v, "", &mut bare);
    assert!(bare.is_empty(), "nulls without a reason: {bare:?} in {v}");
}

/// A STUN server port where nothing listens: the command prints its report, says that
/// no server answered and which it asked, and fails; in JSON too.
#[tokio::test]
async fn nat_command_fails_when_nothing_listens_on_the_stun_port() {
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = p2pipe(&["nat", "--interface", "lo", "--stun", &closed], None).await;
    assert!(!out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let said = format!("no stun server answered (asked: {closed})");
    assert!(text.contains(&said), "{text}");
    assert!(text.contains("the interfaces are:"), "{text}");
    assert!(!text.contains("did not resolve"), "{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("p2pipe: {said}")), "{err}");

    let out = p2pipe(
        &["nat", "--json", "--interface", "lo", "--stun", &closed],
        None,
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ipv4"]["nat_type"], "udp-blocked", "{v}");
    assert!(v["ipv4"]["external"].is_null(), "{v}");
    assert_eq!(v["ipv4"]["external_reason"], said.as_str(), "{v}");
    assert_every_null_has_a_reason(&v);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&said), "{err}");
}

/// Against loopback servers that answer but cannot tell everything (one ignores
/// CHANGE-REQUEST, one gives no OTHER-ADDRESS), the command succeeds, and every null of
/// its JSON has its reason beside it: the parts the server could not tell, and the
/// family that was not tested.
#[tokio::test]
async fn nat_command_json_gives_a_reason_beside_every_null() {
    use crate::stun::server::TestServer;
    use p2pipe::stun::server::ServerConfig;
    let (a1, a2) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
    let ignores_change: fn(&mut ServerConfig) = |c| c.ignore_change = true;
    let no_other_address: fn(&mut ServerConfig) = |c| c.other_address = false;
    let cases = [
        (ignores_change, "ignored change-request"),
        (no_other_address, "gave no usable other-address"),
    ];
    for (adjust, why) in cases {
        let server = within(TestServer::start_with(a1, a2, adjust))
            .await
            .unwrap();
        let primary = server.primary().to_string();
        let out = p2pipe(
            &["nat", "--json", "--interface", "lo", "--stun", &primary],
            None,
        )
        .await;
        let text = succeeded(&out);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_every_null_has_a_reason(&v);
        let v4 = &v["ipv4"];
        assert!(v4["external"].is_string(), "{v}");
        assert!(v4["filtering"].is_null(), "{v}");
        let filtering = v4["filtering_reason"].as_str().unwrap();
        assert!(filtering.contains(&primary), "{filtering}");
        assert!(filtering.contains(why), "{filtering}");
        assert!(v4["nat_type"].is_null(), "{v}");
        assert_eq!(
            v4["nat_type_reason"].as_str().unwrap(),
            format!("the filtering is unknown: {filtering}")
        );
        assert!(v["ipv6"].is_null(), "{v}");
        assert_eq!(
            v["ipv6_reason"], "none of the 1 stun servers has an ipv6 address",
            "{v}"
        );
        // The text says the same.
        let out = p2pipe(&["nat", "--interface", "lo", "--stun", &primary], None).await;
        let text = succeeded(&out);
        assert!(
            text.contains(&format!("  filtering        unknown: {filtering}\n")),
            "{text}"
        );
        assert!(
            text.contains("  not tested: none of the 1 stun servers has an ipv6 address"),
            "{text}"
        );
    }
}

/// The node identity commands, `p2pipe id` and `p2pipe addr`, each with its own config
/// folder (XDG_CONFIG_HOME and HOME) and none of the list variables of the user's.
mod identity {
    use std::path::Path;

    use p2pipe::identity::{unix_ms, NodeId, PeerRecord};
    use tokio::process::Command;

    use crate::stun::server::TestServer;
    use crate::support::{succeeded, within};

    async fn p2pipe_in(config: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_p2pipe"));
        cmd.args(args)
            .env("XDG_CONFIG_HOME", config)
            .env("HOME", config)
            .kill_on_drop(true);
        for var in [
            "P2PIPE_SIGNAL",
            "P2PIPE_SIGNAL_FILE",
            "P2PIPE_STUN",
            "P2PIPE_STUN_FILE",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied());
        within(cmd.output()).await.unwrap()
    }

    fn stdout(out: &std::process::Output) -> String {
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn stderr(out: &std::process::Output) -> String {
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    #[tokio::test]
    async fn id_prints_the_same_node_id_twice_from_a_key_file_only_its_owner_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("p2pipe").join("node.key");
        let first = p2pipe_in(dir.path(), &["id"], &[]).await;
        succeeded(&first);
        assert_eq!(
            stderr(&first).trim(),
            format!("created a new node key at {}", key.display())
        );
        let id: NodeId = stdout(&first).trim().parse().unwrap();
        let second = p2pipe_in(dir.path(), &["id", "--json"], &[]).await;
        succeeded(&second);
        assert_eq!(stderr(&second), "");
        let v: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
        assert_eq!(v["node_id"], id.to_string());
        assert_eq!(v["created"], false);
        assert_eq!(v["key_file"], key.display().to_string());
        assert_eq!(v["public_key"].as_str().unwrap().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&key), 0o600);
            assert_eq!(mode(key.parent().unwrap()), 0o700);
        }
        // --key-file names another key: another id, created there.
        let other = dir.path().join("other.key");
        let out = p2pipe_in(
            dir.path(),
            &["id", "--json", "--key-file", other.to_str().unwrap()],
            &[],
        )
        .await;
        succeeded(&out);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["created"], true);
        assert_ne!(v["node_id"], id.to_string());
    }

    /// An empty (or relative) XDG_CONFIG_HOME means "unset": the key goes to
    /// ~/.config/p2pipe, never into the folder the command ran in.
    #[tokio::test]
    async fn id_with_an_empty_xdg_config_home_keeps_its_key_under_home() {
        let home = tempfile::tempdir().unwrap();
        let cwd = tempfile::tempdir().unwrap();
        for xdg in ["", "relative/config"] {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_p2pipe"));
            cmd.arg("id")
                .current_dir(cwd.path())
                .env("XDG_CONFIG_HOME", xdg)
                .env("HOME", home.path())
                .kill_on_drop(true);
            let out = within(cmd.output()).await.unwrap();
            succeeded(&out);
        }
        let key = home.path().join(".config").join("p2pipe").join("node.key");
        assert!(key.is_file(), "the key is at {}", key.display());
        let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
        assert!(
            left.is_empty(),
            "nothing lands in the working folder: {left:?}"
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn id_refuses_a_key_file_other_users_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        succeeded(&p2pipe_in(dir.path(), &["id"], &[]).await);
        let key = dir.path().join("p2pipe").join("node.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = p2pipe_in(dir.path(), &["id"], &[]).await;
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(stdout(&out), "");
        let k = key.display();
        assert_eq!(
            stderr(&out).trim(),
            format!("p2pipe: {k} is readable by other users (mode 0644); run chmod 600 {k}")
        );
    }

    async fn stun_server() -> TestServer {
        within(TestServer::start(
            "127.0.0.1".parse().unwrap(),
            "127.0.0.2".parse().unwrap(),
        ))
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn addr_prints_a_signed_record_that_names_the_broker_and_the_topic() {
        let dir = tempfile::tempdir().unwrap();
        let server = stun_server().await;
        let stun = server.primary().to_string();
        let args = [
            "addr",
            "--stun",
            &stun,
            "--signal",
            "mqtt://127.0.0.1:1883",
            "--port",
            "4000",
        ];
        let out = p2pipe_in(dir.path(), &args, &[]).await;
        succeeded(&out);
        let text = stdout(&out);
        assert_eq!(text.lines().count(), 1, "{text}");
        let record = PeerRecord::parse(&text, unix_ms(std::time::SystemTime::now())).unwrap();
        let id = record.node_id();
        assert_eq!(record.signalling().brokers, ["mqtt://127.0.0.1:1883"]);
        assert_eq!(record.signalling().topic, format!("p2pipe/1/{id}"));
        assert_eq!(record.expires_ms() - record.issued_ms(), 3_600_000);
        // The STUN server on loopback saw the node's own address: no NAT.
        let v4 = record
            .interfaces()
            .iter()
            .flat_map(|i| &i.families)
            .find(|f| f.external.is_some())
            .expect("an ipv4 entry with the external address");
        assert_eq!(v4.external.unwrap().ip().to_string(), "127.0.0.1");
        assert_eq!(v4.nat_type, Some(p2pipe::nat::NatType::Open));
        assert!(v4.local.iter().all(|l| l.addr.port() == 4000));
        let err = stderr(&out);
        assert!(err.contains(&format!("node {id}")), "{err}");
        assert!(
            err.contains("signalling on mqtt://127.0.0.1:1883 (from --signal)"),
            "{err}"
        );
        // The same node, in JSON, with a shorter life.
        let mut json_args = args.to_vec();
        json_args.extend(["--json", "--ttl", "60"]);
        let out = p2pipe_in(dir.path(), &json_args, &[]).await;
        succeeded(&out);
        let now = unix_ms(std::time::SystemTime::now());
        let record = PeerRecord::from_json(&stdout(&out), now).unwrap();
        assert_eq!(record.node_id(), id);
        assert_eq!(record.expires_ms() - record.issued_ms(), 60_000);
    }

    /// No STUN server answers: the record still comes out, without NAT fields, after a
    /// warning.
    #[tokio::test]
    async fn addr_without_a_stun_answer_still_prints_a_record_and_warns() {
        let dir = tempfile::tempdir().unwrap();
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let stun = silent.local_addr().unwrap().to_string();
        let args = ["addr", "--stun", &stun, "--signal", "mqtt://[::1]:1883"];
        let out = p2pipe_in(dir.path(), &args, &[]).await;
        succeeded(&out);
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "warning: ipv4: nat behaviour unknown: no stun server answered (asked: {stun})"
            )),
            "{err}"
        );
        let now = unix_ms(std::time::SystemTime::now());
        let record = PeerRecord::parse(&stdout(&out), now).unwrap();
        let families = record.interfaces().iter().flat_map(|i| &i.families);
        for f in families {
            assert_eq!((f.external, f.nat_type, f.mapping), (None, None, None));
        }
        assert_eq!(record.signalling().brokers, ["mqtt://[::1]:1883"]);
    }

    #[tokio::test]
    async fn addr_refuses_a_broker_that_is_not_mqtt_host_port_before_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let out = p2pipe_in(
            dir.path(),
            &["addr", "--signal", "tcp://127.0.0.1:1883"],
            &[],
        )
        .await;
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stderr(&out).trim(),
            "p2pipe: bad broker url \"tcp://127.0.0.1:1883\": expected mqtt://host:port (from --signal)"
        );
        assert!(
            !dir.path().join("p2pipe").exists(),
            "no key was made for a refused command"
        );
    }

    #[tokio::test]
    async fn addr_takes_brokers_from_the_environment_then_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let server = stun_server().await;
        let stun = server.primary().to_string();
        let brokers = |out: &std::process::Output| {
            succeeded(out);
            let now = unix_ms(std::time::SystemTime::now());
            PeerRecord::parse(&stdout(out), now)
                .unwrap()
                .signalling()
                .brokers
                .clone()
        };
        let env = [("P2PIPE_SIGNAL", "mqtt://127.0.0.1:1, mqtt://[::1]:2")];
        let out = p2pipe_in(dir.path(), &["addr", "--stun", &stun], &env).await;
        assert_eq!(brokers(&out), ["mqtt://127.0.0.1:1", "mqtt://[::1]:2"]);
        assert!(stderr(&out).contains("(from $P2PIPE_SIGNAL)"));
        // The default config file, when no variable is set.
        let file = dir.path().join("p2pipe").join("signal-brokers");
        std::fs::write(&file, "# lab brokers\nmqtt://127.0.0.1:3\n").unwrap();
        let out = p2pipe_in(dir.path(), &["addr", "--stun", &stun], &[]).await;
        assert_eq!(brokers(&out), ["mqtt://127.0.0.1:3"]);
        // A flag beats both.
        let args = ["addr", "--stun", &stun, "--signal", "mqtt://127.0.0.1:4"];
        let out = p2pipe_in(dir.path(), &args, &env).await;
        assert_eq!(brokers(&out), ["mqtt://127.0.0.1:4"]);
    }
}
