//! The OS route table as text, without I/O: parsing Linux's `/proc/net/route` and
//! `/proc/net/ipv6_route`, and choosing the default route.
//!
//! Reading the files is done elsewhere (see the `sys` module); these functions take the
//! text and are tested on fixtures.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::addr::Af;

/// `RTF_UP`: the route is usable.
pub const RTF_UP: u32 = 0x0001;
/// `RTF_GATEWAY`: the destination is reached through a gateway.
pub const RTF_GATEWAY: u32 = 0x0002;
/// `RTF_REJECT`: packets to the destination are refused (an unreachable route).
pub const RTF_REJECT: u32 = 0x0200;

/// One entry of the OS route table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsRoute {
    /// The interface the route sends packets out of.
    pub iface: String,
    /// The destination network.
    pub dest: IpAddr,
    /// The destination's prefix length.
    pub prefix: u8,
    /// The next hop, if the route goes through a gateway.
    pub gateway: Option<IpAddr>,
    /// The metric: among routes to the same destination, the lowest wins.
    pub metric: u32,
    /// The kernel's `RTF_*` flags.
    pub flags: u32,
}

impl OsRoute {
    /// The address family of the destination.
    pub fn af(&self) -> Af {
        Af::of(&self.dest)
    }

    /// Whether this is a usable default route: destination `0.0.0.0/0` or `::/0`, up, not
    /// a reject route, and not on the loopback interface `lo`.
    pub fn is_default(&self) -> bool {
        self.prefix == 0
            && self.dest.is_unspecified()
            && self.flags & RTF_UP != 0
            && self.flags & RTF_REJECT == 0
            && self.iface != "lo"
    }
}

/// A line of a route table that could not be parsed, and was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    /// The line number, from 1.
    pub line: usize,
    /// Why it was skipped.
    pub reason: &'static str,
}

/// A parsed route table: the routes read, and the lines skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// The routes, in the order of the file.
    pub routes: Vec<OsRoute>,
    /// The lines that could not be parsed.
    pub bad: Vec<BadLine>,
}

impl RouteTable {
    /// The usable default routes (see [`OsRoute::is_default`]), lowest metric first; among
    /// equal metrics, the order of the file.
    pub fn defaults(&self) -> Vec<&OsRoute> {
        let mut d: Vec<&OsRoute> = self.routes.iter().filter(|r| r.is_default()).collect();
        d.sort_by_key(|r| r.metric); // stable: file order among equal metrics
        d
    }

    /// The interface of the best default route, if there is one.
    pub fn default_iface(&self) -> Option<&str> {
        self.defaults().first().map(|r| r.iface.as_str())
    }

    /// The best default route that goes through a gateway (the router in front of this
    /// machine), if there is one.
    pub fn default_gateway(&self) -> Option<&OsRoute> {
        self.defaults().into_iter().find(|r| r.gateway.is_some())
    }
}

fn hex_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 8 {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// An IPv4 address as `/proc/net/route` writes it: the 32-bit value in host byte order,
/// as eight hex digits (so `0101A8C0` is 192.168.1.1 on a little-endian machine).
fn proc_ipv4(s: &str) -> Option<Ipv4Addr> {
    if s.len() != 8 {
        return None;
    }
    Some(Ipv4Addr::from(hex_u32(s)?.to_ne_bytes()))
}

/// Parses `/proc/net/route` (IPv4).
///
/// Columns: `Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT`. The
/// header line is skipped; so are blank lines. A line that does not parse is recorded in
/// [`RouteTable::bad`] and skipped.
pub fn parse_proc_route(text: &str) -> RouteTable {
    let mut table = RouteTable::default();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() || (i == 0 && f[0] == "Iface") {
            continue;
        }
        match parse_v4_fields(&f) {
            Ok(r) => table.routes.push(r),
            Err(reason) => table.bad.push(BadLine {
                line: i + 1,
                reason,
            }),
        }
    }
    table
}

fn parse_v4_fields(f: &[&str]) -> Result<OsRoute, &'static str> {
    if f.len() < 8 {
        return Err("fewer than 8 columns");
    }
    let dest = proc_ipv4(f[1]).ok_or("bad destination")?;
    let gw = proc_ipv4(f[2]).ok_or("bad gateway")?;
    let flags = hex_u32(f[3]).ok_or("bad flags")?;
    let metric: u32 = f[6].parse().map_err(|_| "bad metric")?;
    let mask = u32::from_be_bytes(proc_ipv4(f[7]).ok_or("bad mask")?.octets());
    if mask.leading_ones() + mask.trailing_zeros() != 32 {
        return Err("mask is not a prefix");
    }
    Ok(OsRoute {
        iface: f[0].to_owned(),
        dest: dest.into(),
        prefix: mask.leading_ones() as u8,
        gateway: (flags & RTF_GATEWAY != 0).then_some(gw.into()),
        metric,
        flags,
    })
}

/// Parses `/proc/net/ipv6_route`.
///
/// Columns (no header): destination (32 hex digits), its prefix length (hex), source, its
/// prefix length, next hop, metric, reference count, use count, flags (all hex), and the
/// interface name. Blank lines are skipped; a line that does not parse is recorded in
/// [`RouteTable::bad`] and skipped.
pub fn parse_proc_ipv6_route(text: &str) -> RouteTable {
    let mut table = RouteTable::default();
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        match parse_v6_fields(&f) {
            Ok(r) => table.routes.push(r),
            Err(reason) => table.bad.push(BadLine {
                line: i + 1,
                reason,
            }),
        }
    }
    table
}

fn proc_ipv6(s: &str) -> Option<Ipv6Addr> {
    if s.len() != 32 {
        return None;
    }
    u128::from_str_radix(s, 16).ok().map(Ipv6Addr::from)
}

fn parse_v6_fields(f: &[&str]) -> Result<OsRoute, &'static str> {
    if f.len() != 10 {
        return Err("not 10 columns");
    }
    let dest = proc_ipv6(f[0]).ok_or("bad destination")?;
    let prefix = u8::from_str_radix(f[1], 16).map_err(|_| "bad prefix length")?;
    if prefix > 128 {
        return Err("prefix length over 128");
    }
    let next_hop = proc_ipv6(f[4]).ok_or("bad next hop")?;
    let metric = hex_u32(f[5]).ok_or("bad metric")?;
    let flags = hex_u32(f[8]).ok_or("bad flags")?;
    Ok(OsRoute {
        iface: f[9].to_owned(),
        dest: dest.into(),
        prefix,
        gateway: (!next_hop.is_unspecified()).then_some(next_hop.into()),
        metric,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written as a little-endian machine writes it.
    #[cfg(target_endian = "little")]
    const ROUTE_V4: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t010010AC\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t000010AC\t00000000\t0001\t0\t0\t100\t0000FFFF\t0\t0\t0
wlan0\t0001A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0
tun0\t00000000\t00000000\t0201\t0\t0\t50\t00000000\t0\t0\t0
broken\t00000000
bad\tZZZZZZZZ\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0
bad\t00000000\t00000000\t0001\t0\t0\tlots\t00000000\t0\t0\t0
bad\t00000000\t00000000\t0001\t0\t0\t0\t00FF00FF\t0\t0\t0

";

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv4_table_parses_routes_and_reports_bad_lines() {
        let t = parse_proc_route(ROUTE_V4);
        assert_eq!(t.routes.len(), 5);
        let net = &t.routes[2];
        assert_eq!(net.iface, "eth0");
        assert_eq!(net.dest, IpAddr::from([172, 16, 0, 0]));
        assert_eq!(net.prefix, 16);
        assert_eq!(net.gateway, None);
        assert!(!net.is_default());
        assert_eq!(t.routes[0].gateway, Some(IpAddr::from([192, 168, 1, 1])));
        assert_eq!(t.routes[3].prefix, 24);
        let bad: Vec<(usize, &str)> = t.bad.iter().map(|b| (b.line, b.reason)).collect();
        assert_eq!(
            bad,
            vec![
                (7, "fewer than 8 columns"),
                (8, "bad destination"),
                (9, "bad metric"),
                (10, "mask is not a prefix"),
            ]
        );
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv4_default_is_the_lowest_metric_that_is_not_a_reject_route() {
        let t = parse_proc_route(ROUTE_V4);
        // tun0 has metric 50 but is a reject route.
        assert_eq!(t.default_iface(), Some("eth0"));
        let d: Vec<&str> = t.defaults().iter().map(|r| r.iface.as_str()).collect();
        assert_eq!(d, ["eth0", "wlan0"]);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn the_default_gateway_is_the_best_default_route_through_a_router() {
        let t = parse_proc_route(ROUTE_V4);
        let gw = t
            .default_gateway()
            .expect("a default route through a gateway");
        assert_eq!(gw.iface, "eth0");
        assert_eq!(gw.gateway, Some(IpAddr::from([172, 16, 0, 1])));
        // A default route straight onto a link (a point-to-point tunnel) has no gateway.
        let direct = "tun0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_proc_route(direct).default_gateway(), None);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv4_equal_metrics_keep_file_order() {
        let text = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
b\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
a\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
";
        assert_eq!(parse_proc_route(text).default_iface(), Some("b"));
    }

    #[test]
    fn ipv4_table_without_default_or_routes() {
        let header =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
        for text in ["", header] {
            let t = parse_proc_route(text);
            assert_eq!(t, RouteTable::default());
            assert_eq!(t.default_iface(), None);
        }
        let only_net =
            format!("{header}eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n");
        let t = parse_proc_route(&only_net);
        assert_eq!(t.routes.len(), 1);
        assert_eq!(t.default_iface(), None);
    }

    #[test]
    fn ipv4_route_that_is_down_is_not_default() {
        let text = "eth0\t00000000\t00000000\t0000\t0\t0\t0\t00000000\t0\t0\t0\n";
        let t = parse_proc_route(text);
        assert_eq!(t.routes.len(), 1);
        assert_eq!(t.default_iface(), None);
    }

    const ROUTE_V6: &str = "\
20010db8000000000000000000000000 20 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003    wlan0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000064 00000001 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 00000001 00000001 00000000 00000001       lo
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 00000002 00000001 00000000 00000201     tun0
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
short line
0000000000000000000000000000000g 00 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000001 00000000 00000001     eth1
00000000000000000000000000000000 81 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000001 00000000 00000001     eth1
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 nothex!! 00000001 00000000 00000001     eth1
";

    #[test]
    fn ipv6_table_parses_routes_and_reports_bad_lines() {
        let t = parse_proc_ipv6_route(ROUTE_V6);
        assert_eq!(t.routes.len(), 8);
        let net = &t.routes[0];
        assert_eq!(net.dest, "2001:db8::".parse::<IpAddr>().unwrap());
        assert_eq!(net.prefix, 32);
        assert_eq!(net.metric, 256);
        assert_eq!(net.gateway, None);
        assert!(!net.is_default());
        assert_eq!(net.af(), Af::V6);
        assert_eq!(
            t.routes[2].gateway,
            Some("fe80::1".parse::<IpAddr>().unwrap())
        );
        assert_eq!(t.routes[7].prefix, 128);
        let bad: Vec<(usize, &str)> = t.bad.iter().map(|b| (b.line, b.reason)).collect();
        assert_eq!(
            bad,
            vec![
                (9, "not 10 columns"),
                (10, "bad destination"),
                (11, "prefix length over 128"),
                (12, "bad metric"),
            ]
        );
    }

    #[test]
    fn ipv6_default_skips_lo_and_reject_routes_and_takes_the_lowest_metric() {
        let t = parse_proc_ipv6_route(ROUTE_V6);
        let d: Vec<(&str, u32)> = t
            .defaults()
            .iter()
            .map(|r| (r.iface.as_str(), r.metric))
            .collect();
        assert_eq!(d, [("eth0", 100), ("wlan0", 1024)]);
        assert_eq!(t.default_iface(), Some("eth0"));
    }

    #[test]
    fn ipv6_empty_table_has_no_default() {
        for text in ["", "\n\n"] {
            let t = parse_proc_ipv6_route(text);
            assert_eq!(t, RouteTable::default());
            assert_eq!(t.default_iface(), None);
        }
    }

    #[test]
    fn os_route_serializes_to_json_and_back() {
        let r = OsRoute {
            iface: "eth0".into(),
            dest: Ipv6Addr::UNSPECIFIED.into(),
            prefix: 0,
            gateway: Some("fe80::1".parse().unwrap()),
            metric: 100,
            flags: RTF_UP | RTF_GATEWAY,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"gateway\":\"fe80::1\""), "{json}");
        assert_eq!(serde_json::from_str::<OsRoute>(&json).unwrap(), r);
    }
}
