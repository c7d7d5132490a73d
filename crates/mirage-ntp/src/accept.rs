//! `mirage-ntp accept-step`: how an operator's acceptance of a held step
//! reaches the actuator.
//!
//! ```text
//!   accept-step --accept-step.json--> supervisor (reads, removes, checks the shape)
//!     --ToActuator::AcceptStep--> actuator (PolicyState::accept_step: size and validity
//!       bounded; one step of at most that size passes, once, before it expires)
//!     --Acceptance--> supervisor --Event::StepAccepted--> engine (polls now, steps at
//!       the next estimate instead of after the stepout)
//! ```
//!
//! Left without `--max-s`, the acceptance is for the held step: its size
//! plus a margin, and its direction only (a compromised engine cannot turn
//! it into the mirror-image step).
//!
//! The request is a file in the runtime directory, which only the
//! supervisor's uid (root) may write: whoever may write there may accept.
//! The supervisor looks for it every second and removes it once read; the
//! command waits for that and removes its own file if nobody took it, so
//! an acceptance never waits for a later run.

use std::os::fd::AsFd;

use serde::{Deserialize, Serialize};

use crate::policy::{MAX_ACCEPTANCE_VALID_MS, StepAcceptance};
use mirage_sdk::service::state::{self, Versioned};

/// The request's name in the runtime directory.
pub const REQUEST_FILE: &str = "accept-step.json";
/// How long an acceptance lasts unless `--valid-s` says otherwise.
pub const DEFAULT_VALID_S: u64 = 600;
/// Added to the held step when `--max-s` is left out: a clock drifting at
/// the kernel's limit of 500 ppm moves 0.3 s in the default 600 s.
pub const DEFAULT_MARGIN_NS: u64 = 500_000_000;

/// `accept-step.json`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AcceptRequest {
    pub version: u32,
    /// The largest step accepted, either way, ns.
    pub max_ns: u64,
    /// How long the acceptance lasts, ms.
    pub valid_ms: u64,
    /// Forward only (`true`), back only (`false`) or either way (absent).
    #[serde(default)]
    pub forward: Option<bool>,
}

impl Versioned for AcceptRequest {
    const VERSION: u32 = 1;
    const WHAT: &'static str = "step acceptance";
}

impl AcceptRequest {
    /// A request from the command line's seconds; `Err` says what is out
    /// of range (the actuator checks again).
    pub fn new(max_s: f64, valid_s: u64, forward: Option<bool>) -> Result<AcceptRequest, String> {
        if !(max_s.is_finite() && max_s > 0.0 && max_s <= 1e9) {
            return Err(format!("--max-s {max_s}: must be above 0 and at most 1e9 s"));
        }
        let valid_ms = valid_s.saturating_mul(1000);
        if valid_ms == 0 || valid_ms > MAX_ACCEPTANCE_VALID_MS {
            return Err(format!(
                "--valid-s {valid_s}: must be 1..={}",
                MAX_ACCEPTANCE_VALID_MS / 1000
            ));
        }
        Ok(AcceptRequest {
            version: Self::VERSION,
            max_ns: (max_s * 1e9).round() as u64,
            valid_ms,
            forward,
        })
    }

    /// What the actuator is handed.
    pub fn acceptance(&self) -> StepAcceptance {
        StepAcceptance {
            max_ns: self.max_ns,
            valid_ms: self.valid_ms,
            forward: self.forward,
        }
    }
}

/// Write the request in `run_dir` (atomic; owner-only).
pub fn write(run_dir: impl AsFd, r: &AcceptRequest) -> std::io::Result<()> {
    mirage_sdk::files::write_atomic_runtime(run_dir, REQUEST_FILE, state::to_json(r).as_bytes(), 0o600)
}

/// Take the request from `run_dir`, if one is there: read (no link
/// followed, bounded), removed, parsed.
pub fn take(run_dir: impl AsFd) -> Result<Option<AcceptRequest>, String> {
    let bytes = match mirage_sdk::files::read_bounded(&run_dir, REQUEST_FILE, 4096) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(e) => {
            let _ = mirage_sdk::files::remove(&run_dir, REQUEST_FILE);
            return Err(format!("{REQUEST_FILE}: {e}"));
        }
    };
    mirage_sdk::files::remove(&run_dir, REQUEST_FILE).map_err(|e| format!("{REQUEST_FILE}: {e}"))?;
    state::from_json(&bytes)
        .map(Some)
        .map_err(|e| format!("{REQUEST_FILE}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_bounded_and_taken_once() {
        assert!(AcceptRequest::new(0.0, 600, None).is_err());
        assert!(AcceptRequest::new(-1.0, 600, None).is_err());
        assert!(AcceptRequest::new(f64::NAN, 600, None).is_err());
        assert!(AcceptRequest::new(1.0, 0, None).is_err());
        assert!(AcceptRequest::new(1.0, 3601, None).is_err());
        let r = AcceptRequest::new(0.05, 60, Some(true)).unwrap();
        assert_eq!(
            (r.max_ns, r.valid_ms, r.forward),
            (50_000_000, 60_000, Some(true))
        );
        let dir = std::env::temp_dir().join(format!("mirage-ntp-accept-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fd = mirage_sdk::files::open_dir(&dir).unwrap();
        assert_eq!(take(&fd), Ok(None));
        write(&fd, &r).unwrap();
        assert_eq!(take(&fd), Ok(Some(r)));
        assert_eq!(take(&fd), Ok(None), "taken once");
        std::fs::write(dir.join(REQUEST_FILE), "{\"version\":1,\"max_ns\":1}").unwrap();
        assert!(take(&fd).is_err());
        assert!(!dir.join(REQUEST_FILE).exists(), "a bad request is removed too");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
