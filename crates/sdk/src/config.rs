//! Configuration files shared by every service: TOML, every key optional,
//! unknown keys and bad values refused with the file, line and key named,
//! before anything on the host is touched (DESIGN.md section 6).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Largest configuration file accepted.
pub const MAX_CONFIG_LEN: usize = 64 * 1024;

/// A configuration error, printable as `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Load `path` as `T`. `Ok(None)` when the file does not exist and
/// `required` is false (every key has a default). `T` should use
/// `#[serde(deny_unknown_fields)]` so that typos are errors.
pub fn load<T: DeserializeOwned>(path: &Path, required: bool) -> Result<Option<T>, ConfigError> {
    let err = |message: String| ConfigError {
        path: path.to_path_buf(),
        line: None,
        column: None,
        message,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    if bytes.len() > MAX_CONFIG_LEN {
        return Err(err(format!("larger than {MAX_CONFIG_LEN} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8".into()))?;
    parse(path, &text).map(Some)
}

/// [`load`], with `T`'s defaults when an optional file is absent.
pub fn load_or_default<T: DeserializeOwned + Default>(path: &Path, required: bool) -> Result<T, ConfigError> {
    Ok(load(path, required)?.unwrap_or_default())
}

/// Parse TOML text that came from `path` (used for messages only).
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let (line, column) = match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        ConfigError {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, Default, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        interface: Option<String>,
        timeout_ms: u32,
    }

    #[test]
    fn errors_name_line_and_key() {
        let p = Path::new("config.toml");
        let e = parse::<Sample>(p, "interface = \"eth0\"\n\ntimeuot_ms = 5\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("timeuot_ms"), "{e}");
        assert!(e.to_string().starts_with("config.toml:3:1: "), "{e}");
        let e = parse::<Sample>(p, "timeout_ms = -1\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        let ok: Sample = parse(p, "timeout_ms = 7").unwrap();
        assert_eq!(ok.timeout_ms, 7);
    }

    #[test]
    fn missing_optional_file_is_none() {
        let p = Path::new("/nonexistent/mirage/config.toml");
        assert_eq!(load::<Sample>(p, false).unwrap(), None);
        assert_eq!(load_or_default::<Sample>(p, false).unwrap(), Sample::default());
        assert!(load_or_default::<Sample>(p, true).is_err());
        assert!(load::<Sample>(p, true).is_err());
    }
}
