#!/usr/bin/env bash
# The client end to end in a throwaway pair of network namespaces: dnsmasq
# serves DHCP on one end of a veth pair, mirage-dhcp gets a lease on the
# other, then this prints what it applied. Needs root; removes everything it
# made, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root" >&2; exit 1; }
command -v dnsmasq >/dev/null || { echo "demo.sh: apt-get install dnsmasq-base" >&2; exit 1; }

./scripts/build-release.sh --best >/dev/null
BIN="${CARGO_TARGET_DIR:-$PWD/target}/dist/mirage-dhcp"
ID=$$
SRV="mirage-demo-srv-$ID"
CLI="mirage-demo-cli-$ID"
TMP="$(mktemp -d)"
cleanup() {
    for ns in "$CLI" "$SRV"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

ip netns add "$SRV"
ip netns add "$CLI"
ip -n "$SRV" link add veth-s type veth peer name veth-c netns "$CLI"
ip -n "$SRV" addr add 192.0.2.1/24 dev veth-s
ip -n "$SRV" link set veth-s up
ip netns exec "$SRV" dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 \
    --bind-interfaces --interface=veth-s --except-interface=lo --no-ping \
    --dhcp-range=192.0.2.50,192.0.2.150,255.255.255.0,1h \
    --dhcp-leasefile="$TMP/dnsmasq.leases" \
    --dhcp-option=option:router,192.0.2.1 --dhcp-option=option:dns-server,192.0.2.1 \
    --dhcp-option=option:domain-search,demo.example --dhcp-option=option:mtu,1450 \
    2>"$TMP/dnsmasq.log" &
disown
for _ in $(seq 100); do ip netns exec "$SRV" ss -lun | grep -q ':67 ' && break; sleep 0.05; done

echo "== mirage-dhcp run --oneshot (log follows)"
ip netns exec "$CLI" "$BIN" run --interface veth-c --oneshot --timeout 20 \
    --state-dir "$TMP/state" --run-dir "$TMP/run" --resolv-conf "$TMP/resolv.conf"
echo
echo "== address";     ip -n "$CLI" -4 addr show dev veth-c
echo "== routes";      ip -n "$CLI" -4 route show
echo "== mtu";         ip -n "$CLI" link show veth-c | head -1
echo "== resolv.conf"; cat "$TMP/resolv.conf"
echo "== status";      "$BIN" status --run-dir "$TMP/run"
