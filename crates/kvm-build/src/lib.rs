//! Build a guest image from a build script, so that one `cargo build` of a
//! service also builds the KVM guest it embeds:
//!
//! ```ignore
//! // build.rs
//! let elf = mirage_kvm_build::build_image("guest-dhcp", &[]);
//! // src: mirage_sdk::guest_image!(concat!(env!("OUT_DIR"), "/guest-dhcp.elf"))
//! // (or include_bytes!, which leaves the image among the constants)
//! ```
//!
//! The guest workspace (`guest/` at the repository root) is built by a
//! nested cargo for the host's own target with its own configuration
//! (`guest/.cargo/config.toml`, `guest/guest.ld`). The outer build's
//! settings must not reach it: its target (musl), its flags, its profile
//! overrides, a lint driver. Everything cargo passes to build scripts is
//! removed from the nested cargo's environment; the toolchain stays the
//! outer build's (`CARGO`, `RUSTC`), so a nightly `-Z build-std` release
//! build builds its guest with nightly's prebuilt host library, and a
//! stable build with stable's.
//!
//! [`link_by_process`] lays the service's binary out by process (the
//! supervisor's code, the tender's and the guest image in segments of
//! their own), so that each process has resident only what it uses.
#![forbid(unsafe_code)]

mod layout;

pub use layout::{OWN_SEGMENTS, SUPERVISOR_ONLY, TENDER_ONLY, link_by_process, linker_script};

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The triple every guest image is built for (the freestanding link makes
/// it independent of the host's libc).
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Build `package` of the guest workspace (with `features`), copy the image
/// to `$OUT_DIR/<package>.elf`, tell cargo when to build it again, and
/// return the copy's path. Panics with the nested cargo's status when the
/// build fails: a build script has no better way to fail.
pub fn build_image(package: &str, features: &[&str]) -> PathBuf {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts"));
    let guest = guest_workspace();
    let target_dir = guest_target_dir(&out_dir);
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest)
        .args(["build", "--release", "--locked", "-p", package])
        .arg("--target-dir")
        .arg(&target_dir);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if leaks_into_nested_build(key) {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().expect("running cargo for the guest image");
    assert!(
        status.success(),
        "building guest image {package} failed ({status})"
    );

    let built = target_dir.join(GUEST_TARGET).join("release").join(package);
    let elf = out_dir.join(format!("{package}.elf"));
    std::fs::copy(&built, &elf).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));

    // The guest sources, and the main workspace's crates they link: all
    // of `crates/` (and the example's engine), not a list of the linked
    // ones, which went stale once (a DNS engine change left the embedded
    // guest speaking the old messages); the nested cargo then rebuilds
    // only what changed.
    println!("cargo:rerun-if-changed={}", guest.display());
    let root = guest
        .parent()
        .expect("the guest workspace is inside the repository");
    for dir in ["crates", "examples/heartbeat/engine"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    elf
}

/// The repository's `guest/`, found from this crate's own place in it.
fn guest_workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../guest")
        .canonicalize()
        .expect("the guest workspace")
}

/// One target directory for every guest image, beside the outer build's
/// (`<target>/[<triple>/]guest`): shared by every crate that embeds one,
/// and outside the sources that `rerun-if-changed` watches.
fn guest_target_dir(out_dir: &Path) -> PathBuf {
    // OUT_DIR is <target>/[<triple>/]<profile>/build/<pkg>-<hash>/out.
    match out_dir.ancestors().nth(4) {
        Some(base) => base.join("guest"),
        None => out_dir.join("guest"),
    }
}

/// What cargo or the user set for the outer build that would change the
/// guest's: its target, flags, profile, linker, wrappers, and the variables
/// cargo gives a build script about the package being built.
fn leaks_into_nested_build(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "TARGET",
        "HOST",
        "OUT_DIR",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "NUM_JOBS",
        "RUSTC_LINKER",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_CRATE_NAME",
    ];
    const PREFIXES: &[&str] = &[
        "CARGO_BUILD_",
        "CARGO_TARGET_",
        "CARGO_PROFILE_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_UNSTABLE_",
        "DEP_",
        "__CARGO",
        "CLIPPY_",
    ];
    EXACT.contains(&key) || PREFIXES.iter().any(|p| key.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outer_builds_target_and_flags_do_not_reach_the_guest() {
        for key in [
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "RUSTFLAGS",
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS",
            "CARGO_PROFILE_RELEASE_LTO",
            "TARGET",
            "RUSTC_WORKSPACE_WRAPPER",
            "CARGO_CFG_TARGET_ENV",
        ] {
            assert!(leaks_into_nested_build(key), "{key}");
        }
        // The toolchain, the cargo home, the job server and the network
        // settings are the outer build's too.
        for key in [
            "CARGO",
            "RUSTC",
            "CARGO_HOME",
            "CARGO_MAKEFLAGS",
            "CARGO_NET_OFFLINE",
            "RUSTUP_TOOLCHAIN",
            "PATH",
        ] {
            assert!(!leaks_into_nested_build(key), "{key}");
        }
    }

    #[test]
    fn guest_images_share_a_target_dir_beside_the_outer_builds() {
        let out = Path::new("/t/x86_64-unknown-linux-musl/release/build/mirage-dhcp-0123/out");
        assert_eq!(
            guest_target_dir(out),
            Path::new("/t/x86_64-unknown-linux-musl/guest")
        );
    }
}
