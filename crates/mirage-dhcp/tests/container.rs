//! mirage-dhcp as a system container, in a real runtime: podman with runc,
//! the image built by the reproducible writer (crates/oci-image) from this
//! build's binary and loaded through the `oci:` transport (no registry), run
//! as the service's uid with only CAP_NET_RAW and CAP_NET_ADMIN (ambient), inside the
//! client namespace of the test hosts, against dnsmasq in the peer namespace.
//!
//! Each run is made twice: without a KVM device (the engine falls back to
//! seccomp and status says why) and with one (the engine is a KVM guest,
//! its process the tender). The second needs a usable /dev/kvm on the host
//! and fails without one unless `MIRAGE_NO_KVM=1`.
//!
//! Needs root (network namespaces, podman's rootful storage), podman and runc
//! (CI installs them). Every podman call is bounded by `timeout`, and the
//! containers and the image are removed in `Drop`, also when a test fails.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use mirage_testkit::procfs::ProcStatus;
use oci_image::{LayerCompression, Meta};
use support::{CLIENT_IF, Net, bin, read, roles_of, wait_until};

const BOUND_WITHIN: Duration = Duration::from_secs(30);
/// Bound on any one podman command (image import, start, stop).
const PODMAN_TIMEOUT_SECS: &str = "120";
/// The service uid of the image (and of every process in the container).
const SERVICE_ID: u32 = oci_image::MIRAGE_DHCP.id;
/// Capability bits (linux/capability.h).
const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_NET_RAW: u64 = 1 << 13;
/// The KVM device's numbers (Documentation/admin-guide/devices.txt).
const KVM_MAJOR: u64 = 10;
const KVM_MINOR: u64 = 232;

/// The runs share the image (same digest, one podman id), and each removes
/// it when done: one at a time.
static IMAGE: Mutex<()> = Mutex::new(());

/// What the container gets for KVM.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kvm {
    /// No device: `auto` resolves to seccomp.
    Without,
    /// `--device` with a node of the service uid's own (docs/operators.md):
    /// `auto` resolves to kvm.
    Device,
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

/// Containers and images this test made; removed on drop. Declared after
/// the `Net` so it is dropped first (containers go before their namespace).
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

/// Build the image layout from this build's binary into `dir`.
fn build_layout(dir: &Path) -> oci_image::Written {
    let binary = std::fs::read(bin()).unwrap();
    let image = oci_image::image(&oci_image::MIRAGE_DHCP, binary, &meta()).unwrap();
    // Unoptimized test builds of the compressor take half a minute on the
    // debug binary; the plain layer is built by the same code path.
    oci_image::write_layout(&image, dir, LayerCompression::None).unwrap()
}

/// Host paths for the bind mounts of the convention, owned as the service
/// uid needs them (the operator's job; docs/operators.md).
struct Mounts {
    etc: PathBuf,
    state: PathBuf,
    run: PathBuf,
    resolv: PathBuf,
}

fn chown_service(p: &Path) {
    std::os::unix::fs::chown(p, Some(SERVICE_ID), Some(SERVICE_ID)).unwrap();
}

fn mounts(net: &Net) -> Mounts {
    let m = Mounts {
        etc: net.path("etc"),
        state: net.path("state"),
        run: net.path("run"),
        resolv: net.path("resolv.conf"),
    };
    std::fs::create_dir_all(&m.etc).unwrap();
    // The interface comes from the read-only config file, not the command
    // line: this proves the config bind works.
    std::fs::write(
        m.etc.join("config.toml"),
        format!(
            "interface = \"{CLIENT_IF}\"\nhostname = \"mirage-container\"\n\n[timing]\nfirst_retransmit_ms = 500\n"
        ),
    )
    .unwrap();
    for d in [&m.state, &m.run] {
        std::fs::create_dir_all(d).unwrap();
        chown_service(d);
    }
    std::fs::write(&m.resolv, "# before\n").unwrap();
    chown_service(&m.resolv);
    m
}

/// A KVM character device for the container, owned by the service uid
/// with mode 0600, as docs/operators.md has the operator make it: podman
/// gives the container's node the owner and mode of the host's, and the
/// host's /dev/kvm (root's, 0600 on these machines) would be one uid 65522
/// cannot open.
fn kvm_node(net: &Net) -> PathBuf {
    let node = net.path("kvm");
    let st = Command::new("mknod")
        .args(["-m", "0600"])
        .arg(&node)
        .args(["c", &KVM_MAJOR.to_string(), &KVM_MINOR.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "mknod {}", node.display());
    chown_service(&node);
    node
}

/// `podman run -d` with exactly the privileges of docs/security.md, and
/// `device` (if any) as /dev/kvm.
fn run_container(net: &Net, pm: &mut Podman, m: &Mounts, image: &str, name: &str, device: Option<&Path>) {
    let bind = |host: &Path, inside: &str, opts: &str| format!("{}:{inside}{opts}", host.display());
    let netns = format!("ns:/run/netns/{}", net.client_ns);
    let device = device.map(|d| format!("{}:/dev/kvm", d.display()));
    let device_args = device.as_deref().map(|d| ["--device", d]);
    let args = [
        "run",
        "--detach",
        "--name",
        name,
        "--runtime",
        "runc",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--cap-drop=all",
        "--cap-add=NET_RAW,NET_ADMIN",
        "--user",
        &format!("{SERVICE_ID}:{SERVICE_ID}"),
        "--security-opt",
        "no-new-privileges",
        "--read-only",
        "--network",
        &netns,
        "--volume",
        &bind(&m.etc, "/etc/mirage/dhcp", ":ro"),
        "--volume",
        &bind(&m.state, "/var/lib/mirage/dhcp", ""),
        "--volume",
        &bind(&m.run, "/run/mirage/dhcp", ""),
        "--volume",
        &bind(&m.resolv, "/etc/resolv.conf", ""),
    ];
    let command = [image, "run", "--log-level", "debug"];
    let args: Vec<&str> = args
        .into_iter()
        .chain(device_args.into_iter().flatten())
        .chain(command)
        .collect();
    pm.containers.push(name.to_owned());
    podman_ok(&args);
}

fn container_pid(name: &str) -> u32 {
    podman_ok(&["inspect", "--format", "{{.State.Pid}}", name])
        .parse()
        .unwrap()
}

#[test]
fn image_gets_a_lease_with_only_net_raw_and_net_admin() {
    lease_in_podman(Kvm::Without);
}

#[test]
fn image_with_a_kvm_device_runs_the_engine_as_a_guest() {
    if mirage_testkit::kvm::usable("container::image_with_a_kvm_device_runs_the_engine_as_a_guest") {
        lease_in_podman(Kvm::Device);
    }
}

/// The image in podman as docs/operators.md runs it, with or without a
/// KVM device: a lease, the capabilities of docs/security.md in every
/// process, the sandbox `auto` resolves to, and an upgrade that adopts the
/// stored lease.
fn lease_in_podman(kvm: Kvm) {
    let _image = IMAGE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut net = Net::new();
    let mut pm = Podman::default();
    net.start_dnsmasq("120", &["--dhcp-option=option:domain-search,corp.example"]);

    // The reproducible build: same inputs, same digest, twice in one run.
    let first = build_layout(&net.path("layout-a"));
    let second = build_layout(&net.path("layout-b"));
    assert_eq!(first, second, "two builds of the same binary differ");
    assert!(first.manifest_digest.starts_with("sha256:"));

    // Import through the oci: transport (local directory, no registry).
    // podman names an image by its config digest: that is the image id.
    let layout = format!(
        "oci:{}:{}",
        net.path("layout-a").display(),
        env!("CARGO_PKG_VERSION")
    );
    let id = podman_ok(&["pull", "--quiet", &layout]);
    pm.images.push(id.clone());
    assert_eq!(format!("sha256:{id}"), first.config_digest);
    let labels = podman_ok(&["image", "inspect", "--format", "{{json .Labels}}", &id]);
    let labels: serde_json::Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(labels["org.opencontainers.image.revision"], "container-test");

    let m = mounts(&net);
    let device = (kvm == Kvm::Device).then(|| kvm_node(&net));
    let name = format!("mirage-dhcp-test-{}-{kvm:?}", std::process::id()).to_lowercase();
    run_container(&net, &mut pm, &m, &id, &name, device.as_deref());
    let status = net.wait_state("bound", BOUND_WITHIN);

    // The lease is applied in the namespace and published through the binds.
    let addr = status["lease"]["address"].as_str().unwrap().to_owned();
    assert!(addr.starts_with(&format!("{}.", net.subnet)), "{addr}");
    assert_eq!(net.client_addrs(), vec![format!("{addr}/24")]);
    assert!(
        net.client_routes()
            .contains(&format!("default via {} dev {CLIENT_IF}", net.server_ip)),
        "{}",
        net.client_routes()
    );
    let resolv = read(&m.resolv);
    assert!(
        resolv.contains(&format!("nameserver {}\n", net.server_ip)),
        "{resolv}"
    );
    assert!(resolv.contains("search corp.example\n"), "{resolv}");
    assert_sandbox(&status, kvm);
    assert_eq!(status["intents_refused"], 0);
    let stored: serde_json::Value =
        serde_json::from_str(&read(&m.state.join(format!("lease-{CLIENT_IF}.json")))).unwrap();
    assert_eq!(stored["lease"]["address"], addr.as_str());
    assert!(read(&m.run.join("metrics.prom")).contains("mirage_dhcp_bound{interface=\"veth-c\"} 1"));
    // The read-only config was read: dnsmasq saw its hostname.
    wait_until(Duration::from_secs(5), || {
        read(&net.path("dnsmasq.log")).contains("mirage-container")
    });

    // What the container got, as podman reports it.
    let caps = podman_ok(&["inspect", "--format", "{{json .EffectiveCaps}}", &name]);
    let mut caps: Vec<String> = serde_json::from_str(&caps).unwrap();
    caps.sort();
    assert_eq!(caps, ["CAP_NET_ADMIN", "CAP_NET_RAW"]);

    // And what each process holds, read from the host's /proc.
    let sup_pid = container_pid(&name);
    let sup = ProcStatus::read(sup_pid);
    let container_bounding = CAP_NET_ADMIN | CAP_NET_RAW;
    let ids = format!("{SERVICE_ID}\t{SERVICE_ID}\t{SERVICE_ID}\t{SERVICE_ID}");
    assert_eq!(sup.field("Uid"), ids);
    assert_eq!(sup.caps("CapBnd"), container_bounding);
    // The supervisor keeps nothing once the roles run.
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
        let want = if role == "actuator" { CAP_NET_ADMIN } else { 0 };
        assert_eq!(st.caps("CapEff"), want, "{role} CapEff");
        assert_eq!(st.caps("CapPrm"), want, "{role} CapPrm");
        assert_eq!(st.caps("CapInh"), 0, "{role} CapInh");
        assert_eq!(st.caps("CapAmb"), 0, "{role} CapAmb");
        // Fewer than the container's: strictly inside its bounding set.
        assert_ne!(st.caps("CapPrm"), container_bounding, "{role}");
        assert_eq!(st.caps("CapBnd") & !container_bounding, 0, "{role}");
        assert_eq!(st.field("Uid"), ids, "{role}");
        assert_eq!(st.field("NoNewPrivs"), "1", "{role}");
        assert_eq!(st.field("Seccomp"), "2", "{role} runs under its filter");
        // The tender holds its VM and vCPU, nothing else of KVM (the device
        // was closed once the VM was built); a process engine holds none.
        let kvm_fds = kvm_fds(*pid);
        let want_fds: &[&str] = match (role.as_str(), kvm) {
            ("engine", Kvm::Device) => &["anon_inode:kvm-vcpu:0", "anon_inode:kvm-vm"],
            _ => &[],
        };
        assert_eq!(kvm_fds, want_fds, "{role}");
        assert_eq!(
            std::fs::metadata(format!("/proc/{pid}/mem")).unwrap().uid(),
            0,
            "{role}"
        );
    }
    let logs = pm.logs(&name);
    assert!(logs.contains("bounding=CAP_NET_ADMIN,CAP_NET_RAW"), "{logs}");
    assert_eq!(
        logs.lines()
            .any(|l| l.contains("[engine]") && l.contains("engine runs as a KVM guest")),
        kvm == Kvm::Device,
        "{logs}"
    );

    // Stop (SIGTERM) keeps the address; a new container (an upgrade) adopts
    // the stored lease instead of starting over.
    podman_ok(&["stop", "--time", "10", &name]);
    assert_eq!(
        podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &name]),
        "0"
    );
    assert_eq!(net.client_addrs(), vec![format!("{addr}/24")]);
    std::fs::remove_file(m.run.join("status.json")).unwrap();
    let second_name = format!("{name}-b");
    run_container(&net, &mut pm, &m, &id, &second_name, device.as_deref());
    let status = net.wait_state("bound", BOUND_WITHIN);
    assert_sandbox(&status, kvm);
    assert_eq!(status["lease"]["address"], addr.as_str());
    assert_eq!(
        status["counters"]["offers"], 0,
        "the stored lease was verified (INIT-REBOOT), not rediscovered"
    );
    assert_eq!(net.client_addrs(), vec![format!("{addr}/24")]);
}

/// The sandbox in force and why, as status.json says.
fn assert_sandbox(status: &serde_json::Value, kvm: Kvm) {
    let reason = status["sandbox_reason"].as_str().unwrap();
    match kvm {
        Kvm::Without => {
            assert_eq!(status["sandbox"], "seccomp", "{reason}");
            assert!(
                reason.starts_with("--sandbox auto: kvm unusable (/dev/kvm: ")
                    && reason.ends_with("seccomp instead"),
                "{reason}"
            );
        }
        Kvm::Device => {
            assert_eq!(status["sandbox"], "kvm", "{reason}");
            assert!(
                reason.starts_with("--sandbox auto: /dev/kvm opens, the guest booted and answered"),
                "{reason}"
            );
        }
    }
}

/// The KVM descriptors `pid` holds (the targets of its fd links), sorted.
fn kvm_fds(pid: u32) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .map(|t| t.display().to_string())
        .filter(|t| t.contains("kvm"))
        .collect();
    fds.sort();
    fds
}

/// The Containerfile describes the same image as the reproducible writer:
/// same user, entrypoint, command and labels (the binary is the same file).
#[test]
fn containerfile_builds_the_same_image_config() {
    let ctx = std::env::temp_dir().join(format!("mirage-containerfile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&ctx);
    std::fs::create_dir_all(&ctx).unwrap();
    struct Cleanup(PathBuf, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = podman(&["rmi", "--force", &self.1]);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let tag = format!("localhost/mirage-dhcp-containerfile-test:{}", std::process::id());
    let _cleanup = Cleanup(ctx.clone(), tag.clone());
    std::fs::copy(bin(), ctx.join("mirage-dhcp")).unwrap();
    let containerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Containerfile");
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
        "BINARY=mirage-dhcp",
        "--build-arg",
        &format!("VERSION={}", m.version),
        "--build-arg",
        &format!("REVISION={}", m.revision),
        "--build-arg",
        &format!("SOURCE={}", m.source),
        "--tag",
        &tag,
        ctx.to_str().unwrap(),
    ]);
    let built = podman_ok(&["image", "inspect", "--format", "{{json .Config}}", &tag]);
    let built: serde_json::Value = serde_json::from_str(&built).unwrap();
    let ours = oci_image::image(
        &oci_image::MIRAGE_DHCP,
        b"-".to_vec(),
        &Meta { created: None, ..m },
    )
    .unwrap();
    assert_eq!(built["User"], ours.user.as_str());
    assert_eq!(built["Entrypoint"], serde_json::json!(ours.entrypoint));
    assert_eq!(built["Cmd"], serde_json::json!(ours.cmd));
    for (k, v) in &ours.labels {
        let got = built["Labels"][k]
            .as_str()
            .unwrap_or_else(|| panic!("label {k} missing"));
        if k == "org.mobyproject.config" {
            let got: serde_json::Value = serde_json::from_str(got).unwrap();
            assert_eq!(got, oci_image::MIRAGE_DHCP.linuxkit_config(), "{k}");
        } else {
            assert_eq!(got, v, "{k}");
        }
    }
    // And it runs, with no capability at all for `--version`.
    let files = podman_ok(&[
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
    assert_eq!(files, format!("mirage-dhcp {}", env!("CARGO_PKG_VERSION")));
}
