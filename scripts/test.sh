#!/usr/bin/env bash
# Runs every test of the workspace. The end-to-end and sandbox tests create
# network namespaces, veth pairs and raw sockets, so this must run as root on
# a machine with dnsmasq installed (see .ci/run for the packages).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: run as root (the tests create network namespaces)" >&2
    exit 1
fi
# podman: the container tests run the images.
for tool in python3 ip dnsmasq ethtool kea-dhcp4 dhcpd dhcrelay busybox nft chronyd unbound nsd nsd-control podman; do
    command -v "$tool" >/dev/null || { echo "scripts/test.sh: $tool is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
done
# The benchmark scripts' own tests (parsing, percentiles, process trees).
timeout 120 python3 -m unittest discover -s scripts/bench
. scripts/rust-target.sh
# Each test bounds its own waits; this bounds the whole run.
exec timeout 2400 cargo test --workspace --locked "$@"
