//! Virtual-time simulations of the NTP client against simulated servers and
//! a drifting local clock (the harness is in `support`). Hours of protocol
//! life run in milliseconds; no test sleeps or touches a network or a
//! clock. Figures worth knowing are printed (`--nocapture`).

mod support;

use ntp_engine::wire::{Leap, NtpTimestamp};
use ntp_engine::{Action, Config, Event, Instant, Refusal, SourceState, SyncState};
use support::{Behaviour, Clock, HOUR, MINUTE, NtpSim, Server, sim, sim_with};

fn lan_servers(n: u8) -> Vec<Server> {
    (1..=n).map(Server::lan).collect()
}

fn wan_servers(n: u8) -> Vec<Server> {
    (1..=n).map(Server::wan).collect()
}

/// A clock with timestamping noise.
fn noisy(phase: f64, drift_ppm: f64) -> Clock {
    let mut c = Clock::new(phase, drift_ppm);
    c.read_noise = 5e-6;
    c
}

#[test]
fn the_first_estimate_comes_after_one_round_trip_and_one_request_per_server() {
    for (phase, stepped) in [(0.040, false), (-3.0, true), (1.0e9, true)] {
        let mut s = sim(noisy(phase, 50.0), lan_servers(4), 1);
        let done = s.run_until_true(Instant::from_secs(30), |s| !s.clock_intents().is_empty());
        assert!(done, "no estimate within 30 s");
        let (t, first) = s.clock_intents()[0].clone();
        let per_server: Vec<usize> = s.world.servers.iter().map(|x| x.requests.len()).collect();
        println!(
            "phase {phase} s: first clock intent after {} ms, requests per server {per_server:?}",
            t.0
        );
        assert!(t < Instant(1000), "first estimate at {} ms", t.0);
        assert!(per_server.iter().all(|&n| n == 1), "{per_server:?}");
        match first {
            Action::Step { delta_ns } if stepped => {
                assert!((delta_ns as f64 / 1e9 + phase).abs() < 0.001, "{delta_ns}")
            }
            Action::Slew { delta_ns } if !stepped => {
                assert!((delta_ns as f64 / 1e9 + phase).abs() < 0.001, "{delta_ns}")
            }
            other => panic!("phase {phase}: {other:?}"),
        }
        // A 40 ms slew takes 80 s at 500 ppm; after a step the 50 ppm
        // drift is learnt again.
        s.run_for(5 * MINUTE);
        assert!(
            s.world.error_at(s.now).abs() < 0.001,
            "{}",
            s.world.error_at(s.now)
        );
        assert_eq!(s.last_status().state, SyncState::Synchronized);
    }
}

#[test]
fn steady_state_error_is_bounded_under_drift_noise_and_asymmetry() {
    // LAN: sub-millisecond paths. WAN: a 5 ms asymmetry (a 2.5 ms bias no
    // NTP client can see) and 1 ms of queueing each way.
    for (name, servers, bias, bound, freq_bound) in [
        ("lan", lan_servers(4), 0.0, 0.000_1, 0.05),
        ("wan", wan_servers(4), 0.0025, 0.0015, 0.5),
    ] {
        for drift in [-200.0, -37.0, 0.0, 120.0, 200.0] {
            let mut s = sim(noisy(0.05, drift), servers.clone(), 3);
            s.run_until(Instant(3 * HOUR));
            let worst = s.worst_deviation(Instant(12 * HOUR), 10_000, bias);
            let freq = s.engine.frequency() as f64 / 65536.0;
            println!(
                "{name} drift {drift:+} ppm: worst |error - bias| {:.1} us over hours 3-12 (bias {:.1} us), frequency {freq:+.3} ppm, poll 2^{}",
                worst * 1e6,
                bias * 1e6,
                s.last_status().poll
            );
            assert!(worst < bound, "{name} {drift}: worst {worst}");
            assert!(
                (freq + drift).abs() < freq_bound,
                "{name} {drift}: frequency {freq}"
            );
            assert!(
                s.steps_asked().is_empty(),
                "{name} {drift}: a 50 ms start is slewed"
            );
        }
    }
}

#[test]
fn no_step_after_start_up_under_noise() {
    let mut servers = wan_servers(4);
    for x in &mut servers {
        // Heavy queueing: a mean of 30 ms each way, tails of hundreds.
        x.queueing = 0.030;
    }
    let mut s = sim(noisy(2.0, 150.0), servers, 4);
    s.run_until(Instant(24 * HOUR));
    let steps = s.steps_asked();
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!(steps[0].0 < Instant(1000));
    assert!(s.world.error_at(s.now).abs() < 0.05);
}

#[test]
fn falsetickers_are_never_selected() {
    let mut servers = lan_servers(4);
    servers[2].offset = 10.0;
    let liar = servers[2].addr;
    let mut s = sim(noisy(0.02, -80.0), servers, 5);
    s.run_until(Instant(6 * HOUR));
    let states = s.source_states(liar);
    assert!(!states.contains(&SourceState::Selected), "{states:?}");
    assert_eq!(s.last_status().sources[2].state, SourceState::Falseticker);
    assert!(states.iter().filter(|x| **x == SourceState::Falseticker).count() > 10);
    // The three that agree are followed.
    assert!(s.worst_error(Instant(8 * HOUR), 60_000) < 0.000_2);
    assert!(s.steps_asked().is_empty());
    let status = s.last_status();
    assert_eq!((status.agreeing, status.quorum), (3, 3));
}

#[test]
fn one_server_that_jumps_an_hour_is_outvoted() {
    let mut s = sim(noisy(0.0, 30.0), lan_servers(4), 6);
    s.run_until(Instant(HOUR));
    s.change_at(Instant(HOUR), |_, w, _| w.servers[0].offset = 3600.0);
    let worst = s.worst_error(Instant(5 * HOUR), 60_000);
    assert!(worst < 0.000_2, "{worst}");
    assert!(s.steps_asked().is_empty());
    assert_eq!(s.last_status().sources[0].state, SourceState::Falseticker);
}

#[test]
fn all_servers_stepping_is_followed_by_one_step_after_the_stepout() {
    let mut s = sim(noisy(0.0, 10.0), lan_servers(4), 7);
    s.run_until(Instant(3 * HOUR));
    s.change_at(Instant(3 * HOUR), |_, w, _| {
        for x in &mut w.servers {
            x.offset += 2.0;
        }
    });
    s.run_until(Instant(3 * HOUR + 10 * MINUTE));
    assert!(s.steps_asked().is_empty(), "a new offset is a spike first");
    s.run_until(Instant(5 * HOUR));
    let steps = s.steps_asked();
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!(steps[0].0 >= Instant(3 * HOUR + 900_000), "{steps:?}");
    assert!((steps[0].1 as f64 / 1e9 - 2.0).abs() < 0.001);
    assert!((s.world.error_at(s.now) - 2.0).abs() < 0.001);
}

#[test]
fn kod_deny_stops_requests_to_that_server() {
    for code in [*b"DENY", *b"RSTR"] {
        let mut servers = lan_servers(4);
        servers[1].behaviour = Behaviour::KissAfter(5, code);
        let mut s = sim(noisy(0.0, 0.0), servers, 8);
        s.run_until(Instant(12 * HOUR));
        assert_eq!(s.world.servers[1].requests.len(), 6, "one kiss, then silence");
        assert_eq!(s.last_status().sources[1].state, SourceState::KodDeny);
        assert_eq!(s.engine.counters().kiss_deny, 1);
        // The other three go on and keep the clock.
        assert_eq!(s.last_status().state, SyncState::Synchronized);
        assert!(s.world.servers[0].requests.len() > 10);
    }
}

#[test]
fn kod_rate_raises_that_servers_poll() {
    let mut servers = lan_servers(4);
    servers[3].behaviour = Behaviour::Kiss(*b"RATE");
    let mut s = sim(noisy(0.0, 0.0), servers, 9);
    s.run_until(Instant(12 * HOUR));
    let times = &s.world.servers[3].requests;
    let gaps: Vec<u64> = times.windows(2).map(|w| (w[1].0 - w[0].0) / 1000).collect();
    println!(
        "requests to a server that always says RATE: {} in 12 h, gaps (s) {gaps:?}",
        times.len()
    );
    // Each RATE doubles its interval up to 2^13 s; the burst stops at once.
    assert_eq!(&gaps[..7], &[128, 256, 512, 1024, 2048, 4096, 8192], "{gaps:?}");
    assert!(gaps[7..].iter().all(|&g| g >= 8192), "{gaps:?}");
    assert!(times.len() <= 12, "{}", times.len());
    assert_eq!(s.last_status().sources[3].state, SourceState::KodRate);
    // A spoofed RATE (wrong origin) does nothing: see the forgery test.
}

#[test]
fn requests_per_server_per_hour_at_steady_state_are_bounded() {
    let mut s = sim(noisy(0.01, 60.0), lan_servers(4), 10);
    s.run_until(Instant(8 * HOUR));
    let per_hour: Vec<usize> = s
        .world
        .servers
        .iter()
        .map(|x| x.requests_between(Instant(6 * HOUR), Instant(8 * HOUR)) / 2)
        .collect();
    let first_hour: Vec<usize> = s
        .world
        .servers
        .iter()
        .map(|x| x.requests_between(Instant(0), Instant(HOUR)))
        .collect();
    println!(
        "requests per server: first hour {first_hour:?}, per hour at steady state {per_hour:?}, poll 2^{}",
        s.last_status().poll
    );
    assert_eq!(s.last_status().poll, 10);
    // 3600 / 1024 = 3.5; chrony at maxpoll 10 sends the same.
    assert!(per_hour.iter().all(|&n| n <= 4), "{per_hour:?}");
    // Even the first hour, burst included, stays polite.
    assert!(first_hour.iter().all(|&n| n <= 4 + 60), "{first_hour:?}");
}

#[test]
fn forged_zero_origin_replayed_and_misaddressed_replies_change_nothing() {
    let mut s = sim(noisy(0.0, 0.0), lan_servers(4), 11);
    s.run_until(Instant(HOUR));
    let (_, from, reply, t4) = s.world.delivered.last().cloned().unwrap();
    let before = (s.engine.poll_at(), s.engine.counters(), s.last_status().sources);
    let mut forged = reply.clone();
    // Replay: the same reply again.
    let replay = s.handle(Event::Received {
        from,
        data: reply.clone(),
        at: t4,
    });
    assert_eq!(replay, Err(Refusal::NotAwaited));
    // Zero origin and a wrong origin, as a DENY and as a sample, while a
    // request is outstanding.
    s.run_until(s.engine.poll_at());
    let outstanding = s.log.iter().rev().find_map(|(_, a)| match a {
        Action::Send { to, transmit, .. } => Some((*to, *transmit)),
        _ => None,
    });
    let (to, cookie) = outstanding.unwrap();
    s.schedule.clear(); // the real reply is lost
    let deny = |origin: NtpTimestamp| {
        let mut d = reply.clone();
        d[0] = 0xe4;
        d[1] = 0;
        d[12..16].copy_from_slice(b"DENY");
        d[24..32].copy_from_slice(&origin.0.to_be_bytes());
        d
    };
    forged[24..32].copy_from_slice(&[0; 8]);
    for (data, reason) in [
        (forged.clone(), Refusal::ZeroOrigin),
        (deny(NtpTimestamp::ZERO), Refusal::ZeroOrigin),
        (deny(NtpTimestamp(cookie.0 ^ 0x100)), Refusal::WrongOrigin),
        (reply.clone(), Refusal::WrongOrigin),
    ] {
        assert_eq!(
            s.handle(Event::Received {
                from: to,
                data,
                at: t4
            }),
            Err(reason)
        );
    }
    // The right cookie from another port, or another address.
    let mut right = deny(cookie);
    right[1] = 1;
    right[0] = 0x24;
    for from in [
        std::net::SocketAddr::new(to.ip(), 1234),
        std::net::SocketAddr::new([192, 0, 2, 99].into(), 123),
    ] {
        assert_eq!(
            s.handle(Event::Received {
                from,
                data: right.clone(),
                at: t4
            }),
            Err(Refusal::UnknownSource)
        );
    }
    let after = s.last_status();
    assert_eq!(after.counters.kiss_deny, 0);
    assert_eq!(after.counters.samples, before.1.samples);
    assert!(after.sources.iter().all(|x| x.state != SourceState::KodDeny));
    // Polling goes on as scheduled.
    assert!(s.engine.poll_at() > s.now);
    let requests = s.world.servers.iter().map(|x| x.requests.len()).sum::<usize>();
    s.run_for(2 * HOUR);
    assert!(s.world.servers.iter().map(|x| x.requests.len()).sum::<usize>() > requests);
    let _ = before.0;
}

#[test]
fn an_outage_backs_off_and_the_frequency_holds_the_clock() {
    let mut s = sim(noisy(0.0, 120.0), lan_servers(4), 12);
    s.run_until(Instant(4 * HOUR));
    let before = s.world.servers.iter().map(|x| x.requests.len()).sum::<usize>();
    s.change_at(Instant(4 * HOUR), |_, w, _| {
        for x in &mut w.servers {
            x.behaviour = Behaviour::Silent;
        }
    });
    s.change_at(Instant(6 * HOUR), |_, w, _| {
        for x in &mut w.servers {
            x.behaviour = Behaviour::Normal;
        }
    });
    let worst = s.worst_error(Instant(6 * HOUR), 60_000);
    let during = s.world.servers.iter().map(|x| x.requests.len()).sum::<usize>() - before;
    println!(
        "2 h outage: {during} requests to 4 servers, worst error {:.1} us",
        worst * 1e6
    );
    assert!(during <= 4 * 8, "{during}");
    // Free-running on the learned frequency.
    assert!(worst < 0.001, "{worst}");
    s.run_until(Instant(7 * HOUR));
    assert_eq!(s.last_status().state, SyncState::Synchronized);
    assert!(s.steps_asked().is_empty());
}

#[test]
fn a_suspend_that_leaves_the_clock_off_is_stepped_soon_after_resume() {
    let mut s = sim(noisy(0.0, 20.0), lan_servers(4), 13);
    s.run_until(Instant(2 * HOUR));
    // Suspended for 3 h: nothing runs, in-flight replies are lost, and the
    // realtime clock comes back 3 s off (the RTC's error).
    s.schedule.clear();
    s.now = Instant(5 * HOUR);
    let t = support::true_ns(s.now);
    s.world.clock.jump(t, 3.0);
    s.run_until(Instant(5 * HOUR + 10 * MINUTE));
    let steps = s.steps_asked();
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!(steps[0].0 < Instant(5 * HOUR + 5_000), "{steps:?}");
    assert!(s.world.error_at(s.now).abs() < 0.001);
}

#[test]
fn a_stored_frequency_holds_the_clock_from_the_start() {
    let drift = 180.0;
    let stored = Some((-drift * 65536.0) as i64);
    let mut with = sim_with(noisy(0.0, drift), lan_servers(4), 14, |_| {}, stored);
    let mut without = sim(noisy(0.0, drift), lan_servers(4), 14);
    let worst_with = with.worst_error(Instant(30 * MINUTE), 10_000);
    let worst_without = without.worst_error(Instant(30 * MINUTE), 10_000);
    println!(
        "first 30 min at {drift} ppm: worst error {:.1} us with the stored frequency, {:.1} us without",
        worst_with * 1e6,
        worst_without * 1e6
    );
    assert!(worst_with < 0.000_1, "{worst_with}");
    assert!(worst_with < worst_without / 5.0);
    assert!(matches!(with.log[0].1, Action::SetFrequency { .. }));
}

#[test]
fn one_and_two_server_hosts_synchronise_and_two_that_disagree_do_not_flip() {
    for n in [1, 2] {
        let mut s = sim(noisy(0.5, 40.0), lan_servers(n), 15);
        s.run_until(Instant(2 * HOUR));
        assert_eq!(s.last_status().state, SyncState::Synchronized, "{n} servers");
        assert!(s.world.error_at(s.now).abs() < 0.000_1);
    }
    let mut servers = lan_servers(2);
    servers[1].offset = 0.5;
    let mut s = sim(noisy(0.0, 0.0), servers, 16);
    s.run_until(Instant(2 * HOUR));
    assert_eq!(s.last_status().state, SyncState::NotEnoughSources);
    assert!(s.clock_intents().is_empty(), "{:?}", s.clock_intents());
    assert_eq!(s.last_status().quorum, 2);
}

#[test]
fn a_refused_step_holds_and_measuring_goes_on() {
    let mut s = sim(noisy(5000.0, 0.0), lan_servers(4), 17);
    s.world.refuse_steps = true;
    s.run_until(Instant(3 * HOUR));
    let asked = s.steps_asked();
    assert_eq!(s.last_status().state, SyncState::Held);
    // Asked again only after each stepout, not on every reply.
    assert!(asked.len() <= 1 + 3 * 4 + 1, "{}", asked.len());
    assert!(asked.len() >= 2);
    assert!(
        s.clock_intents()
            .iter()
            .all(|(_, a)| !matches!(a, Action::Slew { .. }))
    );
    assert!((s.last_status().offset_ns as f64 / 1e9 - 5000.0).abs() < 0.01);
    // The operator lets it through: the next ask is applied.
    s.world.refuse_steps = false;
    s.run_until(Instant(4 * HOUR));
    assert_eq!(s.world.steps.len(), 1);
    assert!(s.world.error_at(s.now).abs() < 0.001);
    assert_eq!(s.last_status().state, SyncState::Synchronized);
}

#[test]
fn an_accepted_held_step_is_asked_for_at_once_not_after_the_stepout() {
    let mut s = sim(noisy(5000.0, 0.0), lan_servers(4), 17);
    s.world.refuse_steps = true;
    s.run_until(Instant(10 * 60_000));
    assert_eq!(s.last_status().state, SyncState::Held);
    let asked = s.steps_asked().len();
    // Not held: the event changes nothing (no poll, no step).
    let mut quiet = sim(noisy(0.01, 0.0), lan_servers(1), 5);
    quiet.run_until(Instant(60_000));
    quiet.handle(Event::StepAccepted).unwrap();
    quiet.run_until(Instant(70_000));
    assert!(quiet.steps_asked().is_empty());
    // Held for 10 minutes, under the 15-minute stepout: the operator
    // accepts and the actuator lets the step through.
    s.world.refuse_steps = false;
    let accepted_at = s.now;
    s.handle(Event::StepAccepted).unwrap();
    s.run_until(Instant(accepted_at.0 + 10_000));
    assert_eq!(s.steps_asked().len(), asked + 1, "asked again at once");
    assert_eq!(s.world.steps.len(), 1);
    assert!(s.world.error_at(s.now).abs() < 0.001);
    assert_eq!(s.last_status().state, SyncState::Synchronized);
}

#[test]
fn unsynchronised_servers_are_never_used() {
    let mut servers = lan_servers(2);
    servers[0].behaviour = Behaviour::Unsynchronised;
    servers[0].offset = 30.0;
    let mut s = sim_with(noisy(0.0, 0.0), servers, 18, |c| c.min_agreeing = Some(1), None);
    s.run_until(Instant(HOUR));
    assert_eq!(s.last_status().sources[0].state, SourceState::Unsynchronised);
    assert!(s.refusals.iter().all(|(_, r)| *r == Refusal::Unsynchronised));
    assert!(s.world.error_at(s.now).abs() < 0.000_1);
}

#[test]
fn dhcp_servers_join_and_leave() {
    let servers = lan_servers(3);
    let addrs: Vec<_> = servers.iter().map(|x| x.addr.ip()).collect();
    let mut s = sim_with(noisy(0.2, 0.0), servers, 19, |c| c.servers.clear(), None);
    assert_eq!(s.last_status().state, SyncState::NoSources);
    s.run_until(Instant(10_000));
    assert!(s.world.servers.iter().all(|x| x.requests.is_empty()));
    s.handle(Event::DhcpServers(addrs.clone())).unwrap();
    s.run_until(Instant(HOUR));
    assert_eq!(s.last_status().state, SyncState::Synchronized);
    assert!(s.world.error_at(s.now).abs() < 0.000_1);
    // The lease loses one server: it is no longer asked.
    s.handle(Event::DhcpServers(addrs[..2].to_vec())).unwrap();
    let asked = s.world.servers[2].requests.len();
    s.run_until(Instant(3 * HOUR));
    assert_eq!(s.world.servers[2].requests.len(), asked);
    assert_eq!(s.last_status().sources.len(), 2);
    // The lease goes: no source, and it says so.
    s.handle(Event::DhcpServers(Vec::new())).unwrap();
    assert_eq!(s.last_status().state, SyncState::NoSources);
    assert!(s.last_status().sources.is_empty());
    let mut off = sim_with(
        noisy(0.0, 0.0),
        lan_servers(1),
        20,
        |c| c.use_dhcp_servers = false,
        None,
    );
    assert_eq!(
        off.handle(Event::DhcpServers(addrs)),
        Err(Refusal::DhcpServersNotUsed)
    );
}

#[test]
fn observe_mode_measures_and_never_asks_for_a_clock_change() {
    let mut s = sim_with(noisy(0.3, 50.0), lan_servers(4), 21, |c| c.observe = true, None);
    s.run_until(Instant(2 * HOUR));
    assert!(s.clock_intents().is_empty());
    assert!(
        s.log
            .iter()
            .all(|(_, a)| !matches!(a, Action::SetStatus(_) | Action::SaveDrift { .. }))
    );
    let st = s.last_status();
    assert_eq!(st.state, SyncState::Observing);
    // The published offset is the clock's real error (0.3 s + 50 ppm * 2 h).
    let real = s.world.error_at(s.now);
    assert!(
        (st.offset_ns as f64 / 1e9 - real).abs() < 0.05,
        "{} vs {real}",
        st.offset_ns
    );
    // A clock that runs away (50 ppm: 3 ms a poll) is never in the noise:
    // polled at the minimum.
    assert_eq!(st.poll, Config::default().min_poll);
}

#[test]
fn observing_a_kept_clock_lengthens_the_poll_like_a_client() {
    // The clock someone else keeps (no phase, no drift): the offset moves
    // only by noise, so the poll climbs to the maximum as a client's does
    // (requests_per_server_per_hour_at_steady_state_are_bounded).
    let mut s = sim_with(noisy(0.0, 0.0), lan_servers(4), 10, |c| c.observe = true, None);
    s.run_until(Instant(8 * HOUR));
    let per_hour: Vec<usize> = s
        .world
        .servers
        .iter()
        .map(|x| x.requests_between(Instant(6 * HOUR), Instant(8 * HOUR)) / 2)
        .collect();
    println!(
        "observing: per hour at steady state {per_hour:?}, poll 2^{}",
        s.last_status().poll
    );
    assert!(s.clock_intents().is_empty());
    assert_eq!(s.last_status().poll, Config::default().max_poll);
    assert!(per_hour.iter().all(|&n| n <= 4), "{per_hour:?}");
    // Bounds of 4..7, as scripts/bench-ntp.sh --poll 4:7 gives: at 2^7
    // within the quarter hour, 3600 / 128 = 28 an hour at most after.
    let mut s = sim_with(
        noisy(0.0, 0.0),
        lan_servers(4),
        10,
        |c| {
            c.observe = true;
            c.min_poll = 4;
            c.max_poll = 7;
        },
        None,
    );
    s.run_until(Instant(15 * MINUTE));
    assert_eq!(s.last_status().poll, 7);
    s.run_until(Instant(HOUR + 15 * MINUTE));
    let per_hour: Vec<usize> = (s.world.servers.iter())
        .map(|x| x.requests_between(Instant(15 * MINUTE), Instant(HOUR + 15 * MINUTE)))
        .collect();
    println!("observing, poll 4..7: per hour after 15 min {per_hour:?}");
    assert!(per_hour.iter().all(|&n| n <= 29), "{per_hour:?}");
}

#[test]
fn a_leap_is_armed_on_the_last_day_of_the_month_only() {
    // The simulation starts 2027-03-01; run to 2027-03-30 with all servers
    // announcing an insertion, then across 31 March.
    let mut servers = lan_servers(4);
    for x in &mut servers {
        x.leap = Leap::Insert;
    }
    let mut s = sim(noisy(0.0, 0.0), servers, 22);
    let day = 24 * HOUR;
    s.run_until(Instant(29 * day));
    let leaps = |s: &support::Sim, from: Instant| {
        s.since(from)
            .iter()
            .filter_map(|(_, a)| match a {
                Action::SetStatus(k) => Some(k.leap),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert!(leaps(&s, Instant(0)).iter().all(|l| *l == Leap::None));
    s.run_until(Instant(31 * day));
    let on_31 = leaps(&s, Instant(30 * day + 20 * MINUTE));
    assert!(
        !on_31.is_empty() && on_31.iter().all(|l| *l == Leap::Insert),
        "{on_31:?}"
    );
    s.run_until(Instant(31 * day + 2 * HOUR));
    let after = leaps(&s, Instant(31 * day + 20 * MINUTE));
    assert!(
        !after.is_empty() && after.iter().all(|l| *l == Leap::None),
        "{after:?}"
    );
}

// ---- host names and pools ------------------------------------------------------

mod names {
    use std::net::{IpAddr, SocketAddr};

    use dns_wire::{Message, Name, Type};
    use ntp_engine::names::{DROP_AFTER_POLLS, RETRY_FIRST_MS, RETRY_MAX_MS};
    use ntp_engine::{Action, Event, Instant, Refusal, SourceOrigin, SyncState};

    use super::support::{
        Behaviour, HOUR, MINUTE, NtpSim, Resolver, ResolverBehaviour, Server, Sim, sim_named,
    };
    use super::{lan_servers, noisy};

    fn pool_of(servers: &[Server]) -> Resolver {
        Resolver::new(vec![("pool.test", servers.iter().map(|s| s.addr.ip()).collect())])
    }

    fn pool_sources(s: &Sim) -> Vec<SocketAddr> {
        s.last_status()
            .sources
            .iter()
            .filter(|x| x.origin == SourceOrigin::Pool("pool.test".into()))
            .map(|x| x.address)
            .collect()
    }

    fn resolves(s: &Sim) -> Vec<(Instant, u64, SocketAddr, Vec<u8>)> {
        s.pick(|a| match a {
            Action::Resolve { query, to, data } => Some((*query, *to, data.clone())),
            _ => None,
        })
        .into_iter()
        .map(|(t, (q, to, d))| (t, q, to, d))
        .collect()
    }

    #[test]
    fn a_pool_gives_four_sources_that_synchronise_the_clock() {
        let servers = lan_servers(8);
        let mut s = sim_named(
            noisy(0.040, 30.0),
            servers.clone(),
            pool_of(&servers),
            &[("pool.test", true)],
            11,
        );
        s.run_for(5 * MINUTE);
        let queries = &s.world.resolver.as_ref().unwrap().queries;
        // One lookup: an A and an AAAA query, random ids, the name's case
        // randomized (0x20), recursion desired.
        assert_eq!(queries.len(), 2, "{queries:?}");
        let types: Vec<Type> = queries.iter().map(|(_, q)| q.questions[0].qtype).collect();
        assert_eq!(types, [Type::A, Type::AAAA]);
        assert_ne!(queries[0].1.header.id, queries[1].1.header.id);
        let pool = Name::from_ascii("pool.test").unwrap();
        for (_, q) in queries {
            assert_eq!(q.questions[0].name, pool);
        }
        assert!(
            queries.iter().any(|(_, q)| !q.questions[0].name.eq_exact(&pool)),
            "no letter of either query changed case"
        );
        let sources = pool_sources(&s);
        println!("pool sources: {sources:?}");
        assert_eq!(sources.len(), 4);
        assert!(sources.iter().all(|a| servers.iter().any(|x| x.addr == *a)));
        let status = s.last_status();
        assert_eq!(status.state, SyncState::Synchronized);
        assert!(
            s.world.error_at(s.now).abs() < 0.001,
            "{}",
            s.world.error_at(s.now)
        );
        let name = &status.names[0];
        assert_eq!(
            (name.name.as_str(), name.pool, name.sources, name.failures),
            ("pool.test", true, 4, 0)
        );
        // The other four servers were never asked.
        let asked = s.world.servers.iter().filter(|x| !x.requests.is_empty()).count();
        assert_eq!(asked, 4);
    }

    #[test]
    fn only_the_resolvers_exact_answer_is_accepted() {
        let servers = lan_servers(4);
        let mut resolver = pool_of(&servers);
        // Answers are held back so that forgeries arrive first.
        resolver.behaviour = ResolverBehaviour::Silent;
        let mut s = sim_named(
            noisy(0.0, 0.0),
            servers.clone(),
            resolver,
            &[("pool.test", true)],
            12,
        );
        s.run_for(100);
        let sent = resolves(&s);
        assert_eq!(sent.len(), 2);
        let (_, handle, resolver_addr, query_bytes) = sent[0].clone();
        let query = Message::parse(&query_bytes).unwrap();
        let honest = {
            let mut r = Resolver::new(vec![("pool.test", servers.iter().map(|x| x.addr.ip()).collect())]);
            r.answer(s.now, &query_bytes).unwrap()
        };
        let forged = |f: &dyn Fn(&mut Message)| {
            let mut m = Message::parse(&honest).unwrap();
            f(&mut m);
            m.to_bytes().unwrap()
        };
        let lowered = forged(&|m: &mut Message| {
            let lower = m.questions[0].name.to_string().to_ascii_lowercase();
            m.questions[0].name = Name::from_ascii(&lower).unwrap();
        });
        let attempts: Vec<(u64, SocketAddr, Vec<u8>, Refusal)> = vec![
            // Another port, another address.
            (
                handle,
                SocketAddr::new(resolver_addr.ip(), 5353),
                honest.clone(),
                Refusal::DnsWrongSource,
            ),
            (
                handle,
                SocketAddr::new([192, 0, 2, 66].into(), 53),
                honest.clone(),
                Refusal::DnsWrongSource,
            ),
            // A guessed id.
            (
                handle,
                resolver_addr,
                forged(&|m: &mut Message| m.header.id ^= 0x0101),
                Refusal::DnsMismatch,
            ),
            // The question in other case (the 0x20 check) or of another type.
            (handle, resolver_addr, lowered, Refusal::DnsMismatch),
            (
                handle,
                resolver_addr,
                forged(&|m: &mut Message| m.questions[0].qtype = Type::AAAA),
                Refusal::DnsMismatch,
            ),
            // The query itself echoed (not a response), junk, no such query.
            (handle, resolver_addr, query_bytes.clone(), Refusal::DnsMismatch),
            (handle, resolver_addr, vec![0xff; 40], Refusal::DnsMalformed),
            (
                handle + 100,
                resolver_addr,
                honest.clone(),
                Refusal::DnsNotAwaited,
            ),
        ];
        // (With this seed the query's name has upper-case letters, so the
        // lowered copy differs from it.)
        assert!(
            !query.questions[0]
                .name
                .eq_exact(&Name::from_ascii("pool.test").unwrap())
        );
        for (h, from, data, refusal) in attempts {
            assert_eq!(s.handle(Event::Resolved { query: h, from, data }), Err(refusal));
        }
        assert!(pool_sources(&s).is_empty(), "a forgery added a source");
        // The honest answer is accepted once; a replay is not awaited.
        s.handle(Event::Resolved {
            query: handle,
            from: resolver_addr,
            data: honest.clone(),
        })
        .unwrap();
        assert_eq!(
            s.handle(Event::Resolved {
                query: handle,
                from: resolver_addr,
                data: honest,
            }),
            Err(Refusal::DnsNotAwaited)
        );
        // The AAAA query is never answered: the lookup ends at its deadline
        // with the A answer's four addresses.
        s.run_for(10_000);
        assert_eq!(pool_sources(&s).len(), 4);
    }

    #[test]
    fn a_pool_replaces_denied_unreachable_and_falseticking_sources() {
        let mut servers = lan_servers(10);
        servers[0].behaviour = Behaviour::Kiss(*b"DENY");
        servers[1].behaviour = Behaviour::Silent;
        servers[2].offset = 0.5; // a falseticker among truechimers
        let bad: Vec<SocketAddr> = servers[..3].iter().map(|x| x.addr).collect();
        let mut s = sim_named(
            noisy(0.0, 10.0),
            servers.clone(),
            pool_of(&servers),
            &[("pool.test", true)],
            13,
        );
        s.run_for(2 * HOUR);
        let sources = pool_sources(&s);
        let lookups = s.world.resolver.as_ref().unwrap().queries.len() / 2;
        println!("after 2 h: sources {sources:?}, {lookups} lookups");
        assert_eq!(sources.len(), 4, "{sources:?}");
        assert!(sources.iter().all(|a| !bad.contains(a)), "{sources:?}");
        assert!(lookups >= 2, "never resolved again");
        // Politeness: a handful of lookups, not one per poll.
        assert!(lookups <= 6, "{lookups} lookups");
        // The dropped servers are not asked again.
        let last = s.now;
        s.run_for(HOUR);
        for x in &s.world.servers[..3] {
            assert_eq!(x.requests_between(last, s.now), 0, "{} polled again", x.addr);
        }
        assert_eq!(s.last_status().state, SyncState::Synchronized);
        assert!(s.world.error_at(s.now).abs() < 0.001);
        // The silent one lasted its reach register, no longer.
        let silent = &s.world.servers[1];
        assert!(
            silent.requests.len() <= usize::from(DROP_AFTER_POLLS) + 1,
            "{}",
            silent.requests.len()
        );
    }

    #[test]
    fn a_small_pool_comes_back_after_an_outage_but_a_denying_server_does_not() {
        let mut servers = lan_servers(3);
        servers[2].behaviour = Behaviour::Kiss(*b"DENY");
        let mut s = sim_named(
            noisy(0.0, 10.0),
            servers.clone(),
            pool_of(&servers),
            &[("pool.test", true)],
            16,
        );
        s.run_for(HOUR);
        assert_eq!(pool_sources(&s).len(), 2);
        // Two hours without network: every source dropped, lookups fail.
        s.change_at(Instant(HOUR), |_, w, _| w.network_up = false);
        s.change_at(Instant(3 * HOUR), |_, w, _| w.network_up = true);
        s.run_until(Instant(3 * HOUR));
        assert!(pool_sources(&s).is_empty(), "{:?}", pool_sources(&s));
        let lookups_during = s.world.resolver.as_ref().unwrap().queries.len();
        s.run_until(Instant(4 * HOUR));
        let sources = pool_sources(&s);
        println!("after the outage: {sources:?}");
        let mut expected = vec![servers[0].addr, servers[1].addr];
        let mut got = sources.clone();
        expected.sort();
        got.sort();
        assert_eq!(
            got, expected,
            "the two that served are back, the denying one is not"
        );
        assert!(s.world.resolver.as_ref().unwrap().queries.len() > lookups_during);
        assert_eq!(s.last_status().state, SyncState::Synchronized);
    }

    #[test]
    fn failed_lookups_back_off_to_a_bound() {
        for behaviour in [
            ResolverBehaviour::Silent,
            ResolverBehaviour::ServFail,
            ResolverBehaviour::LowerCase,
        ] {
            let servers = lan_servers(2);
            let mut resolver = pool_of(&servers);
            resolver.behaviour = behaviour;
            let mut s = sim_named(noisy(0.0, 0.0), servers, resolver, &[("pool.test", true)], 14);
            s.run_for(6 * HOUR);
            let times: Vec<u64> = s
                .world
                .resolver
                .as_ref()
                .unwrap()
                .queries
                .iter()
                .step_by(2)
                .map(|(t, _)| t.0)
                .collect();
            let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
            println!("{behaviour:?}: {} lookups in 6 h, gaps {gaps:?} ms", times.len());
            assert!(pool_sources(&s).is_empty());
            assert!(
                gaps.windows(2).all(|w| w[1] >= w[0]),
                "the pauses shrank: {gaps:?}"
            );
            assert!(gaps[0] >= RETRY_FIRST_MS, "{gaps:?}");
            assert!(gaps.iter().all(|&g| g <= RETRY_MAX_MS + 5_000), "{gaps:?}");
            // Doubling from 2 s to 17 min, then every 17 min: about 30.
            assert!((20..=40).contains(&times.len()), "{} lookups", times.len());
            let name = &s.last_status().names[0];
            assert_eq!(
                name.failures as usize,
                times.len() - usize::from(s.last_status().names[0].resolving)
            );
            if behaviour == ResolverBehaviour::LowerCase {
                assert!(s.refusals.iter().all(|(_, r)| *r == Refusal::DnsMismatch));
                assert!(!s.refusals.is_empty());
            }
        }
    }

    #[test]
    fn a_server_name_gives_one_source_and_an_unknown_name_none() {
        let servers = lan_servers(3);
        let resolver = Resolver::new(vec![(
            "ntp1.test",
            vec![
                servers[0].addr.ip(),
                servers[1].addr.ip(),
                IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]),
            ],
        )]);
        let mut s = sim_named(
            noisy(0.020, 0.0),
            servers,
            resolver,
            &[("NTP1.test", false), ("missing.test", false)],
            15,
        );
        s.run_for(10 * MINUTE);
        let status = s.last_status();
        let named: Vec<_> = status
            .sources
            .iter()
            .filter(|x| x.origin == SourceOrigin::Server("NTP1.test".into()))
            .collect();
        assert_eq!(named.len(), 1, "{:?}", status.sources);
        assert_eq!(named[0].address, s.world.servers[0].addr);
        assert_eq!(status.sources.len(), 1);
        assert_eq!(status.state, SyncState::Synchronized);
        let missing = &status.names[1];
        assert_eq!((missing.sources, missing.failures >= 5), (0, true), "{missing:?}");
        // NXDOMAIN is a failure like any: the pauses grow.
        let missing_lookups = s
            .world
            .resolver
            .as_ref()
            .unwrap()
            .queries
            .iter()
            .filter(|(_, q)| q.questions[0].name == Name::from_ascii("missing.test").unwrap())
            .count()
            / 2;
        assert!(missing_lookups <= 10, "{missing_lookups}");
    }
}

#[test]
fn a_refused_reply_that_answered_our_request_shows_in_status_at_once() {
    // One server, unsynchronised: no reply is ever taken, yet status must
    // say it answers and why it is not used (not "unreachable" forever).
    let mut servers = lan_servers(1);
    servers[0].behaviour = Behaviour::Unsynchronised;
    let addr = servers[0].addr;
    let mut s = sim_with(noisy(0.0, 0.0), servers, 31, |_| {}, None);
    s.run_until(Instant(1_000));
    assert_eq!(
        s.source_states(addr).last(),
        Some(&SourceState::Unsynchronised),
        "as published"
    );
}

#[test]
fn a_smear_window_between_two_groups_neither_steps_nor_flaps() {
    // Mid-smear, two servers are 0.4 s off (a 24 h linear smear is 0.5 s
    // at its middle), two are not: neither group is a majority of four.
    let mut servers = lan_servers(4);
    servers[0].offset = 0.4;
    servers[1].offset = 0.4;
    let mut s = sim(noisy(0.0, 0.0), servers, 33);
    s.run_until(Instant(6 * HOUR));
    assert!(s.steps_asked().is_empty(), "{:?}", s.steps_asked());
    assert!(s.clock_intents().is_empty(), "{:?}", s.clock_intents());
    for (_, st) in s.statuses() {
        assert!(
            st.sources.iter().all(|x| x.state != SourceState::Selected),
            "a selected source: {:?}",
            st.sources
        );
    }
    assert_eq!(s.last_status().state, SyncState::NotEnoughSources);
}

#[test]
fn a_leap_announced_by_smearing_servers_is_never_armed() {
    // The leap test's set-up (every server announces an insertion, run
    // across 31 March), with the servers at the cloud smearing addresses.
    let mut servers = lan_servers(3);
    for (x, ip) in servers.iter_mut().zip(ntp_engine::SMEARING_SERVERS) {
        x.leap = Leap::Insert;
        x.addr = std::net::SocketAddr::new(ip, 123);
    }
    let mut s = sim(noisy(0.0, 0.0), servers, 34);
    s.run_until(Instant(31 * 24 * HOUR + 2 * HOUR));
    let statuses: Vec<_> = s
        .since(Instant(0))
        .iter()
        .filter_map(|(_, a)| match a {
            Action::SetStatus(k) => Some(k.leap),
            _ => None,
        })
        .collect();
    assert!(statuses.len() > 100, "{}", statuses.len());
    assert!(statuses.iter().all(|l| *l == Leap::None));
    let st = s.last_status();
    assert_eq!(st.state, SyncState::Synchronized);
    assert!(st.sources.iter().all(|x| x.smearing));
}

#[test]
fn a_server_answering_from_before_the_time_floor_is_refused() {
    // The simulation's world starts 2027-03-01; the floor is a day before
    // (a state file saved yesterday). A lone server serving its local
    // clock from 1986 (the Oxide boundary servers) is never used.
    let floor = i64::try_from(support::EPOCH_UNIX_SECS).unwrap() - 86_400;
    let forty_years = 40.0 * 365.25 * 86_400.0;
    let mut servers = lan_servers(1);
    servers[0].offset = -forty_years;
    let mut s = sim_with(
        noisy(0.0, 0.0),
        servers.clone(),
        35,
        |c| c.time_floor_unix_secs = Some(floor),
        None,
    );
    s.run_until(Instant(HOUR));
    assert!(s.clock_intents().is_empty(), "{:?}", s.clock_intents());
    assert!(!s.refusals.is_empty());
    assert!(s.refusals.iter().all(|(_, r)| *r == Refusal::BeforeFloor));
    assert_ne!(s.last_status().state, SyncState::Synchronized);
    // Without the floor the same server would be stepped to.
    let mut unfloored = sim(noisy(0.0, 0.0), servers, 35);
    unfloored.run_until(Instant(HOUR));
    assert_eq!(unfloored.steps_asked().len(), 1, "{:?}", unfloored.steps_asked());
}

#[test]
fn an_applied_step_is_followed_by_a_synchronised_kernel_status() {
    // Field notes item 7: a step alone leaves the kernel marking the clock
    // unsynchronised; the engine follows each applied step with a status
    // that clears it, with fresh error bounds under a second.
    let mut s = sim(noisy(-3.0, 0.0), lan_servers(4), 36);
    s.run_until(Instant(10_000));
    let log = s.since(Instant(0));
    let step = log
        .iter()
        .position(|(_, a)| matches!(a, Action::Step { .. }))
        .expect("a step");
    assert!(
        !log[..step]
            .iter()
            .any(|(_, a)| matches!(a, Action::SetStatus(k) if k.synchronized)),
        "synchronised before the clock was set"
    );
    let status = log[step..]
        .iter()
        .find_map(|(_, a)| match a {
            Action::SetStatus(k) => Some(*k),
            _ => None,
        })
        .expect("a status after the step");
    assert!(status.synchronized, "{status:?}");
    assert!(
        (0..1_000_000_000).contains(&status.max_error_ns) && status.est_error_ns < status.max_error_ns.max(1),
        "{status:?}"
    );
    assert_eq!(status.leap, Leap::None);
}
