//! The connecting node's choice. A connect's strategies may make several paths to the
//! peer; the connecting node keeps the first and commits it, and the answering node
//! hands a path to its application only once it is committed, so that the paths the
//! race dropped never reach [`Node::accept`](super::Node::accept).
//!
//! The commit is the first message on the secure path from the connecting node,
//! `\0p2pipe commit <token in hex>`, answered by `\0p2pipe committed <token in hex>`
//! (the token is the path's, from its handshake): the commit is the path's first
//! message, since the connecting node sends nothing else before its answer. On UDP the
//! commit is sent again, from
//! 100 ms doubling, until its answer comes, and a repeated commit is answered again for
//! the path's life; both messages are taken by subscriptions, so the application sees
//! neither.

use std::time::Duration;

use super::request::Token;
use crate::pipe::{Overflow, Pipe};
use crate::Proto;

/// The first wait for the answer to a commit on UDP.
const FIRST_RESEND: Duration = Duration::from_millis(100);

fn hex(token: &Token) -> String {
    token.iter().map(|b| format!("{b:02x}")).collect()
}

fn message(word: &str, token: &Token) -> Vec<u8> {
    format!("\0p2pipe {word} {}", hex(token)).into_bytes()
}

/// The pattern of exactly that message.
fn pattern(word: &str, token: &Token) -> String {
    format!(r"(?-u)^\x00p2pipe {word} {}$", hex(token))
}

/// Commits `pipe`, the path a connect keeps, and waits for the peer's answer, at most
/// `limit`.
pub(crate) async fn commit(pipe: &Pipe, token: &Token, limit: Duration) -> Result<(), String> {
    let answers = pipe
        .subscribe_with(&pattern("committed", token), None, 4, Overflow::DropNewest)
        .map_err(|e| e.to_string())?;
    let commit = message("commit", token);
    let work = async {
        let mut wait = FIRST_RESEND;
        loop {
            pipe.send(&commit).await.map_err(|e| e.to_string())?;
            let answered = match pipe.proto() {
                Proto::Tcp => answers.recv().await.map(drop).map_err(|e| e.to_string()),
                Proto::Udp => match answers.recv_timeout(wait).await {
                    Err(crate::pipe::Error::Timeout(_)) => {
                        wait *= 2;
                        continue;
                    }
                    other => other.map(drop).map_err(|e| e.to_string()),
                },
            };
            return answered;
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err("the peer did not confirm the path".into()))?;
    if pipe.proto() == Proto::Udp {
        // Answers to the repeats may still come: swallow them for the pipe's life.
        tokio::spawn(async move { while answers.recv().await.is_ok() {} });
    }
    Ok(())
}

/// Waits, at most `limit`, for the connecting node to commit `pipe`, and answers; on
/// UDP a repeated commit is answered for as long as the pipe lives.
pub(crate) async fn committed(pipe: &Pipe, token: &Token, limit: Duration) -> Result<(), String> {
    let commits = pipe
        .subscribe_with(&pattern("commit", token), None, 4, Overflow::DropNewest)
        .map_err(|e| e.to_string())?;
    let answer = message("committed", token);
    let commit = message("commit", token);
    // The commit may have come before the subscription: then it is the first message
    // of the pipe's flow, where nothing else can be before it.
    let first = async {
        tokio::select! {
            m = pipe.recv() => match m {
                Ok(m) if m.data[..] == commit[..] => Ok(()),
                Ok(_) => Err("the path's first message was not the commit".to_string()),
                Err(e) => Err(e.to_string()),
            },
            m = commits.recv() => m.map(drop).map_err(|e| e.to_string()),
        }
    };
    tokio::time::timeout(limit, first)
        .await
        .unwrap_or_else(|_| Err("the connecting node did not commit the path".into()))?;
    pipe.send(&answer).await.map_err(|e| e.to_string())?;
    if pipe.proto() == Proto::Udp {
        let pipe = pipe.clone();
        tokio::spawn(async move {
            while commits.recv().await.is_ok() {
                if pipe.send(&answer).await.is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PipeConfig;

    #[tokio::test]
    async fn a_committed_udp_path_is_answered_once_and_repeats_never_reach_the_application() {
        let t = Duration::from_secs(5);
        let a = Pipe::listen(Proto::Udp, "127.0.0.1:0").await.unwrap();
        let b = Pipe::connect_with(Proto::Udp, a.local_addr(), &PipeConfig::default())
            .await
            .unwrap();
        let token = [7u8; 16];
        b.send(b"first").await.unwrap();
        let a_peer = tokio::time::timeout(t, a.accept()).await.unwrap().unwrap();
        assert_eq!(&a_peer.recv_timeout(t).await.unwrap().data[..], b"first");
        let (made, kept) = tokio::join!(commit(&b, &token, t), committed(&a_peer, &token, t));
        assert_eq!((made, kept), (Ok(()), Ok(())));
        // A late repeat of the commit is answered and swallowed on both sides.
        b.send(&message("commit", &token)).await.unwrap();
        b.send(b"data").await.unwrap();
        assert_eq!(&a_peer.recv_timeout(t).await.unwrap().data[..], b"data");
        a_peer.send(b"reply").await.unwrap();
        assert_eq!(&b.recv_timeout(t).await.unwrap().data[..], b"reply");
        // A commit for another token is application data.
        b.send(&message("commit", &[8; 16])).await.unwrap();
        let other = a_peer.recv_timeout(t).await.unwrap();
        assert_eq!(&other.data[..], &message("commit", &[8; 16])[..]);
    }

    #[tokio::test]
    async fn an_uncommitted_path_is_not_taken() {
        let a = Pipe::listen(Proto::Tcp, "127.0.0.1:0").await.unwrap();
        let b = Pipe::connect(Proto::Tcp, a.local_addr()).await.unwrap();
        let a_peer = tokio::time::timeout(Duration::from_secs(5), a.accept())
            .await
            .unwrap()
            .unwrap();
        let err = committed(&a_peer, &[1; 16], Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.contains("did not commit"), "{err}");
        drop(b);
    }
}
