//! A guest's log lines are rate-limited by its tender: the log hypercall
//! costs a guest one exit, so a hostile or looping guest can log hundreds
//! of thousands of lines a second. Past a burst of [`LOG_BURST`] lines, it
//! gets [`LOG_PER_SECOND`]; the rest are counted, and the count goes to the
//! log before the next line that passes and when the guest ends. The
//! tender's own lines (why a guest ended) do not go through this, so a
//! flood cannot crowd them out of the role's share of the service log.

use std::time::{Duration, Instant};

use crate::hypercall::LogSink;

/// Lines a guest may log at once.
pub const LOG_BURST: u32 = 32;
/// Lines a second a guest may log past the burst.
pub const LOG_PER_SECOND: u32 = 8;

/// A token bucket over guest log lines.
pub(crate) struct LogLimit {
    tokens: u32,
    /// When the bucket last gained a token (or was full).
    refilled: Instant,
    suppressed: u64,
}

impl LogLimit {
    pub(crate) fn new(now: Instant) -> LogLimit {
        LogLimit {
            tokens: LOG_BURST,
            refilled: now,
            suppressed: 0,
        }
    }

    /// Pass `line` to `sink` if the rate allows, after the count of the
    /// lines suppressed before it; else count it.
    pub(crate) fn offer(&mut self, now: Instant, line: &str, sink: LogSink<'_>) {
        self.refill(now);
        if self.tokens == 0 {
            self.suppressed += 1;
            return;
        }
        self.tokens -= 1;
        self.flush(sink);
        sink(line);
    }

    /// The count of lines suppressed and not yet reported, if any (at the
    /// guest's end).
    pub(crate) fn flush(&mut self, sink: LogSink<'_>) {
        let n = std::mem::take(&mut self.suppressed);
        if n > 0 {
            sink(&format!(
                "[tender] {n} guest log line(s) suppressed (over {LOG_BURST} at once or {LOG_PER_SECOND} a second)"
            ));
        }
    }

    fn refill(&mut self, now: Instant) {
        let every = Duration::from_secs(1) / LOG_PER_SECOND;
        let elapsed = now.saturating_duration_since(self.refilled);
        let gained = (elapsed.as_nanos() / every.as_nanos()).min(u128::from(LOG_BURST)) as u32;
        if gained == 0 {
            return;
        }
        self.tokens = (self.tokens + gained).min(LOG_BURST);
        self.refilled = if self.tokens == LOG_BURST {
            now
        } else {
            self.refilled + every * gained
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(f: impl FnOnce(&mut dyn FnMut(&str))) -> Vec<String> {
        let mut lines = Vec::new();
        f(&mut |l: &str| lines.push(l.to_owned()));
        lines
    }

    #[test]
    fn a_flood_is_cut_to_the_burst_and_the_rate_with_a_count() {
        let start = Instant::now();
        let mut limit = LogLimit::new(start);
        // 100,000 lines over 2 s, as a flooding guest logs them.
        let n = 100_000u64;
        let lines = collect(|sink| {
            for i in 0..n {
                let now = start + Duration::from_micros(i * 2_000_000 / n);
                limit.offer(now, &format!("line {i}"), sink);
            }
            limit.flush(sink);
        });
        let (notes, passed): (Vec<_>, Vec<_>) = lines.iter().partition(|l| l.starts_with("[tender]"));
        // The burst, then about LOG_PER_SECOND a second for 2 s.
        let most = (LOG_BURST + 2 * LOG_PER_SECOND + 1) as usize;
        assert!(
            passed.len() >= LOG_BURST as usize && passed.len() <= most,
            "{}",
            passed.len()
        );
        assert_eq!(passed[0], "line 0");
        // Every line is either logged or counted.
        let counted: u64 = notes
            .iter()
            .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(counted + passed.len() as u64, n);
        // The count precedes the next line that passes, and ends the run.
        assert!(lines.last().unwrap().contains("suppressed"), "{lines:?}");
        let first_note = lines.iter().position(|l| l.starts_with("[tender]")).unwrap();
        assert_eq!(first_note, LOG_BURST as usize, "{lines:?}");
    }

    #[test]
    fn a_quiet_guest_loses_nothing_and_gets_no_note() {
        let start = Instant::now();
        let mut limit = LogLimit::new(start);
        let lines = collect(|sink| {
            // One line every 200 ms (5 a second) for 60 s, after a burst.
            for i in 0..LOG_BURST {
                limit.offer(start, &format!("burst {i}"), sink);
            }
            for i in 0..300u32 {
                limit.offer(
                    start + Duration::from_millis(200) * (i + 1),
                    &format!("line {i}"),
                    sink,
                );
            }
            limit.flush(sink);
        });
        assert_eq!(lines.len(), LOG_BURST as usize + 300);
        assert!(lines.iter().all(|l| !l.contains("suppressed")));
    }

    #[test]
    fn the_bucket_refills_after_a_pause() {
        let start = Instant::now();
        let mut limit = LogLimit::new(start);
        let lines = collect(|sink| {
            for _ in 0..LOG_BURST + 10 {
                limit.offer(start, "a", sink);
            }
            let later = start + Duration::from_secs(10);
            for _ in 0..LOG_BURST {
                limit.offer(later, "b", sink);
            }
        });
        assert_eq!(lines.iter().filter(|l| *l == "a").count(), LOG_BURST as usize);
        // After the pause: the note of 10, then a full burst again.
        assert!(lines[LOG_BURST as usize].starts_with("[tender] 10 guest log line(s) suppressed"));
        assert_eq!(lines.iter().filter(|l| *l == "b").count(), LOG_BURST as usize);
    }
}
