//! The cache's memory bound is honest: what `Cache::bytes` reports is what
//! the cache has allocated (counted by a global allocator that adds up
//! live allocations), plus no more than the allocator overhead it assumes
//! per block.

use std::alloc::System;

use dns_engine::cache::{Cache, Key};
use mirage_engine::Instant;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

// Counts every allocation of this test binary (stats_alloc: the system
// allocator with counters, so no unsafe code of ours).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Octets allocated and not yet freed, and blocks live, in this process.
fn in_use() -> (usize, usize) {
    let s = GLOBAL.stats();
    let bytes = s.bytes_allocated as isize - s.bytes_deallocated as isize + s.bytes_reallocated;
    (bytes as usize, s.allocations - s.deallocations)
}

/// A typical one-address answer for `n<i>.w.test` (A, with EDNS): its
/// question and answer record as the engine keeps them.
fn answer(name: &[u8]) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 1];
    m.extend_from_slice(name);
    m.extend_from_slice(&[0, 1, 0, 1]);
    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4, 10, 0, 0, 1]);
    m.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
    m
}

fn name(i: u32) -> Vec<u8> {
    let label = format!("n{i}");
    let mut v = vec![label.len() as u8];
    v.extend_from_slice(label.as_bytes());
    v.extend_from_slice(b"\x01w\x04test\x00");
    v
}

#[test]
fn the_reported_bytes_are_what_the_cache_allocates() {
    // Everything the test makes before counting is made first, so that
    // what changes between the two counts is the cache's alone.
    let items: Vec<(Key, Vec<u8>)> = (0..10_000)
        .map(|i| {
            let name = name(i);
            let data = answer(&name);
            let key = Key {
                name,
                qtype: 1,
                qclass: 1,
                dnssec_ok: false,
                checking_disabled: false,
            };
            (key, data)
        })
        .collect();
    let lookups: Vec<Key> = items.iter().map(|(k, _)| k.clone()).collect();
    // What the store loop frees of the test's own: each key's name, each
    // answer, and the list.
    let given = items
        .iter()
        .map(|(k, d)| k.name.capacity() + d.capacity())
        .sum::<usize>()
        + items.capacity() * std::mem::size_of::<(Key, Vec<u8>)>();
    let given_blocks = 2 * items.len() + 1;
    let mut cache = Cache::new((7, 9));
    let before = in_use();
    for (key, data) in items {
        // The store frees `data` and `key`: their counts leave with them.
        cache.store(
            key,
            data,
            Instant(0),
            Instant(3_600_000),
            Instant(3_600_000),
            false,
            64 << 20,
        );
    }
    let (now_bytes, now_blocks) = in_use();
    let live = now_bytes + given - before.0;
    let blocks = now_blocks + given_blocks - before.1;
    assert_eq!(cache.len(), 10_000);
    let reported = cache.bytes();
    // Every octet allocated is reported; beyond that, only the allocator
    // overhead assumed per block (16, and rounding to 16).
    assert!(reported >= live, "reported {reported}, allocated {live}");
    assert!(
        reported - live <= blocks * 31,
        "reported {reported}, allocated {live} in {blocks} blocks"
    );
    // Compact: a typical one-address answer costs under 200 octets.
    let each = reported / cache.len();
    assert!(each < 200, "{each} octets an answer");
    // Every entry is found, and a hit allocates nothing.
    let at = in_use().0;
    for k in &lookups {
        assert!(cache.get(k, Instant(1)).is_some());
    }
    assert_eq!(in_use().0, at);
    eprintln!(
        "10,000 answers: {reported} octets reported, {live} allocated in {blocks} blocks, {each} an answer"
    );
}
