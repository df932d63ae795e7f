//! A chat over the peer mesh.
//!
//! With no arguments, three nodes (alice, bob and carol) start on loopback in this
//! process, connect, and chat: signed JSON messages, broadcast to the others, shown as
//! each node's handler receives them. Then they stop, and every node reports its peers
//! leaving.
//!
//! ```sh
//! cargo run --example mesh_chat
//! ```
//!
//! With `--id`, one interactive node: it listens where `--listen` says, connects to every
//! `--peer`, broadcasts each line typed on stdin, and prints what arrives (control
//! characters escaped, as `\u{4}`). Ctrl-C or the end of input stops it. Three
//! terminals make the same three-node chat by hand:
//!
//! ```sh
//! cargo run --example mesh_chat -- --id alice --listen 127.0.0.1:7401
//! cargo run --example mesh_chat -- --id bob   --listen 127.0.0.1:7402 --peer 127.0.0.1:7401
//! cargo run --example mesh_chat -- --id carol --listen 127.0.0.1:7403 --peer 127.0.0.1:7401 --peer 127.0.0.1:7402
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use p2pipe::mesh::{Backoff, Event, Mesh, MeshBuilder, Outgoing};
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
struct Args {
    /// This node's id; without it, the three-node demo runs.
    #[arg(long)]
    id: Option<String>,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// A node to stay connected to (repeatable).
    #[arg(long)]
    peer: Vec<SocketAddr>,
}

#[derive(Serialize, Deserialize)]
struct Chat {
    text: String,
}

/// `text` with its control characters escaped (`\u{4}`), so that a terminal shows them
/// instead of acting on them.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A chat node: prints what it hears and who comes and goes.
fn chat_node(id: &str, listen: SocketAddr) -> MeshBuilder {
    let me = id.to_owned();
    let (m1, m2, m3) = (me.clone(), me.clone(), me.clone());
    Mesh::builder(id)
        .listen(listen)
        .on_message(move |_, msg| {
            let me = m1.clone();
            async move {
                let from = printable(msg.from.as_ref());
                match msg.json::<Chat>() {
                    Ok(c) => println!("[{me}] <{from}> {}", printable(&c.text)),
                    Err(e) => println!("[{me}] <{from}> (not a chat message: {e})"),
                }
            }
        })
        .on_inbound_connected(move |_, p| {
            let me = m2.clone();
            async move {
                let id = printable(p.id.as_ref());
                println!("[{me}] {id} joined from {}", p.addr)
            }
        })
        .on_inbound_disconnected(move |_, d| {
            let me = m3.clone();
            async move {
                let id = printable(d.peer.id.as_ref());
                println!("[{me}] {id} left ({})", d.reason)
            }
        })
}

/// A new node identity from the system's random source.
fn new_key() -> Result<p2pipe::identity::Identity, BoxError> {
    Ok(p2pipe::identity::Identity::generate())
}

async fn demo() -> Result<(), BoxError> {
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let mut nodes = Vec::new();
    let mut streams = Vec::new();
    for id in ["alice", "bob", "carol"] {
        let (m, events) = chat_node(id, loopback)
            .identity(&new_key()?)
            .start()
            .await?;
        println!("{id} listens on {}", m.local_addrs()[0]);
        nodes.push(m);
        streams.push(events);
    }
    // bob -> alice, carol -> alice and bob: every pair once.
    nodes[1].connect(nodes[0].local_addrs()[0]).await?;
    nodes[2].connect(nodes[0].local_addrs()[0]).await?;
    nodes[2].connect(nodes[1].local_addrs()[0]).await?;
    let lines = [
        (
            0,
            "hi both, this is signed and framed, so \u{4} and empty lines are fine",
        ),
        (1, "hello alice"),
        (2, "hi! here is a long one, compressed"),
    ];
    for (i, text) in lines {
        let mut msg = Outgoing::json(&Chat { text: text.into() })?;
        if i == 2 {
            msg = msg.compressed();
        }
        let r = nodes[i].broadcast(msg, &[]).await;
        assert!(r.failed.is_empty(), "{:?}", r.failed);
    }
    // Each node hears the two others' lines: wait for them on the streams.
    for (i, s) in streams.iter_mut().enumerate() {
        let mut heard = 0;
        while heard < 2 {
            match tokio::time::timeout(Duration::from_secs(5), s.next()).await {
                Ok(Some(Event::Message(_))) => heard += 1,
                Ok(Some(_)) => {}
                _ => return Err(format!("{} did not hear everyone", nodes[i].id()).into()),
            }
        }
    }
    for n in &nodes {
        let s = n.stats();
        println!(
            "{}: {} peers, {} messages in, {} out, {} bad signatures",
            n.id(),
            n.peers().len(),
            s.messages_in,
            s.messages_out,
            s.bad_signatures
        );
    }
    for n in nodes.iter().rev() {
        n.stop(Duration::from_secs(2)).await;
    }
    Ok(())
}

async fn interactive(
    id: String,
    listen: SocketAddr,
    peers: Vec<SocketAddr>,
) -> Result<(), BoxError> {
    let (mesh, _events) = chat_node(&id, listen)
        .on_outbound_connected(|_, p| async move {
            println!("connected to {}", printable(p.id.as_ref()))
        })
        .start()
        .await?;
    println!("{id} listens on {}", mesh.local_addrs()[0]);
    for p in peers {
        mesh.keep_connected(p, Backoff::default());
    }
    drop(_events);
    // Lines are read on a thread of their own: a read blocked on the terminal must not
    // hold up the exit. (Tokio's stdin reads on its blocking pool, which the runtime
    // waits for when it shuts down, so Ctrl-C would wait for the next Enter.) The
    // thread is never joined; the process ends without it.
    let (tx, mut lines) = tokio::sync::mpsc::channel::<std::io::Result<String>>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(text) => {
                    let r = mesh.broadcast(Outgoing::json(&Chat { text: text? })?, &[]).await;
                    for (peer, e) in r.failed {
                        println!("not sent to {}: {e}", printable(peer.as_ref()));
                    }
                }
                None => break,
            },
            _ = &mut ctrl_c => break,
        }
    }
    mesh.stop(Duration::from_secs(2)).await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    match args.id {
        None => demo().await,
        Some(id) => interactive(id, args.listen, args.peer).await,
    }
}
