//! Metrics in the Prometheus text exposition format, for the node
//! exporter's textfile collector: every name `mirage_<svc>_...`, a HELP
//! and TYPE line per family, label values escaped.
//!
//! ```
//! use mirage_sdk::service::metrics::Metrics;
//!
//! let mut m = Metrics::new("ntp");
//! m.gauge("synchronized", "1 when the clock is synchronized.", &[("server", "a\"b")], 1);
//! m.counter("polls_total", "Servers polled.", &[], 42u64);
//! let text = m.finish();
//! assert_eq!(
//!     text.lines().collect::<Vec<_>>(),
//!     [
//!         "# HELP mirage_ntp_synchronized 1 when the clock is synchronized.",
//!         "# TYPE mirage_ntp_synchronized gauge",
//!         r#"mirage_ntp_synchronized{server="a\"b"} 1"#,
//!         "# HELP mirage_ntp_polls_total Servers polled.",
//!         "# TYPE mirage_ntp_polls_total counter",
//!         "mirage_ntp_polls_total 42",
//!     ]
//! );
//! ```

use std::fmt::Write as _;

use super::Service;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A count that only grows; its name ends in `_total`.
    Counter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// A sample's value as the format writes it.
pub trait SampleValue {
    fn write_to(&self, out: &mut String);
}

macro_rules! integer_samples {
    ($($t:ty),*) => {$(
        impl SampleValue for $t {
            fn write_to(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
integer_samples!(u8, u16, u32, u64, usize, i32, i64);

impl SampleValue for f64 {
    fn write_to(&self, out: &mut String) {
        // The format's spellings, not Rust's "inf" and "NaN".
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

impl SampleValue for bool {
    fn write_to(&self, out: &mut String) {
        out.push(if *self { '1' } else { '0' });
    }
}

/// A metrics.prom being written.
#[derive(Debug, Clone)]
pub struct Metrics {
    prefix: String,
    out: String,
    families: Vec<String>,
}

impl Metrics {
    /// Metrics of service `service`: every name gets `mirage_<service>_`.
    ///
    /// # Panics
    /// If `service` is not a valid service name.
    pub fn new(service: &str) -> Metrics {
        assert!(super::is_valid_name(service), "{service:?} is not a service name");
        Metrics {
            prefix: format!("mirage_{service}_"),
            out: String::new(),
            families: Vec::new(),
        }
    }

    /// Metrics of `S`.
    pub fn of<S: Service>() -> Metrics {
        Metrics::new(S::NAME)
    }

    /// Start the family `name` (without the prefix): its HELP and TYPE
    /// lines. Add its samples to what this returns.
    ///
    /// # Panics
    /// On a name the format does not allow, a counter not named
    /// `..._total`, or a family started twice (the format allows one HELP
    /// and TYPE per family): all mistakes in the service's constants.
    pub fn family(&mut self, kind: Kind, name: &str, help: &str) -> Family<'_> {
        assert!(is_metric_name(name), "bad metric name {name:?}");
        assert!(
            kind != Kind::Counter || name.ends_with("_total"),
            "counter {name:?} does not end in _total"
        );
        assert!(
            !self.families.iter().any(|f| f == name),
            "metric family {name:?} written twice"
        );
        self.families.push(name.to_string());
        let full = format!("{}{name}", self.prefix);
        let _ = writeln!(self.out, "# HELP {full} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {full} {}", kind.as_str());
        Family {
            out: &mut self.out,
            name: full,
        }
    }

    /// A gauge family with one sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: impl SampleValue) {
        self.family(Kind::Gauge, name, help).sample(labels, value);
    }

    /// A counter family with one sample.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: impl SampleValue) {
        self.family(Kind::Counter, name, help).sample(labels, value);
    }

    /// The text, ready for `metrics.prom`.
    pub fn finish(self) -> String {
        self.out
    }
}

/// One family's samples, written right after its HELP and TYPE lines.
#[derive(Debug)]
pub struct Family<'a> {
    out: &'a mut String,
    name: String,
}

impl Family<'_> {
    /// Add the sample `name{labels} value`. Label values are escaped.
    ///
    /// # Panics
    /// On a label name the format does not allow.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl SampleValue) -> &mut Self {
        self.out.push_str(&self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                assert!(is_label_name(k), "bad label name {k:?}");
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label_value(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        value.write_to(self.out);
        self.out.push('\n');
        self
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, the format's metric names.
fn is_metric_name(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
fn is_label_name(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !n.starts_with("__")
}

/// A label value as the format writes it: `\`, `"` and newline escaped.
pub fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// HELP text: `\` and newline escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_type_and_prefixed_samples() {
        let mut m = Metrics::new("dns");
        m.family(Kind::Gauge, "state", "Current state.")
            .sample(&[("interface", "eth0"), ("state", "up")], 1)
            .sample(&[("interface", "eth0"), ("state", "down")], 0);
        m.counter("queries_total", "Queries.", &[("interface", "eth0")], 7u64);
        m.gauge("offset_seconds", "Offset.", &[], -0.25);
        m.gauge("up", "Up.", &[], true);
        assert_eq!(
            m.finish(),
            "# HELP mirage_dns_state Current state.\n\
             # TYPE mirage_dns_state gauge\n\
             mirage_dns_state{interface=\"eth0\",state=\"up\"} 1\n\
             mirage_dns_state{interface=\"eth0\",state=\"down\"} 0\n\
             # HELP mirage_dns_queries_total Queries.\n\
             # TYPE mirage_dns_queries_total counter\n\
             mirage_dns_queries_total{interface=\"eth0\"} 7\n\
             # HELP mirage_dns_offset_seconds Offset.\n\
             # TYPE mirage_dns_offset_seconds gauge\n\
             mirage_dns_offset_seconds -0.25\n\
             # HELP mirage_dns_up Up.\n\
             # TYPE mirage_dns_up gauge\n\
             mirage_dns_up 1\n"
        );
    }

    #[test]
    fn label_values_and_help_cannot_break_a_line() {
        let mut m = Metrics::new("dhcp");
        m.gauge(
            "x",
            "back\\slash\nnew line",
            &[("interface", "a\"b\\c\nmirage_dhcp_x 666")],
            1,
        );
        let text = m.finish();
        assert_eq!(
            text,
            "# HELP mirage_dhcp_x back\\\\slash\\nnew line\n\
             # TYPE mirage_dhcp_x gauge\n\
             mirage_dhcp_x{interface=\"a\\\"b\\\\c\\nmirage_dhcp_x 666\"} 1\n"
        );
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn float_values_use_the_formats_spellings() {
        let mut out = String::new();
        for v in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1.5, 0.0] {
            v.write_to(&mut out);
            out.push(' ');
        }
        assert_eq!(out, "+Inf -Inf NaN 1.5 0 ");
    }

    #[test]
    fn mistakes_in_names_are_caught() {
        let catch = |f: fn(&mut Metrics)| {
            std::panic::catch_unwind(|| {
                let mut m = Metrics::new("dhcp");
                f(&mut m)
            })
            .is_err()
        };
        assert!(catch(|m| m.gauge("bad-name", "h", &[], 1)));
        assert!(catch(|m| m.gauge("9lives", "h", &[], 1)));
        assert!(catch(|m| m.counter("frames", "h", &[], 1)));
        assert!(catch(|m| m.gauge("x", "h", &[("bad label", "v")], 1)));
        assert!(catch(|m| m.gauge("x", "h", &[("__name__", "v")], 1)));
        assert!(catch(|m| {
            m.gauge("x", "h", &[], 1);
            m.gauge("x", "h", &[], 2);
        }));
        assert!(!catch(|m| m.counter("frames_total", "h", &[("kind", "a")], 1)));
        assert!(std::panic::catch_unwind(|| Metrics::new("mirage dhcp")).is_err());
    }
}
