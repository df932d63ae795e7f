//! The STUN test server, running: the crate's sans-IO [`ServerCore`] on four UDP
//! sockets (two addresses × two ports) and a TCP listener on the primary address. On
//! loopback, `127.0.0.1` and `127.0.0.2` serve as the two addresses.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use p2pipe::stun::server::{ServerConfig, ServerCore};
use p2pipe::stun::{HEADER_LEN, MAX_MESSAGE_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

/// The running server. Stops when dropped.
#[derive(Debug)]
pub(crate) struct TestServer {
    core: Arc<ServerCore>,
    requests: Arc<AtomicU64>,
    _tasks: JoinSet<()>,
}

impl TestServer {
    /// Starts a well-behaved server on `ip1` and `ip2` (any free ports).
    pub(crate) async fn start(ip1: IpAddr, ip2: IpAddr) -> io::Result<TestServer> {
        Self::start_with(ip1, ip2, |_| {}).await
    }

    /// Starts a server on `ip1` and `ip2` (any free ports), with `adjust` applied to the
    /// configuration first (to make it ignore change requests, say).
    pub(crate) async fn start_with(
        ip1: IpAddr,
        ip2: IpAddr,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> io::Result<TestServer> {
        // Find two ports free on both addresses: bind on ip1 with port 0, then try the
        // same port on ip2, a bounded number of times.
        let mut last_err = None;
        for _ in 0..32 {
            match try_bind(ip1, ip2).await {
                Ok((sockets, tcp)) => return Self::serve(sockets, tcp, adjust),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no free port pair")))
    }

    fn serve(
        sockets: [UdpSocket; 4],
        listener: TcpListener,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> io::Result<TestServer> {
        let mut config = ServerConfig::new(sockets[0].local_addr()?, sockets[3].local_addr()?);
        adjust(&mut config);
        let core = Arc::new(ServerCore::new(config).map_err(io::Error::other)?);
        let requests = Arc::new(AtomicU64::new(0));
        let sockets: Arc<[UdpSocket]> = Arc::from(Vec::from(sockets));
        let mut tasks = JoinSet::new();
        for i in 0..sockets.len() {
            let (core, requests, sockets) = (core.clone(), requests.clone(), sockets.clone());
            tasks.spawn(serve_udp(core, requests, sockets, i));
        }
        tasks.spawn(serve_tcp(core.clone(), requests.clone(), listener));
        Ok(TestServer {
            core,
            requests,
            _tasks: tasks,
        })
    }

    /// The primary address (A1:P1): where clients send their first request.
    pub(crate) fn primary(&self) -> SocketAddr {
        self.core.config().primary
    }

    /// The alternate address (A2:P2).
    pub(crate) fn alternate(&self) -> SocketAddr {
        self.core.config().alternate
    }

    /// The four addresses the server answers from.
    pub(crate) fn addresses(&self) -> [SocketAddr; 4] {
        self.core.addresses()
    }

    /// Requests received so far, on every socket.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Binds UDP on the four addresses in the order [`ServerCore::addresses`] gives them
/// (A1:P1, A1:P2, A2:P1, A2:P2), and TCP on A1:P1.
async fn try_bind(ip1: IpAddr, ip2: IpAddr) -> io::Result<([UdpSocket; 4], TcpListener)> {
    let a1p1 = UdpSocket::bind(SocketAddr::new(ip1, 0)).await?;
    let p1 = a1p1.local_addr()?.port();
    // TCP on the primary address too; a port taken for TCP means another try.
    let tcp = TcpListener::bind(SocketAddr::new(ip1, p1)).await?;
    let a2p1 = UdpSocket::bind(SocketAddr::new(ip2, p1)).await?;
    let a1p2 = UdpSocket::bind(SocketAddr::new(ip1, 0)).await?;
    let p2 = a1p2.local_addr()?.port();
    let a2p2 = UdpSocket::bind(SocketAddr::new(ip2, p2)).await?;
    Ok(([a1p1, a1p2, a2p1, a2p2], tcp))
}

/// Answers what arrives on `sockets[i]`, from whichever socket the core picks.
async fn serve_udp(
    core: Arc<ServerCore>,
    requests: Arc<AtomicU64>,
    sockets: Arc<[UdpSocket]>,
    i: usize,
) {
    let mut buf = vec![0u8; 2048];
    let Ok(local) = sockets[i].local_addr() else {
        return;
    };
    loop {
        let Ok((n, client)) = sockets[i].recv_from(&mut buf).await else {
            continue;
        };
        requests.fetch_add(1, Ordering::Relaxed);
        let Ok(reply) = core.handle(local, client, &buf[..n], false) else {
            continue;
        };
        let out = sockets
            .iter()
            .find(|s| s.local_addr().ok() == Some(reply.from));
        if let Some(out) = out {
            let _ = out.send_to(&reply.bytes, reply.to).await;
        }
    }
}

/// Accepts connections on the primary address, each served by its own task.
async fn serve_tcp(core: Arc<ServerCore>, requests: Arc<AtomicU64>, listener: TcpListener) {
    loop {
        let Ok((stream, client)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_connection(
            core.clone(),
            requests.clone(),
            stream,
            client,
        ));
    }
}

/// Answers the requests of one connection, until it closes or sends a bad one.
async fn serve_connection(
    core: Arc<ServerCore>,
    requests: Arc<AtomicU64>,
    mut stream: TcpStream,
    client: SocketAddr,
) {
    let primary = core.config().primary;
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    loop {
        if stream.read_exact(&mut buf[..HEADER_LEN]).await.is_err() {
            return;
        }
        let end = HEADER_LEN + usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if end > buf.len() || stream.read_exact(&mut buf[HEADER_LEN..end]).await.is_err() {
            return;
        }
        requests.fetch_add(1, Ordering::Relaxed);
        let Ok(reply) = core.handle(primary, client, &buf[..end], true) else {
            return;
        };
        if stream.write_all(&reply.bytes).await.is_err() {
            return;
        }
    }
}
