//! The answer cache: sanitized answers (positive and negative, RFC 2308)
//! by question, bounded by the memory they really take (not their wire
//! size alone), least recently used evicted first, and kept past their
//! expiry for serve-stale (RFC 8767) when that is on.
//!
//! Compact by design (about 170 octets for a one-address answer): an
//! entry is one heap block holding its key's name and its answer in wire
//! form (compressed; parsed again when served) plus a fixed slot in a
//! slab. The slab's slots are linked in LRU order by index, chained in a
//! hash index keyed by a keyed SipHash of the question (the name compared
//! on a hit, so a collision only costs a comparison; the key is secret so
//! that clients cannot aim their names at one chain), and ordered by drop
//! time in a binary heap of slot indices (each slot knows its place, so an
//! entry leaves the heap as it leaves the cache). The bound counts the
//! blocks and the tables' whole capacity: what [`Cache::bytes`] reports
//! is what is allocated, plus the allocator's per-block overhead.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::hash::Hasher;
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

/// One cached answer, as served.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The sanitized upstream answer as received for the question as sent
    /// (its 0x20 spelling), TTLs already clamped.
    pub data: &'a [u8],
    pub stored: Instant,
    pub expires: Instant,
    /// NXDOMAIN or NODATA.
    pub negative: bool,
}

const NIL: u32 = u32::MAX;
const DNSSEC_OK: u8 = 1;
const CHECKING_DISABLED: u8 = 2;
const NEGATIVE: u8 = 4;

/// A slab slot: an entry, or a free slot (empty `buf`, `chain` the next
/// free one).
struct Slot {
    /// The key's name, then the answer.
    buf: Box<[u8]>,
    stored: Instant,
    /// Its expiry and when it leaves the cache (at expiry, or after the
    /// stale window), in milliseconds after `stored`: TTLs and the stale
    /// window are at most a week each, far within a `u32`.
    expires: u32,
    drop_at: u32,
    hash: u32,
    /// LRU neighbours: `older` toward the next evicted.
    older: u32,
    newer: u32,
    /// The next slot in its hash chain (or in the free list).
    chain: u32,
    /// Its place in the drop-time heap.
    heap_at: u32,
    qtype: u16,
    qclass: u16,
    name_len: u8,
    flags: u8,
}

impl Slot {
    fn free() -> Slot {
        Slot {
            buf: Box::default(),
            stored: Instant(0),
            expires: 0,
            drop_at: 0,
            hash: 0,
            older: NIL,
            newer: NIL,
            chain: NIL,
            heap_at: 0,
            qtype: 0,
            qclass: 0,
            name_len: 0,
            flags: 0,
        }
    }

    fn drop_at(&self) -> Instant {
        self.stored.add_millis(u64::from(self.drop_at))
    }
}

/// Per heap block: the allocator's header and rounding to 16 (musl's and
/// glibc's mallocs both spend about this).
const ALLOC_OVERHEAD: usize = 16;

fn block(len: usize) -> usize {
    (len + ALLOC_OVERHEAD).next_multiple_of(16)
}

/// What an entry's own block costs; its slot, hash bucket and heap place
/// are counted with the tables (see [`Cache::bytes`]).
pub fn cost_of(key: &Key, data_len: usize) -> usize {
    block(key.name.len() + data_len)
}

/// Per entry in the tables (slot, a bucket at full load, a heap place).
pub const TABLE_COST: usize = size_of::<Slot>() + 2 * size_of::<u32>();

/// Slots per slab chunk: the slab grows a chunk at a time, never copied,
/// and wastes at most one chunk's free slots.
const CHUNK: usize = 128;

pub struct Cache {
    /// The slab; slot `i` is `chunks[i / CHUNK][i % CHUNK]`.
    chunks: Vec<Box<[Slot]>>,
    /// Slots ever used (the rest of the last chunk is fresh).
    used: u32,
    free: u32,
    buckets: Vec<u32>,
    heap: Vec<u32>,
    oldest: u32,
    newest: u32,
    len: usize,
    /// The entries' blocks.
    entry_bytes: usize,
    hash_key: (u64, u64),
}

impl Default for Cache {
    fn default() -> Self {
        Cache::new((0x6d69_7261_6765_646e, 0x7363_6163_6865_6b31))
    }
}

impl Cache {
    /// A cache whose hash index is keyed by `hash_key` (secret, random).
    pub fn new(hash_key: (u64, u64)) -> Self {
        Cache {
            chunks: Vec::new(),
            used: 0,
            free: NIL,
            buckets: Vec::new(),
            heap: Vec::new(),
            oldest: NIL,
            newest: NIL,
            len: 0,
            entry_bytes: 0,
            hash_key,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memory the cache takes: every entry's block and the whole
    /// capacity of its tables, with the allocator's overhead per block.
    pub fn bytes(&self) -> usize {
        self.entry_bytes
            + self.table_bytes(
                self.chunks.len(),
                self.chunks.capacity(),
                self.buckets.len(),
                self.heap.capacity(),
            )
    }

    fn table_bytes(&self, chunks: usize, chunk_list: usize, buckets: usize, heap: usize) -> usize {
        let t = |n: usize, size: usize| if n == 0 { 0 } else { block(n * size) };
        chunks * block(CHUNK * size_of::<Slot>())
            + t(chunk_list, size_of::<Box<[Slot]>>())
            + t(buckets, size_of::<u32>())
            + t(heap, size_of::<u32>())
    }

    /// The tables' growth if one more entry came in now.
    fn growth(&self) -> usize {
        let (chunks, chunk_list) = if self.free == NIL && self.used as usize == self.chunks.len() * CHUNK {
            let list = if self.chunks.len() == self.chunks.capacity() {
                grown(self.chunks.capacity())
            } else {
                self.chunks.capacity()
            };
            (self.chunks.len() + 1, list)
        } else {
            (self.chunks.len(), self.chunks.capacity())
        };
        let buckets = if self.len + 1 > self.buckets.len() {
            grown(self.buckets.len()).max(16)
        } else {
            self.buckets.len()
        };
        let heap = if self.heap.len() == self.heap.capacity() {
            grown(self.heap.capacity())
        } else {
            self.heap.capacity()
        };
        self.table_bytes(chunks, chunk_list, buckets, heap)
            - self.table_bytes(
                self.chunks.len(),
                self.chunks.capacity(),
                self.buckets.len(),
                self.heap.capacity(),
            )
    }

    fn slot(&self, i: u32) -> &Slot {
        &self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }

    fn slot_mut(&mut self, i: u32) -> &mut Slot {
        &mut self.chunks[i as usize / CHUNK][i as usize % CHUNK]
    }

    fn hash(&self, key: &Key) -> u32 {
        #[allow(deprecated)] // core's SipHash: keyed, and all no_std has.
        let mut h = core::hash::SipHasher::new_with_keys(self.hash_key.0, self.hash_key.1);
        h.write(&key.name);
        h.write_u16(key.qtype);
        h.write_u16(key.qclass);
        h.write_u8(flags_of(key, false));
        h.finish() as u32
    }

    fn find(&self, key: &Key, hash: u32) -> Option<u32> {
        if self.buckets.is_empty() {
            return None;
        }
        let flags = flags_of(key, false);
        let mut i = self.buckets[hash as usize & (self.buckets.len() - 1)];
        while i != NIL {
            let s = self.slot(i);
            if s.hash == hash
                && s.qtype == key.qtype
                && s.qclass == key.qclass
                && s.flags & !NEGATIVE == flags
                && s.buf[..usize::from(s.name_len)] == key.name[..]
            {
                return Some(i);
            }
            i = s.chain;
        }
        None
    }

    pub fn remove(&mut self, key: &Key) {
        if let Some(i) = self.find(key, self.hash(key)) {
            self.remove_slot(i);
        }
    }

    fn remove_slot(&mut self, i: u32) {
        // Out of its hash chain.
        let s = self.slot(i);
        let (hash, chain, older, newer, at) = (s.hash, s.chain, s.older, s.newer, s.heap_at);
        let b = hash as usize & (self.buckets.len() - 1);
        if self.buckets[b] == i {
            self.buckets[b] = chain;
        } else {
            let mut p = self.buckets[b];
            while self.slot(p).chain != i {
                p = self.slot(p).chain;
            }
            self.slot_mut(p).chain = chain;
        }
        // Out of the LRU order.
        match older {
            NIL => self.oldest = newer,
            o => self.slot_mut(o).newer = newer,
        }
        match newer {
            NIL => self.newest = older,
            n => self.slot_mut(n).older = older,
        }
        // Out of the heap.
        let last = self.heap.pop().expect("an entry is in the heap");
        if last != i {
            self.heap[at as usize] = last;
            self.slot_mut(last).heap_at = at;
            self.sift_down(at as usize);
            self.sift_up(at as usize);
        }
        let free = self.free;
        let s = self.slot_mut(i);
        let freed = block(s.buf.len());
        s.buf = Box::default();
        s.chain = free;
        self.entry_bytes -= freed;
        self.free = i;
        self.len -= 1;
    }

    fn drop_at(&self, heap_at: usize) -> Instant {
        self.slot(self.heap[heap_at]).drop_at()
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.slot_mut(self.heap[a]).heap_at = a as u32;
        self.slot_mut(self.heap[b]).heap_at = b as u32;
    }

    fn sift_up(&mut self, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.drop_at(parent) <= self.drop_at(at) {
                break;
            }
            self.swap(parent, at);
            at = parent;
        }
    }

    fn sift_down(&mut self, mut at: usize) {
        loop {
            let mut least = at;
            for child in [2 * at + 1, 2 * at + 2] {
                if child < self.heap.len() && self.drop_at(child) < self.drop_at(least) {
                    least = child;
                }
            }
            if least == at {
                return;
            }
            self.swap(least, at);
            at = least;
        }
    }

    /// The index grown to `n` buckets, every entry chained again.
    fn rehash(&mut self, n: usize) {
        let mut buckets = Vec::new();
        buckets.reserve_exact(n);
        buckets.resize(n, NIL);
        for i in 0..self.used {
            let s = self.slot_mut(i);
            if s.buf.is_empty() {
                continue;
            }
            let b = s.hash as usize & (n - 1);
            s.chain = buckets[b];
            buckets[b] = i;
        }
        self.buckets = buckets;
    }

    /// Store `data` under `key`, least recently used entries evicted until
    /// it fits in `max_bytes`. Kept until `drop_at` (expiry, or the end of
    /// the stale window).
    #[allow(clippy::too_many_arguments)]
    pub fn store(
        &mut self,
        key: Key,
        data: Vec<u8>,
        stored: Instant,
        expires: Instant,
        drop_at: Instant,
        negative: bool,
        max_bytes: usize,
    ) {
        self.remove(&key);
        let Ok(name_len) = u8::try_from(key.name.len()) else {
            return;
        };
        let cost = cost_of(&key, data.len());
        // What eviction cannot make room for: nothing is evicted for it.
        if cost + self.bytes() - self.entry_bytes > max_bytes {
            return;
        }
        while self.bytes() + self.growth() + cost > max_bytes && self.oldest != NIL {
            self.remove_slot(self.oldest);
        }
        if self.bytes() + self.growth() + cost > max_bytes {
            return;
        }
        let hash = self.hash(&key);
        let after = |t: Instant| u32::try_from(t.since(stored)).unwrap_or(u32::MAX);
        let mut buf = Vec::with_capacity(key.name.len() + data.len());
        buf.extend_from_slice(&key.name);
        buf.extend_from_slice(&data);
        let slot = Slot {
            buf: buf.into_boxed_slice(),
            stored,
            expires: after(expires),
            drop_at: after(drop_at),
            hash,
            older: self.newest,
            newer: NIL,
            chain: NIL,
            heap_at: self.heap.len() as u32,
            qtype: key.qtype,
            qclass: key.qclass,
            name_len,
            flags: flags_of(&key, negative),
        };
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.slot(i).chain;
            *self.slot_mut(i) = slot;
            i
        } else {
            if self.used as usize == self.chunks.len() * CHUNK {
                reserve(&mut self.chunks);
                self.chunks.push((0..CHUNK).map(|_| Slot::free()).collect());
            }
            self.used += 1;
            *self.slot_mut(self.used - 1) = slot;
            self.used - 1
        };
        self.len += 1;
        self.entry_bytes += cost;
        if self.len > self.buckets.len() {
            self.rehash(grown(self.buckets.len()).max(16));
        } else {
            let b = hash as usize & (self.buckets.len() - 1);
            self.slot_mut(i).chain = self.buckets[b];
            self.buckets[b] = i;
        }
        match self.newest {
            NIL => self.oldest = i,
            n => self.slot_mut(n).newer = i,
        }
        self.newest = i;
        reserve(&mut self.heap);
        self.heap.push(i);
        self.sift_up(self.heap.len() - 1);
    }

    /// The entry for `key` if it is still kept at `now` (fresh or in its
    /// stale window), marked used.
    pub fn get(&mut self, key: &Key, now: Instant) -> Option<Entry<'_>> {
        let i = self.find(key, self.hash(key))?;
        if self.slot(i).drop_at() <= now {
            self.remove_slot(i);
            return None;
        }
        if self.newest != i {
            let (older, newer) = (self.slot(i).older, self.slot(i).newer);
            match older {
                NIL => self.oldest = newer,
                o => self.slot_mut(o).newer = newer,
            }
            self.slot_mut(newer).older = older;
            self.slot_mut(self.newest).newer = i;
            let newest = self.newest;
            let s = self.slot_mut(i);
            s.older = newest;
            s.newer = NIL;
            self.newest = i;
        }
        let s = self.slot(i);
        Some(Entry {
            data: &s.buf[usize::from(s.name_len)..],
            stored: s.stored,
            expires: s.stored.add_millis(u64::from(s.expires)),
            negative: s.flags & NEGATIVE != 0,
        })
    }

    /// Drop what is no longer kept at `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&i) = self.heap.first() {
            if self.slot(i).drop_at() > now {
                break;
            }
            self.remove_slot(i);
        }
    }
}

fn flags_of(key: &Key, negative: bool) -> u8 {
    let mut f = 0;
    if key.dnssec_ok {
        f |= DNSSEC_OK;
    }
    if key.checking_disabled {
        f |= CHECKING_DISABLED;
    }
    if negative {
        f |= NEGATIVE;
    }
    f
}

/// A table's next capacity: doubled, at least 4.
fn grown(cap: usize) -> usize {
    (cap * 2).max(4)
}

/// Room for one more, grown as [`grown`] says (exactly, so that the
/// bound knows the capacity).
fn reserve<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact(grown(v.capacity()) - v.len());
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
        let t = Instant(0);
        let later = Instant(1_000_000);
        for n in 0..3 {
            c.store(key(n), vec![0; 100], t, later, later, false, 1 << 20);
        }
        // The bound: exactly what three entries and their tables take.
        let max = c.bytes();
        assert_eq!(c.len(), 3);
        // `a` used: `b` is now the least recent and goes for `d`.
        assert!(c.get(&key(0), t).is_some());
        c.store(key(3), vec![0; 100], t, later, later, false, max);
        assert!(c.get(&key(1), t).is_none());
        assert!(c.get(&key(0), t).is_some() && c.get(&key(2), t).is_some());
        assert!(c.get(&key(3), t).is_some_and(|e| e.data == [0; 100]));
        assert_eq!((c.len(), c.bytes()), (3, max));
        // Larger than the whole budget: not stored, nothing evicted.
        c.store(key(4), vec![0; max], t, later, later, false, max);
        assert_eq!(c.len(), 3);
        // The cost is more than the wire size: key, slot and index count.
        assert!(max > 3 * (100 + 3 + TABLE_COST));
    }

    #[test]
    fn many_entries_stay_found_in_order_and_leave_by_drop_time() {
        let mut c = Cache::new((1, 2));
        let name = |n: u32| {
            let mut v = vec![4];
            v.extend_from_slice(&n.to_be_bytes());
            v.push(0);
            v
        };
        let k = |n: u32| Key {
            name: name(n),
            qtype: 1,
            qclass: 1,
            dnssec_ok: n.is_multiple_of(2),
            checking_disabled: false,
        };
        // Drop times out of order: 7919 is prime, so n * 7919 mod 1000 mixes.
        for n in 0..1000 {
            let at = Instant(u64::from(n * 7919 % 1000) + 1);
            c.store(
                k(n),
                n.to_be_bytes().to_vec(),
                Instant(0),
                at,
                at,
                n % 3 == 0,
                1 << 24,
            );
        }
        assert_eq!(c.len(), 1000);
        for n in 0..1000 {
            let e = c.get(&k(n), Instant(0)).expect("stored");
            assert_eq!((e.data, e.negative), (&n.to_be_bytes()[..], n % 3 == 0));
        }
        // Another flag is another question.
        let mut other = k(2);
        other.dnssec_ok = false;
        assert!(c.get(&other, Instant(0)).is_none());
        // Half the drop times pass: exactly those entries leave.
        c.expire(Instant(500));
        assert_eq!(c.len(), 500);
        for n in 0..1000 {
            let kept = u64::from(n * 7919 % 1000) + 1 > 500;
            assert_eq!(c.get(&k(n), Instant(0)).is_some(), kept, "{n}");
        }
        c.expire(Instant(2000));
        assert_eq!((c.len(), c.bytes() > 0), (0, true));
        assert_eq!(c.entry_bytes, 0);
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
        // The tables stay, empty, for the next entries.
        assert_eq!((c.len(), c.entry_bytes), (0, 0));
        assert_eq!(
            c.bytes(),
            c.table_bytes(1, c.chunks.capacity(), 16, c.heap.capacity())
        );
    }
}
