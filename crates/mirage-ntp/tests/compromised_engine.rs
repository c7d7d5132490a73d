//! A compromised engine: the test stands where the supervisor forwards the
//! engine's messages, starts one real role of the binary from its real plan
//! (`mirage_ntp::plan`) and sends it what a hostile engine could ask for.
//!
//! No test here can move the host clock: the policy test runs the actuator
//! as `--observe` runs it (no capability, no clock call in its filter; it
//! checks every intent, then does not apply it), and the steering actuator
//! is only started, inspected and asked to store its drift. Time namespaces
//! would not help: CLOCK_REALTIME is not namespaced.
//! Needs root (namespaces, the privilege drop); CI runs as root.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use mirage_ntp::messages::{FromActuator, FromNetwork, OutboundRefusal, Outcome, ToActuator, ToNetwork};
use mirage_ntp::plan::{self, ActuatorSettings, DriftFile, NetworkSettings};
use mirage_ntp::policy::{ClockIntent, ClockPolicy, ClockRefusal, StepAcceptance, is_last_day_of_month};
use mirage_sdk::channel::Channel;
use mirage_testkit::procfs::ProcStatus;
use mirage_testkit::role::{alive, recv_within, start_planned};
use mirage_testkit::tempdir::TestDir;
use ntp_engine::wire::Repr;
use ntp_engine::{KernelStatus, Leap, NtpTimestamp};

/// Bound on one answer (the first includes the role's start-up).
const ANSWER_MS: u64 = 20_000;
const S: i64 = 1_000_000_000;
const DAY: i64 = 86_400 * S;
const CAP_SYS_TIME: u64 = 1 << 25;

fn bin() -> PathBuf {
    mirage_testkit::service_bin("MIRAGE_NTP_BIN", env!("CARGO_BIN_EXE_mirage-ntp"))
}

fn ready(chan: &Channel) -> (bool, bool) {
    match recv_within::<FromActuator>(chan, ANSWER_MS).expect("the actuator's Ready") {
        FromActuator::Ready { observe, steerable } => (observe, steerable),
        other => panic!("expected Ready, got {other:?}"),
    }
}

/// Send intent `id` and wait for its answer.
fn ask(chan: &Channel, id: u64, intent: ClockIntent) -> Outcome {
    chan.send(&ToActuator::Apply { id, intent }).unwrap();
    match recv_within::<FromActuator>(chan, ANSWER_MS).expect("an answer") {
        FromActuator::Result { id: got, outcome } => {
            assert_eq!(got, id, "answers come in order, with their id");
            outcome
        }
        other => panic!("expected a result, got {other:?}"),
    }
}

fn status(synchronized: bool, max_error_ns: i64, leap: Leap) -> ClockIntent {
    ClockIntent::SetStatus(KernelStatus {
        synchronized,
        max_error_ns,
        est_error_ns: 0,
        leap,
    })
}

#[test]
fn the_actuator_refuses_every_out_of_policy_intent_and_counts_each_reason() {
    let settings = ActuatorSettings {
        observe: true,
        policy: ClockPolicy::default(),
    };
    let (chan, mut role) = start_planned(
        &bin(),
        &plan::actuator(plan::RoleIds::DEFAULT.actuator, true),
        &settings,
        None,
        &[],
    );
    assert_eq!(ready(&chan), (true, false), "observing: never probes the clock");

    use ClockIntent::*;
    use ClockRefusal::*;
    let mut script: Vec<(ClockIntent, Option<ClockRefusal>)> = vec![
        // Start-up: any step forward, at most a day back.
        (Step { delta_ns: -2 * DAY }, Some(StartupStepBackTooLarge)),
        (Step { delta_ns: -DAY - 1 }, Some(StartupStepBackTooLarge)),
        (Step { delta_ns: i64::MIN }, Some(StartupStepBackTooLarge)),
        // Absurd frequencies and drifts.
        (
            SetFrequency {
                scaled_ppm: (500 << 16) + 1,
            },
            Some(FrequencyOutOfRange),
        ),
        (
            SetFrequency {
                scaled_ppm: -(100_000 << 16),
            },
            Some(FrequencyOutOfRange),
        ),
        (SetFrequency { scaled_ppm: i64::MIN }, Some(FrequencyOutOfRange)),
        (SaveDrift { scaled_ppm: i64::MAX }, Some(DriftOutOfRange)),
        // Steps disguised as slews.
        (Slew { delta_ns: 10 * S }, Some(SlewTooLarge)),
        (Slew { delta_ns: i64::MIN }, Some(SlewTooLarge)),
        // Status the clock does not have.
        (
            status(true, 1_000_000, Leap::None),
            Some(SynchronizedBeforeApplied),
        ),
        (status(false, -1, Leap::None), Some(ErrorOutOfRange)),
        (status(false, 17 * S, Leap::None), Some(ErrorOutOfRange)),
        (status(false, 1_000_000, Leap::Unknown), Some(LeapUnknown)),
        // Within the policy: a 30 s step forward ends start-up (and takes
        // one of the three steps of the budget).
        (Step { delta_ns: 30 * S }, None),
        (Step { delta_ns: -1001 * S }, Some(StepTooLarge)),
        (Step { delta_ns: 2 * DAY }, Some(StepTooLarge)),
        (Step { delta_ns: i64::MAX }, Some(StepTooLarge)),
    ];
    // Steps in a loop, each within the 1000 s limit: two more pass the
    // budget, then none.
    for k in 0..20 {
        let refusal = (k >= 2).then_some(StepBudgetSpent);
        script.push((Step { delta_ns: 900 * S }, refusal));
    }
    // A leap on a day that is not the last of its month (by the
    // actuator's clock; on the last day of a month the same intent is
    // within the policy).
    let today = mirage_sdk::clock::realtime().secs;
    let leap_refusal = (!is_last_day_of_month(today)).then_some(LeapNotLastDayOfMonth);
    script.push((status(true, 1_000_000, Leap::Insert), leap_refusal));

    let mut refused = std::collections::BTreeMap::<ClockRefusal, u32>::new();
    let mut expected = std::collections::BTreeMap::<ClockRefusal, u32>::new();
    for (id, (intent, want)) in script.iter().enumerate() {
        let outcome = ask(&chan, id as u64, *intent);
        match (want, &outcome) {
            (Some(w), Outcome::Refused(r)) => {
                assert_eq!(r, w, "{intent:?}");
                *refused.entry(*r).or_default() += 1;
                *expected.entry(*w).or_default() += 1;
            }
            // Within the policy, checked, and not applied.
            (None, Outcome::Observed) => {}
            _ => panic!("{intent:?}: expected {want:?}, got {outcome:?}"),
        }
    }
    assert_eq!(refused, expected);
    assert_eq!(refused[&StepBudgetSpent], 18);
    assert_eq!(refused[&StartupStepBackTooLarge], 3);
    assert!(alive(&mut role), "refusals never end the actuator");
    let st = ProcStatus::read(role.id());
    assert_eq!((st.uids(), st.seccomp()), ([plan::ACTUATOR_ID; 4], 2));
    for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(st.caps(set), 0, "observing actuator {set}");
    }
}

/// Relay an operator's acceptance and wait for the actuator's answer.
fn accept(chan: &Channel, max_ns: u64, valid_ms: u64) -> Outcome {
    accept_way(chan, max_ns, valid_ms, None)
}

fn accept_way(chan: &Channel, max_ns: u64, valid_ms: u64, forward: Option<bool>) -> Outcome {
    chan.send(&ToActuator::AcceptStep(StepAcceptance {
        max_ns,
        valid_ms,
        forward,
    }))
    .unwrap();
    match recv_within::<FromActuator>(chan, ANSWER_MS).expect("an answer") {
        FromActuator::Acceptance { outcome } => outcome,
        other => panic!("expected the acceptance's answer, got {other:?}"),
    }
}

#[test]
fn an_operators_acceptance_lets_one_held_step_through_and_is_bounded_itself() {
    let settings = ActuatorSettings {
        observe: true,
        policy: ClockPolicy::default(),
    };
    let (chan, mut role) = start_planned(
        &bin(),
        &plan::actuator(plan::RoleIds::DEFAULT.actuator, true),
        &settings,
        None,
        &[],
    );
    assert_eq!(ready(&chan), (true, false));
    use ClockIntent::*;
    // A slew ends start-up; a 2000 s step is then beyond the policy.
    assert_eq!(ask(&chan, 0, Slew { delta_ns: 1000 }), Outcome::Observed);
    let held = Step { delta_ns: -2000 * S };
    let refused = Outcome::Refused(ClockRefusal::StepTooLarge);
    assert_eq!(ask(&chan, 1, held), refused);
    // Acceptances of no size or unbounded time are refused themselves.
    let out_of_range = Outcome::Refused(ClockRefusal::AcceptanceOutOfRange);
    assert_eq!(accept(&chan, 0, 60_000), out_of_range);
    assert_eq!(accept(&chan, 2500 * S as u64, 0), out_of_range);
    assert_eq!(accept(&chan, 2500 * S as u64, 3_600_001), out_of_range);
    assert_eq!(ask(&chan, 2, held), refused);
    // Too small for the held step: it stays held.
    assert_eq!(accept(&chan, 1500 * S as u64, 60_000), Outcome::Applied);
    assert_eq!(ask(&chan, 3, held), refused);
    // Large enough: one step passes, the next is refused again.
    assert_eq!(accept(&chan, 2500 * S as u64, 60_000), Outcome::Applied);
    assert_eq!(ask(&chan, 4, held), Outcome::Observed);
    assert_eq!(ask(&chan, 5, held), refused);
    // The held step's direction only: its mirror image stays refused.
    assert_eq!(
        accept_way(&chan, 2500 * S as u64, 60_000, Some(true)),
        Outcome::Applied
    );
    assert_eq!(ask(&chan, 7, held), refused);
    assert_eq!(
        accept_way(&chan, 2500 * S as u64, 60_000, Some(false)),
        Outcome::Applied
    );
    assert_eq!(ask(&chan, 8, held), Outcome::Observed);
    // An acceptance expires unused.
    assert_eq!(accept(&chan, 2500 * S as u64, 1000), Outcome::Applied);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ask(&chan, 6, held), refused);
    assert!(alive(&mut role));
}

#[test]
fn the_steering_actuator_holds_cap_sys_time_alone_and_writes_only_its_drift_file() {
    let dir = TestDir::new("mirage-ntp-actuator", &mirage_testkit::netns::unique_id().0);
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(plan::ACTUATOR_ID), Some(plan::ACTUATOR_ID)).unwrap();
    let state_fd = mirage_sdk::files::open_dir(&state).unwrap();
    let settings = ActuatorSettings {
        observe: false,
        policy: ClockPolicy::default(),
    };
    let (chan, mut role) = start_planned(
        &bin(),
        &plan::actuator(plan::RoleIds::DEFAULT.actuator, false),
        &settings,
        None,
        &[state_fd.as_fd()],
    );
    // Its start-up probe rewrote the kernel's own frequency: allowed.
    assert_eq!(ready(&chan), (false, true), "steering, and the kernel lets it");
    let st = ProcStatus::read(role.id());
    assert_eq!(st.uids(), [plan::ACTUATOR_ID; 4]);
    assert_eq!(st.seccomp(), 2);
    assert!(st.no_new_privs());
    assert_eq!(st.caps("CapEff"), CAP_SYS_TIME);
    assert_eq!(st.caps("CapPrm"), CAP_SYS_TIME);
    assert_eq!(st.caps("CapBnd") & !CAP_SYS_TIME, 0);
    assert_eq!((st.caps("CapInh"), st.caps("CapAmb")), (0, 0));

    // No clock intent is sent here; the drift file is no clock change.
    let before = unix_secs();
    assert_eq!(
        ask(&chan, 1, ClockIntent::SaveDrift { scaled_ppm: 12 << 16 }),
        Outcome::Applied
    );
    assert_eq!(
        ask(
            &chan,
            2,
            ClockIntent::SaveDrift {
                scaled_ppm: 501 << 16
            }
        ),
        Outcome::Refused(ClockRefusal::DriftOutOfRange)
    );
    // A flood of saves within the policy: the first was the last write for
    // a minute (MIN_DRIFT_SAVE_MS), so the file keeps its value.
    for k in 0..1000 {
        assert_eq!(
            ask(&chan, 3 + k, ClockIntent::SaveDrift { scaled_ppm: 13 << 16 }),
            Outcome::Refused(ClockRefusal::DriftSavedTooSoon)
        );
    }
    let saved: DriftFile =
        serde_json::from_slice(&std::fs::read(state.join(plan::DRIFT_FILE)).unwrap()).unwrap();
    assert_eq!((saved.version, saved.scaled_ppm), (1, 12 << 16));
    // With when it was saved: the next run's time floor.
    let at = saved.saved_unix_secs.expect("the save time");
    assert!((before..=unix_secs()).contains(&at), "{at}");
    assert!(alive(&mut role));
}

#[test]
fn the_network_role_sends_only_our_requests_to_its_server_at_a_capped_rate() {
    mirage_testkit::netns::run_in_netns(Duration::from_secs(60), || {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let to = server.local_addr().unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(to).unwrap();
        mirage_sdk::udp::enable_receive_timestamps(&socket).unwrap();
        let ours = socket.local_addr().unwrap();
        let settings = NetworkSettings {
            servers: vec![to],
            ..NetworkSettings::default()
        };
        let (chan, mut role) = start_planned(
            &bin(),
            &plan::network(plan::RoleIds::DEFAULT.network, 1, false),
            &settings,
            None,
            &[socket.as_fd()],
        );
        drop(socket);
        let next = || recv_within::<FromNetwork>(&chan, ANSWER_MS).expect("an answer from the network role");
        let cookie = |k: u64| NtpTimestamp(0x0123_4567_0000_0000 + k);
        let request = |k: u64| Repr::client_request(cookie(k)).to_bytes().to_vec();

        // Another destination, even the server's address on another port.
        let elsewhere: SocketAddr = SocketAddr::new(to.ip(), to.port().wrapping_add(1));
        chan.send(&ToNetwork::Send {
            to: elsewhere,
            transmit: cookie(1),
            data: request(1),
        })
        .unwrap();
        assert_eq!(
            next(),
            FromNetwork::Refused {
                to: elsewhere,
                why: OutboundRefusal::NotAServer
            }
        );
        // Anything but the request it reports: a leak, another transmit.
        let mut leak = request(2);
        leak[16..24].copy_from_slice(&[0xaa; 8]);
        chan.send(&ToNetwork::Send {
            to,
            transmit: cookie(2),
            data: leak,
        })
        .unwrap();
        assert_eq!(
            next(),
            FromNetwork::Refused {
                to,
                why: OutboundRefusal::NotARequest
            }
        );
        chan.send(&ToNetwork::Send {
            to,
            transmit: cookie(3),
            data: request(4),
        })
        .unwrap();
        assert_eq!(
            next(),
            FromNetwork::Refused {
                to,
                why: OutboundRefusal::NotARequest
            }
        );
        // A flood: the start-up burst passes, the rest is capped.
        for k in 10..30 {
            chan.send(&ToNetwork::Send {
                to,
                transmit: cookie(k),
                data: request(k),
            })
            .unwrap();
        }
        let (mut sent, mut capped) = (0, 0);
        for _ in 10..30 {
            match next() {
                FromNetwork::Sent { to: t, .. } if t == to => sent += 1,
                FromNetwork::Refused {
                    why: OutboundRefusal::RateCapped,
                    ..
                } => capped += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((sent, capped), (4, 16));
        let mut buf = [0u8; 128];
        let mut got = Vec::new();
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            assert_eq!(from, ours);
            got.push(buf[..n].to_vec());
        }
        assert_eq!(
            got,
            (10..14).map(request).collect::<Vec<_>>(),
            "exactly the burst, as asked"
        );

        // Replies come back kernel-stamped, from the server only.
        server.send_to(b"reply", ours).unwrap();
        match next() {
            FromNetwork::Received {
                from,
                data,
                kernel_stamp,
                ..
            } => {
                assert_eq!((from, data.as_slice(), kernel_stamp), (to, &b"reply"[..], true));
            }
            other => panic!("{other:?}"),
        }
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(b"forged", ours).unwrap();
        assert_eq!(
            recv_within::<FromNetwork>(&chan, 300),
            None,
            "the connected socket drops strangers"
        );
        assert!(alive(&mut role));
    });
}

/// A server's socket handed over unconnected (no route to it at start):
/// the role takes it, says `NoRoute` for a request that cannot leave, takes
/// from it only the server's datagrams (anyone may send to an unconnected
/// socket), and once the supervisor connects its duplicate the requests
/// leave and replies pass as on any connected socket.
#[test]
fn the_network_role_takes_a_socket_without_a_route_and_only_its_servers_datagrams() {
    mirage_testkit::netns::run_in_netns(Duration::from_secs(60), || {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let to = server.local_addr().unwrap();
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        mirage_sdk::udp::enable_receive_timestamps(&socket).unwrap();
        let ours: SocketAddr = format!("127.0.0.1:{}", socket.local_addr().unwrap().port())
            .parse()
            .unwrap();
        let supervisors = socket.try_clone().unwrap();
        let settings = NetworkSettings {
            servers: vec![to],
            ..NetworkSettings::default()
        };
        let (chan, mut role) = start_planned(
            &bin(),
            &plan::network(plan::RoleIds::DEFAULT.network, 1, false),
            &settings,
            None,
            &[socket.as_fd()],
        );
        drop(socket);
        let next = || recv_within::<FromNetwork>(&chan, ANSWER_MS).expect("an answer from the network role");
        let cookie = |k: u64| NtpTimestamp(0x0123_4567_0000_0000 + k);
        let request = |k: u64| Repr::client_request(cookie(k)).to_bytes().to_vec();
        chan.send(&ToNetwork::Send {
            to,
            transmit: cookie(1),
            data: request(1),
        })
        .unwrap();
        assert_eq!(next(), FromNetwork::NoRoute { to });
        // A stranger writes to the unconnected socket: dropped; the server's
        // datagram passes.
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(b"forged", ours).unwrap();
        assert_eq!(
            recv_within::<FromNetwork>(&chan, 300),
            None,
            "a stranger's datagram"
        );
        server.send_to(b"early", ours).unwrap();
        match next() {
            FromNetwork::Received { from, data, .. } => {
                assert_eq!((from, data.as_slice()), (to, &b"early"[..]))
            }
            other => panic!("{other:?}"),
        }
        // The route is there: the supervisor connects its duplicate.
        supervisors.connect(to).unwrap();
        chan.send(&ToNetwork::Send {
            to,
            transmit: cookie(2),
            data: request(2),
        })
        .unwrap();
        assert!(matches!(next(), FromNetwork::Sent { to: t, .. } if t == to));
        let mut buf = [0u8; 128];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&request(2)[..], ours));
        server.send_to(b"reply", ours).unwrap();
        assert!(matches!(next(), FromNetwork::Received { from, .. } if from == to));
        stranger.send_to(b"forged", ours).unwrap();
        assert_eq!(recv_within::<FromNetwork>(&chan, 300), None, "connected now");
        assert!(alive(&mut role));
    });
}

/// With names configured: DNS queries go only to a resolver and only for a
/// configured name, answers come back only on the query's socket and only
/// while it is in flight; requests to resolved sources go only to a
/// configured name's port through the unconnected socket, whose replies
/// pass only from a source asked before.
#[test]
fn the_network_role_relays_only_queries_for_its_names_and_replies_from_sources_it_asked() {
    mirage_testkit::netns::run_in_netns(Duration::from_secs(60), || {
        let resolver = UdpSocket::bind("127.0.0.53:0").unwrap();
        resolver
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let resolver_addr = resolver.local_addr().unwrap();
        let source = UdpSocket::bind("127.0.0.7:0").unwrap();
        source.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let source_addr = source.local_addr().unwrap();
        let dns: Vec<UdpSocket> = (0..2)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.connect(resolver_addr).unwrap();
                s
            })
            .collect();
        let dns_ports: Vec<u16> = dns.iter().map(|s| s.local_addr().unwrap().port()).collect();
        let open = UdpSocket::bind("0.0.0.0:0").unwrap();
        mirage_sdk::udp::enable_receive_timestamps(&open).unwrap();
        let open_local = open.local_addr().unwrap();
        let settings = NetworkSettings {
            resolvers: vec![resolver_addr; 2],
            names: vec!["pool.test".into()],
            named_ports: vec![source_addr.port()],
            named_sockets: vec![open_local],
            ..NetworkSettings::default()
        };
        let fds = [dns[0].as_fd(), dns[1].as_fd(), open.as_fd()];
        let (chan, mut role) = start_planned(
            &bin(),
            &plan::network(plan::RoleIds::DEFAULT.network, 3, true),
            &settings,
            None,
            &fds,
        );
        drop((dns, open));
        let next = || recv_within::<FromNetwork>(&chan, ANSWER_MS).expect("an answer from the network role");
        let query = |name: &str| {
            dns_wire::Message::query(
                0x4242,
                dns_wire::Name::from_ascii(name).unwrap(),
                dns_wire::Type::A,
            )
            .to_bytes()
            .unwrap()
        };

        // Another name, another resolver: refused.
        chan.send(&ToNetwork::Resolve {
            query: 1,
            to: resolver_addr,
            data: query("example.org"),
        })
        .unwrap();
        assert_eq!(
            next(),
            FromNetwork::Refused {
                to: resolver_addr,
                why: OutboundRefusal::NotAQuery
            }
        );
        let elsewhere = SocketAddr::new(resolver_addr.ip(), resolver_addr.port() + 1);
        chan.send(&ToNetwork::Resolve {
            query: 2,
            to: elsewhere,
            data: query("pool.test"),
        })
        .unwrap();
        assert_eq!(
            next(),
            FromNetwork::Refused {
                to: elsewhere,
                why: OutboundRefusal::NotAResolver
            }
        );
        // Each query takes a free socket; its answer comes back tagged with
        // that query. Two in flight hold both sockets: a third finds none.
        let mut buf = [0u8; 512];
        let mut ports = Vec::new();
        for q in [3, 4] {
            chan.send(&ToNetwork::Resolve {
                query: q,
                to: resolver_addr,
                data: query("PoOl.test"),
            })
            .unwrap();
            let (n, from) = resolver.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], query("PoOl.test").as_slice());
            ports.push(from.port());
            resolver.send_to(format!("answer {q}").as_bytes(), from).unwrap();
            assert_eq!(
                next(),
                FromNetwork::Resolved {
                    query: q,
                    from: resolver_addr,
                    data: format!("answer {q}").into_bytes(),
                }
            );
        }
        ports.sort();
        let mut want = dns_ports.clone();
        want.sort();
        assert_eq!(ports, want, "one query per socket");
        chan.send(&ToNetwork::Resolve {
            query: 5,
            to: resolver_addr,
            data: query("pool.test"),
        })
        .unwrap();
        assert_eq!(
            next(),
            FromNetwork::Refused {
                to: resolver_addr,
                why: OutboundRefusal::ResolverBusy
            }
        );
        // A stranger cannot reach a DNS socket (it is connected).
        let stranger = UdpSocket::bind("127.0.0.9:0").unwrap();
        stranger
            .send_to(b"forged", SocketAddr::new([127, 0, 0, 1].into(), dns_ports[0]))
            .unwrap();
        assert_eq!(recv_within::<FromNetwork>(&chan, 300), None);

        // A resolved source: only on a configured name's port.
        let cookie = NtpTimestamp(0x0bad_cafe_0000_0001);
        let request = Repr::client_request(cookie).to_bytes().to_vec();
        let wrong_port = SocketAddr::new(source_addr.ip(), source_addr.port() + 1);
        chan.send(&ToNetwork::Send {
            to: wrong_port,
            transmit: cookie,
            data: request.clone(),
        })
        .unwrap();
        assert_eq!(
            next(),
            FromNetwork::Refused {
                to: wrong_port,
                why: OutboundRefusal::NotAServer
            }
        );
        // A datagram from a source not yet asked is dropped.
        source.send_to(b"early", open_local_on_lo(open_local)).unwrap();
        assert_eq!(recv_within::<FromNetwork>(&chan, 300), None);
        chan.send(&ToNetwork::Send {
            to: source_addr,
            transmit: cookie,
            data: request.clone(),
        })
        .unwrap();
        assert!(matches!(next(), FromNetwork::Sent { to, .. } if to == source_addr));
        let (n, from) = source.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], request.as_slice());
        source.send_to(b"reply", from).unwrap();
        match next() {
            FromNetwork::Received {
                from,
                data,
                kernel_stamp,
                ..
            } => assert_eq!(
                (from, data.as_slice(), kernel_stamp),
                (source_addr, &b"reply"[..], true)
            ),
            other => panic!("{other:?}"),
        }
        stranger.send_to(b"forged", from).unwrap();
        assert_eq!(
            recv_within::<FromNetwork>(&chan, 300),
            None,
            "a stranger is dropped"
        );
        assert!(alive(&mut role));
    });
}

/// The unconnected socket's address as a peer on lo reaches it.
fn open_local_on_lo(local: SocketAddr) -> SocketAddr {
    SocketAddr::new([127, 0, 0, 1].into(), local.port())
}

fn unix_secs() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(d.as_secs()).unwrap()
}
