//! How many signalling requests a node answers at once: at most [`MAX_ANSWERING`] in
//! all and [`MAX_PER_PEER`] for one peer. Anyone who has a node's signed address can
//! send it requests, and each answer may bind sockets, dial addresses or allocate a
//! relay; a request over either bound is dropped, and the asker's strategy runs out
//! its time. Sans-IO: the count only; the caller holds a [`Ticket`] while it answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::identity::PublicKey;

/// The most requests a node answers at once, from all peers.
pub(crate) const MAX_ANSWERING: usize = 64;

/// The most requests a node answers at once for one peer: a connect asks up to four
/// things at once (reverse, upnp, relay, punch), so four connects at a time.
pub(crate) const MAX_PER_PEER: usize = 16;

/// The requests being answered, in all and per peer.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    total: usize,
    per_peer: HashMap<PublicKey, usize>,
}

impl Admission {
    /// Takes one more request from `peer`, unless a bound is reached.
    pub(crate) fn admit(&mut self, peer: &PublicKey) -> bool {
        let mine = self.per_peer.get(peer).copied().unwrap_or(0);
        if self.total >= MAX_ANSWERING || mine >= MAX_PER_PEER {
            return false;
        }
        self.total += 1;
        self.per_peer.insert(*peer, mine + 1);
        true
    }

    /// One request from `peer` is answered.
    pub(crate) fn release(&mut self, peer: &PublicKey) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_peer.get_mut(peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(peer);
            }
        }
    }
}

/// A request admitted: released when dropped, however its answer ends.
pub(crate) struct Ticket {
    admission: Arc<Mutex<Admission>>,
    peer: PublicKey,
}

/// Admits one request from `peer` into `admission`, or says no.
pub(crate) fn ticket(admission: &Arc<Mutex<Admission>>, peer: &PublicKey) -> Option<Ticket> {
    let mut a = admission.lock().unwrap_or_else(|p| p.into_inner());
    a.admit(peer).then(|| Ticket {
        admission: admission.clone(),
        peer: *peer,
    })
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut a = self.admission.lock().unwrap_or_else(|p| p.into_inner());
        a.release(&self.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn key(seed: u8) -> PublicKey {
        Identity::from_seed([seed; 32]).public()
    }

    #[test]
    fn one_peer_is_held_to_its_share_and_all_peers_to_the_total() {
        let mut a = Admission::default();
        let one = key(1);
        for _ in 0..MAX_PER_PEER {
            assert!(a.admit(&one));
        }
        assert!(!a.admit(&one), "over one peer's share");
        let mut others = 0;
        for seed in 2..=255 {
            while a.admit(&key(seed)) {
                others += 1;
            }
            if a.total == MAX_ANSWERING {
                break;
            }
        }
        assert_eq!(others, MAX_ANSWERING - MAX_PER_PEER);
        assert!(!a.admit(&key(200)), "over the total");
        // A place given back is taken again, by that peer as by any other.
        a.release(&one);
        assert!(a.admit(&one));
        assert!(!a.admit(&key(201)));
    }

    #[test]
    fn a_ticket_gives_its_place_back_when_dropped() {
        let admission = Arc::new(Mutex::new(Admission::default()));
        let one = key(1);
        let held: Vec<Ticket> = (0..MAX_PER_PEER)
            .map(|_| ticket(&admission, &one).expect("admitted"))
            .collect();
        assert!(ticket(&admission, &one).is_none());
        drop(held);
        let a = admission.lock().unwrap();
        assert_eq!((a.total, a.per_peer.len()), (0, 0));
    }
}
