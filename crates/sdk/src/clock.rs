//! Clocks: `CLOCK_BOOTTIME` for protocol timers, wall-clock time for logs,
//! published state and time measurements ([`realtime`]), and the kernel's
//! clock discipline for a time service's actuator ([`kernel_clock`],
//! [`slew_clock`], [`step_clock`], [`set_frequency`], [`set_clock_status`]).
//!
//! Lease timers run on `CLOCK_BOOTTIME` because it keeps counting while the
//! machine is suspended: a lease that expires during suspend is then noticed
//! at resume instead of being stranded (FIELD-NOTES pitfall 5, RFC 2131
//! section 4.4.5 timers are relative to when the lease was obtained).
//!
//! Both readings go through `clock_gettime`, which the vDSO normally serves
//! without a system call; when it does fall back to the real call, every
//! seccomp profile allows `clock_gettime`.

use std::io;

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

/// A reading of `CLOCK_REALTIME`: seconds and nanoseconds since the Unix
/// epoch (negative seconds before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RealTime {
    pub secs: i64,
    /// 0..1_000_000_000.
    pub nanos: u32,
}

impl RealTime {
    /// Nanoseconds since the Unix epoch.
    pub fn unix_nanos(self) -> i128 {
        i128::from(self.secs) * 1_000_000_000 + i128::from(self.nanos)
    }

    /// `self - earlier` in nanoseconds, saturated to the i64 range.
    pub fn nanos_since(self, earlier: RealTime) -> i64 {
        let d = self.unix_nanos() - earlier.unix_nanos();
        i64::try_from(d).unwrap_or(if d < 0 { i64::MIN } else { i64::MAX })
    }
}

/// Now on `CLOCK_REALTIME`, to the nanosecond (the epoch if unreadable,
/// which a valid clock id never is).
pub fn realtime() -> RealTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    if rc != 0 {
        return RealTime { secs: 0, nanos: 0 };
    }
    RealTime {
        secs: ts.tv_sec,
        nanos: u32::try_from(ts.tv_nsec).unwrap_or(0),
    }
}

/// What the kernel says about its clock discipline (`clock_adjtime` with
/// no mode: needs no capability).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelClock {
    /// `STA_*` bits.
    pub status: i32,
    /// Frequency correction, ppm scaled by 2^16.
    pub freq_scaled_ppm: i64,
    /// Maximum and estimated error, microseconds.
    pub max_error_us: i64,
    pub est_error_us: i64,
    /// The call's return: `TIME_OK`, `TIME_INS`, ..., `TIME_ERROR`
    /// (unsynchronised).
    pub state: i32,
}

impl KernelClock {
    /// `STA_UNSYNC` is clear: the kernel copies the time to the RTC every
    /// 11 minutes and tools show the clock synchronised.
    pub fn synchronized(&self) -> bool {
        self.status & libc::STA_UNSYNC == 0
    }

    /// The leap the kernel has armed.
    pub fn leap(&self) -> KernelLeap {
        if self.status & libc::STA_INS != 0 {
            KernelLeap::Insert
        } else if self.status & libc::STA_DEL != 0 {
            KernelLeap::Delete
        } else {
            KernelLeap::None
        }
    }
}

/// A leap second the kernel applies at the end of the current UTC day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelLeap {
    None,
    Insert,
    Delete,
}

/// The kernel's clock status as a time service sets it: whether the clock
/// is synchronised (`STA_UNSYNC`), its error bounds, and the leap armed.
/// The bounds are in microseconds, the kernel's unit; the kernel adds 500
/// ppm to the maximum error every second and marks the clock
/// unsynchronised once it passes 16 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockStatus {
    pub synchronized: bool,
    pub max_error_us: i64,
    pub est_error_us: i64,
    pub leap: KernelLeap,
}

impl ClockStatus {
    fn status_bits(&self) -> libc::c_int {
        let leap = match self.leap {
            KernelLeap::None => 0,
            KernelLeap::Insert => libc::STA_INS,
            KernelLeap::Delete => libc::STA_DEL,
        };
        leap | if self.synchronized { 0 } else { libc::STA_UNSYNC }
    }

    fn apply_to(&self, tx: &mut libc::timex) {
        tx.modes |= libc::ADJ_STATUS | libc::ADJ_MAXERROR | libc::ADJ_ESTERROR;
        tx.status = self.status_bits();
        tx.maxerror = self.max_error_us as libc::c_long;
        tx.esterror = self.est_error_us as libc::c_long;
    }
}

/// One `clock_adjtime(CLOCK_REALTIME, tx)` with the modes `set` puts in
/// `tx`. Made as the raw system call, so that the seccomp table of an
/// actuator names exactly `clock_adjtime` on clock 0 whatever the libc
/// (glibc and musl route `adjtimex` differently).
fn adjtime(set: impl FnOnce(&mut libc::timex)) -> io::Result<KernelClock> {
    // SAFETY: timex is plain data (integers and a timeval) for which all
    // zeroes is a valid value: modes 0 asks for nothing to change.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    set(&mut tx);
    // SAFETY: `tx` is a valid, writable timex for the duration of the
    // call; the kernel reads and writes only within it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clock_adjtime,
            libc::CLOCK_REALTIME,
            &mut tx as *mut libc::timex,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(KernelClock {
        status: tx.status,
        freq_scaled_ppm: tx.freq as i64,
        max_error_us: tx.maxerror as i64,
        est_error_us: tx.esterror as i64,
        state: rc as i32,
    })
}

/// Read the kernel's clock discipline (no capability needed).
pub fn kernel_clock() -> io::Result<KernelClock> {
    adjtime(|_| {})
}

/// Add `delta_ns` to `CLOCK_REALTIME` gradually (the kernel's single-shot
/// slew, 500 ppm, microsecond resolution), replacing any slew in progress.
/// Needs `CAP_SYS_TIME`.
pub fn slew_clock(delta_ns: i64) -> io::Result<()> {
    adjtime(|tx| {
        tx.modes = libc::ADJ_OFFSET_SINGLESHOT;
        tx.offset = (delta_ns / 1000) as libc::c_long;
    })
    .map(drop)
}

/// Add `delta_ns` to `CLOCK_REALTIME` at once (`ADJ_SETOFFSET`: relative,
/// so no time passes between reading and writing the clock), and set
/// `status` in the same call: a step otherwise leaves the clock marked
/// unsynchronised, with stale error bounds. Needs `CAP_SYS_TIME`.
pub fn step_clock(delta_ns: i64, status: &ClockStatus) -> io::Result<()> {
    adjtime(|tx| {
        tx.modes = libc::ADJ_SETOFFSET | libc::ADJ_NANO;
        // With ADJ_NANO the timeval's microseconds are nanoseconds, and the
        // kernel wants them within 0..1e9 with the sign in the seconds.
        tx.time.tv_sec = delta_ns.div_euclid(1_000_000_000) as _;
        tx.time.tv_usec = delta_ns.rem_euclid(1_000_000_000) as _;
        status.apply_to(tx);
    })
    .map(drop)
}

/// Set the clock's frequency correction (ppm scaled by 2^16; the kernel
/// clamps it to +-500 ppm). Needs `CAP_SYS_TIME`.
pub fn set_frequency(scaled_ppm: i64) -> io::Result<()> {
    adjtime(|tx| {
        tx.modes = libc::ADJ_FREQUENCY;
        tx.freq = scaled_ppm as libc::c_long;
    })
    .map(drop)
}

/// Set the kernel's clock status, error bounds and leap. Needs
/// `CAP_SYS_TIME`.
pub fn set_clock_status(status: &ClockStatus) -> io::Result<()> {
    adjtime(|tx| status.apply_to(tx)).map(drop)
}

/// Whether this process may steer the clock here: writes the frequency
/// the kernel already has back to it. A capability held outside the
/// initial user namespace (a rootless container) fails this with EPERM,
/// while a read-only call would succeed and prove nothing.
pub fn probe_clock_control() -> io::Result<()> {
    let now = kernel_clock()?;
    set_frequency(now.freq_scaled_ppm)
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

    #[test]
    fn the_nanosecond_reading_agrees_with_the_millisecond_one() {
        let a = realtime_ms();
        let r = realtime();
        assert!(r.nanos < 1_000_000_000);
        let ms = (r.unix_nanos() / 1_000_000) as u64;
        assert!(ms >= a && ms - a < 1000, "{ms} vs {a}");
        let later = RealTime {
            secs: r.secs + 1,
            nanos: 0,
        };
        assert_eq!(later.nanos_since(r), 1_000_000_000 - i64::from(r.nanos));
        assert_eq!(r.nanos_since(later), -(1_000_000_000 - i64::from(r.nanos)));
    }

    #[test]
    fn the_kernel_clock_reads_without_privilege_and_status_bits_match() {
        let k = kernel_clock().expect("clock_adjtime with no mode");
        assert!((0..=5).contains(&k.state), "{k:?}");
        // The kernel clamps the frequency to +-500 ppm.
        assert!(k.freq_scaled_ppm.abs() <= 500 << 16, "{k:?}");
        let s = ClockStatus {
            synchronized: false,
            max_error_us: 1,
            est_error_us: 0,
            leap: KernelLeap::Insert,
        };
        assert_eq!(s.status_bits(), libc::STA_INS | libc::STA_UNSYNC);
        let seen = KernelClock {
            status: s.status_bits(),
            freq_scaled_ppm: 0,
            max_error_us: 0,
            est_error_us: 0,
            state: 0,
        };
        assert_eq!((seen.synchronized(), seen.leap()), (false, KernelLeap::Insert));
    }
}
