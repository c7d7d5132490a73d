//! Stops a guest that runs too long without a hypercall. A second thread
//! watches the time the vCPU last entered the guest; past the bound it
//! marks the run expired and kicks the vCPU thread with a signal until it
//! is out of `KVM_RUN` (a kick that lands just before the vCPU thread
//! enters the guest is lost, so it repeats). The vCPU thread checks the
//! mark before every entry.
//!
//! While the guest waits in a receive (the tender blocked on the host), the
//! watchdog sleeps without a timeout: an idle service costs it no wake-ups.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// The signal that kicks the vCPU out of `KVM_RUN`; its handler does
/// nothing (the interrupted ioctl is the point). A fixed number, not
/// `SIGRTMIN() + n`, so that a seccomp table written as data can name it:
/// 40 is a real-time signal for both musl (whose range starts at 35) and
/// glibc (34), and neither libc uses it.
pub const KICK_SIGNAL: libc::c_int = 40;

fn kick_signal() -> libc::c_int {
    debug_assert!((libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&KICK_SIGNAL));
    KICK_SIGNAL
}

extern "C" fn on_kick(_: libc::c_int) {}

fn install_kick_handler() -> std::io::Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; the handler is async-signal
        // safe (it does nothing); no SA_RESTART, so KVM_RUN returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) != 0 {
                result = Err(std::io::Error::last_os_error());
            }
        }
    });
    result
}

/// Shared between the vCPU thread and the watchdog thread.
pub(crate) struct Watchdog {
    bound: Duration,
    base: Instant,
    /// Nanoseconds since `base` (plus one) when the vCPU last entered the
    /// guest; 0 while it is out.
    entered: AtomicU64,
    expired: AtomicBool,
    stop: AtomicBool,
    /// The watchdog sleeps with no timeout (the guest is out).
    idle: AtomicBool,
    vcpu_thread: VcpuThread,
}

/// The vCPU thread's id, for `pthread_kill`.
struct VcpuThread(libc::pthread_t);

// SAFETY: a pthread_t is only an identifier (a pointer on musl, never
// dereferenced here); it is used for pthread_kill while the thread lives.
unsafe impl Sync for VcpuThread {}
// SAFETY: as for Sync.
unsafe impl Send for VcpuThread {}

impl Watchdog {
    /// For a vCPU run on the calling thread.
    pub fn new(bound: Duration) -> std::io::Result<Watchdog> {
        install_kick_handler()?;
        Ok(Watchdog {
            bound,
            base: Instant::now(),
            entered: AtomicU64::new(0),
            expired: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            // SAFETY: no preconditions.
            vcpu_thread: VcpuThread(unsafe { libc::pthread_self() }),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Before each `KVM_RUN`: false once the bound has passed.
    pub fn enter(&self, watcher: &Thread) -> bool {
        self.entered.store(self.now(), SeqCst);
        if self.idle.load(SeqCst) {
            watcher.unpark();
        }
        !self.expired.load(SeqCst)
    }

    /// After each `KVM_RUN`: true when the watchdog ended it.
    pub fn leave(&self) -> bool {
        self.entered.store(0, SeqCst);
        self.expired.load(SeqCst)
    }

    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// Ends [`Watchdog::watch`].
    pub fn stop(&self, watcher: &Thread) {
        self.stop.store(true, SeqCst);
        watcher.unpark();
    }

    /// The watchdog thread's body.
    pub fn watch(&self) {
        let bound = u64::try_from(self.bound.as_nanos()).unwrap_or(u64::MAX / 2);
        while !self.stop.load(SeqCst) {
            let entered = self.entered.load(SeqCst);
            if entered == 0 {
                self.idle.store(true, SeqCst);
                // Checked again after `idle` is visible: an entry in
                // between either sees `idle` and unparks, or is seen here.
                if self.entered.load(SeqCst) == 0 && !self.stop.load(SeqCst) {
                    std::thread::park();
                }
                self.idle.store(false, SeqCst);
                continue;
            }
            let now = self.now();
            let deadline = entered.saturating_add(bound);
            if now < deadline {
                std::thread::park_timeout(Duration::from_nanos(deadline - now));
                continue;
            }
            if self.entered.load(SeqCst) != entered {
                continue; // the guest made a hypercall meanwhile
            }
            self.expired.store(true, SeqCst);
            while self.entered.load(SeqCst) != 0 && !self.stop.load(SeqCst) {
                // SAFETY: the vCPU thread outlives this thread (both run in
                // one scope that joins this one before the vCPU thread
                // returns), so the pthread_t is valid.
                unsafe { libc::pthread_kill(self.vcpu_thread.0, kick_signal()) };
                std::thread::sleep(Duration::from_millis(2));
            }
            return;
        }
    }
}
