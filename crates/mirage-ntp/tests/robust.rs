//! mirage-ntp where hosts start badly: no route to its server yet (a host
//! at boot, before DHCP), and no CAP_SYS_TIME (a container started without
//! it). The real binary, each case in network namespaces of its own with
//! the test's NTP server (`mirage_testkit::ntp`) answering with the host's
//! clock. Nothing here can move the host clock: the first case observes,
//! the second has no capability to. Needs root (namespaces, the roles'
//! privilege drop) and setpriv (util-linux).

use std::path::Path;
use std::time::Duration;

use mirage_testkit::cmd::read_lossy;
use mirage_testkit::netns::{Netns, unique_id, veth};
use mirage_testkit::ntp::{Datagram, NtpServer, Request, Script};
use mirage_testkit::process::Procs;
use mirage_testkit::procfs::{ProcStatus, role_pid, roles_of};
use mirage_testkit::tempdir::TestDir;
use mirage_testkit::wait::wait_some;
use serde_json::Value;

fn bin() -> std::path::PathBuf {
    mirage_testkit::service_bin("MIRAGE_NTP_BIN", env!("CARGO_BIN_EXE_mirage-ntp"))
}

fn status(dir: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run/status.json")).ok()?).ok()
}

fn honest() -> Script {
    Box::new(|req: &Request, _: &[Request]| vec![Datagram::reply(req.reply(0).to_bytes(), "honest")])
}

/// The estimate of a measured source stays within this of zero: the server
/// runs on the client's own clock (tens of microseconds on an idle veth;
/// generous for a loaded 2-core machine).
const OFFSET_BOUND_MS: f64 = 50.0;
/// CAP_SYS_TIME's bit.
const CAP_SYS_TIME: u64 = 1 << 25;

/// Started with no address and no route in its namespace, the client
/// stays up, says `no_route` for its server (status.json, `status`), and
/// measures once the address (and with it the route) is added: the
/// supervisor connects the waiting socket within its 2 s retry and the
/// engine starts a new burst.
#[test]
fn without_a_route_at_start_it_waits_says_no_route_and_measures_once_one_appears() {
    let (id, _) = unique_id();
    let server_ns = Netns::add_unique("rs");
    let client_ns = Netns::add_unique("rc");
    veth(&server_ns, "s0", &client_ns, "c0");
    server_ns.addr_add("s0", "10.77.0.1/24");
    let tmp = TestDir::new("mirage-ntp-noroute", &id);
    let dir = tmp.path();
    let server = NtpServer::start(server_ns.name(), "10.77.0.1:123".parse().unwrap(), &[], honest());
    let mut procs = Procs::new();
    let mut cmd = client_ns.command(bin().to_str().unwrap());
    cmd.args([
        "run",
        "--observe",
        "--server",
        "10.77.0.1",
        "--config",
        "/dev/null",
    ])
    .args(["--log-level", "debug", "--state-dir"])
    .arg(dir.join("state"))
    .arg("--run-dir")
    .arg(dir.join("run"));
    let daemon = procs.spawn_logged(cmd, &dir.join("ntp.log"));
    let pid = procs.pid(daemon);
    let log = || format!("status {:?}\n{}", status(dir), read_lossy(&dir.join("ntp.log")));

    let v = wait_some(
        Duration::from_secs(20),
        "the source shown without a route",
        || status(dir).filter(|v| v["sources"][0]["state"] == "no_route"),
        log,
    );
    assert_eq!(v["no_route"], serde_json::json!(["10.77.0.1:123"]), "{v}");
    assert_eq!(v["synchronized"], false, "{v}");
    // Its requests were tried and went nowhere (the network role's debug
    // lines): still running, no request reached the server, the roles run on.
    let tried = wait_some(
        Duration::from_secs(20),
        "the burst tried",
        || {
            let text = read_lossy(&dir.join("ntp.log"));
            Some(text).filter(|t| t.matches("send to 10.77.0.1:123:").count() >= 2)
        },
        log,
    );
    assert!(procs.try_wait(daemon).is_none(), "exited: {}", log());
    assert_eq!(roles_of(pid).len(), 3, "{}", log());
    assert_eq!(server.requests(), 0, "{tried}");
    let printed = bin_status(dir);
    assert!(printed.contains("10.77.0.1:123 no_route"), "{printed}");
    let text = read_lossy(&dir.join("ntp.log"));
    assert_eq!(
        text.matches("no route to 10.77.0.1:123").count(),
        1,
        "said once: {text}"
    );

    // The address comes (as DHCP would give it): measured soon after.
    client_ns.addr_add("c0", "10.77.0.2/24");
    let v = wait_some(
        Duration::from_secs(40),
        "the source selected once routed",
        || {
            status(dir).filter(|v| {
                v["state"] == "observing"
                    && v["sources"][0]["state"] == "selected"
                    && v["no_route"] == serde_json::json!([])
            })
        },
        log,
    );
    let offset = v["offset_ms"].as_f64().unwrap();
    assert!(offset.abs() < OFFSET_BOUND_MS, "{v}");
    assert_eq!(v["synchronized"], false, "observing never claims it: {v}");
    assert_eq!(v["engine_restarts"], 0, "{v}");
    assert!(server.requests() >= 1, "{v}");
    assert_eq!(roles_of(pid).len(), 3, "{}", log());
    let text = read_lossy(&dir.join("ntp.log"));
    assert!(text.contains("a route to 10.77.0.1:123 appeared"), "{text}");
    procs.signal(daemon, "TERM");
    let exit = procs.wait_exit(daemon, Duration::from_secs(10));
    assert!(exit.is_some_and(|e| e.success()), "{exit:?}\n{}", log());
    drop(procs);
    drop(server);
}

/// `mirage-ntp status` as an operator runs it.
fn bin_status(dir: &Path) -> String {
    let out = std::process::Command::new(bin())
        .args(["status", "--run-dir"])
        .arg(dir.join("run"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Steering (no `--observe`) but started without CAP_SYS_TIME in its
/// bounding set (`setpriv --bounding-set -sys_time`, as a container
/// runtime that does not grant it): the service starts, its actuator holds
/// no capability, it measures and publishes, says `not-steerable` and never
/// claims to be synchronised.
#[test]
fn without_cap_sys_time_it_starts_measures_and_says_not_steerable() {
    let (id, _) = unique_id();
    let ns = Netns::add_unique("rn");
    let tmp = TestDir::new("mirage-ntp-nocap", &id);
    let dir = tmp.path();
    let _server = NtpServer::start(ns.name(), "127.0.0.11:123".parse().unwrap(), &[], honest());
    let mut procs = Procs::new();
    let mut cmd = ns.command("setpriv");
    cmd.args(["--bounding-set", "-sys_time", "--"])
        .arg(bin())
        .args([
            "run",
            "--server",
            "127.0.0.11",
            "--config",
            "/dev/null",
            "--state-dir",
        ])
        .arg(dir.join("state"))
        .arg("--run-dir")
        .arg(dir.join("run"));
    // The clock as found: nothing here may move it.
    let clock_before = mirage_testkit::clock::real_minus_mono();
    let daemon = procs.spawn_logged(cmd, &dir.join("ntp.log"));
    let pid = procs.pid(daemon);
    // Checked first, once the wrappers have become the daemon: with CAP_SYS_TIME
    // still in the bounding set it would be steering the host clock while
    // the test waits.
    let daemon_status = wait_some(
        Duration::from_secs(10),
        "ip netns exec and setpriv to exec mirage-ntp",
        || Some(ProcStatus::read(pid)).filter(|st| st.field("Name") == "mirage-ntp"),
        || read_lossy(&dir.join("ntp.log")),
    );
    assert_eq!(daemon_status.caps("CapBnd") & CAP_SYS_TIME, 0);
    let log = || format!("status {:?}\n{}", status(dir), read_lossy(&dir.join("ntp.log")));
    let v = wait_some(
        Duration::from_secs(30),
        "not-steerable, the source measured",
        || {
            status(dir).filter(|v| {
                v["state"] == "not-steerable"
                    && v["sources"][0]["state"] == "selected"
                    && v["sources"][0]["reach"] == 15
            })
        },
        log,
    );
    assert_eq!(v["synchronized"], false, "{v}");
    assert_eq!(v["observe"], false, "{v}");
    assert_eq!(v["clock"]["steerable"], false, "{v}");
    assert_eq!(v["engine_restarts"], 0, "{v}");
    assert_eq!(
        v["clock"]["intents"]["applied"],
        Value::Null,
        "nothing applied: {v}"
    );
    let offset = v["offset_ms"].as_f64().unwrap();
    assert!(offset.abs() < OFFSET_BOUND_MS, "{v}");
    assert!(procs.try_wait(daemon).is_none(), "exited: {}", log());
    assert_eq!(roles_of(pid).len(), 3, "{}", log());
    let moved = mirage_testkit::clock::real_minus_mono() - clock_before;
    assert!(moved.abs() < 5_000_000, "the clock moved by {moved} ns");
    let actuator = ProcStatus::read(role_pid(pid, "actuator"));
    assert_eq!(actuator.caps("CapEff"), 0, "the actuator holds nothing");
    let printed = bin_status(dir);
    assert!(printed.contains("not-steerable"), "{printed}");
    let metrics = read_lossy(&dir.join("run/metrics.prom"));
    assert!(metrics.contains("mirage_ntp_synchronized 0"), "{metrics}");
    assert!(
        metrics.contains("mirage_ntp_state{state=\"not-steerable\"} 1"),
        "{metrics}"
    );
    let text = read_lossy(&dir.join("ntp.log"));
    assert_eq!(text.matches("CAP_SYS_TIME is not held").count(), 1, "{text}");
    assert_eq!(
        text.matches("THE CLOCK IS NOT STEERABLE HERE").count(),
        1,
        "{text}"
    );
    assert!(!text.contains("synchronised:"), "never claims it: {text}");
    procs.signal(daemon, "TERM");
    let exit = procs.wait_exit(daemon, Duration::from_secs(10));
    assert!(exit.is_some_and(|e| e.success()), "{exit:?}\n{}", log());
}
