//! The node identity through the public API: the key file shared by processes that start
//! at once, and a record of this machine's real interfaces through both forms.

use std::time::Duration;

use p2pipe::identity::{Created, FamilyEntry, Identity, InterfaceEntry, LocalAddr, PeerRecord};
use p2pipe::{Af, Interface};

/// Eight threads create the same key file at once: one key is made, and all load it.
#[test]
fn racing_creators_of_one_key_file_all_end_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p2pipe").join("node.key");
    let results: Vec<(Identity, Created)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| Identity::load_or_create(&path).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let new = results.iter().filter(|(_, c)| *c == Created::New).count();
    assert_eq!(new, 1, "exactly one creator");
    assert!(results.iter().all(|(id, _)| *id == results[0].0));
    assert_eq!(Identity::load(&path).unwrap(), results[0].0);
    // No temporary file is left beside the key.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["node.key"]);
}

/// A record of this machine's first interfaces, with their real addresses, goes through text
/// and JSON and comes back equal, each address marked with its class.
#[test]
fn a_record_of_this_machines_interfaces_round_trips_through_text_and_json() {
    let me = Identity::from_seed([21; 32]);
    let mut builder = PeerRecord::builder().broker("mqtt://[::1]:1883");
    let nics = Interface::list().unwrap();
    for nic in nics.iter().take(4) {
        let mut v4 = FamilyEntry::new(Af::V4);
        v4.local = nic
            .v4
            .iter()
            .take(4)
            .map(|a| LocalAddr::new((a.ip, 7000).into()))
            .collect();
        let mut v6 = FamilyEntry::new(Af::V6);
        v6.local = nic
            .v6
            .iter()
            .take(4)
            .map(|a| LocalAddr::new((a.ip, 7000).into()))
            .collect();
        builder = builder.interface(InterfaceEntry {
            name: nic.name.clone(),
            families: vec![v4, v6],
        });
    }
    let now = 1_900_000_000_000;
    let record = builder.sign(&me, now, Duration::from_secs(60)).unwrap();
    let text = record.to_text();
    assert_eq!(PeerRecord::parse(&text, now).unwrap(), record);
    let json = record.to_json().to_string();
    let back = PeerRecord::from_json(&json, now).unwrap();
    assert_eq!(back.to_text(), text);
    for (nic, entry) in nics.iter().zip(back.interfaces()) {
        assert_eq!(entry.name, nic.name);
        for (a, l) in nic.v4.iter().zip(&entry.families[0].local) {
            assert_eq!((l.addr.ip(), l.class), (a.ip.into(), a.class));
        }
    }
    // A minute later it has expired.
    assert!(PeerRecord::parse(&text, now + 60_000).is_err());
}
