//! Reproducible OCI images of MirageSDK's static service binaries, built
//! without a container engine, a daemon or a registry.
//!
//! The image is `FROM scratch`: one layer holding the static binary, nothing
//! else (the runtime creates /proc and the mount points of the bind mounts
//! of the convention, DESIGN.md section 6).
//! Everything that usually makes image builds differ from run to run is fixed
//! here: file times are the epoch, owners are numeric, entries are written in
//! sorted order, the layer's gzip header carries no time or name, JSON keys
//! are sorted, and `created` comes from the caller (`SOURCE_DATE_EPOCH`), not
//! the clock. The same binary and metadata therefore always give the same
//! manifest digest, which is what [`write_layout`] returns.
//!
//! The output is an OCI image layout (image-spec v1.1, "image-layout.md"):
//! `oci-layout`, `index.json` and content-addressed `blobs/sha256/`. podman,
//! skopeo and buildah read it through the `oci:DIR:TAG` transport; `podman
//! load` reads the same directory packed as an `oci-archive` ([`archive_layout`]).

pub mod tar;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// How the layer is stored. Both are reproducible; gzip is what to ship,
/// a plain tar is for quick local builds (tests build from unoptimized
/// binaries, where compressing tens of MiB costs half a minute).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    Gzip,
    None,
}

/// One service the writer builds an image of: everything that differs
/// between them. The layer, the config, the labels and the layout are
/// written by the same code for every service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    /// The binary's name, its path in the image (`/NAME`) and the image's title.
    pub name: &'static str,
    /// `org.opencontainers.image.description`.
    pub description: &'static str,
    /// The uid and gid the service runs as inside its container: an id of
    /// its own (its actuator's default on a host, so the state and runtime
    /// directories have one owner in every layout), never `nobody`
    /// (65534), which unrelated software shares. Numeric, because a static
    /// binary in a scratch image has no name lookup. See docs/security.md
    /// ("Running in a container") for why not root.
    pub id: u32,
    /// Capabilities the container is given, ambient for the non-root user.
    /// Sorted, as LinuxKit and podman list them.
    pub capabilities: &'static [&'static str],
    /// Bind mounts of the convention, `host:container[:options]`.
    pub binds: &'static [&'static str],
    /// Resource limits the container must be started with, as LinuxKit
    /// writes them (`type,soft,hard`, e.g. `nofile,4096,4096`), when the
    /// runtime's default is not enough: a role sets its own limit from its
    /// plan, and a process without `CAP_SYS_RESOURCE` cannot go above the
    /// hard limit it was started with. Empty: the runtime's default.
    pub rlimits: &'static [&'static str],
    /// Whether the engine can run as a KVM guest, and the container gets
    /// [`KVM_DEVICE`]: no device for a service without a guest image.
    pub kvm: bool,
}

/// The DHCPv4 client: raw frames (`CAP_NET_RAW`), addresses and routes
/// (`CAP_NET_ADMIN`), and resolv.conf.
pub const MIRAGE_DHCP: Service = Service {
    name: "mirage-dhcp",
    description: "Privilege-separated DHCPv4 client: sandboxed engine, checked actuator, one static binary",
    id: 65522,
    capabilities: &["CAP_NET_ADMIN", "CAP_NET_RAW"],
    binds: &[
        "/etc/mirage/dhcp:/etc/mirage/dhcp:ro",
        "/var/lib/mirage/dhcp:/var/lib/mirage/dhcp",
        "/run/mirage/dhcp:/run/mirage/dhcp",
        "/etc/resolv.conf:/etc/resolv.conf",
    ],
    rlimits: &[],
    kvm: true,
};

/// The NTP client: ordinary UDP sockets, and the clock (`CAP_SYS_TIME`,
/// held by its actuator alone; none with `--observe`). Its id is its
/// actuator's (crates/mirage-ntp `plan::ACTUATOR_ID`).
pub const MIRAGE_NTP: Service = Service {
    name: "mirage-ntp",
    description: "Privilege-separated NTP client: sandboxed engine, CAP_SYS_TIME actuator with a step policy, one static binary",
    id: 65528,
    capabilities: &["CAP_SYS_TIME"],
    binds: &[
        "/etc/mirage/ntp:/etc/mirage/ntp:ro",
        "/var/lib/mirage/ntp:/var/lib/mirage/ntp",
        "/run/mirage/ntp:/run/mirage/ntp",
    ],
    rlimits: &[],
    kvm: true,
};

/// The DNS forwarder: its listeners on port 53 (`CAP_NET_BIND_SERVICE`,
/// used by the supervisor to bind them and dropped from every set before
/// any byte of DNS is read; no role holds it), ordinary UDP and TCP
/// sockets to the upstreams. Its id is none of its roles' ids on a host
/// (engine 65529, network 65530: crates/mirage-dns `plan::RoleIds`), so
/// files a container made never look like a host role's. The network role
/// sets its own RLIMIT_NOFILE from its limits (1106 with the defaults:
/// one descriptor per upstream query in flight and per TCP client), above
/// the 1024 many runtimes give, and it cannot raise the hard limit itself:
/// the container gets 4096.
pub const MIRAGE_DNS: Service = Service {
    name: "mirage-dns",
    description: "Privilege-separated caching DNS forwarder: sandboxed engine, a network role that answers only clients that asked, one static binary",
    id: 65531,
    capabilities: &["CAP_NET_BIND_SERVICE"],
    binds: &[
        "/etc/mirage/dns:/etc/mirage/dns:ro",
        "/var/lib/mirage/dns:/var/lib/mirage/dns",
        "/run/mirage/dns:/run/mirage/dns",
    ],
    rlimits: &["nofile,4096,4096"],
    // The DNS engine has no guest image yet (docs/dns.md): /dev/kvm would
    // be a device it never opens.
    kvm: false,
};

/// Every service the writer knows, for `oci-image --service NAME`.
pub const SERVICES: [Service; 3] = [MIRAGE_DHCP, MIRAGE_NTP, MIRAGE_DNS];

impl Service {
    /// The service named `name` ("mirage-ntp"), if the writer knows it.
    pub fn named(name: &str) -> Option<Service> {
        SERVICES.into_iter().find(|s| s.name == name)
    }

    /// Where the binary lives in the image.
    pub fn binary_path(&self) -> String {
        format!("/{}", self.name)
    }

    /// LinuxKit's per-image defaults (its `org.mobyproject.config` label):
    /// the same capabilities, ids, binds, limits and KVM device
    /// ([`KVM_DEVICE`], for a service whose engine can be a guest) as
    /// the service's LinuxKit example (examples/NAME.yml).
    pub fn linuxkit_config(&self) -> Value {
        let (path, major, minor, mode) = KVM_DEVICE;
        let mut config = json!({
            "net": "host",
            "uid": self.id,
            "gid": self.id,
            "capabilities": self.capabilities,
            "ambient": self.capabilities,
            "noNewPrivileges": true,
            "readonly": true,
            "binds": self.binds,
            "devices": if self.kvm {
                json!([{"path": path, "type": "c", "major": major, "minor": minor, "mode": mode}])
            } else {
                json!([])
            },
        });
        // Only where needed: the other services' labels (and digests) stay
        // as they were.
        if !self.rlimits.is_empty() {
            config["rlimits"] = json!(self.rlimits);
        }
        config
    }

    /// The limits of [`Service::rlimits`] as podman's `--ulimit` values
    /// (`nofile=4096:4096`).
    pub fn ulimits(&self) -> Vec<String> {
        self.rlimits
            .iter()
            .map(|r| {
                let mut it = r.splitn(3, ',');
                let (kind, soft, hard) = (
                    it.next().unwrap_or_default(),
                    it.next().unwrap_or_default(),
                    it.next().unwrap_or_default(),
                );
                format!("{kind}={soft}:{hard}")
            })
            .collect()
    }
}

/// The KVM device, as a LinuxKit `devices` entry: character device
/// 10:232 at /dev/kvm, mode 0666 (a LinuxKit entry has no owner, and
/// everything in the container runs as the service's id). With it the engine runs
/// as a KVM guest where the machine has KVM; where it has none, opening
/// the node fails and the service falls back to seccomp and says why
/// (docs/operators.md).
pub const KVM_DEVICE: (&str, u32, u32, &str) = ("/dev/kvm", 10, 232, "0666");

/// Provenance written into the image's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// `org.opencontainers.image.version`, also the tag in `index.json`.
    pub version: String,
    /// `org.opencontainers.image.source`: the repository URL.
    pub source: String,
    /// `org.opencontainers.image.revision`: the commit the binary was built from.
    pub revision: String,
    /// `SOURCE_DATE_EPOCH`: seconds for `created`; none leaves it out.
    pub created: Option<u64>,
}

/// An image before it is written: the layer's entries and the runtime
/// configuration (image-spec "config.md", the `config` object).
#[derive(Clone, Debug)]
pub struct Image {
    pub entries: Vec<tar::Entry>,
    pub user: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Tag recorded as `org.opencontainers.image.ref.name` in `index.json`.
    pub tag: String,
    pub created: Option<String>,
}

/// Why an image could not be built or written.
#[derive(Debug)]
pub enum Error {
    Tar(tar::TarError),
    Io(String, std::io::Error),
    /// The output directory exists and is not empty.
    NotEmpty(String),
    BadMeta(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Tar(e) => write!(f, "{e}"),
            Error::Io(what, e) => write!(f, "{what}: {e}"),
            Error::NotEmpty(d) => write!(f, "{d} exists and is not empty; remove it first"),
            Error::BadMeta(m) => write!(f, "bad image metadata: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<tar::TarError> for Error {
    fn from(e: tar::TarError) -> Self {
        Error::Tar(e)
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::Io(what, e)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (RFC 3339, as the
/// image spec asks for `created`). Days to civil date after the well-known
/// era arithmetic of the proleptic Gregorian calendar.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn dir(path: &str, mode: u32, id: u32) -> tar::Entry {
    tar::Entry {
        path: path.into(),
        mode,
        uid: id,
        gid: id,
        kind: tar::Kind::Dir,
    }
}

/// The image of `service` around `binary` (the static executable's bytes),
/// the same image its Containerfile describes.
///
/// The layer holds the binary only. The `org.mobyproject.config` label carries the LinuxKit defaults
/// (capabilities, ambient set, uid, binds, host network, the KVM device), so that a LinuxKit
/// YAML entry needs only the `image:` line.
pub fn image(service: &Service, binary: Vec<u8>, meta: &Meta) -> Result<Image, Error> {
    for (name, value) in [
        ("version", &meta.version),
        ("source", &meta.source),
        ("revision", &meta.revision),
    ] {
        if value.is_empty() || value.chars().any(char::is_control) {
            return Err(Error::BadMeta(format!("{name} {value:?}")));
        }
    }
    // The tag must be a valid OCI reference tag ([A-Za-z0-9_][A-Za-z0-9._-]{0,127}).
    let tag_ok = meta.version.len() <= 128
        && meta
            .version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !meta.version.starts_with(['.', '-']);
    if !tag_ok {
        return Err(Error::BadMeta(format!(
            "version {:?} is not a valid tag",
            meta.version
        )));
    }
    let id = service.id;
    let binary_path = service.binary_path();
    // Read and execute for everyone, writable by nobody: the service runs
    // as its own id and must not be able to change its own code.
    let entries = vec![tar::Entry {
        path: binary_path.trim_start_matches('/').into(),
        mode: 0o555,
        uid: 0,
        gid: 0,
        kind: tar::Kind::File(binary),
    }];
    let created = meta.created.map(rfc3339);
    let mut labels = BTreeMap::new();
    let mut label = |k: &str, v: &str| {
        labels.insert(k.to_owned(), v.to_owned());
    };
    label("org.opencontainers.image.title", service.name);
    label("org.opencontainers.image.description", service.description);
    label("org.opencontainers.image.licenses", "Apache-2.0");
    label("org.opencontainers.image.version", &meta.version);
    label("org.opencontainers.image.source", &meta.source);
    label("org.opencontainers.image.revision", &meta.revision);
    if let Some(c) = &created {
        label("org.opencontainers.image.created", c);
    }
    label("org.mobyproject.config", &service.linuxkit_config().to_string());
    Ok(Image {
        entries,
        user: format!("{id}:{id}"),
        entrypoint: vec![binary_path],
        cmd: vec!["run".into()],
        labels,
        tag: meta.version.clone(),
        created,
    })
}

/// A blob: its bytes and `sha256:<hex>` digest.
struct Blob {
    bytes: Vec<u8>,
    digest: String,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        let digest = sha256(&bytes);
        Blob { bytes, digest }
    }
    fn json(v: &Value) -> Blob {
        // serde_json::Value objects keep keys sorted (BTreeMap) unless the
        // `preserve_order` feature is on, and then keep the fixed order of
        // the literals above: the bytes are the same on every run either way.
        Blob::new(v.to_string().into_bytes())
    }
    fn descriptor(&self, media_type: &str) -> Value {
        json!({"mediaType": media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

/// `sha256:<lowercase hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// gzip with a fixed header: no file name, mtime 0, fixed OS byte.
fn gzip(data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(data).map_err(io("compressing the layer"))?;
    enc.finish().map_err(io("compressing the layer"))
}

/// What [`write_layout`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The manifest's digest: the image's identity (`podman inspect`'s
    /// `Digest`), equal for equal inputs.
    pub manifest_digest: String,
    /// The config's digest: podman's image id.
    pub config_digest: String,
    /// Compressed layer size in bytes (what a pull transfers).
    pub layer_size: u64,
    /// Uncompressed layer size (what the image takes unpacked).
    pub unpacked_size: u64,
}

/// The blobs of `image`: layer, config, manifest, and the index document.
fn blobs(image: &Image, compression: LayerCompression) -> Result<(Vec<Blob>, Value, Written), Error> {
    let mut entries = image.entries.clone();
    // Sorted by path, so parents come before children and the order never
    // depends on how the caller listed them.
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let layer_tar = tar::archive(&entries)?;
    let diff_id = sha256(&layer_tar);
    let (layer, layer_media) = match compression {
        LayerCompression::Gzip => (Blob::new(gzip(&layer_tar)?), MEDIA_LAYER_GZIP),
        LayerCompression::None => (Blob::new(layer_tar.clone()), MEDIA_LAYER_TAR),
    };
    let mut config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": image.user,
            "Entrypoint": image.entrypoint,
            "Cmd": image.cmd,
            "WorkingDir": "/",
            "Labels": image.labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "oci-image (MirageSDK reproducible image writer)"}],
    });
    if let Some(c) = &image.created {
        config["created"] = json!(c);
        config["history"][0]["created"] = json!(c);
    }
    let config = Blob::json(&config);
    let manifest = Blob::json(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config.descriptor(MEDIA_CONFIG),
        "layers": [layer.descriptor(layer_media)],
        "annotations": {
            "org.opencontainers.image.version": image.labels.get("org.opencontainers.image.version"),
            "org.opencontainers.image.revision": image.labels.get("org.opencontainers.image.revision"),
            "org.opencontainers.image.source": image.labels.get("org.opencontainers.image.source"),
        },
    }));
    let mut desc = manifest.descriptor(MEDIA_MANIFEST);
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": image.tag});
    desc["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let index = json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [desc]});
    let written = Written {
        manifest_digest: manifest.digest.clone(),
        config_digest: config.digest.clone(),
        layer_size: layer.bytes.len() as u64,
        unpacked_size: layer_tar.len() as u64,
    };
    Ok((vec![layer, config, manifest], index, written))
}

/// Write `image` as an OCI image layout into `out`, which must be absent or
/// empty (a stale blob or index entry would make the result depend on
/// earlier runs).
pub fn write_layout(image: &Image, out: &Path, compression: LayerCompression) -> Result<Written, Error> {
    let shown = out.display().to_string();
    if let Ok(mut it) = std::fs::read_dir(out)
        && it.next().is_some()
    {
        return Err(Error::NotEmpty(shown));
    }
    let (blobs, index, written) = blobs(image, compression)?;
    let blob_dir = out.join("blobs").join("sha256");
    std::fs::create_dir_all(&blob_dir).map_err(io(format!("creating {}", blob_dir.display())))?;
    for b in &blobs {
        let name = b.digest.trim_start_matches("sha256:");
        let path = blob_dir.join(name);
        std::fs::write(&path, &b.bytes).map_err(io(format!("writing {}", path.display())))?;
    }
    let layout = json!({"imageLayoutVersion": "1.0.0"}).to_string();
    std::fs::write(out.join("oci-layout"), layout).map_err(io(format!("writing {shown}/oci-layout")))?;
    std::fs::write(out.join("index.json"), index.to_string())
        .map_err(io(format!("writing {shown}/index.json")))?;
    Ok(written)
}

/// Pack a layout directory written by [`write_layout`] as an `oci-archive`
/// tar (what `podman load -i` and `skopeo copy oci-archive:` read), with
/// the same fixed times and owners, so equal layouts give equal archives.
pub fn archive_layout(layout: &Path) -> Result<Vec<u8>, Error> {
    let mut entries = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let path = if rel.is_empty() {
            layout.to_path_buf()
        } else {
            layout.join(&rel)
        };
        let rd = std::fs::read_dir(&path).map_err(io(format!("reading {}", path.display())))?;
        for e in rd {
            let e = e.map_err(io(format!("reading {}", path.display())))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = e.file_type().map_err(io(format!("reading {child}")))?;
            if ft.is_dir() {
                entries.push(dir(&child, 0o755, 0));
                stack.push(child);
            } else if ft.is_file() {
                let data = std::fs::read(e.path()).map_err(io(format!("reading {child}")))?;
                entries.push(tar::Entry {
                    path: child,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    kind: tar::Kind::File(data),
                });
            }
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(tar::archive(&entries)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            version: "0.1.0".into(),
            source: "https://example.org/mirage".into(),
            revision: "0123456789abcdef".into(),
            created: Some(0),
        }
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn same_inputs_same_digest_and_any_change_shows() {
        let a = blobs(
            &image(&MIRAGE_DHCP, b"binary".to_vec(), &meta()).unwrap(),
            LayerCompression::Gzip,
        )
        .unwrap()
        .2;
        let b = blobs(
            &image(&MIRAGE_DHCP, b"binary".to_vec(), &meta()).unwrap(),
            LayerCompression::Gzip,
        )
        .unwrap()
        .2;
        assert_eq!(a, b);
        let other_bin = blobs(
            &image(&MIRAGE_DHCP, b"binarY".to_vec(), &meta()).unwrap(),
            LayerCompression::Gzip,
        )
        .unwrap()
        .2;
        assert_ne!(a.manifest_digest, other_bin.manifest_digest);
        let mut m = meta();
        m.revision = "fedcba9876543210".into();
        let other_rev = blobs(
            &image(&MIRAGE_DHCP, b"binary".to_vec(), &m).unwrap(),
            LayerCompression::Gzip,
        )
        .unwrap()
        .2;
        assert_ne!(a.manifest_digest, other_rev.manifest_digest);
        // The layer does not depend on labels: only config and manifest move.
        assert_eq!(a.layer_size, other_rev.layer_size);
    }

    #[test]
    fn config_has_labels_user_and_diff_id() {
        let image = image(&MIRAGE_DHCP, b"bin".to_vec(), &meta()).unwrap();
        let (blobs, index, written) = blobs(&image, LayerCompression::Gzip).unwrap();
        let config: Value = serde_json::from_slice(&blobs[1].bytes).unwrap();
        let labels = &config["config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], "0.1.0");
        assert_eq!(
            labels["org.opencontainers.image.source"],
            "https://example.org/mirage"
        );
        assert_eq!(labels["org.opencontainers.image.revision"], "0123456789abcdef");
        assert_eq!(labels["org.opencontainers.image.created"], "1970-01-01T00:00:00Z");
        assert_eq!(config["config"]["User"], "65522:65522");
        assert_eq!(config["config"]["Entrypoint"], json!(["/mirage-dhcp"]));
        let moby: Value = serde_json::from_str(labels["org.mobyproject.config"].as_str().unwrap()).unwrap();
        assert_eq!(moby["ambient"], json!(["CAP_NET_ADMIN", "CAP_NET_RAW"]));
        // The KVM device, as LinuxKit reads a `devices` entry.
        assert_eq!(
            moby["devices"],
            json!([{"path": "/dev/kvm", "type": "c", "major": 10, "minor": 232, "mode": "0666"}])
        );
        // diff_id is the digest of the uncompressed layer.
        let mut d = flate2::read::GzDecoder::new(&blobs[0].bytes[..]);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut raw).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], sha256(&raw).as_str());
        assert_eq!(raw.len() as u64, written.unpacked_size);
        assert_eq!(index["manifests"][0]["digest"], written.manifest_digest.as_str());
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "0.1.0"
        );
        let manifest: Value = serde_json::from_slice(&blobs[2].bytes).unwrap();
        assert_eq!(manifest["config"]["digest"], written.config_digest.as_str());
        assert_eq!(manifest["layers"][0]["size"], written.layer_size);
    }

    #[test]
    fn each_service_gets_its_own_user_entrypoint_and_linuxkit_defaults() {
        let ntp = image(&MIRAGE_NTP, b"bin".to_vec(), &meta()).unwrap();
        let (blobs_ntp, _, written_ntp) = blobs(&ntp, LayerCompression::Gzip).unwrap();
        let config: Value = serde_json::from_slice(&blobs_ntp[1].bytes).unwrap();
        assert_eq!(config["config"]["User"], "65528:65528");
        assert_eq!(config["config"]["Entrypoint"], json!(["/mirage-ntp"]));
        assert_eq!(config["config"]["Cmd"], json!(["run"]));
        let labels = &config["config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.title"], "mirage-ntp");
        let moby: Value = serde_json::from_str(labels["org.mobyproject.config"].as_str().unwrap()).unwrap();
        assert_eq!(moby, MIRAGE_NTP.linuxkit_config());
        assert_eq!(moby["capabilities"], json!(["CAP_SYS_TIME"]));
        assert_eq!(moby["ambient"], json!(["CAP_SYS_TIME"]));
        assert_eq!(
            (moby["uid"].as_u64(), moby["gid"].as_u64()),
            (Some(65528), Some(65528))
        );
        assert_eq!(
            moby["binds"],
            json!([
                "/etc/mirage/ntp:/etc/mirage/ntp:ro",
                "/var/lib/mirage/ntp:/var/lib/mirage/ntp",
                "/run/mirage/ntp:/run/mirage/ntp",
            ])
        );
        // The layer holds /mirage-ntp, read and execute only, root's.
        let mut d = flate2::read::GzDecoder::new(&blobs_ntp[0].bytes[..]);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut raw).unwrap();
        assert_eq!(&raw[..11], b"mirage-ntp\0");
        assert_eq!(&raw[100..107], b"0000555");
        // Same binary, other service: another image.
        let dhcp = blobs(
            &image(&MIRAGE_DHCP, b"bin".to_vec(), &meta()).unwrap(),
            LayerCompression::Gzip,
        )
        .unwrap()
        .2;
        assert_ne!(dhcp.manifest_digest, written_ntp.manifest_digest);
        assert_eq!(Service::named("mirage-ntp"), Some(MIRAGE_NTP));
        assert_eq!(Service::named("mirage-dns"), Some(MIRAGE_DNS));
        assert_eq!(Service::named("mirage-resolved"), None);
        // No service shares another's id, and none is nobody's or root's.
        let ids: Vec<u32> = SERVICES.iter().map(|s| s.id).collect();
        assert_eq!(ids, [65522, 65528, 65531]);
        // Nor any role's default id on a host (dhcp 65520..=65522 with its
        // actuator's being the service's own, ntp 65526..=65528 likewise,
        // dns 65529 and 65530), so a file a container made never looks
        // like another role's.
        for role in [65520, 65521, 65526, 65527, 65529, 65530] {
            assert!(!ids.contains(&role), "{role}");
        }
    }

    #[test]
    fn every_service_is_reproducible_and_differs_from_the_others() {
        let mut digests = Vec::new();
        for service in SERVICES {
            let build = || {
                let image = image(&service, b"same binary".to_vec(), &meta()).unwrap();
                let (blobs, index, written) = blobs(&image, LayerCompression::Gzip).unwrap();
                let bytes: Vec<Vec<u8>> = blobs.into_iter().map(|b| b.bytes).collect();
                (bytes, index.to_string(), written)
            };
            let (a, b) = (build(), build());
            assert!(a == b, "{}: two builds differ", service.name);
            // And on disk, packed: the same archive bytes.
            let dirs: Vec<_> = ["a", "b"]
                .iter()
                .map(|n| {
                    std::env::temp_dir().join(format!(
                        "oci-image-repro-{}-{}-{n}",
                        service.name,
                        std::process::id()
                    ))
                })
                .collect();
            let mut archives = Vec::new();
            for d in &dirs {
                let _ = std::fs::remove_dir_all(d);
                let image = image(&service, b"same binary".to_vec(), &meta()).unwrap();
                write_layout(&image, d, LayerCompression::Gzip).unwrap();
                archives.push(archive_layout(d).unwrap());
                std::fs::remove_dir_all(d).unwrap();
            }
            assert!(archives[0] == archives[1], "{}: archives differ", service.name);
            digests.push(a.2.manifest_digest);
        }
        digests.sort();
        digests.dedup();
        assert_eq!(
            digests.len(),
            SERVICES.len(),
            "one binary, three services, three images"
        );
    }

    #[test]
    fn dns_binds_port_53_only_and_asks_for_its_descriptors() {
        let dns = image(&MIRAGE_DNS, b"bin".to_vec(), &meta()).unwrap();
        let (blobs_dns, _, _) = blobs(&dns, LayerCompression::Gzip).unwrap();
        let config: Value = serde_json::from_slice(&blobs_dns[1].bytes).unwrap();
        assert_eq!(config["config"]["User"], "65531:65531");
        assert_eq!(config["config"]["Entrypoint"], json!(["/mirage-dns"]));
        assert_eq!(config["config"]["Cmd"], json!(["run"]));
        let labels = &config["config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.title"], "mirage-dns");
        let moby: Value = serde_json::from_str(labels["org.mobyproject.config"].as_str().unwrap()).unwrap();
        assert_eq!(moby, MIRAGE_DNS.linuxkit_config());
        assert_eq!(moby["capabilities"], json!(["CAP_NET_BIND_SERVICE"]));
        assert_eq!(moby["ambient"], json!(["CAP_NET_BIND_SERVICE"]));
        assert_eq!(
            (moby["uid"].as_u64(), moby["gid"].as_u64()),
            (Some(65531), Some(65531))
        );
        assert_eq!(moby["readonly"], true);
        assert_eq!(moby["noNewPrivileges"], true);
        assert_eq!(
            moby["binds"],
            json!([
                "/etc/mirage/dns:/etc/mirage/dns:ro",
                "/var/lib/mirage/dns:/var/lib/mirage/dns",
                "/run/mirage/dns:/run/mirage/dns",
            ])
        );
        // No guest image for the DNS engine: no KVM device.
        assert_eq!(moby["devices"], json!([]));
        // Above the network role's 1106 descriptors with the default limits.
        assert_eq!(moby["rlimits"], json!(["nofile,4096,4096"]));
        assert_eq!(MIRAGE_DNS.ulimits(), ["nofile=4096:4096"]);
        // The other services ask for none, and their labels have no key for it.
        for s in [MIRAGE_DHCP, MIRAGE_NTP] {
            assert!(s.linuxkit_config().get("rlimits").is_none(), "{}", s.name);
            assert!(s.ulimits().is_empty());
        }
        let mut d = flate2::read::GzDecoder::new(&blobs_dns[0].bytes[..]);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut raw).unwrap();
        assert_eq!(&raw[..11], b"mirage-dns\0");
        assert_eq!(&raw[100..107], b"0000555");
    }

    #[test]
    fn plain_layer_is_the_diff_id_itself() {
        let image = image(&MIRAGE_DHCP, b"bin".to_vec(), &meta()).unwrap();
        let (blobs, _, written) = blobs(&image, LayerCompression::None).unwrap();
        let config: Value = serde_json::from_slice(&blobs[1].bytes).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], blobs[0].digest.as_str());
        assert_eq!(written.layer_size, written.unpacked_size);
        let manifest: Value = serde_json::from_slice(&blobs[2].bytes).unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], MEDIA_LAYER_TAR);
        let gz = blobs_digest(&image, LayerCompression::Gzip);
        assert_ne!(gz, written.manifest_digest);
    }

    fn blobs_digest(image: &Image, c: LayerCompression) -> String {
        blobs(image, c).unwrap().2.manifest_digest
    }

    #[test]
    fn bad_metadata_is_refused() {
        for (field, value) in [
            ("version", ""),
            ("version", "-x"),
            ("version", "1 0"),
            ("revision", "a\nb"),
        ] {
            let mut m = meta();
            match field {
                "version" => m.version = value.into(),
                _ => m.revision = value.into(),
            }
            assert!(
                matches!(image(&MIRAGE_DHCP, Vec::new(), &m), Err(Error::BadMeta(_))),
                "{field}={value:?}"
            );
        }
    }

    #[test]
    fn layout_on_disk_matches_and_refuses_a_used_directory() {
        let dir = std::env::temp_dir().join(format!("oci-image-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let image = image(&MIRAGE_DHCP, b"bin".to_vec(), &meta()).unwrap();
        let written = write_layout(&image, &dir, LayerCompression::Gzip).unwrap();
        let blob = dir
            .join("blobs/sha256")
            .join(written.manifest_digest.trim_start_matches("sha256:"));
        assert_eq!(sha256(&std::fs::read(&blob).unwrap()), written.manifest_digest);
        assert!(matches!(
            write_layout(&image, &dir, LayerCompression::Gzip),
            Err(Error::NotEmpty(_))
        ));
        let a = archive_layout(&dir).unwrap();
        assert_eq!(a, archive_layout(&dir).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
