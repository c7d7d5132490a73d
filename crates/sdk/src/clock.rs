//! Clocks: `CLOCK_BOOTTIME` for protocol timers and wall-clock time for logs
//! and published state.
//!
//! Lease timers run on `CLOCK_BOOTTIME` because it keeps counting while the
//! machine is suspended: a lease that expires during suspend is then noticed
//! at resume instead of being stranded (FIELD-NOTES pitfall 5, RFC 2131
//! section 4.4.5 timers are relative to when the lease was obtained).
//!
//! Both readings go through `clock_gettime`, which the vDSO normally serves
//! without a system call; when it does fall back to the real call, every
//! seccomp profile allows `clock_gettime`.

use mirage_ipc::Instant;

/// Milliseconds of `clock` since its epoch, or `None` if the kernel refuses
/// the clock id (it cannot for the two ids used here).
fn millis_of(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    Some(secs.saturating_mul(1000).saturating_add(nanos / 1_000_000))
}

/// Now on `CLOCK_BOOTTIME`, in milliseconds (counts through suspend).
///
/// `CLOCK_BOOTTIME` exists since Linux 2.6.39; should the call ever fail, the
/// reading is 0, which makes every pending timer look due rather than
/// postponing it forever.
pub fn boottime() -> Instant {
    Instant(millis_of(libc::CLOCK_BOOTTIME).unwrap_or(0))
}

/// Wall-clock time in milliseconds since the Unix epoch (0 if the clock is
/// before the epoch or unreadable). Only for humans and published files,
/// never for timers: the wall clock jumps.
pub fn realtime_ms() -> u64 {
    millis_of(libc::CLOCK_REALTIME).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_is_monotonic_and_ahead_of_monotonic() {
        let a = boottime();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = boottime();
        assert!(b.since(a) >= 20, "{a:?} -> {b:?}");
        // BOOTTIME = MONOTONIC + time suspended, so it is never behind it.
        let mono = millis_of(libc::CLOCK_MONOTONIC).unwrap();
        assert!(boottime().millis() >= mono);
    }

    #[test]
    fn realtime_matches_std() {
        let std_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ours = realtime_ms();
        assert!(ours.abs_diff(std_ms) < 5_000, "{ours} vs {std_ms}");
    }
}
