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

#[cfg(test)]
mod tests {
    use super::*;

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
}
