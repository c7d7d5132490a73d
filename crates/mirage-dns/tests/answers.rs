//! mirage-dns's answers end to end against nsd, an authoritative server
//! for the test zone (`support::nsd_zone`), in a network namespace the
//! test creates: the same rcode and RRsets as nsd gives, TTLs never
//! larger, only the question's CNAME chain, negative caching (nsd's own
//! query counter shows the second question never reached it), expiry,
//! special-use names answered without upstream traffic, large answers
//! over UDP and TCP. Needs root and nsd (scripts/install-deps.sh).

#[macro_use]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use dns_wire::{Message, Rcode, Record, Type};
use mirage_testkit::netns::in_netns;
use mirage_testkit::wait::wait_some;
use support::{Fixture, NSD_PORT, ask_tcp, ask_udp, query, with_nsd};

in_each_sandbox!("answers":
    it_answers_as_nsd_does_with_only_the_chain_and_caches_negatives,
    special_use_names_are_answered_without_upstream_traffic,
    a_short_ttl_is_served_counted_down_then_asked_again,
    large_answers_go_tc_over_udp_and_whole_over_tcp,
    with_serve_stale_an_expired_answer_outlives_its_upstream_with_ttl_30,
);

const OURS: &str = "127.0.0.53:53";

fn nsd_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], NSD_PORT))
}

/// Ask `server` over UDP in the fixture's namespace.
fn ask(f: &Fixture, server: SocketAddr, q: Vec<u8>) -> Message {
    let ns = f.ns.name().to_owned();
    in_netns(&ns, move || ask_udp(server, &q)).unwrap_or_else(|| panic!("no answer from {server}"))
}

fn ask_ours_tcp(f: &Fixture, q: Vec<u8>) -> Message {
    let ns = f.ns.name().to_owned();
    in_netns(&ns, move || ask_tcp(OURS.parse().unwrap(), &[q]).remove(0))
}

/// A section as sorted lower-case "name type data" lines, TTLs left out.
fn rrsets(rs: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = rs
        .iter()
        .map(|r| format!("{} {} {:?}", r.name, r.rtype().0, r.data).to_ascii_lowercase())
        .collect();
    v.sort();
    v
}

/// Ours agrees with nsd's: rcode, the answer section's RRsets, for a
/// negative answer the SOA; each TTL at most nsd's; nothing else.
fn same_as_nsd(ours: &Message, nsd: &Message, what: &str) {
    assert_eq!(ours.rcode(), nsd.rcode(), "{what}");
    assert_eq!(rrsets(&ours.answers), rrsets(&nsd.answers), "{what}");
    for r in ours.answers.iter().chain(&ours.authorities) {
        let theirs = nsd
            .answers
            .iter()
            .chain(&nsd.authorities)
            .find(|n| n.name == r.name && n.data == r.data)
            .unwrap_or_else(|| panic!("{what}: {r:?} is not nsd's"));
        assert!(
            r.ttl <= theirs.ttl,
            "{what}: TTL {} over nsd's {}",
            r.ttl,
            theirs.ttl
        );
    }
    let negative = ours.rcode() == Rcode::NXDOMAIN || ours.answers.is_empty();
    if negative {
        let soa: Vec<_> = nsd
            .authorities
            .iter()
            .filter(|r| r.rtype() == Type::SOA)
            .collect();
        assert_eq!(
            rrsets(&ours.authorities),
            rrsets(&soa.into_iter().cloned().collect::<Vec<_>>()),
            "{what}"
        );
        assert!(
            ours.authorities[0].ttl <= 60,
            "{what}: the negative TTL is the SOA's MINIMUM"
        );
    } else {
        assert!(ours.authorities.is_empty(), "{what}: {:?}", ours.authorities);
    }
    assert!(ours.additionals.is_empty(), "{what}: {:?}", ours.additionals);
    assert!(!ours.header.authentic_data, "{what}");
    assert!(
        ours.questions[0].eq_exact(&nsd.questions[0]),
        "{what}: the question as asked"
    );
}

fn it_answers_as_nsd_does_with_only_the_chain_and_caches_negatives(sandbox: &'static str) {
    let mut f = with_nsd("dnsa").in_sandbox(sandbox);
    let upstream = nsd_addr().to_string();
    f.start_dns(&["--upstream", &upstream]);
    let ours: SocketAddr = OURS.parse().unwrap();
    let cases: [(&str, Type); 10] = [
        ("a.test", Type::A),
        ("A.TeSt", Type::AAAA),
        // alias -> b -> a, all in the zone: nsd follows the chain.
        ("alias.test", Type::A),
        // Out of the zone: the CNAME alone.
        ("out.test", Type::A),
        ("mx.test", Type::MX),
        ("x.W.test", Type::A),
        ("nx.test", Type::A),
        ("deeper.nx.test", Type::AAAA),
        // NODATA: the name exists, not the type.
        ("a.test", Type::MX),
        ("big.test", Type::TXT),
    ];
    let before = f.nsd_stat("num.queries");
    let mut first = Vec::new();
    for (i, (name, qtype)) in cases.iter().enumerate() {
        first.push(ask(&f, ours, query(i as u16, name, *qtype, true)));
    }
    assert_eq!(
        f.nsd_stat("num.queries") - before,
        cases.len() as u64,
        "one upstream query per question"
    );
    // Asked again, another id: every answer from the cache, negative ones
    // too, and NXDOMAIN for every type of a name that does not exist.
    for (i, (name, qtype)) in cases.iter().enumerate() {
        let again = ask(&f, ours, query(100 + i as u16, name, *qtype, true));
        assert_eq!(again.header.id, 100 + i as u16);
        assert_eq!(rrsets(&again.answers), rrsets(&first[i].answers), "{name}");
        assert_eq!(again.rcode(), first[i].rcode(), "{name}");
    }
    let nx_txt = ask(&f, ours, query(200, "nx.test", Type::TXT, true));
    assert_eq!(nx_txt.rcode(), Rcode::NXDOMAIN);
    assert_eq!(
        f.nsd_stat("num.queries") - before,
        cases.len() as u64,
        "all from the cache"
    );

    // The same as nsd's own answers.
    let mut nsd_answers = Vec::new();
    for (i, (name, qtype)) in cases.iter().enumerate() {
        let nsd = ask(&f, nsd_addr(), query(i as u16, name, *qtype, true));
        same_as_nsd(&first[i], &nsd, name);
        nsd_answers.push(nsd);
    }
    // nsd adds the MX targets' addresses: records for names not asked.
    assert!(!nsd_answers[4].additionals.is_empty(), "{:?}", nsd_answers[4]);
    // nsd's answers carry NS and glue; ours only the chain.
    let alias = &first[2];
    assert_eq!(alias.answers.len(), 3, "{alias:?}");
    let mx = &first[4];
    assert!(mx.additionals.is_empty() && mx.answers.len() == 2, "{mx:?}");

    // A CNAME loop: SERVFAIL, and not cached.
    let before = f.nsd_stat("num.queries");
    for id in [300, 301] {
        let got = ask(&f, ours, query(id, "loop.test", Type::A, true));
        assert_eq!(got.rcode(), Rcode::SERVFAIL);
    }
    assert_eq!(f.nsd_stat("num.queries") - before, 2);

    let v = wait_some(
        Duration::from_secs(10),
        "the counters published",
        || f.status().filter(|v| v["engine"]["unusable"].as_u64() >= Some(2)),
        || f.log(),
    );
    let e = &v["engine"];
    assert_eq!(e["cache_misses"], cases.len() + 2, "{v}");
    assert_eq!(e["cache_hits"], cases.len() + 1, "{v}");
    assert_eq!(e["negative_hits"], 4, "{v}");
    assert_eq!(v["refused"], serde_json::json!({}), "{v}");
    f.assert_sandbox(&v, sandbox);
}

fn special_use_names_are_answered_without_upstream_traffic(sandbox: &'static str) {
    let mut f = with_nsd("dnsl").in_sandbox(sandbox);
    let upstream = nsd_addr().to_string();
    f.start_dns(&["--upstream", &upstream]);
    let ours: SocketAddr = OURS.parse().unwrap();
    let before = f.nsd_stat("num.queries");
    let a = ask(&f, ours, query(1, "localhost", Type::A, false));
    assert_eq!(
        a.answers[0].data,
        dns_wire::RData::A(std::net::Ipv4Addr::LOCALHOST)
    );
    let aaaa = ask(&f, ours, query(2, "db.LOCALHOST", Type::AAAA, true));
    assert_eq!(
        aaaa.answers[0].data,
        dns_wire::RData::Aaaa(std::net::Ipv6Addr::LOCALHOST)
    );
    assert!(
        aaaa.answers[0]
            .name
            .eq_exact(&dns_wire::Name::from_ascii("db.LOCALHOST").unwrap())
    );
    let mx = ask(&f, ours, query(3, "localhost", Type::MX, false));
    assert_eq!((mx.rcode(), mx.answers.len()), (Rcode::NOERROR, 0));
    for (id, name) in [
        (4, "printer.invalid"),
        (5, "abcdefghijklmnop.onion"),
        (6, "invalid"),
    ] {
        let got = ask(&f, ours, query(id, name, Type::A, true));
        assert_eq!((got.header.id, got.rcode()), (id, Rcode::NXDOMAIN), "{name}");
    }
    assert_eq!(f.nsd_stat("num.queries"), before, "nothing reached the upstream");
    let v = wait_some(
        Duration::from_secs(10),
        "the local answers counted",
        || {
            f.status()
                .filter(|v| v["engine"]["local_answers"].as_u64() >= Some(6))
        },
        || f.log(),
    );
    assert_eq!(v["engine"]["upstream_queries"], 0, "{v}");
    assert_eq!(v["network"]["upstream_queries"], 0, "{v}");
}

fn a_short_ttl_is_served_counted_down_then_asked_again(sandbox: &'static str) {
    let mut f = with_nsd("dnss").in_sandbox(sandbox);
    let upstream = nsd_addr().to_string();
    f.start_dns(&["--upstream", &upstream]);
    let ours: SocketAddr = OURS.parse().unwrap();
    let before = f.nsd_stat("num.queries");
    let first = ask(&f, ours, query(1, "ten.test", Type::A, true));
    assert!(first.answers[0].ttl <= 10, "{first:?}");
    // Within its TTL (10 s) a second answer comes from the cache with the
    // TTL counted down; after it, nsd is asked again. Polled: the second
    // upstream query is what proves the expiry, whenever it comes.
    let mut queries_seen = Vec::new();
    wait_some(
        Duration::from_secs(30),
        "ten.test asked upstream again after its TTL",
        || {
            let got = ask(&f, ours, query(2, "ten.test", Type::A, true));
            assert!(got.answers[0].ttl <= 10, "{got:?}");
            let n = f.nsd_stat("num.queries") - before;
            queries_seen.push(n);
            std::thread::sleep(Duration::from_millis(500));
            (n >= 2).then_some(())
        },
        || f.log(),
    );
    assert!(
        queries_seen.len() >= 2,
        "some answers came from the cache: {queries_seen:?}"
    );
    assert_eq!(queries_seen[0], 1, "the first repeat came from the cache");
}

fn large_answers_go_tc_over_udp_and_whole_over_tcp(sandbox: &'static str) {
    let mut f = with_nsd("dnsb").in_sandbox(sandbox);
    let upstream = nsd_addr().to_string();
    f.start_dns(&["--upstream", &upstream]);
    let ours: SocketAddr = OURS.parse().unwrap();
    // 700 octets of text: TC for a client without EDNS (512), whole with
    // EDNS 1232 and over TCP.
    let plain = ask(&f, ours, query(1, "big.test", Type::TXT, false));
    assert!(plain.header.truncated && plain.answers.is_empty(), "{plain:?}");
    let edns = ask(&f, ours, query(2, "big.test", Type::TXT, true));
    assert!(!edns.header.truncated && edns.answers.len() == 1);
    let tcp = ask_ours_tcp(&f, query(3, "big.test", Type::TXT, false));
    assert_eq!(tcp.answers, edns.answers);

    // 2000 octets: nsd truncates at our 1232, we ask again over TCP; a TCP
    // client gets it whole, a UDP one TC.
    let tcp_before = f.nsd_stat("num.tcp");
    let whole = ask_ours_tcp(&f, query(4, "bigger.test", Type::TXT, false));
    let nsd_whole = {
        let ns = f.ns.name().to_owned();
        in_netns(&ns, move || {
            ask_tcp(nsd_addr(), &[query(4, "bigger.test", Type::TXT, false)]).remove(0)
        })
    };
    same_as_nsd(&whole, &nsd_whole, "bigger.test over TCP");
    assert!(f.nsd_stat("num.tcp") > tcp_before, "asked over TCP upstream");
    let udp = ask(&f, ours, query(5, "bigger.test", Type::TXT, true));
    assert!(udp.header.truncated && udp.answers.is_empty());

    // 20,000 octets: more than one channel message carries (8 KiB), so
    // the reply crosses to the engine in parts and the answer back to the
    // network role in parts; a TCP client gets it whole, as nsd gives it.
    let huge = ask_ours_tcp(&f, query(6, "huge.test", Type::TXT, false));
    let nsd_huge = {
        let ns = f.ns.name().to_owned();
        in_netns(&ns, move || {
            ask_tcp(nsd_addr(), &[query(6, "huge.test", Type::TXT, false)]).remove(0)
        })
    };
    same_as_nsd(&huge, &nsd_huge, "huge.test over TCP");
    assert!(huge.to_bytes().unwrap().len() > 20_000);
    let v = wait_some(
        Duration::from_secs(10),
        "the answers counted",
        || f.status().filter(|v| v["network"]["answers"].as_u64() >= Some(6)),
        || f.log(),
    );
    assert_eq!(v["network"]["refused"], serde_json::json!({}), "{v}");
    assert_eq!(v["refused"], serde_json::json!({}), "{v}");
    assert_eq!(v["engine"]["servfail"], 0, "{v}");
}

/// nsd and the processes it forked, for SIGSTOP and SIGCONT.
fn nsd_tree(f: &Fixture) -> Vec<String> {
    let mut tree = vec![f.procs.pid(0)];
    let mut grew = true;
    while grew {
        grew = false;
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // The parent is the second field after the command's ")".
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid.is_some_and(|p| tree.contains(&p)) && !tree.contains(&pid) {
                tree.push(pid);
                grew = true;
            }
        }
    }
    tree.iter().map(u32::to_string).collect()
}

fn signal_nsd(f: &Fixture, sig: &str) {
    let mut args = vec!["-s".to_owned(), sig.to_owned()];
    args.extend(nsd_tree(f));
    let ok = std::process::Command::new("kill").args(&args).status().unwrap();
    assert!(ok.success(), "kill {args:?}");
}

fn with_serve_stale_an_expired_answer_outlives_its_upstream_with_ttl_30(sandbox: &'static str) {
    let mut f = with_nsd("dnsx").in_sandbox(sandbox);
    let upstream = nsd_addr().to_string();
    // Attempts of 10 s: a held upstream is slow, not failed, while the
    // client response timer runs (500 ms: well inside the 2 s the test's
    // client waits).
    f.start_dns_with(
        "attempt_ms = 10000\n[cache]\nserve_stale = true\nstale_max_age = 3600\nstale_answer_ms = 500\n",
        &["--upstream", &upstream],
    );
    let ours: SocketAddr = OURS.parse().unwrap();
    let fresh = ask(&f, ours, query(1, "short.test", Type::A, true));
    assert!(fresh.answers[0].ttl <= 4);
    // nsd held (SIGSTOP): queries reach its socket, nothing answers.
    // Once the 4 s have run out, the client gets the stale answer when
    // the client response timer ends, while the upstream query still runs.
    signal_nsd(&f, "STOP");
    let held = wait_some(
        Duration::from_secs(30),
        "a stale answer from a held upstream",
        || {
            let got = ask(&f, ours, query(4, "short.test", Type::A, true));
            assert_eq!(got.rcode(), Rcode::NOERROR, "{got:?}");
            std::thread::sleep(Duration::from_millis(300));
            (got.answers[0].ttl == 30).then_some(got)
        },
        || f.log(),
    );
    assert_eq!(held.answers[0].data, fresh.answers[0].data);
    let v = wait_some(
        Duration::from_secs(10),
        "the stale answer counted",
        || {
            f.status()
                .filter(|v| v["engine"]["stale_answers"].as_u64() >= Some(1))
        },
        || f.log(),
    );
    // Not after failed attempts: the query was still waiting for nsd.
    assert_eq!(
        (
            v["engine"]["upstream_timeouts"].as_u64(),
            v["engine"]["upstream_failures"].as_u64()
        ),
        (Some(0), Some(0)),
        "{v}"
    );
    let replies = v["engine"]["upstream_replies"].as_u64().unwrap();
    // nsd goes on and answers the query it held: the cache is fresh again,
    // and the next client gets it from there without a new query.
    signal_nsd(&f, "CONT");
    let v = wait_some(
        Duration::from_secs(10),
        "the held query answered",
        || {
            f.status()
                .filter(|v| v["engine"]["upstream_replies"].as_u64() > Some(replies))
        },
        || f.log(),
    );
    let (queries, hits) = (
        v["engine"]["upstream_queries"].as_u64().unwrap(),
        v["engine"]["cache_hits"].as_u64().unwrap(),
    );
    let refreshed = ask(&f, ours, query(5, "short.test", Type::A, true));
    assert!(refreshed.answers[0].ttl <= 4, "{refreshed:?}");
    let v = wait_some(
        Duration::from_secs(10),
        "the cache hit counted",
        || {
            f.status()
                .filter(|v| v["engine"]["cache_hits"].as_u64() > Some(hits))
        },
        || f.log(),
    );
    assert_eq!(v["engine"]["upstream_queries"].as_u64(), Some(queries), "{v}");
    // nsd gone: its port answers ICMP unreachable, every attempt fails.
    f.procs.stop(0, Duration::from_secs(5));
    let nsd_gone = ask(&f, ours, query(2, "a.test", Type::A, true));
    assert_eq!(nsd_gone.rcode(), Rcode::SERVFAIL, "nothing cached for a.test");
    // Once short.test's 4 s have run out, the stale answer with TTL 30
    // (RFC 8767), the same record.
    let stale = wait_some(
        Duration::from_secs(30),
        "a stale answer",
        || {
            let got = ask(&f, ours, query(3, "short.test", Type::A, true));
            assert_eq!(got.rcode(), Rcode::NOERROR, "{got:?}");
            std::thread::sleep(Duration::from_millis(300));
            (got.answers[0].ttl == 30).then_some(got)
        },
        || f.log(),
    );
    assert_eq!(stale.answers[0].data, fresh.answers[0].data);
    let v = wait_some(
        Duration::from_secs(10),
        "the stale answer counted",
        || {
            f.status()
                .filter(|v| v["engine"]["stale_answers"].as_u64() >= Some(2))
        },
        || f.log(),
    );
    assert!(v["engine"]["upstream_failures"].as_u64() >= Some(2), "{v}");
}

/// The guest's memory follows the cache: with `[cache] bytes` 16 MiB the
/// guest gets 36 MiB (twice the cache and the default 4 MiB), and 11,000
/// distinct answers (nsd's wildcard TXT of 800 octets, about 10 MB of
/// cache, more than the tender's default 4 MiB of guest memory holds)
/// are all kept, by the same engine: it never ran out of heap and was
/// never restarted. nsd's response rate limiting is off ([`with_nsd`]).
/// Needs root, nsd and /dev/kvm (`mirage_testkit::kvm`).
#[test]
fn a_cache_larger_than_the_default_guest_memory_fits_in_the_guest() {
    if !mirage_testkit::kvm::usable("answers::a_cache_larger_than_the_default_guest_memory_fits_in_the_guest")
    {
        return;
    }
    const NAMES: u32 = 11_000;
    let mut f = with_nsd("dnsm").in_sandbox("kvm");
    let upstream = format!("127.0.0.1:{NSD_PORT}");
    let daemon = f.start_dns_with("[cache]\nbytes = 16777216\n", &["--upstream", &upstream]);
    let engine = mirage_testkit::procfs::role_pid(f.procs.pid(daemon), "engine");
    let ns = f.ns.name().to_owned();
    let unanswered = in_netns(&ns, || {
        let ours: SocketAddr = "127.0.0.53:53".parse().unwrap();
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.connect(ours).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut missing: Vec<u32> = (1..=NAMES).collect();
        let mut buf = [0u8; 4096];
        // Windows of 200 queries; what did not come back is asked again.
        for _ in 0..5 {
            let mut still = Vec::new();
            for window in missing.chunks(200) {
                for &i in window {
                    let q = query((i % 65_536) as u16, &format!("n{i}.t.test"), Type::TXT, true);
                    s.send(&q).unwrap();
                }
                let mut got = std::collections::BTreeSet::new();
                while got.len() < window.len() {
                    let Ok(n) = s.recv(&mut buf) else { break };
                    let m = Message::parse(&buf[..n]).expect("a well-formed answer");
                    if m.rcode() == Rcode::NOERROR && m.answers.len() == 1 {
                        got.insert(m.header.id);
                    }
                }
                still.extend(window.iter().filter(|&&i| !got.contains(&((i % 65_536) as u16))));
            }
            missing = still;
            if missing.is_empty() {
                break;
            }
        }
        missing
    });
    // What is missing, and the counters, say why if a name never came back
    // (seen once in CI: 10,999 of 11,000).
    assert!(
        unanswered.is_empty(),
        "every name answered; missing {:?}\nstatus {:?}",
        &unanswered[..unanswered.len().min(20)],
        f.status()
    );
    let v = wait_some(
        Duration::from_secs(10),
        "every answer in the cache",
        || {
            f.status()
                .filter(|v| v["engine"]["cache_entries"].as_u64() >= Some(u64::from(NAMES)))
        },
        || format!("{:?}\n{}", f.status(), f.log()),
    );
    assert_eq!(v["sandbox"], "kvm", "{v}");
    assert_eq!(v["guest_memory_mib"], 36, "{v}");
    assert!(
        v["engine"]["cache_bytes"].as_u64() > Some(4 << 20),
        "more than the default guest's memory: {v}"
    );
    assert_eq!(v["engine_restarts"], 0, "{v}");
    assert_eq!(
        mirage_testkit::procfs::role_pid(f.procs.pid(daemon), "engine"),
        engine,
        "the same engine"
    );
}
