//! One CPU for a service whose roles hand each message on to the next
//! (docs/architecture.md, "Roles on one CPU").
//!
//! A query that crosses the network role and the engine and back wakes a
//! process at each step. Woken on another CPU, each step pays a
//! cross-CPU wake-up (an interrupt to a CPU that may be idle, and in a
//! virtual machine an exit to the host), which is where the slow tail of
//! such a pipeline comes from; on one CPU the hand-off is a plain
//! context switch. Children inherit the affinity, so calling [`share_one`]
//! in the supervisor before it starts its roles puts all of them there,
//! restarted ones included.

use std::io;

use rustix::thread::{CpuSet, sched_getaffinity, sched_getcpu, sched_setaffinity};

/// Keep this thread, and the processes it starts from now on, on one CPU
/// of those it may use: the one it runs on now (else the first allowed).
/// Returns that CPU; `Ok(None)` when only one CPU is allowed anyway.
pub fn share_one() -> io::Result<Option<usize>> {
    let allowed = sched_getaffinity(None)?;
    if allowed.count() <= 1 {
        return Ok(None);
    }
    let here = sched_getcpu();
    let cpu = if allowed.is_set(here) {
        here
    } else {
        (0..CpuSet::MAX_CPU)
            .find(|&c| allowed.is_set(c))
            .ok_or_else(|| io::Error::other("no CPU in the affinity mask"))?
    };
    let mut one = CpuSet::new();
    one.set(cpu);
    sched_setaffinity(None, &one)?;
    Ok(Some(cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_and_its_children_end_up_on_one_allowed_cpu() {
        // A thread of its own: the test harness's other threads keep theirs.
        std::thread::spawn(|| {
            let before = sched_getaffinity(None).unwrap();
            let chosen = share_one().unwrap();
            let after = sched_getaffinity(None).unwrap();
            match chosen {
                None => assert_eq!(before.count(), 1),
                Some(cpu) => {
                    assert!(before.is_set(cpu));
                    assert_eq!(after.count(), 1);
                    assert!(after.is_set(cpu));
                    assert_eq!(sched_getcpu(), cpu);
                }
            }
            // A child started now inherits the one CPU.
            let out = std::process::Command::new("sh")
                .args(["-c", "grep Cpus_allowed_list /proc/self/status"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(cpu) = chosen {
                assert!(text.trim().ends_with(&format!("\t{cpu}")), "{text}");
            }
        })
        .join()
        .unwrap();
    }
}
