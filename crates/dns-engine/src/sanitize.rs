//! What of an upstream answer may reach a client or the cache: the
//! records of the question's CNAME chain and nothing else (the bailiwick
//! rule of a forwarder: an upstream answers the question it was asked,
//! not others nobody asked).
//!
//! - The chain starts at the question's name; each name's CNAME leads to
//!   the next, in order, at most [`MAX_CHAIN`] hops. A CNAME back to a
//!   name already on the chain is a loop, a name with two different
//!   CNAMEs is ambiguous (RFC 2181 section 10.1), and a chain longer than
//!   the cap is not followed: each is [`Unusable`] and the client gets
//!   SERVFAIL (RFC 1034 section 3.6.2: loops are an error).
//! - The answer section keeps, per name on the chain and in chain order,
//!   its CNAME and records of the question's type (any type for ANY), and
//!   the RRSIGs covering what is kept (DNSSEC passes through, RFC 4035
//!   section 3.2.1; no validation here). Everything else is dropped.
//! - The authority section keeps, for a negative answer only (NXDOMAIN,
//!   or NODATA: RFC 2308 section 2.2), the SOA of a zone that holds the
//!   chain's last name (its TTL lowered to its MINIMUM, RFC 2308 section
//!   3), and with DNSSEC the NSEC/NSEC3 records of that zone and the
//!   RRSIGs over what is kept. NS records are dropped: a stub does not
//!   follow referrals, and a forwarder's NS set is what poisoning attacks
//!   aim at.
//! - The additional section is dropped (the OPT record is rebuilt by the
//!   forwarder): nothing in it is needed to use the answer.
//! - A TTL with its top bit set counts as 0 (RFC 2181 section 8).

use alloc::vec::Vec;

use dns_wire::{Class, Message, Name, Question, RData, Rcode, Record, Type};

/// The longest CNAME chain followed (field reports: real CDN chains reach
/// 8 and more; unbound's 8 broke some).
pub const MAX_CHAIN: usize = 16;

const RRSIG: Type = Type(46);
const NSEC: Type = Type(47);
const NSEC3: Type = Type(50);

/// Why an answer cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unusable {
    /// A CNAME back to a name already on the chain.
    Loop,
    /// More than [`MAX_CHAIN`] CNAMEs.
    TooLong,
    /// One name with two CNAMEs to different targets.
    Ambiguous,
}

/// What an answer says about the question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Records of the question's type at the chain's end, or a chain whose
    /// end the upstream did not follow (an authoritative server's CNAME
    /// out of its zone).
    Positive,
    /// NOERROR with no record of the type (RFC 2308 section 2.2).
    NoData,
    /// The chain's last name does not exist.
    NxDomain,
    /// Any other rcode: every section is emptied.
    Error,
}

/// An answer cut down to its question.
#[derive(Clone, Debug)]
pub struct Clean {
    pub message: Message,
    pub kind: Kind,
    /// For a negative answer with an SOA: its negative TTL (RFC 2308
    /// section 5: the smaller of the SOA's TTL and MINIMUM).
    pub negative_ttl: Option<u32>,
}

/// RFC 2181 section 8.
pub fn ttl_of(raw: u32) -> u32 {
    if raw & 0x8000_0000 != 0 { 0 } else { raw }
}

fn class_ok(question: &Question, r: &Record) -> bool {
    question.qclass == Class::ANY || r.class == question.qclass
}

/// The type an RRSIG covers (the first two octets of its RDATA).
fn covered(r: &Record) -> Option<Type> {
    match &r.data {
        RData::Unknown { rtype, data } if *rtype == RRSIG && data.len() >= 2 => {
            Some(Type(u16::from_be_bytes([data[0], data[1]])))
        }
        _ => None,
    }
}

/// The chain of names from the question's: the names, and for each but
/// the last the index of its CNAME in the answer section.
fn chain(reply: &Message, question: &Question) -> Result<Vec<(Name, Option<usize>)>, Unusable> {
    let mut names: Vec<(Name, Option<usize>)> = Vec::new();
    let mut current = question.name.clone();
    // A CNAME question (or ANY) is answered by the name's own records.
    let follow = question.qtype != Type::CNAME && question.qtype != Type::ANY;
    loop {
        let mut link: Option<(usize, &Name)> = None;
        if follow {
            for (i, r) in reply.answers.iter().enumerate() {
                if let RData::Cname(target) = &r.data
                    && class_ok(question, r)
                    && r.name == current
                {
                    match link {
                        Some((_, t)) if t != target => return Err(Unusable::Ambiguous),
                        Some(_) => {}
                        None => link = Some((i, target)),
                    }
                }
            }
        }
        let Some((i, target)) = link else {
            names.push((current, None));
            return Ok(names);
        };
        names.push((current, Some(i)));
        if names.iter().any(|(n, _)| n == target) {
            return Err(Unusable::Loop);
        }
        if names.len() > MAX_CHAIN {
            return Err(Unusable::TooLong);
        }
        current = target.clone();
    }
}

/// `reply` (already matched to `question`) cut down to the question's
/// chain. `dnssec_ok`: the question was asked with DO, so the proofs of a
/// negative answer (NSEC, NSEC3 and their RRSIGs) are kept too.
pub fn sanitize(reply: &Message, question: &Question, dnssec_ok: bool) -> Result<Clean, Unusable> {
    let mut message = Message {
        header: reply.header,
        questions: reply.questions.clone(),
        answers: Vec::new(),
        authorities: Vec::new(),
        additionals: Vec::new(),
        edns: reply.edns.clone(),
    };
    let rcode = reply.rcode();
    if rcode != Rcode::NOERROR && rcode != Rcode::NXDOMAIN {
        return Ok(Clean {
            message,
            kind: Kind::Error,
            negative_ttl: None,
        });
    }
    let names = chain(reply, question)?;
    let any = question.qtype == Type::ANY;
    let mut found = false;
    for (index, (name, link)) in names.iter().enumerate() {
        let last = index + 1 == names.len();
        // The types kept at this name: its CNAME (the link), or at the
        // chain's end the question's type.
        let wanted = |t: Type| {
            if last {
                any || t == question.qtype
            } else {
                t == Type::CNAME
            }
        };
        for (i, r) in reply.answers.iter().enumerate() {
            if r.name != *name || !class_ok(question, r) {
                continue;
            }
            let keep = match covered(r) {
                Some(t) => wanted(t),
                // The link itself, or a CNAME (or ANY) question's answer.
                None if r.rtype() == Type::CNAME => Some(i) == *link || (last && wanted(Type::CNAME)),
                None => wanted(r.rtype()),
            };
            if keep {
                if last && r.rtype() != RRSIG {
                    found = true;
                }
                let mut r = r.clone();
                r.ttl = ttl_of(r.ttl);
                message.answers.push(r);
            }
        }
    }
    let end = &names[names.len() - 1].0;
    let chained = names.len() > 1;
    let kind = if rcode == Rcode::NXDOMAIN {
        Kind::NxDomain
    } else if found {
        Kind::Positive
    } else {
        Kind::NoData
    };
    let mut negative_ttl = None;
    if kind != Kind::Positive {
        // The SOA of a zone holding the chain's end: the upstream's word
        // on how long the name (or type) is known not to exist.
        let soa = reply.authorities.iter().find_map(|r| match &r.data {
            RData::Soa(soa) if class_ok(question, r) && end.ends_with(&r.name) => Some((r, soa)),
            _ => None,
        });
        if let Some((r, soa)) = soa {
            let ttl = ttl_of(r.ttl).min(ttl_of(soa.minimum));
            negative_ttl = Some(ttl);
            let zone = r.name.clone();
            let mut kept = r.clone();
            kept.ttl = ttl;
            message.authorities.push(kept);
            if dnssec_ok {
                for a in &reply.authorities {
                    let proof = matches!(a.rtype(), NSEC | NSEC3) && a.name.ends_with(&zone);
                    let signature = covered(a).is_some_and(|t| {
                        (t == Type::SOA && a.name == zone)
                            || (matches!(t, NSEC | NSEC3) && a.name.ends_with(&zone))
                    });
                    if (proof || signature) && class_ok(question, a) {
                        let mut a = a.clone();
                        a.ttl = ttl_of(a.ttl);
                        message.authorities.push(a);
                    }
                }
            }
        } else if kind == Kind::NoData && chained {
            // A chain the upstream did not follow (an authoritative
            // server's CNAME out of its zone, no SOA): the chain itself
            // is the answer.
            return Ok(Clean {
                message,
                kind: Kind::Positive,
                negative_ttl: None,
            });
        }
    }
    Ok(Clean {
        message,
        kind,
        negative_ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use core::net::Ipv4Addr;
    use dns_wire::Soa;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn rec(owner: &str, ttl: u32, data: RData) -> Record {
        Record {
            name: name(owner),
            class: Class::IN,
            ttl,
            data,
        }
    }

    fn a(owner: &str, last: u8) -> Record {
        rec(owner, 300, RData::A(Ipv4Addr::new(192, 0, 2, last)))
    }

    fn cname(owner: &str, target: &str) -> Record {
        rec(owner, 300, RData::Cname(name(target)))
    }

    fn rrsig(owner: &str, covers: Type) -> Record {
        let mut data = covers.0.to_be_bytes().to_vec();
        data.extend_from_slice(&[8, 2, 0, 0, 1, 44]);
        rec(owner, 300, RData::Unknown { rtype: RRSIG, data })
    }

    fn soa(owner: &str, ttl: u32, minimum: u32) -> Record {
        rec(
            owner,
            ttl,
            RData::Soa(Soa {
                mname: name("ns.test"),
                rname: name("admin.test"),
                serial: 1,
                refresh: 3600,
                retry: 600,
                expire: 86400,
                minimum,
            }),
        )
    }

    fn question(q: &str, qtype: Type) -> Question {
        Question {
            name: name(q),
            qtype,
            qclass: Class::IN,
        }
    }

    fn reply(
        q: &Question,
        answers: Vec<Record>,
        authorities: Vec<Record>,
        additionals: Vec<Record>,
    ) -> Message {
        let mut m = Message::query(1, q.name.clone(), q.qtype);
        m.header.response = true;
        m.answers = answers;
        m.authorities = authorities;
        m.additionals = additionals;
        m
    }

    fn owners(rs: &[Record]) -> Vec<alloc::string::String> {
        use alloc::string::ToString;
        rs.iter()
            .map(|r| alloc::format!("{} {}", r.name.to_string().to_ascii_lowercase(), r.rtype().0))
            .collect()
    }

    #[test]
    fn only_the_chain_is_kept_in_order_and_injected_records_go() {
        let q = question("www.test", Type::A);
        let m = reply(
            &q,
            vec![
                a("c.test", 3),
                // An injected record for a name nobody asked, and another
                // type of a name on the chain.
                a("bank.example", 66),
                cname("b.test", "c.test"),
                cname("Www.Test", "b.test"),
                rec("www.test", 300, RData::Txt(vec![b"x".to_vec()])),
                rrsig("c.test", Type::A),
                rrsig("c.test", Type::TXT),
            ],
            vec![rec("test", 300, RData::Ns(name("ns.evil.example")))],
            vec![a("ns.evil.example", 9)],
        );
        let c = sanitize(&m, &q, true).unwrap();
        assert_eq!(c.kind, Kind::Positive);
        assert_eq!(
            owners(&c.message.answers),
            ["www.test 5", "b.test 5", "c.test 1", "c.test 46"]
        );
        assert!(c.message.authorities.is_empty() && c.message.additionals.is_empty());
    }

    #[test]
    fn loops_ambiguity_and_overlong_chains_are_unusable() {
        let q = question("a.test", Type::A);
        let m = reply(&q, vec![cname("a.test", "a.test")], vec![], vec![]);
        assert_eq!(sanitize(&m, &q, false).unwrap_err(), Unusable::Loop);
        let m = reply(
            &q,
            vec![cname("a.test", "b.test"), cname("b.test", "A.TEST")],
            vec![],
            vec![],
        );
        assert_eq!(sanitize(&m, &q, false).unwrap_err(), Unusable::Loop);
        let m = reply(
            &q,
            vec![cname("a.test", "b.test"), cname("a.test", "c.test")],
            vec![],
            vec![],
        );
        assert_eq!(sanitize(&m, &q, false).unwrap_err(), Unusable::Ambiguous);
        // 16 hops are followed, 17 are not.
        let hops = |n: usize| {
            let mut rs: Vec<Record> = (0..n)
                .map(|i| {
                    let from = if i == 0 {
                        "a.test".into()
                    } else {
                        alloc::format!("h{i}.test")
                    };
                    cname(&from, &alloc::format!("h{}.test", i + 1))
                })
                .collect();
            rs.push(a(&alloc::format!("h{n}.test"), 1));
            reply(&q, rs, vec![], vec![])
        };
        let ok = sanitize(&hops(MAX_CHAIN), &q, false).unwrap();
        assert_eq!(
            (ok.kind, ok.message.answers.len()),
            (Kind::Positive, MAX_CHAIN + 1)
        );
        assert_eq!(
            sanitize(&hops(MAX_CHAIN + 1), &q, false).unwrap_err(),
            Unusable::TooLong
        );
    }

    #[test]
    fn a_negative_answer_keeps_its_zones_soa_with_the_smaller_ttl() {
        let q = question("nx.test", Type::A);
        let mut m = reply(
            &q,
            vec![],
            vec![
                soa("other.example", 300, 60),
                soa("test", 300, 60),
                rec("test", 300, RData::Ns(name("ns.test"))),
                rec(
                    "nx.test",
                    300,
                    RData::Unknown {
                        rtype: NSEC,
                        data: vec![0],
                    },
                ),
                rrsig("test", Type::SOA),
            ],
            vec![a("ns.test", 1)],
        );
        m.header.rcode = 3;
        let c = sanitize(&m, &q, false).unwrap();
        assert_eq!((c.kind, c.negative_ttl), (Kind::NxDomain, Some(60)));
        assert_eq!(owners(&c.message.authorities), ["test 6"]);
        assert_eq!(c.message.authorities[0].ttl, 60);
        // With DO, the proofs of that zone and their signatures too.
        let c = sanitize(&m, &q, true).unwrap();
        assert_eq!(
            owners(&c.message.authorities),
            ["test 6", "nx.test 47", "test 46"]
        );
        // NODATA: NOERROR and nothing of the type; the TTL's top bit.
        m.header.rcode = 0;
        m.answers = vec![rec("nx.test", 300, RData::Txt(vec![b"t".to_vec()]))];
        m.authorities = vec![soa("test", 0x8000_0100, 60)];
        let c = sanitize(&m, &q, false).unwrap();
        assert_eq!((c.kind, c.negative_ttl), (Kind::NoData, Some(0)));
        assert!(c.message.answers.is_empty());
        // No SOA: negative, but no negative TTL (not cached).
        m.authorities.clear();
        let c = sanitize(&m, &q, false).unwrap();
        assert_eq!((c.kind, c.negative_ttl), (Kind::NoData, None));
    }

    #[test]
    fn an_unfollowed_chain_is_an_answer_and_errors_carry_nothing() {
        let q = question("alias.test", Type::A);
        let m = reply(&q, vec![cname("alias.test", "a.example")], vec![], vec![]);
        let c = sanitize(&m, &q, false).unwrap();
        assert_eq!((c.kind, c.message.answers.len()), (Kind::Positive, 1));
        let mut m = reply(&q, vec![a("alias.test", 1)], vec![soa("test", 1, 1)], vec![]);
        m.header.rcode = 2;
        let c = sanitize(&m, &q, false).unwrap();
        assert_eq!(c.kind, Kind::Error);
        assert!(c.message.answers.is_empty() && c.message.authorities.is_empty());
        // A CNAME question is answered by the CNAME itself, not followed.
        let q = question("alias.test", Type::CNAME);
        let m = reply(
            &q,
            vec![cname("alias.test", "a.test"), a("a.test", 1)],
            vec![],
            vec![],
        );
        let c = sanitize(&m, &q, false).unwrap();
        assert_eq!(owners(&c.message.answers), ["alias.test 5"]);
    }
}
