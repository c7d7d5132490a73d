//! A service's image in a real container runtime: podman with runc, the
//! image written by the reproducible writer (`oci_image`) from the build
//! under test and loaded through the `oci:` transport (no registry), run
//! as docs/operators.md has the operator run it, in a network namespace
//! the test made; the checks every service's container test makes of the
//! supervisor and its roles from the host's `/proc`; and the comparison of
//! a Containerfile's build with the writer's image.
//!
//! Every podman call is bounded by `timeout` ([`PODMAN_TIMEOUT_SECS`]);
//! the containers and images a test made are removed when its [`Podman`]
//! drops, also when the test panics (with the containers' logs printed).
//! Needs root (podman's rootful storage), podman and runc.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use oci_image::{LayerCompression, Meta, Service, Written};

use crate::procfs::ProcStatus;
use crate::tempdir::TestDir;

/// Bound on any one podman command (image import, start, stop, a run to
/// its end).
pub const PODMAN_TIMEOUT_SECS: u64 = 120;
/// The revision label of test images, in place of a commit.
pub const TEST_REVISION: &str = "container-test";
/// The version label and `oci:` tag of test images: the workspace's (every
/// service crate shares it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `podman` under `timeout`, not yet run.
pub fn podman_command() -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg(PODMAN_TIMEOUT_SECS.to_string()).arg("podman");
    cmd
}

/// Run podman with `args`, bounded, one call at a time in this process: an
/// image inspected while another test's image was removed once failed with
/// "locating item named manifest" (podman's store).
pub fn podman(args: &[&str]) -> Output {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    podman_command()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("podman {args:?}: {e} (apt-get install podman runc)"))
}

/// [`podman`] that must succeed; its stdout, trimmed.
pub fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The runs of one test binary that share an image (same binary and
/// labels: the same image id) take this one at a time, since each removes
/// the image when done.
pub fn image_lock() -> MutexGuard<'static, ()> {
    static IMAGE: Mutex<()> = Mutex::new(());
    IMAGE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Containers and images a test made; removed on drop, the containers'
/// logs printed first if the test is failing. Declare it after what the
/// containers use (a namespace, a directory) so that it drops first.
#[derive(Default)]
pub struct Podman {
    containers: Vec<String>,
    images: Vec<String>,
}

impl Podman {
    /// A container's stdout and stderr so far.
    pub fn logs(&self, name: &str) -> String {
        let out = podman(&["logs", name]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Load the layout at `layout` (tagged [`VERSION`]) through the `oci:`
    /// transport; returns podman's image id, which must be the config
    /// digest `written` names. Removed on drop.
    pub fn pull(&mut self, layout: &Path, written: &Written) -> String {
        let source = format!("oci:{}:{VERSION}", layout.display());
        let id = podman_ok(&["pull", "--quiet", &source]);
        self.images.push(id.clone());
        assert_eq!(format!("sha256:{id}"), written.config_digest);
        id
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

/// The labels of a test image: [`VERSION`], the repository, `revision`,
/// and a fixed creation time (reproducible).
pub fn test_meta(revision: &str) -> Meta {
    Meta {
        version: VERSION.to_owned(),
        source: env!("CARGO_PKG_REPOSITORY").to_owned(),
        revision: revision.to_owned(),
        created: Some(0),
    }
}

/// `service`'s image of `binary`, labelled [`test_meta`]`(revision)`,
/// written as an OCI layout into `dir`.
pub fn write_layout(service: &Service, binary: &Path, dir: &Path, revision: &str) -> Written {
    let binary = std::fs::read(binary).unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    let image = oci_image::image(service, binary, &test_meta(revision)).unwrap();
    // Unoptimized test builds of the compressor take half a minute on the
    // debug binary; the plain layer is built by the same code path.
    oci_image::write_layout(&image, dir, LayerCompression::None).unwrap()
}

/// The reproducible build, checked: the image written twice from the same
/// inputs ([`TEST_REVISION`]) into `dir/layout-a` and `dir/layout-b` has
/// the same digests and the same oci-archive bytes. Returns the first
/// layout's path and digests.
pub fn reproducible_layout(service: &Service, binary: &Path, dir: &Path) -> (PathBuf, Written) {
    let (a, b) = (dir.join("layout-a"), dir.join("layout-b"));
    let first = write_layout(service, binary, &a, TEST_REVISION);
    let second = write_layout(service, binary, &b, TEST_REVISION);
    assert_eq!(first, second, "two builds of the same binary differ");
    assert!(
        oci_image::archive_layout(&a).unwrap() == oci_image::archive_layout(&b).unwrap(),
        "the two oci-archives differ"
    );
    assert!(first.manifest_digest.starts_with("sha256:"));
    (a, first)
}

/// An image's config (`User`, `Entrypoint`, `Cmd`, `Labels`, ...) as podman
/// reports it.
pub fn image_config(image: &str) -> serde_json::Value {
    let config = podman_ok(&["image", "inspect", "--format", "{{json .Config}}", image]);
    serde_json::from_str(&config).unwrap()
}

/// `p` owned by `id` (user and group), as the operator makes the state and
/// runtime directories (docs/operators.md).
pub fn chown_to(p: &Path, id: u32) {
    std::os::unix::fs::chown(p, Some(id), Some(id)).unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

/// Host directories for the convention's binds, under `base`: `etc` (the
/// read-only config, root's), `state` and `run` (the service uid's).
pub struct ServiceDirs {
    pub etc: PathBuf,
    pub state: PathBuf,
    pub run: PathBuf,
    service: Service,
}

impl ServiceDirs {
    pub fn new(base: &Path, service: &Service) -> ServiceDirs {
        let dirs = ServiceDirs {
            etc: base.join("etc"),
            state: base.join("state"),
            run: base.join("run"),
            service: *service,
        };
        std::fs::create_dir_all(&dirs.etc).unwrap();
        for d in [&dirs.state, &dirs.run] {
            std::fs::create_dir_all(d).unwrap();
            chown_to(d, service.id);
        }
        dirs
    }

    /// `run` with the three bound where the service's image has them
    /// (`oci_image::Service::binds`), the config read-only.
    pub fn bound(&self, run: Run) -> Run {
        let at = |prefix: &str| in_container(&self.service, prefix);
        run.volume_ro(&self.etc, &at("/etc/mirage/"))
            .volume(&self.state, &at("/var/lib/mirage/"))
            .volume(&self.run, &at("/run/mirage/"))
    }

    /// The status.json the service published through the `run` bind, once
    /// it is there and whole.
    pub fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(self.run.join("status.json")).ok()?).ok()
    }
}

/// The path in the container of `service`'s bind that starts with `prefix`.
fn in_container(service: &Service, prefix: &str) -> String {
    service
        .binds
        .iter()
        .filter_map(|b| b.split(':').nth(1))
        .find(|inside| inside.starts_with(prefix))
        .unwrap_or_else(|| panic!("{} has no bind under {prefix}: {:?}", service.name, service.binds))
        .to_owned()
}

/// What a container gets for KVM.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Kvm {
    /// No device: `--sandbox auto` resolves to seccomp.
    Without,
    /// `--device` with a node of the service uid's own ([`kvm_node`]):
    /// `auto` resolves to kvm.
    Device,
}

/// A KVM character device at `node`, owned by `id` with mode 0600, as
/// docs/operators.md has the operator make it: podman gives the
/// container's node the owner and mode of the host's, and the host's
/// /dev/kvm (root's, 0600 on these machines) is one the service uid
/// cannot open.
pub fn kvm_node(node: &Path, id: u32) -> PathBuf {
    let (_, major, minor, _) = oci_image::KVM_DEVICE;
    let st = Command::new("mknod")
        .args(["-m", "0600"])
        .arg(node)
        .args(["c", &major.to_string(), &minor.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "mknod {}", node.display());
    chown_to(node, id);
    node.to_owned()
}

/// `podman run` of a service's image as docs/operators.md runs it: runc
/// (crun fails on hosts with hybrid cgroups), explicit rlimits (podman
/// otherwise copies the host's, which a host without CAP_SYS_RESOURCE
/// cannot grant: the service's own, else 1024 descriptors), every
/// capability dropped but the service's, its uid and gid, no_new_privs, a
/// read-only root, in network namespace `netns`. A test changes only what
/// it is about.
pub struct Run {
    nofile: String,
    capabilities: Vec<String>,
    user: String,
    network: String,
    volumes: Vec<String>,
    devices: Vec<String>,
}

impl Run {
    pub fn new(service: &Service, netns: &str) -> Run {
        let nofile = service
            .ulimits()
            .into_iter()
            .find(|u| u.starts_with("nofile="))
            .unwrap_or_else(|| "nofile=1024:1024".to_owned());
        let capabilities = service
            .capabilities
            .iter()
            .map(|c| c.strip_prefix("CAP_").unwrap_or(c).to_owned())
            .collect();
        Run {
            nofile,
            capabilities,
            user: format!("{0}:{0}", service.id),
            network: format!("ns:/run/netns/{netns}"),
            volumes: Vec::new(),
            devices: Vec::new(),
        }
    }

    /// Another descriptor limit (`nofile=SOFT:HARD`).
    pub fn nofile(mut self, limit: &str) -> Run {
        self.nofile = limit.to_owned();
        self
    }

    /// Other capabilities (podman's names, `NET_RAW`); none: all dropped.
    pub fn capabilities(mut self, caps: &[&str]) -> Run {
        self.capabilities = caps.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    pub fn volume(mut self, host: &Path, inside: &str) -> Run {
        self.volumes.push(format!("{}:{inside}", host.display()));
        self
    }

    pub fn volume_ro(mut self, host: &Path, inside: &str) -> Run {
        self.volumes.push(format!("{}:{inside}:ro", host.display()));
        self
    }

    /// The device node `host` as `inside`.
    pub fn device(mut self, host: &Path, inside: &str) -> Run {
        self.devices.push(format!("{}:{inside}", host.display()));
        self
    }

    fn options(&self) -> Vec<String> {
        let mut o: Vec<String> = ["--runtime", "runc", "--ulimit", &self.nofile]
            .into_iter()
            .chain(["--ulimit", "nproc=1024:1024", "--cap-drop=all"])
            .map(str::to_owned)
            .collect();
        if !self.capabilities.is_empty() {
            o.push(format!("--cap-add={}", self.capabilities.join(",")));
        }
        o.extend(
            [
                "--user",
                &self.user,
                "--security-opt",
                "no-new-privileges",
                "--read-only",
            ]
            .map(str::to_owned),
        );
        o.extend(["--network".to_owned(), self.network.clone()]);
        for v in &self.volumes {
            o.extend(["--volume".to_owned(), v.clone()]);
        }
        for d in &self.devices {
            o.extend(["--device".to_owned(), d.clone()]);
        }
        o
    }

    /// Start `image` with `command` in the background as container `name`,
    /// removed when `pm` drops.
    pub fn detached(&self, pm: &mut Podman, name: &str, image: &str, command: &[&str]) {
        let options = self.options();
        let args: Vec<&str> = ["run", "--detach", "--name", name]
            .into_iter()
            .chain(options.iter().map(String::as_str))
            .chain([image])
            .chain(command.iter().copied())
            .collect();
        pm.containers.push(name.to_owned());
        podman_ok(&args);
    }

    /// Run `image` with `command` in the foreground (`--rm`) until it
    /// ends, bounded by [`PODMAN_TIMEOUT_SECS`]; not one at a time with
    /// [`podman`], since it lasts as long as the service runs.
    pub fn to_its_end(&self, image: &str, command: &[&str]) -> Output {
        podman_command()
            .args(["run", "--rm"])
            .args(self.options())
            .arg(image)
            .args(command)
            .output()
            .unwrap()
    }
}

/// The host pid of a running container's first process (the supervisor).
pub fn container_pid(name: &str) -> u32 {
    podman_ok(&["inspect", "--format", "{{.State.Pid}}", name])
        .parse()
        .unwrap()
}

/// The capabilities podman gave a container, sorted.
pub fn effective_caps(name: &str) -> Vec<String> {
    let caps = podman_ok(&["inspect", "--format", "{{json .EffectiveCaps}}", name]);
    let mut caps: Vec<String> = serde_json::from_str(&caps).unwrap();
    caps.sort();
    caps
}

/// `podman stop` (SIGTERM, then 10 s): the service must end by itself,
/// with status 0.
pub fn stop_cleanly(name: &str) {
    podman_ok(&["stop", "--time", "10", name]);
    assert_eq!(
        podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", name]),
        "0",
        "{name} exit code"
    );
}

/// Not dumpable: `pid`'s /proc files belong to root, not to the uid it
/// shares with the other processes of the container.
pub fn assert_not_dumpable(pid: u32, what: &str) {
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/mem")).unwrap().uid(),
        0,
        "{what} dumpable"
    );
}

/// The supervisor once its roles run: uid `id` throughout, no capability
/// kept but the container's bounding set `bounding`, not dumpable.
pub fn assert_supervisor_keeps_nothing(pid: u32, id: u32, bounding: u64) {
    let sup = ProcStatus::read(pid);
    assert_eq!(sup.uids(), [id; 4], "supervisor uids");
    assert_eq!(sup.caps("CapBnd"), bounding, "supervisor CapBnd");
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(sup.caps(set), 0, "supervisor {set}");
    }
    assert_not_dumpable(pid, "supervisor");
}

/// A role in the container: uid and gid `id` throughout, exactly `held`
/// effective and permitted, nothing inheritable or ambient, a bounding set
/// within the container's `bounding`, no_new_privs, under its seccomp
/// filter, not dumpable.
pub fn assert_role_confined(role: &str, pid: u32, id: u32, bounding: u64, held: u64) {
    let st = ProcStatus::read(pid);
    assert_eq!(st.uids(), [id; 4], "{role} uids");
    assert_eq!(st.gids(), [id; 4], "{role} gids");
    assert_eq!(st.caps("CapEff"), held, "{role} CapEff");
    assert_eq!(st.caps("CapPrm"), held, "{role} CapPrm");
    assert_eq!(st.caps("CapInh"), 0, "{role} CapInh");
    assert_eq!(st.caps("CapAmb"), 0, "{role} CapAmb");
    assert_eq!(st.caps("CapBnd") & !bounding, 0, "{role} CapBnd");
    assert!(st.no_new_privs(), "{role} NoNewPrivs");
    assert_eq!(st.seccomp(), 2, "{role} runs under its filter");
    assert_not_dumpable(pid, role);
}

/// `containerfile` built by podman from `binary` describes the same image
/// as the reproducible writer: same user, entrypoint, command and labels
/// (the binary is the same file); and the image runs `--version` with no
/// capability at all.
pub fn assert_containerfile_builds_the_same_config(service: &Service, binary: &Path, containerfile: &Path) {
    let ctx = TestDir::new(
        &format!("{}-containerfile", service.name),
        &crate::netns::unique_id().0,
    );
    struct Untag(String);
    impl Drop for Untag {
        fn drop(&mut self) {
            let _ = podman(&["rmi", "--force", &self.0]);
        }
    }
    let tag = format!(
        "localhost/{}-containerfile-test:{}",
        service.name,
        std::process::id()
    );
    let _untag = Untag(tag.clone());
    std::fs::copy(binary, ctx.join(service.name)).unwrap();
    let m = test_meta(TEST_REVISION);
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
        &format!("BINARY={}", service.name),
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
    let built = image_config(&tag);
    let ours = oci_image::image(service, b"-".to_vec(), &Meta { created: None, ..m }).unwrap();
    assert_eq!(built["User"], ours.user.as_str());
    assert_eq!(built["Entrypoint"], serde_json::json!(ours.entrypoint));
    assert_eq!(built["Cmd"], serde_json::json!(ours.cmd));
    for (k, v) in &ours.labels {
        let got = built["Labels"][k]
            .as_str()
            .unwrap_or_else(|| panic!("label {k} missing"));
        if k == "org.mobyproject.config" {
            let got: serde_json::Value = serde_json::from_str(got).unwrap();
            assert_eq!(got, service.linuxkit_config(), "{k}");
        } else {
            assert_eq!(got, v, "{k}");
        }
    }
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
    assert_eq!(version, format!("{} {VERSION}", service.name));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(run: &Run) -> String {
        run.options().join(" ")
    }

    #[test]
    fn a_run_has_the_services_limits_capabilities_and_binds() {
        let dns = Run::new(&oci_image::MIRAGE_DNS, "ns1");
        assert_eq!(
            args(&dns),
            "--runtime runc --ulimit nofile=4096:4096 --ulimit nproc=1024:1024 --cap-drop=all \
             --cap-add=NET_BIND_SERVICE --user 65531:65531 --security-opt no-new-privileges --read-only \
             --network ns:/run/netns/ns1"
        );
        let base = Path::new("/b");
        let dirs = ServiceDirs {
            etc: base.join("etc"),
            state: base.join("state"),
            run: base.join("run"),
            service: oci_image::MIRAGE_DHCP,
        };
        let dhcp = dirs
            .bound(Run::new(&oci_image::MIRAGE_DHCP, "ns2"))
            .device(Path::new("/b/kvm"), "/dev/kvm");
        let dhcp = args(&dhcp);
        assert!(dhcp.contains("--ulimit nofile=1024:1024 "), "{dhcp}");
        assert!(dhcp.contains("--cap-add=NET_ADMIN,NET_RAW "), "{dhcp}");
        assert!(
            dhcp.ends_with(
                "--volume /b/etc:/etc/mirage/dhcp:ro --volume /b/state:/var/lib/mirage/dhcp \
                 --volume /b/run:/run/mirage/dhcp --device /b/kvm:/dev/kvm"
            ),
            "{dhcp}"
        );
        let none = args(
            &Run::new(&oci_image::MIRAGE_NTP, "n")
                .capabilities(&[])
                .nofile("nofile=30:30"),
        );
        assert!(!none.contains("--cap-add"), "{none}");
        assert!(none.contains("--ulimit nofile=30:30 "), "{none}");
    }
}
