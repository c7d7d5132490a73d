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

use std::path::{Path, PathBuf};
use std::time::Duration;

use mirage_testkit::container::{
    Kvm, Podman, Run, ServiceDirs, TEST_REVISION, VERSION, assert_containerfile_builds_the_same_config,
    assert_role_confined, assert_supervisor_keeps_nothing, container_pid, effective_caps, image_lock,
    kvm_node, podman_ok, reproducible_layout, stop_cleanly,
};
use mirage_testkit::procfs::{ProcStatus, kvm_fds};
use oci_image::MIRAGE_DHCP;
use support::{CLIENT_IF, Net, bin, read, roles_of, wait_until};

const BOUND_WITHIN: Duration = Duration::from_secs(30);
/// The service uid of the image (and of every process in the container).
const SERVICE_ID: u32 = MIRAGE_DHCP.id;
/// Capability bits (linux/capability.h).
const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_NET_RAW: u64 = 1 << 13;

/// The convention's binds, owned as the service uid needs them (the
/// operator's job; docs/operators.md), and the resolv.conf it writes.
struct Mounts {
    dirs: ServiceDirs,
    resolv: PathBuf,
}

fn mounts(net: &Net) -> Mounts {
    let dirs = ServiceDirs::new(&net.dir, &MIRAGE_DHCP);
    // The interface comes from the read-only config file, not the command
    // line: this proves the config bind works.
    std::fs::write(
        dirs.etc.join("config.toml"),
        format!(
            "interface = \"{CLIENT_IF}\"\nhostname = \"mirage-container\"\n\n[timing]\nfirst_retransmit_ms = 500\n"
        ),
    )
    .unwrap();
    let resolv = net.path("resolv.conf");
    std::fs::write(&resolv, "# before\n").unwrap();
    mirage_testkit::container::chown_to(&resolv, SERVICE_ID);
    Mounts { dirs, resolv }
}

/// `podman run -d` with exactly the privileges of docs/security.md, and
/// `device` (if any) as /dev/kvm.
fn run_container(net: &Net, pm: &mut Podman, m: &Mounts, image: &str, name: &str, device: Option<&Path>) {
    let mut run = m
        .dirs
        .bound(Run::new(&MIRAGE_DHCP, &net.client_ns))
        .volume(&m.resolv, "/etc/resolv.conf");
    if let Some(d) = device {
        run = run.device(d, "/dev/kvm");
    }
    run.detached(pm, name, image, &["run", "--log-level", "debug"]);
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
    let _image = image_lock();
    let mut net = Net::new();
    let mut pm = Podman::default();
    net.start_dnsmasq("120", &["--dhcp-option=option:domain-search,corp.example"]);

    // The reproducible build, imported through the oci: transport (local
    // directory, no registry); podman's image id is the config digest.
    let (layout, written) = reproducible_layout(&MIRAGE_DHCP, Path::new(bin()), &net.dir);
    let id = pm.pull(&layout, &written);
    let labels = podman_ok(&["image", "inspect", "--format", "{{json .Labels}}", &id]);
    let labels: serde_json::Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    assert_eq!(labels["org.opencontainers.image.revision"], TEST_REVISION);

    let m = mounts(&net);
    let device = (kvm == Kvm::Device).then(|| kvm_node(&net.path("kvm"), SERVICE_ID));
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
        serde_json::from_str(&read(&m.dirs.state.join(format!("lease-{CLIENT_IF}.json")))).unwrap();
    assert_eq!(stored["lease"]["address"], addr.as_str());
    assert!(read(&m.dirs.run.join("metrics.prom")).contains("mirage_dhcp_bound{interface=\"veth-c\"} 1"));
    // The read-only config was read: dnsmasq saw its hostname.
    wait_until(Duration::from_secs(5), || {
        read(&net.path("dnsmasq.log")).contains("mirage-container")
    });

    // What the container got, as podman reports it.
    assert_eq!(effective_caps(&name), ["CAP_NET_ADMIN", "CAP_NET_RAW"]);

    // And what each process holds, read from the host's /proc: the
    // supervisor keeps nothing once the roles run; the actuator keeps
    // CAP_NET_ADMIN, no other role anything.
    let sup_pid = container_pid(&name);
    let container_bounding = CAP_NET_ADMIN | CAP_NET_RAW;
    assert_supervisor_keeps_nothing(sup_pid, SERVICE_ID, container_bounding);
    let roles = roles_of(sup_pid);
    let names: Vec<&str> = roles.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["actuator", "engine", "network"], "roles of {sup_pid}");
    for (role, pid) in &roles {
        let want = if role == "actuator" { CAP_NET_ADMIN } else { 0 };
        assert_role_confined(role, *pid, SERVICE_ID, container_bounding, want);
        // Fewer than the container's: strictly inside its bounding set.
        let st = ProcStatus::read(*pid);
        assert_ne!(st.caps("CapPrm"), container_bounding, "{role}");
        // The tender holds its VM and vCPU, nothing else of KVM (the device
        // was closed once the VM was built); a process engine holds none.
        let kvm_fds = kvm_fds(*pid);
        let want_fds: &[&str] = match (role.as_str(), kvm) {
            ("engine", Kvm::Device) => &["anon_inode:kvm-vcpu:0", "anon_inode:kvm-vm"],
            _ => &[],
        };
        assert_eq!(kvm_fds, want_fds, "{role}");
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
    stop_cleanly(&name);
    assert_eq!(net.client_addrs(), vec![format!("{addr}/24")]);
    std::fs::remove_file(m.dirs.run.join("status.json")).unwrap();
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

/// The Containerfile describes the same image as the reproducible writer
/// and runs `--version` with no capability.
#[test]
fn containerfile_builds_the_same_image_config() {
    let containerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Containerfile");
    assert_containerfile_builds_the_same_config(&MIRAGE_DHCP, Path::new(bin()), &containerfile);
}
