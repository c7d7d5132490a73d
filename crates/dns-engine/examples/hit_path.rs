//! The engine's cache-hit path, for counting instructions per query:
//! 1,000 names (`hN.bench`, A, TTL 3600) cached, then `HITS` client
//! queries for them (EDNS, in batches of 64, as the network role sends
//! them) answered from the cache. Run under callgrind twice, with two
//! counts of hits: the difference over the difference in hits is the
//! cost of one hit (setup cancels out). See docs/benchmarks.md.
//!
//! ```sh
//! cargo build --release -p dns-engine --example hit_path
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/hit_path 20000
//! ```

use std::net::Ipv4Addr;

use dns_engine::{Action, Event, Forwarder, Inbound, Outbound, Start, Transport};
use dns_wire::{Class, Edns, Message, Name, RData, Record, Type};
use mirage_engine::{Engine, Instant};

const NAMES: usize = 1000;
const BATCH: usize = 64;

fn outbound(out: Vec<Action>) -> Vec<Outbound> {
    let mut items = Vec::new();
    for a in out {
        if let Action::Batch(b) = a {
            items.extend(b);
        }
    }
    items
}

fn main() {
    let hits: usize = std::env::args()
        .nth(1)
        .map_or(100_000, |a| a.parse().expect("a count"));
    let start = Start {
        upstreams: vec!["192.0.2.1:53".parse().unwrap()],
        ..Start::default()
    };
    let mut out = Vec::new();
    let mut f = Forwarder::start(start, Instant(0), [7; 32], &mut out);
    let queries: Vec<Vec<u8>> = (0..NAMES)
        .map(|i| {
            let mut m = Message::query(
                i as u16,
                Name::from_ascii(&format!("h{i}.bench")).unwrap(),
                Type::A,
            );
            m.edns = Some(Edns::new(1232));
            m.to_bytes().unwrap()
        })
        .collect();
    // Fill the cache: each name asked, its upstream query answered.
    for (i, q) in queries.iter().enumerate() {
        let mut out = Vec::new();
        let _ = f.handle(
            Instant(1),
            Event::Batch(vec![Inbound::Query {
                client: i as u64,
                transport: Transport::Udp,
                data: q.clone(),
            }]),
            &mut out,
        );
        let Some(Outbound::Query { query, data, .. }) = outbound(out)
            .into_iter()
            .find(|o| matches!(o, Outbound::Query { .. }))
        else {
            panic!("no upstream query for name {i}");
        };
        let sent = Message::parse(&data).unwrap();
        let mut r = sent.clone();
        r.header.response = true;
        r.header.recursion_available = true;
        r.answers = vec![Record {
            name: sent.questions[0].name.clone(),
            class: Class::IN,
            ttl: 3600,
            data: RData::A(Ipv4Addr::new(192, 0, 2, (i % 250) as u8)),
        }];
        let mut out = Vec::new();
        let _ = f.handle(
            Instant(2),
            Event::Batch(vec![Inbound::Reply {
                query,
                data: r.to_bytes().unwrap(),
            }]),
            &mut out,
        );
    }
    // The hits, in batches as the network role hands them over.
    let mut answered = 0;
    let mut n = 0;
    while n < hits {
        let batch: Vec<Inbound> = (n..(n + BATCH).min(hits))
            .map(|k| Inbound::Query {
                client: k as u64,
                transport: Transport::Udp,
                data: queries[k % NAMES].clone(),
            })
            .collect();
        n += batch.len();
        let mut out = Vec::new();
        let _ = f.handle(Instant(3), Event::Batch(batch), &mut out);
        answered += outbound(out)
            .iter()
            .filter(|o| matches!(o, Outbound::Answer { .. }))
            .count();
    }
    assert_eq!(answered, hits, "every query a cache hit");
    println!("{hits} hits answered");
}
