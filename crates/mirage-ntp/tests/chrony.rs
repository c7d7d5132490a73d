//! mirage-ntp end to end against chrony: chrony in server mode with `-x`
//! (it never touches the clock) on the loopback of a network namespace the
//! test creates, answering on 127.0.0.1 and ::1; the real binary in
//! `--observe`, so nothing here can move the host clock either. Needs root
//! (namespaces, the roles' privilege drop) and chronyd
//! (scripts/install-deps.sh); CI runs as root. Every case runs twice, under
//! `--sandbox seccomp` and `--sandbox kvm` (the engine as a KVM guest;
//! needs /dev/kvm, see `mirage_testkit::kvm`).

use std::path::Path;
use std::time::Duration;

use mirage_ntp::plan;
use mirage_testkit::cmd::read_lossy;
use mirage_testkit::netns::{Netns, unique_id};
use mirage_testkit::process::{Procs, Proto, wait_listening};
use mirage_testkit::procfs::{ProcStatus, kvm_fds, role_pid, roles_of};
use mirage_testkit::tempdir::TestDir;
use mirage_testkit::wait::wait_some;

fn bin() -> std::path::PathBuf {
    mirage_testkit::service_bin("MIRAGE_NTP_BIN", env!("CARGO_BIN_EXE_mirage-ntp"))
}

/// Dropped in field order: the processes, the namespace, the directory.
struct Fixture {
    procs: Procs,
    ns: Netns,
    dir: TestDir,
}

/// chronyd serving its (the host's) clock at stratum 8 in a fresh
/// namespace: no source of its own, `-x` (no clock control), no command
/// port, files in the test's directory.
fn with_chrony(tag: &str) -> Fixture {
    let (id, _) = unique_id();
    let ns = Netns::add_unique(tag);
    let dir = TestDir::new("mirage-ntp", &id);
    let conf = dir.join("chrony.conf");
    std::fs::write(
        &conf,
        format!(
            "allow all\nlocal stratum 8\nport 123\ncmdport 0\npidfile {0}/chronyd.pid\ndriftfile {0}/chrony.drift\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut procs = Procs::new();
    let mut cmd = ns.command("chronyd");
    cmd.args(["-x", "-d", "-u", "root", "-f"]).arg(&conf);
    procs.spawn_logged(cmd, &dir.join("chrony.log"));
    wait_listening(&ns, Proto::Udp, 123, Duration::from_secs(20));
    Fixture { procs, ns, dir }
}

fn status(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run/status.json")).ok()?).ok()
}

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
                if mirage_testkit::kvm::usable(concat!("chrony::", stringify!($case))) {
                    super::$case("kvm")
                }
            }
        }
    )*};
}

in_each_sandbox!(
    observing_it_agrees_with_chrony_over_ipv4_and_ipv6_and_its_roles_run_sandboxed,
    a_server_that_does_not_answer_is_unreachable_and_the_other_one_is_still_used,
    each_process_has_resident_only_the_segments_it_uses,
);

/// The binary's layout by process (build.rs,
/// `mirage_kvm_build::link_by_process`, as mirage-dhcp's): once measuring,
/// no role has the supervisor's command-line and configuration code
/// resident, only an engine that runs a guest has the KVM tender's code
/// resident, and no process keeps the guest image's pages once its guest is
/// built; the supervisor's own code, and the tender's where it runs, are.
fn each_process_has_resident_only_the_segments_it_uses(sandbox: &str) {
    let mut f = with_chrony("ntpl");
    let mut cmd = f.ns.command(bin().to_str().unwrap());
    cmd.args(["run", "--server", "127.0.0.1", "--observe", "--sandbox", sandbox])
        .args(["--config", "/dev/null", "--state-dir"])
        .arg(f.dir.join("state"))
        .arg("--run-dir")
        .arg(f.dir.join("run"));
    let daemon = f.procs.spawn_logged(cmd, &f.dir.join("ntp.log"));
    wait_some(
        Duration::from_secs(30),
        "an estimate",
        || {
            status(f.dir.path())
                .filter(|v| v["state"] == "observing" && v["sources"][0]["state"] == "selected")
        },
        || read_lossy(&f.dir.join("ntp.log")),
    );
    let pid = f.procs.pid(daemon);
    let mut procs = roles_of(pid);
    assert_eq!(procs.len(), 3, "{procs:?}");
    procs.push(("supervisor".into(), pid));
    let bin = std::fs::canonicalize(bin()).unwrap();
    mirage_testkit::layout::assert_resident_only_where_used(&bin, &procs, sandbox);
}

/// status.json's `sandbox` is the one asked for, with its reason; a guest's
/// tender logged that it runs one.
fn assert_sandbox(v: &serde_json::Value, sandbox: &str, log: &str) {
    assert_eq!(v["sandbox"], sandbox, "{v}");
    let reason = v["sandbox_reason"].as_str().unwrap();
    assert!(reason.starts_with(&format!("--sandbox {sandbox}")), "{reason}");
    let guest = log
        .lines()
        .any(|l| l.contains("[engine]") && l.contains("engine runs as a KVM guest"));
    assert_eq!(guest, sandbox == "kvm", "{log}");
    if sandbox == "kvm" {
        assert!(reason.contains("the guest booted and answered"), "{reason}");
    }
}

fn observing_it_agrees_with_chrony_over_ipv4_and_ipv6_and_its_roles_run_sandboxed(sandbox: &str) {
    let mut f = with_chrony("ntpc");
    let mut cmd = f.ns.command(bin().to_str().unwrap());
    cmd.args(["run", "--server", "127.0.0.1", "--server", "::1", "--observe"])
        .args(["--sandbox", sandbox])
        .args(["--config", "/dev/null", "--log-level", "debug", "--state-dir"])
        .arg(f.dir.join("state"))
        .arg("--run-dir")
        .arg(f.dir.join("run"));
    let daemon = f.procs.spawn_logged(cmd, &f.dir.join("ntp.log"));

    // Both sources selected: the estimate combines IPv4 and IPv6.
    let v = wait_some(
        Duration::from_secs(30),
        "an estimate from both sources",
        || {
            status(f.dir.path()).filter(|v| {
                v["state"] == "observing"
                    && v["sources"]
                        .as_array()
                        .is_some_and(|s| s.len() == 2 && s.iter().all(|s| s["state"] == "selected"))
            })
        },
        || read_lossy(&f.dir.join("ntp.log")),
    );
    // chrony serves this very clock: the offset is the measurement's error.
    let offset = v["offset_ms"].as_f64().unwrap();
    assert!(offset.abs() < 1.0, "offset {offset} ms: {v}");
    assert_eq!(v["synchronized"], false, "observing never disciplines: {v}");
    assert_eq!(v["stratum"], 9, "{v}");
    assert_eq!(v["leap"], "none");
    assert_eq!(v["observe"], true);
    assert_eq!(v["refused"], serde_json::json!({}), "no reply refused: {v}");
    assert_eq!(v["outbound_refused"], serde_json::json!({}), "{v}");
    assert_eq!(
        v["replies_without_kernel_stamp"], 0,
        "every reply kernel-stamped: {v}"
    );
    assert_eq!(v["clock"]["steerable"], false, "{v}");
    assert_eq!(
        v["clock"]["intents"],
        serde_json::json!({}),
        "observing asks for no clock change: {v}"
    );
    for s in v["sources"].as_array().unwrap() {
        assert_eq!(s["stratum"], 8, "{s}");
        assert!(s["reach"].as_u64().unwrap() > 0, "{s}");
        assert!(s["delay_ms"].as_f64().unwrap() < 50.0, "{s}");
        for key in ["offset_ms", "jitter_ms"] {
            assert!(s[key].as_f64().unwrap().abs() < 1.0, "{key}: {s}");
        }
        assert_eq!(s["poll_s"], 64, "{s}");
    }
    assert_sandbox(&v, sandbox, &read_lossy(&f.dir.join("ntp.log")));
    let addresses: Vec<&str> = v["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["address"].as_str().unwrap())
        .collect();
    assert_eq!(addresses, ["127.0.0.1:123", "[::1]:123"]);
    let metrics = std::fs::read_to_string(f.dir.join("run/metrics.prom")).unwrap();
    for line in [
        "mirage_ntp_state{state=\"observing\"} 1",
        "mirage_ntp_stratum 9",
        "mirage_ntp_source_reach{address=\"[::1]:123\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing in\n{metrics}");
    }

    // The roles: their own ids, no capability (observing), their filters.
    let pid = f.procs.pid(daemon);
    let names: Vec<String> = roles_of(pid).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["actuator", "engine", "network"]);
    for (role, id) in [
        ("engine", plan::ENGINE_ID),
        ("network", plan::NETWORK_ID),
        ("actuator", plan::ACTUATOR_ID),
    ] {
        let st = ProcStatus::read(role_pid(pid, role));
        assert_eq!(st.uids(), [id; 4], "{role}");
        assert_eq!(st.gids(), [id; 4], "{role}");
        assert_eq!(st.seccomp(), 2, "{role} runs under its filter");
        assert!(st.no_new_privs(), "{role}");
        for set in ["CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"] {
            assert_eq!(st.caps(set), 0, "{role} {set}");
        }
        let want_fds: &[&str] = match (role, sandbox) {
            ("engine", "kvm") => &["anon_inode:kvm-vcpu:0", "anon_inode:kvm-vm"],
            _ => &[],
        };
        assert_eq!(kvm_fds(role_pid(pid, role)), want_fds, "{role}");
    }

    // A killed engine is started again in the same sandbox (a guest gets
    // the kept device) and goes on measuring.
    let engine = role_pid(pid, "engine");
    let replies = v["replies"].as_u64().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &engine.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let v = wait_some(
        Duration::from_secs(30),
        "a restarted engine's replies",
        || {
            status(f.dir.path()).filter(|v| {
                v["engine_restarts"] == 1
                    && v["replies"].as_u64() > Some(replies)
                    && v["state"] == "observing"
            })
        },
        || read_lossy(&f.dir.join("ntp.log")),
    );
    assert_eq!(v["sandbox"], sandbox, "{v}");
    let restarted = role_pid(pid, "engine");
    assert_ne!(restarted, engine);
    assert_eq!(ProcStatus::read(restarted).seccomp(), 2);
    let want_fds: &[&str] = match sandbox {
        "kvm" => &["anon_inode:kvm-vcpu:0", "anon_inode:kvm-vm"],
        _ => &[],
    };
    assert_eq!(kvm_fds(restarted), want_fds);

    // `status --json` reads what was published; SIGTERM ends it cleanly.
    let out = std::process::Command::new(bin())
        .args(["status", "--json", "--run-dir"])
        .arg(f.dir.join("run"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["state"], "observing");
    let out = std::process::Command::new(bin())
        .args(["status", "--run-dir"])
        .arg(f.dir.join("run"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("sandbox") && l.contains(&format!("{sandbox} (--sandbox {sandbox}"))),
        "{text}"
    );
    f.procs.signal(daemon, "TERM");
    let exit = f
        .procs
        .wait_exit(daemon, Duration::from_secs(10))
        .expect("stops on SIGTERM");
    assert!(exit.success(), "{exit:?}: {}", read_lossy(&f.dir.join("ntp.log")));
}

fn a_server_that_does_not_answer_is_unreachable_and_the_other_one_is_still_used(sandbox: &str) {
    let mut f = with_chrony("ntpu");
    let mut cmd = f.ns.command(bin().to_str().unwrap());
    // 127.0.0.2 is on lo but nothing listens on its port 1123.
    cmd.args([
        "run",
        "--server",
        "127.0.0.1",
        "--server",
        "127.0.0.2:1123",
        "--observe",
    ])
    .args(["--sandbox", sandbox, "--config", "/dev/null", "--state-dir"])
    .arg(f.dir.join("state"))
    .arg("--run-dir")
    .arg(f.dir.join("run"));
    f.procs.spawn_logged(cmd, &f.dir.join("ntp.log"));
    // Two configured sources need both to agree: one silent server leaves
    // the estimate out (never a minority of one steering), and says why.
    let v = wait_some(
        Duration::from_secs(30),
        "the answering source as a candidate",
        || {
            status(f.dir.path()).filter(|v| {
                v["sources"][0]["state"] == "candidate" && v["sources"][0]["reach"].as_u64() >= Some(3)
            })
        },
        || read_lossy(&f.dir.join("ntp.log")),
    );
    assert_eq!(v["state"], "not-enough-sources", "{v}");
    assert_eq!(v["sources"][1]["state"], "unreachable", "{v}");
    assert_eq!(v["sources"][1]["reach"], 0, "{v}");
    assert_eq!(v["quorum"], 2, "{v}");
    assert_sandbox(&v, sandbox, &read_lossy(&f.dir.join("ntp.log")));
}

/// The default, `auto`: where the KVM device cannot be opened (here a
/// configured path that does not exist) the engine runs under seccomp and
/// status.json says why; `--sandbox kvm` with the same device fails at
/// start, naming it. Needs root and chronyd, not KVM.
#[test]
fn auto_falls_back_to_seccomp_where_kvm_is_unusable() {
    let mut f = with_chrony("ntpa");
    let missing = f.dir.join("no-such-kvm");
    let config = f.dir.join("config.toml");
    std::fs::write(&config, format!("kvm_device = \"{}\"\n", missing.display())).unwrap();
    let run = |sandbox: Option<&str>, log: &str| {
        let mut cmd = f.ns.command(bin().to_str().unwrap());
        cmd.args(["run", "--server", "127.0.0.1", "--observe", "--config"])
            .arg(&config)
            .args(sandbox.map(|s| ["--sandbox", s]).into_iter().flatten())
            .arg("--state-dir")
            .arg(f.dir.join("state"))
            .arg("--run-dir")
            .arg(f.dir.join("run"));
        (cmd, f.dir.join(log))
    };

    let (cmd, refused_log) = run(Some("kvm"), "refused.log");
    let refused = f.procs.spawn_logged(cmd, &refused_log);
    let exit = f
        .procs
        .wait_exit(refused, Duration::from_secs(10))
        .expect("--sandbox kvm without a device did not exit");
    assert!(!exit.success());
    let log = read_lossy(&refused_log);
    assert!(
        log.contains("--sandbox kvm: KVM is unusable here") && log.contains(&missing.display().to_string()),
        "{log}"
    );
    assert!(
        status(f.dir.path()).is_none(),
        "a refused start published a status"
    );

    let (cmd, log) = run(None, "ntp.log");
    f.procs.spawn_logged(cmd, &log);
    let v = wait_some(
        Duration::from_secs(30),
        "a published status",
        || status(f.dir.path()),
        || read_lossy(&log),
    );
    assert_eq!(v["sandbox"], "seccomp", "{v}");
    let reason = v["sandbox_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("--sandbox auto: kvm unusable") && reason.contains(&missing.display().to_string()),
        "{reason}"
    );
    let logged = read_lossy(&log);
    assert!(
        logged.contains("sandbox seccomp: --sandbox auto: kvm unusable"),
        "{logged}"
    );
}

/// `auto` with a usable device: the engine is a guest. Needs root, chronyd
/// and /dev/kvm (`mirage_testkit::kvm`).
#[test]
fn auto_runs_the_engine_as_a_guest_where_kvm_works() {
    if !mirage_testkit::kvm::usable("chrony::auto_runs_the_engine_as_a_guest_where_kvm_works") {
        return;
    }
    let mut f = with_chrony("ntpk");
    let mut cmd = f.ns.command(bin().to_str().unwrap());
    cmd.args(["run", "--server", "127.0.0.1", "--observe"])
        .args(["--config", "/dev/null", "--state-dir"])
        .arg(f.dir.join("state"))
        .arg("--run-dir")
        .arg(f.dir.join("run"));
    f.procs.spawn_logged(cmd, &f.dir.join("ntp.log"));
    let v = wait_some(
        Duration::from_secs(30),
        "a reply counted",
        || status(f.dir.path()).filter(|v| v["replies"].as_u64() >= Some(1)),
        || read_lossy(&f.dir.join("ntp.log")),
    );
    assert_eq!(v["sandbox"], "kvm", "{v}");
    let reason = v["sandbox_reason"].as_str().unwrap();
    assert!(reason.starts_with("--sandbox auto: /dev/kvm opens"), "{reason}");
}

/// dnsmasq as the namespace's resolver (on 127.0.0.53, from a hosts file:
/// `pool.test` is 127.0.0.1-3, `ntp1.test` 127.0.0.4, every one of them
/// chronyd, which listens on all of lo's addresses), named by a
/// resolv.conf the config file points at (`resolv_conf`).
#[test]
fn a_pool_and_a_host_name_are_resolved_by_the_engine_through_dnsmasq() {
    let mut f = with_chrony("ntpn");
    std::fs::write(
        f.dir.join("hosts"),
        "127.0.0.1 pool.test\n127.0.0.2 pool.test\n127.0.0.3 pool.test\n127.0.0.4 ntp1.test\n",
    )
    .unwrap();
    let mut dns = f.ns.command("dnsmasq");
    dns.args([
        "-k",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.53",
    ])
    .args(["-p", "53", "-u", "root", "--log-queries"])
    .arg(format!("--addn-hosts={}", f.dir.join("hosts").display()))
    .arg(format!("--pid-file={}", f.dir.join("dnsmasq.pid").display()))
    .arg(format!("--log-facility={}", f.dir.join("dnsmasq.log").display()));
    f.procs.spawn_logged(dns, &f.dir.join("dnsmasq.out"));
    wait_listening(&f.ns, Proto::Udp, 53, Duration::from_secs(20));
    std::fs::write(
        f.dir.join("resolv.conf"),
        "# resolv.conf(5): only nameserver lines count\nsearch test\nnameserver 127.0.0.53\n",
    )
    .unwrap();
    std::fs::write(
        f.dir.join("config.toml"),
        format!("resolv_conf = \"{}\"\n", f.dir.join("resolv.conf").display()),
    )
    .unwrap();
    let mut cmd = f.ns.command(bin().to_str().unwrap());
    cmd.args(["run", "--pool", "pool.test", "--server", "ntp1.test", "--observe"])
        .arg("--config")
        .arg(f.dir.join("config.toml"))
        .args(["--log-level", "debug", "--state-dir"])
        .arg(f.dir.join("state"))
        .arg("--run-dir")
        .arg(f.dir.join("run"));
    let daemon = f.procs.spawn_logged(cmd, &f.dir.join("ntp.log"));
    let v = wait_some(
        Duration::from_secs(30),
        "an estimate from the four resolved sources",
        || {
            status(f.dir.path()).filter(|v| {
                // Four that agree; clustering may leave one a candidate.
                v["state"] == "observing"
                    && v["sources"].as_array().is_some_and(|s| {
                        s.len() == 4
                            && s.iter()
                                .all(|s| s["state"] == "selected" || s["state"] == "candidate")
                            && s.iter().filter(|s| s["state"] == "selected").count() >= 3
                    })
            })
        },
        || {
            format!(
                "{}\nstatus: {:?}\ndnsmasq: {}",
                read_lossy(&f.dir.join("ntp.log")),
                status(f.dir.path()),
                read_lossy(&f.dir.join("dnsmasq.log"))
            )
        },
    );
    let mut by_origin: Vec<(String, String, String)> = v["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["origin"].as_str().unwrap().to_string(),
                s["name"].as_str().unwrap_or("").to_string(),
                s["address"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    by_origin.sort();
    let want: Vec<(String, String, String)> = [
        ("pool", "pool.test", "127.0.0.1:123"),
        ("pool", "pool.test", "127.0.0.2:123"),
        ("pool", "pool.test", "127.0.0.3:123"),
        ("server", "ntp1.test", "127.0.0.4:123"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(by_origin, want, "{v}");
    for s in v["sources"].as_array().unwrap() {
        assert_eq!(s["stratum"], 8, "{s}");
        assert!(s["offset_ms"].as_f64().unwrap().abs() < 1.0, "{s}");
    }
    let names = v["names"].as_array().unwrap();
    assert_eq!(names.len(), 2, "{v}");
    assert_eq!(
        (names[0]["name"].as_str(), names[0]["sources"].as_u64()),
        (Some("ntp1.test"), Some(1)),
        "{v}"
    );
    assert_eq!(
        (names[1]["name"].as_str(), names[1]["sources"].as_u64()),
        (Some("pool.test"), Some(3)),
        "{v}"
    );
    assert!(names.iter().all(|n| n["failures"] == 0), "{v}");
    // Two lookups, each an A and an AAAA query: four answers, none refused.
    assert_eq!(v["dns_answers"], 4, "{v}");
    assert_eq!(v["refused"], serde_json::json!({}), "nothing refused: {v}");
    assert_eq!(v["outbound_refused"], serde_json::json!({}), "{v}");
    assert_eq!(
        v["replies_without_kernel_stamp"], 0,
        "every reply kernel-stamped: {v}"
    );
    let queries = read_lossy(&f.dir.join("dnsmasq.log"));
    let asked: Vec<&str> = queries.lines().filter(|l| l.contains("query[")).collect();
    println!("dnsmasq saw: {asked:#?}");
    assert_eq!(asked.len(), 4, "{queries}");
    // 0x20: the engine asked with letters in random case (dnsmasq logs
    // the name as asked); four all-lower-case queries would be 2^-32 luck.
    let asked_names: Vec<&str> = asked
        .iter()
        .filter_map(|l| l.split("] ").nth(1)?.split(' ').next())
        .collect();
    assert_eq!(asked_names.len(), 4, "{queries}");
    for n in &asked_names {
        assert!(
            n.eq_ignore_ascii_case("pool.test") || n.eq_ignore_ascii_case("ntp1.test"),
            "{n}"
        );
    }
    assert!(
        asked_names
            .iter()
            .any(|n| n.chars().any(|c| c.is_ascii_uppercase())),
        "{asked_names:?}"
    );
    // `status` prints a line per name.
    let out = std::process::Command::new(bin())
        .args(["status", "--run-dir"])
        .arg(f.dir.join("run"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("pool.test sources 3"), "{text}");
    assert!(text.contains("ntp1.test sources 1"), "{text}");
    // The roles' filters held all along (the daemon runs on), and it stops
    // cleanly.
    f.procs.signal(daemon, "TERM");
    let exit = f
        .procs
        .wait_exit(daemon, Duration::from_secs(10))
        .expect("stops on SIGTERM");
    assert!(exit.success(), "{exit:?}: {}", read_lossy(&f.dir.join("ntp.log")));
}

/// The config file's poll bounds reach the engine: with `min_poll = 4` a
/// source is polled every 16 s from the start (status.json's `poll_s`),
/// where the default would be 64 s; a bound out of range stops the start
/// with an error that names the key. Needs root and chronyd.
#[test]
fn the_poll_bounds_of_the_config_file_are_used_and_checked() {
    let mut f = with_chrony("ntpp");
    let run = |config: &str, log: &str| {
        let path = f.dir.join(&format!("{log}.toml"));
        std::fs::write(&path, config).unwrap();
        let mut cmd = f.ns.command(bin().to_str().unwrap());
        cmd.args([
            "run",
            "--server",
            "127.0.0.1",
            "--observe",
            "--sandbox",
            "seccomp",
        ])
        .arg("--config")
        .arg(&path)
        .arg("--state-dir")
        .arg(f.dir.join("state"))
        .arg("--run-dir")
        .arg(f.dir.join("run"));
        (cmd, f.dir.join(log))
    };

    let (cmd, log) = run("min_poll = 3\n", "bad.log");
    let bad = f.procs.spawn_logged(cmd, &log);
    let exit = f
        .procs
        .wait_exit(bad, Duration::from_secs(10))
        .expect("min_poll = 3 did not stop the start");
    assert!(!exit.success());
    let logged = read_lossy(&log);
    assert!(
        logged.contains("min_poll: 3 is out of range: must be 4..=17"),
        "{logged}"
    );
    assert!(
        status(f.dir.path()).is_none(),
        "a refused start published a status"
    );

    let (cmd, log) = run("min_poll = 4\nmax_poll = 5\n", "ntp.log");
    f.procs.spawn_logged(cmd, &log);
    let v = wait_some(
        Duration::from_secs(30),
        "an estimate",
        || status(f.dir.path()).filter(|v| v["state"] == "observing"),
        || read_lossy(&log),
    );
    let sources = v["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1, "{v}");
    assert_eq!(sources[0]["poll_s"], 16, "{v}");
    assert_eq!(v["poll_s"], 16, "{v}");
}

/// A runtime directory the supervisor cannot write (someone else's: it
/// keeps no CAP_DAC_OVERRIDE) stops the start with an error that names the
/// directory, instead of a client that runs without its status files.
/// Needs root.
#[test]
fn an_unwritable_runtime_directory_stops_the_service_at_start() {
    let (id, _) = unique_id();
    let ns = Netns::add_unique("ntpw");
    let dir = TestDir::new("mirage-ntp", &id);
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(65534), Some(65534)).unwrap();
    let mut procs = Procs::new();
    let mut cmd = ns.command(bin().to_str().unwrap());
    cmd.args([
        "run",
        "--server",
        "127.0.0.1",
        "--observe",
        "--sandbox",
        "seccomp",
    ])
    .args(["--config", "/dev/null", "--state-dir"])
    .arg(dir.join("state"))
    .arg("--run-dir")
    .arg(&run);
    let log = dir.join("ntp.log");
    let daemon = procs.spawn_logged(cmd, &log);
    let exit = procs
        .wait_exit(daemon, Duration::from_secs(20))
        .expect("stops at start");
    let logged = read_lossy(&log);
    assert!(!exit.success(), "{logged}");
    let want = format!(
        "runtime directory {}: writing metrics.prom: Permission denied",
        run.display()
    );
    assert!(logged.contains(&want), "{logged}");
    assert!(status(dir.path()).is_none(), "{logged}");
}
