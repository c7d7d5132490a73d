//! Hostile KVM guests inside the running service: mirage-dhcp under
//! `--sandbox kvm` holds a lease from dnsmasq, then its engine's guest is
//! replaced by the attacker of the tender's suite (guest/images/hostile),
//! one attack per engine start. For each: the tender or the supervisor ends
//! the guest and the service log says why, the engine is restarted with
//! back-off, the interface's address and routes stay, and the supervisor,
//! network role and actuator are the same processes throughout. The real
//! guest is put back at the end and re-verifies the lease.
//!
//! How the guest is replaced: the config key `kvm_guest_image` names an
//! image file that the supervisor opens at start and every engine reads
//! anew when it starts (docs/operators.md). The test starts the daemon with
//! that file holding the real DHCP guest, then writes the hostile image
//! into it and kills the engine; the attack is the case byte and argument
//! the test writes into the image's `ATTACK` bytes after their marker, so
//! one more write picks the next engine's attack.
//!
//! Needs root (namespaces, raw sockets) and /dev/kvm (without it the test
//! fails, unless `MIRAGE_NO_KVM=1` skips it with a loud line); CI runs as
//! root.

mod support;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use support::{CLIENT_IF, Net};

const BOUND_WITHIN: Duration = Duration::from_secs(20);
/// Long enough for an attack's engine to start after the back-off so far
/// (at most 3.2 s here) and be ended (the watchdog's 1 s at most).
const ENDED_WITHIN: Duration = Duration::from_secs(30);

/// The marker before the attack's bytes in the hostile image
/// (guest/images/hostile/src/main.rs, `ATTACK`).
const MARKER: &[u8] = b"MIRAGE-HOSTILE-ATTACK:";

// The attacks (guest/images/hostile/src/main.rs).
const SPIN: u8 = 1;
const WRITE_CODE: u8 = 2;
const POINTER_PAST_MEMORY: u8 = 5;
const UNKNOWN_PORT: u8 = 7;
const OVERSIZED: u8 = 8;
const UNDECODABLE: u8 = 9;
const DIVIDE_BY_ZERO: u8 = 10;
const LOG_FLOOD: u8 = 16;

/// One attack: its case and argument, and what the service log must say
/// when the guest is ended.
struct Attack {
    name: &'static str,
    case: u8,
    arg: u64,
    logged: &'static [&'static str],
}

const ATTACKS_A: [Attack; 4] = [
    Attack {
        name: "spin forever",
        case: SPIN,
        arg: 0,
        logged: &["guest ran over 1000 ms without a hypercall: stopped"],
    },
    Attack {
        name: "write its own code",
        case: WRITE_CODE,
        arg: 0,
        logged: &["guest page fault (vector 14)", "error code 0x7"],
    },
    Attack {
        name: "pointer past memory in a hypercall",
        // The engine's guest memory (mirage_kvm::Config::default, 4 MiB):
        // 16 bytes straddling its end.
        case: POINTER_PAST_MEMORY,
        arg: 4 << 20,
        logged: &[
            "guest send hypercall with a buffer outside the pages it may use so (16 bytes at 0x3ffff8)",
        ],
    },
    Attack {
        name: "divide by zero",
        case: DIVIDE_BY_ZERO,
        arg: 0,
        logged: &["guest divide error (vector 0)"],
    },
];

const ATTACKS_B: [Attack; 4] = [
    Attack {
        name: "unknown port",
        case: UNKNOWN_PORT,
        arg: 0,
        logged: &["guest used I/O port 0x80, not a hypercall"],
    },
    Attack {
        name: "oversized message",
        case: OVERSIZED,
        arg: 9000,
        logged: &["guest message of 9000 bytes, over the cap"],
    },
    Attack {
        name: "undecodable message",
        case: UNDECODABLE,
        arg: 0,
        logged: &["engine stopped (sent a bad message"],
    },
    Attack {
        name: "log flood",
        case: LOG_FLOOD,
        arg: 20_000,
        logged: &["guest: flood line 0", "guest log line(s) suppressed"],
    },
];

/// `image` with `case` and `arg` written after the marker.
fn with_attack(image: &[u8], case: u8, arg: u64) -> Vec<u8> {
    let at = attack_offset(image);
    let mut out = image.to_vec();
    out[at] = case;
    out[at + 1..at + 9].copy_from_slice(&arg.to_le_bytes());
    out
}

/// Where the attack's bytes are: right after the one marker in the image.
fn attack_offset(image: &[u8]) -> usize {
    let hits: Vec<usize> = image
        .windows(MARKER.len())
        .enumerate()
        .filter_map(|(i, w)| (w == MARKER).then_some(i))
        .collect();
    assert_eq!(hits.len(), 1, "the marker must be in the hostile image once");
    hits[0] + MARKER.len()
}

/// Write the attack's 9 bytes in place (one small write: an engine that
/// reads the file meanwhile sees the old attack or the new one).
fn set_attack(path: &Path, offset: usize, case: u8, arg: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut bytes = [0u8; 9];
    bytes[0] = case;
    bytes[1..].copy_from_slice(&arg.to_le_bytes());
    file.write_all_at(&bytes, offset as u64).unwrap();
}

/// Replace the whole file's contents (same inode: the supervisor's
/// descriptor sees them).
fn replace_image(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

/// Wait until the log after `from` holds `needles`, in this order; the
/// index just past the line of the last.
fn wait_logged(net: &Net, from: usize, needles: &[&str], what: &str) -> usize {
    mirage_testkit::wait::wait_some(
        ENDED_WITHIN,
        what,
        || {
            let log = net.client_log();
            let mut at = from;
            for needle in needles {
                at += log.get(at..)?.find(needle)? + needle.len();
            }
            Some(log[at..].find('\n').map_or(log.len(), |n| at + n + 1))
        },
        || net.client_log()[from..].to_string(),
    )
}

/// The `restarting in D` delays the supervisor logged, in milliseconds.
fn restart_delays(log: &str) -> Vec<u128> {
    log.lines()
        .filter(|l| l.contains("engine stopped ("))
        .filter_map(|l| l.rsplit_once("restarting in ").map(|(_, d)| d.trim()))
        .map(|d| {
            if let Some(ms) = d.strip_suffix("ms") {
                ms.parse::<f64>().unwrap() as u128
            } else {
                (d.strip_suffix('s').unwrap().parse::<f64>().unwrap() * 1000.0) as u128
            }
        })
        .collect()
}

/// One daemon, one lease, `attacks` one after another; returns a note.
fn run_attacks(attacks: &[Attack]) -> String {
    let mut net = Net::new();
    net.start_dnsmasq("300", &[]);
    let image = net.path("guest.elf");
    replace_image(&image, mirage_kvm_testimages::DHCP);
    let config = net.path("config.toml");
    std::fs::write(&config, format!("kvm_guest_image = \"{}\"\n", image.display())).unwrap();
    let daemon = net.start_client(&[
        "--config",
        config.to_str().unwrap(),
        "--sandbox",
        "kvm",
        "--no-acd",
    ]);
    let status = net.wait_state("bound", BOUND_WITHIN);
    assert_eq!(status["sandbox"], "kvm", "{status}");
    let log = net.client_log();
    assert!(
        log.contains("the engine runs the guest image")
            && log.contains("engine runs the configured guest image"),
        "the configured image was not used:\n{log}"
    );
    let addrs = net.client_addrs();
    let routes = net.client_routes();
    assert!(
        routes.contains(&format!("default via {} dev {CLIENT_IF}", net.server_ip)),
        "{routes}"
    );
    let resolv = std::fs::read_to_string(net.path("resolv.conf")).unwrap();
    let supervisor = net.child_pid(daemon);
    let steady = |net: &Net| -> Vec<(String, u32)> {
        let mut roles = net.role_pids(daemon);
        roles.retain(|(name, _)| name != "engine");
        roles.sort();
        roles
    };
    let others = steady(&net);
    assert_eq!(others.len(), 2, "network and actuator: {others:?}");
    let watch = net.watch_addresses();

    // The hostile image in place of the real one, for the next engine.
    let hostile = with_attack(mirage_kvm_testimages::HOSTILE, attacks[0].case, attacks[0].arg);
    let offset = attack_offset(&hostile);
    replace_image(&image, &hostile);
    let mut from = net.client_log().len();
    let mut reasons = Vec::new();
    let engine = net.role_pid(daemon, "engine");
    support::run(std::process::Command::new("kill").args(["-9", &engine.to_string()]));
    for (i, attack) in attacks.iter().enumerate() {
        if i > 0 {
            set_attack(&image, offset, attack.case, attack.arg);
        }
        let start = from;
        from = wait_logged(&net, from, attack.logged, attack.name);
        let log = net.client_log();
        let why = log[start..from]
            .lines()
            .filter(|l| attack.logged.iter().any(|n| l.contains(n)))
            .collect::<Vec<_>>()
            .join(" / ");
        reasons.push(format!("{}: {why}", attack.name));
        if attack.case == LOG_FLOOD {
            // The tender's limit: a few dozen of the lines, the rest counted.
            let log = net.client_log();
            let passed = log[start..from].matches("guest: flood line ").count() as u64;
            assert!(
                passed >= 1 && passed * 100 < attack.arg,
                "{passed} flood lines logged"
            );
        }
        // Contained: nothing the guest did reached the host.
        assert_eq!(net.client_addrs(), addrs, "after {}", attack.name);
        assert_eq!(net.client_routes(), routes, "after {}", attack.name);
        assert_eq!(steady(&net), others, "after {}", attack.name);
    }
    // The real guest again: the next engine re-verifies the lease.
    let restarts_before = net.status().unwrap()["engine_restarts"].as_u64().unwrap();
    replace_image(&image, mirage_kvm_testimages::DHCP);
    support::wait_until(ENDED_WITHIN, || {
        net.status()
            .is_some_and(|s| s["state"] == "bound" && s["engine_restarts"].as_u64() > Some(restarts_before))
    });
    let log = net.client_log();
    // Why each engine ended is logged, with its back-off doubling.
    let delays = restart_delays(&log);
    assert!(delays.len() > attacks.len(), "{delays:?}\n{log}");
    assert!(
        delays.windows(2).all(|w| w[1] >= w[0]) && delays.last() > delays.first(),
        "no back-off: {delays:?}"
    );
    // The host is as it was: address (never removed), routes, resolv.conf,
    // and the process tree.
    assert_eq!(net.client_addrs(), addrs);
    assert!(watch.deletions().is_empty(), "{:?}", watch.deletions());
    assert_eq!(net.client_routes(), routes);
    assert_eq!(std::fs::read_to_string(net.path("resolv.conf")).unwrap(), resolv);
    assert_eq!(steady(&net), others);
    assert_eq!(net.child_pid(daemon), supervisor);
    assert!(
        net.wait_exit(daemon, Duration::ZERO).is_none(),
        "the daemon exited"
    );
    let status = net.status().unwrap();
    assert_eq!(status["sandbox"], "kvm");
    assert_eq!(status["state"], "bound");
    format!(
        "{} attacks contained, restarts delayed {delays:?} ms:\n  {}",
        attacks.len(),
        reasons.join("\n  ")
    )
}

#[test]
fn hostile_guests_are_ended_and_the_lease_stays() {
    if !mirage_testkit::kvm::usable("hostile_guest::hostile_guests_are_ended_and_the_lease_stays") {
        return;
    }
    // Two daemons at once, four attacks each: the back-off doubles with
    // every engine that fails, so fewer attacks a daemon keep it short.
    let results: Vec<Result<String, String>> = std::thread::scope(|s| {
        let a = s.spawn(|| run_attacks(&ATTACKS_A));
        let b = s.spawn(|| run_attacks(&ATTACKS_B));
        [a, b]
            .into_iter()
            .map(|h| {
                h.join().map_err(|e| {
                    e.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".into())
                })
            })
            .collect()
    });
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(note) => eprintln!("{note}"),
            Err(e) => failed.push(e),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n---\n"));
}
