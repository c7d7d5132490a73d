//! The answer cache: sanitized answers (positive and negative, RFC 2308)
//! by question, bounded by an estimate of the memory they really take
//! (not their wire size alone), least recently used evicted first, and
//! kept past their expiry for serve-stale (RFC 8767) when that is on.
//!
//! An entry holds its answer in wire form (compressed, one allocation)
//! and is parsed again when served: a few microseconds per hit for a
//! footprint close to the wire size, where a parsed message costs an
//! allocation per name and record.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::mem::size_of;

use mirage_engine::Instant;

/// What makes two client questions the same upstream question, and a
/// cached answer answer one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// The name in wire form, lower case.
    pub name: Vec<u8>,
    /// The question's type, or [`ANY_TYPE`] for a name that does not
    /// exist at all (NXDOMAIN answers every type, RFC 2308 section 5).
    pub qtype: u16,
    pub qclass: u16,
    pub dnssec_ok: bool,
    pub checking_disabled: bool,
}

/// The type of a name-wide negative entry. Type 0 is reserved (RFC 6895
/// section 3.1); a client asking for it about a name that does not exist
/// is rightly told NXDOMAIN.
pub const ANY_TYPE: u16 = 0;

/// One cached answer.
#[derive(Debug)]
pub struct Entry {
    /// The sanitized upstream answer as received for the question as sent
    /// (its 0x20 spelling), TTLs already clamped.
    pub data: Vec<u8>,
    pub stored: Instant,
    pub expires: Instant,
    /// NXDOMAIN or NODATA.
    pub negative: bool,
    /// Its place in the LRU order.
    tick: u64,
    /// When it leaves the cache: at expiry, or after the stale window.
    drop_at: Instant,
    cost: usize,
}

/// Per heap block: the allocator's header and rounding (musl's and
/// glibc's mallocs both spend about this).
const ALLOC_OVERHEAD: usize = 16;
/// Per entry and index: a B-tree node's share of pointers, lengths and
/// unused slots (nodes hold 5 to 11 entries). Set from a measurement:
/// 11,000 one-address answers grew the engine's RSS by 6.3 MiB (about
/// 590 octets each, under musl's malloc), which this makes the estimate.
const NODE_OVERHEAD: usize = 80;

/// What an entry costs in memory: its answer, and its key three times
/// (the map, the LRU order and the expiry order each hold a copy), each
/// with its allocation and index overhead.
pub fn cost_of(key: &Key, data_len: usize) -> usize {
    let key_cost = size_of::<Key>() + key.name.len() + ALLOC_OVERHEAD + NODE_OVERHEAD;
    data_len + ALLOC_OVERHEAD + size_of::<Entry>() + 3 * key_cost + size_of::<u64>() + size_of::<Instant>()
}

#[derive(Default)]
pub struct Cache {
    entries: BTreeMap<Key, Entry>,
    lru: BTreeMap<u64, Key>,
    by_drop: BTreeSet<(Instant, Key)>,
    bytes: usize,
    tick: u64,
}

impl Cache {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The estimated memory of every entry (see [`cost_of`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn remove(&mut self, key: &Key) {
        if let Some(e) = self.entries.remove(key) {
            self.lru.remove(&e.tick);
            self.by_drop.remove(&(e.drop_at, key.clone()));
            self.bytes -= e.cost;
        }
    }

    /// Store `data` under `key`, least recently used entries evicted until
    /// it fits in `max_bytes`. Kept until `drop_at` (expiry, or the end of
    /// the stale window).
    #[allow(clippy::too_many_arguments)]
    pub fn store(
        &mut self,
        key: Key,
        mut data: Vec<u8>,
        stored: Instant,
        expires: Instant,
        drop_at: Instant,
        negative: bool,
        max_bytes: usize,
    ) {
        self.remove(&key);
        data.shrink_to_fit();
        let cost = cost_of(&key, data.len());
        if cost > max_bytes {
            return;
        }
        while self.bytes + cost > max_bytes {
            let Some((_, oldest)) = self.lru.iter().next().map(|(t, k)| (*t, k.clone())) else {
                break;
            };
            self.remove(&oldest);
        }
        self.tick += 1;
        let tick = self.tick;
        self.bytes += cost;
        self.lru.insert(tick, key.clone());
        self.by_drop.insert((drop_at, key.clone()));
        self.entries.insert(
            key,
            Entry {
                data,
                stored,
                expires,
                negative,
                tick,
                drop_at,
                cost,
            },
        );
    }

    /// The entry for `key` if it is still kept at `now` (fresh or in its
    /// stale window), marked used.
    pub fn get(&mut self, key: &Key, now: Instant) -> Option<&Entry> {
        let drop_at = self.entries.get(key)?.drop_at;
        if drop_at <= now {
            self.remove(key);
            return None;
        }
        self.tick += 1;
        let tick = self.tick;
        let e = self.entries.get_mut(key)?;
        self.lru.remove(&e.tick);
        e.tick = tick;
        self.lru.insert(tick, key.clone());
        Some(e)
    }

    /// Drop what is no longer kept at `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.by_drop.iter().next().cloned() {
            if at > now {
                break;
            }
            self.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn key(n: u8) -> Key {
        Key {
            name: vec![1, b'a' + n, 0],
            qtype: 1,
            qclass: 1,
            dnssec_ok: false,
            checking_disabled: false,
        }
    }

    #[test]
    fn the_least_recently_used_goes_first_and_the_bound_holds() {
        let mut c = Cache::default();
        let one = cost_of(&key(0), 100);
        let max = one * 3;
        let t = Instant(0);
        let later = Instant(1_000_000);
        for n in 0..3 {
            c.store(key(n), vec![0; 100], t, later, later, false, max);
        }
        assert_eq!((c.len(), c.bytes()), (3, max));
        // `a` used: `b` is now the least recent and goes for `d`.
        assert!(c.get(&key(0), t).is_some());
        c.store(key(3), vec![0; 100], t, later, later, false, max);
        assert!(c.get(&key(1), t).is_none());
        assert!(c.get(&key(0), t).is_some() && c.get(&key(2), t).is_some());
        assert!(c.bytes() <= max);
        // Larger than the whole budget: not stored, nothing evicted.
        c.store(key(4), vec![0; max], t, later, later, false, max);
        assert_eq!(c.len(), 3);
        // The cost is more than the wire size: keys and indexes count.
        assert!(one > 100 + 3 * 3 + 100);
    }

    #[test]
    fn entries_leave_at_their_drop_time() {
        let mut c = Cache::default();
        c.store(
            key(0),
            vec![0; 10],
            Instant(0),
            Instant(5),
            Instant(10),
            false,
            1 << 20,
        );
        c.store(
            key(1),
            vec![0; 10],
            Instant(0),
            Instant(5),
            Instant(5),
            false,
            1 << 20,
        );
        c.expire(Instant(6));
        assert_eq!(c.len(), 1);
        assert!(c.get(&key(0), Instant(9)).is_some());
        assert!(c.get(&key(0), Instant(10)).is_none());
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }
}
