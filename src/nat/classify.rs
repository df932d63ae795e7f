//! The NAT classifier, sans-IO: what the STUN tests saw in, the behaviour out.
//!
//! The tests are RFC 5780's (section 4):
//!
//! - test I: a Binding request to the server's primary address A1:P1 gives the mapped
//!   address X1 and the server's other address A2:P2;
//! - mapping test II: a request to A2:P1 from the same socket gives X2; X2 = X1 means
//!   endpoint-independent mapping;
//! - mapping test III: a request to A2:P2 gives X3; X3 = X2 means address-dependent
//!   mapping, otherwise address-and-port-dependent;
//! - filtering test II, from a second socket that has only ever talked to A1:P1: a request
//!   asking for a reply from A2:P2 (change IP and port); if it arrives, filtering is
//!   endpoint-independent;
//! - filtering test III: a request asking for a reply from A1:P2 (change port); if it
//!   arrives, address-dependent, otherwise address-and-port-dependent.
//!
//! A server without a usable OTHER-ADDRESS, or one that answers a change request from
//! the address it was sent to, cannot tell filtering (nor mapping) apart: the answer is
//! then unknown, never "full cone".

use std::net::SocketAddr;

use super::{Filtering, Mapping, NatType, PortAllocation, Reasons};

/// What one answered Binding request showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// The mapped (reflexive) address the server saw.
    pub mapped: SocketAddr,
    /// The server's other address (OTHER-ADDRESS or CHANGED-ADDRESS), if given.
    pub other: Option<SocketAddr>,
}

/// The outcome of one test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TestOutcome<T> {
    /// Not run (yet).
    #[default]
    NotRun,
    /// Run, and no reply came before the schedule ran out.
    NoReply,
    /// Run, and this came back.
    Reply(T),
}

impl<T> TestOutcome<T> {
    fn reply(&self) -> Option<&T> {
        match self {
            TestOutcome::Reply(t) => Some(t),
            _ => None,
        }
    }
}

/// A port-allocation sample: a fresh local port and the port the NAT mapped it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSample {
    /// The local port.
    pub local: u16,
    /// The mapped port the server saw.
    pub mapped: u16,
}

/// Everything the tests saw, filled in by the I/O layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observations {
    /// The local address of the socket that ran test I and the mapping tests (a
    /// specific address, not a wildcard).
    pub local: Option<SocketAddr>,
    /// The server's primary address A1:P1, where test I went.
    pub server: Option<SocketAddr>,
    /// Test I.
    pub test1: TestOutcome<Binding>,
    /// Mapping test II: the mapped address seen by A2:P1.
    pub mapping2: TestOutcome<SocketAddr>,
    /// Mapping test III: the mapped address seen by A2:P2.
    pub mapping3: TestOutcome<SocketAddr>,
    /// Filtering test II (change IP and port): where the reply came from.
    pub filtering2: TestOutcome<SocketAddr>,
    /// Filtering test III (change port): where the reply came from.
    pub filtering3: TestOutcome<SocketAddr>,
    /// Port-allocation samples from fresh sockets, in the order their first packet was
    /// sent.
    pub port_samples: Vec<PortSample>,
}

impl Observations {
    /// The server's other address A2:P2, if test I gave a usable one: it must differ
    /// from the primary in both address and port, in the same family.
    pub fn other(&self) -> Option<SocketAddr> {
        let server = self.server?;
        let other = self.test1.reply()?.other?;
        (other.ip() != server.ip()
            && other.port() != server.port()
            && other.is_ipv4() == server.is_ipv4())
        .then_some(other)
    }

    /// Where mapping test II goes: A2:P1.
    pub fn mapping2_target(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.other()?.ip(), self.server?.port()))
    }

    /// Where filtering test II's reply should come from: A2:P2.
    pub fn filtering2_source(&self) -> Option<SocketAddr> {
        self.other()
    }

    /// Where filtering test III's reply should come from: A1:P2.
    pub fn filtering3_source(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.server?.ip(), self.other()?.port()))
    }

    /// Whether the host is behind a NAT: the mapped address differs from the local one.
    /// `None` until test I has answered.
    pub fn behind_nat(&self) -> Option<bool> {
        let mapped = self.test1.reply()?.mapped;
        Some(Some(mapped) != self.local)
    }

    /// Whether the mapping tests should run: test I answered with a usable other address,
    /// from behind a NAT.
    pub fn wants_mapping_tests(&self) -> bool {
        self.behind_nat() == Some(true) && self.other().is_some()
    }

    /// Whether mapping test III should run: test II saw another mapping than test I.
    pub fn wants_mapping3(&self) -> bool {
        match (self.test1.reply(), self.mapping2.reply()) {
            (Some(b), Some(x2)) => b.mapped != *x2 && self.mapping3 == TestOutcome::NotRun,
            _ => false,
        }
    }

    /// Whether the filtering tests should run: test I answered with a usable other
    /// address.
    pub fn wants_filtering_tests(&self) -> bool {
        self.other().is_some()
    }
}

/// Why some part of the answer is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unknown {
    /// The server gave no OTHER-ADDRESS (or an unusable one): it does not support RFC
    /// 5780.
    NoOtherAddress,
    /// The server answered a change request from the address it was sent to: it ignores
    /// CHANGE-REQUEST.
    ChangeIgnored,
    /// A test whose answer was needed got no reply.
    NoReply,
}

/// The classifier's answer. `None` fields are unknown, and each then has its reason in
/// [`reasons`](Classification::reasons) (unless test I did not run at all: then nothing is
/// claimed and the answer is the default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classification {
    /// The RFC 3489 type.
    pub nat_type: Option<NatType>,
    /// The RFC 5780 mapping behaviour.
    pub mapping: Option<Mapping>,
    /// The RFC 5780 filtering behaviour.
    pub filtering: Option<Filtering>,
    /// The mapped address of test I.
    pub external: Option<SocketAddr>,
    /// The port-allocation pattern.
    pub port_allocation: Option<PortAllocation>,
    /// Why parts are unknown, if they are, as codes.
    pub unknown: Vec<Unknown>,
    /// Why each unknown part is unknown, in words: set exactly for the `None` fields.
    pub reasons: Reasons,
}

/// The reason of every part when no server answered test I.
const NO_ANSWER: &str = "no stun server answered";

/// A value, or why it is unknown.
type Known<T> = Result<T, String>;

fn split<T>(k: Known<T>) -> (Option<T>, Option<String>) {
    match k {
        Ok(v) => (Some(v), None),
        Err(why) => (None, Some(why)),
    }
}

/// Classifies what the tests saw.
pub fn classify(obs: &Observations) -> Classification {
    let mut out = Classification::default();
    let test1 = match obs.test1 {
        TestOutcome::NotRun => return out,
        TestOutcome::NoReply => {
            out.nat_type = Some(NatType::UdpBlocked);
            out.unknown.push(Unknown::NoReply);
            let why = || Some(NO_ANSWER.to_owned());
            out.reasons = Reasons {
                nat_type: None,
                mapping: why(),
                filtering: why(),
                external: why(),
                port_allocation: why(),
            };
            return out;
        }
        TestOutcome::Reply(b) => b,
    };
    out.external = Some(test1.mapped);
    let behind_nat = obs.behind_nat() == Some(true);
    if obs.other().is_none() {
        out.unknown.push(Unknown::NoOtherAddress);
    }

    let mapping = mapping(obs, test1.mapped, behind_nat, &mut out.unknown);
    let filtering = filtering(obs, &mut out.unknown);

    use Filtering as F;
    use Mapping as M;
    let nat_type = match (behind_nat, &mapping, &filtering) {
        (false, _, Ok(F::EndpointIndependent)) => Ok(NatType::Open),
        (false, _, Ok(_)) => Ok(NatType::SymmetricUdpFirewall),
        (false, _, Err(why)) => Err(format!("the filtering is unknown: {why}")),
        (true, Ok(M::EndpointIndependent), Ok(f)) => Ok(match f {
            F::EndpointIndependent => NatType::FullCone,
            F::AddressDependent => NatType::RestrictedCone,
            F::AddressAndPortDependent => NatType::PortRestrictedCone,
        }),
        (true, Ok(M::EndpointIndependent), Err(why)) => {
            Err(format!("the filtering is unknown: {why}"))
        }
        (true, Ok(_), _) => Ok(NatType::Symmetric),
        (true, Err(why), _) => Err(format!("the mapping is unknown: {why}")),
    };

    let port_allocation = if !behind_nat {
        Ok(PortAllocation::Preserving)
    } else {
        port_allocation(&obs.port_samples).ok_or_else(|| {
            format!(
                "{} port samples answered, {MIN_PORT_SAMPLES} are needed",
                obs.port_samples.len()
            )
        })
    };

    (out.nat_type, out.reasons.nat_type) = split(nat_type);
    (out.mapping, out.reasons.mapping) = split(mapping);
    (out.filtering, out.reasons.filtering) = split(filtering);
    (out.port_allocation, out.reasons.port_allocation) = split(port_allocation);
    out.unknown.dedup();
    out
}

/// Why the server's answer to test I allows no RFC 5780 test.
fn no_other_address(obs: &Observations) -> String {
    match obs.server {
        Some(server) => {
            format!("{server} gave no usable other-address (it does not support rfc 5780)")
        }
        None => "the server gave no usable other-address (no rfc 5780 support)".to_owned(),
    }
}

fn mapping(
    obs: &Observations,
    mapped: SocketAddr,
    behind_nat: bool,
    unknown: &mut Vec<Unknown>,
) -> Known<Mapping> {
    if !behind_nat {
        return Ok(Mapping::EndpointIndependent);
    }
    let (Some(to2), Some(to3)) = (obs.mapping2_target(), obs.other()) else {
        return Err(no_other_address(obs));
    };
    match (obs.mapping2, obs.mapping3) {
        (TestOutcome::Reply(x2), _) if x2 == mapped => Ok(Mapping::EndpointIndependent),
        (TestOutcome::Reply(x2), TestOutcome::Reply(x3)) if x3 == x2 => {
            Ok(Mapping::AddressDependent)
        }
        (TestOutcome::Reply(_), TestOutcome::Reply(_)) => Ok(Mapping::AddressAndPortDependent),
        (TestOutcome::NoReply, _) => {
            unknown.push(Unknown::NoReply);
            Err(format!("mapping test ii (to {to2}) got no reply"))
        }
        (TestOutcome::Reply(_), TestOutcome::NoReply) => {
            unknown.push(Unknown::NoReply);
            Err(format!("mapping test iii (to {to3}) got no reply"))
        }
        _ => Err("the mapping tests did not run".to_owned()),
    }
}

fn filtering(obs: &Observations, unknown: &mut Vec<Unknown>) -> Known<Filtering> {
    let Some(server) = obs.server else {
        return Err("the server's address is unknown".to_owned());
    };
    let (Some(want2), Some(want3)) = (obs.filtering2_source(), obs.filtering3_source()) else {
        return Err(no_other_address(obs));
    };
    // A reply from the very address the request went to means the server ignored the
    // change request; nothing can be concluded from either test then.
    let ignored = |p: &TestOutcome<SocketAddr>| p.reply() == Some(&server);
    if ignored(&obs.filtering2) || ignored(&obs.filtering3) {
        unknown.push(Unknown::ChangeIgnored);
        return Err(format!(
            "{server} ignored change-request (it answered from the address the request went to)"
        ));
    }
    match (obs.filtering2, obs.filtering3) {
        (TestOutcome::Reply(from), _) if from == want2 => Ok(Filtering::EndpointIndependent),
        (TestOutcome::NoReply, TestOutcome::Reply(from)) if from == want3 => {
            Ok(Filtering::AddressDependent)
        }
        (TestOutcome::NoReply, TestOutcome::NoReply) => Ok(Filtering::AddressAndPortDependent),
        (TestOutcome::NotRun, _) | (_, TestOutcome::NotRun) => {
            Err("the filtering tests did not run".to_owned())
        }
        _ => Err("a filtering test was answered from an unexpected address".to_owned()),
    }
}

/// The fewest port samples that tell a pattern.
pub const MIN_PORT_SAMPLES: usize = 3;

/// The largest step between consecutive mapped ports still called sequential.
pub const MAX_SEQUENTIAL_DELTA: i32 = 64;

/// The port-allocation pattern of a NAT from samples taken in order: preserving when
/// every mapped port equals its local port, sequential when consecutive mapped ports
/// differ by the same small step, random otherwise. `None` with fewer than
/// [`MIN_PORT_SAMPLES`] samples.
pub fn port_allocation(samples: &[PortSample]) -> Option<PortAllocation> {
    if samples.len() < MIN_PORT_SAMPLES {
        return None;
    }
    if samples.iter().all(|s| s.local == s.mapped) {
        return Some(PortAllocation::Preserving);
    }
    let deltas: Vec<i32> = samples
        .windows(2)
        .map(|w| i32::from(w[1].mapped) - i32::from(w[0].mapped))
        .collect();
    let d = deltas[0];
    if d != 0 && d.abs() <= MAX_SEQUENTIAL_DELTA && deltas.iter().all(|x| *x == d) {
        Some(PortAllocation::Sequential { delta: d })
    } else {
        Some(PortAllocation::Random)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "198.18.1.2:40000";
    const SERVER: &str = "203.0.113.10:3478";
    const OTHER: &str = "203.0.113.11:3479";
    const A1P2: &str = "203.0.113.10:3479";
    const A2P1: &str = "203.0.113.11:3478";
    const WAN: &str = "198.51.100.1:40000";

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn reply(s: &str) -> TestOutcome<SocketAddr> {
        TestOutcome::Reply(a(s))
    }

    /// Test I answered from behind `mapped`, with the usual other address.
    fn base(mapped: &str) -> Observations {
        Observations {
            local: Some(a(LOCAL)),
            server: Some(a(SERVER)),
            test1: TestOutcome::Reply(Binding {
                mapped: a(mapped),
                other: Some(a(OTHER)),
            }),
            port_samples: vec![
                PortSample {
                    local: 1000,
                    mapped: 1000,
                },
                PortSample {
                    local: 2000,
                    mapped: 2000,
                },
                PortSample {
                    local: 3000,
                    mapped: 3000,
                },
            ],
            ..Observations::default()
        }
    }

    struct Row {
        name: &'static str,
        obs: Observations,
        nat_type: Option<NatType>,
        mapping: Option<Mapping>,
        filtering: Option<Filtering>,
    }

    use Filtering as F;
    use Mapping as M;

    fn table() -> Vec<Row> {
        let mut rows = Vec::new();
        // Open: no translation, any-source filtering.
        let mut o = base(LOCAL);
        o.filtering2 = reply(OTHER);
        o.filtering3 = reply(A1P2);
        rows.push(Row {
            name: "open",
            obs: o,
            nat_type: Some(NatType::Open),
            mapping: Some(M::EndpointIndependent),
            filtering: Some(F::EndpointIndependent),
        });
        // Symmetric UDP firewall: no translation, filtered.
        let mut o = base(LOCAL);
        o.filtering2 = TestOutcome::NoReply;
        o.filtering3 = TestOutcome::NoReply;
        rows.push(Row {
            name: "symmetric-udp-firewall",
            obs: o,
            nat_type: Some(NatType::SymmetricUdpFirewall),
            mapping: Some(M::EndpointIndependent),
            filtering: Some(F::AddressAndPortDependent),
        });
        // Full cone.
        let mut o = base(WAN);
        o.mapping2 = reply(WAN);
        o.filtering2 = reply(OTHER);
        o.filtering3 = reply(A1P2);
        rows.push(Row {
            name: "full-cone",
            obs: o,
            nat_type: Some(NatType::FullCone),
            mapping: Some(M::EndpointIndependent),
            filtering: Some(F::EndpointIndependent),
        });
        // Restricted cone.
        let mut o = base(WAN);
        o.mapping2 = reply(WAN);
        o.filtering2 = TestOutcome::NoReply;
        o.filtering3 = reply(A1P2);
        rows.push(Row {
            name: "restricted-cone",
            obs: o,
            nat_type: Some(NatType::RestrictedCone),
            mapping: Some(M::EndpointIndependent),
            filtering: Some(F::AddressDependent),
        });
        // Port-restricted cone.
        let mut o = base(WAN);
        o.mapping2 = reply(WAN);
        o.filtering2 = TestOutcome::NoReply;
        o.filtering3 = TestOutcome::NoReply;
        rows.push(Row {
            name: "port-restricted-cone",
            obs: o,
            nat_type: Some(NatType::PortRestrictedCone),
            mapping: Some(M::EndpointIndependent),
            filtering: Some(F::AddressAndPortDependent),
        });
        // Symmetric, address-and-port-dependent mapping.
        let mut o = base(WAN);
        o.mapping2 = reply("198.51.100.1:40001");
        o.mapping3 = reply("198.51.100.1:40002");
        o.filtering2 = TestOutcome::NoReply;
        o.filtering3 = TestOutcome::NoReply;
        rows.push(Row {
            name: "symmetric (apdm)",
            obs: o,
            nat_type: Some(NatType::Symmetric),
            mapping: Some(M::AddressAndPortDependent),
            filtering: Some(F::AddressAndPortDependent),
        });
        // Symmetric, address-dependent mapping, even with open filtering.
        let mut o = base(WAN);
        o.mapping2 = reply("198.51.100.1:40001");
        o.mapping3 = reply("198.51.100.1:40001");
        o.filtering2 = reply(OTHER);
        rows.push(Row {
            name: "symmetric (adm)",
            obs: o,
            nat_type: Some(NatType::Symmetric),
            mapping: Some(M::AddressDependent),
            filtering: Some(F::EndpointIndependent),
        });
        // UDP blocked.
        rows.push(Row {
            name: "udp-blocked",
            obs: Observations {
                local: Some(a(LOCAL)),
                server: Some(a(SERVER)),
                test1: TestOutcome::NoReply,
                ..Observations::default()
            },
            nat_type: Some(NatType::UdpBlocked),
            mapping: None,
            filtering: None,
        });
        // A server that ignores CHANGE-REQUEST behind a full cone: unknown, not full cone.
        let mut o = base(WAN);
        o.mapping2 = reply(WAN);
        o.filtering2 = reply(SERVER);
        o.filtering3 = reply(SERVER);
        rows.push(Row {
            name: "change ignored",
            obs: o,
            nat_type: None,
            mapping: Some(M::EndpointIndependent),
            filtering: None,
        });
        // A server that ignores CHANGE-REQUEST, with no NAT: unknown, not open.
        let mut o = base(LOCAL);
        o.filtering2 = reply(SERVER);
        o.filtering3 = TestOutcome::NoReply;
        rows.push(Row {
            name: "change ignored, no nat",
            obs: o,
            nat_type: None,
            mapping: Some(M::EndpointIndependent),
            filtering: None,
        });
        // No OTHER-ADDRESS: nothing beyond the external address.
        let mut o = base(WAN);
        o.test1 = TestOutcome::Reply(Binding {
            mapped: a(WAN),
            other: None,
        });
        rows.push(Row {
            name: "no other-address",
            obs: o,
            nat_type: None,
            mapping: None,
            filtering: None,
        });
        // An OTHER-ADDRESS equal to the server itself is no other address.
        let mut o = base(WAN);
        o.test1 = TestOutcome::Reply(Binding {
            mapped: a(WAN),
            other: Some(a(SERVER)),
        });
        o.filtering2 = reply(SERVER);
        rows.push(Row {
            name: "other-address is the server",
            obs: o,
            nat_type: None,
            mapping: None,
            filtering: None,
        });
        // Mapping test II lost: mapping unknown, so the type is too.
        let mut o = base(WAN);
        o.mapping2 = TestOutcome::NoReply;
        o.filtering2 = reply(OTHER);
        rows.push(Row {
            name: "mapping test lost",
            obs: o,
            nat_type: None,
            mapping: None,
            filtering: Some(F::EndpointIndependent),
        });
        // Mapping test III lost after II differed: unknown mapping.
        let mut o = base(WAN);
        o.mapping2 = reply("198.51.100.1:40001");
        o.mapping3 = TestOutcome::NoReply;
        rows.push(Row {
            name: "mapping test iii lost",
            obs: o,
            nat_type: None,
            mapping: None,
            filtering: None,
        });
        // A reply from an unexpected source is no evidence (the I/O layer should never
        // pass one, but the classifier must not trust it).
        let mut o = base(WAN);
        o.mapping2 = reply(WAN);
        o.filtering2 = reply("203.0.113.99:1");
        o.filtering3 = TestOutcome::NoReply;
        rows.push(Row {
            name: "reply from a stranger",
            obs: o,
            nat_type: None,
            mapping: Some(M::EndpointIndependent),
            filtering: None,
        });
        rows
    }

    #[test]
    fn decision_table() {
        for row in table() {
            let c = classify(&row.obs);
            assert_eq!(c.nat_type, row.nat_type, "{}: nat type", row.name);
            assert_eq!(c.mapping, row.mapping, "{}: mapping", row.name);
            assert_eq!(c.filtering, row.filtering, "{}: filtering", row.name);
        }
    }

    #[test]
    fn unknown_reasons_are_given() {
        let rows = table();
        let find = |n: &str| classify(&rows.iter().find(|r| r.name == n).unwrap().obs);
        assert!(find("change ignored")
            .unknown
            .contains(&Unknown::ChangeIgnored));
        assert!(find("no other-address")
            .unknown
            .contains(&Unknown::NoOtherAddress));
        assert!(find("mapping test lost")
            .unknown
            .contains(&Unknown::NoReply));
        assert!(find("full-cone").unknown.is_empty());
    }

    /// Each field of `c` with its reason, by name.
    fn parts(c: &Classification) -> [(&'static str, bool, &Option<String>); 5] {
        [
            ("nat_type", c.nat_type.is_some(), &c.reasons.nat_type),
            ("mapping", c.mapping.is_some(), &c.reasons.mapping),
            ("filtering", c.filtering.is_some(), &c.reasons.filtering),
            ("external", c.external.is_some(), &c.reasons.external),
            (
                "port_allocation",
                c.port_allocation.is_some(),
                &c.reasons.port_allocation,
            ),
        ]
    }

    #[test]
    fn every_unknown_part_has_a_reason_and_no_known_part_has_one() {
        let mut rows = table();
        // Behind a NAT with only two port samples: the pattern is unknown.
        let mut o = base(WAN);
        o.mapping2 = reply(WAN);
        o.filtering2 = reply(OTHER);
        o.port_samples.truncate(2);
        rows.push(Row {
            name: "two port samples",
            obs: o,
            nat_type: Some(NatType::FullCone),
            mapping: Some(M::EndpointIndependent),
            filtering: Some(F::EndpointIndependent),
        });
        for row in &rows {
            let c = classify(&row.obs);
            for (field, known, reason) in parts(&c) {
                match reason {
                    Some(why) => {
                        assert!(!known, "{}: {field} is known, yet has a reason", row.name);
                        assert!(!why.is_empty(), "{}: {field}", row.name);
                        assert_eq!(why, &why.to_lowercase(), "{}: {field}", row.name);
                    }
                    None => assert!(known, "{}: {field} is unknown without a reason", row.name),
                }
            }
        }
        let why = |name: &str| {
            let row = rows.iter().find(|r| r.name == name).unwrap();
            classify(&row.obs).reasons
        };
        let r = why("udp-blocked");
        assert_eq!(r.external.as_deref(), Some("no stun server answered"));
        assert_eq!(r.nat_type, None, "udp-blocked is a type");
        let r = why("change ignored");
        let f = r.filtering.unwrap();
        assert!(
            f.contains(&format!("{SERVER} ignored change-request")),
            "{f}"
        );
        assert_eq!(
            r.nat_type.unwrap(),
            format!("the filtering is unknown: {f}")
        );
        let r = why("no other-address");
        let m = r.mapping.unwrap();
        assert!(
            m.contains(&format!("{SERVER} gave no usable other-address")),
            "{m}"
        );
        assert_eq!(r.nat_type.unwrap(), format!("the mapping is unknown: {m}"));
        assert_eq!(
            why("mapping test lost").mapping.unwrap(),
            format!("mapping test ii (to {A2P1}) got no reply")
        );
        assert_eq!(
            why("mapping test iii lost").mapping.unwrap(),
            format!("mapping test iii (to {OTHER}) got no reply")
        );
        assert!(why("reply from a stranger")
            .filtering
            .unwrap()
            .contains("unexpected address"));
        assert_eq!(
            why("two port samples").port_allocation.unwrap(),
            "2 port samples answered, 3 are needed"
        );
    }

    #[test]
    fn external_is_test_one() {
        let c = classify(&base(WAN));
        assert_eq!(c.external, Some(a(WAN)));
        assert_eq!(
            classify(&Observations::default()),
            Classification::default()
        );
    }

    #[test]
    fn which_tests_run() {
        let o = base(LOCAL);
        assert!(!o.wants_mapping_tests(), "no nat, no mapping tests");
        assert!(o.wants_filtering_tests());
        let mut o = base(WAN);
        assert!(o.wants_mapping_tests());
        assert_eq!(o.mapping2_target(), Some(a(A2P1)));
        assert_eq!(o.filtering3_source(), Some(a(A1P2)));
        o.mapping2 = reply(WAN);
        assert!(!o.wants_mapping3());
        o.mapping2 = reply("198.51.100.1:1");
        assert!(o.wants_mapping3());
        o.test1 = TestOutcome::Reply(Binding {
            mapped: a(WAN),
            other: None,
        });
        assert!(!o.wants_mapping_tests());
        assert!(!o.wants_filtering_tests());
    }

    fn samples(pairs: &[(u16, u16)]) -> Vec<PortSample> {
        pairs
            .iter()
            .map(|&(local, mapped)| PortSample { local, mapped })
            .collect()
    }

    #[test]
    fn port_allocation_patterns() {
        use PortAllocation as P;
        let cases: Vec<(Vec<PortSample>, Option<P>)> = vec![
            (samples(&[(1, 1), (5, 5), (9, 9)]), Some(P::Preserving)),
            (
                samples(&[(1, 30000), (5, 30001), (9, 30002)]),
                Some(P::Sequential { delta: 1 }),
            ),
            (
                samples(&[(1, 30010), (5, 30006), (9, 30002)]),
                Some(P::Sequential { delta: -4 }),
            ),
            (
                samples(&[(1, 30000), (5, 41234), (9, 1200)]),
                Some(P::Random),
            ),
            (
                samples(&[(1, 30000), (5, 30000), (9, 30000)]),
                Some(P::Random),
            ),
            (
                samples(&[(1, 30000), (5, 30100), (9, 30200)]),
                Some(P::Random),
            ),
            (samples(&[(1, 1), (5, 5)]), None),
        ];
        for (s, want) in cases {
            assert_eq!(port_allocation(&s), want, "{s:?}");
        }
    }
}
