//! Connection slots for the small servers reachable from the whole
//! cluster (the admin port on a pod's address, the injection webhook): a
//! total, and a share per source address, so that one client holding
//! connections open cannot take every slot from the kubelet or the API
//! server.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The slots; [`ConnectionSlots::take`] hands one out or refuses.
#[derive(Debug)]
pub struct ConnectionSlots {
    total: usize,
    per_source: usize,
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<ConnectionSlots>,
    source: IpAddr,
}

impl ConnectionSlots {
    pub fn new(total: usize, per_source: usize) -> Arc<Self> {
        Arc::new(ConnectionSlots {
            total,
            per_source,
            held: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for a connection from `source`, or none when every slot, or
    /// this source's share, is taken.
    pub fn take(self: &Arc<Self>, source: IpAddr) -> Option<Slot> {
        let source = source.to_canonical();
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, by_source) = &mut *held;
        let mine = by_source.get(&source).copied().unwrap_or(0);
        if *total >= self.total || mine >= self.per_source {
            return None;
        }
        *total += 1;
        by_source.insert(source, mine + 1);
        Some(Slot {
            slots: self.clone(),
            source,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self
            .slots
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, by_source) = &mut *held;
        *total = total.saturating_sub(1);
        if let Some(n) = by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_share_and_the_total_holds() {
        let slots = ConnectionSlots::new(3, 2);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
            "::ffff:10.0.0.1".parse().expect("ip"),
        );
        let first = slots.take(a).expect("first");
        let _second = slots.take(a).expect("second");
        assert!(slots.take(c).is_none(), "the same source, written as IPv6");
        let _third = slots.take(b).expect("another source");
        assert!(slots.take(b).is_none(), "the total");
        drop(first);
        assert!(slots.take(a).is_some(), "given back");
    }
}
