//! Boots the heartbeat example's engine as a real guest and talks to it
//! over a channel pair, as its supervisor would. Needs /dev/kvm (see
//! tests/common). Prints the guest's boot time and the cost of a message
//! round trip; asserts only what the engine must answer.

mod common;

use std::time::{Duration, Instant};

use heartbeat_engine::{Action, Event, Refusal, Start, ping_id};
use mirage_engine::{FromEngine, ToEngine};
use mirage_kvm::{Config, Vm};
use mirage_sdk::channel::Channel;
use mirage_sdk::engine_role::ChannelHost;

type To = ToEngine<Start, Event>;
type From = FromEngine<Action, Refusal>;

fn recv(sup: &Channel) -> From {
    sup.recv::<From>().unwrap().expect("the guest closed its channel")
}

#[test]
fn the_heartbeat_engine_runs_as_a_guest() {
    let Some(kvm) = common::kvm() else { return };
    let (sup, far) = Channel::pair().unwrap();
    let lines = common::Lines::default();
    let mut sink = lines.sink();
    sup.send(&To::Start {
        start: Start { period_ms: 100 },
        seed: [7; 32],
    })
    .unwrap();

    let t0 = Instant::now();
    let vm = Vm::new(&kvm, mirage_kvm_testimages::HEARTBEAT, &Config::default()).unwrap();
    let built = t0.elapsed();
    let guest = std::thread::spawn(move || vm.run(&mut ChannelHost::new(far), &mut sink));

    // The first ping, right at start: the guest booted, read Start and
    // answered, one hypercall each.
    let first = recv(&sup);
    let boot = t0.elapsed();
    let FromEngine::Action(Action::Send(ping)) = first else {
        panic!("{first:?}")
    };
    let id = ping_id(&ping).expect("a ping");
    assert_eq!(id, u64::from_be_bytes([7; 8]), "the first id comes from the seed");

    // Its pong is accepted once; a second copy and garbage are refused.
    sup.send(&To::Event(Event::Datagram(ping.clone()))).unwrap();
    assert!(matches!(recv(&sup), FromEngine::Action(Action::Pong { .. })));
    sup.send(&To::Event(Event::Datagram(ping))).unwrap();
    assert_eq!(recv(&sup), FromEngine::Refused(Refusal::NotAwaited));

    // The next ping comes from the engine's timer: the receive hypercall's
    // deadline woke it.
    let before = Instant::now();
    let FromEngine::Action(Action::Send(next)) = recv(&sup) else {
        panic!("no second ping")
    };
    assert_eq!(ping_id(&next), Some(id + 1));
    assert!(before.elapsed() < Duration::from_secs(2));

    // Round trips: one event in, one refusal out (two hypercalls each).
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        sup.send(&To::Event(Event::Datagram(b"junk".to_vec()))).unwrap();
        match recv(&sup) {
            FromEngine::Refused(Refusal::Malformed) => {}
            // A timer ping may land in between.
            FromEngine::Action(Action::Send(_)) => {
                assert_eq!(recv(&sup), FromEngine::Refused(Refusal::Malformed))
            }
            other => panic!("{other:?}"),
        }
    }
    let per = t.elapsed() / n;

    // The supervisor closes the channel: the guest exits with status 0.
    drop(sup);
    guest.join().unwrap().unwrap();
    assert!(lines.all().is_empty(), "{:?}", lines.all());
    eprintln!(
        "kvm guest (heartbeat): VM built in {built:?}, first action {boot:?} after start; \
         event->answer round trip {per:?} (2 hypercalls + 2 channel hops)"
    );
}

#[test]
fn the_dhcp_engine_runs_as_a_guest_and_sends_a_discover() {
    use mirage_ipc::{
        ClientIdKind, EngineAction, EngineConfig, EngineStart, FromEngine as FromDhcp, ToEngine as ToDhcp,
    };
    let Some(kvm) = common::kvm() else { return };
    let (sup, far) = Channel::pair().unwrap();
    let mac = [2, 0, 0, 0, 0, 1];
    sup.send(&ToDhcp::Start {
        start: EngineStart {
            config: EngineConfig::new(mac, ClientIdKind::Mac),
            stored: None,
            link_up: true,
        },
        seed: [3; 32],
    })
    .unwrap();
    let vm = Vm::new(&kvm, mirage_kvm_testimages::DHCP, &Config::default()).unwrap();
    let guest = std::thread::spawn(move || vm.run(&mut ChannelHost::new(far), &mut |l: &str| panic!("{l}")));
    // Status and the like may come first; a broadcast frame from our MAC
    // (the DISCOVER) must follow.
    let frame = (0..10)
        .find_map(|_| match sup.recv::<FromDhcp>().unwrap() {
            Some(FromEngine::Action(EngineAction::Transmit(frame))) => Some(frame),
            _ => None,
        })
        .expect("no frame from the DHCP guest");
    assert_eq!(&frame[..6], &[0xff; 6], "broadcast");
    assert_eq!(&frame[6..12], &mac, "from our MAC");
    // Take what else it says now (status), so that it waits in a receive
    // (its retransmit timer is seconds away) when the channel closes.
    use std::os::fd::AsFd;
    while mirage_sdk::channel::wait_readable(&[sup.as_fd()], Some(200)).unwrap()[0] {
        sup.recv::<FromDhcp>().unwrap();
    }
    drop(sup);
    guest.join().unwrap().unwrap();
}

/// mirage-ntp's engine as a guest in the smallest guest memory
/// (`MIN_MEMORY`, half the default) with the most sources it takes (16):
/// every source's first request, then a server's reply to each, measured,
/// and the status that follows shows all 16 reached. The default size
/// leaves the NTP guest more than twice this room.
#[test]
fn the_ntp_engine_runs_as_a_guest_with_sixteen_sources_in_the_smallest_memory() {
    use ntp_engine::wire::{Mode, NtpShort, Repr};
    use ntp_engine::{Action, Config as NtpConfig, Event, Leap, MAX_SOURCES, Ntp, NtpTimestamp, Start};
    type ToNtp = mirage_engine::ToEngineOf<Ntp>;
    type FromNtp = mirage_engine::FromEngineOf<Ntp>;
    let Some(kvm) = common::kvm() else { return };
    let servers: Vec<std::net::SocketAddr> = (1..=MAX_SOURCES)
        .map(|i| std::net::SocketAddr::from(([192, 0, 2, i as u8], 123)))
        .collect();
    let (sup, far) = Channel::pair().unwrap();
    sup.send(&ToNtp::Start {
        start: Start {
            config: NtpConfig {
                servers: servers.clone(),
                observe: true,
                ..NtpConfig::default()
            },
            drift: None,
        },
        seed: [9; 32],
    })
    .unwrap();
    let config = Config {
        memory: mirage_kvm::MIN_MEMORY,
        ..Config::default()
    };
    let vm = Vm::new(&kvm, mirage_kvm_testimages::NTP, &config).unwrap();
    let lines = common::Lines::default();
    let mut sink = lines.sink();
    let guest = std::thread::spawn(move || vm.run(&mut ChannelHost::new(far), &mut sink));
    let next = || {
        sup.recv::<FromNtp>()
            .unwrap()
            .expect("the guest closed its channel")
    };

    let mut requests = Vec::new();
    while requests.len() < MAX_SOURCES {
        match next() {
            FromEngine::Action(Action::Send { to, transmit, data }) => {
                assert_eq!(data.len(), 48, "a client request");
                requests.push((to, transmit));
            }
            FromEngine::Action(_) => {}
            FromEngine::Refused(why) => panic!("refused {why:?}"),
        }
    }
    let mut asked: Vec<_> = requests.iter().map(|(to, _)| *to).collect();
    asked.sort();
    assert_eq!(asked, servers, "one request to each source");

    // Each server answers 1 ms after the request left; its clock agrees
    // with ours.
    let t1 = NtpTimestamp::from_unix_nanos(1_800_000_000 * 1_000_000_000);
    let ms = |n: u64| NtpTimestamp(t1.0 + (n << 32) / 1000);
    for (to, transmit) in &requests {
        sup.send(&ToNtp::Event(Event::Sent {
            to: *to,
            transmit: *transmit,
            at: t1,
        }))
        .unwrap();
        let reply = Repr {
            leap: Leap::None,
            version: 4,
            mode: Mode::Server,
            stratum: 2,
            poll: 6,
            precision: -24,
            root_delay: NtpShort::from_nanos(1_000_000),
            root_dispersion: NtpShort::from_nanos(1_000_000),
            reference_id: [192, 0, 2, 200],
            reference: ms(0),
            origin: *transmit,
            receive: ms(1),
            transmit: ms(1),
        };
        sup.send(&ToNtp::Event(Event::Received {
            from: *to,
            data: reply.to_bytes().to_vec(),
            at: ms(2),
        }))
        .unwrap();
    }
    let status = (0..10 * MAX_SOURCES)
        .find_map(|_| match next() {
            FromEngine::Action(Action::PublishStatus(s)) if s.sources.iter().all(|s| s.reach != 0) => Some(s),
            FromEngine::Refused(why) => panic!("refused {why:?}"),
            _ => None,
        })
        .expect("no status with every source reached");
    assert_eq!(status.sources.len(), MAX_SOURCES);
    assert_eq!(status.counters.samples, MAX_SOURCES as u64, "{status:?}");

    // Whatever else it says now, then the end of its run.
    use std::os::fd::AsFd;
    while mirage_sdk::channel::wait_readable(&[sup.as_fd()], Some(200)).unwrap()[0] {
        sup.recv::<FromNtp>().unwrap();
    }
    drop(sup);
    guest.join().unwrap().unwrap();
    assert!(lines.all().is_empty(), "{:?}", lines.all());
}

/// A guest with a direct channel to a peer role (`Runtime::link`): the
/// same receive and send hypercalls carry both channels, the send's route
/// picks the channel, and the receive takes whichever has a message, the
/// supervisor's first.
#[test]
fn a_guest_talks_to_its_peer_over_the_direct_channel() {
    type ToRelay = ToEngine<(), u32>;
    type FromRelay = FromEngine<u32, u32>;
    let Some(kvm) = common::kvm() else { return };
    let (sup, sup_far) = Channel::pair().unwrap();
    let (peer, peer_far) = Channel::pair().unwrap();
    // The peer speaks before the guest runs: the supervisor's Start must
    // still be what the guest reads first.
    peer.send(&ToRelay::Event(2)).unwrap();
    sup.send(&ToRelay::Start {
        start: (),
        seed: [0; 32],
    })
    .unwrap();
    let lines = common::Lines::default();
    let mut sink = lines.sink();
    let vm = Vm::new(&kvm, mirage_kvm_testimages::RELAY, &Config::default()).unwrap();
    let guest = std::thread::spawn(move || vm.run(&mut ChannelHost::with_peer(sup_far, peer_far), &mut sink));
    let from = |c: &Channel| {
        c.recv::<FromRelay>()
            .unwrap()
            .expect("the guest closed a channel")
    };
    assert_eq!(from(&sup), FromEngine::Action(0), "the hello, to the supervisor");
    assert_eq!(from(&peer), FromEngine::Action(2), "the peer's event, back to it");
    // Refusals go to the supervisor, whichever channel the event came in on.
    peer.send(&ToRelay::Event(3)).unwrap();
    assert_eq!(from(&sup), FromEngine::Refused(3));
    sup.send(&ToRelay::Event(4)).unwrap();
    assert_eq!(from(&peer), FromEngine::Action(4));
    // Both at once: one exit per message, each to its route.
    let n = 200;
    let t = Instant::now();
    for i in 1..=n {
        peer.send(&ToRelay::Event(2 * i)).unwrap();
        sup.send(&ToRelay::Event(0)).unwrap();
        assert_eq!(from(&peer), FromEngine::Action(2 * i));
        assert_eq!(from(&sup), FromEngine::Action(0));
    }
    let per = t.elapsed() / (2 * n);
    // A Start from the peer is the runner's protocol error: the guest logs
    // it and exits with the runner's error status.
    peer.send(&ToRelay::Start {
        start: (),
        seed: [1; 32],
    })
    .unwrap();
    let err = guest.join().unwrap().unwrap_err();
    assert!(matches!(err, mirage_kvm::VmError::Exited { status: 1 }), "{err}");
    assert!(
        lines.all().iter().any(|l| l.contains("second Start")),
        "{:?}",
        lines.all()
    );
    eprintln!("kvm guest (relay): event->answer over either channel {per:?}");
}

#[test]
fn a_guest_that_never_gets_start_exits_cleanly_when_the_channel_closes() {
    let Some(kvm) = common::kvm() else { return };
    let (sup, far) = Channel::pair().unwrap();
    drop(sup);
    let vm = Vm::new(&kvm, mirage_kvm_testimages::HEARTBEAT, &Config::default()).unwrap();
    vm.run(&mut ChannelHost::new(far), &mut |l: &str| panic!("{l}"))
        .unwrap();
}

#[test]
fn a_bad_image_or_size_is_refused_before_anything_runs() {
    let Some(kvm) = common::kvm() else { return };
    let err = Vm::new(&kvm, b"not an image", &Config::default()).err().unwrap();
    assert!(err.to_string().contains("not an ELF"), "{err}");
    let tiny = Config {
        memory: 1 << 20,
        ..Config::default()
    };
    let err = Vm::new(&kvm, mirage_kvm_testimages::HEARTBEAT, &tiny)
        .err()
        .unwrap();
    assert!(err.to_string().contains("guest size"), "{err}");
}
