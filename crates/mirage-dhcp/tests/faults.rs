//! Faults around a running client, against every real server and under
//! every sandbox (`seccomp`, `none`, and `kvm`: the engine as a KVM guest;
//! without a usable /dev/kvm the kvm runs fail unless `MIRAGE_NO_KVM=1`
//! skips them, loudly): carrier loss, killed roles, restarts, a read-only or full state
//! directory, a corrupt lease file, SIGTERM with and without release. In
//! every case the address must not disappear while its lease is valid unless
//! the server said so (watched with `ip monitor address`).
//! Needs root (namespaces, raw sockets, nftables, tmpfs mounts); CI runs as root.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use dhcp_engine::wire::dhcp::MessageType;
use mirage_sdk::files::StoredLease;
use mirage_sdk::service::state;
use support::hostile::{HostileServer, STANDARD_LEASE_SECS};
use support::{CLIENT_IF, Net, Offer, SERVER_IF, Server, matrix, read};

const BOUND_WITHIN: Duration = Duration::from_secs(20);

fn lease_file(net: &Net) -> std::path::PathBuf {
    net.path(&format!("state/lease-{CLIENT_IF}.json"))
}

/// The stored lease's address (panics if the file does not parse).
fn stored_address(net: &Net) -> String {
    let text = read(&lease_file(net));
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("torn lease file ({e}): {text:?}"));
    v["lease"]["address"]
        .as_str()
        .expect("address in the lease file")
        .to_string()
}

fn counter(net: &Net, name: &str) -> u64 {
    net.status()
        .and_then(|s| s["counters"][name].as_u64())
        .unwrap_or(0)
}

/// Wait until `counter` grows past `above` while bound (panics after `within`).
fn wait_counter_above(net: &Net, name: &str, above: u64, within: Duration) {
    support::wait_until(within, || counter(net, name) > above);
}

/// Carrier down then up from the server side: the lease is kept while the
/// link is down and verified (INIT-REBOOT) when it is back, not dropped.
#[test]
fn carrier_down_up() {
    matrix("carrier down/up", &Server::ALL, &[], |server, sandbox| {
        let mut net = Net::new();
        net.start_server(server, 0, &Offer::long(server));
        net.start_daemon(sandbox, &[]);
        net.wait_state("bound", BOUND_WITHIN);
        let addr = net.client_addrs();
        let acks = counter(&net, "acks");
        let watch = net.watch_addresses();
        let log_at = net.client_log().len();
        net.in_server(&["ip", "link", "set", SERVER_IF, "down"]);
        net.wait_state("link-down", Duration::from_secs(5));
        assert_eq!(net.client_addrs(), addr, "dropped on carrier loss");
        net.in_server(&["ip", "link", "set", SERVER_IF, "up"]);
        // Back to bound through a fresh exchange with the server.
        support::wait_until(BOUND_WITHIN, || {
            net.status()
                .is_some_and(|s| s["state"] == "bound" && s["counters"]["acks"].as_u64() > Some(acks))
        });
        assert_eq!(net.client_addrs(), addr);
        assert!(watch.deletions().is_empty(), "{:?}", watch.deletions());
        let log = net.client_log()[log_at..].to_string();
        let how = if log.contains("state rebooting -> bound") {
            "re-verified by INIT-REBOOT"
        } else {
            "INIT-REBOOT unanswered; same address by DISCOVER"
        };
        format!("lease kept while down; {how}")
    });
}

/// SIGKILL of the engine while it waits for an ACK: the client's REQUESTs
/// are held back by an nftables egress rule (option 53 = 3 is the first option our
/// client writes, at UDP payload offset 240), so REQUESTING lasts.
#[test]
fn engine_killed_while_requesting() {
    matrix(
        "engine SIGKILL in REQUESTING",
        &Server::ALL,
        &[],
        |server, sandbox| {
            let mut net = Net::new();
            net.start_server(server, 0, &Offer::long(server));
            // UDP header 8 + BOOTP 236 + cookie 4 = byte 248 (bit 1984) of the
            // transport header: 53, 1, 3 (REQUEST).
            let ns = net.client_ns.clone();
            net.block(&ns, CLIENT_IF, "udp dport 67 @th,1984,24 0x350103");
            let daemon = net.start_daemon(sandbox, &[]);
            net.wait_state("requesting", BOUND_WITHIN);
            // The REQUESTs really are held back: no ACK, still requesting.
            std::thread::sleep(Duration::from_millis(300));
            let s = net.status().unwrap();
            assert_eq!(s["state"], "requesting", "{s}");
            assert_eq!(s["counters"]["acks"], 0, "{s}");
            let engine = net.role_pid(daemon, "engine");
            support::run(Command::new("kill").args(["-9", &engine.to_string()]));
            net.unblock(&ns);
            support::wait_until(BOUND_WITHIN, || {
                net.status()
                    .is_some_and(|s| s["state"] == "bound" && s["engine_restarts"].as_u64() >= Some(1))
            });
            assert_eq!(net.client_addrs().len(), 1);
            assert_ne!(net.role_pid(daemon, "engine"), engine);
            "engine restarted, fresh DISCOVER, bound".into()
        },
    );
}

/// Under `--sandbox kvm` the restarted engine builds its VM under the
/// supervisor's filter.
#[test]
fn engine_killed_while_bound() {
    matrix("engine SIGKILL in BOUND", &Server::ALL, &[], |server, sandbox| {
        let mut net = Net::new();
        net.start_server(server, 0, &Offer::long(server));
        let daemon = net.start_daemon(sandbox, &[]);
        net.wait_state("bound", BOUND_WITHIN);
        let addr = net.client_addrs();
        let watch = net.watch_addresses();
        let engine = net.role_pid(daemon, "engine");
        support::run(Command::new("kill").args(["-9", &engine.to_string()]));
        support::wait_until(BOUND_WITHIN, || {
            net.status()
                .is_some_and(|s| s["state"] == "bound" && s["engine_restarts"].as_u64() >= Some(1))
        });
        assert_eq!(net.client_addrs(), addr);
        assert!(watch.deletions().is_empty(), "{:?}", watch.deletions());
        "restarted engine re-verified the lease; address kept".into()
    });
}

/// SIGKILL of the actuator. Today the supervisor then exits (it does not
/// restart the actuator); the address stays with its kernel lifetime and a
/// restarted daemon re-adopts it (INIT-REBOOT, no DISCOVER, no removal).
#[test]
fn actuator_killed() {
    matrix("actuator SIGKILL", &Server::ALL, &[], |server, sandbox| {
        let mut net = Net::new();
        net.start_server(server, 0, &Offer::long(server));
        let daemon = net.start_daemon(sandbox, &[]);
        net.wait_state("bound", BOUND_WITHIN);
        let addr = net.client_addrs();
        let watch = net.watch_addresses();
        let actuator = net.role_pid(daemon, "actuator");
        support::run(Command::new("kill").args(["-9", &actuator.to_string()]));
        let exit = net.wait_exit(daemon, Duration::from_secs(10));
        let st = exit.expect("the daemon neither exited nor recovered");
        assert!(!st.success(), "exit {st:?}");
        // No role outlives the supervisor.
        assert!(net.role_pids(daemon).is_empty());
        assert_eq!(net.client_addrs(), addr, "the address went with the actuator");
        std::fs::remove_file(net.path("run/status.json")).unwrap();
        net.start_daemon(sandbox, &[]);
        let status = net.wait_state("bound", BOUND_WITHIN);
        assert_eq!(
            status["counters"]["offers"], 0,
            "re-adoption fell back to DISCOVER: {status}"
        );
        assert_eq!(net.client_addrs(), addr);
        assert!(watch.deletions().is_empty(), "{:?}", watch.deletions());
        format!("supervisor exited ({st}); restart re-adopted the address")
    });
}

/// Restart of the whole daemon while RENEWING (the server's replies are held
/// back by an nftables egress rule so that RENEWING lasts): the new daemon verifies the
/// stored lease and keeps the address.
#[test]
fn daemon_restart_while_renewing() {
    matrix(
        "daemon restart in RENEWING",
        &Server::ALL,
        &[],
        |server, sandbox| {
            let mut net = Net::new();
            net.start_server(server, 0, &Offer::short(server));
            let daemon = net.start_daemon(sandbox, &[]);
            net.wait_state("bound", BOUND_WITHIN);
            let addr = net.client_addrs();
            let watch = net.watch_addresses();
            let ns = net.server_ns.clone();
            net.block(&ns, SERVER_IF, "udp sport 67");
            net.wait_state("renewing", Duration::from_secs(15));
            net.signal(daemon, "TERM");
            assert!(
                net.wait_exit(daemon, Duration::from_secs(5))
                    .is_some_and(|s| s.success())
            );
            net.unblock(&ns);
            std::fs::remove_file(net.path("run/status.json")).unwrap();
            net.start_daemon(sandbox, &[]);
            let status = net.wait_state("bound", BOUND_WITHIN);
            assert_eq!(status["counters"]["offers"], 0, "fell back to DISCOVER: {status}");
            assert_eq!(net.client_addrs(), addr);
            assert!(watch.deletions().is_empty(), "{:?}", watch.deletions());
            "INIT-REBOOT ACKed; address kept".into()
        },
    );
}

/// The state directory turns read-only, or fills up, under a bound client:
/// the failure is logged clearly, the client keeps renewing from memory and
/// the lease file on disk is never torn.
fn state_dir_fault(server: Server, sandbox: &str, full: bool) -> String {
    let mut net = Net::new();
    let state = net.mount_tmpfs("state", "256k");
    net.start_server(server, 0, &Offer::short(server));
    net.start_daemon(sandbox, &[]);
    net.wait_state("bound", BOUND_WITHIN);
    let addr = net.client_addrs();
    let stored = stored_address(&net);
    let watch = net.watch_addresses();
    let expect = if full {
        // Fill the tmpfs; dd stops with ENOSPC.
        let _ = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", state.join("filler").display()))
            .args(["bs=4k", "status=none"])
            .status();
        "No space left on device"
    } else {
        support::run(Command::new("mount").args(["-o", "remount,ro"]).arg(&state));
        "Read-only file system"
    };
    let renewals = counter(&net, "renewals");
    wait_counter_above(&net, "renewals", renewals + 1, Duration::from_secs(30));
    let log = net.client_log();
    let line = log
        .lines()
        .find(|l| l.contains("PersistLease failed") && l.contains(expect))
        .unwrap_or_else(|| panic!("no clear error about the lease file:\n{log}"));
    assert_eq!(net.status().unwrap()["state"], "bound");
    assert_eq!(net.client_addrs(), addr);
    assert_eq!(stored_address(&net), stored, "lease file changed");
    assert!(watch.deletions().is_empty(), "{:?}", watch.deletions());
    let line = line.split("WARN").last().unwrap_or(line).trim().to_string();
    format!("kept renewing; logged \"{line}\"; old lease file intact")
}

#[test]
fn state_dir_read_only() {
    matrix("state dir read-only", &Server::ALL, &[], |server, sandbox| {
        state_dir_fault(server, sandbox, false)
    });
}

#[test]
fn state_dir_full() {
    matrix("state dir full", &Server::ALL, &[], |server, sandbox| {
        state_dir_fault(server, sandbox, true)
    });
}

/// A truncated and then a garbage lease file on start: warned about,
/// ignored, fresh DISCOVER.
#[test]
fn corrupt_lease_file_on_start() {
    matrix(
        "corrupt lease file at start",
        &Server::ALL,
        &[],
        |server, sandbox| {
            let mut net = Net::new();
            net.start_server(server, 0, &Offer::long(server));
            let first = net.start_daemon(sandbox, &[]);
            net.wait_state("bound", BOUND_WITHIN);
            net.signal(first, "TERM");
            assert!(net.wait_exit(first, Duration::from_secs(5)).is_some());
            let good = std::fs::read(lease_file(&net)).unwrap();
            let variants: [(&str, Vec<u8>); 2] = [
                ("truncated", good[..good.len() / 2].to_vec()),
                ("garbage", b"\x00\xff{\"version\":1,\"lease\":[[[\n\x7f".to_vec()),
            ];
            for (what, bytes) in variants {
                std::fs::write(lease_file(&net), &bytes).unwrap();
                let _ = std::fs::remove_file(net.path("run/status.json"));
                let log_at = net.client_log().len();
                let d = net.start_daemon(sandbox, &[]);
                let status = net.wait_state("bound", BOUND_WITHIN);
                let log = net.client_log()[log_at..].to_string();
                assert!(
                    log.contains("ignoring the stored lease"),
                    "{what}: no warning:\n{log}"
                );
                assert!(
                    status["counters"]["offers"].as_u64() >= Some(1),
                    "{what}: no fresh DISCOVER: {status}"
                );
                // The new lease replaced the broken file.
                stored_address(&net);
                net.signal(d, "TERM");
                assert!(net.wait_exit(d, Duration::from_secs(5)).is_some());
            }
            "truncated and garbage files warned, ignored, fresh DISCOVER".into()
        },
    );
}

/// SIGTERM with --release-on-stop: DHCPRELEASE reaches the server (its log
/// or lease database says so) and the address goes.
#[test]
fn sigterm_with_release() {
    matrix(
        "SIGTERM, release-on-stop",
        &Server::ALL,
        &[],
        |server, sandbox| {
            let mut net = Net::new();
            let run = net.start_server(server, 0, &Offer::long(server));
            let daemon = net.start_daemon(sandbox, &["--release-on-stop"]);
            let status = net.wait_state("bound", BOUND_WITHIN);
            let addr = status["lease"]["address"].as_str().unwrap().to_string();
            net.signal(daemon, "TERM");
            let st = net.wait_exit(daemon, Duration::from_secs(5)).expect("no exit");
            assert!(st.success(), "{st:?}");
            assert!(net.client_addrs().is_empty(), "{:?}", net.client_addrs());
            let mut seen = false;
            let deadline = Instant::now() + Duration::from_secs(5);
            while !seen && Instant::now() < deadline {
                seen = net.server_saw_release(&run, &addr);
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(seen, "{} has no record of a DHCPRELEASE", server.name());
            "RELEASE recorded by the server; address removed".into()
        },
    );
}

/// SIGTERM without release: the address stays (its kernel lifetime runs
/// out with the lease) and the server was told nothing.
#[test]
fn sigterm_without_release() {
    matrix("SIGTERM, no release", &Server::ALL, &[], |server, sandbox| {
        let mut net = Net::new();
        let run = net.start_server(server, 0, &Offer::long(server));
        let daemon = net.start_daemon(sandbox, &[]);
        let status = net.wait_state("bound", BOUND_WITHIN);
        let addr = status["lease"]["address"].as_str().unwrap().to_string();
        let watch = net.watch_addresses();
        net.signal(daemon, "TERM");
        let st = net.wait_exit(daemon, Duration::from_secs(5)).expect("no exit");
        assert!(st.success(), "{st:?}");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(net.client_addrs(), vec![format!("{addr}/24")]);
        assert!(watch.deletions().is_empty(), "{:?}", watch.deletions());
        assert!(!net.server_saw_release(&run, &addr), "a RELEASE was sent");
        "address kept, no RELEASE".into()
    });
}

/// `kill -SIG pid`.
fn kill(sig: &str, pid: u32) {
    support::run(Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]));
}

/// A process's state letter in /proc/PID/stat (`Z`: dead, not reaped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The engine sends its bound lease (ApplyLease, PersistLease,
/// PublishStatus in one go) and aborts at once, before the supervisor has
/// read any of it: the supervisor reads everything a dead role left in its
/// channel before acting on its death, so the lease file holds that lease
/// and the restarted engine starts from it (INIT-REBOOT, no DISCOVER).
///
/// "At once" is made exact with stops: the engine is stopped while the
/// supervisor queues the server's ACK for it, the supervisor is stopped
/// while the engine answers, and the engine is killed (SIGABRT, as a
/// panic's abort) before the supervisor runs again, which then finds the
/// engine's answers and its death in the same wake-up. Under `--sandbox
/// kvm` the engine process is the guest's tender: the guest runs only
/// while it does.
#[test]
fn engine_aborting_right_after_a_persist_loses_nothing() {
    for sandbox in support::sandboxes_with_kvm("engine abort right after a persist") {
        let mut net = Net::new();
        // The selecting REQUEST is answered by the test below; the
        // restarted engine's INIT-REBOOT like an honest server would.
        let server = HostileServer::start(&net, |ctx, seen| match seen.kind {
            MessageType::Discover => ctx.standard(seen),
            MessageType::Request if seen.is_init_reboot_request() => ctx.standard(seen),
            _ => Vec::new(),
        });
        // Default timings: REQUESTING lasts long enough for the stops.
        let daemon = net.start_client(&["--sandbox", sandbox, "--no-acd"]);
        let request = server.wait_for(BOUND_WITHIN, "REQUEST", |s| s.is_selecting_request());
        let ctx = server.ctx().clone();
        let supervisor = net.child_pid(daemon);
        let engine = net.role_pid(daemon, "engine");
        kill("STOP", engine);
        server.inject(&[ctx.frame(&request, &ctx.ack(&request))]);
        // The ACK goes network role -> supervisor -> the stopped engine's
        // channel within microseconds; this is a wide margin.
        std::thread::sleep(Duration::from_millis(500));
        kill("STOP", supervisor);
        kill("CONT", engine);
        // The engine answers the ACK and goes back to waiting.
        std::thread::sleep(Duration::from_millis(500));
        kill("ABRT", engine);
        support::wait_until(Duration::from_secs(5), || proc_state(engine) == Some('Z'));
        assert_eq!(
            net.status().map(|s| s["state"].clone()),
            Some("requesting".into()),
            "the supervisor handled the engine's answers before it was stopped: the test proves nothing"
        );
        kill("CONT", supervisor);

        let path = lease_file(&net);
        mirage_testkit::wait::wait_some(
            Duration::from_secs(10),
            "the lease file (the engine's last PersistLease was lost)",
            || path.exists().then_some(()),
            || net.client_log(),
        );
        let dir = mirage_sdk::files::open_dir(&net.path("state")).unwrap();
        let name = format!("lease-{CLIENT_IF}.json");
        let stored: StoredLease = state::load(&dir, &name).unwrap().expect("the lease file");
        let l = &stored.lease;
        assert_eq!(stored.interface, CLIENT_IF);
        assert_eq!((l.address, l.prefix_len), (ctx.offered(), 24));
        assert_eq!(l.server_id, ctx.server_ip);
        assert_eq!(l.lease_secs, STANDARD_LEASE_SECS);
        assert_eq!(l.dns_servers, [ctx.server_ip]);
        assert_eq!(
            l.routes
                .iter()
                .map(|r| (r.destination, r.prefix_len, r.gateway))
                .collect::<Vec<_>>(),
            [(std::net::Ipv4Addr::UNSPECIFIED, 0, ctx.server_ip)]
        );
        // The engine was restarted, from that lease: the address the lost
        // engine applied stays, confirmed by INIT-REBOOT without a new
        // DISCOVER.
        support::wait_until(BOUND_WITHIN, || {
            net.status()
                .is_some_and(|s| s["state"] == "bound" && s["engine_restarts"].as_u64() >= Some(1))
        });
        assert_ne!(net.role_pid(daemon, "engine"), engine);
        assert_eq!(
            server.count(MessageType::Discover),
            1,
            "the lease was lost: DISCOVER again"
        );
        assert!(server.count_where(|s| s.is_init_reboot_request()) >= 1);
        assert_eq!(net.client_addrs(), [format!("{}/24", ctx.offered())]);
        drop(server);
    }
}
