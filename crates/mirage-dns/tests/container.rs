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
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use dns_wire::{Rcode, Type};
use mirage_testkit::cmd::read_lossy;
use mirage_testkit::netns::{in_netns, unique_id};
use mirage_testkit::procfs::{ProcStatus, roles_of};
use mirage_testkit::tempdir::TestDir;
use mirage_testkit::wait::wait_some;
use oci_image::{LayerCompression, MIRAGE_DNS, Meta};
use support::{UPSTREAM_PORT, ask_tcp, ask_udp, query, with_unbound};

/// Bound on any one podman command (image import, start, stop).
const PODMAN_TIMEOUT_SECS: &str = "120";
/// The image's user (every process in the container).
const SERVICE_ID: u32 = MIRAGE_DNS.id;
/// Capability bit (linux/capability.h).
const CAP_NET_BIND_SERVICE: u64 = 1 << 10;

/// podman as CI can run it: runc (crun fails on hosts with hybrid cgroups)
/// and explicit rlimits (podman otherwise copies the host's, which a host
/// without CAP_SYS_RESOURCE cannot grant).
fn podman(args: &[&str]) -> Output {
    // One at a time within this file: an image inspected while another
    // test's image is removed once failed with "locating item named
    // manifest" (podman's store).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    Command::new("timeout")
        .arg(PODMAN_TIMEOUT_SECS)
        .arg("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("podman {args:?}: {e} (apt-get install podman runc)"))
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Containers and images this test made; removed on drop.
#[derive(Default)]
struct Podman {
    containers: Vec<String>,
    images: Vec<String>,
}

impl Podman {
    fn logs(&self, name: &str) -> String {
        let out = podman(&["logs", name]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in &self.containers {
            if std::thread::panicking() {
                eprintln!("container {c} log:\n{}", self.logs(c));
            }
            let _ = podman(&["rm", "--force", "--time", "0", c]);
        }
        for i in &self.images {
            let _ = podman(&["rmi", "--force", i]);
        }
    }
}

fn meta() -> Meta {
    Meta {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        source: env!("CARGO_PKG_REPOSITORY").to_owned(),
        revision: "container-test".to_owned(),
        created: Some(0),
    }
}

/// The image layout of this build's binary in `dir`, and its oci-archive.
/// Each test gives its own `revision`: the same binary and labels would
/// make the same image id, and one test's `rmi --force` would remove the
/// other's running container with it.
fn build_layout(dir: &Path, revision: &str) -> (oci_image::Written, Vec<u8>) {
    let binary = std::fs::read(support::bin()).unwrap();
    let meta = Meta {
        revision: revision.to_owned(),
        ..meta()
    };
    let image = oci_image::image(&MIRAGE_DNS, binary, &meta).unwrap();
    // Unoptimized test builds of the compressor take half a minute on the
    // debug binary; the plain layer is built by the same code path.
    let written = oci_image::write_layout(&image, dir, LayerCompression::None).unwrap();
    (written, oci_image::archive_layout(dir).unwrap())
}

fn chown_service(p: &Path) {
    std::os::unix::fs::chown(p, Some(SERVICE_ID), Some(SERVICE_ID)).unwrap();
}

fn status(run: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(run.join("status.json")).ok()?).ok()
}

#[test]
fn image_answers_through_unbound_with_net_bind_service_dropped_everywhere() {
    // Dropped last (declared first): unbound, the namespace, the directory.
    let f = with_unbound("dnsk");
    let mut pm = Podman::default();

    // The reproducible build: same inputs, same bytes, twice in one run.
    let (first, first_archive) = build_layout(&f.dir.join("layout-a"), "container-test");
    let (second, second_archive) = build_layout(&f.dir.join("layout-b"), "container-test");
    assert_eq!(first, second, "two builds of the same binary differ");
    assert!(first_archive == second_archive, "the two oci-archives differ");
    assert!(first.manifest_digest.starts_with("sha256:"));

    // Import through the oci: transport; podman's image id is the config digest.
    let layout = format!(
        "oci:{}:{}",
        f.dir.join("layout-a").display(),
        env!("CARGO_PKG_VERSION")
    );
    let id = podman_ok(&["pull", "--quiet", &layout]);
    pm.images.push(id.clone());
    assert_eq!(format!("sha256:{id}"), first.config_digest);
    let config = podman_ok(&["image", "inspect", "--format", "{{json .Config}}", &id]);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["User"], "65531:65531");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/mirage-dns"]));
    let moby: serde_json::Value =
        serde_json::from_str(config["Labels"]["org.mobyproject.config"].as_str().unwrap()).unwrap();
    assert_eq!(moby, MIRAGE_DNS.linuxkit_config());

    // The binds of the convention, owned as the operator makes them; the
    // upstream comes from the read-only config file (proves that bind).
    let (etc, state, run) = (f.dir.join("etc"), f.dir.join("state"), f.dir.join("run"));
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("config.toml"),
        format!("upstreams = [\"127.0.0.1:{UPSTREAM_PORT}\"]\n"),
    )
    .unwrap();
    for d in [&state, &run] {
        std::fs::create_dir_all(d).unwrap();
        chown_service(d);
    }
    let bind = |host: &Path, inside: &str, opts: &str| format!("{}:{inside}{opts}", host.display());
    let name = format!("mirage-dns-test-{}", std::process::id());
    pm.containers.push(name.clone());
    let nofile = MIRAGE_DNS.ulimits();
    assert_eq!(nofile, ["nofile=4096:4096"]);
    podman_ok(&[
        "run",
        "--detach",
        "--name",
        &name,
        "--runtime",
        "runc",
        "--ulimit",
        &nofile[0],
        "--ulimit",
        "nproc=1024:1024",
        "--cap-drop=all",
        "--cap-add=NET_BIND_SERVICE",
        "--user",
        &format!("{SERVICE_ID}:{SERVICE_ID}"),
        "--security-opt",
        "no-new-privileges",
        "--read-only",
        "--network",
        &format!("ns:/run/netns/{}", f.ns.name()),
        "--volume",
        &bind(&etc, "/etc/mirage/dns", ":ro"),
        "--volume",
        &bind(&state, "/var/lib/mirage/dns", ""),
        "--volume",
        &bind(&run, "/run/mirage/dns", ""),
        &id,
        "run",
        "--log-level",
        "debug",
    ]);
    wait_some(
        Duration::from_secs(60),
        "the forwarder's first status, published through the run bind",
        || status(&run).filter(|v| v["listen"][0] == "127.0.0.53:53"),
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
        || status(&run).filter(|v| v["engine"]["cache_hits"].as_u64() >= Some(1)),
        || pm.logs(&name),
    );
    assert_eq!(v["upstreams"][0], format!("127.0.0.1:{UPSTREAM_PORT}"), "{v}");
    assert_eq!(v["sandbox"], "seccomp", "{v}");
    assert_eq!(v["refused"], serde_json::json!({}), "nothing refused: {v}");
    assert!(read_lossy(&run.join("metrics.prom")).contains("mirage_dns_"));
    // Nothing is stored yet.
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);

    // What the container got, as podman reports it.
    let caps = podman_ok(&["inspect", "--format", "{{json .EffectiveCaps}}", &name]);
    let caps: Vec<String> = serde_json::from_str(&caps).unwrap();
    assert_eq!(caps, ["CAP_NET_BIND_SERVICE"]);

    // What each process holds, read from the host's /proc: the service's
    // uid everywhere; CAP_NET_BIND_SERVICE in the bounding set only (the
    // supervisor bound port 53 with it, then dropped it from every other
    // set; no role ever holds it), each role under its filter.
    let sup_pid: u32 = podman_ok(&["inspect", "--format", "{{.State.Pid}}", &name])
        .parse()
        .unwrap();
    let sup = ProcStatus::read(sup_pid);
    assert_eq!(sup.uids(), [SERVICE_ID; 4]);
    assert_eq!(sup.caps("CapBnd"), CAP_NET_BIND_SERVICE);
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(sup.caps(set), 0, "supervisor {set}");
    }
    // Not dumpable: its /proc files belong to root, not to the shared uid.
    assert_eq!(
        std::fs::metadata(format!("/proc/{sup_pid}/mem")).unwrap().uid(),
        0
    );
    let roles = roles_of(sup_pid);
    let names: Vec<&str> = roles.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["engine", "network"], "roles of {sup_pid}");
    for (role, pid) in &roles {
        let st = ProcStatus::read(*pid);
        assert_eq!(st.uids(), [SERVICE_ID; 4], "{role}");
        assert_eq!(st.gids(), [SERVICE_ID; 4], "{role}");
        for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
            assert_eq!(st.caps(set), 0, "{role} {set}");
        }
        assert_eq!(st.caps("CapBnd") & !CAP_NET_BIND_SERVICE, 0, "{role}");
        assert!(st.no_new_privs(), "{role}");
        assert_eq!(st.seccomp(), 2, "{role} runs under its filter");
        assert_eq!(
            std::fs::metadata(format!("/proc/{pid}/mem")).unwrap().uid(),
            0,
            "{role}"
        );
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
    podman_ok(&["stop", "--time", "10", &name]);
    assert_eq!(
        podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &name]),
        "0"
    );
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
    let caps = ["--cap-drop=all", "--cap-add=NET_BIND_SERVICE"];
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
/// service if `chown_run`, the capability options `caps` (none: every
/// capability dropped), until it ends (bounded by `PODMAN_TIMEOUT_SECS`).
fn run_to_its_end(tag: &str, revision: &str, nofile: &str, chown_run: bool, caps: &[&str]) -> Output {
    {
        let f = with_unbound(tag);
        let ctx = TestDir::new(&format!("mirage-dns-{tag}"), &unique_id().0);
        let run = ctx.join("run");
        std::fs::create_dir_all(&run).unwrap();
        if chown_run {
            chown_service(&run);
        }
        build_layout(&ctx.join("layout"), revision);
        let id = podman_ok(&[
            "pull",
            "--quiet",
            &format!(
                "oci:{}:{}",
                ctx.join("layout").display(),
                env!("CARGO_PKG_VERSION")
            ),
        ]);
        struct Rmi(String);
        impl Drop for Rmi {
            fn drop(&mut self) {
                let _ = podman(&["rmi", "--force", &self.0]);
            }
        }
        let _rmi = Rmi(id.clone());
        let mut cmd = Command::new("timeout");
        cmd.args([PODMAN_TIMEOUT_SECS, "podman", "run", "--rm", "--runtime", "runc"])
            .args(["--ulimit", nofile, "--ulimit", "nproc=1024:1024"])
            .args(if caps.is_empty() {
                &["--cap-drop=all"][..]
            } else {
                caps
            })
            .args(["--security-opt", "no-new-privileges", "--read-only"])
            .arg("--user")
            .arg(format!("{SERVICE_ID}:{SERVICE_ID}"))
            .arg("--network")
            .arg(format!("ns:/run/netns/{}", f.ns.name()))
            .arg("--volume")
            .arg(format!("{}:/run/mirage/dns", run.display()))
            .arg(&id)
            .args([
                "run",
                "--config",
                "/dev/null",
                "--upstream",
                &format!("127.0.0.1:{UPSTREAM_PORT}"),
            ]);
        cmd.output().unwrap()
    }
}

/// deploy/mirage-dns.Containerfile describes the same image as the
/// reproducible writer: same user, entrypoint, command and labels (the
/// binary is the same file).
#[test]
fn containerfile_builds_the_same_image_config() {
    let ctx = TestDir::new("mirage-dns-containerfile", &unique_id().0);
    struct Untag(String);
    impl Drop for Untag {
        fn drop(&mut self) {
            let _ = podman(&["rmi", "--force", &self.0]);
        }
    }
    let tag = format!("localhost/mirage-dns-containerfile-test:{}", std::process::id());
    let _untag = Untag(tag.clone());
    std::fs::copy(support::bin(), ctx.join("mirage-dns")).unwrap();
    let containerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mirage-dns.Containerfile");
    let m = meta();
    podman_ok(&[
        "build",
        "--quiet",
        // No cached intermediate images left behind once the tag is removed.
        "--layers=false",
        "--runtime",
        "runc",
        "--file",
        containerfile.to_str().unwrap(),
        "--build-arg",
        "BINARY=mirage-dns",
        "--build-arg",
        &format!("VERSION={}", m.version),
        "--build-arg",
        &format!("REVISION={}", m.revision),
        "--build-arg",
        &format!("SOURCE={}", m.source),
        "--tag",
        &tag,
        ctx.path().to_str().unwrap(),
    ]);
    let built = podman_ok(&["image", "inspect", "--format", "{{json .Config}}", &tag]);
    let built: serde_json::Value = serde_json::from_str(&built).unwrap();
    let ours = oci_image::image(&MIRAGE_DNS, b"-".to_vec(), &Meta { created: None, ..m }).unwrap();
    assert_eq!(built["User"], ours.user.as_str());
    assert_eq!(built["Entrypoint"], serde_json::json!(ours.entrypoint));
    assert_eq!(built["Cmd"], serde_json::json!(ours.cmd));
    for (k, v) in &ours.labels {
        let got = built["Labels"][k]
            .as_str()
            .unwrap_or_else(|| panic!("label {k} missing"));
        if k == "org.mobyproject.config" {
            let got: serde_json::Value = serde_json::from_str(got).unwrap();
            assert_eq!(got, MIRAGE_DNS.linuxkit_config(), "{k}");
        } else {
            assert_eq!(got, v, "{k}");
        }
    }
    // And it runs, with no capability at all for `--version`.
    let version = podman_ok(&[
        "run",
        "--rm",
        "--runtime",
        "runc",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--cap-drop=all",
        "--network",
        "none",
        &tag,
        "--version",
    ]);
    assert_eq!(version, format!("mirage-dns {}", env!("CARGO_PKG_VERSION")));
}
