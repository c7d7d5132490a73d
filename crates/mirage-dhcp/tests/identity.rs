//! Who the daemon runs as and what it trusts on the host's file system
//! (issue 9, items 7 and 10): one uid per role, none shared with other
//! software; state and runtime directories only of the actuator's own;
//! `status` reading what a role's uid wrote without trusting it.
//! Needs root (namespaces, switching uids); CI runs as root.

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::{ACTUATOR_ID, CLIENT_IF, ENGINE_ID, NETWORK_ID, Net, bin};

const BOUND_WITHIN: Duration = Duration::from_secs(20);

/// `sh -c script` as `uid`/`gid` (no supplementary groups).
fn sh_as(uid: u32, script: &str) -> Output {
    Command::new("timeout")
        .args(["10", "sh", "-c", script])
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Whether `uid` may signal `pid` (signal 0: the permission check only).
fn may_signal(uid: u32, pid: u32) -> bool {
    sh_as(uid, &format!("kill -0 {pid}")).status.success()
}

/// Whether `uid` may write `path` (create it, or append to it).
fn may_write(uid: u32, path: &Path) -> bool {
    sh_as(uid, &format!("printf x >> '{}'", path.display()))
        .status
        .success()
}

/// Regression (item 7): every role ran as 65534, so any `nobody` process
/// could stop the actuator, kill the network role and rewrite the lease and
/// the DUID. Now no other uid can do any of that, not `nobody`, and not
/// the uid of another role (a compromised engine's uid owns nothing).
#[test]
fn other_uids_cannot_signal_the_roles_or_write_the_state() {
    let mut net = Net::new();
    net.start_dnsmasq("120", &[]);
    let daemon = net.start_client(&[]);
    net.wait_state("bound", BOUND_WITHIN);
    let roles = net.role_pids(daemon);
    assert_eq!(roles.len(), 3, "{roles:?}");
    let lease = net.path(&format!("state/lease-{CLIENT_IF}.json"));
    support::wait_until(Duration::from_secs(5), || {
        lease.is_file() && net.path("state/duid").is_file()
    });
    let targets = [
        lease.clone(),
        net.path("state/duid"),
        net.path("state/planted"),
        net.path("run/status.json"),
        net.path("run/planted"),
        net.path("resolv.conf"),
    ];
    for uid in [65534, 1000, NETWORK_ID, ENGINE_ID] {
        for (role, pid) in &roles {
            let own = match role.as_str() {
                "network" => NETWORK_ID,
                "engine" => ENGINE_ID,
                _ => ACTUATOR_ID,
            };
            assert_eq!(
                may_signal(uid, *pid),
                uid == own,
                "uid {uid} signalling the {role} role"
            );
        }
        assert!(
            !may_signal(uid, net.child_pid(daemon)),
            "uid {uid} signalling the supervisor"
        );
        for t in &targets {
            assert!(!may_write(uid, t), "uid {uid} wrote {}", t.display());
        }
    }
    assert!(!net.path("state/planted").exists() && !net.path("run/planted").exists());
    // Item 9 in the real actuator: its directory descriptors are contained.
    let log = net.client_log();
    assert!(
        log.lines()
            .any(|l| l.contains("[actuator]") && l.contains("sandbox:") && l.contains("dir-fds=contained")),
        "{log}"
    );
    // Still bound, files intact.
    let status = net.status().expect("status.json parses");
    assert_eq!(status["state"], "bound");
    assert!(std::fs::read_to_string(&lease).unwrap().contains("\"version\""));
}

/// Regression (item 10): an existing state or runtime directory of root's
/// (or anyone else's) was chowned to the roles; now the daemon refuses to
/// start, names the directory and the fix, and leaves it as it was.
#[test]
fn a_foreign_state_or_run_directory_is_refused_not_taken_over() {
    use std::os::unix::fs::MetadataExt;
    for (sub, owner) in [("state", 0), ("run", 0), ("state", 65534)] {
        let mut net = Net::new();
        let dir = net.path(sub);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(owner), Some(owner)).unwrap();
        let d = net.start_client(&[]);
        let st = net
            .wait_exit(d, Duration::from_secs(10))
            .expect("the daemon did not stop");
        assert!(!st.success());
        let log = net.client_log();
        assert!(
            log.contains(&format!("{} belongs to uid {owner}", dir.display())),
            "{log}"
        );
        assert!(
            log.contains(&format!("chown {ACTUATOR_ID}:{ACTUATOR_ID}")),
            "{log}"
        );
        assert_eq!(std::fs::metadata(&dir).unwrap().uid(), owner, "taken over");
        assert!(net.client_addrs().is_empty(), "configured the interface anyway");
    }
}

/// Regression (item 10): `uid = 0` was accepted and ran the roles as root.
/// Root for a role is refused before anything is touched, unless the
/// clearly named `ids.allow_root` says so; the old shared keys say what
/// replaced them.
#[test]
fn root_ids_for_a_role_are_refused() {
    let dir = std::env::temp_dir().join(format!("mirage-ids-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.toml");
    for (text, want) in [
        ("[ids]\nengine = 0\n", "ids.engine"),
        ("[ids]\nactuator = \"65522:0\"\n", "ids.actuator"),
        ("uid = 0\n", "replaced by [ids]"),
    ] {
        std::fs::write(&cfg, format!("interface = \"{CLIENT_IF}\"\n{text}")).unwrap();
        let out = Command::new("timeout")
            .args(["10", bin(), "run", "--config"])
            .arg(&cfg)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .args(["--resolv-conf", ""])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(want), "{text}: {err}");
        assert!(
            !dir.join("state").exists() && !dir.join("run").exists(),
            "{text}: touched the dirs"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `mirage-dhcp status --run-dir DIR`, bounded in time.
fn status_of(dir: &Path, json: bool) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["10", bin(), "status", "--run-dir"]).arg(dir);
    if json {
        cmd.arg("--json");
    }
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn temp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mirage-status-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Regression (item 10): strings in status.json (written by a role's uid,
/// partly from the network) reached the terminal raw: escape sequences ran
/// and newlines forged lines. Every printed character is now printable.
#[test]
fn status_prints_no_control_characters() {
    let d = temp("escapes");
    let evil = "eth0\u{1b}]0;owned\u{7}\u{1b}[2J\nstate      bound\r\u{9b}31m\u{202e}";
    let status = serde_json::json!({
        "interface": evil,
        "state": evil,
        "sandbox": "seccomp",
        "lease": {
            "address": evil, "prefix_len": evil, "server_id": "10.0.0.1",
            "routes": [{"destination": evil, "gateway": evil}],
            "dns_servers": [evil], "search": [evil], "ntp_servers": [evil],
            "mtu": evil, "remaining_secs": evil, "renew_in_secs": 1, "rebind_in_secs": 2,
        },
        "engine_restarts": evil,
        "counters": {"acks": evil},
    });
    std::fs::write(d.join("status.json"), status.to_string()).unwrap();
    for json in [false, true] {
        let out = status_of(&d, json);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        for c in text.chars() {
            assert!(
                c == '\n' || !(c.is_control() || ('\u{2000}'..='\u{206f}').contains(&c)),
                "{c:?} in {text}"
            );
        }
        if json {
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back, status, "--json changed the value");
        } else {
            // One line per field, none forged.
            assert_eq!(
                text.lines().filter(|l| l.starts_with("state ")).count(),
                1,
                "{text}"
            );
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// Regression (item 10): status.json was read following links and blocked
/// on a FIFO. A link, a FIFO, a directory or an oversized file is refused
/// at once with an error.
#[test]
fn status_refuses_links_fifos_and_huge_files() {
    let d = temp("shapes");
    std::fs::write(d.join("real.json"), r#"{"state": "bound"}"#).unwrap();
    let target = d.join("status.json");
    let make = |what: &str| match what {
        "link" => std::os::unix::fs::symlink(d.join("real.json"), &target).unwrap(),
        "fifo" => assert!(Command::new("mkfifo").arg(&target).status().unwrap().success()),
        "directory" => std::fs::create_dir(&target).unwrap(),
        _ => std::fs::write(&target, format!("\"{}\"", "x".repeat(1 << 20))).unwrap(),
    };
    for what in ["link", "fifo", "directory", "huge"] {
        let _ = std::fs::remove_file(&target);
        let _ = std::fs::remove_dir(&target);
        make(what);
        let out = status_of(&d, false);
        // timeout(1) exits 124 when it had to stop a blocked reader.
        assert_ne!(out.status.code(), Some(124), "{what}: blocked");
        assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
        assert!(
            out.stdout.is_empty(),
            "{what}: printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // The plain file works.
    let _ = std::fs::remove_file(&target);
    std::fs::rename(d.join("real.json"), &target).unwrap();
    let out = status_of(&d, false);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("state      bound"));
    std::fs::remove_dir_all(&d).unwrap();
}

/// Regression (item 6): the root supervisor opened the resolv.conf path
/// following any link, so a link the roles' uid planted made root overwrite
/// a root-only file or create one in a root-only directory. Now a link that
/// is not root's stops the start with a clear error and touches nothing,
/// while root's own link (/etc/resolv.conf -> /run/systemd/resolve/...)
/// is followed as before.
#[test]
fn resolv_conf_follows_root_links_only() {
    use std::os::unix::fs::PermissionsExt;
    for target in ["vault/secret", "vault/created"] {
        let mut net = Net::new();
        let vault = net.path("vault");
        std::fs::create_dir(&vault).unwrap();
        std::fs::set_permissions(&vault, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(vault.join("secret"), "root only\n").unwrap();
        std::fs::set_permissions(vault.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = net.path("resolv.conf");
        std::os::unix::fs::symlink(net.path(target), &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(ACTUATOR_ID), Some(ACTUATOR_ID)).unwrap();
        net.start_dnsmasq("120", &[]);
        let d = net.start_client(&[]);
        let st = net
            .wait_exit(d, Duration::from_secs(10))
            .expect("the daemon did not stop");
        assert!(!st.success(), "{target}");
        let log = net.client_log();
        assert!(
            log.contains(&format!("owned by uid {ACTUATOR_ID}; only links owned by root")),
            "{log}"
        );
        assert_eq!(
            std::fs::read_to_string(vault.join("secret")).unwrap(),
            "root only\n"
        );
        assert!(!vault.join("created").exists());
    }
    let mut net = Net::new();
    std::fs::create_dir(net.path("stub")).unwrap();
    std::fs::write(net.path("stub/stub-resolv.conf"), "# before\n").unwrap();
    std::os::unix::fs::symlink(net.path("stub/stub-resolv.conf"), net.path("resolv.conf")).unwrap();
    net.start_dnsmasq("120", &[]);
    net.start_client(&[]);
    net.wait_state("bound", BOUND_WITHIN);
    let want = format!("nameserver {}\n", net.server_ip);
    support::wait_until(Duration::from_secs(5), || {
        support::read(&net.path("stub/stub-resolv.conf")).contains(&want)
    });
    assert!(
        std::fs::symlink_metadata(net.path("resolv.conf"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}
