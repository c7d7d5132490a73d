//! The directories (and files) a privileged supervisor opens for an
//! unprivileged role to write: the state directory, the runtime directory,
//! a file elsewhere such as resolv.conf. Opened without following any link
//! that is not root's (docs/security.md, "Files"); created if missing and
//! then given to the role's ids; an existing one must already be the
//! role's, because taking over a directory someone else owns would hand the
//! roles whatever that owner left in it (or make root write where it
//! points).
//!
//! A supervisor that writes its own files (no role holds them) opens them
//! with [`crate::files::open_dir_root_links_only`] directly.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Gid, Mode, Uid};

use super::Service;
use crate::files;

/// Mode of a new state directory: the role's alone.
pub const STATE_DIR_MODE: u32 = 0o700;
/// Mode of a new runtime directory: status.json and metrics.prom are for
/// every reader.
pub const RUN_DIR_MODE: u32 = 0o755;

/// The ids of the role that will write (and owns) a directory or file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The role's name in messages ("actuator").
    pub role: &'static str,
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    fn chown(&self, fd: &OwnedFd) -> rustix::io::Result<()> {
        rustix::fs::fchown(fd, Some(Uid::from_raw(self.uid)), Some(Gid::from_raw(self.gid)))
    }
}

/// Open the directory `path` (`what` names it in messages: "state
/// directory") for `owner` to write: created with `mode` and given to the
/// owner if missing; refused, with the command that fixes it, if it
/// belongs to another uid or everyone may write it.
pub fn open_role_dir<S: Service>(
    path: &Path,
    mode: u32,
    owner: Owner,
    what: &str,
) -> Result<OwnedFd, String> {
    let p = path.display();
    let (dir, created) =
        files::open_dir_root_links_only(path, Some(mode)).map_err(|e| format!("{what} {p}: {e}"))?;
    if created {
        owner
            .chown(&dir)
            .and_then(|()| rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode)))
            .map_err(|e| format!("giving the new {what} {p} to {}:{}: {e}", owner.uid, owner.gid))?;
        return Ok(dir);
    }
    let st = rustix::fs::fstat(&dir).map_err(|e| format!("{what} {p}: {e}"))?;
    if st.st_uid != owner.uid {
        return Err(format!(
            "{what} {p} belongs to uid {}, not to the {}'s uid {}: refusing to take it over. \
             Give it to the {} (chown {}:{} {p}) or remove it so that {} creates it",
            st.st_uid,
            owner.role,
            owner.uid,
            owner.role,
            owner.uid,
            owner.gid,
            S::program()
        ));
    }
    if st.st_mode & 0o002 != 0 {
        return Err(format!("{what} {p} is writable by everyone: chmod o-w {p}"));
    }
    // Found now rather than at the role's first write, which would only
    // log it and go on without its files.
    if st.st_mode & 0o300 != 0o300 {
        return Err(format!(
            "{what} {p} is not writable by its owner, the {}: chmod u+wx {p}",
            owner.role
        ));
    }
    // A read-only mount may be deliberate or passing (a host booted read-
    // only): the service runs without its files rather than not at all (a
    // DHCP client without a network), and says so now.
    if on_read_only_mount(&dir) {
        log::warn!(
            "{what} {p} is on a read-only file system: the {} cannot write there until it is \
             remounted writable",
            owner.role
        );
    }
    Ok(dir)
}

/// Whether `dir` is on a file system mounted read-only.
pub fn on_read_only_mount(dir: &OwnedFd) -> bool {
    rustix::fs::fstatvfs(dir).is_ok_and(|v| v.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

/// The convention's state and runtime directories (see [`super::Paths`]),
/// both opened for `owner` by [`open_role_dir`].
pub fn open_role_dirs<S: Service>(
    state_dir: &Path,
    run_dir: &Path,
    owner: Owner,
) -> Result<(OwnedFd, OwnedFd), String> {
    Ok((
        open_role_dir::<S>(state_dir, STATE_DIR_MODE, owner, "state directory")?,
        open_role_dir::<S>(run_dir, RUN_DIR_MODE, owner, "runtime directory")?,
    ))
}

/// A file outside the role's directories that it rewrites (resolv.conf),
/// as [`open_role_file`] opened it.
#[derive(Debug)]
pub struct RoleFile {
    /// The directory that really holds the file (root's links resolved, so
    /// a link such as /etc/resolv.conf -> /run/... is followed, not
    /// replaced), for an atomic replace where the role may write it.
    pub dir: OwnedFd,
    /// The file itself, open for writing, for targets that cannot be
    /// renamed over (a bind mount, a directory the role may not write).
    pub file: OwnedFd,
    /// The file's name in `dir`.
    pub name: String,
}

/// Open (or create, with `mode`) the file `path` for `owner` to rewrite,
/// following only root's links ([`files::open_file_root_links_only`]). In
/// a directory where others than root may add names, they may have put a
/// hard link to any file there: only a file of the owner's own is written
/// (a file created here is given to it).
pub fn open_role_file(path: &Path, mode: u32, owner: Owner, what: &str) -> Result<RoleFile, String> {
    let p = path.display();
    let w = files::open_file_root_links_only(path, mode).map_err(|e| format!("{what} {p}: {e}"))?;
    if w.dir_shared {
        let file_owner = rustix::fs::fstat(&w.file).map_err(|e| e.to_string())?.st_uid;
        if w.created {
            owner
                .chown(&w.file)
                .map_err(|e| format!("giving {p} to {}:{}: {e}", owner.uid, owner.gid))?;
        } else if file_owner != owner.uid {
            return Err(format!(
                "{what} {p} is in a directory others may write (owner uid {}) but belongs to \
                 uid {file_owner}, not to the {}'s uid {}: refusing to write it",
                w.dir_owner, owner.role, owner.uid
            ));
        }
    }
    Ok(RoleFile {
        dir: w.dir,
        file: w.file,
        name: w.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    struct Svc;
    impl Service for Svc {
        const NAME: &'static str = "svc";
    }

    const ACTUATOR: Owner = Owner {
        role: "actuator",
        uid: 65522,
        gid: 65522,
    };

    fn test_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mirage-dirs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn owner(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().uid()
    }

    /// What a supervisor opens for its actuator: `state` and `run` under
    /// `d`, and `file` (resolv.conf) if given.
    fn prepare(d: &Path, state: &str, file: Option<&str>) -> Result<Option<RoleFile>, String> {
        open_role_dirs::<Svc>(&d.join(state), &d.join("run"), ACTUATOR)?;
        file.map(|f| open_role_file(&d.join(f), 0o644, ACTUATOR, "resolv.conf"))
            .transpose()
    }

    #[test]
    fn directories_are_created_for_the_role_and_foreign_ones_refused() {
        assert!(rustix::process::geteuid().is_root(), "needs root");
        let d = test_dir("own");
        prepare(&d, "state", None).unwrap();
        for (sub, mode) in [("state", STATE_DIR_MODE), ("run", RUN_DIR_MODE)] {
            let m = std::fs::metadata(d.join(sub)).unwrap();
            assert_eq!(
                (m.uid(), m.gid(), m.mode() & 0o7777),
                (ACTUATOR.uid, ACTUATOR.gid, mode),
                "{sub}"
            );
        }
        // The role's already: used again as it is.
        prepare(&d, "state", None).unwrap();
        // Root's (or anyone else's): refused with the fix, never chowned.
        for (sub, other) in [("state", 0), ("run", 0), ("state", 65534)] {
            std::os::unix::fs::chown(d.join(sub), Some(other), Some(other)).unwrap();
            let e = prepare(&d, "state", None).unwrap_err();
            assert!(e.contains(&d.join(sub).display().to_string()), "{e}");
            assert!(e.contains(&format!("belongs to uid {other}")), "{e}");
            assert!(e.contains("not to the actuator's uid 65522"), "{e}");
            assert!(e.contains("chown 65522:65522"), "{e}");
            assert!(e.contains("so that mirage-svc creates it"), "{e}");
            assert_eq!(owner(&d.join(sub)), other, "{sub} was taken over");
            std::os::unix::fs::chown(d.join(sub), Some(ACTUATOR.uid), Some(ACTUATOR.gid)).unwrap();
        }
        // Everyone may write it: refused.
        std::fs::set_permissions(d.join("run"), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            prepare(&d, "state", None)
                .unwrap_err()
                .contains("writable by everyone")
        );
        // Its owner may not write it: refused at start, naming it.
        std::fs::set_permissions(d.join("run"), std::fs::Permissions::from_mode(0o555)).unwrap();
        let e = prepare(&d, "state", None).unwrap_err();
        assert!(
            e.contains(&format!("runtime directory {}", d.join("run").display())),
            "{e}"
        );
        assert!(
            e.contains("not writable by its owner, the actuator: chmod u+wx"),
            "{e}"
        );
        std::fs::set_permissions(d.join("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&d, "state", None).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_directory_on_a_read_only_mount_is_used_and_known_as_such() {
        assert!(rustix::process::geteuid().is_root(), "needs root");
        let d = test_dir("rdonly");
        prepare(&d, "state", None).unwrap();
        // A read-only bind mount of the runtime directory, in a mount
        // namespace of this test's own (a child process: the test
        // harness's other threads keep the host's).
        let run = d.join("run");
        let script = format!(
            "mount --bind {r} {r} && mount -o remount,bind,ro {r} && exec \"$0\" --exact \
             service::dirs::tests::prepare_in_child --nocapture --ignored",
            r = run.display()
        );
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .arg(std::env::current_exe().unwrap())
            .env("MIRAGE_DIRS_TEST", &d)
            .output()
            .expect("unshare (util-linux)");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("run read-only: true, state read-only: false"),
            "{text}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Run by `a_directory_on_a_read_only_mount_is_used_and_known_as_such`
    /// in its mount namespace: both directories open, and which is
    /// read-only.
    #[test]
    #[ignore = "run by a_directory_on_a_read_only_mount_is_used_and_known_as_such"]
    fn prepare_in_child() {
        let d = PathBuf::from(std::env::var_os("MIRAGE_DIRS_TEST").expect("MIRAGE_DIRS_TEST"));
        let (state, run) = open_role_dirs::<Svc>(&d.join("state"), &d.join("run"), ACTUATOR).unwrap();
        println!(
            "run read-only: {}, state read-only: {}",
            on_read_only_mount(&run),
            on_read_only_mount(&state)
        );
    }

    #[test]
    fn links_planted_by_a_role_are_never_followed() {
        assert!(rustix::process::geteuid().is_root(), "needs root");
        let d = test_dir("links");
        let act = ACTUATOR;
        let vault = d.join("vault");
        std::fs::create_dir(&vault).unwrap();
        std::fs::set_permissions(&vault, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(vault.join("secret"), b"root only").unwrap();
        std::fs::set_permissions(vault.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
        // The roles' runtime directory, where the systemd and LinuxKit
        // layouts keep resolv.conf: the actuator's uid plants links in it.
        prepare(&d, "state", Some("run/resolv.conf")).unwrap();
        let plant = |target: &Path, at: &Path, uid: u32| {
            let _ = std::fs::remove_file(at);
            std::os::unix::fs::symlink(target, at).unwrap();
            std::os::unix::fs::lchown(at, Some(uid), Some(uid)).unwrap();
        };
        let resolv = d.join("run/resolv.conf");
        for target in [vault.join("secret"), vault.join("created")] {
            plant(&target, &resolv, act.uid);
            let e = prepare(&d, "state", Some("run/resolv.conf")).unwrap_err();
            assert!(
                e.contains("owned by uid") && e.contains("only links owned by root"),
                "{e}"
            );
        }
        assert_eq!(std::fs::read(vault.join("secret")).unwrap(), b"root only");
        assert!(!vault.join("created").exists());
        // A hard link the role made (fs.protected_hardlinks = 0) to a file
        // it does not own is not written either.
        std::fs::remove_file(&resolv).unwrap();
        std::fs::hard_link(vault.join("secret"), &resolv).unwrap();
        let e = prepare(&d, "state", Some("run/resolv.conf")).unwrap_err();
        assert!(e.contains("refusing to write it"), "{e}");
        std::fs::remove_file(&resolv).unwrap();
        // The same for the directories: a link at the state dir's path.
        plant(&vault, &d.join("state2"), act.uid);
        for state in ["state2", "state2/sub"] {
            assert!(
                prepare(&d, state, None)
                    .unwrap_err()
                    .contains("only links owned by root")
            );
        }
        assert!(!vault.join("sub").exists());
        assert_eq!(owner(&vault), 0);
        // Root's link (/etc/resolv.conf -> /run/systemd/resolve/...) works:
        // the file it points to and the directory that holds it.
        std::fs::create_dir(d.join("stub")).unwrap();
        std::fs::write(d.join("stub/stub-resolv.conf"), b"old").unwrap();
        plant(&d.join("stub/stub-resolv.conf"), &d.join("resolv.conf"), 0);
        let r = prepare(&d, "state", Some("resolv.conf")).unwrap().unwrap();
        assert_eq!(r.name, "stub-resolv.conf");
        files::rewrite_in_place(&r.file, b"new").unwrap();
        files::write_atomic(&r.dir, &r.name, b"newer", 0o644).unwrap();
        assert_eq!(std::fs::read(d.join("stub/stub-resolv.conf")).unwrap(), b"newer");
        // A file the supervisor creates in the role's directory is the role's.
        assert!(prepare(&d, "state", Some("run/resolv.conf")).unwrap().is_some());
        assert_eq!(owner(&resolv), act.uid);
        // The same in a root directory that everyone may write (/tmp): a
        // root file found there may be anyone's hard link.
        std::fs::create_dir(d.join("shared")).unwrap();
        std::fs::set_permissions(d.join("shared"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::write(d.join("shared/resolv.conf"), b"root's").unwrap();
        let shared = Some("shared/resolv.conf");
        assert!(
            prepare(&d, "state", shared)
                .unwrap_err()
                .contains("refusing to write it")
        );
        std::fs::remove_file(d.join("shared/resolv.conf")).unwrap();
        prepare(&d, "state", shared).unwrap();
        assert_eq!(owner(&d.join("shared/resolv.conf")), act.uid);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
