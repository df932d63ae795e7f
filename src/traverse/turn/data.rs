//! The data path's wire forms, written and read by hand (no allocation): ChannelData
//! (RFC 5766 section 11.4), Send and Data indications, and how messages are cut from a
//! TCP stream to the server (RFC 5766 section 11.5).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, BytesMut};

use super::attr::{DATA, DATA_ATTR, SEND, XOR_PEER_ADDRESS};
use super::Error;
use crate::stun::{HEADER_LEN, MAGIC_COOKIE};

/// The lowest channel number (RFC 5766 section 11).
pub(crate) const MIN_CHANNEL: u16 = 0x4000;
/// The highest channel number RFC 5766 allows.
pub(crate) const MAX_CHANNEL: u16 = 0x4fff;
/// The length of a ChannelData header.
pub(crate) const CHANNEL_HEADER: usize = 4;
/// The longest message on the wire: a header and a 16-bit length of payload.
pub const MAX_WIRE: usize = HEADER_LEN + u16::MAX as usize;

/// `len` rounded up to a multiple of 4.
fn padded(len: usize) -> usize {
    len.next_multiple_of(4)
}

/// A ChannelData message: application data to or from the peer bound to `channel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// The channel number, 0x4000..=0x4fff.
    pub channel: u16,
    /// The application data.
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Reads a ChannelData message. Over UDP the datagram may carry padding after the
    /// data; the length field says where the data ends.
    pub fn parse(bytes: &'a [u8]) -> Result<ChannelData<'a>, Error> {
        let Some(head) = bytes.get(..CHANNEL_HEADER) else {
            return Err(Error::Malformed(
                "channel data shorter than its header".into(),
            ));
        };
        let channel = u16::from_be_bytes([head[0], head[1]]);
        if !(MIN_CHANNEL..=MAX_CHANNEL).contains(&channel) {
            return Err(Error::Malformed(format!(
                "channel number {channel:#06x} out of range"
            )));
        }
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let data = bytes
            .get(CHANNEL_HEADER..CHANNEL_HEADER + len)
            .ok_or_else(|| Error::Malformed(format!("channel data of {len} bytes truncated")))?;
        Ok(ChannelData { channel, data })
    }

    /// The length of the wire form; `pad` adds the padding to 4 bytes that TCP needs.
    pub fn emit_len(&self, pad: bool) -> usize {
        let len = CHANNEL_HEADER + self.data.len();
        if pad {
            padded(len)
        } else {
            len
        }
    }

    /// Appends the wire form (the data must fit a 16-bit length: the pipe's datagram
    /// limit sees to that); `pad` pads to 4 bytes, as TCP to the server needs.
    pub fn emit(&self, pad: bool, out: &mut BytesMut) {
        let len = u16::try_from(self.data.len()).unwrap_or(u16::MAX);
        out.put_u16(self.channel);
        out.put_u16(len);
        out.put_slice(&self.data[..usize::from(len)]);
        let fill = self.emit_len(pad) - CHANNEL_HEADER - usize::from(len);
        out.put_bytes(0, fill.min(3));
    }
}

/// Writes an XOR-PEER-ADDRESS value's bytes for `addr` (RFC 5389 section 15.2).
fn put_xor_address(addr: SocketAddr, txid: &[u8; 12], out: &mut BytesMut) {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.put_u16(XOR_PEER_ADDRESS);
            out.put_u16(8);
            out.put_u8(0);
            out.put_u8(1);
            out.put_u16(port);
            out.put_u32(u32::from(ip) ^ MAGIC_COOKIE);
        }
        IpAddr::V6(ip) => {
            out.put_u16(XOR_PEER_ADDRESS);
            out.put_u16(20);
            out.put_u8(0);
            out.put_u8(2);
            out.put_u16(port);
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(txid);
            let octets = ip.octets();
            for i in 0..16 {
                out.put_u8(octets[i] ^ key[i]);
            }
        }
    }
}

/// Reads an XOR-PEER-ADDRESS value.
fn xor_address(value: &[u8], txid: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match (value[1], value.len()) {
        (1, 8) => {
            let raw = u32::from_be_bytes(value[4..8].try_into().ok()?);
            IpAddr::V4(Ipv4Addr::from(raw ^ MAGIC_COOKIE))
        }
        (2, 20) => {
            let mut octets = [0u8; 16];
            let cookie = MAGIC_COOKIE.to_be_bytes();
            for i in 0..16 {
                let key = if i < 4 { cookie[i] } else { txid[i - 4] };
                octets[i] = value[4 + i] ^ key;
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A Send indication (client to server) or Data indication (server to client): data
/// for or from one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Indication<'a> {
    /// The transaction id (any value: indications are not answered).
    pub txid: [u8; 12],
    /// The peer the data goes to or came from.
    pub peer: SocketAddr,
    /// The data.
    pub data: &'a [u8],
}

impl<'a> Indication<'a> {
    /// The length of the wire form.
    pub fn emit_len(&self) -> usize {
        let addr = if self.peer.is_ipv4() { 8 } else { 20 };
        HEADER_LEN + 4 + addr + 4 + padded(self.data.len())
    }

    /// Appends the wire form of a Send indication (the data must fit the 16-bit message
    /// length: the pipe's datagram limit sees to that).
    pub fn emit_send(&self, out: &mut BytesMut) {
        let body = (self.emit_len() - HEADER_LEN).min(usize::from(u16::MAX) & !3);
        out.put_u16(0x0010 | SEND); // indication class
        out.put_u16(body as u16);
        out.put_u32(MAGIC_COOKIE);
        out.put_slice(&self.txid);
        put_xor_address(self.peer, &self.txid, out);
        let room = body - 4 - if self.peer.is_ipv4() { 8 } else { 20 } - 4;
        let data = &self.data[..self.data.len().min(room)];
        out.put_u16(DATA_ATTR);
        out.put_u16(data.len() as u16);
        out.put_slice(data);
        out.put_bytes(0, padded(data.len()) - data.len());
    }

    /// Reads a Data indication: the header checked, then XOR-PEER-ADDRESS and DATA found
    /// by walking the attributes (each bounded by the message). Nothing is allocated.
    pub fn parse_data(bytes: &'a [u8]) -> Result<Indication<'a>, Error> {
        let body = check_stun_frame(bytes)?;
        let kind = u16::from_be_bytes([bytes[0], bytes[1]]);
        if kind != 0x0010 | DATA {
            return Err(Error::Malformed(format!(
                "message type {kind:#06x} is not a data indication"
            )));
        }
        let txid: [u8; 12] = bytes[8..HEADER_LEN]
            .try_into()
            .expect("a header has a txid");
        let (mut peer, mut data) = (None, None);
        for (attr, value) in Attributes(body) {
            match attr {
                XOR_PEER_ADDRESS if peer.is_none() => peer = xor_address(value, &txid),
                DATA_ATTR if data.is_none() => data = Some(value),
                _ => {}
            }
        }
        match (peer, data) {
            (Some(peer), Some(data)) => Ok(Indication { txid, peer, data }),
            _ => Err(Error::Malformed(
                "data indication without peer address or data".into(),
            )),
        }
    }
}

/// Checks a STUN header against the bytes and gives the attributes' bytes.
pub(crate) fn check_stun_frame(bytes: &[u8]) -> Result<&[u8], Error> {
    crate::stun::check_frame_up_to(bytes, MAX_WIRE).map_err(|e| Error::Malformed(e.to_string()))?;
    Ok(&bytes[HEADER_LEN..])
}

/// The attributes of a checked message body: (type, value); stops at the first one
/// that runs past the end.
pub(crate) struct Attributes<'a>(pub(crate) &'a [u8]);

impl<'a> Iterator for Attributes<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let head = self.0.get(..4)?;
        let attr = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let value = self.0.get(4..4 + len)?;
        self.0 = self.0.get(4 + padded(len)..).unwrap_or(&[]);
        Some((attr, value))
    }
}

/// What the next message on a TCP stream from the server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// More bytes are needed to tell.
    Partial,
    /// A STUN message of this many bytes.
    Stun(usize),
    /// A ChannelData message of this many bytes, padding included.
    Channel(usize),
}

impl Frame {
    /// Tells where the first message in `buf` ends. Every length is at most
    /// [`MAX_WIRE`], so a reader's buffer is bounded before anything is read into it.
    pub fn parse(buf: &[u8]) -> Result<Frame, Error> {
        let Some(head) = buf.get(..4) else {
            return Ok(Frame::Partial);
        };
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        match head[0] >> 6 {
            0 => Ok(Frame::Stun(HEADER_LEN + len)),
            1 => Ok(Frame::Channel(padded(CHANNEL_HEADER + len))),
            _ => Err(Error::Malformed(format!(
                "first byte {:#04x} starts neither stun nor channel data",
                head[0]
            ))),
        }
    }

    /// The message's length, if known.
    pub fn wire_len(&self) -> Option<usize> {
        match self {
            Frame::Partial => None,
            Frame::Stun(n) | Frame::Channel(n) => Some(*n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn channel_data_is_padded_over_tcp_only() {
        let cd = ChannelData {
            channel: 0x4001,
            data: b"hello",
        };
        let mut udp = BytesMut::new();
        cd.emit(false, &mut udp);
        assert_eq!(&udp[..], b"\x40\x01\x00\x05hello");
        let mut tcp = BytesMut::new();
        cd.emit(true, &mut tcp);
        assert_eq!(&tcp[..], b"\x40\x01\x00\x05hello\0\0\0");
        assert_eq!(cd.emit_len(true), 12);
        assert_eq!(ChannelData::parse(&tcp).unwrap(), cd);
        assert_eq!(Frame::parse(&tcp).unwrap(), Frame::Channel(12));
    }

    #[test]
    fn channel_data_out_of_range_or_truncated_is_refused() {
        assert!(ChannelData::parse(b"\x50\x00\x00\x00").is_err());
        assert!(ChannelData::parse(b"\x40\x00\x00\x09abc").is_err());
        assert!(ChannelData::parse(b"\x40").is_err());
        assert!(Frame::parse(b"\x80\x00\x00\x00").is_err());
        assert_eq!(Frame::parse(b"\x00\x01").unwrap(), Frame::Partial);
    }

    #[test]
    fn send_indication_bytes_match_rfc_layout() {
        let ind = Indication {
            txid: TXID,
            peer: "192.0.2.1:32853".parse().unwrap(),
            data: b"abcde",
        };
        let mut out = BytesMut::new();
        ind.emit_send(&mut out);
        assert_eq!(out.len(), ind.emit_len());
        let mut want = vec![0x00, 0x16, 0x00, 0x18, 0x21, 0x12, 0xa4, 0x42];
        want.extend_from_slice(&TXID);
        // XOR-PEER-ADDRESS 192.0.2.1:32853 (the RFC 5769 mapped address, xored).
        want.extend_from_slice(&[
            0x00, 0x12, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
        ]);
        want.extend_from_slice(&[
            0x00, 0x13, 0x00, 0x05, b'a', b'b', b'c', b'd', b'e', 0, 0, 0,
        ]);
        assert_eq!(&out[..], &want[..]);
    }

    #[test]
    fn data_indications_round_trip_for_both_families() {
        for peer in ["192.0.2.1:32853", "[2001:db8::7]:9"] {
            let ind = Indication {
                txid: TXID,
                peer: peer.parse().unwrap(),
                data: b"xyz",
            };
            let mut out = BytesMut::new();
            ind.emit_send(&mut out);
            out[1] = 0x17; // a Data indication has the same layout
            let back = Indication::parse_data(&out).unwrap();
            assert_eq!(back, ind);
        }
    }

    #[test]
    fn broken_data_indications_are_refused() {
        let ind = Indication {
            txid: TXID,
            peer: "192.0.2.1:1".parse().unwrap(),
            data: b"x",
        };
        let mut out = BytesMut::new();
        ind.emit_send(&mut out);
        assert!(
            Indication::parse_data(&out).is_err(),
            "a send indication is not data"
        );
        out[1] = 0x17;
        let mut long = out.to_vec();
        long[3] += 4;
        assert!(Indication::parse_data(&long).is_err());
        let mut no_data = out[..HEADER_LEN + 12].to_vec();
        no_data[3] = 12;
        assert!(Indication::parse_data(&no_data).is_err());
    }
}
