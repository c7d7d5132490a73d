#!/usr/bin/env bash
# Installs, on Debian, everything the tests and the demo need. Run as root.
# Several of these packages ship system services (Kea, ISC dhcpd, chrony): a
# policy-rc.d that refuses every start is put in place first, so no DHCP
# server ever starts on a real interface and no NTP daemon touches the
# host's clock; the tests start their own, bound to
# veths in namespaces they create.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
fi
apt-get update -qq
# dnsmasq-base: the dnsmasq binary without its system service. Kea, ISC dhcpd
# and dhcrelay, busybox udhcpd and nftables serve the interop and fault
# suites; chrony is the NTP server of mirage-ntp's end-to-end suite (run by
# the tests with -x, so it never adjusts the clock); unbound is the
# upstream of mirage-dns's end-to-end suites, nsd the upstream of
# scripts/bench-dns.sh, which also runs unbound and dnsmasq as forwarders
# beside mirage-dns (all started in namespaces; their system services are
# refused like the others); dnsperf is the bench's load client, and
# bind9-dnsutils (dig) the demo's query client. podman + runc run the image in tests/container.rs (runc named so
# apt does not pick crun); file is used by the image build; musl-tools
# compiles the C of dev-dependencies (criterion) for the musl target;
# python3 runs the benchmarks and their tests (scripts/test.sh).
apt-get install -y -qq --no-install-recommends \
    dnsmasq-base iproute2 ethtool procps kmod python3 \
    kea-dhcp4-server isc-dhcp-server isc-dhcp-relay busybox nftables \
    chrony unbound nsd dnsperf bind9-dnsutils podman runc file musl-tools >/dev/null
# The product is built for musl (see .cargo/config.toml); its standard
# library comes from rustup, which every Rust toolchain here is managed by.
# The shipped binary (scripts/build-release.sh) rebuilds std from source
# with the nightly toolchain, which the fuzzers use too.
# These come from rustup's own server, not a package registry: where it
# cannot be reached, the build falls back to static glibc, loudly
# (scripts/rust-target.sh), and the shipped build to the stable toolchain.
rustup_try() {
    "$@" || echo "install-deps: warning: '$*' failed; see scripts/rust-target.sh" >&2
}
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    rustup_try rustup target add x86_64-unknown-linux-musl
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup_try rustup toolchain install nightly --profile minimal
fi
rustup_try rustup component add rust-src --toolchain nightly
rustup_try rustup target add x86_64-unknown-linux-musl --toolchain nightly
