//! Commands a test depends on: each must succeed, or the test fails with
//! the command line and its stderr (not a bare `unwrap` on an exit code).

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Run `cmd` to completion; panics with its stderr unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `program args...` in the calling thread's namespace, stdin closed;
/// panics unless it succeeds, returns its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip ARGS...` in the calling thread's namespace (see [`run_ok`]).
pub fn ip(args: &[&str]) -> String {
    run_ok("ip", args)
}

/// A file a test needs, as text; panics naming the file.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A file as text if it exists (empty otherwise), invalid UTF-8 replaced:
/// logs of processes that may not have written yet.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_command_panics_with_its_stderr() {
        let err = std::panic::catch_unwind(|| run_ok("sh", &["-c", "echo nope >&2; exit 3"])).unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("nope"), "{msg}");
        assert_eq!(run_ok("sh", &["-c", "echo yes"]), "yes\n");
    }

    #[test]
    fn read_lossy_of_a_missing_file_is_empty() {
        assert_eq!(read_lossy(Path::new("/nonexistent/testkit")), "");
    }
}
