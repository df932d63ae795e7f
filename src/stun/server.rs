//! The sans-IO core of a STUN server ([`ServerCore`]): it answers Binding requests
//! from two addresses × two ports as RFC 5780 asks. It owns no socket; the crate's
//! integration tests run it on loopback (`127.0.0.1` and `127.0.0.2` as the two
//! addresses) to test the client and the NAT probe.
//!
//! The core can misbehave on purpose, as some public servers do: ignore CHANGE-REQUEST,
//! or leave OTHER-ADDRESS out, so that the NAT classifier's "unknown" answers can be
//! tested.

use std::net::{IpAddr, SocketAddr};

use bytecodec::EncodeExt;
use stun_codec::rfc5389::attributes::{MappedAddress, Software, XorMappedAddress};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5780::attributes::{OtherAddress, ResponseOrigin};
use stun_codec::{Message, MessageClass, MessageEncoder};

use super::attr::ResponseAttribute;
use super::{Error, Request};

/// How the server core behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The primary address and port (A1:P1).
    pub primary: SocketAddr,
    /// The alternate address and port (A2:P2): both must differ from the primary's, in
    /// the same family.
    pub alternate: SocketAddr,
    /// Answer change requests from the receiving address anyway, as a server without
    /// RFC 5780 support does.
    pub ignore_change: bool,
    /// Include OTHER-ADDRESS in responses.
    pub other_address: bool,
    /// The SOFTWARE attribute to send, if any.
    pub software: Option<String>,
}

impl ServerConfig {
    /// A well-behaved RFC 5780 server on these two addresses.
    pub fn new(primary: SocketAddr, alternate: SocketAddr) -> Self {
        ServerConfig {
            primary,
            alternate,
            ignore_change: false,
            other_address: true,
            software: Some(concat!("p2pipe test server ", env!("CARGO_PKG_VERSION")).into()),
        }
    }
}

/// A reply the core wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The server address to send it from: one of [`ServerCore::addresses`].
    pub from: SocketAddr,
    /// The client.
    pub to: SocketAddr,
    /// The response.
    pub bytes: Vec<u8>,
}

/// The sans-IO core of the test server: a request in, a reply out.
#[derive(Debug, Clone)]
pub struct ServerCore {
    config: ServerConfig,
}

impl ServerCore {
    /// Checks the configuration: the two addresses differ in IP and in port and share a
    /// family.
    pub fn new(config: ServerConfig) -> Result<Self, Error> {
        let (a, b) = (config.primary, config.alternate);
        if a.is_ipv4() != b.is_ipv4() || a.ip() == b.ip() || a.port() == b.port() {
            return Err(Error::ServerConfig(format!(
                "the two addresses must differ in ip and port, in one family; got {a} and {b}"
            )));
        }
        Ok(ServerCore { config })
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The four addresses the server answers from: (A1,P1), (A1,P2), (A2,P1), (A2,P2).
    pub fn addresses(&self) -> [SocketAddr; 4] {
        let (a, b) = (self.config.primary, self.config.alternate);
        [
            a,
            SocketAddr::new(a.ip(), b.port()),
            SocketAddr::new(b.ip(), a.port()),
            b,
        ]
    }

    fn other_ip(&self, ip: IpAddr) -> IpAddr {
        if ip == self.config.primary.ip() {
            self.config.alternate.ip()
        } else {
            self.config.primary.ip()
        }
    }

    fn other_port(&self, port: u16) -> u16 {
        if port == self.config.primary.port() {
            self.config.alternate.port()
        } else {
            self.config.primary.port()
        }
    }

    /// Answers a datagram that arrived at `local` (one of [`addresses`](Self::addresses))
    /// from `client`. `over_tcp` makes the server ignore CHANGE-REQUEST, which has no
    /// meaning on a connection.
    ///
    /// # Errors
    ///
    /// Anything that is not a well-formed Binding request is refused with an error, and
    /// no reply.
    pub fn handle(
        &self,
        local: SocketAddr,
        client: SocketAddr,
        bytes: &[u8],
        over_tcp: bool,
    ) -> Result<Reply, Error> {
        let request = Request::parse(bytes)?;
        let change = request.change.unwrap_or_default();
        let honour = !over_tcp && !self.config.ignore_change;
        let mut from = local;
        if honour && change.change_ip {
            from.set_ip(self.other_ip(local.ip()));
        }
        if honour && change.change_port {
            from.set_port(self.other_port(local.port()));
        }
        let txid = request.txid;
        let mut response = Message::<ResponseAttribute>::new(
            MessageClass::SuccessResponse,
            BINDING,
            stun_codec::TransactionId::new(txid.0),
        );
        response.add_attribute(XorMappedAddress::new(client));
        response.add_attribute(MappedAddress::new(client));
        if self.config.other_address {
            let other = SocketAddr::new(self.other_ip(local.ip()), self.other_port(local.port()));
            response.add_attribute(OtherAddress::new(other));
        }
        response.add_attribute(ResponseOrigin::new(from));
        if let Some(s) = &self.config.software {
            let s = Software::new(s.clone()).map_err(|e| Error::Encode(e.to_string()))?;
            response.add_attribute(s);
        }
        let bytes = MessageEncoder::new()
            .encode_into_bytes(response)
            .map_err(|e| Error::Encode(e.to_string()))?;
        Ok(Reply {
            from,
            to: client,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::tests::wire;
    use crate::stun::{Request, Response, TransactionId};

    fn core(adjust: impl FnOnce(&mut ServerConfig)) -> ServerCore {
        let mut c = ServerConfig::new(
            "203.0.113.10:3478".parse().unwrap(),
            "203.0.113.11:3479".parse().unwrap(),
        );
        adjust(&mut c);
        ServerCore::new(c).unwrap()
    }

    const CLIENT: &str = "198.51.100.7:40000";

    fn ask(core: &ServerCore, local: &str, ip: bool, port: bool) -> (Reply, Response) {
        let mut req = Request::binding(TransactionId([7; 12]));
        if ip || port {
            req = req.with_change(ip, port);
        }
        let reply = core
            .handle(
                local.parse().unwrap(),
                CLIENT.parse().unwrap(),
                &wire(&req),
                false,
            )
            .unwrap();
        let resp = Response::parse(&reply.bytes).unwrap();
        assert_eq!(resp.txid, TransactionId([7; 12]));
        assert_eq!(resp.mapped, Some(CLIENT.parse().unwrap()));
        assert_eq!(resp.response_origin, Some(reply.from));
        (reply, resp)
    }

    #[test]
    fn change_requests_pick_the_reply_address() {
        let c = core(|_| {});
        let cases = [
            ("203.0.113.10:3478", false, false, "203.0.113.10:3478"),
            ("203.0.113.10:3478", true, true, "203.0.113.11:3479"),
            ("203.0.113.10:3478", false, true, "203.0.113.10:3479"),
            ("203.0.113.10:3478", true, false, "203.0.113.11:3478"),
            ("203.0.113.11:3478", true, true, "203.0.113.10:3479"),
            ("203.0.113.11:3479", false, true, "203.0.113.11:3478"),
        ];
        for (local, ip, port, from) in cases {
            let (reply, _) = ask(&c, local, ip, port);
            assert_eq!(reply.from, from.parse().unwrap(), "{local} {ip} {port}");
        }
        let (_, resp) = ask(&c, "203.0.113.10:3478", false, false);
        assert_eq!(
            resp.other_address,
            Some("203.0.113.11:3479".parse().unwrap())
        );
        let (_, resp) = ask(&c, "203.0.113.11:3478", false, false);
        assert_eq!(
            resp.other_address,
            Some("203.0.113.10:3479".parse().unwrap())
        );
    }

    #[test]
    fn misbehaving_modes() {
        let c = core(|c| c.ignore_change = true);
        let (reply, _) = ask(&c, "203.0.113.10:3478", true, true);
        assert_eq!(reply.from, "203.0.113.10:3478".parse().unwrap());
        let c = core(|c| c.other_address = false);
        let (_, resp) = ask(&c, "203.0.113.10:3478", false, false);
        assert_eq!(resp.other_address, None);
    }

    #[test]
    fn bad_requests_get_no_reply() {
        let c = core(|_| {});
        let local = "203.0.113.10:3478".parse().unwrap();
        let client = CLIENT.parse().unwrap();
        let good = wire(&Request::binding(TransactionId([1; 12])));
        let mut response = good.to_vec();
        response[0] = 0x01; // 0x0101: a success response, not a request
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            good[..19].to_vec(),
            b"hello, this is not stun at all".to_vec(),
            response,
            vec![0u8; 4000],
        ];
        for bytes in cases {
            assert!(c.handle(local, client, &bytes, false).is_err());
        }
        assert!(c.handle(local, client, &good, false).is_ok());
    }

    #[test]
    fn addresses_must_differ() {
        let same_ip = ServerConfig::new(
            "127.0.0.1:1000".parse().unwrap(),
            "127.0.0.1:1001".parse().unwrap(),
        );
        assert!(ServerCore::new(same_ip).is_err());
        let mixed = ServerConfig::new(
            "127.0.0.1:1000".parse().unwrap(),
            "[::1]:1001".parse().unwrap(),
        );
        assert!(ServerCore::new(mixed).is_err());
    }
}
