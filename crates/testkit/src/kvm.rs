//! The `--sandbox kvm` runs of the end-to-end suites need a KVM device the
//! test (root) can open. Where there is none they fail, loudly, unless
//! `MIRAGE_NO_KVM=1` says to skip them; then each skip prints one loud line.

use std::path::Path;

/// The device the services use by default.
pub const DEVICE: &str = "/dev/kvm";

/// Whether a kvm run of `what` runs: `true` where `/dev/kvm` opens for
/// reading and writing. Without it: `false` (with a loud line on stderr)
/// if `MIRAGE_NO_KVM=1`, else a panic that says how to skip on purpose.
pub fn usable(what: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new(DEVICE))
    {
        Ok(_) => true,
        Err(e) if std::env::var("MIRAGE_NO_KVM").as_deref() == Ok("1") => {
            eprintln!(
                "SKIPPED (--sandbox kvm): {what}: no usable {DEVICE} ({e}), and MIRAGE_NO_KVM=1 says to skip"
            );
            false
        }
        Err(e) => panic!(
            "{what} runs under --sandbox kvm and needs {DEVICE} and the right to open it: {e} \
             (set MIRAGE_NO_KVM=1 to skip the KVM runs on purpose)"
        ),
    }
}
