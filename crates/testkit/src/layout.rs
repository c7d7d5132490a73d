//! A service binary's layout by process, seen from outside
//! (`mirage_kvm_build::link_by_process` lays it out): where each segment of
//! its own starts in the file, and how much of it a running process has
//! resident. A service's suite checks that each process has resident only
//! the segments it uses (mirage-dhcp's and mirage-ntp's
//! `each_process_has_resident_only_the_segments_it_uses`).
use std::path::Path;

/// The sections `mirage_kvm_build::link_by_process` puts in segments of
/// their own.
pub use mirage_kvm_build::OWN_SEGMENTS;

fn u16_at(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes(b[at..at + 2].try_into().unwrap()))
}
fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Each of [`OWN_SEGMENTS`] in the ELF64 file `bin`, with the file offset
/// of the page it starts on (where its mapping starts); panics if one is
/// missing.
pub fn own_segments(bin: &Path) -> Vec<(&'static str, u64)> {
    let b = std::fs::read(bin).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{}", bin.display());
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(&b, 0x28) as usize,
        u16_at(&b, 0x3a),
        u16_at(&b, 0x3c),
        u16_at(&b, 0x3e),
    );
    let header = |i: usize| &b[shoff + i * shentsize..shoff + (i + 1) * shentsize];
    let names = u64_at(header(shstrndx), 24) as usize;
    let name_of = |h: &[u8]| {
        let at = names + u32_at(h, 0);
        let len = b[at..].iter().position(|&c| c == 0).unwrap();
        String::from_utf8_lossy(&b[at..at + len]).into_owned()
    };
    OWN_SEGMENTS
        .iter()
        .map(|want| {
            let h = (0..shnum)
                .map(header)
                .find(|h| name_of(h) == *want)
                .unwrap_or_else(|| panic!("{} has no section {want}", bin.display()));
            (*want, u64_at(h, 24) & !0xfff)
        })
        .collect()
}

/// Resident KiB of `pid`'s mapping of `bin` at file offset `offset`
/// (from /proc/PID/smaps); panics if there is no such mapping.
pub fn resident_kib(pid: u32, bin: &Path, offset: u64) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut in_it = false;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            in_it = fields.len() >= 6
                && u64::from_str_radix(fields[2], 16) == Ok(offset)
                && Path::new(fields[5]) == bin;
        } else if in_it && fields.first() == Some(&"Rss:") {
            return fields[1].parse().unwrap();
        }
    }
    panic!("pid {pid} has no mapping of {} at {offset:#x}", bin.display())
}

/// What a service's layout promises, checked in its running processes
/// (`procs`: `supervisor`, `engine` and the other roles by name, with their
/// pids), started with `--sandbox SANDBOX` (`seccomp` or `kvm`): no role has
/// the supervisor's code resident, only an engine that runs a guest has the
/// tender's code resident, and no process keeps the guest image's pages
/// once its guest is built (the supervisor's probe, the engine's VM). The
/// supervisor's own code, and the tender's where it runs, are resident: the
/// check reads the right pages. With `kvm` the supervisor's probe runs the
/// tender's code too, so that pair is not checked.
pub fn assert_resident_only_where_used(bin: &Path, procs: &[(String, u32)], sandbox: &str) {
    let segments = own_segments(bin);
    for (process, pid) in procs {
        for (section, offset) in &segments {
            let kib = resident_kib(*pid, bin, *offset);
            let runs_it = match (*section, process.as_str()) {
                (".text.mirage.supervisor", "supervisor") => true,
                (".text.mirage.tender", "engine") => sandbox == "kvm",
                _ => false,
            };
            let what = format!("{process} ({sandbox}): {section} has {kib} KiB resident");
            if (*section, process.as_str(), sandbox) == (".text.mirage.tender", "supervisor", "kvm") {
                continue;
            }
            if runs_it {
                assert!(kib > 0, "{what}");
            } else {
                assert_eq!(kib, 0, "{what}");
            }
        }
    }
}
