//! Credentials, capabilities, resource limits and process flags: the steps
//! of [`super::apply`] that cannot be "best effort" and are verified after.

use super::{Capability, DropPlan, SandboxError, os_err};

/// Highest capability number we ever probe; the kernel's last one is 40
/// today and `PR_CAPBSET_READ` says EINVAL past it.
const CAP_PROBE_LIMIT: libc::c_ulong = 64;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct` (linux/capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 uses two of them (caps 0-31
/// and 32-63).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The three per-thread sets as 64-bit masks (bit n = capability n).
#[derive(Debug, PartialEq, Eq)]
struct CapSets {
    effective: u64,
    permitted: u64,
    inheritable: u64,
}

fn capget() -> Result<CapSets, SandboxError> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as version 3 requires.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut hdr, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(os_err("capget"));
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok(CapSets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

fn capset(sets: &CapSets) -> Result<(), SandboxError> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |m: u64| (m as u32, (m >> 32) as u32);
    let (e0, e1) = split(sets.effective);
    let (p0, p1) = split(sets.permitted);
    let (i0, i1) = split(sets.inheritable);
    let data = [
        CapData {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        CapData {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: header and a two-element data array, as version 3 requires;
    // the kernel only reads `data`.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut hdr, data.as_ptr()) };
    if rc != 0 {
        return Err(os_err("capset"));
    }
    Ok(())
}

fn prctl(step: &'static str, option: libc::c_int, arg: libc::c_ulong) -> Result<libc::c_int, SandboxError> {
    // SAFETY: prctl with integer arguments only; unused ones are zero.
    let rc = unsafe {
        libc::prctl(
            option,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc < 0 {
        return Err(os_err(step));
    }
    Ok(rc)
}

/// Bit mask of capabilities in the bounding set.
fn bounding_set() -> u64 {
    let mut mask = 0u64;
    for cap in 0..CAP_PROBE_LIMIT {
        // SAFETY: PR_CAPBSET_READ with an integer argument.
        match unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } {
            1 => mask |= 1 << cap,
            0 => {}
            // EINVAL: past the kernel's last capability.
            _ => break,
        }
    }
    mask
}

/// Empty the bounding set, so no execve can ever grant a capability again
/// (not even through file capabilities). Returns the mask left in the set.
///
/// Dropping needs CAP_SETPCAP. A process that never had it cannot shrink
/// the set: that is how a role starts in a container run as a non-root uid
/// with ambient capabilities (docs/security.md, "Running in a container").
/// Such a set is left as it is, and reported: it bounds only what an execve
/// could grant (file capabilities, setuid-root) and what capset(2) may add
/// to the inheritable set, and both are closed without it: no_new_privs
/// (set by every plan) makes execve grant nothing, and without CAP_SETPCAP
/// the inheritable set can only gain capabilities already permitted, which
/// [`set_caps`] reduces to the plan's. A process that holds CAP_SETPCAP
/// (root on a host) still clears the set, and any failure is an error.
pub(super) fn clear_bounding_set() -> Result<u64, SandboxError> {
    let set = bounding_set();
    if set == 0 {
        return Ok(0);
    }
    let setpcap = Capability::CAP_SETPCAP.bitmask();
    let sets = capget()?;
    if sets.permitted & setpcap == 0 {
        return Ok(set);
    }
    if sets.effective & setpcap == 0 {
        // Permitted but not effective: raise it for the drops below.
        capset(&CapSets {
            effective: sets.effective | setpcap,
            ..sets
        })?;
    }
    for cap in 0..CAP_PROBE_LIMIT {
        if set & (1 << cap) != 0 {
            prctl("drop capability from bounding set", libc::PR_CAPBSET_DROP, cap)?;
        }
    }
    Ok(0)
}

/// Names of the capabilities in `mask`, sorted (`CAP_NET_ADMIN` style).
pub(super) fn names_of(mask: u64) -> Vec<String> {
    let mut names: Vec<String> = caps::all()
        .into_iter()
        .filter(|c| mask & c.bitmask() != 0)
        .map(|c| c.to_string())
        .collect();
    names.sort();
    names
}

/// PR_SET_KEEPCAPS: keep the permitted set across the switch away from
/// uid 0 (capabilities(7), "Effect of user ID changes on capabilities").
pub(super) fn set_keepcaps(on: bool) -> Result<(), SandboxError> {
    prctl("PR_SET_KEEPCAPS", libc::PR_SET_KEEPCAPS, libc::c_ulong::from(on)).map(drop)
}

fn group_count() -> Result<libc::c_int, SandboxError> {
    // SAFETY: size 0 only asks for the count; the null pointer is not written.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n < 0 {
        return Err(os_err("getgroups"));
    }
    Ok(n)
}

/// The supplementary group list.
fn groups() -> Result<Vec<libc::gid_t>, SandboxError> {
    let n = group_count()?;
    let mut list = vec![0; n as usize];
    // SAFETY: `list` has room for `n` entries.
    let got = unsafe { libc::getgroups(n, list.as_mut_ptr()) };
    if got < 0 {
        return Err(os_err("getgroups"));
    }
    list.truncate(got as usize);
    Ok(list)
}

/// True if the supplementary groups grant nothing beyond `gid`: none, or
/// only `gid` itself. Container runtimes give a non-root container user its
/// own gid as a supplementary group (OCI `additionalGids`), and such a
/// process has no CAP_SETGID to clear the list.
fn groups_add_nothing(gid: u32) -> Result<bool, SandboxError> {
    Ok(groups()?.iter().all(|&g| g == gid))
}

/// Supplementary groups, then gid, then uid (gid first: changing it needs
/// the privilege the uid change takes away).
pub(super) fn switch_ids(uid: u32, gid: u32) -> Result<(), SandboxError> {
    // setgroups needs CAP_SETGID even to set the empty list; when the list
    // already is empty there is nothing to drop.
    if group_count()? != 0 {
        // SAFETY: an empty list: size 0 with a null pointer.
        if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
            let err = os_err("setgroups");
            // Without CAP_SETGID the list stays; that is only acceptable
            // when it holds nothing but the gid we switch to anyway.
            let eperm = matches!(&err, SandboxError::Os { source, .. }
                if source.raw_os_error() == Some(libc::EPERM));
            if !(eperm && groups_add_nothing(gid)?) {
                return Err(err);
            }
        }
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(os_err("setresgid"));
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(os_err("setresuid"));
    }
    Ok(())
}

fn mask_of(caps: &[Capability]) -> u64 {
    caps.iter().fold(0, |m, c| m | c.bitmask())
}

/// Permitted and effective become exactly `keep`; inheritable and ambient
/// become empty so that nothing is handed to an executed program.
pub(super) fn set_caps(keep: &[Capability]) -> Result<(), SandboxError> {
    let mask = mask_of(keep);
    capset(&CapSets {
        effective: mask,
        permitted: mask,
        inheritable: 0,
    })?;
    prctl(
        "clear ambient capabilities",
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )
    .map(drop)
}

/// glibc and musl spell the resource argument's type differently.
#[cfg(target_env = "gnu")]
type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type RlimitResource = libc::c_int;

pub(super) fn setrlimit(
    step: &'static str,
    resource: RlimitResource,
    value: u64,
) -> Result<(), SandboxError> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `lim` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(os_err(step));
    }
    Ok(())
}

/// Soft and hard limits alike, so the role cannot raise them again.
pub(super) fn set_rlimits(plan: &DropPlan<'_>) -> Result<(), SandboxError> {
    setrlimit("RLIMIT_NOFILE", libc::RLIMIT_NOFILE, plan.nofile)?;
    setrlimit("RLIMIT_CORE", libc::RLIMIT_CORE, 0)?;
    if plan.nproc_zero {
        setrlimit("RLIMIT_NPROC", libc::RLIMIT_NPROC, 0)?;
    }
    if plan.fsize_zero {
        setrlimit("RLIMIT_FSIZE", libc::RLIMIT_FSIZE, 0)?;
    }
    Ok(())
}

/// No execve can raise privileges any more (and seccomp/Landlock may be
/// installed without CAP_SYS_ADMIN).
pub(super) fn set_no_new_privs() -> Result<(), SandboxError> {
    prctl("PR_SET_NO_NEW_PRIVS", libc::PR_SET_NO_NEW_PRIVS, 1).map(drop)
}

/// Not dumpable: no core file, no ptrace attach from same-uid processes,
/// /proc/<pid> owned by root.
pub(super) fn set_not_dumpable() -> Result<(), SandboxError> {
    prctl("PR_SET_DUMPABLE", libc::PR_SET_DUMPABLE, 0).map(drop)
}

/// The kernel resets the parent-death signal when credentials change
/// (prctl(2), PR_SET_PDEATHSIG), so set it again after the drop.
pub(super) fn rearm_pdeathsig() -> Result<(), SandboxError> {
    prctl(
        "PR_SET_PDEATHSIG",
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
    )
    .map(drop)
}

/// Read back what the kernel holds and compare with the plan (and with the
/// bounding set [`clear_bounding_set`] had to leave); returns the kept
/// capabilities' names, sorted.
pub(super) fn verify(plan: &DropPlan<'_>, bounding_left: u64) -> Result<Vec<String>, SandboxError> {
    let (mut ru, mut eu, mut su) = (0, 0, 0);
    let (mut rg, mut eg, mut sg) = (0, 0, 0);
    // SAFETY: three valid, writable uid_t locations.
    if unsafe { libc::getresuid(&mut ru, &mut eu, &mut su) } != 0 {
        return Err(os_err("getresuid"));
    }
    // SAFETY: three valid, writable gid_t locations.
    if unsafe { libc::getresgid(&mut rg, &mut eg, &mut sg) } != 0 {
        return Err(os_err("getresgid"));
    }
    if [ru, eu, su] != [plan.uid; 3] || [rg, eg, sg] != [plan.gid; 3] {
        return Err(SandboxError::Verify(format!(
            "ids are uid {ru}/{eu}/{su} gid {rg}/{eg}/{sg}"
        )));
    }
    if !groups_add_nothing(plan.gid)? {
        return Err(SandboxError::Verify("supplementary groups left".into()));
    }
    let want = mask_of(&plan.keep_caps);
    let got = capget()?;
    if got
        != (CapSets {
            effective: want,
            permitted: want,
            inheritable: 0,
        })
    {
        return Err(SandboxError::Verify(format!(
            "capability sets are {got:x?}, want {want:#x}"
        )));
    }
    let bounding = bounding_set();
    if bounding != bounding_left {
        return Err(SandboxError::Verify(format!(
            "bounding set is {bounding:#x}, want {bounding_left:#x}"
        )));
    }
    if prctl("PR_GET_NO_NEW_PRIVS", libc::PR_GET_NO_NEW_PRIVS, 0)? != 1 {
        return Err(SandboxError::Verify("no_new_privs not set".into()));
    }
    let mut names: Vec<String> = plan.keep_caps.iter().map(ToString::to_string).collect();
    names.sort();
    names.dedup();
    Ok(names)
}
