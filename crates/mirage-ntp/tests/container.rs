//! mirage-ntp as a system container, in a real runtime: podman with runc,
//! the image built by the reproducible writer (crates/oci-image) from this
//! build's binary, twice (same bytes), and loaded through the `oci:`
//! transport (no registry); run as docs/operators.md runs it (uid 65528,
//! `CAP_SYS_TIME` only, ambient, no_new_privs, read-only root, the
//! convention's binds), but with `--observe`, in a network namespace the
//! test creates, against chronyd `-x` on its loopback. Neither chrony
//! (`-x`) nor the observing client (no capability in any role, no clock
//! call in any filter) can touch the host clock.
//!
//! Needs root (network namespaces, podman's rootful storage), podman, runc
//! and chronyd (CI installs them). Every podman call is bounded by
//! `timeout`, and the container and the image are removed in `Drop`, also
//! when the test fails.

use std::path::Path;
use std::time::Duration;

use mirage_testkit::cmd::read_lossy;
use mirage_testkit::container::{
    Podman, Run, ServiceDirs, assert_containerfile_builds_the_same_config, assert_role_confined,
    assert_supervisor_keeps_nothing, container_pid, effective_caps, image_config, podman_ok,
    reproducible_layout, stop_cleanly,
};
use mirage_testkit::netns::{Netns, unique_id};
use mirage_testkit::process::{Procs, Proto, wait_listening};
use mirage_testkit::procfs::roles_of;
use mirage_testkit::tempdir::TestDir;
use mirage_testkit::wait::wait_some;
use oci_image::MIRAGE_NTP;

/// The image's user (every process in the container).
const SERVICE_ID: u32 = MIRAGE_NTP.id;
/// Capability bit (linux/capability.h).
const CAP_SYS_TIME: u64 = 1 << 25;

fn bin() -> std::path::PathBuf {
    mirage_testkit::service_bin("MIRAGE_NTP_BIN", env!("CARGO_BIN_EXE_mirage-ntp"))
}

/// Dropped in field order: the containers and image, the processes
/// (chronyd), the namespace, the directory.
struct Fixture {
    pm: Podman,
    procs: Procs,
    ns: Netns,
    dir: TestDir,
}

/// chronyd serving the host's clock at stratum 8 on the loopback of a
/// fresh namespace: no source of its own, `-x` (no clock control), no
/// command port.
fn with_chrony() -> Fixture {
    let (id, _) = unique_id();
    let ns = Netns::add_unique("ntpk");
    let dir = TestDir::new("mirage-ntp-container", &id);
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
    Fixture {
        pm: Podman::default(),
        procs,
        ns,
        dir,
    }
}

#[test]
fn image_observes_chrony_with_cap_sys_time_only_and_never_steers() {
    let mut f = with_chrony();

    // The reproducible build, imported through the oci: transport;
    // podman's image id is the config digest.
    let (layout, written) = reproducible_layout(&MIRAGE_NTP, &bin(), f.dir.path());
    let id = f.pm.pull(&layout, &written);
    let config = image_config(&id);
    assert_eq!(config["User"], "65528:65528");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/mirage-ntp"]));
    let moby: serde_json::Value =
        serde_json::from_str(config["Labels"]["org.mobyproject.config"].as_str().unwrap()).unwrap();
    assert_eq!(moby, MIRAGE_NTP.linuxkit_config());

    // The binds of the convention, owned as the operator makes them; the
    // server comes from the read-only config file (proves that bind).
    let dirs = ServiceDirs::new(f.dir.path(), &MIRAGE_NTP);
    std::fs::write(dirs.etc.join("config.toml"), "servers = [\"127.0.0.1\"]\n").unwrap();
    let name = format!("mirage-ntp-test-{}", std::process::id());
    dirs.bound(Run::new(&MIRAGE_NTP, f.ns.name())).detached(
        &mut f.pm,
        &name,
        &id,
        &["run", "--observe", "--log-level", "debug"],
    );

    let v = wait_some(
        Duration::from_secs(60),
        "an estimate from chrony, published through the run bind",
        || {
            dirs.status()
                .filter(|v| v["state"] == "observing" && v["sources"][0]["state"] == "selected")
        },
        || f.pm.logs(&name),
    );
    assert_eq!(v["observe"], true, "{v}");
    assert_eq!(v["synchronized"], false, "observing never disciplines: {v}");
    assert_eq!(v["stratum"], 9, "{v}");
    assert_eq!(v["sources"][0]["address"], "127.0.0.1:123", "{v}");
    // chrony serves this very clock: the offset is the measurement's error.
    let offset = v["offset_ms"].as_f64().unwrap();
    assert!(offset.abs() < 1.0, "offset {offset} ms: {v}");
    assert_eq!(v["refused"], serde_json::json!({}), "no reply refused: {v}");
    assert_eq!(v["clock"]["steerable"], false, "{v}");
    assert_eq!(
        v["clock"]["intents"],
        serde_json::json!({}),
        "observing asks for no clock change: {v}"
    );
    assert!(read_lossy(&dirs.run.join("metrics.prom")).contains("mirage_ntp_state{state=\"observing\"} 1"));
    // Observing keeps no state: the actuator was handed no directory.
    assert_eq!(std::fs::read_dir(&dirs.state).unwrap().count(), 0);

    // What the container got, as podman reports it.
    assert_eq!(effective_caps(&name), ["CAP_SYS_TIME"]);

    // What each process holds, read from the host's /proc: the service's
    // uid everywhere, CAP_SYS_TIME in the bounding set only (observing, no
    // role keeps it), each role under its filter.
    let sup_pid = container_pid(&name);
    assert_supervisor_keeps_nothing(sup_pid, SERVICE_ID, CAP_SYS_TIME);
    let roles = roles_of(sup_pid);
    let names: Vec<&str> = roles.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["actuator", "engine", "network"], "roles of {sup_pid}");
    for (role, pid) in &roles {
        assert_role_confined(role, *pid, SERVICE_ID, CAP_SYS_TIME, 0);
    }
    let logs = f.pm.logs(&name);
    assert!(
        logs.contains("not root: every role runs as 65528:65528"),
        "{logs}"
    );
    assert!(logs.contains("observing (the clock is never touched)"), "{logs}");

    // `status` inside the container reads the same file; SIGTERM ends it cleanly.
    let printed = podman_ok(&["exec", &name, "/mirage-ntp", "status"]);
    assert!(printed.contains("observing"), "{printed}");
    stop_cleanly(&name);
    // chronyd kept serving the whole time.
    assert!(f.procs.try_wait(0).is_none(), "chronyd exited");
}

/// deploy/mirage-ntp.Containerfile describes the same image as the
/// reproducible writer and runs `--version` with no capability.
#[test]
fn containerfile_builds_the_same_image_config() {
    let containerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mirage-ntp.Containerfile");
    assert_containerfile_builds_the_same_config(&MIRAGE_NTP, &bin(), &containerfile);
}
