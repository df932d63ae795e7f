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
        text.contains(&format!("Find: fetched notes.txt 17 bytes from {}", a.id)),
        "{text}"
    );
    assert!(
        text.contains(&format!("notes.txt  17 bytes  at {}", c.id)),
        "{text}"
    );
    assert!(text.contains("Join: peer added: 127.0.0.1:9"), "{text}");
    assert!(text.contains("Quit: peer removed: 127.0.0.1:9"), "{text}");
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
    assert!(text.contains("needs the node's secret"), "{text}");
    assert!(text.contains("2 peers"), "{text}");

    for s in [c, b, a] {
        s.stop().await;
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
    use p2pipe::stun::server::{ServerConfig, TestServer};
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
