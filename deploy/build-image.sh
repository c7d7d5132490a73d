#!/usr/bin/env bash
# Build the services' container images without a container engine: a
# reproducible OCI image layout (and oci-archive) from each release binary.
# Same source, same toolchain, same SOURCE_DATE_EPOCH => same digest.
#
#   deploy/build-image.sh [--out DIR] [SERVICE...]
#     SERVICE   mirage-dhcp, mirage-ntp, mirage-dns (default: all three)
#     --out     where the layouts go (default: target/oci)
#
# Then, with podman (no registry involved; pull -q prints the image id, and
# the tag gives it its name: podman would name it after the path):
#   podman tag "$(podman pull -q oci:target/oci/mirage-ntp:0.1.0)" mirage-ntp:0.1.0
# or copy the layout anywhere with skopeo: skopeo copy oci:target/oci/mirage-ntp:0.1.0 ...
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/oci
services=()
while [ $# -gt 0 ]; do
    case "$1" in
    --out) out="$2"; shift 2 ;;
    mirage-dhcp | mirage-ntp | mirage-dns) services+=("$1"); shift ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-image.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "${#services[@]}" -gt 0 ] || services=(mirage-dhcp mirage-ntp mirage-dns)

revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
# The commit time, not the build time: rebuilding later gives the same image.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"

. scripts/rust-target.sh
./scripts/build-release.sh "${services[@]}"
cargo build --release --locked -p oci-image
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$out"
for service in "${services[@]}"; do
    binary="$target_dir/dist/$service"
    file "$binary" 2>/dev/null | grep -q 'static' || {
        echo "build-image.sh: $binary is not statically linked (see .cargo/config.toml)" >&2
        exit 1
    }
    rm -rf "${out:?}/$service" "$out/$service.tar"
    echo "== $service"
    "$target_dir/$MIRAGE_TARGET/release/oci-image" \
        --service "$service" \
        --binary "$binary" \
        --out "$out/$service" \
        --archive "$out/$service.tar" \
        --revision "$revision"
done
