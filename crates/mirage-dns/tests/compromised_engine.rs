//! A compromised engine: the test starts the real network role from its
//! real plan (`mirage_dns::plan`) with the descriptors the supervisor would
//! give it, stands where the engine is on the direct channel and where the
//! supervisor is on its channel, and asks what a hostile engine could.
//! Needs root (a network namespace, the privilege drop); CI runs as root.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use dns_engine::{Action, Event, Forwarder, Inbound, Outbound};
use dns_wire::Type;
use mirage_dns::messages::{FromNetwork, NetworkStats};
use mirage_dns::plan::{self, NetworkLimits, NetworkSettings, RoleIds};
use mirage_dns::policy::OutboundRefusal;
use mirage_engine::{FromEngine, FromEngineOf, ToEngine, ToEngineOf};
use mirage_sdk::channel::Channel;
use mirage_testkit::procfs::ProcStatus;
use mirage_testkit::role::{alive, recv_within, start_planned};
use support::query;

/// Bound on one answer (the first includes the role's start-up).
const ANSWER_MS: u64 = 20_000;

fn send(engine: &Channel, items: Vec<Outbound>) {
    let msg: FromEngineOf<Forwarder> = FromEngine::Action(Action::Batch(items));
    engine.send(&msg).unwrap();
}

/// The next batch from the network role within `ms`.
fn batch(engine: &Channel, ms: u64) -> Option<Vec<Inbound>> {
    match recv_within::<ToEngineOf<Forwarder>>(engine, ms)? {
        ToEngine::Event(Event::Batch(items)) => Some(items),
        ToEngine::Start { .. } => panic!("the network role never sends Start"),
    }
}

/// Items until `want` of them came (or `ms` passed with nothing new).
fn items(engine: &Channel, want: usize, ms: u64) -> Vec<Inbound> {
    let mut got = Vec::new();
    while got.len() < want {
        match batch(engine, ms) {
            Some(b) => got.extend(b),
            None => break,
        }
    }
    got
}

fn nothing_arrives(s: &UdpSocket, what: &str) {
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 2048];
    if let Ok((n, from)) = s.recv_from(&mut buf) {
        panic!("{what}: {n} octets arrived from {from}");
    }
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    let (n, from) = s.recv_from(&mut buf).expect("a datagram");
    (buf[..n].to_vec(), from)
}

fn response(q: &[u8]) -> Vec<u8> {
    let mut r = q.to_vec();
    r[2] |= 0x80;
    r
}

#[test]
fn the_network_role_sends_only_to_upstreams_and_answers_only_clients_that_asked() {
    mirage_testkit::netns::run_in_netns(Duration::from_secs(120), || {
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let (listen_udp, listen_tcp) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        // As the supervisor hands them over.
        udp.set_nonblocking(true).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let settings = NetworkSettings {
            udp: vec![listen_udp],
            tcp: vec![listen_tcp],
            upstreams: vec![upstream.local_addr().unwrap()],
            allow: vec![mirage_dns::policy::Cidr::parse("127.0.0.0/8").unwrap()],
            limits: NetworkLimits {
                tcp_clients: 2,
                tcp_idle_ms: 500,
                ..NetworkLimits::default()
            },
        };
        let (engine, engine_far) = Channel::pair().unwrap();
        let plan = plan::network(&RoleIds::DEFAULT, 2, &settings.limits, &settings.upstreams);
        let (chan, mut role) = start_planned(
            &support::bin(),
            &plan,
            &settings,
            None,
            &[udp.as_fd(), tcp.as_fd(), engine_far.as_fd()],
        );
        drop((udp, tcp, engine_far));

        // Upstream queries: an upstream that is not configured, something
        // that is not a query: refused, and the engine hears they failed.
        let good = query(0x1111, "a.test", Type::A, true);
        send(
            &engine,
            vec![
                Outbound::Query {
                    query: 1,
                    upstream: 1,
                    data: good.clone(),
                },
                Outbound::Query {
                    query: 2,
                    upstream: 0,
                    data: response(&good),
                },
            ],
        );
        let got = items(&engine, 2, ANSWER_MS);
        assert_eq!(got, [Inbound::Failed { query: 1 }, Inbound::Failed { query: 2 }]);
        nothing_arrives(&upstream, "a refused query");
        nothing_arrives(&stranger, "a refused query");

        // Good ones leave from a fresh port each; a second use of a number
        // in flight is refused.
        send(
            &engine,
            vec![
                Outbound::Query {
                    query: 3,
                    upstream: 0,
                    data: good.clone(),
                },
                Outbound::Query {
                    query: 4,
                    upstream: 0,
                    data: good.clone(),
                },
                Outbound::Query {
                    query: 3,
                    upstream: 0,
                    data: good.clone(),
                },
            ],
        );
        let (q3, from3) = recv(&upstream);
        let (q4, from4) = recv(&upstream);
        assert_eq!((q3, q4), (good.clone(), good.clone()));
        assert_ne!(from3.port(), from4.port(), "a fresh source port per query");
        assert!(from3.port() != listen_udp.port() && from4.port() != listen_udp.port());
        nothing_arrives(&upstream, "the refused duplicate");
        // A forger elsewhere cannot reach the query's socket; the upstream can.
        stranger.send_to(&response(&good), from4).unwrap();
        let mut answer = response(&good);
        answer.push(0); // told apart from the forgery
        upstream.send_to(&answer, from4).unwrap();
        let got = items(&engine, 1, ANSWER_MS);
        assert_eq!(
            got,
            [Inbound::Reply {
                query: 4,
                data: answer.clone()
            }]
        );
        send(
            &engine,
            vec![Outbound::Close { query: 3 }, Outbound::Close { query: 4 }],
        );

        // Over TCP (a truncated answer's retry): the same rules; the query
        // arrives framed, and the framed answer comes back as a reply.
        let upstream_tcp = TcpListener::bind(upstream.local_addr().unwrap()).unwrap();
        send(
            &engine,
            vec![
                Outbound::TcpQuery {
                    query: 5,
                    upstream: 1,
                    data: good.clone(),
                },
                Outbound::TcpQuery {
                    query: 6,
                    upstream: 0,
                    data: good.clone(),
                },
            ],
        );
        assert_eq!(items(&engine, 1, ANSWER_MS), [Inbound::Failed { query: 5 }]);
        let (mut from_role, _) = upstream_tcp.accept().unwrap();
        from_role.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut framed = vec![0u8; 2 + good.len()];
        std::io::Read::read_exact(&mut from_role, &mut framed).unwrap();
        assert_eq!(
            (&framed[..2], &framed[2..]),
            (&(good.len() as u16).to_be_bytes()[..], &good[..])
        );
        let mut reply = (answer.len() as u16).to_be_bytes().to_vec();
        reply.extend_from_slice(&answer);
        from_role.write_all(&reply).unwrap();
        assert_eq!(
            items(&engine, 1, ANSWER_MS),
            [Inbound::Reply {
                query: 6,
                data: answer.clone()
            }]
        );
        // A TCP answer of 10,000 octets comes to the engine in parts of
        // 4096, each naming the whole's size, the last as the reply.
        send(
            &engine,
            vec![Outbound::TcpQuery {
                query: 7,
                upstream: 0,
                data: good.clone(),
            }],
        );
        let (mut from_role, _) = upstream_tcp.accept().unwrap();
        from_role.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        std::io::Read::read_exact(&mut from_role, &mut framed).unwrap();
        let mut large = response(&good);
        large.resize(10_000, 0x5a);
        let mut reply = 10_000u16.to_be_bytes().to_vec();
        reply.extend_from_slice(&large);
        from_role.write_all(&reply).unwrap();
        let got = items(&engine, 3, ANSWER_MS);
        assert_eq!(
            got,
            [
                Inbound::ReplyPart {
                    query: 7,
                    total: 10_000,
                    data: large[..4096].to_vec()
                },
                Inbound::ReplyPart {
                    query: 7,
                    total: 10_000,
                    data: large[4096..8192].to_vec()
                },
                Inbound::Reply {
                    query: 7,
                    data: large[8192..].to_vec()
                },
            ]
        );

        // Answers: only to a client that asked, once, with its id.
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let victim = UdpSocket::bind("127.0.0.1:0").unwrap();
        let asked = query(0x4242, "a.test", Type::A, false);
        client.send_to(&asked, listen_udp).unwrap();
        let got = items(&engine, 1, ANSWER_MS);
        let token = match &got[..] {
            [Inbound::Query { client, data, .. }] if *data == asked => *client,
            other => panic!("expected the client's query, got {other:?}"),
        };
        let mut wrong_id = response(&asked);
        wrong_id[1] ^= 1;
        let mut too_large = response(&asked);
        too_large.resize(1233, 0);
        send(
            &engine,
            vec![
                Outbound::Answer {
                    client: token + 1000,
                    data: response(&asked),
                },
                Outbound::Answer {
                    client: 0,
                    data: response(&asked),
                },
                Outbound::Answer {
                    client: token,
                    data: wrong_id,
                },
                Outbound::Answer {
                    client: token,
                    data: asked.clone(),
                },
                Outbound::Answer {
                    client: token,
                    data: too_large,
                },
                // Parts are for TCP clients only.
                Outbound::AnswerPart {
                    client: token,
                    total: 5000,
                    data: response(&asked),
                },
                Outbound::Answer {
                    client: token,
                    data: response(&asked),
                },
                Outbound::Answer {
                    client: token,
                    data: response(&asked),
                },
            ],
        );
        let (a, from) = recv(&client);
        assert_eq!((a, from), (response(&asked), listen_udp));
        nothing_arrives(&client, "a second answer");
        nothing_arrives(&victim, "a client that asked nothing");

        // TCP: at most `tcp_pipeline` queries of one connection outstanding.
        let mut conn = TcpStream::connect(listen_tcp).unwrap();
        let pipeline = settings.limits.tcp_pipeline as usize;
        let mut wire = Vec::new();
        for i in 0..pipeline + 4 {
            let q = query(i as u16, "a.test", Type::A, false);
            wire.extend_from_slice(&(q.len() as u16).to_be_bytes());
            wire.extend_from_slice(&q);
        }
        conn.write_all(&wire).unwrap();
        let got = items(&engine, pipeline + 4, 1000);
        assert_eq!(got.len(), pipeline, "the rest wait in the socket");
        let Inbound::Query {
            client: first, data, ..
        } = &got[0]
        else {
            panic!("{got:?}")
        };
        send(
            &engine,
            vec![Outbound::Answer {
                client: *first,
                data: response(data),
            }],
        );
        let more = items(&engine, 1, ANSWER_MS);
        assert_eq!(more.len(), 1, "one answered, one more read");
        // The second in parts: first parts that do not add up to what they
        // announce (refused, nothing sent), then right ones, sent whole.
        let Inbound::Query {
            client: second,
            data: second_q,
            ..
        } = &got[1]
        else {
            panic!("{got:?}")
        };
        let mut whole = response(second_q);
        whole.resize(9000, 0x33);
        send(
            &engine,
            vec![
                Outbound::AnswerPart {
                    client: *second,
                    total: 9000,
                    data: whole[..4096].to_vec(),
                },
                Outbound::Answer {
                    client: *second,
                    data: whole[8192..].to_vec(),
                },
            ],
        );
        // (A batch holds at most 7168 octets: one part per batch here.)
        send(
            &engine,
            vec![Outbound::AnswerPart {
                client: *second,
                total: 9000,
                data: whole[..4096].to_vec(),
            }],
        );
        send(
            &engine,
            vec![
                Outbound::AnswerPart {
                    client: *second,
                    total: 9000,
                    data: whole[4096..8192].to_vec(),
                },
                Outbound::Answer {
                    client: *second,
                    data: whole[8192..].to_vec(),
                },
            ],
        );
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut framed_answers = Vec::new();
        for _ in 0..2 {
            let mut len = [0u8; 2];
            std::io::Read::read_exact(&mut conn, &mut len).unwrap();
            let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
            std::io::Read::read_exact(&mut conn, &mut m).unwrap();
            framed_answers.push(m);
        }
        let Inbound::Query { data: first_q, .. } = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(framed_answers, [response(first_q), whole]);

        // Two connections at most: the pipelined one and one more; a third
        // is closed at once, the idle second after tcp_idle_ms.
        let idle = TcpStream::connect(listen_tcp).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let over = TcpStream::connect(listen_tcp).unwrap();
        for (mut s, what) in [
            (over, "the connection over the limit"),
            (idle, "the idle connection"),
        ] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 16];
            match std::io::Read::read(&mut s, &mut buf) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => panic!("{what} was not closed: {other:?}"),
            }
        }
        assert!(alive(&mut role));
        let _ = &conn; // still open: it has queries outstanding

        // Every refusal counted by reason.
        let want = [
            (OutboundRefusal::NotAnUpstream, 2),
            (OutboundRefusal::NotAQuery, 1),
            (OutboundRefusal::QueryInFlight, 1),
            (OutboundRefusal::NeverAsked, 2),
            (OutboundRefusal::NotTheAnswer, 3),
            (OutboundRefusal::TooLarge, 2),
            (OutboundRefusal::NoLongerOutstanding, 1),
        ];
        let deadline = Instant::now() + Duration::from_secs(20);
        let stats: NetworkStats = loop {
            assert!(Instant::now() < deadline, "no stats with every refusal");
            if let Some(FromNetwork::Stats(s)) = recv_within::<FromNetwork>(&chan, 2000)
                && s.refused.len() == want.len()
                && s.tcp_queries > pipeline as u64
                && s.tcp_closed_idle >= 1
            {
                break s;
            }
        };
        for (why, n) in want {
            assert_eq!(stats.refused.get(&why), Some(&n), "{why:?}: {stats:?}");
        }
        assert_eq!((stats.answers, stats.upstream_queries), (3, 4), "{stats:?}");
        assert_eq!(stats.tcp_upstream_queries, 2, "{stats:?}");
        assert_eq!((stats.tcp_accepted, stats.tcp_over_limit), (2, 1), "{stats:?}");
        assert_eq!(stats.tcp_closed_idle, 1, "{stats:?}");

        let st = ProcStatus::read(role.id());
        assert_eq!(st.uids(), [RoleIds::DEFAULT.network.uid; 4]);
        assert_eq!(st.seccomp(), 2);
        assert!(st.no_new_privs());
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(st.caps(set), 0, "{set}");
        }
        assert!(alive(&mut role), "refusals are not faults");
    });
}
