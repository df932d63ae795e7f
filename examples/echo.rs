//! One echo server written three ways, side by side: await, callback and
//! stream. A client then talks to each over TCP and UDP, IPv4.
//!
//! Run with `cargo run --example echo`.

use std::time::Duration;

use futures::StreamExt;
use p2pipe::{Pipe, Proto};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Await style: accept each client, then loop on `recv`.
async fn await_style(proto: Proto) -> Result<Pipe, BoxError> {
    let server = Pipe::listen(proto, "127.0.0.1:0").await?;
    let listener = server.clone();
    tokio::spawn(async move {
        while let Ok(client) = listener.accept().await {
            tokio::spawn(async move {
                while let Ok(msg) = client.recv().await {
                    if client.send(&msg.data).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(server)
}

/// Callback style: one handler for every client of the listener.
async fn callback_style(proto: Proto) -> Result<Pipe, BoxError> {
    let server = Pipe::listen(proto, "127.0.0.1:0").await?;
    server.on_message(|msg, reply| async move { reply.send(&msg.data).await })?;
    Ok(server)
}

/// Stream style: each client's messages as a `Stream`.
async fn stream_style(proto: Proto) -> Result<Pipe, BoxError> {
    let server = Pipe::listen(proto, "127.0.0.1:0").await?;
    let listener = server.clone();
    tokio::spawn(async move {
        while let Ok(client) = listener.accept().await {
            tokio::spawn(async move {
                let mut messages = client.stream();
                while let Some(msg) = messages.next().await {
                    if client.send(&msg.data).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(server)
}

async fn talk(style: &str, server: &Pipe) -> Result<(), BoxError> {
    let client = Pipe::connect(server.proto(), server.local_addr()).await?;
    for text in ["hello", "from", "p2pipe"] {
        client.send(text).await?;
        let reply = client.recv_timeout(Duration::from_secs(2)).await?;
        println!(
            "{style:>8} {}: sent {text:?}, got {:?} back from {}",
            server.proto(),
            String::from_utf8_lossy(&reply.data),
            reply.peer
        );
        assert_eq!(&reply.data[..], text.as_bytes());
    }
    client.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    for proto in [Proto::Tcp, Proto::Udp] {
        let servers = [
            ("await", await_style(proto).await?),
            ("callback", callback_style(proto).await?),
            ("stream", stream_style(proto).await?),
        ];
        for (style, server) in &servers {
            talk(style, server).await?;
        }
        for (_, server) in servers {
            server.close().await;
        }
    }
    Ok(())
}
