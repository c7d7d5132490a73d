//! What `/proc` says about a running role: its ids, capabilities, seccomp
//! mode and NoNewPrivs (the privilege checks every service's suite makes
//! against its role plan), its CPU time, and which children of a daemon are
//! roles.

/// A process's `/proc/<pid>/status`.
#[derive(Clone, Debug)]
pub struct ProcStatus(pub String);

impl ProcStatus {
    /// Read `/proc/<pid>/status` (panics if the process is gone).
    pub fn read(pid: u32) -> ProcStatus {
        let path = format!("/proc/{pid}/status");
        ProcStatus(std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
    }

    /// The text after `key:`, trimmed (panics if there is no such field).
    pub fn field(&self, key: &str) -> &str {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{key} missing in {}", self.0))
    }

    /// The field's words joined by single spaces (`Uid` reads
    /// "real effective saved fs"); empty if there is no such field.
    pub fn words(&self, key: &str) -> String {
        self.0
            .lines()
            .find(|l| l.starts_with(&format!("{key}:")))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }

    /// A capability set (`CapEff`, `CapPrm`, `CapBnd`, ...) as a bit mask.
    pub fn caps(&self, key: &str) -> u64 {
        let v = self.field(key);
        u64::from_str_radix(v, 16).unwrap_or_else(|e| panic!("{key}: {v}: {e}"))
    }

    fn ids(&self, key: &str) -> [u32; 4] {
        let v: Vec<u32> = self
            .field(key)
            .split_whitespace()
            .map(|w| w.parse().unwrap_or_else(|e| panic!("{key}: {w}: {e}")))
            .collect();
        v.try_into().unwrap_or_else(|v| panic!("{key}: {v:?}"))
    }

    /// Real, effective, saved and filesystem uid.
    pub fn uids(&self) -> [u32; 4] {
        self.ids("Uid")
    }

    /// Real, effective, saved and filesystem gid.
    pub fn gids(&self) -> [u32; 4] {
        self.ids("Gid")
    }

    /// 0 off, 1 strict, 2 filter.
    pub fn seccomp(&self) -> u8 {
        self.field("Seccomp").parse().unwrap()
    }

    pub fn no_new_privs(&self) -> bool {
        self.field("NoNewPrivs") == "1"
    }
}

/// utime + stime of `pid` in clock ticks (proc(5) fields 14 and 15); 0 if
/// the process is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // After the command name: field 3 is index 0, so 14 and 15 are 11 and 12.
    let get = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// The CPUs of a kernel CPU list (`Cpus_allowed_list`: `0-3,8`).
pub fn cpu_list(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi): (usize, usize) = (lo.parse().unwrap(), hi.parse().unwrap());
        out.extend(lo..=hi);
    }
    out
}

/// The parent pid of `pid`, if it runs.
pub fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()
}

/// Children of `parent` that are roles (command line `<exe> role <name>
/// ...`, the SDK's re-exec convention), as (role name, pid), sorted.
pub fn roles_of(parent: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if ppid(pid) != Some(parent) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        if args.len() > 2 && args[1] == "role" {
            out.push((args[2].clone(), pid));
        }
    }
    out.sort();
    out
}

/// The pid of `parent`'s role `role` (panics if it is not running).
pub fn role_pid(parent: u32, role: &str) -> u32 {
    roles_of(parent)
        .into_iter()
        .find(|(r, _)| r == role)
        .unwrap_or_else(|| panic!("no {role} role"))
        .1
}

/// The KVM descriptors `pid` holds (the targets of its fd links), sorted:
/// a tender holds its VM and vCPU (the device was closed once the VM was
/// built), every other role none.
pub fn kvm_fds(pid: u32) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.display().to_string())
        .filter(|t| t.contains("kvm"))
        .collect();
    fds.sort();
    fds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_expand() {
        assert_eq!(cpu_list("0-3,8\n"), vec![0, 1, 2, 3, 8]);
        assert_eq!(cpu_list("1"), vec![1]);
    }

    #[test]
    fn our_own_status_parses() {
        let me = ProcStatus::read(std::process::id());
        let uid = rustix::process::getuid().as_raw();
        assert_eq!(me.uids()[0], uid);
        assert_eq!(me.words("Uid").split(' ').count(), 4);
        assert!(me.seccomp() <= 2);
        assert_eq!(me.caps("CapInh") & !me.caps("CapBnd"), 0);
        assert_eq!(me.words("NoSuchField"), "");
    }

    #[test]
    fn a_kvm_descriptor_is_listed_while_it_is_open() {
        if !crate::kvm::usable("procfs::a_kvm_descriptor_is_listed_while_it_is_open") {
            return;
        }
        let devices = || {
            let fds = kvm_fds(std::process::id());
            assert!(fds.windows(2).all(|w| w[0] <= w[1]), "sorted: {fds:?}");
            fds.iter().filter(|t| *t == crate::kvm::DEVICE).count()
        };
        let before = devices();
        let open = std::fs::File::open(crate::kvm::DEVICE).unwrap();
        assert_eq!(devices(), before + 1);
        drop(open);
        assert_eq!(devices(), before);
    }

    #[test]
    fn roles_are_children_with_a_role_command_line() {
        // `sh role test-role` runs the script named `role`: its command
        // line is `sh role test-role`, the shape of a re-executed role.
        let dir = std::env::temp_dir().join(format!("testkit-roles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("role"), "read line\n").unwrap();
        let mut other = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let mut role = std::process::Command::new("sh")
            .args(["role", "test-role"])
            .current_dir(&dir)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let me = std::process::id();
        crate::wait::wait_until(std::time::Duration::from_secs(5), || {
            roles_of(me)
                .iter()
                .any(|(r, p)| r == "test-role" && *p == role.id())
        });
        assert_eq!(ppid(other.id()), Some(me));
        assert_eq!(role_pid(me, "test-role"), role.id());
        assert!(!roles_of(me).iter().any(|(_, p)| *p == other.id()));
        for c in [&mut other, &mut role] {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
