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

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use mirage_testkit::cmd::read_lossy;
use mirage_testkit::netns::{Netns, unique_id};
use mirage_testkit::process::{Procs, Proto, wait_listening};
use mirage_testkit::procfs::{ProcStatus, roles_of};
use mirage_testkit::tempdir::TestDir;
use mirage_testkit::wait::wait_some;
use oci_image::{LayerCompression, MIRAGE_NTP, Meta};

/// Bound on any one podman command (image import, start, stop).
const PODMAN_TIMEOUT_SECS: &str = "120";
/// The image's user (every process in the container).
const SERVICE_ID: u32 = MIRAGE_NTP.id;
/// Capability bit (linux/capability.h).
const CAP_SYS_TIME: u64 = 1 << 25;

fn bin() -> std::path::PathBuf {
    mirage_testkit::service_bin("MIRAGE_NTP_BIN", env!("CARGO_BIN_EXE_mirage-ntp"))
}

/// podman as CI can run it: runc (crun fails on hosts with hybrid cgroups)
/// and explicit rlimits (podman otherwise copies the host's, which a host
/// without CAP_SYS_RESOURCE cannot grant).
fn podman(args: &[&str]) -> Output {
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

fn meta() -> Meta {
    Meta {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        source: env!("CARGO_PKG_REPOSITORY").to_owned(),
        revision: "container-test".to_owned(),
        created: Some(0),
    }
}

/// The image layout of this build's binary in `dir`, and its oci-archive.
fn build_layout(dir: &Path) -> (oci_image::Written, Vec<u8>) {
    let binary = std::fs::read(bin()).unwrap();
    let image = oci_image::image(&MIRAGE_NTP, binary, &meta()).unwrap();
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
fn image_observes_chrony_with_cap_sys_time_only_and_never_steers() {
    let mut f = with_chrony();

    // The reproducible build: same inputs, same bytes, twice in one run.
    let (first, first_archive) = build_layout(&f.dir.join("layout-a"));
    let (second, second_archive) = build_layout(&f.dir.join("layout-b"));
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
    f.pm.images.push(id.clone());
    assert_eq!(format!("sha256:{id}"), first.config_digest);
    let config = podman_ok(&["image", "inspect", "--format", "{{json .Config}}", &id]);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["User"], "65528:65528");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/mirage-ntp"]));
    let moby: serde_json::Value =
        serde_json::from_str(config["Labels"]["org.mobyproject.config"].as_str().unwrap()).unwrap();
    assert_eq!(moby, MIRAGE_NTP.linuxkit_config());

    // The binds of the convention, owned as the operator makes them; the
    // server comes from the read-only config file (proves that bind).
    let (etc, state, run) = (f.dir.join("etc"), f.dir.join("state"), f.dir.join("run"));
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("config.toml"), "servers = [\"127.0.0.1\"]\n").unwrap();
    for d in [&state, &run] {
        std::fs::create_dir_all(d).unwrap();
        chown_service(d);
    }
    let bind = |host: &Path, inside: &str, opts: &str| format!("{}:{inside}{opts}", host.display());
    let name = format!("mirage-ntp-test-{}", std::process::id());
    f.pm.containers.push(name.clone());
    podman_ok(&[
        "run",
        "--detach",
        "--name",
        &name,
        "--runtime",
        "runc",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--cap-drop=all",
        "--cap-add=SYS_TIME",
        "--user",
        &format!("{SERVICE_ID}:{SERVICE_ID}"),
        "--security-opt",
        "no-new-privileges",
        "--read-only",
        "--network",
        &format!("ns:/run/netns/{}", f.ns.name()),
        "--volume",
        &bind(&etc, "/etc/mirage/ntp", ":ro"),
        "--volume",
        &bind(&state, "/var/lib/mirage/ntp", ""),
        "--volume",
        &bind(&run, "/run/mirage/ntp", ""),
        &id,
        "run",
        "--observe",
        "--log-level",
        "debug",
    ]);

    let v = wait_some(
        Duration::from_secs(60),
        "an estimate from chrony, published through the run bind",
        || status(&run).filter(|v| v["state"] == "observing" && v["sources"][0]["state"] == "selected"),
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
    assert!(read_lossy(&run.join("metrics.prom")).contains("mirage_ntp_state{state=\"observing\"} 1"));
    // Observing keeps no state: the actuator was handed no directory.
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);

    // What the container got, as podman reports it.
    let caps = podman_ok(&["inspect", "--format", "{{json .EffectiveCaps}}", &name]);
    let caps: Vec<String> = serde_json::from_str(&caps).unwrap();
    assert_eq!(caps, ["CAP_SYS_TIME"]);

    // What each process holds, read from the host's /proc: the service's
    // uid everywhere, CAP_SYS_TIME in the bounding set only (observing, no
    // role keeps it), each role under its filter.
    let sup_pid: u32 = podman_ok(&["inspect", "--format", "{{.State.Pid}}", &name])
        .parse()
        .unwrap();
    let sup = ProcStatus::read(sup_pid);
    assert_eq!(sup.uids(), [SERVICE_ID; 4]);
    assert_eq!(sup.caps("CapBnd"), CAP_SYS_TIME);
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
    assert_eq!(names, ["actuator", "engine", "network"], "roles of {sup_pid}");
    for (role, pid) in &roles {
        let st = ProcStatus::read(*pid);
        assert_eq!(st.uids(), [SERVICE_ID; 4], "{role}");
        assert_eq!(st.gids(), [SERVICE_ID; 4], "{role}");
        for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
            assert_eq!(st.caps(set), 0, "{role} {set}");
        }
        assert_eq!(st.caps("CapBnd") & !CAP_SYS_TIME, 0, "{role}");
        assert!(st.no_new_privs(), "{role}");
        assert_eq!(st.seccomp(), 2, "{role} runs under its filter");
        assert_eq!(
            std::fs::metadata(format!("/proc/{pid}/mem")).unwrap().uid(),
            0,
            "{role}"
        );
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
    podman_ok(&["stop", "--time", "10", &name]);
    assert_eq!(
        podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &name]),
        "0"
    );
    // chronyd kept serving the whole time.
    assert!(f.procs.try_wait(0).is_none(), "chronyd exited");
}

/// deploy/mirage-ntp.Containerfile describes the same image as the
/// reproducible writer: same user, entrypoint, command and labels (the
/// binary is the same file).
#[test]
fn containerfile_builds_the_same_image_config() {
    let ctx = TestDir::new("mirage-ntp-containerfile", &unique_id().0);
    struct Untag(String);
    impl Drop for Untag {
        fn drop(&mut self) {
            let _ = podman(&["rmi", "--force", &self.0]);
        }
    }
    let tag = format!("localhost/mirage-ntp-containerfile-test:{}", std::process::id());
    let _untag = Untag(tag.clone());
    std::fs::copy(bin(), ctx.join("mirage-ntp")).unwrap();
    let containerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mirage-ntp.Containerfile");
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
        "BINARY=mirage-ntp",
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
    let ours = oci_image::image(&MIRAGE_NTP, b"-".to_vec(), &Meta { created: None, ..m }).unwrap();
    assert_eq!(built["User"], ours.user.as_str());
    assert_eq!(built["Entrypoint"], serde_json::json!(ours.entrypoint));
    assert_eq!(built["Cmd"], serde_json::json!(ours.cmd));
    for (k, v) in &ours.labels {
        let got = built["Labels"][k]
            .as_str()
            .unwrap_or_else(|| panic!("label {k} missing"));
        if k == "org.mobyproject.config" {
            let got: serde_json::Value = serde_json::from_str(got).unwrap();
            assert_eq!(got, MIRAGE_NTP.linuxkit_config(), "{k}");
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
    assert_eq!(version, format!("mirage-ntp {}", env!("CARGO_PKG_VERSION")));
}
