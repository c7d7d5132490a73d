//! The `[cache]` table of the config file: the engine's cache settings,
//! checked at start with errors that name the key.

use dns_engine::Start;
use serde::{Deserialize, Serialize};

/// `[cache]` (docs/dns.md, "Configuration").
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Memory the cache may take (octets, estimated per entry: answer,
    /// key, indexes); 0: no cache.
    pub bytes: u32,
    /// The shortest an answer is kept (seconds; served TTLs are never
    /// raised by it).
    pub min_ttl: u32,
    /// The longest an answer is kept or relayed with (seconds).
    pub max_ttl: u32,
    /// The longest a negative answer (NXDOMAIN, NODATA) is kept (seconds).
    pub negative_max_ttl: u32,
    /// Serve expired answers, TTL 30 s, when the upstreams fail (RFC 8767).
    pub serve_stale: bool,
    /// How long after expiry an answer may be served stale (seconds).
    pub stale_max_age: u32,
    /// With serve-stale, how long a client whose question has a stale
    /// answer waits for the upstream before it gets that answer
    /// (milliseconds; RFC 8767 section 5's client response timer).
    pub stale_answer_ms: u32,
    /// Ask the upstream again for an answer asked for in the last tenth
    /// of its time, so a name in use stays cached (unbound's `prefetch`).
    pub prefetch: bool,
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        let s = Start::default();
        CacheConfig {
            bytes: s.cache_bytes,
            min_ttl: s.min_ttl_secs,
            max_ttl: s.max_ttl_secs,
            negative_max_ttl: s.negative_max_ttl_secs,
            serve_stale: s.serve_stale,
            stale_max_age: s.stale_max_age_secs,
            stale_answer_ms: s.stale_answer_ms,
            prefetch: s.prefetch,
        }
    }
}

/// The largest cache: what the engine accepts.
pub const MAX_CACHE_BYTES: u32 = 64 << 20;

impl CacheConfig {
    /// Every value within what the engine takes, and consistent.
    pub fn check(&self) -> Result<(), String> {
        let within = |key: &str, v: u32, lo: u32, hi: u32| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("cache.{key} = {v} is not within {lo}..={hi}"))
            }
        };
        within("bytes", self.bytes, 0, MAX_CACHE_BYTES)?;
        within("min_ttl", self.min_ttl, 0, 86_400)?;
        within("max_ttl", self.max_ttl, 1, 604_800)?;
        within("negative_max_ttl", self.negative_max_ttl, 0, 86_400)?;
        within("stale_max_age", self.stale_max_age, 1, 604_800)?;
        within("stale_answer_ms", self.stale_answer_ms, 100, 10_000)?;
        if self.min_ttl > self.max_ttl {
            return Err(format!(
                "cache.min_ttl = {} is more than cache.max_ttl = {}",
                self.min_ttl, self.max_ttl
            ));
        }
        if self.serve_stale && self.bytes == 0 {
            return Err("cache.serve_stale = true needs a cache (cache.bytes is 0)".into());
        }
        Ok(())
    }

    /// The engine's settings from these.
    pub fn apply(&self, start: &mut Start) {
        start.cache_bytes = self.bytes;
        start.min_ttl_secs = self.min_ttl;
        start.max_ttl_secs = self.max_ttl;
        start.negative_max_ttl_secs = self.negative_max_ttl;
        start.serve_stale = self.serve_stale;
        start.stale_max_age_secs = self.stale_max_age;
        start.stale_answer_ms = self.stale_answer_ms;
        start.prefetch = self.prefetch;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_parses_checks_and_reaches_the_engine() {
        let c: CacheConfig = toml::from_str(
            "bytes = 1048576\nmin_ttl = 10\nmax_ttl = 3600\nnegative_max_ttl = 300\nserve_stale = true\nstale_max_age = 7200\nstale_answer_ms = 1200\nprefetch = true\n",
        )
        .unwrap();
        assert_eq!(c.check(), Ok(()));
        let mut s = Start::default();
        c.apply(&mut s);
        assert_eq!(
            (
                s.cache_bytes,
                s.min_ttl_secs,
                s.max_ttl_secs,
                s.negative_max_ttl_secs,
                s.serve_stale,
                s.stale_max_age_secs,
                s.stale_answer_ms,
                s.prefetch
            ),
            (1 << 20, 10, 3600, 300, true, 7200, 1200, true)
        );
        // The defaults are the engine's, and valid.
        assert_eq!(CacheConfig::default().check(), Ok(()));
        let mut d = Start::default();
        CacheConfig::default().apply(&mut d);
        assert_eq!(d, Start::default());
        assert!(
            toml::from_str::<CacheConfig>("ttl = 5\n").is_err(),
            "unknown keys"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let bad = |c: CacheConfig| c.check().unwrap_err();
        let d = CacheConfig::default();
        assert!(bad(CacheConfig { max_ttl: 0, ..d }).contains("cache.max_ttl = 0"));
        assert!(bad(CacheConfig { bytes: 65 << 20, ..d }).contains("cache.bytes"));
        assert!(bad(CacheConfig { min_ttl: 90_000, ..d }).contains("cache.min_ttl"));
        assert!(
            bad(CacheConfig {
                negative_max_ttl: 90_000,
                ..d
            })
            .contains("cache.negative_max_ttl")
        );
        assert!(
            bad(CacheConfig {
                stale_max_age: 0,
                ..d
            })
            .contains("cache.stale_max_age")
        );
        for ms in [0, 99, 10_001] {
            assert!(
                bad(CacheConfig {
                    stale_answer_ms: ms,
                    ..d
                })
                .contains(&format!("cache.stale_answer_ms = {ms} is not within 100..=10000"))
            );
        }
        assert!(
            bad(CacheConfig {
                min_ttl: 600,
                max_ttl: 300,
                ..d
            })
            .contains("more than cache.max_ttl")
        );
        assert!(
            bad(CacheConfig {
                serve_stale: true,
                bytes: 0,
                ..d
            })
            .contains("needs a cache")
        );
    }
}
