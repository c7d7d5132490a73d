#!/usr/bin/env bash
# Builds the binaries we ship, mirage-dhcp and mirage-ntp: each one static-pie
# musl executable (its engine's KVM guest image inside), written to
# target/dist/ (under $CARGO_TARGET_DIR if set).
#
# Every role process maps the whole binary, and on current kernels the page
# cache hands out large folios, so each process's RSS is close to the binary's
# size. The shipped build therefore rebuilds the standard library for size
# (nightly's -Z build-std with std's `optimize_for_size` feature, which also
# leaves out std's backtrace symbolizer; panic messages still print). The
# stable toolchain builds the same code (`cargo build --release`, about 40%
# larger); docs/benchmarks.md compares the two.
#
# usage: scripts/build-release.sh [--stable | --best]
#   --stable   build with the default toolchain and the prebuilt std instead
#   --best     the nightly build where it can run here, else --stable (warns)
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-musl
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
DIST="$TARGET_DIR/dist"
BINS=(mirage-dhcp mirage-ntp)
PACKAGES=()
for bin in "${BINS[@]}"; do PACKAGES+=(-p "$bin"); done

nightly_ready() {
    local sysroot
    sysroot="$(rustup run nightly rustc --print sysroot 2>/dev/null)" &&
        [ -d "$sysroot/lib/rustlib/src/rust/library" ] &&
        [ -d "$sysroot/lib/rustlib/$TARGET/lib" ]
}

MODE="${1:-}"
if [ "$MODE" = --best ]; then
    if nightly_ready; then
        MODE=""
    else
        echo "build-release: warning: no nightly toolchain with rust-src and $TARGET here; building --stable" >&2
        MODE=--stable
    fi
fi

case "$MODE" in
--stable)
    # musl, or static glibc where rustup could not add musl.
    . scripts/rust-target.sh
    cargo build --locked --release "${PACKAGES[@]}" --target "$MIRAGE_TARGET"
    BUILT="$TARGET_DIR/$MIRAGE_TARGET/release"
    ;;
"")
    if ! nightly_ready; then
        echo "build-release: needs the nightly toolchain with rust-src and the $TARGET target" >&2
        echo "build-release: run scripts/install-deps.sh, or pass --stable" >&2
        exit 1
    fi
    # Its own target directory: std built from source must not mix with the
    # prebuilt one the stable builds use.
    cargo +nightly build --locked --release "${PACKAGES[@]}" --target "$TARGET" \
        --target-dir "$TARGET_DIR/build-std" \
        -Z build-std=std,panic_abort -Z build-std-features=optimize_for_size
    BUILT="$TARGET_DIR/build-std/$TARGET/release"
    ;;
-h | --help)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "build-release: unknown argument: $MODE (see --help)" >&2
    exit 2
    ;;
esac

mkdir -p "$DIST"
for bin in "${BINS[@]}"; do
    cp "$BUILT/$bin" "$DIST/$bin.tmp"
    mv "$DIST/$bin.tmp" "$DIST/$bin"
    echo "build-release: $DIST/$bin ($(stat -c %s "$DIST/$bin") bytes)"
done
