//! mirage-dns as a system container, in a real runtime: podman with runc,
//! the image built by the reproducible writer (crates/oci-image) from this
//! build's binary, twice (same bytes), and loaded through the `oci:`
//! transport (no registry); run as docs/operators.md runs it (uid 65531,
//! `CAP_NET_BIND_SERVICE` only, ambient, no_new_privs, read-only root,
//! nofile 4096, the convention's binds), in a network namespace the test
//! creates, where unbound answers a local zone on 127.0.0.1:5300. The
//! container listens on its default 127.0.0.53:53 (port 53: the capability
//! is needed, the namespace keeps ip_unprivileged_port_start at 1024) and
//! must answer as unbound does, then from its cache; every process's uid,
//! capabilities and filter are read from the host's /proc.
//!
//! Needs root (network namespaces, podman's rootful storage), podman, runc
//! and unbound (CI installs them). Every podman call is bounded by
//! `timeout`, and the container and the image are removed in `Drop`, also
//! when the test fails.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use dns_wire::{Rcode, Type};
use mirage_testkit::cmd::read_lossy;
use mirage_testkit::container::{
    Podman, Run, ServiceDirs, assert_containerfile_builds_the_same_config, assert_role_confined,
    assert_supervisor_keeps_nothing, chown_to, container_pid, effective_caps, image_config, podman_ok,
    reproducible_layout, stop_cleanly, write_layout,
};
use mirage_testkit::netns::{in_netns, unique_id};
use mirage_testkit::procfs::roles_of;
use mirage_testkit::tempdir::TestDir;
use mirage_testkit::wait::wait_some;
use oci_image::MIRAGE_DNS;
use support::{UPSTREAM_PORT, ask_tcp, ask_udp, query, with_unbound};

/// The image's user (every process in the container).
const SERVICE_ID: u32 = MIRAGE_DNS.id;
/// Capability bit (linux/capability.h).
const CAP_NET_BIND_SERVICE: u64 = 1 << 10;

#[test]
fn image_answers_through_unbound_with_net_bind_service_dropped_everywhere() {
    // Dropped last (declared first): unbound, the namespace, the directory.
    let f = with_unbound("dnsk");
    let mut pm = Podman::default();

    // The reproducible build, imported through the oci: transport;
    // podman's image id is the config digest.
    let (layout, written) = reproducible_layout(&MIRAGE_DNS, &support::bin(), f.dir.path());
    let id = pm.pull(&layout, &written);
    let config = image_config(&id);
    assert_eq!(config["User"], "65531:65531");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/mirage-dns"]));
    let moby: serde_json::Value =
        serde_json::from_str(config["Labels"]["org.mobyproject.config"].as_str().unwrap()).unwrap();
    assert_eq!(moby, MIRAGE_DNS.linuxkit_config());

    // The binds of the convention, owned as the operator makes them; the
    // upstream comes from the read-only config file (proves that bind).
    let dirs = ServiceDirs::new(f.dir.path(), &MIRAGE_DNS);
    std::fs::write(
        dirs.etc.join("config.toml"),
        format!("upstreams = [\"127.0.0.1:{UPSTREAM_PORT}\"]\n"),
    )
    .unwrap();
    let name = format!("mirage-dns-test-{}", std::process::id());
    // The service's own descriptor limit, not the runtime's 1024.
    assert_eq!(MIRAGE_DNS.ulimits(), ["nofile=4096:4096"]);
    let run = dirs.bound(Run::new(&MIRAGE_DNS, f.ns.name()));
    run.detached(&mut pm, &name, &id, &["run", "--log-level", "debug"]);
    wait_some(
        Duration::from_secs(60),
        "the forwarder's first status, published through the run bind",
        || dirs.status().filter(|v| v["listen"][0] == "127.0.0.53:53"),
        || pm.logs(&name),
    );

    // Queries from the namespace: the same answer as unbound's, over UDP
    // and TCP, then a repeat from the cache.
    let ns = f.ns.name().to_owned();
    in_netns(&ns, move || {
        let unbound: SocketAddr = format!("127.0.0.1:{UPSTREAM_PORT}").parse().unwrap();
        let ours: SocketAddr = "127.0.0.53:53".parse().unwrap();
        let q = query(0x4401, "a.test", Type::A, true);
        let want = ask_udp(unbound, &q).expect("unbound answers");
        let got = ask_udp(ours, &q).expect("mirage-dns in the container answers");
        assert_eq!(got.header.id, 0x4401);
        assert_eq!(got.rcode(), Rcode::NOERROR);
        assert_eq!(
            format!("{:?}", got.answers.iter().map(|r| &r.data).collect::<Vec<_>>()),
            format!("{:?}", want.answers.iter().map(|r| &r.data).collect::<Vec<_>>()),
        );
        assert!(
            format!("{:?}", got.answers[0].data).contains("192.0.2.10"),
            "{got:?}"
        );
        let nx = ask_udp(ours, &query(0x4402, "nx.test", Type::A, false)).expect("an answer");
        assert_eq!(nx.rcode(), Rcode::NXDOMAIN);
        let tcp = ask_tcp(ours, &[query(0x4403, "a.test", Type::AAAA, true)]);
        assert_eq!(tcp[0].header.id, 0x4403);
        assert_eq!(tcp[0].answers.len(), 1, "{:?}", tcp[0]);
        let again = ask_udp(ours, &query(0x4404, "a.test", Type::A, false)).expect("an answer");
        assert_eq!(again.answers.len(), 1);
    });
    let v = wait_some(
        Duration::from_secs(10),
        "the repeat counted as a cache hit in status.json",
        || {
            dirs.status()
                .filter(|v| v["engine"]["cache_hits"].as_u64() >= Some(1))
        },
        || pm.logs(&name),
    );
    assert_eq!(v["upstreams"][0], format!("127.0.0.1:{UPSTREAM_PORT}"), "{v}");
    assert_eq!(v["sandbox"], "seccomp", "{v}");
    assert_eq!(v["refused"], serde_json::json!({}), "nothing refused: {v}");
    assert!(read_lossy(&dirs.run.join("metrics.prom")).contains("mirage_dns_"));
    // Nothing is stored yet.
    assert_eq!(std::fs::read_dir(&dirs.state).unwrap().count(), 0);

    // What the container got, as podman reports it.
    assert_eq!(effective_caps(&name), ["CAP_NET_BIND_SERVICE"]);

    // What each process holds, read from the host's /proc: the service's
    // uid everywhere; CAP_NET_BIND_SERVICE in the bounding set only (the
    // supervisor bound port 53 with it, then dropped it from every other
    // set; no role ever holds it), each role under its filter.
    let sup_pid = container_pid(&name);
    assert_supervisor_keeps_nothing(sup_pid, SERVICE_ID, CAP_NET_BIND_SERVICE);
    let roles = roles_of(sup_pid);
    let names: Vec<&str> = roles.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["engine", "network"], "roles of {sup_pid}");
    for (role, pid) in &roles {
        assert_role_confined(role, *pid, SERVICE_ID, CAP_NET_BIND_SERVICE, 0);
    }
    // The network role's descriptor limit is its plan's, under the 4096
    // the container was given.
    let network = roles.iter().find(|(n, _)| n == "network").unwrap().1;
    let limits = std::fs::read_to_string(format!("/proc/{network}/limits")).unwrap();
    let open = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let nums: Vec<u64> = open.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(nums, [1106, 1106], "{open}");
    let logs = pm.logs(&name);
    assert!(
        logs.contains("not root: every role runs as 65531:65531"),
        "{logs}"
    );
    assert!(logs.contains("listening on 127.0.0.53:53"), "{logs}");

    // `status` inside the container reads the same file; SIGTERM ends it cleanly.
    let printed = podman_ok(&["exec", &name, "/mirage-dns", "status"]);
    assert!(printed.contains("127.0.0.1:5300"), "{printed}");
    stop_cleanly(&name);
    drop(pm);
    drop(f);
}

/// Without `CAP_NET_BIND_SERVICE` the container cannot take port 53 and
/// says so, instead of running half-started.
#[test]
fn without_the_capability_it_stops_at_the_bind_and_says_why() {
    let out = run_to_its_end(
        "dnsn",
        "container-test-no-capability",
        "nofile=4096:4096",
        true,
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("UDP listener on 127.0.0.53:53") && err.contains("Permission denied"),
        "{err}"
    );
}

/// A runtime's 1024 descriptors: the limits are fitted and said so, not a
/// network role restarted without end; a runtime directory uid 65531 cannot
/// write, and a limit below the minimum, each stop the container at start.
#[test]
fn a_low_descriptor_limit_is_fitted_and_start_up_errors_stop_the_container() {
    let caps = ["NET_BIND_SERVICE"];
    // 1024, and the runtime directory left to root.
    let out = run_to_its_end("dnsf", "container-test-fitted", "nofile=1024:1024", false, &caps);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("limits.upstream_sockets lowered from 1024 to 946, limits.tcp_clients from 64 to 60"),
        "{err}"
    );
    assert!(
        err.contains("runtime directory /run/mirage/dns: writing metrics.prom: Permission denied")
            && err.contains("chown 65531:65531 /run/mirage/dns"),
        "{err}"
    );
    assert!(!err.contains("restarting"), "{err}");
    // Too few for even the minimal network role.
    let out = run_to_its_end("dnsg", "container-test-too-few", "nofile=30:30", true, &caps);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("the descriptor limit (RLIMIT_NOFILE, hard) is 30"),
        "{err}"
    );
    assert!(!err.contains("restarting") && !err.contains("[network]"), "{err}");
}

/// The image run in the foreground in a namespace with unbound, with
/// `nofile` as its descriptor limit, its runtime directory given to the
/// service if `chown_run`, the capabilities `caps` (podman's names; none:
/// every capability dropped), until it ends (bounded by podman's timeout).
/// Each caller gives its own `revision`: the same binary and labels would
/// make the same image id, and one test's removal of it would remove the
/// other's running container with it.
fn run_to_its_end(tag: &str, revision: &str, nofile: &str, chown_run: bool, caps: &[&str]) -> Output {
    // Dropped in reverse: the image, the directory, unbound and its namespace.
    let f = with_unbound(tag);
    let ctx = TestDir::new(&format!("mirage-dns-{tag}"), &unique_id().0);
    let mut pm = Podman::default();
    let run = ctx.join("run");
    std::fs::create_dir_all(&run).unwrap();
    if chown_run {
        chown_to(&run, SERVICE_ID);
    }
    let layout = ctx.join("layout");
    let written = write_layout(&MIRAGE_DNS, &support::bin(), &layout, revision);
    let id = pm.pull(&layout, &written);
    Run::new(&MIRAGE_DNS, f.ns.name())
        .nofile(nofile)
        .capabilities(caps)
        .volume(&run, "/run/mirage/dns")
        .to_its_end(
            &id,
            &[
                "run",
                "--config",
                "/dev/null",
                "--upstream",
                &format!("127.0.0.1:{UPSTREAM_PORT}"),
            ],
        )
}

/// deploy/mirage-dns.Containerfile describes the same image as the
/// reproducible writer and runs `--version` with no capability.
#[test]
fn containerfile_builds_the_same_image_config() {
    let containerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mirage-dns.Containerfile");
    assert_containerfile_builds_the_same_config(&MIRAGE_DNS, &support::bin(), &containerfile);
}
