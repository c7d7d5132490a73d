//! Logging: one line per record on stderr, through the `log` facade.
//!
//! Roles write plain `LEVEL message` lines; the supervisor reads each role's
//! stderr pipe and prefixes the role name itself, so a compromised role can
//! not pretend to be another (see [`relay_line`]).

use std::io::Write as _;
use std::sync::OnceLock;

struct StderrLogger {
    level: log::LevelFilter,
    prefix: &'static str,
}

static LOGGER: OnceLock<StderrLogger> = OnceLock::new();

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // One write per line: lines from different roles never interleave
        // mid-line (pipe writes up to PIPE_BUF are atomic).
        let line = format!("{}{:<5} {}\n", self.prefix, record.level(), record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Install the logger once. `prefix` is written before every line (the
/// supervisor uses its own role name; roles leave it empty).
pub fn init(level: log::LevelFilter, prefix: &'static str) {
    let logger = LOGGER.get_or_init(|| StderrLogger { level, prefix });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Longest relayed line; longer lines are cut.
pub const MAX_RELAYED_LINE: usize = 1024;

/// A role's log line as the supervisor prints it: role name first, control
/// characters replaced, length capped.
pub fn relay_line(role: &str, raw: &[u8]) -> String {
    let cut = &raw[..raw.len().min(MAX_RELAYED_LINE)];
    let text: String = String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    format!("[{role}] {text}")
}

/// A bound on the lines relayed from one role: a role (compromised, or
/// stuck in a loop) that writes lines as fast as it can must not turn the
/// host's log into a flood. Up to `burst` lines pass at once, refilled at
/// `per_second`; the rest are counted and summed up in one line per second.
#[derive(Debug)]
pub struct LineLimiter {
    per_second: u32,
    burst: u32,
    tokens: f64,
    last: std::time::Instant,
    suppressed: u64,
    summary_at: std::time::Instant,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum LineVerdict {
    Relay,
    Drop,
    /// Relay this line after a summary of `n` lines dropped before it.
    RelayAfter(u64),
}

impl LineLimiter {
    /// Default for a role: enough for any start-up and a busy lease
    /// exchange at debug level, far below a flood.
    pub const ROLE_PER_SECOND: u32 = 100;
    pub const ROLE_BURST: u32 = 500;

    pub fn new(per_second: u32, burst: u32, now: std::time::Instant) -> Self {
        LineLimiter {
            per_second,
            burst,
            tokens: f64::from(burst),
            last: now,
            suppressed: 0,
            summary_at: now,
        }
    }

    /// Decide for one line at `now`.
    pub fn check(&mut self, now: std::time::Instant) -> LineVerdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * f64::from(self.per_second)).min(f64::from(self.burst));
        if self.tokens < 1.0 {
            self.suppressed += 1;
            return LineVerdict::Drop;
        }
        self.tokens -= 1.0;
        if self.suppressed > 0 && now.saturating_duration_since(self.summary_at).as_secs() >= 1 {
            self.summary_at = now;
            return LineVerdict::RelayAfter(std::mem::take(&mut self.suppressed));
        }
        if self.suppressed == 0 {
            self.summary_at = now;
        }
        LineVerdict::Relay
    }

    /// Lines dropped and not yet summed up (reported at the role's end).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// Log lines about one kind of event that a peer can cause at will (a
/// frame the engine dropped): a flood of junk must not turn into a flood of
/// log lines (counters elsewhere count every event). Up to `per_second`
/// events a second are logged one by one; the rest are counted, and the
/// count is given to the summary callback when the next second's first
/// event comes.
#[derive(Debug)]
pub struct EventLog {
    per_second: u32,
    window: Option<std::time::Instant>,
    logged: u32,
    suppressed: u64,
}

impl EventLog {
    pub const fn new(per_second: u32) -> Self {
        EventLog {
            per_second,
            window: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// One event at `now`: whether to log it one by one. `summary` gets
    /// the number of events not logged in the second that just ended.
    pub fn admit(&mut self, now: std::time::Instant, summary: impl FnOnce(u64)) -> bool {
        if self
            .window
            .is_none_or(|w| now.saturating_duration_since(w) >= std::time::Duration::from_secs(1))
        {
            if self.suppressed > 0 {
                summary(self.suppressed);
            }
            self.window = Some(now);
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < self.per_second {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_line_flood_is_bounded_and_summed_up() {
        let start = Instant::now();
        let mut lim = LineLimiter::new(100, 500, start);
        let (mut relayed, mut dropped, mut summed) = (0u64, 0u64, 0u64);
        // 245,000 lines over 3 s, as a flooding role wrote them.
        for i in 0..245_000u64 {
            let now = start + Duration::from_micros(i * 3_000_000 / 245_000);
            match lim.check(now) {
                LineVerdict::Relay => relayed += 1,
                LineVerdict::Drop => dropped += 1,
                LineVerdict::RelayAfter(n) => {
                    relayed += 1;
                    summed += n;
                }
            }
        }
        // The burst, then the refill rate; the summary lines come at most
        // once a second.
        assert!(relayed <= 500 + 3 * 100 + 1, "{relayed} lines relayed");
        assert!(relayed >= 500, "{relayed} lines relayed");
        summed += lim.take_suppressed();
        assert_eq!(summed, dropped, "every dropped line is summed up once");
        // A quiet role is never limited.
        let mut lim = LineLimiter::new(100, 500, start);
        for i in 0..1000u64 {
            assert_eq!(
                lim.check(start + Duration::from_millis(i * 20)),
                LineVerdict::Relay
            );
        }
    }

    #[test]
    fn relayed_lines_cannot_forge_other_roles() {
        assert_eq!(
            relay_line("engine", b"INFO x\n[actuator] y"),
            "[engine] INFO x?[actuator] y"
        );
        assert_eq!(
            relay_line("engine", &[b'a'; 5000]).len(),
            "[engine] ".len() + MAX_RELAYED_LINE
        );
    }

    #[test]
    fn events_are_logged_up_to_the_rate_and_the_rest_summed_up() {
        let t0 = Instant::now();
        let mut log = EventLog::new(50);
        let mut summaries = Vec::new();
        let admitted = (0..120).filter(|_| log.admit(t0, |n| summaries.push(n))).count();
        assert_eq!(admitted, 50);
        assert!(summaries.is_empty());
        // Within the same second: still over the rate.
        assert!(!log.admit(t0 + Duration::from_millis(999), |n| summaries.push(n)));
        // The next second: the 71 not logged are summed up, then logging resumes.
        assert!(log.admit(t0 + Duration::from_secs(1), |n| summaries.push(n)));
        assert_eq!(summaries, [71]);
        // A quiet second has nothing to sum up.
        assert!(log.admit(t0 + Duration::from_secs(3), |n| summaries.push(n)));
        assert_eq!(summaries, [71]);
    }
}
