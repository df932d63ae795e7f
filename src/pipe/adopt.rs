//! Pipes made from connections that were opened elsewhere: by hole punching, or by a
//! relay (a TURN server's RFC 6062 data connection).

use std::sync::Arc;

use tokio::net::TcpStream;

use super::{tcp, Pipe, PipeConfig, Result};

impl Pipe {
    /// A TCP pipe on a connection that is already open, framed and read as `cfg` says.
    ///
    /// # Errors
    ///
    /// The socket's addresses cannot be read, or its options cannot be set.
    pub(crate) fn adopt_tcp(stream: TcpStream, cfg: &PipeConfig) -> Result<Pipe> {
        let core = tcp::start(stream, Arc::new(cfg.clone()), None)?;
        Ok(Pipe::from_core(core))
    }
}
