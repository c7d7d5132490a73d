//! The `status` command every service has: read the `status.json` the
//! running service published, print it as text lines or as JSON, every
//! string escaped.
//!
//! ```
//! use mirage_sdk::service::status::{StatusText, text_of};
//! use mirage_sdk::service::{Service, StatusArgs};
//!
//! #[derive(Debug)]
//! struct Ntp;
//! impl Service for Ntp {
//!     const NAME: &'static str = "ntp";
//! }
//!
//! /// The service's own fields, as text lines.
//! fn summary(v: &serde_json::Value, out: &mut StatusText) {
//!     out.line("state", &text_of(&v["state"]));
//!     out.line("offset", &format!("{} ms", text_of(&v["offset_ms"])));
//! }
//!
//! #[derive(clap::Subcommand)]
//! enum Command {
//!     /// Print the status a running server published (status.json).
//!     Status(StatusArgs<Ntp>),
//! }
//!
//! fn dispatch(c: Command) -> std::process::ExitCode {
//!     match c {
//!         Command::Status(args) => args.run(summary),
//!     }
//! }
//! ```

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::escape::{json_printable, printable};
use super::{STATUS_FILE, Service};

/// Largest status.json read. The services write far less (the DHCP
/// actuator at most 16 KiB); a bigger file is not theirs.
pub const MAX_STATUS_LEN: usize = 64 * 1024;

/// Why status.json could not be read.
#[derive(Debug)]
pub enum StatusError {
    /// There is no status.json (the service is not running, or another
    /// runtime directory is in use).
    Missing,
    /// It could not be read: not a regular file, a link, too large, a
    /// directory on the way that is someone else's link, no permission...
    Unreadable(io::Error),
    /// It is not JSON.
    NotJson(serde_json::Error),
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusError::Missing => write!(f, "does not exist"),
            // The message can carry a file name from the directory.
            StatusError::Unreadable(e) => write!(f, "cannot be read: {}", printable(&e.to_string())),
            StatusError::NotJson(e) => write!(f, "is not valid JSON: {e}"),
        }
    }
}

impl std::error::Error for StatusError {}

/// Read `run_dir/status.json` as JSON. The file is written by a role's
/// uid, so it is read as something another uid may have planted: the
/// directory is walked following only root's links, the file is opened
/// `O_NOFOLLOW|O_NONBLOCK` (a FIFO neither blocks nor is read), must be a
/// regular file, and is read up to [`MAX_STATUS_LEN`] bytes.
pub fn read(run_dir: &Path) -> Result<serde_json::Value, StatusError> {
    let bytes = crate::files::open_dir_root_links_only(run_dir, None)
        .and_then(|(dir, _)| crate::files::read_bounded(&dir, STATUS_FILE, MAX_STATUS_LEN))
        .map_err(StatusError::Unreadable)?
        .ok_or(StatusError::Missing)?;
    serde_json::from_slice(&bytes).map_err(StatusError::NotJson)
}

/// The text form of a status: `label value` lines, aligned. Everything
/// added is escaped ([`printable`]), so a formatter cannot print a raw
/// published string by mistake.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StatusText {
    text: String,
}

impl StatusText {
    /// Width of the label column.
    pub const LABEL_WIDTH: usize = 10;

    /// Add the line `label value`.
    pub fn line(&mut self, label: &str, value: &str) {
        let line = format!("{label:<width$} {value}", width = Self::LABEL_WIDTH);
        self.text.push_str(&printable(&line));
        self.text.push('\n');
    }

    /// The lines so far, each ending in a newline.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A JSON value as it reads in a status line: a string as it is, null
/// (absent) as `?`, anything else as JSON. Not escaped yet: it goes to
/// [`StatusText::line`], which escapes.
pub fn text_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "?".into(),
        other => other.to_string(),
    }
}

/// A JSON array as a space-separated list of [`text_of`] its items; empty
/// when `v` is not an array.
pub fn list_of(v: &serde_json::Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(text_of).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The text a status prints: pretty JSON with every non-printable
/// character as a `\u` escape (`json`), or the formatter's lines.
pub fn render(
    v: &serde_json::Value,
    json: bool,
    summary: impl FnOnce(&serde_json::Value, &mut StatusText),
) -> String {
    if json {
        // Valid JSON still, with every character a terminal could act on
        // written as a \u escape.
        let text = serde_json::to_string_pretty(v).unwrap_or_default();
        let mut out = json_printable(&text);
        out.push('\n');
        out
    } else {
        let mut out = StatusText::default();
        summary(v, &mut out);
        out.text
    }
}

/// The `status` subcommand's flags.
#[derive(clap::Args)]
pub struct StatusArgs<S: Service> {
    #[arg(
        long,
        help = format!(
            "Runtime directory the {} publishes to [default: {}]",
            S::NOUN,
            S::paths().run_dir.display()
        )
    )]
    pub run_dir: Option<PathBuf>,
    /// Print the raw JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
    #[arg(skip)]
    service: PhantomData<fn() -> S>,
}

impl<S: Service> fmt::Debug for StatusArgs<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusArgs")
            .field("service", &S::NAME)
            .field("run_dir", &self.run_dir)
            .field("json", &self.json)
            .finish()
    }
}

impl<S: Service> StatusArgs<S> {
    /// The runtime directory: the flag, else the convention's.
    pub fn run_dir(&self) -> PathBuf {
        self.run_dir.clone().unwrap_or_else(|| S::paths().run_dir)
    }

    /// The command: print the status, or say on stderr why there is none
    /// and exit 1. `summary` writes the service's fields as text lines.
    pub fn run(&self, summary: impl FnOnce(&serde_json::Value, &mut StatusText)) -> ExitCode {
        let path = self.run_dir().join(STATUS_FILE);
        match read(&self.run_dir()) {
            Ok(v) => {
                print!("{}", render(&v, self.json, summary));
                ExitCode::SUCCESS
            }
            Err(e) => {
                let (program, noun) = (S::program(), S::NOUN);
                let path = printable(&path.display().to_string());
                match e {
                    StatusError::Missing => {
                        eprintln!("{program}: {path} does not exist (is the {noun} running?)")
                    }
                    StatusError::Unreadable(e) => eprintln!(
                        "{program}: cannot read {path}: {} (is the {noun} running?)",
                        printable(&e.to_string())
                    ),
                    StatusError::NotJson(e) => eprintln!("{program}: {path} is not valid JSON: {e}"),
                }
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mirage-status-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn status_reading_refuses_links_fifos_directories_and_huge_files() {
        let d = tempdir("shapes");
        let target = d.join(STATUS_FILE);
        assert!(matches!(read(&d), Err(StatusError::Missing)));
        std::fs::write(d.join("real.json"), r#"{"state": "bound"}"#).unwrap();
        std::os::unix::fs::symlink(d.join("real.json"), &target).unwrap();
        assert!(matches!(read(&d), Err(StatusError::Unreadable(_))), "link");
        std::fs::remove_file(&target).unwrap();
        rustix::fs::mknodat(
            crate::files::open_dir(&d).unwrap(),
            STATUS_FILE,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Returns at once (O_NONBLOCK) with an error: a FIFO is no file.
        let e = read(&d).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::remove_file(&target).unwrap();
        std::fs::create_dir(&target).unwrap();
        assert!(matches!(read(&d), Err(StatusError::Unreadable(_))), "directory");
        std::fs::remove_dir(&target).unwrap();
        std::fs::write(&target, format!("\"{}\"", "x".repeat(MAX_STATUS_LEN))).unwrap();
        let e = read(&d).unwrap_err();
        assert!(e.to_string().contains("over 65536 bytes"), "{e}");
        std::fs::write(&target, "{ not json").unwrap();
        assert!(matches!(read(&d), Err(StatusError::NotJson(_))));
        std::fs::write(&target, r#"{"state": "bound"}"#).unwrap();
        assert_eq!(read(&d).unwrap()["state"], "bound");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn text_lines_are_aligned_and_escaped() {
        let v = serde_json::json!({
            "state": "bound\nstate      forged\u{1b}[2J",
            "n": 7,
            "list": ["a", "b\u{202e}"],
        });
        let text = render(&v, false, |v, out| {
            out.line("state", &text_of(&v["state"]));
            out.line("n", &text_of(&v["n"]));
            out.line("absent", &text_of(&v["absent"]));
            out.line("list", &list_of(&v["list"]));
            out.line("none", &list_of(&v["absent"]));
        });
        assert_eq!(
            text,
            "state      bound\\u{a}state      forged\\u{1b}[2J\n\
             n          7\n\
             absent     ?\n\
             list       a b\\u{202e}\n\
             none       \n"
        );
        let json = render(&v, true, |_, _| unreachable!());
        assert!(json.is_ascii() && json.ends_with("}\n"), "{json}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&json).unwrap(), v);
    }

    #[derive(Debug)]
    struct Dns;
    impl Service for Dns {
        const NAME: &'static str = "dns";
        const NOUN: &'static str = "server";
    }

    #[test]
    fn the_subcommand_defaults_to_the_services_run_dir() {
        use clap::{CommandFactory, Parser};
        #[derive(Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            status: StatusArgs<Dns>,
        }
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("Runtime directory the server publishes to [default: /run/mirage/dns]"),
            "{help}"
        );
        let a = Cli::try_parse_from(["mirage-dns"]).unwrap().status;
        assert_eq!((a.run_dir(), a.json), (PathBuf::from("/run/mirage/dns"), false));
        let a = Cli::try_parse_from(["mirage-dns", "--run-dir", "/r", "--json"])
            .unwrap()
            .status;
        assert_eq!((a.run_dir(), a.json), (PathBuf::from("/r"), true));
    }
}
