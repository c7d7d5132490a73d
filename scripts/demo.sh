#!/usr/bin/env bash
# The three services end to end in a throwaway pair of network namespaces:
# dnsmasq serves DHCP and DNS (a small local zone, demo.example) on one end
# of a veth pair, mirage-dhcp gets a lease on the other, then this prints
# what it applied. mirage-dns, in the client namespace, forwards to the DNS
# server the lease named (option 6) and answers dig on its stub address
# 127.0.0.53, the repeat from its cache. Then chronyd -x serves NTP on the
# server end, and mirage-ntp --observe, in the client namespace with the
# server the lease named (option 42), gets its first estimate and shows its
# status. Neither chronyd -x nor an observing mirage-ntp can touch the host
# clock (CLOCK_REALTIME is not namespaced, so that matters). Needs root;
# removes everything it made, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root" >&2; exit 1; }
command -v dnsmasq >/dev/null || { echo "demo.sh: apt-get install dnsmasq-base" >&2; exit 1; }
command -v chronyd >/dev/null || { echo "demo.sh: apt-get install chrony" >&2; exit 1; }
command -v dig >/dev/null || { echo "demo.sh: apt-get install bind9-dnsutils" >&2; exit 1; }

./scripts/build-release.sh --best >/dev/null
BIN="${CARGO_TARGET_DIR:-$PWD/target}/dist/mirage-dhcp"
NTP="${CARGO_TARGET_DIR:-$PWD/target}/dist/mirage-ntp"
DNS="${CARGO_TARGET_DIR:-$PWD/target}/dist/mirage-dns"
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
# The stub address 127.0.0.53 is on the client's loopback.
ip -n "$CLI" link set lo up
ip -n "$SRV" link add veth-s type veth peer name veth-c netns "$CLI"
ip -n "$SRV" addr add 192.0.2.1/24 dev veth-s
ip -n "$SRV" link set veth-s up
# DNS on 192.0.2.1:53 too: demo.example answered locally with a TTL of
# 300 s (dnsmasq's default 0 would not be cached), NXDOMAIN for names it
# does not know, nothing forwarded anywhere.
ip netns exec "$SRV" dnsmasq --keep-in-foreground --conf-file=/dev/null --port=53 \
    --no-resolv --no-hosts --local=/demo.example/ --local-ttl=300 \
    --host-record=ntp.demo.example,192.0.2.1 --host-record=www.demo.example,192.0.2.80 \
    --bind-interfaces --interface=veth-s --except-interface=lo --no-ping \
    --dhcp-range=192.0.2.50,192.0.2.150,255.255.255.0,1h \
    --dhcp-leasefile="$TMP/dnsmasq.leases" \
    --dhcp-option=option:router,192.0.2.1 --dhcp-option=option:dns-server,192.0.2.1 \
    --dhcp-option=option:domain-search,demo.example --dhcp-option=option:mtu,1450 \
    --dhcp-option=option:ntp-server,192.0.2.1 \
    2>"$TMP/dnsmasq.log" &
disown
for _ in $(seq 100); do ip netns exec "$SRV" ss -lun | grep -q ':67 ' && break; sleep 0.05; done
for _ in $(seq 100); do ip netns exec "$SRV" ss -lun | grep -q '192.0.2.1:53 ' && break; sleep 0.05; done

echo "== mirage-dhcp run --oneshot (log follows)"
ip netns exec "$CLI" "$BIN" run --interface veth-c --oneshot --timeout 20 \
    --state-dir "$TMP/state" --run-dir "$TMP/run" --resolv-conf "$TMP/resolv.conf"
echo
echo "== address";     ip -n "$CLI" -4 addr show dev veth-c
echo "== routes";      ip -n "$CLI" -4 route show
echo "== mtu";         ip -n "$CLI" link show veth-c | head -1
echo "== resolv.conf"; cat "$TMP/resolv.conf"
echo "== status";      "$BIN" status --run-dir "$TMP/run"

# --- DNS --------------------------------------------------------------------
# The DNS server the lease named (DHCP option 6) is mirage-dns's upstream;
# it answers on its stub address 127.0.0.53 (UDP and TCP).
UPSTREAM="$("$BIN" status --run-dir "$TMP/run" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["lease"]["dns_servers"][0])')"
echo
echo "== mirage-dns run --upstream $UPSTREAM (the server from the lease; log follows)"
ip netns exec "$CLI" "$DNS" run --upstream "$UPSTREAM" --config /dev/null \
    --state-dir "$TMP/dns-state" --run-dir "$TMP/dns-run" &
DNS_PID=$!
for _ in $(seq 200); do
    ip netns exec "$CLI" ss -lun | grep -q '127.0.0.53:53 ' && break
    kill -0 "$DNS_PID" 2>/dev/null || { echo "demo.sh: mirage-dns stopped" >&2; exit 1; }
    sleep 0.05
done
ask() { ip netns exec "$CLI" dig +time=2 +tries=2 @127.0.0.53 "$@"; }
echo
echo "== dig @127.0.0.53 www.demo.example (asked of $UPSTREAM)"
ANSWER="$(ask +short www.demo.example A)"
echo "$ANSWER"
[ "$ANSWER" = 192.0.2.80 ] || { echo "demo.sh: mirage-dns answered '$ANSWER', not 192.0.2.80" >&2; exit 1; }
echo "== again, over TCP (from the cache: the TTL counts down)"
ask +tcp +noall +answer www.demo.example A
echo "== dig @127.0.0.53 nx.demo.example (the upstream's NXDOMAIN, relayed)"
ask nx.demo.example A | grep -E 'status:' || true
# status.json is written at most every 500 ms.
for _ in $(seq 100); do
    grep -q '"cache_hits": *[1-9]' "$TMP/dns-run/status.json" 2>/dev/null && break
    sleep 0.05
done
grep -q '"cache_hits": *[1-9]' "$TMP/dns-run/status.json" ||
    { echo "demo.sh: the repeat was not answered from mirage-dns's cache" >&2; exit 1; }
echo "== status"; "$DNS" status --run-dir "$TMP/dns-run"
echo "== roles (root started them: each its own uid, no capability, under its filter)"
for pid in $(pgrep -P "$DNS_PID"); do
    printf '%-9s uid %-6s CapEff %s  Seccomp %s\n' \
        "$(tr '\0' ' ' <"/proc/$pid/cmdline" | cut -d' ' -f3)" \
        "$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")" \
        "$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")" \
        "$(awk '/^Seccomp:/ {print $2}' "/proc/$pid/status")"
done

# --- NTP --------------------------------------------------------------------
# chronyd serving its (this host's) clock at stratum 8 on the server end:
# -x, it never touches the clock; no command port; files in $TMP.
printf '%s\n' "allow all" "local stratum 8" "bindaddress 192.0.2.1" "port 123" "cmdport 0" \
    "pidfile $TMP/chronyd.pid" >"$TMP/chrony.conf"
ip netns exec "$SRV" chronyd -x -d -u root -f "$TMP/chrony.conf" 2>"$TMP/chronyd.log" &
disown
for _ in $(seq 200); do ip netns exec "$SRV" ss -lun | grep -q '192.0.2.1:123 ' && break; sleep 0.05; done
# The NTP server the lease named (DHCP option 42).
SERVER="$("$BIN" status --run-dir "$TMP/run" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["lease"]["ntp_servers"][0])')"

echo
echo "== mirage-ntp run --observe --server $SERVER (the server from the lease; log follows)"
START=$(date +%s%N)
ip netns exec "$CLI" "$NTP" run --observe --server "$SERVER" --config /dev/null \
    --state-dir "$TMP/ntp-state" --run-dir "$TMP/ntp-run" &
NTP_PID=$!
# status.json is replaced atomically: a cheap look every 10 ms.
for _ in $(seq 1000); do
    grep -q '"state": *"observing"' "$TMP/ntp-run/status.json" 2>/dev/null && break
    sleep 0.01
done
ELAPSED_MS=$((($(date +%s%N) - START) / 1000000))
if ! grep -q '"state": *"observing"' "$TMP/ntp-run/status.json" 2>/dev/null; then
    echo "demo.sh: mirage-ntp has no estimate after 10 s" >&2
    exit 1
fi
echo
echo "== first estimate within ${ELAPSED_MS} ms of the start (status.json is written at most every 500 ms)"
echo "== status"; "$NTP" status --run-dir "$TMP/ntp-run"
echo "== roles (observing: none holds a capability, so none can touch the clock)"
for pid in $(pgrep -P "$NTP_PID"); do
    printf '%-9s uid %-6s CapEff %s  Seccomp %s\n' \
        "$(tr '\0' ' ' <"/proc/$pid/cmdline" | cut -d' ' -f3)" \
        "$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")" \
        "$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")" \
        "$(awk '/^Seccomp:/ {print $2}' "/proc/$pid/status")"
done
echo
echo "== stopping mirage-ntp, then mirage-dns"
kill -TERM "$NTP_PID"
wait "$NTP_PID"
kill -TERM "$DNS_PID"
wait "$DNS_PID"
