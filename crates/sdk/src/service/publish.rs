//! Publishing `status.json` and `metrics.prom` in the runtime directory:
//! when (a state marked dirty, published at most every `min_interval`, again
//! after `refresh` even when nothing changed, with a bound on publications
//! handed to a writer and not confirmed yet) and how (each file replaced
//! atomically, metrics first).
//!
//! Two shapes of service use it:
//! - a supervisor that writes itself (no actuator) holds a [`Publisher`]:
//!   [`Publisher::mark_dirty`] when its state changes, [`Publisher::on_round`]
//!   from `runtime::Service::on_round` (its deadline is returned from there,
//!   so a publication held back by the interval is never lost), and
//!   [`Publisher::flush`] on stop;
//! - a service whose actuator writes keeps the [`Schedule`] on the
//!   supervisor side ([`Schedule::take_due`] before sending a publication,
//!   [`Schedule::done`] when the actuator answered it) and the actuator
//!   calls [`write`].
//!
//! ```
//! use std::time::{Duration, Instant};
//! use mirage_sdk::service::publish::{Pacing, Publication, Publisher};
//!
//! let dir = std::env::temp_dir().join(format!("sdk-publish-{}", std::process::id()));
//! let (run_dir, _) = mirage_sdk::files::open_dir_root_links_only(&dir, Some(0o755)).unwrap();
//! let mut p = Publisher::new(run_dir, Pacing::every(Duration::from_millis(200)));
//! let render = |pongs: u32| Publication {
//!     status: format!("{{\"pongs\":{pongs}}}"),
//!     metrics: format!("mirage_heartbeat_pongs_total {pongs}\n"),
//! };
//! let t0 = Instant::now();
//! // Dirty from the start: the first round publishes.
//! assert_eq!(p.on_round(t0, || render(0)).unwrap(), None);
//! p.mark_dirty();
//! // Within the interval: held back, and the round says when to come back.
//! assert_eq!(p.on_round(t0, || render(1)).unwrap(), Some(t0 + Duration::from_millis(200)));
//! p.flush(|| render(2)).unwrap(); // on stop: the last state, now
//! assert_eq!(std::fs::read_to_string(dir.join("status.json")).unwrap(), "{\"pongs\":2}");
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use super::status::MAX_STATUS_LEN;
use super::{METRICS_FILE, STATUS_FILE};

/// The two published files' text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publication {
    /// `status.json`: the service's state as JSON.
    pub status: String,
    /// `metrics.prom`: [`super::metrics::Metrics::finish`]'s text.
    pub metrics: String,
}

/// Write `p` in `run_dir`: each file replaced atomically (a fresh temp file
/// renamed over it: a reader never sees a torn file, and a link, FIFO or
/// file another uid planted at either name is replaced, never followed or
/// written through; [`crate::files::write_atomic_runtime`]). metrics.prom
/// goes first, so whoever sees a state in status.json finds the metrics of
/// that state already in place. A status larger than the `status` command
/// reads ([`MAX_STATUS_LEN`]) is refused before anything is written.
pub fn write(run_dir: impl AsFd, p: &Publication) -> io::Result<()> {
    if p.status.len() > MAX_STATUS_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{STATUS_FILE} of {} bytes: over the {MAX_STATUS_LEN} bytes `status` reads",
                p.status.len()
            ),
        ));
    }
    let write = |name: &str, text: &str| {
        crate::files::write_atomic_runtime(&run_dir, name, text.as_bytes(), 0o644)
            .map_err(|e| io::Error::new(e.kind(), format!("writing {name}: {e}")))
    };
    write(METRICS_FILE, &p.metrics)?;
    write(STATUS_FILE, &p.status)
}

/// How often a service publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Two publications at least this far apart: a burst of changes is
    /// written once, with the state it ended in.
    pub min_interval: Duration,
    /// Publish again after this long even if nothing changed (times the
    /// status shows, such as a lease's remaining seconds, go stale).
    pub refresh: Option<Duration>,
    /// Publications handed to a writer (an actuator) and not confirmed by
    /// [`Schedule::done`]; while this many are out, a new state waits and
    /// only the newest is sent. `None`: written at once (no writer to wait
    /// for).
    pub max_in_flight: Option<u32>,
}

impl Pacing {
    /// At most every `min_interval`, written by the supervisor itself.
    pub const fn every(min_interval: Duration) -> Pacing {
        Pacing {
            min_interval,
            refresh: None,
            max_in_flight: None,
        }
    }
}

/// When to publish: the state of [`Pacing`] for one service.
#[derive(Debug, Clone)]
pub struct Schedule {
    pacing: Pacing,
    dirty: bool,
    last: Option<Instant>,
    in_flight: u32,
}

impl Schedule {
    /// Dirty from the start: the first state is always published.
    pub fn new(pacing: Pacing) -> Schedule {
        Schedule {
            pacing,
            dirty: true,
            last: None,
            in_flight: 0,
        }
    }

    /// Clean, as if published at `now`: for a service whose first state
    /// comes from elsewhere (a DHCP engine's first status).
    pub fn starting_clean(pacing: Pacing, now: Instant) -> Schedule {
        Schedule {
            dirty: false,
            last: Some(now),
            ..Schedule::new(pacing)
        }
    }

    /// The state changed: it is published once the pacing allows.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether a state is waiting to be published.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Publications handed out and not [`done`](Schedule::done) yet.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    fn full(&self) -> bool {
        self.pacing.max_in_flight.is_some_and(|max| self.in_flight >= max)
    }

    /// Whether to publish now; `true` counts the publication as made (clean,
    /// and one more in flight when a writer confirms them): render the
    /// state as it is now and write or send it. Call it after every change
    /// and from every round.
    pub fn take_due(&mut self, now: Instant) -> bool {
        if self.full() {
            return false;
        }
        let since = |d: Duration| self.last.is_none_or(|t| now >= t + d);
        let due = (self.dirty && since(self.pacing.min_interval)) || self.pacing.refresh.is_some_and(since);
        if due {
            self.dirty = false;
            self.last = Some(now);
            if self.pacing.max_in_flight.is_some() {
                self.in_flight += 1;
            }
        }
        due
    }

    /// A publication the writer was handed is written (or failed): one
    /// fewer in flight. Call [`take_due`](Schedule::take_due) next: a state
    /// that waited for it is due now.
    pub fn done(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// When [`take_due`](Schedule::take_due) is next worth calling, for
    /// the runtime's `on_round`: `None` when nothing waits on time (clean
    /// without a refresh, or waiting for a writer's answer, which wakes the
    /// runtime itself). Never earlier than `now` for a schedule that
    /// `take_due` was just asked about.
    pub fn next_due(&self) -> Option<Instant> {
        if self.full() {
            return None;
        }
        let last = self.last?;
        let dirty = self.dirty.then(|| last + self.pacing.min_interval);
        let refresh = self.pacing.refresh.map(|r| last + r);
        match (dirty, refresh) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Status publication for a supervisor that writes its own files: a
/// [`Schedule`] and the runtime directory.
#[derive(Debug)]
pub struct Publisher {
    schedule: Schedule,
    run_dir: OwnedFd,
}

impl Publisher {
    /// Publishing into `run_dir` (opened with
    /// [`crate::files::open_dir_root_links_only`]) at `pacing`; a writer
    /// bound (`max_in_flight`) has no meaning here and is ignored.
    pub fn new(run_dir: OwnedFd, pacing: Pacing) -> Publisher {
        let pacing = Pacing {
            max_in_flight: None,
            ..pacing
        };
        Publisher {
            schedule: Schedule::new(pacing),
            run_dir,
        }
    }

    /// The state changed.
    pub fn mark_dirty(&mut self) {
        self.schedule.mark_dirty();
    }

    /// Whether a state is waiting to be written.
    pub fn is_dirty(&self) -> bool {
        self.schedule.is_dirty()
    }

    /// From `Service::on_round`: write `render()` if due, and return when
    /// to be called again (return it from `on_round`). A failed write
    /// leaves the state dirty.
    pub fn on_round(
        &mut self,
        now: Instant,
        render: impl FnOnce() -> Publication,
    ) -> io::Result<Option<Instant>> {
        if self.schedule.take_due(now)
            && let Err(e) = write(&self.run_dir, &render())
        {
            self.schedule.mark_dirty();
            return Err(e);
        }
        Ok(self.schedule.next_due())
    }

    /// On stop: the state not written yet, now, whatever the interval.
    pub fn flush(&mut self, render: impl FnOnce() -> Publication) -> io::Result<()> {
        if !self.schedule.is_dirty() {
            return Ok(());
        }
        write(&self.run_dir, &render())?;
        self.schedule.dirty = false;
        self.schedule.last = Some(Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn pubn(n: u32) -> Publication {
        Publication {
            status: format!("{{\"n\":{n}}}\n"),
            metrics: format!("mirage_test_n {n}\n"),
        }
    }

    fn test_dir(name: &str) -> (PathBuf, OwnedFd) {
        let d = std::env::temp_dir().join(format!("mirage-publish-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let fd = crate::files::open_dir(&d).unwrap();
        (d, fd)
    }

    fn read(d: &Path, name: &str) -> String {
        std::fs::read_to_string(d.join(name)).unwrap()
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn changes_within_the_interval_are_written_once_with_the_last_state() {
        let (d, fd) = test_dir("rate");
        let mut p = Publisher::new(fd, Pacing::every(MS * 200));
        let t0 = Instant::now();
        let writes = std::cell::Cell::new(0);
        let render = |n| {
            writes.set(writes.get() + 1);
            pubn(n)
        };
        assert_eq!(p.on_round(t0, || render(0)).unwrap(), None);
        assert_eq!(read(&d, STATUS_FILE), "{\"n\":0}\n");
        // Ten changes inside the interval: nothing written, the deadline
        // is the end of the interval, never earlier and never lost.
        for n in 1..=10 {
            p.mark_dirty();
            let at = t0 + MS * (n * 10);
            assert_eq!(p.on_round(at, || render(n)).unwrap(), Some(t0 + MS * 200));
        }
        assert_eq!(read(&d, STATUS_FILE), "{\"n\":0}\n");
        // At the deadline: the state as it is then, once.
        assert_eq!(p.on_round(t0 + MS * 200, || render(10)).unwrap(), None);
        assert_eq!(read(&d, STATUS_FILE), "{\"n\":10}\n");
        assert_eq!(read(&d, METRICS_FILE), "mirage_test_n 10\n");
        assert_eq!(p.on_round(t0 + MS * 5000, || render(11)).unwrap(), None);
        assert_eq!(writes.get(), 2, "clean rounds wrote");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_last_state_is_flushed_on_stop_and_a_clean_one_is_not_rewritten() {
        let (d, fd) = test_dir("flush");
        let mut p = Publisher::new(fd, Pacing::every(Duration::from_secs(3600)));
        let t0 = Instant::now();
        p.on_round(t0, || pubn(1)).unwrap();
        p.mark_dirty();
        assert!(p.on_round(t0, || pubn(2)).unwrap().is_some());
        p.flush(|| pubn(3)).unwrap();
        assert_eq!(read(&d, STATUS_FILE), "{\"n\":3}\n");
        assert!(!p.is_dirty());
        p.flush(|| panic!("rendered a clean state")).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failed_write_stays_dirty_and_is_written_later() {
        let (d, fd) = test_dir("fail");
        let mut p = Publisher::new(fd, Pacing::every(Duration::ZERO));
        let t0 = Instant::now();
        // A directory at the temp file's name: the write fails.
        std::fs::create_dir(d.join(format!(".{METRICS_FILE}.tmp"))).unwrap();
        assert!(p.on_round(t0, || pubn(1)).is_err());
        assert!(p.is_dirty());
        std::fs::remove_dir(d.join(format!(".{METRICS_FILE}.tmp"))).unwrap();
        p.on_round(t0, || pubn(2)).unwrap();
        assert_eq!(read(&d, STATUS_FILE), "{\"n\":2}\n");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_writer_has_at_most_max_in_flight_and_the_newest_waits() {
        let mut s = Schedule::new(Pacing {
            min_interval: Duration::ZERO,
            refresh: Some(Duration::from_secs(30)),
            max_in_flight: Some(2),
        });
        let t0 = Instant::now();
        assert!(s.take_due(t0));
        s.mark_dirty();
        assert!(s.take_due(t0));
        s.mark_dirty();
        // Two out: the third state waits, and no deadline spins the loop.
        assert!(!s.take_due(t0));
        assert!(s.is_dirty());
        assert_eq!(s.next_due(), None);
        assert_eq!(s.in_flight(), 2);
        // An answer: the waiting state goes now.
        s.done();
        assert!(s.take_due(t0 + MS));
        assert!(!s.is_dirty());
        s.done();
        s.done();
        assert_eq!(s.in_flight(), 0);
        // Clean: refreshed after 30 s, not before.
        assert_eq!(s.next_due(), Some(t0 + MS + Duration::from_secs(30)));
        assert!(!s.take_due(t0 + Duration::from_secs(30)));
        assert!(s.take_due(t0 + MS + Duration::from_secs(30)));
        // More answers than publications never underflow.
        s.done();
        s.done();
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn a_schedule_starting_clean_waits_for_a_change_or_its_refresh() {
        let t0 = Instant::now();
        let mut s = Schedule::starting_clean(
            Pacing {
                refresh: Some(Duration::from_secs(30)),
                ..Pacing::every(Duration::ZERO)
            },
            t0,
        );
        assert!(!s.take_due(t0 + MS));
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(30)));
        s.mark_dirty();
        assert_eq!(s.next_due(), Some(t0));
        assert!(s.take_due(t0 + MS));
    }

    #[test]
    fn planted_links_and_files_are_replaced_never_followed() {
        let (d, fd) = test_dir("planted");
        let outside = d.join("outside");
        std::fs::write(&outside, "precious").unwrap();
        // A link at each published name, and at the temp file's name.
        std::os::unix::fs::symlink(&outside, d.join(STATUS_FILE)).unwrap();
        std::os::unix::fs::symlink(&outside, d.join(format!(".{METRICS_FILE}.tmp"))).unwrap();
        // A FIFO at the other temp name: opening it would block for ever.
        rustix::fs::mknodat(
            &fd,
            format!(".{STATUS_FILE}.tmp").as_str(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // On a thread, so that a regression fails instead of hanging.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(write(&fd, &pubn(7)).map_err(|e| e.to_string()));
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("blocked on a planted FIFO")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
        for name in [STATUS_FILE, METRICS_FILE] {
            let m = std::fs::symlink_metadata(d.join(name)).unwrap();
            assert!(m.file_type().is_file(), "{name} is not a regular file");
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(m.permissions().mode() & 0o777, 0o644, "{name}");
        }
        assert_eq!(read(&d, STATUS_FILE), "{\"n\":7}\n");
        assert_eq!(read(&d, METRICS_FILE), "mirage_test_n 7\n");
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_reader_sees_one_whole_publication_or_the_other_never_a_torn_one() {
        let (d, fd) = test_dir("atomic");
        let big = |c: char| Publication {
            status: format!("\"{}\"\n", c.to_string().repeat(60_000)),
            metrics: c.to_string().repeat(200_000),
        };
        write(&fd, &big('a')).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (d, stop) = (d.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for (name, len) in [(STATUS_FILE, 60_003), (METRICS_FILE, 200_000)] {
                        let text = std::fs::read_to_string(d.join(name)).unwrap();
                        assert_eq!(text.len(), len, "{name} torn");
                        let first = text.chars().find(|c| c.is_ascii_lowercase()).unwrap();
                        assert!(
                            text.chars().all(|c| c == first || c == '"' || c == '\n'),
                            "{name} mixes two publications"
                        );
                    }
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..200 {
            write(&fd, &big(if i % 2 == 0 { 'b' } else { 'a' })).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().expect("a reader saw a torn file") > 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_oversized_status_is_refused_before_anything_is_written() {
        let (d, fd) = test_dir("big");
        let p = Publication {
            status: "x".repeat(MAX_STATUS_LEN + 1),
            metrics: "m\n".into(),
        };
        assert_eq!(write(&fd, &p).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert!(!d.join(METRICS_FILE).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
