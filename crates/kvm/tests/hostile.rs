//! Hostile guests (guest/images/hostile, built with the `hostile`
//! feature): each attack must end the guest with an error that names it,
//! and leave the host and the tender's thread as they were. Needs /dev/kvm
//! (see tests/common). `cargo test -p mirage-kvm --features hostile`.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use mirage_engine::FromEngine;
use mirage_kvm::{Config, LOG_BURST, LOG_PER_SECOND, Vm, VmError};
use mirage_sdk::channel::Channel;
use mirage_sdk::engine_role::ChannelHost;

// The attacks (guest/images/hostile/src/main.rs).
const SPIN: u8 = 1;
const WRITE_CODE: u8 = 2;
const READ_OUTSIDE: u8 = 3;
const READ_TENDER: u8 = 4;
const POINTER_PAST_MEMORY: u8 = 5;
const RECV_INTO_CODE: u8 = 6;
const UNKNOWN_PORT: u8 = 7;
const OVERSIZED: u8 = 8;
const UNDECODABLE: u8 = 9;
const DIVIDE_BY_ZERO: u8 = 10;
const EXECUTE_DATA: u8 = 11;
const PANIC: u8 = 12;
const HLT: u8 = 13;
const HYPERCALLS: u8 = 14;
const WRITE_PAGE_TABLES: u8 = 15;
const LOG_FLOOD: u8 = 16;

/// Run attack `case` with `arg`; the guest's end, its log, and the
/// supervisor's end of the channel (still open).
struct Attack {
    result: Result<(), VmError>,
    lines: Vec<String>,
    sup: Channel,
}

fn attack(case: u8, arg: u64, config: Config) -> Option<Attack> {
    let kvm = common::kvm()?;
    let (sup, far) = Channel::pair().unwrap();
    let mut msg = vec![case];
    msg.extend_from_slice(&arg.to_le_bytes());
    sup.send_raw(&msg).unwrap();
    let lines = common::Lines::default();
    let mut sink = lines.sink();
    let vm = Vm::new(&kvm, mirage_kvm_testimages::HOSTILE, &config).unwrap();
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(vm.run(&mut ChannelHost::new(far), &mut sink));
    });
    let result = result
        .recv_timeout(Duration::from_secs(20))
        .expect("the attack was not contained: the guest still runs");
    Some(Attack {
        result,
        lines: lines.all(),
        sup,
    })
}

fn err(case: u8, arg: u64) -> Option<VmError> {
    let a = attack(case, arg, Config::default())?;
    let e = a.result.expect_err("the attack ended without an error");
    eprintln!("contained: {e}");
    Some(e)
}

fn page_fault(e: &VmError) -> (u64, u64) {
    match e {
        VmError::Exception {
            vector: 14,
            addr: Some(addr),
            error_code: Some(code),
            ..
        } => (*addr, *code),
        other => panic!("wanted a page fault: {other}"),
    }
}

const PF_PRESENT: u64 = 1;
const PF_WRITE: u64 = 2;
const PF_USER: u64 = 4;
const PF_FETCH: u64 = 16;

#[test]
fn a_guest_that_spins_is_stopped_by_the_watchdog() {
    let config = Config {
        watchdog: Duration::from_millis(200),
        ..Config::default()
    };
    let t = Instant::now();
    let Some(a) = attack(SPIN, 0, config) else { return };
    let took = t.elapsed();
    assert!(
        matches!(a.result, Err(VmError::Watchdog { .. })),
        "{:?}",
        a.result
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(5),
        "{took:?}"
    );
    eprintln!("watchdog (200 ms bound) stopped the guest after {took:?}");
}

#[test]
fn a_guest_cannot_write_its_own_code() {
    let Some(e) = err(WRITE_CODE, 0) else { return };
    let (addr, code) = page_fault(&e);
    assert!((0x10_0000..0x20_0000).contains(&addr), "{e}");
    assert_eq!(
        code & (PF_PRESENT | PF_WRITE | PF_USER),
        PF_PRESENT | PF_WRITE | PF_USER,
        "{e}"
    );
}

#[test]
fn a_guest_cannot_read_outside_its_memory_or_the_tenders_pages() {
    let Some(e) = err(READ_OUTSIDE, 0) else { return };
    assert_eq!(page_fault(&e).0, 0x4000_0000);
    let Some(e) = err(READ_TENDER, 0) else { return };
    let (addr, code) = page_fault(&e);
    assert_eq!(addr, 0x1000, "the descriptor tables");
    assert_eq!(
        code & (PF_PRESENT | PF_USER),
        PF_PRESENT | PF_USER,
        "present, but not for ring 3"
    );
    let Some(e) = err(WRITE_PAGE_TABLES, 0x4000) else {
        return;
    };
    assert_eq!(page_fault(&e).0, 0x4000, "the page tables are not mapped");
}

#[test]
fn a_guest_cannot_execute_data() {
    let Some(e) = err(EXECUTE_DATA, 0) else { return };
    let (_, code) = page_fault(&e);
    assert_ne!(code & PF_FETCH, 0, "{e}");
}

#[test]
fn hypercall_pointers_outside_the_guests_pages_are_refused() {
    let memory = Config::default().memory as u64;
    let Some(e) = err(POINTER_PAST_MEMORY, memory) else {
        return;
    };
    assert!(
        matches!(e, VmError::BadPointer { call: "send", addr, len: 16 } if addr == memory - 8),
        "{e}"
    );
    let Some(e) = err(RECV_INTO_CODE, 0) else { return };
    assert!(matches!(e, VmError::BadPointer { call: "recv", .. }), "{e}");
}

#[test]
fn unknown_ports_and_privileged_instructions_end_the_guest() {
    let Some(e) = err(UNKNOWN_PORT, 0) else { return };
    assert!(matches!(e, VmError::UnknownPort { port: 0x80 }), "{e}");
    let Some(e) = err(HLT, 0) else { return };
    assert!(matches!(e, VmError::Exception { vector: 13, .. }), "{e}");
    let Some(e) = err(DIVIDE_BY_ZERO, 0) else { return };
    assert!(matches!(e, VmError::Exception { vector: 0, .. }), "{e}");
    assert!(e.to_string().contains("divide error"), "{e}");
}

#[test]
fn oversized_messages_end_the_guest_and_undecodable_ones_reach_the_decoder_as_they_are() {
    let Some(e) = err(OVERSIZED, 9000) else { return };
    assert!(matches!(e, VmError::Oversized { len: 9000 }), "{e}");

    let Some(kvm) = common::kvm() else { return };
    let (sup, far) = Channel::pair().unwrap();
    sup.send_raw(&[UNDECODABLE]).unwrap();
    let vm = Vm::new(&kvm, mirage_kvm_testimages::HOSTILE, &Config::default()).unwrap();
    let guest = std::thread::spawn(move || vm.run(&mut ChannelHost::new(far), &mut |_: &str| {}));
    let mut buf = [0u8; 64];
    let n = sup.recv_into(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[..n], &[0xff; 16], "relayed opaquely");
    // The supervisor's decoder is where such a message stops.
    let decoded = mirage_engine::codec::decode::<
        FromEngine<heartbeat_engine::Action, heartbeat_engine::Refusal>,
    >(&buf[..n]);
    assert!(decoded.is_err());
    drop(sup);
    guest.join().unwrap().unwrap();
}

#[test]
fn a_panic_is_logged_and_the_guest_exits() {
    let Some(a) = attack(PANIC, 5, Config::default()) else {
        return;
    };
    assert!(
        matches!(a.result, Err(VmError::Exited { status: 101 })),
        "{:?}",
        a.result
    );
    assert_eq!(a.lines.len(), 1, "{:?}", a.lines);
    assert!(
        a.lines[0].contains("hostile guest panics on purpose (5)"),
        "{:?}",
        a.lines
    );
}

#[test]
fn hypercall_round_trip_cost() {
    let n = 5000u64;
    let t = Instant::now();
    let Some(a) = attack(HYPERCALLS, n, Config::default()) else {
        return;
    };
    let total = t.elapsed();
    let mut buf = [0u8; 8];
    assert_eq!(
        a.sup.recv_into(&mut buf).unwrap(),
        Some(1),
        "the probe's closing message"
    );
    a.result.unwrap();
    eprintln!(
        "kvm hypercall round trip: {:?} each ({n} seed calls; {total:?} with boot)",
        total / n as u32
    );
}

/// A guest that logs as fast as it can: the tender passes the burst, then
/// its rate, and counts the rest in "suppressed" notes; every line is
/// either logged or counted, and the count is the last line.
#[test]
fn a_guest_flooding_the_log_is_rate_limited_with_a_count() {
    let n = 20_000u64;
    let t = Instant::now();
    let Some(a) = attack(LOG_FLOOD, n, Config::default()) else {
        return;
    };
    let took = t.elapsed();
    a.result.unwrap();
    let passed = a.lines.iter().filter(|l| l.starts_with("flood line ")).count() as u64;
    let notes: Vec<&String> = a.lines.iter().filter(|l| l.starts_with("[tender] ")).collect();
    assert_eq!(passed + notes.len() as u64, a.lines.len() as u64, "{:?}", a.lines);
    let counted: u64 = notes
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(passed + counted, n, "lines neither logged nor counted");
    // The burst, then the rate over however long the flood took here.
    let most = u64::from(LOG_BURST) + u64::from(LOG_PER_SECOND) * (took.as_secs() + 1);
    assert!(
        passed >= u64::from(LOG_BURST) && passed <= most,
        "{passed} lines passed in {took:?}"
    );
    assert!(
        a.lines.last().unwrap().contains("suppressed"),
        "{:?}",
        a.lines.last()
    );
    eprintln!(
        "{n} lines in {took:?}: {passed} logged, {counted} counted in {} note(s)",
        notes.len()
    );
}
