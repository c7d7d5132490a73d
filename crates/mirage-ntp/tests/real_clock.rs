//! THE ONE TEST THAT STEERS THE HOST CLOCK. The steering actuator (not
//! `--observe`) slews and steps `CLOCK_REALTIME`, which no namespace
//! isolates, by at most 50 ms, and the test puts it back.
//!
//! It runs alone: this binary holds this one test (cargo runs test
//! binaries one after another, never two at once), and no other test of
//! the workspace starts a steering actuator with a clock intent. Needs
//! root with `CAP_SYS_TIME` in the initial user namespace (CI runs as
//! root).
//!
//! How it is bounded:
//! - the server is the test's own (a UDP responder in a namespace the
//!   test creates), answering with a reference that the host clock's
//!   changes do not move (`CLOCK_MONOTONIC_RAW` from the start's
//!   realtime) plus an offset the test sets: 35 ms ahead, later 45 ms;
//! - mirage-ntp's own policy refuses every step (`step_max_s = 0`, start-up
//!   limits 0) and slews over 50 ms; the one step it takes is let through
//!   by `mirage-ntp accept-step --max-s 0.05`, which the actuator checks;
//! - a guard (`Drop`, on failure too) stops mirage-ntp, cancels any slew,
//!   puts back the kernel's frequency and status, slews back what was
//!   slewed and steps back what was stepped (each refused above 60 ms);
//! - afterwards `CLOCK_REALTIME - CLOCK_MONOTONIC` (which only steps
//!   change) is within 5 ms of where it started.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use mirage_sdk::clock::{self, ClockStatus, KernelClock, KernelLeap};
use mirage_testkit::clock::{mono_minus_raw, nanos, real_minus_mono};
use mirage_testkit::cmd::read_lossy;
use mirage_testkit::netns::{Netns, in_netns};
use mirage_testkit::process::Procs;
use mirage_testkit::tempdir::TestDir;
use mirage_testkit::wait::wait_some;
use ntp_engine::NtpTimestamp;
use ntp_engine::wire::{Leap, Mode, NtpShort, Packet, Repr};
use rustix::time::ClockId;

const MS: i64 = 1_000_000;
/// The most the test (and its guard) ever steps or slews the clock by.
const LIMIT_NS: i64 = 50 * MS;
/// What the guard refuses to put back by a step: more than the test can
/// have done means something else moved the clock.
const GUARD_LIMIT_NS: i64 = 60 * MS;

fn bin() -> PathBuf {
    mirage_testkit::service_bin("MIRAGE_NTP_BIN", env!("CARGO_BIN_EXE_mirage-ntp"))
}

/// The host clock as found, and how to put it back.
struct ClockGuard {
    /// mirage-ntp and the server's namespace processes: stopped first.
    procs: Procs,
    kernel: KernelClock,
    real_mono: i64,
    mono_raw: i64,
    raw: i64,
    restored: bool,
}

impl ClockGuard {
    fn new() -> ClockGuard {
        ClockGuard {
            procs: Procs::new(),
            kernel: clock::kernel_clock().expect("adjtimex read"),
            real_mono: real_minus_mono(),
            mono_raw: mono_minus_raw(),
            raw: nanos(ClockId::MonotonicRaw),
            restored: false,
        }
    }

    /// The steps since the start (ns added to realtime).
    fn stepped(&self) -> i64 {
        real_minus_mono() - self.real_mono
    }

    /// The slews since the start: what monotonic gained on the raw clock
    /// beyond what the frequency found at the start accounts for.
    fn slewed(&self) -> i64 {
        let elapsed = nanos(ClockId::MonotonicRaw) - self.raw;
        // freq is ppm scaled by 2^16.
        let by_freq =
            (i128::from(elapsed) * i128::from(self.kernel.freq_scaled_ppm) / 65_536 / 1_000_000) as i64;
        mono_minus_raw() - self.mono_raw - by_freq
    }

    /// Stop mirage-ntp, then undo what it did: the slew in progress
    /// cancelled, the frequency and status as found, the slewed part
    /// slewed back, the stepped part stepped back. Returns what it undid.
    fn restore(&mut self) -> Result<(i64, i64), String> {
        if self.restored {
            return Ok((0, 0));
        }
        self.restored = true;
        self.procs.kill_all();
        clock::slew_clock(0).map_err(|e| format!("cancelling the slew: {e}"))?;
        clock::set_frequency(self.kernel.freq_scaled_ppm).map_err(|e| format!("frequency: {e}"))?;
        let (slewed, stepped) = (self.slewed(), self.stepped());
        let status = ClockStatus {
            synchronized: self.kernel.synchronized(),
            max_error_us: self.kernel.max_error_us,
            est_error_us: self.kernel.est_error_us,
            leap: KernelLeap::None,
        };
        if stepped.abs() > GUARD_LIMIT_NS || slewed.abs() > GUARD_LIMIT_NS {
            return Err(format!(
                "the clock moved by a step of {stepped} ns and a slew of {slewed} ns: more than \
                 this test can do, so not put back"
            ));
        }
        if stepped != 0 {
            clock::step_clock(-stepped, &status).map_err(|e| format!("stepping back: {e}"))?;
        }
        clock::set_clock_status(&status).map_err(|e| format!("status: {e}"))?;
        // The kernel finishes this at 500 ppm (20 s for 10 ms).
        clock::slew_clock(-slewed).map_err(|e| format!("slewing back: {e}"))?;
        Ok((stepped, slewed))
    }
}

impl Drop for ClockGuard {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            eprintln!("REAL-CLOCK TEST: THE HOST CLOCK WAS NOT PUT BACK: {e}");
        }
    }
}

/// An NTP server on `127.0.0.1:1123` in `ns`: the reference is the
/// start's realtime advanced by the raw clock, plus `offset` ns.
fn serve(ns: &str, offset: Arc<AtomicI64>, stop: Arc<AtomicBool>) {
    let socket = in_netns(ns, || {
        UdpSocket::bind("127.0.0.1:1123").expect("bind in the namespace")
    });
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let (real0, raw0) = (nanos(ClockId::Realtime), nanos(ClockId::MonotonicRaw));
    let reference = move || {
        let t = real0 + (nanos(ClockId::MonotonicRaw) - raw0) + offset.load(Ordering::SeqCst);
        NtpTimestamp::from_unix_nanos(i128::from(t))
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while !stop.load(Ordering::SeqCst) {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let received = reference();
            let Ok(request) = Packet::new_checked(&buf[..n]).and_then(|p| Repr::parse(&p)) else {
                continue;
            };
            let reply = Repr {
                leap: Leap::None,
                version: 4,
                mode: Mode::Server,
                stratum: 2,
                poll: request.poll,
                precision: -20,
                root_delay: NtpShort(0),
                root_dispersion: NtpShort(16),
                reference_id: *b"TEST",
                reference: received,
                origin: request.transmit,
                receive: received,
                transmit: reference(),
            };
            let _ = socket.send_to(&reply.to_bytes(), from);
        }
    });
}

fn status(dir: &TestDir) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run/status.json")).ok()?).ok()
}

#[test]
fn the_actuator_slews_and_steps_the_host_clock_by_at_most_50_ms_and_it_is_put_back() {
    let dir = TestDir::new("mirage-ntp-real-clock", &mirage_testkit::netns::unique_id().0);
    let ns = Netns::add_unique("ntprc");
    let offset = Arc::new(AtomicI64::new(35 * MS));
    let stop = Arc::new(AtomicBool::new(false));
    serve(ns.name(), offset.clone(), stop.clone());

    let mut guard = ClockGuard::new();
    // Start from an unsynchronised kernel clock with the largest error
    // bound, so what the step leaves is the actuator's doing.
    clock::set_clock_status(&ClockStatus {
        synchronized: false,
        max_error_us: 16_000_000,
        est_error_us: 16_000_000,
        leap: KernelLeap::None,
    })
    .expect("CAP_SYS_TIME (run as root)");
    assert!(!clock::kernel_clock().unwrap().synchronized());

    let config = dir.join("ntp.toml");
    std::fs::write(
        &config,
        "servers = [\"127.0.0.1:1123\"]\nstep_threshold_ms = 20\n\
         [policy]\nstartup_forward_max_s = 0\nstartup_back_max_s = 0\nstep_max_s = 0\nslew_max_ms = 50\n",
    )
    .unwrap();
    let mut cmd = ns.command(bin().to_str().unwrap());
    cmd.args(["run", "--log-level", "debug", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--run-dir")
        .arg(dir.join("run"));
    guard.procs.spawn_logged(cmd, &dir.join("ntp.log"));
    let log = || format!("status {:?}\n{}", status(&dir), read_lossy(&dir.join("ntp.log")));

    // The 35 ms step is over the policy: held, the clock untouched.
    let v = wait_some(
        Duration::from_secs(30),
        "the step held",
        || status(&dir).filter(|v| v["held"] == true),
        log,
    );
    assert_eq!(v["clock"]["steerable"], true, "{v}");
    assert_eq!(v["clock"]["refused"]["startup-step-forward-too-large"], 1, "{v}");
    let held = v["clock"]["refused_step_s"].as_f64().unwrap();
    assert!((held - 0.035).abs() < 0.003, "held step {held} s: {v}");
    assert!(
        guard.stepped().abs() < MS,
        "stepped {} ns while held",
        guard.stepped()
    );

    // The operator accepts at most 50 ms; the actuator lets it through.
    let out = ns
        .command(bin().to_str().unwrap())
        .args(["accept-step", "--max-s", "0.05", "--valid-s", "60", "--run-dir"])
        .arg(dir.join("run"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("recorded"),
        "{out:?}\n{}",
        log()
    );
    let v = wait_some(
        Duration::from_secs(30),
        "the accepted step applied",
        || status(&dir).filter(|v| v["state"] == "synchronized"),
        log,
    );
    let stepped = guard.stepped();
    assert!(
        (stepped - 35 * MS).abs() < 3 * MS,
        "stepped {stepped} ns, wanted 35 ms: {v}"
    );
    assert!(stepped.abs() <= LIMIT_NS);
    // A step leaves the kernel clock synchronised with fresh error bounds.
    let k = clock::kernel_clock().unwrap();
    assert!(k.synchronized(), "STA_UNSYNC still set after the step: {k:?}");
    assert!(k.max_error_us < 1_000_000, "maxerror not reset: {k:?}");
    assert!(k.est_error_us < 1_000_000, "esterror not reset: {k:?}");

    // The server moves 10 ms further ahead: under the 20 ms threshold, a
    // slew (bounded by the policy's 50 ms).
    offset.store(45 * MS, Ordering::SeqCst);
    let slewing = wait_some(
        Duration::from_secs(40),
        "the clock slewing forward",
        || Some(guard.slewed()).filter(|&s| s > 3 * MS),
        log,
    );
    assert!(slewing <= LIMIT_NS, "slewed {slewing} ns");
    assert!(
        read_lossy(&dir.join("ntp.log")).contains("applied Slew"),
        "{}",
        log()
    );
    assert!((guard.stepped() - stepped).abs() < MS, "a second step: {}", log());
    // Synchronisation gained is said once, not at every poll.
    let text = read_lossy(&dir.join("ntp.log"));
    assert_eq!(text.matches("synchronised: offset").count(), 1, "{text}");
    assert!(!text.contains("synchronisation lost"), "{text}");

    // Put back, and check where it landed.
    let (undone_step, undone_slew) = guard.restore().expect("the clock put back");
    stop.store(true, Ordering::SeqCst);
    let after = real_minus_mono() - guard.real_mono;
    eprintln!(
        "stepped {undone_step} ns and slewed {undone_slew} ns, both undone; \
         realtime - monotonic now {after} ns from the start"
    );
    assert!(after.abs() < 5 * MS, "realtime - monotonic moved {after} ns");
    let k = clock::kernel_clock().unwrap();
    assert_eq!(
        (k.synchronized(), k.freq_scaled_ppm),
        (guard.kernel.synchronized(), guard.kernel.freq_scaled_ppm),
        "the kernel's status and frequency as found"
    );
}
