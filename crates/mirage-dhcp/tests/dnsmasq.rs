//! End to end against dnsmasq from Debian, in namespaces the tests create.
//! Needs root (network namespaces, raw sockets); CI runs as root. Every case
//! runs twice, under `--sandbox seccomp` and `--sandbox kvm` (the engine as
//! a guest; needs /dev/kvm, see `mirage_testkit::kvm`).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{CLIENT_IF, Net, read};

const BOUND_WITHIN: Duration = Duration::from_secs(20);

/// One test per sandbox for each case: `CASE::seccomp` and `CASE::kvm`.
macro_rules! in_each_sandbox {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[test]
            fn seccomp() {
                super::$case("seccomp")
            }
            #[test]
            fn kvm() {
                if mirage_testkit::kvm::usable(concat!("dnsmasq::", stringify!($case))) {
                    super::$case("kvm")
                }
            }
        }
    )*};
}

in_each_sandbox!(
    lease_is_applied_with_routes_mtu_dns_and_files,
    oneshot_exits_zero_once_applied,
    short_lease_is_renewed,
    restart_keeps_the_address_without_a_gap,
    killed_engine_is_restarted_and_the_lease_goes_on,
    roles_run_with_the_privileges_the_design_says,
    each_process_has_resident_only_the_segments_it_uses,
    server_gone_rebinds_then_removes_the_address_at_expiry,
);

fn lease_is_applied_with_routes_mtu_dns_and_files(sandbox: &'static str) {
    let mut net = Net::new();
    net.sandbox = Some(sandbox);
    net.start_dnsmasq(
        "120",
        &[
            "--dhcp-option=option:mtu,1400",
            "--dhcp-option=option:domain-search,corp.example,example.org",
            "--dhcp-option=option:ntp-server,10.9.9.9",
        ],
    );
    let daemon = net.start_client(&[]);
    let status = net.wait_state("bound", BOUND_WITHIN);
    let lease = &status["lease"];
    let addr = lease["address"].as_str().unwrap().to_string();
    assert!(addr.starts_with(&format!("{}.", net.subnet)), "{addr}");
    assert_eq!(lease["prefix_len"], 24);
    assert_eq!(net.client_addrs(), vec![format!("{addr}/24")]);
    // Kernel lifetimes come from the lease (120 s), not "forever".
    let a = net.client_addr_json();
    let valid = a["valid_life_time"].as_u64().unwrap();
    assert!((100..=120).contains(&valid), "valid_life_time {valid}");
    let routes = net.client_routes();
    assert!(
        routes.contains(&format!("default via {} dev {CLIENT_IF}", net.server_ip)),
        "{routes}"
    );
    let link = net.in_client(&["ip", "-j", "link", "show", CLIENT_IF]);
    let link: serde_json::Value = serde_json::from_slice(&link.stdout).unwrap();
    assert_eq!(link[0]["mtu"], 1400);
    let resolv = read(&net.path("resolv.conf"));
    assert!(
        resolv.contains(&format!("nameserver {}\n", net.server_ip)),
        "{resolv}"
    );
    assert!(resolv.contains("search corp.example example.org\n"), "{resolv}");
    assert_eq!(lease["ntp_servers"][0], "10.9.9.9");
    assert_eq!(lease["mtu"], 1400);
    // What the lease learned, for the NTP and DNS services.
    let servers: serde_json::Value = serde_json::from_str(&read(&net.path("run/servers.json"))).unwrap();
    assert_eq!(
        servers,
        serde_json::json!({
            "version": 1, "interface": CLIENT_IF,
            "ntp": ["10.9.9.9"], "dns": [net.server_ip.as_str()],
            "search": ["corp.example", "example.org"],
        })
    );
    let stored: serde_json::Value =
        serde_json::from_str(&read(&net.path(&format!("state/lease-{CLIENT_IF}.json")))).unwrap();
    assert_eq!(stored["lease"]["address"], addr.as_str());
    assert_eq!(stored["version"], 1);
    let metrics = read(&net.path("run/metrics.prom"));
    assert!(
        metrics.contains(&format!("mirage_dhcp_bound{{interface=\"{CLIENT_IF}\"}} 1\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "mirage_dhcp_sandbox{{interface=\"veth-c\",kind=\"{sandbox}\"}} 1"
        )),
        "{metrics}"
    );
    assert_eq!(status["sandbox"], sandbox);
    let reason = status["sandbox_reason"].as_str().unwrap();
    assert!(reason.starts_with(&format!("--sandbox {sandbox}")), "{reason}");
    if sandbox == "kvm" {
        assert!(reason.contains("the guest booted and answered"), "{reason}");
        assert!(
            net.client_log()
                .lines()
                .any(|l| l.contains("[engine]") && l.contains("engine runs as a KVM guest")),
            "{}",
            net.client_log()
        );
    }
    // The engine saw one offer and one ack, and nothing was refused.
    assert_eq!(status["counters"]["offers"], 1);
    assert_eq!(status["counters"]["acks"], 1);
    assert_eq!(status["frames_refused"], 0);
    assert_eq!(status["intents_refused"], 0);
    net.signal(daemon, "TERM");
    assert!(
        net.wait_exit(daemon, Duration::from_secs(5))
            .is_some_and(|s| s.success())
    );
    // Default: the address stays after a stop (kernel lifetime still runs).
    assert_eq!(net.client_addrs(), vec![format!("{addr}/24")]);
}

/// `--resolv-conf-nameserver`: resolv.conf names the local stub only (the
/// lease's search domains kept), while servers.json still carries the
/// lease's DNS servers for the stub to forward to (docs/operators.md).
#[test]
fn resolv_conf_names_the_stub_and_servers_json_the_learned_servers() {
    let mut net = Net::new();
    net.sandbox = Some("seccomp");
    net.start_dnsmasq(
        "120",
        &["--dhcp-option=option:domain-search,corp.example,example.org"],
    );
    net.start_client(&["--resolv-conf-nameserver", "127.0.0.53"]);
    net.wait_state("bound", BOUND_WITHIN);
    let resolv = read(&net.path("resolv.conf"));
    let body: Vec<&str> = resolv.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        body,
        ["search corp.example example.org", "nameserver 127.0.0.53"],
        "{resolv}"
    );
    let servers: serde_json::Value = serde_json::from_str(&read(&net.path("run/servers.json"))).unwrap();
    assert_eq!(servers["dns"], serde_json::json!([net.server_ip.as_str()]));
    assert_eq!(
        servers["search"],
        serde_json::json!(["corp.example", "example.org"])
    );
}

fn oneshot_exits_zero_once_applied(sandbox: &'static str) {
    let mut net = Net::new();
    net.sandbox = Some(sandbox);
    net.start_dnsmasq("120", &[]);
    let daemon = net.start_client(&["--oneshot", "--timeout", "20"]);
    let st = net
        .wait_exit(daemon, Duration::from_secs(25))
        .expect("oneshot did not exit");
    assert!(st.success(), "exit {st:?}\n{}", net.client_log());
    assert_eq!(net.client_addrs().len(), 1);
}

fn short_lease_is_renewed(sandbox: &'static str) {
    let mut net = Net::new();
    net.sandbox = Some(sandbox);
    // dnsmasq's minimum lease is 120 s but it sends the T1/T2 we set.
    net.start_dnsmasq("120", &["--dhcp-option=option:T1,2", "--dhcp-option=option:T2,4"]);
    // The default 20 s lease floor would raise T1 to 10 s; 4 s keeps 2 s.
    net.start_client(&["--min-lease-secs", "4"]);
    net.wait_state("bound", BOUND_WITHIN);
    let addr = net.client_addrs();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = net.status().unwrap();
        if s["counters"]["renewals"].as_u64().unwrap_or(0) >= 2 {
            assert_eq!(s["state"], "bound");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no renewals: {s}\n{}",
            net.client_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        net.client_addrs(),
        addr,
        "the address changed or vanished during renewals"
    );
}

fn restart_keeps_the_address_without_a_gap(sandbox: &'static str) {
    let mut net = Net::new();
    net.sandbox = Some(sandbox);
    net.start_dnsmasq("120", &[]);
    let first = net.start_client(&[]);
    net.wait_state("bound", BOUND_WITHIN);
    let addr = net.client_addrs();
    // Watch every address event in the client namespace from now on (the
    // watch returns once the monitor is subscribed).
    let watch = net.watch_addresses();
    net.signal(first, "TERM");
    assert!(net.wait_exit(first, Duration::from_secs(5)).is_some());
    std::fs::remove_file(net.path("run/status.json")).unwrap();
    net.start_client(&[]);
    let status = net.wait_state("bound", BOUND_WITHIN);
    // Every event up to the bind is in the watch's log when it answers.
    let deleted = watch.deletions();
    assert!(
        deleted.is_empty(),
        "the address disappeared during the restart: {deleted:?}"
    );
    assert_eq!(net.client_addrs(), addr);
    // The restarted daemon verified the stored lease instead of a new DISCOVER.
    assert_eq!(status["counters"]["offers"], 0, "{status}");
}

fn killed_engine_is_restarted_and_the_lease_goes_on(sandbox: &'static str) {
    let mut net = Net::new();
    net.sandbox = Some(sandbox);
    net.start_dnsmasq("120", &["--dhcp-option=option:T1,3", "--dhcp-option=option:T2,5"]);
    let daemon = net.start_client(&[]);
    net.wait_state("bound", BOUND_WITHIN);
    let addr = net.client_addrs();
    let engine = net
        .role_pids(daemon)
        .into_iter()
        .find(|(r, _)| r == "engine")
        .expect("engine role")
        .1;
    support::run(Command::new("kill").args(["-9", &engine.to_string()]));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = net.status().unwrap();
        if s["engine_restarts"].as_u64().unwrap_or(0) >= 1 && s["state"] == "bound" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "engine not restarted: {s}\n{}",
            net.client_log()
        );
        assert_eq!(
            net.client_addrs(),
            addr,
            "the address vanished while the engine was down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let new_engine = net
        .role_pids(daemon)
        .into_iter()
        .find(|(r, _)| r == "engine")
        .expect("engine role")
        .1;
    assert_ne!(new_engine, engine);
    assert_eq!(net.client_addrs(), addr);
}

fn roles_run_with_the_privileges_the_design_says(sandbox: &'static str) {
    let mut net = Net::new();
    net.sandbox = Some(sandbox);
    net.start_dnsmasq("120", &[]);
    let daemon = net.start_client(&[]);
    net.wait_state("bound", BOUND_WITHIN);
    let roles = net.role_pids(daemon);
    assert_eq!(roles.len(), 3, "{roles:?}");
    for (role, pid) in roles {
        let status = mirage_testkit::procfs::ProcStatus::read(pid);
        let field = |k: &str| status.words(k);
        // One id per role, none of them `nobody`'s.
        let id = match role.as_str() {
            "network" => support::NETWORK_ID,
            "engine" => support::ENGINE_ID,
            _ => support::ACTUATOR_ID,
        };
        assert_eq!(field("Uid"), format!("{id} {id} {id} {id}"), "{role}");
        assert_eq!(field("Gid"), format!("{id} {id} {id} {id}"), "{role}");
        assert_eq!(field("NoNewPrivs"), "1", "{role}");
        assert_eq!(field("Seccomp"), "2", "{role}: seccomp filter mode");
        assert_eq!(field("CapBnd"), "0000000000000000", "{role}");
        assert_eq!(field("CapInh"), "0000000000000000", "{role}");
        assert_eq!(field("CapAmb"), "0000000000000000", "{role}");
        // CAP_NET_ADMIN is bit 12.
        let want = if role == "actuator" {
            "0000000000001000"
        } else {
            "0000000000000000"
        };
        assert_eq!(field("CapEff"), want, "{role}");
        assert_eq!(field("CapPrm"), want, "{role}");
    }
}

/// The binary's layout by process (build.rs,
/// `mirage_kvm_build::link_by_process`): once bound, no role has the
/// supervisor's command-line and configuration code resident, only an
/// engine that runs a guest has the KVM tender's code resident, and no
/// process keeps the guest image's pages once its guest is built (the
/// supervisor's probe, the engine's VM). The supervisor's own code and the
/// tender's, where they run, are resident: the test reads the right pages.
fn each_process_has_resident_only_the_segments_it_uses(sandbox: &'static str) {
    let mut net = Net::new();
    net.sandbox = Some(sandbox);
    net.start_dnsmasq("120", &[]);
    let daemon = net.start_client(&[]);
    net.wait_state("bound", BOUND_WITHIN);
    let bin = std::fs::canonicalize(support::bin()).unwrap();
    let mut procs = net.role_pids(daemon);
    assert_eq!(procs.len(), 3, "{procs:?}");
    procs.push(("supervisor".into(), net.child_pid(daemon)));
    mirage_testkit::layout::assert_resident_only_where_used(&bin, &procs, sandbox);
}

/// The slow one (dnsmasq will not lease for less than 120 s): the server
/// vanishes, the client rebinds at T2 and removes the address at expiry.
fn server_gone_rebinds_then_removes_the_address_at_expiry(sandbox: &'static str) {
    let mut net = Net::new();
    net.sandbox = Some(sandbox);
    let server = net.start_dnsmasq(
        "120",
        &["--dhcp-option=option:T1,5", "--dhcp-option=option:T2,10"],
    );
    net.start_client(&[]);
    let status = net.wait_state("bound", BOUND_WITHIN);
    let bound_at = Instant::now();
    let remaining = status["lease"]["remaining_secs"].as_u64().unwrap();
    net.signal(server, "KILL");
    net.wait_state("rebinding", Duration::from_secs(20));
    // Still there while the lease is valid.
    assert_eq!(net.client_addrs().len(), 1);
    support::wait_until(Duration::from_secs(remaining + 10), || {
        net.client_addrs().is_empty()
    });
    let gone_after = bound_at.elapsed().as_secs();
    assert!(
        gone_after + 3 >= remaining && gone_after <= remaining + 3,
        "removed after {gone_after} s, lease had {remaining} s"
    );
    support::wait_until(Duration::from_secs(5), || {
        net.status()
            .is_some_and(|s| s["counters"]["expiries"].as_u64() >= Some(1) && s["state"] != "bound")
    });
    assert!(
        !net.client_routes().contains("default"),
        "{}",
        net.client_routes()
    );
}

/// The default, `auto`: where the KVM device cannot be opened (here a
/// configured path that does not exist) the engine runs under seccomp, and
/// status.json says why; `--sandbox kvm` with the same device fails at
/// start, naming it.
#[test]
fn auto_falls_back_to_seccomp_where_kvm_is_unusable() {
    let mut net = Net::new();
    net.start_dnsmasq("120", &[]);
    let missing = net.path("no-such-kvm");
    let config = net.path("config.toml");
    std::fs::write(&config, format!("kvm_device = \"{}\"\n", missing.display())).unwrap();
    let config = config.display().to_string();

    let refused = net.start_client(&["--config", &config, "--sandbox", "kvm"]);
    let st = net
        .wait_exit(refused, Duration::from_secs(10))
        .expect("--sandbox kvm without a device did not exit");
    assert!(!st.success());
    let log = net.client_log();
    assert!(
        log.contains("--sandbox kvm: KVM is unusable here") && log.contains(&missing.display().to_string()),
        "{log}"
    );
    assert!(net.status().is_none(), "a refused start published a status");

    net.start_client(&["--config", &config]);
    let status = net.wait_state("bound", BOUND_WITHIN);
    assert_eq!(status["sandbox"], "seccomp");
    let reason = status["sandbox_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("--sandbox auto: kvm unusable") && reason.contains(&missing.display().to_string()),
        "{reason}"
    );
    let started = net
        .client_log()
        .lines()
        .find(|l| l.contains("started on"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        started.contains("sandbox seccomp: --sandbox auto: kvm unusable"),
        "{started}"
    );
}

/// `auto` with a usable device: the engine is a guest.
#[test]
fn auto_runs_the_engine_as_a_guest_where_kvm_works() {
    if !mirage_testkit::kvm::usable("dnsmasq::auto_runs_the_engine_as_a_guest_where_kvm_works") {
        return;
    }
    let mut net = Net::new();
    net.start_dnsmasq("120", &[]);
    net.start_client(&[]);
    let status = net.wait_state("bound", BOUND_WITHIN);
    assert_eq!(status["sandbox"], "kvm", "{}", net.client_log());
    let reason = status["sandbox_reason"].as_str().unwrap();
    assert!(reason.starts_with("--sandbox auto: /dev/kvm opens"), "{reason}");
}
