use super::*;

const NOW: u64 = 1_800_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);

fn me() -> Identity {
    Identity::from_seed([9; 32])
}

fn sample() -> PeerRecord {
    let mut v4 = FamilyEntry::new(Af::V4);
    v4.local = vec![
        LocalAddr::new("192.168.1.20:4000".parse().unwrap()),
        LocalAddr::new("169.254.3.4:4000".parse().unwrap()),
    ];
    v4.external = Some("198.51.100.7:40123".parse().unwrap());
    v4.nat_type = Some(NatType::PortRestrictedCone);
    v4.mapping = Some(Mapping::EndpointIndependent);
    v4.filtering = Some(Filtering::AddressAndPortDependent);
    v4.port_allocation = Some(PortAllocation::Sequential { delta: -2 });
    v4.port_mappings = vec![PortMapping {
        protocol: Proto::Udp,
        internal_port: 4000,
        external_port: 41000,
        lease_expires_ms: NOW + 7_200_000,
    }];
    v4.relay = Some(Relay {
        relayed: "203.0.113.9:50000".parse().unwrap(),
        server: "[2001:db8::3]:3478".parse().unwrap(),
    });
    let mut v6 = FamilyEntry::new(Af::V6);
    v6.local = vec![
        LocalAddr::new("[fe80::1]:4000".parse().unwrap()),
        LocalAddr::new("[2001:db8::20]:4000".parse().unwrap()),
    ];
    v6.port_allocation = Some(PortAllocation::Preserving);
    PeerRecord::builder()
        .interface(InterfaceEntry {
            name: "eth0".into(),
            families: vec![v4, v6],
        })
        .broker("mqtt://127.0.0.1:1883")
        .broker("mqtt://[::1]:1884")
        .sign(&me(), NOW, HOUR)
        .unwrap()
}

fn binary(r: &PeerRecord) -> Vec<u8> {
    let mut out = BytesMut::new();
    r.emit(&mut out);
    out.to_vec()
}

#[test]
fn a_record_round_trips_through_text_and_json_and_verifies() {
    let r = sample();
    assert_eq!(binary(&r).len(), r.emit_len());
    let text = r.to_text();
    assert!(text.starts_with(TEXT_PREFIX) && !text.contains(char::is_whitespace));
    assert!(text.len() <= MAX_RECORD_TEXT);
    let from_text = PeerRecord::parse(&text, NOW + 1).unwrap();
    assert_eq!(from_text, r);
    let json = serde_json::to_string(&r.to_json()).unwrap();
    let from_json = PeerRecord::from_json(&json, NOW + 1).unwrap();
    assert_eq!(from_json, r);
    assert_eq!(from_json.to_text(), text);
    assert_eq!(r.node_id(), me().node_id());
    assert_eq!(r.signalling().topic, me().node_id().topic());
    assert_eq!((r.issued_ms(), r.expires_ms()), (NOW, NOW + 3_600_000));
}

#[test]
fn addresses_are_marked_private_link_local_or_global() {
    let r = sample();
    let json = r.to_json();
    let fam = &json["interfaces"][0]["families"];
    assert_eq!(fam[0]["local"][0]["class"], "private");
    assert_eq!(fam[0]["local"][1]["class"], "link-local");
    assert_eq!(fam[1]["local"][0]["class"], "link-local");
    assert_eq!(fam[1]["local"][1]["class"], "documentation");
    assert_eq!(fam[0]["nat_type"], "port-restricted-cone");
    assert_eq!(fam[0]["port_allocation"]["pattern"], "sequential");
    assert_eq!(fam[0]["port_mappings"][0]["protocol"], "udp");
    assert_eq!(
        r.interfaces()[0].families[0].local[1].class,
        AddrClass::LinkLocal
    );
}

#[test]
fn flipping_any_single_byte_of_the_binary_form_is_refused() {
    let bytes = binary(&sample());
    for at in 0..bytes.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[at] ^= flip;
            assert!(
                PeerRecord::parse_binary(&b, NOW).is_err(),
                "byte {at} ^ {flip:#x} was taken"
            );
        }
    }
}

#[test]
fn a_changed_json_field_is_refused() {
    let r = sample();
    let mut j = r.to_json();
    j["signalling"]["brokers"][0] = "mqtt://127.0.0.2:1883".into();
    let e = PeerRecord::from_json(&j.to_string(), NOW).unwrap_err();
    assert!(matches!(e, Error::BadSignature), "{e}");

    let mut j = r.to_json();
    j["interfaces"][0]["families"][0]["local"][0]["class"] = "global".into();
    let e = PeerRecord::from_json(&j.to_string(), NOW).unwrap_err();
    assert!(matches!(e, Error::Malformed(_)), "{e}");

    let mut j = r.to_json();
    j["node_id"] = Identity::from_seed([1; 32]).node_id().to_string().into();
    let e = PeerRecord::from_json(&j.to_string(), NOW).unwrap_err();
    assert!(matches!(e, Error::IdMismatch { .. }), "{e}");
    assert!(e.to_string().contains("does not match its key"), "{e}");

    let mut j = r.to_json();
    j.as_object_mut().unwrap().remove("signature");
    let e = PeerRecord::from_json(&j.to_string(), NOW).unwrap_err();
    assert_eq!(e.to_string(), "peer record is not signed");
}

#[test]
fn an_unsigned_or_truncated_record_is_refused() {
    let bytes = binary(&sample());
    let body = &bytes[..bytes.len() - SIG_LEN];
    assert!(matches!(
        PeerRecord::parse_binary(body, NOW),
        Err(Error::Unsigned)
    ));
    for cut in 0..bytes.len() {
        assert!(
            PeerRecord::parse_binary(&bytes[..cut], NOW).is_err(),
            "{cut}"
        );
    }
}

#[test]
fn expiry_and_clock_skew_are_enforced() {
    let r = sample();
    let text = r.to_text();
    let e = PeerRecord::parse(&text, r.expires_ms()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "peer record expired at {} (now {}, unix ms)",
            r.expires_ms(),
            r.expires_ms()
        )
    );
    PeerRecord::parse(&text, r.expires_ms() - 1).unwrap();
    // Issued up to five minutes ahead of this clock: taken; further: refused.
    PeerRecord::parse(&text, NOW - MAX_CLOCK_SKEW_MS).unwrap();
    let e = PeerRecord::parse(&text, NOW - MAX_CLOCK_SKEW_MS - 1).unwrap_err();
    assert!(matches!(e, Error::FromTheFuture { .. }), "{e}");
}

#[test]
fn the_size_bound_is_checked_before_decoding_and_when_building() {
    let huge = format!("{TEXT_PREFIX}{}", "A".repeat(MAX_RECORD_TEXT));
    let e = PeerRecord::parse(&huge, NOW).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "peer record of {} bytes is over the limit of {MAX_RECORD_TEXT}",
            huge.len()
        )
    );
    // Sixteen interfaces of sixteen IPv6 addresses cannot fit in 4 KiB of text.
    let mut b = PeerRecord::builder();
    for i in 0..MAX_INTERFACES {
        let mut f = FamilyEntry::new(Af::V6);
        f.local = (0..MAX_FAMILY_ADDRS as u16)
            .map(|p| LocalAddr::new(SocketAddr::new("2001:db8::1".parse().unwrap(), p)))
            .collect();
        b = b.interface(InterfaceEntry {
            name: format!("eth{i}"),
            families: vec![f],
        });
    }
    let e = b.sign(&me(), NOW, HOUR).unwrap_err();
    assert!(e.to_string().contains("over the limit of 4096"), "{e}");
    let e = PeerRecord::builder()
        .interface(InterfaceEntry {
            name: "x".repeat(65),
            families: vec![],
        })
        .sign(&me(), NOW, HOUR)
        .unwrap_err();
    assert!(e.to_string().contains("interface name of 65 bytes"), "{e}");
}

#[test]
fn builder_refuses_bad_brokers_and_addresses_of_the_wrong_family() {
    let e = PeerRecord::builder()
        .broker("tcp://127.0.0.1:1883")
        .sign(&me(), NOW, HOUR)
        .unwrap_err();
    assert!(matches!(e, Error::BadBroker(_)), "{e}");
    let mut f = FamilyEntry::new(Af::V6);
    f.local = vec![LocalAddr::new("10.0.0.1:1".parse().unwrap())];
    let e = PeerRecord::builder()
        .interface(InterfaceEntry {
            name: "eth0".into(),
            families: vec![f],
        })
        .sign(&me(), NOW, HOUR)
        .unwrap_err();
    assert!(
        e.to_string().contains("10.0.0.1:1 is not an IPv6 address"),
        "{e}"
    );
}

#[test]
fn text_that_is_not_a_record_is_refused_clearly() {
    for (text, starts) in [
        ("", "malformed peer record: it does not start with p2pipe1:"),
        ("p2pipe1:!!!!", "malformed peer record: bad base64"),
        (
            "p2pipe1:AAAAAAAA",
            "malformed peer record: it does not start with the record magic",
        ),
    ] {
        let e = PeerRecord::parse(text, NOW).unwrap_err().to_string();
        assert!(e.starts_with(starts), "{text:?}: {e}");
    }
}
