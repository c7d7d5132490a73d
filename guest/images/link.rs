//! The build script of every guest image: link it freestanding at the
//! address the tender loads it (guest.ld).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = std::path::Path::new(&dir).join("../../guest.ld");
    let script = script
        .canonicalize()
        .expect("guest.ld beside the guest workspace");
    println!("cargo:rerun-if-changed={}", script.display());
    // -n: no page padding in the file (the tender copies each segment to
    // its page-aligned address; nothing maps the file), about 10 KiB less
    // in every binary that embeds an image.
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        "-Wl,-n",
        "-Wl,-z,noexecstack",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
}
