#!/usr/bin/env bash
# Builds the binaries we ship: each one static-pie musl executable, written
# to target/dist/NAME (under $CARGO_TARGET_DIR if set).
#
# Every role process maps the whole binary, and on current kernels the page
# cache hands out large folios, so each process's RSS is close to the binary's
# size. The shipped build therefore rebuilds the standard library for size
# (nightly's -Z build-std with std's `optimize_for_size` feature, which also
# leaves out std's backtrace symbolizer; panic messages still print). The
# stable toolchain builds the same code (`cargo build --release`, about 30%
# larger); docs/benchmarks.md compares the two.
#
# usage: scripts/build-release.sh [--stable | --best] [BINARY...]
#   --stable   build with the default toolchain and the prebuilt std instead
#   --best     the nightly build where it can run here, else --stable (warns)
#   BINARY     mirage-dhcp, mirage-ntp, mirage-dns (default: all three); each
#              is built by a cargo run of its own, so features never unify
#              across them
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-musl
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
SHIPPED=(mirage-dhcp mirage-ntp mirage-dns)

nightly_ready() {
    local sysroot
    sysroot="$(rustup run nightly rustc --print sysroot 2>/dev/null)" &&
        [ -d "$sysroot/lib/rustlib/src/rust/library" ] &&
        [ -d "$sysroot/lib/rustlib/$TARGET/lib" ]
}

MODE=""
BINARIES=()
for arg in "$@"; do
    case "$arg" in
    --stable | --best) MODE="$arg" ;;
    -h | --help)
        sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    mirage-dhcp | mirage-ntp | mirage-dns) BINARIES+=("$arg") ;;
    *)
        echo "build-release: unknown argument: $arg (see --help)" >&2
        exit 2
        ;;
    esac
done
[ "${#BINARIES[@]}" -gt 0 ] || BINARIES=("${SHIPPED[@]}")

if [ "$MODE" = --best ]; then
    if nightly_ready; then
        MODE=""
    else
        echo "build-release: warning: no nightly toolchain with rust-src and $TARGET here; building --stable" >&2
        MODE=--stable
    fi
fi
if [ "$MODE" != --stable ] && ! nightly_ready; then
    echo "build-release: needs the nightly toolchain with rust-src and the $TARGET target" >&2
    echo "build-release: run scripts/install-deps.sh, or pass --stable" >&2
    exit 1
fi
# musl, or static glibc where rustup could not add musl.
[ "$MODE" != --stable ] || . scripts/rust-target.sh

for name in "${BINARIES[@]}"; do
    if [ "$MODE" = --stable ]; then
        cargo build --locked --release -p "$name" --target "$MIRAGE_TARGET"
        BUILT="$TARGET_DIR/$MIRAGE_TARGET/release/$name"
    else
        # Its own target directory: std built from source must not mix with
        # the prebuilt one the stable builds use.
        # No merging of identical functions: LLVM keeps one copy under one
        # crate's name, and the layout by process (link_by_process) then
        # files a function a role runs with another role's code (seen: an
        # actuator faulting in 64-128 KiB of the supervisor's text).
        RUSTFLAGS="${RUSTFLAGS:-} -Zmerge-functions=disabled" \
        cargo +nightly build --locked --release -p "$name" --target "$TARGET" \
            --target-dir "$TARGET_DIR/build-std" \
            -Z build-std=std,panic_abort -Z build-std-features=optimize_for_size
        BUILT="$TARGET_DIR/build-std/$TARGET/release/$name"
    fi
    OUT="$TARGET_DIR/dist/$name"
    mkdir -p "$(dirname "$OUT")"
    cp "$BUILT" "$OUT.tmp"
    mv "$OUT.tmp" "$OUT"
    echo "build-release: $OUT ($(stat -c %s "$OUT") bytes)"
done
