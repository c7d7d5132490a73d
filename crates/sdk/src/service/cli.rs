//! The flags every service's `run` command has, and the one rule for
//! settings that are both a flag and a config key: the flag wins over the
//! file, the file over the convention's default.

use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Service;
use crate::config::ConfigError;

/// How the engine role is confined. `Auto` is a request only: the
/// supervisor resolves it to `Kvm` or `Seccomp` at start
/// ([`crate::kvm::choose`]), and roles are told what is in force.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    /// kvm where the KVM device opens and the service's guest boots and
    /// answers in time, else seccomp (default).
    #[default]
    Auto,
    /// Engine as a guest in a KVM micro-VM of its own, its tender process
    /// under a seccomp filter that allows little more than `KVM_RUN`; an
    /// error at start where KVM is unusable.
    Kvm,
    /// Engine in its own process under a seccomp allow-list.
    Seccomp,
    /// No sandbox at all: for debugging only.
    None,
}

impl SandboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Auto => "auto",
            SandboxKind::Kvm => "kvm",
            SandboxKind::Seccomp => "seccomp",
            SandboxKind::None => "none",
        }
    }

    /// Whether roles run under their seccomp filters (every kind but
    /// `None`).
    pub fn filtered(self) -> bool {
        self != SandboxKind::None
    }
}

/// The common flags, for a service to flatten into its `run` command:
///
/// ```
/// use mirage_sdk::service::{CommonArgs, Service};
///
/// #[derive(Debug)]
/// struct Ntp;
/// impl Service for Ntp {
///     const NAME: &'static str = "ntp";
/// }
///
/// #[derive(clap::Args, Debug)]
/// struct RunArgs {
///     #[command(flatten)]
///     common: CommonArgs<Ntp>,
///     /// Servers to ask.
///     #[arg(long)]
///     server: Vec<String>,
/// }
/// ```
///
/// Path flags are `Option`s: unset, the config file's value or the
/// convention's default applies ([`Common::resolve`]). The help text names
/// the service's own default paths.
#[derive(clap::Args)]
pub struct CommonArgs<S: Service> {
    #[arg(
        short,
        long,
        help = format!(
            "Configuration file (TOML). Absent default file is fine; an explicit one must exist [default: {}]",
            S::paths().config.display()
        )
    )]
    pub config: Option<PathBuf>,
    #[arg(long, help = format!("Persistent state directory [default: {}]", S::paths().state_dir.display()))]
    pub state_dir: Option<PathBuf>,
    #[arg(
        long,
        help = format!(
            "Runtime directory ({}, {}) [default: {}]",
            super::STATUS_FILE,
            super::METRICS_FILE,
            S::paths().run_dir.display()
        )
    )]
    pub run_dir: Option<PathBuf>,
    /// Sandbox for the engine role [default: auto].
    #[arg(long, value_enum)]
    pub sandbox: Option<SandboxKind>,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    pub log_level: log::LevelFilter,
    #[arg(skip)]
    service: PhantomData<fn() -> S>,
}

// By hand: derived impls would ask `S` for Debug and Clone.
impl<S: Service> fmt::Debug for CommonArgs<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommonArgs")
            .field("service", &S::NAME)
            .field("config", &self.config)
            .field("state_dir", &self.state_dir)
            .field("run_dir", &self.run_dir)
            .field("sandbox", &self.sandbox)
            .field("log_level", &self.log_level)
            .finish()
    }
}

impl<S: Service> Clone for CommonArgs<S> {
    fn clone(&self) -> Self {
        CommonArgs {
            config: self.config.clone(),
            state_dir: self.state_dir.clone(),
            run_dir: self.run_dir.clone(),
            sandbox: self.sandbox,
            log_level: self.log_level,
            service: PhantomData,
        }
    }
}

impl<S: Service> Default for CommonArgs<S> {
    /// No flag given.
    fn default() -> Self {
        CommonArgs {
            config: None,
            state_dir: None,
            run_dir: None,
            sandbox: None,
            log_level: log::LevelFilter::Info,
            service: PhantomData,
        }
    }
}

impl<S: Service> CommonArgs<S> {
    /// The config file to read, and whether `--config` named it.
    pub fn config_path(&self) -> (PathBuf, bool) {
        match &self.config {
            Some(p) => (p.clone(), true),
            None => (S::paths().config, false),
        }
    }

    /// Read the config file as `T`: the default file may be absent (every
    /// key then has its default), a file named by `--config` must exist.
    /// Errors name the file, line and key, and come before anything is
    /// touched. Returns the path read, for messages.
    pub fn load_config<T: DeserializeOwned + Default>(&self) -> Result<(PathBuf, T), ConfigError> {
        let (path, explicit) = self.config_path();
        let file = crate::config::load_or_default(&path, explicit)?;
        Ok((path, file))
    }

    /// The flags as a layer for [`Common::resolve`].
    pub fn layer(&self) -> CommonLayer {
        CommonLayer {
            state_dir: self.state_dir.clone(),
            run_dir: self.run_dir.clone(),
            sandbox: self.sandbox,
        }
    }
}

/// The common settings as one source gives them (the command line, or the
/// config file's `state_dir`, `run_dir` and `sandbox` keys): each may be unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommonLayer {
    pub state_dir: Option<PathBuf>,
    pub run_dir: Option<PathBuf>,
    pub sandbox: Option<SandboxKind>,
}

/// The common settings in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub sandbox: SandboxKind,
}

impl Common {
    /// Flag over file over the convention's default, for each setting.
    pub fn resolve<S: Service>(flags: CommonLayer, file: CommonLayer) -> Common {
        let d = S::paths();
        Common {
            state_dir: layered(flags.state_dir, file.state_dir, || d.state_dir),
            run_dir: layered(flags.run_dir, file.run_dir, || d.run_dir),
            sandbox: layered(flags.sandbox, file.sandbox, SandboxKind::default),
        }
    }
}

/// The rule for every setting that is both a flag and a config key: the
/// flag if given, else the file's value, else the default.
pub fn layered<T>(flag: Option<T>, file: Option<T>, default: impl FnOnce() -> T) -> T {
    flag.or(file).unwrap_or_else(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug)]
    struct Ntp;
    impl Service for Ntp {
        const NAME: &'static str = "ntp";
    }

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs<Ntp>,
    }

    fn parse(args: &[&str]) -> CommonArgs<Ntp> {
        Cli::try_parse_from(std::iter::once("mirage-ntp").chain(args.iter().copied()))
            .unwrap()
            .common
    }

    #[derive(Deserialize, Default, Debug)]
    #[serde(deny_unknown_fields, default)]
    struct File {
        state_dir: Option<PathBuf>,
        run_dir: Option<PathBuf>,
        sandbox: Option<SandboxKind>,
        servers: Vec<String>,
    }

    impl File {
        fn layer(&self) -> CommonLayer {
            CommonLayer {
                state_dir: self.state_dir.clone(),
                run_dir: self.run_dir.clone(),
                sandbox: self.sandbox,
            }
        }
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_defaults() {
        let file: File = crate::config::parse(
            std::path::Path::new("c.toml"),
            "state_dir = \"/srv/state\"\nrun_dir = \"/srv/run\"\nsandbox = \"none\"\n",
        )
        .unwrap();
        // Nothing on the command line: the file.
        let c = Common::resolve::<Ntp>(parse(&[]).layer(), file.layer());
        assert_eq!(c.state_dir, PathBuf::from("/srv/state"));
        assert_eq!(c.run_dir, PathBuf::from("/srv/run"));
        assert_eq!(c.sandbox, SandboxKind::None);
        // Flags: they win, each on its own.
        let flags = parse(&["--run-dir", "/tmp/r", "--sandbox", "seccomp"]);
        let c = Common::resolve::<Ntp>(flags.layer(), file.layer());
        assert_eq!(c.state_dir, PathBuf::from("/srv/state"));
        assert_eq!(c.run_dir, PathBuf::from("/tmp/r"));
        assert_eq!(c.sandbox, SandboxKind::Seccomp);
        // Neither: the convention.
        let c = Common::resolve::<Ntp>(CommonLayer::default(), CommonLayer::default());
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/mirage/ntp"));
        assert_eq!(c.run_dir, PathBuf::from("/run/mirage/ntp"));
        assert_eq!(c.sandbox, SandboxKind::Auto);
        let flags = parse(&["--sandbox", "kvm"]);
        let c = Common::resolve::<Ntp>(flags.layer(), file.layer());
        assert_eq!(c.sandbox, SandboxKind::Kvm);
        assert_eq!(layered(None, Some(2), || 3), 2);
        assert_eq!(layered(Some(1), Some(2), || 3), 1);
        assert_eq!(layered(None, None, || 3), 3);
    }

    #[test]
    fn flags_parse_and_bad_values_are_errors() {
        let a = parse(&["-c", "/x.toml", "--state-dir", "/s", "--log-level", "debug"]);
        assert_eq!(a.config_path(), (PathBuf::from("/x.toml"), true));
        assert_eq!(a.state_dir, Some(PathBuf::from("/s")));
        assert_eq!(a.log_level, log::LevelFilter::Debug);
        let a = parse(&[]);
        assert_eq!(
            a.config_path(),
            (PathBuf::from("/etc/mirage/ntp/config.toml"), false)
        );
        assert_eq!(a.log_level, log::LevelFilter::Info);
        assert_eq!(a.layer(), CommonLayer::default());
        for bad in [
            &["--sandbox", "kvmm"][..],
            &["--log-level", "loud"],
            &["--state-dir"],
        ] {
            assert!(
                Cli::try_parse_from(std::iter::once("x").chain(bad.iter().copied())).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn help_names_the_services_own_paths() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for want in [
            "[default: /etc/mirage/ntp/config.toml]",
            "[default: /var/lib/mirage/ntp]",
            "Runtime directory (status.json, metrics.prom) [default: /run/mirage/ntp]",
            "Sandbox for the engine role [default: auto]",
            "[default: info]",
        ] {
            assert!(help.contains(want), "{want}: {help}");
        }
        assert!(!help.contains("dhcp"), "{help}");
    }

    #[test]
    fn the_default_config_may_be_absent_an_explicit_one_must_exist() {
        let dir = std::env::temp_dir().join(format!("mirage-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.toml");
        let mut a = parse(&[]);
        a.config = Some(missing.clone());
        let e = a.load_config::<File>().unwrap_err();
        assert_eq!(e.path, missing);
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "servers = [\"a\"]\nsandbox = \"kvmm\"\n").unwrap();
        a.config = Some(bad.clone());
        let e = a.load_config::<File>().unwrap_err();
        assert_eq!((e.path.as_path(), e.line), (bad.as_path(), Some(2)));
        assert!(e.to_string().contains("kvmm"), "{e}");
        let good = dir.join("good.toml");
        std::fs::write(&good, "servers = [\"a\"]\n").unwrap();
        a.config = Some(good.clone());
        let (path, f) = a.load_config::<File>().unwrap();
        assert_eq!((path, f.servers), (good, vec!["a".to_string()]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
