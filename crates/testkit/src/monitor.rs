//! Watching rtnetlink address events in a namespace, to assert on what a
//! daemon did to its links (an address that must never be deleted, one
//! that must go), without sleeping and without missing events on a busy
//! machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::read_lossy;
use crate::netns::exec;

/// How long [`AddrWatch::sync`] waits for a marker before adding another.
const MARKER_RETRY: Duration = Duration::from_millis(200);
/// Bound on [`AddrWatch::sync`].
const SYNC_WITHIN: Duration = Duration::from_secs(10);

/// `ip monitor address` in a namespace, logging to a file; killed in Drop.
pub struct AddrWatch {
    child: Child,
    log: PathBuf,
    ns: String,
    /// Marker addresses added so far (see [`AddrWatch::sync`]).
    marks: std::cell::Cell<u32>,
}

impl AddrWatch {
    /// Start watching address events in namespace `ns`, logging to `log`;
    /// returns once the monitor is subscribed (one [`AddrWatch::sync`]).
    pub fn start(ns: &str, log: &Path) -> AddrWatch {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "ip", "monitor", "address"])
            .stdout(std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display())))
            .stderr(Stdio::null())
            .spawn()
            .expect("ip monitor");
        let watch = AddrWatch {
            child,
            log: log.to_owned(),
            ns: ns.to_owned(),
            marks: std::cell::Cell::new(0),
        };
        // Watching starts once `ip monitor` has subscribed, which it shows
        // by logging the first marker.
        watch.sync();
        watch
    }

    /// Add a fresh marker address on `lo` (a daemon under test watches only
    /// its own interface and never touches `lo`) and wait until the monitor
    /// has logged it. Netlink delivers a namespace's address events in
    /// order, so every event before a logged marker is in the log too: no
    /// fixed sleep, and nothing missed on a busy machine. A marker added
    /// before `ip monitor` subscribed is never logged, so a new one is added
    /// every 200 ms until one shows up.
    pub fn sync(&self) {
        let deadline = Instant::now() + SYNC_WITHIN;
        loop {
            let n = self.marks.get() + 1;
            self.marks.set(n);
            let mark = Self::marker(n);
            exec(&self.ns, &["ip", "addr", "add", &mark, "dev", "lo"]);
            let needle = format!("inet {mark} ");
            let retry = Instant::now() + MARKER_RETRY;
            while Instant::now() < retry {
                if read_lossy(&self.log).contains(&needle) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                Instant::now() < deadline,
                "ip monitor logged none of {n} markers within {SYNC_WITHIN:?}:\n{}",
                read_lossy(&self.log)
            );
        }
    }

    /// The `n`th marker: a /32 in 127.77.0.0/16, never a daemon's.
    fn marker(n: u32) -> String {
        format!("127.77.{}.{}/32", n / 250, 1 + n % 250)
    }

    /// Every line logged so far (synced first), markers included.
    pub fn lines(&self) -> Vec<String> {
        self.sync();
        read_lossy(&self.log).lines().map(str::to_string).collect()
    }

    /// Lines of address deletions seen so far (everything up to this call:
    /// it syncs with the monitor first).
    pub fn deletions(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.starts_with("Deleted"))
            .collect()
    }
}

impl Drop for AddrWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
