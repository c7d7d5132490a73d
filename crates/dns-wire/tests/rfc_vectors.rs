//! RFC vectors and round trips for the codec.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dns_wire::{
    Class, Edns, EdnsOption, Error, Header, Limits, Message, Name, Question, RData, Rcode, Record, Soa, Type,
};

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn record(owner: &str, ttl: u32, data: RData) -> Record {
    Record {
        name: name(owner),
        class: Class::IN,
        ttl,
        data,
    }
}

/// Parse, check it equals `expected`, and that emit gives the bytes back.
fn assert_round_trip(bytes: &[u8], expected: &Message) {
    let parsed = Message::parse(bytes).unwrap();
    assert_eq!(&parsed, expected);
    assert_eq!(parsed.to_bytes().unwrap(), bytes, "emit is not parse's inverse");
}

/// RFC 1035 §4.1.4: F.ISI.ARPA in full, FOO.F.ISI.ARPA as a label and a
/// pointer to it, ARPA as a pointer into its middle, the root as one zero.
/// Our encoder must produce exactly this layout, and the parser read it.
#[test]
fn rfc1035_compression_example() {
    let mut message = Message::query(0x1234, name("F.ISI.ARPA"), Type::A);
    message.header.response = true;
    message.answers = vec![
        record("FOO.F.ISI.ARPA", 60, RData::A(Ipv4Addr::new(10, 0, 0, 1))),
        record("ARPA", 60, RData::Ns(Name::root())),
    ];
    let bytes = hex("1234 8100 0001 0002 0000 0000
         01 46 03 49 53 49 04 41 52 50 41 00 0001 0001
         03 46 4f 4f c0 0c 0001 0001 0000003c 0004 0a000001
         c0 12 0002 0001 0000003c 0001 00");
    assert_eq!(message.to_bytes().unwrap(), bytes);
    assert_round_trip(&bytes, &message);
    // Offsets as the RFC counts them: F.ISI.ARPA at 12, ARPA at 18.
    assert_eq!(&bytes[12..14], b"\x01F");
    assert_eq!(&bytes[18..23], b"\x04ARPA");
}

/// A query with an OPT record (RFC 6891 §6.1.2): payload size 4096 in the
/// CLASS field, DO set (RFC 3225), one option (a client cookie, RFC 7873
/// option 10).
#[test]
fn rfc6891_opt_record() {
    let bytes = hex("abcd 0100 0001 0000 0000 0001
         07 65 78 61 6d 70 6c 65 03 63 6f 6d 00 0001 0001
         00 0029 1000 00 00 8000 000c 000a 0008 0102030405060708");
    let mut expected = Message::query(0xabcd, name("example.com"), Type::A);
    expected.edns = Some(Edns {
        dnssec_ok: true,
        options: vec![EdnsOption {
            code: 10,
            data: vec![1, 2, 3, 4, 5, 6, 7, 8],
        }],
        ..Edns::new(4096)
    });
    assert_round_trip(&bytes, &expected);
}

/// RFC 6891 §6.1.3: the response code is 12 bits, the upper 8 in OPT.
#[test]
fn rfc6891_extended_rcode() {
    let bytes = hex("0001 8000 0000 0000 0000 0001
         00 0029 0200 01 00 0000 0000");
    let message = Message::parse(&bytes).unwrap();
    assert_eq!(message.rcode(), Rcode::BADVERS);
    assert_eq!(message.to_bytes().unwrap(), bytes);
}

/// RFC 6891 §6.1.1: one OPT, owned by the root, in the additional section.
#[test]
fn rfc6891_misplaced_opt_is_refused() {
    let opt = "00 0029 1000 00000000 0000";
    for (counts, records) in [
        ("0000 0001 0000 0000", opt.to_string()),
        ("0000 0000 0000 0002", format!("{opt} {opt}")),
        (
            "0000 0000 0000 0001",
            "01 61 00 0029 1000 00000000 0000".to_string(),
        ),
    ] {
        let bytes = hex(&format!("0001 8000 {counts} {records}"));
        assert_eq!(Message::parse(&bytes), Err(Error::BadOpt), "{counts}");
    }
    // An option that overruns the OPT RDATA.
    let bytes = hex("0001 8000 0000 0000 0000 0001 00 0029 1000 00000000 0005 000a 0002 01");
    assert_eq!(Message::parse(&bytes), Err(Error::BadRdata));
    // OPT cannot be smuggled into a section as opaque data.
    let mut message = Message::query(1, name("a"), Type::A);
    message.additionals.push(record(
        ".",
        0,
        RData::Unknown {
            rtype: Type::OPT,
            data: vec![],
        },
    ));
    assert_eq!(message.to_bytes(), Err(Error::BadOpt));
}

/// RFC 3597 §5's examples: unknown types and classes are carried as opaque
/// RDATA and written back byte for byte; A in class IN is typed, but the
/// same type in another class is opaque (its meaning is class-specific).
#[test]
fn rfc3597_unknown_types() {
    let bytes = hex("0002 8400 0000 0004 0000 0000
         01 61 07 65 78 61 6d 70 6c 65 00 02db 0020 00000e10 0006 abcdef012345
         01 62 c0 0e f38b 0004 00000e10 0000
         01 65 c0 0e 0001 0001 00000e10 0004 0a000001
         c0 35 0001 0020 00000e10 0004 0a000002");
    let message = Message::parse(&bytes).unwrap();
    let data: Vec<&RData> = message.answers.iter().map(|r| &r.data).collect();
    assert_eq!(
        data,
        [
            &RData::Unknown {
                rtype: Type(731),
                data: hex("abcdef012345"),
            },
            &RData::Unknown {
                rtype: Type(62347),
                data: vec![],
            },
            &RData::A(Ipv4Addr::new(10, 0, 0, 1)),
            &RData::Unknown {
                rtype: Type::A,
                data: hex("0a000002"),
            },
        ]
    );
    assert_eq!(message.answers[0].class, Class(32));
    assert_eq!(message.answers[1].name.to_string(), "b.example");
    assert_eq!(message.to_bytes().unwrap(), bytes);
}

/// RFC 3597 §4: names inside unknown RDATA are never compressed (their
/// octets are opaque), nor SRV targets (RFC 2782); RFC 1035 types' are.
#[test]
fn rfc3597_no_compression_outside_rfc1035_types() {
    let mut message = Message::query(3, name("host.example"), Type::ANY);
    message.header.response = true;
    message.answers = vec![
        record(
            "host.example",
            1,
            RData::Srv {
                priority: 1,
                weight: 2,
                port: 123,
                target: name("host.example"),
            },
        ),
        record(
            "host.example",
            1,
            RData::Mx {
                preference: 10,
                exchange: name("host.example"),
            },
        ),
    ];
    let bytes = message.to_bytes().unwrap();
    let question_end = 12 + 14 + 4;
    let srv = question_end + 2 + 10;
    assert_eq!(&bytes[question_end..question_end + 2], [0xc0, 12]);
    assert_eq!(&bytes[srv + 6..srv + 20], b"\x04host\x07example\x00");
    let mx = srv + 20 + 2 + 10;
    assert_eq!(&bytes[mx..mx + 4], [0, 10, 0xc0, 12]);
    assert_eq!(Message::parse(&bytes).unwrap(), message);
    // Receivers decompress SRV targets all the same (RFC 3597 §4, RFC 2052).
    let mut compressed = bytes.clone();
    compressed.splice(srv + 6..srv + 20, [0xc0, 12]);
    let rdlength = srv - 2;
    compressed[rdlength..rdlength + 2].copy_from_slice(&8u16.to_be_bytes());
    assert_eq!(Message::parse(&compressed).unwrap(), message);
}

/// Every typed RDATA round-trips, and a second pass is byte-identical.
#[test]
fn typed_rdata_round_trip() {
    let mut message = Message::query(0xfeed, name("Example.ORG"), Type::ANY);
    message.header = Header {
        id: 0xfeed,
        response: true,
        authoritative: true,
        recursion_desired: true,
        recursion_available: true,
        authentic_data: true,
        checking_disabled: true,
        rcode: 3,
        ..Header::default()
    };
    message.answers = vec![
        record("example.org", 300, RData::A(Ipv4Addr::new(192, 0, 2, 1))),
        record(
            "example.org",
            300,
            RData::Aaaa(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        ),
        record("www.example.org", 300, RData::Cname(name("example.org"))),
        record("example.org", 300, RData::Ns(name("ns1.example.org"))),
        record("1.2.0.192.in-addr.arpa", 300, RData::Ptr(name("example.org"))),
        record(
            "example.org",
            300,
            RData::Mx {
                preference: 5,
                exchange: name("mail.example.org"),
            },
        ),
        record(
            "example.org",
            300,
            RData::Txt(vec![b"v=spf1 -all".to_vec(), vec![], vec![0xff; 255]]),
        ),
        record(
            "_ntp._udp.example.org",
            300,
            RData::Srv {
                priority: 0,
                weight: 5,
                port: 123,
                target: name("ntp.example.org"),
            },
        ),
    ];
    message.authorities = vec![record(
        "example.org",
        300,
        RData::Soa(Soa {
            mname: name("ns1.example.org"),
            rname: name("hostmaster.example.org"),
            serial: 2026120201,
            refresh: 7200,
            retry: 900,
            expire: 1209600,
            minimum: 300,
        }),
    )];
    message.edns = Some(Edns::new(1232));
    let bytes = message.to_bytes().unwrap();
    let parsed = Message::parse(&bytes).unwrap();
    assert_eq!(parsed, message);
    assert!(
        parsed.questions[0].name.eq_exact(&name("Example.ORG")),
        "case lost"
    );
    assert_eq!(parsed.to_bytes().unwrap(), bytes);
    assert_eq!(parsed.rcode(), Rcode::NXDOMAIN);
}

/// A pool lookup as mirage-ntp makes it: a 0x20-randomized question, a
/// reply that echoes it through a CNAME chain to addresses.
#[test]
fn pool_reply_matching_and_addresses() {
    let asked = name("pool.ntp.org").with_random_case({
        let mut bits = [true, false, false].into_iter().cycle();
        move || bits.next().unwrap()
    });
    let query = Message::query(0x5151, asked.clone(), Type::A);
    let mut reply = query.clone();
    reply.header.response = true;
    reply.answers = vec![
        record("a.pool.ntp.org", 60, RData::A(Ipv4Addr::new(192, 0, 2, 7))),
        record("POOL.ntp.org", 60, RData::Cname(name("a.pool.ntp.org"))),
        record("a.pool.ntp.org", 60, RData::A(Ipv4Addr::new(192, 0, 2, 8))),
        record("other.org", 60, RData::A(Ipv4Addr::new(192, 0, 2, 9))),
    ];
    let reply = Message::parse(&reply.to_bytes().unwrap()).unwrap();
    assert!(reply.is_response_to(&query));
    assert_eq!(
        reply.addresses(&asked),
        [
            (IpAddr::from([192, 0, 2, 7]), 60),
            (IpAddr::from([192, 0, 2, 8]), 60)
        ]
    );
    // The same question in other case, another id, or not a response.
    let mut lowered = reply.clone();
    lowered.questions[0].name = name("pool.ntp.org");
    assert_eq!(lowered.questions[0], reply.questions[0]);
    assert!(!lowered.is_response_to(&query));
    let mut other_id = reply.clone();
    other_id.header.id ^= 1;
    assert!(!other_id.is_response_to(&query));
    assert!(!query.is_response_to(&query));
    // A CNAME loop ends without addresses.
    let mut looped = reply.clone();
    looped.answers = vec![
        record("pool.ntp.org", 60, RData::Cname(name("b.ntp.org"))),
        record("b.ntp.org", 60, RData::Cname(name("pool.ntp.org"))),
    ];
    assert!(looped.addresses(&asked).is_empty());
}

#[test]
fn strictness() {
    let question = "01 61 00 0001 0001";
    let cases = [
        // Header alone cut short.
        ("0001 8000 0000", Error::Truncated),
        // A count the data cannot hold.
        (
            "0001 8000 0001 0001 0000 0000 01 61 00 0001 0001",
            Error::Truncated,
        ),
        // Bytes after the last record.
        (
            "0001 8000 0001 0000 0000 0000 01 61 00 0001 0001 00",
            Error::TrailingData,
        ),
        // A with five octets; A with three.
        (
            "0001 8000 0001 0001 0000 0000 01 61 00 0001 0001 c00c 0001 0001 00000000 0005 0102030405",
            Error::BadRdata,
        ),
        (
            "0001 8000 0001 0001 0000 0000 01 61 00 0001 0001 c00c 0001 0001 00000000 0003 010203",
            Error::BadRdata,
        ),
        // TXT without a string; TXT whose string overruns.
        (
            "0001 8000 0001 0001 0000 0000 01 61 00 0001 0001 c00c 0010 0001 00000000 0000",
            Error::BadRdata,
        ),
        (
            "0001 8000 0001 0001 0000 0000 01 61 00 0001 0001 c00c 0010 0001 00000000 0002 0561",
            Error::BadRdata,
        ),
        // A CNAME whose name runs past its RDLENGTH.
        (
            "0001 8000 0001 0001 0000 0000 01 61 00 0001 0001 c00c 0005 0001 00000000 0001 c00c",
            Error::BadRdata,
        ),
        // A pointer to a later record's name.
        (
            "0001 8000 0002 0000 0000 0000 c011 0001 0001 01 61 00 0001 0001",
            Error::BadPointer,
        ),
        // RDLENGTH past the end.
        (
            "0001 8000 0001 0001 0000 0000 01 61 00 0001 0001 c00c 0001 0001 00000000 0004 0102",
            Error::Truncated,
        ),
    ];
    for (text, error) in cases {
        assert_eq!(Message::parse(&hex(text)), Err(error), "{text}");
    }
    assert!(Message::parse(&hex(&format!("0001 8000 0001 0000 0000 0000 {question}"))).is_ok());
}

/// The budgets of [`Limits`]: records, pointers and decoded octets.
#[test]
fn work_budgets() {
    // 40 answers, each owned by a pointer to a 100-octet name.
    let long = name(&["abcdefghi"; 10].join("."));
    let mut message = Message::query(9, long.clone(), Type::A);
    message.header.response = true;
    message.answers = (0..40)
        .map(|i| record(&long.to_string(), 1, RData::A(Ipv4Addr::new(10, 0, 0, i))))
        .collect();
    let bytes = message.to_bytes().unwrap();
    assert!(bytes.len() < 1000, "compressed: {} octets", bytes.len());
    assert_eq!(Message::parse(&bytes).unwrap(), message);
    let limits = |records, pointers, decoded| Limits {
        max_records: records,
        max_pointers: pointers,
        max_decoded_bytes: decoded,
    };
    assert_eq!(
        Message::parse_with(&bytes, &limits(40, 512, 65536)),
        Err(Error::RecordBudget)
    );
    assert_eq!(
        Message::parse_with(&bytes, &limits(41, 39, 65536)),
        Err(Error::PointerBudget)
    );
    assert_eq!(
        Message::parse_with(&bytes, &limits(41, 40, 4000)),
        Err(Error::DecodedBudget)
    );
    assert!(Message::parse_with(&bytes, &limits(41, 40, 4500)).is_ok());
    // The header's counts are checked before anything is read.
    let mut huge = hex("0001 8000 ffff ffff ffff ffff");
    assert_eq!(Message::parse(&huge), Err(Error::RecordBudget));
    huge[4..12].copy_from_slice(&hex("0000 00ff 0000 0000"));
    assert_eq!(Message::parse(&huge), Err(Error::Truncated));
}

#[test]
fn questions_compare_case_insensitively_or_exactly() {
    let a = Question {
        name: name("NTP.org"),
        qtype: Type::AAAA,
        qclass: Class::IN,
    };
    let b = Question {
        name: name("ntp.ORG"),
        ..a.clone()
    };
    assert_eq!(a, b);
    assert!(!a.eq_exact(&b));
    assert!(a.eq_exact(&a.clone()));
}
