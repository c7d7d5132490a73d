#!/usr/bin/env bash
# Build the mirage-dhcp container image without a container engine: a
# reproducible OCI image layout (and oci-archive) from the release binary.
# Same source, same toolchain, same SOURCE_DATE_EPOCH => same digest.
#
#   deploy/build-image.sh [OUT_DIR]        (default: target/oci)
#
# Then, with podman (no registry involved):
#   podman pull oci:target/oci/mirage-dhcp:0.1.0      # or: podman load -i target/oci/mirage-dhcp.tar
# or copy the layout anywhere with skopeo: skopeo copy oci:target/oci/mirage-dhcp:0.1.0 ...
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-target/oci}"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
# The commit time, not the build time: rebuilding later gives the same image.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"

. scripts/rust-target.sh
./scripts/build-release.sh
cargo build --release --locked -p oci-image
target_dir="${CARGO_TARGET_DIR:-target}"
binary="$target_dir/dist/mirage-dhcp"
file "$binary" 2>/dev/null | grep -q 'static' || {
    echo "build-image.sh: $binary is not statically linked (see .cargo/config.toml)" >&2
    exit 1
}

rm -rf "$out/mirage-dhcp" "$out/mirage-dhcp.tar"
mkdir -p "$out"
"$target_dir/$MIRAGE_TARGET/release/oci-image" \
    --binary "$binary" \
    --out "$out/mirage-dhcp" \
    --archive "$out/mirage-dhcp.tar" \
    --revision "$revision"
