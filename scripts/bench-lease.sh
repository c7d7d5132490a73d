#!/usr/bin/env bash
# Side-by-side DHCPv4 client benchmark: mirage-dhcp, dhcpcd, ISC dhclient and
# busybox udhcpc against the same dnsmasq build and configuration, each run in
# a fresh pair of network namespaces. Measures time from client start to the
# leased address on the interface (median, p10, p90 of N runs), the summed
# peak RSS of every process of the client, and the binary size.
#
# Needs root on Debian (it installs the peers with apt-get if they are
# missing, without starting any service). Sends traffic only inside the
# namespaces it creates, and removes them on exit, failure or Ctrl-C.
# See docs/benchmarks.md for the method.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/bench-lease.sh [options]
  -n, --runs N         measured runs per client variant (default 20)
  -w, --warmup N       unmeasured warm-up runs per variant (default 1)
  -c, --clients LIST   comma-separated subset of:
                       mirage,mirage-stable,dhcpcd,dhclient,udhcpc (default: all;
                       mirage-stable is the same code built by the stable
                       toolchain with its prebuilt std, --no-acd only)
  -t, --timeout S      seconds a run may take to get its address (default 20)
      --settle-ms MS   time a client keeps running after its address (default 500)
      --bin PATH       mirage-dhcp binary to use (skips scripts/build-release.sh)
      --stable-bin PATH  the mirage-stable binary (skips its cargo build)
      --baseline-bin PATH  also measure this mirage-dhcp binary (--no-acd) as
                       "mirage-dhcp (baseline)": an earlier build, side by side
                       with this one, to show a change costs nothing
      --no-build       do not build mirage-dhcp; use the binary already built
      --no-install     do not apt-get install missing peers
      --json FILE      also write the raw per-run results (JSON lines) to FILE
      --write-docs     put the table into docs/benchmarks.md between its markers
  -h, --help           this text
EOF
}

RUNS=20
WARMUP=1
CLIENTS="mirage,mirage-stable,dhcpcd,dhclient,udhcpc"
TIMEOUT=20
SETTLE_MS=500
BIN=""
STABLE_BIN=""
STABLE_BUILD=1
BASELINE_BIN=""
BUILD=1
INSTALL=1
JSON_OUT=""
WRITE_DOCS=0
# The command as recorded in the report: everything but --json, which only
# names where a raw copy goes (a local path that has no place in the docs).
ARGS_GIVEN=""
RECORD=("$@")
for ((i = 0; i < ${#RECORD[@]}; i++)); do
    if [ "${RECORD[i]}" = --json ]; then i=$((i + 1)); continue; fi
    if [ "${RECORD[i]}" = --baseline-bin ]; then
        ARGS_GIVEN="${ARGS_GIVEN:+$ARGS_GIVEN }--baseline-bin BASELINE"; i=$((i + 1)); continue
    fi
    ARGS_GIVEN="${ARGS_GIVEN:+$ARGS_GIVEN }${RECORD[i]}"
done
while [ $# -gt 0 ]; do
    case "$1" in
    -n | --runs) RUNS="${2:?}"; shift 2 ;;
    -w | --warmup) WARMUP="${2:?}"; shift 2 ;;
    -c | --clients) CLIENTS="${2:?}"; shift 2 ;;
    -t | --timeout) TIMEOUT="${2:?}"; shift 2 ;;
    --settle-ms) SETTLE_MS="${2:?}"; shift 2 ;;
    --bin) BIN="${2:?}"; BUILD=0; shift 2 ;;
    --stable-bin) STABLE_BIN="${2:?}"; STABLE_BUILD=0; shift 2 ;;
    --baseline-bin) BASELINE_BIN="${2:?}"; shift 2 ;;
    --no-build) BUILD=0; STABLE_BUILD=0; shift ;;
    --no-install) INSTALL=0; shift ;;
    --json) JSON_OUT="${2:?}"; shift 2 ;;
    --write-docs) WRITE_DOCS=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench-lease.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
for n in "$RUNS" "$WARMUP" "$TIMEOUT" "$SETTLE_MS"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "bench-lease.sh: not a number: $n" >&2; exit 2; }
done
if [ "$RUNS" -lt 1 ] || [ "$TIMEOUT" -lt 1 ]; then
    echo "bench-lease.sh: --runs and --timeout must be >= 1" >&2
    exit 2
fi
IFS=, read -r -a WANT <<<"$CLIENTS"
if [ -n "$BASELINE_BIN" ]; then
    [ -x "$BASELINE_BIN" ] || { echo "bench-lease.sh: --baseline-bin: no executable at $BASELINE_BIN" >&2; exit 2; }
    BASELINE_BIN="$(realpath "$BASELINE_BIN")"
    WANT+=(mirage-baseline)
fi
for c in "${WANT[@]}"; do
    case "$c" in mirage | mirage-stable | mirage-baseline | dhcpcd | dhclient | udhcpc) ;; *) echo "bench-lease.sh: unknown client $c" >&2; exit 2 ;; esac
done
[ "$(id -u)" = 0 ] || { echo "bench-lease.sh: run as root (it creates network namespaces)" >&2; exit 1; }

cd "$(dirname "$0")/.."
ROOT="$PWD"
HERE="$ROOT/scripts/bench"
# The system interpreter: a user-level shim would slow nothing measured, but
# the measuring tool should not depend on a user's environment.
PY="$(command -v /usr/bin/python3 || command -v python3)"

log() { printf '%s\n' "bench: $*" >&2; }

# --- state for cleanup ----------------------------------------------------
TMP="$(mktemp -d -t mirage-bench.XXXXXX)"
ID=$$
SRV="mbench-s-$ID"
CLI=""
DNSMASQ_PID=""
MEASURE_PID=""
POLICY_BACKUP=""
POLICY_CREATED=0

restore_policy() {
    if [ "$POLICY_CREATED" = 1 ]; then
        if [ -n "$POLICY_BACKUP" ]; then mv -f "$POLICY_BACKUP" /usr/sbin/policy-rc.d; else rm -f /usr/sbin/policy-rc.d; fi
        POLICY_CREATED=0
    fi
}

kill_ns() {
    local ns="$1" pid
    [ -n "$ns" ] || return 0
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
}

cleanup() {
    trap - EXIT INT TERM HUP
    if [ -n "$MEASURE_PID" ]; then kill -TERM "$MEASURE_PID" 2>/dev/null || true; wait "$MEASURE_PID" 2>/dev/null || true; fi
    if [ -n "$DNSMASQ_PID" ]; then kill -9 "$DNSMASQ_PID" 2>/dev/null || true; wait "$DNSMASQ_PID" 2>/dev/null || true; fi
    kill_ns "$CLI"
    kill_ns "$SRV"
    restore_policy
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM HUP

# --- peers ------------------------------------------------------------------
# package:command pairs; busybox provides udhcpc.
PACKAGES=(dnsmasq-base:dnsmasq iproute2:ip dhcpcd-base:dhcpcd isc-dhcp-client:dhclient busybox:busybox)
missing=()
for pc in "${PACKAGES[@]}"; do
    command -v "${pc#*:}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pc#*:}" ] || [ -x "/sbin/${pc#*:}" ] || missing+=("${pc%%:*}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$INSTALL" = 0 ]; then
        log "missing packages: ${missing[*]} (run without --no-install or apt-get install them)"
        exit 1
    fi
    log "installing ${missing[*]}"
    # policy-rc.d exit 101 tells invoke-rc.d/deb-systemd-invoke not to start
    # any service the packages ship; our own one is in force only while apt runs.
    if [ -e /usr/sbin/policy-rc.d ]; then
        POLICY_BACKUP="$TMP/policy-rc.d.orig"
        cp -p /usr/sbin/policy-rc.d "$POLICY_BACKUP"
    fi
    POLICY_CREATED=1
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$TMP/apt.log" 2>&1; then
        apt-get update -q >>"$TMP/apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$TMP/apt.log" 2>&1 ||
            { cat "$TMP/apt.log" >&2; log "apt-get install failed"; exit 1; }
    fi
    restore_policy
fi
DHCPCD="$(command -v dhcpcd || echo /usr/sbin/dhcpcd)"
DHCLIENT="$(command -v dhclient || echo /sbin/dhclient)"
BUSYBOX="$(command -v busybox || echo /bin/busybox)"
DNSMASQ="$(command -v dnsmasq || echo /usr/sbin/dnsmasq)"

# --- mirage-dhcp --------------------------------------------------------------
MIRAGE_NOTE=""
if [[ ",$CLIENTS," == *,mirage,* ]]; then
    if [ -z "$BIN" ]; then
        BIN="${CARGO_TARGET_DIR:-$ROOT/target}/dist/mirage-dhcp"
    fi
    if [ "$BUILD" = 1 ]; then
        log "building mirage-dhcp (scripts/build-release.sh)"
        if ! "$ROOT/scripts/build-release.sh" >"$TMP/build.log" 2>&1; then
            tail -n 20 "$TMP/build.log" >&2
            log "mirage-dhcp does not build: its rows will say failed"
            MIRAGE_NOTE="build failed"
        fi
    fi
    if [ -z "$MIRAGE_NOTE" ] && [ ! -x "$BIN" ]; then MIRAGE_NOTE="no binary at $BIN"; fi
fi
STABLE_NOTE=""
if [[ ",$CLIENTS," == *,mirage-stable,* ]]; then
    if [ -z "$STABLE_BIN" ]; then
        . "$ROOT/scripts/rust-target.sh"
        STABLE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$MIRAGE_TARGET/release/mirage-dhcp"
    fi
    if [ "$STABLE_BUILD" = 1 ]; then
        log "building mirage-dhcp with the stable toolchain (cargo build --release)"
        if ! cargo build --release --locked -q -p mirage-dhcp >"$TMP/build-stable.log" 2>&1; then
            tail -n 20 "$TMP/build-stable.log" >&2
            STABLE_NOTE="build failed"
        fi
    fi
    if [ -z "$STABLE_NOTE" ] && [ ! -x "$STABLE_BIN" ]; then STABLE_NOTE="no binary at $STABLE_BIN"; fi
fi

# --- the network ----------------------------------------------------------------
# 198.18.0.0/15 is reserved for benchmarking network devices (RFC 2544); it
# never leaves the namespaces below.
NET_PREFIX="198.18.0.0/16"
SERVER_IP="198.18.0.1"
CLIENT_MAC="02:00:5e:10:00:01"
ip netns add "$SRV"
ip netns exec "$SRV" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n "$SRV" link set lo up

# Creates a fresh client namespace and veth pair and starts a fresh dnsmasq
# with an empty lease database: every run starts with no lease on either side.
setup_run() {
    local tag="$1" _
    CLI="mbench-c-$ID-$tag"
    # (called in an || list, where set -e is off: every step checks itself)
    ip netns add "$CLI" || return 1
    ip netns exec "$CLI" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 &&
        ip -n "$CLI" link set lo up &&
        ip -n "$SRV" link add veth-s type veth peer name veth-c netns "$CLI" &&
        ip -n "$CLI" link set veth-c address "$CLIENT_MAC" &&
        ip -n "$SRV" addr add "$SERVER_IP/16" dev veth-s &&
        ip -n "$SRV" link set veth-s up &&
        ip -n "$CLI" link set veth-c up || return 1
    # (veth-c is up with carrier before any client starts, so no client is
    # charged for a link bring-up the others skip.)
    rm -f "$TMP/dnsmasq.leases"
    : >"$TMP/dnsmasq.leases"
    ip netns exec "$SRV" "$DNSMASQ" --keep-in-foreground --conf-file=/dev/null --port=0 \
        --bind-interfaces --interface=veth-s --except-interface=lo --no-ping --dhcp-authoritative \
        --dhcp-range=198.18.0.10,198.18.0.250,255.255.0.0,1h --dhcp-leasefile="$TMP/dnsmasq.leases" \
        --dhcp-option=option:router,"$SERVER_IP" --dhcp-option=option:dns-server,"$SERVER_IP" \
        --pid-file= --log-facility="$TMP/dnsmasq.log" 2>>"$TMP/dnsmasq.log" &
    DNSMASQ_PID=$!
    for _ in $(seq 200); do
        if ip netns exec "$SRV" ss -Hlun 'sport = :67' 2>/dev/null | grep -q . &&
            ip -n "$CLI" -o link show dev veth-c 2>/dev/null | grep -q 'state UP'; then
            return 0
        fi
        kill -0 "$DNSMASQ_PID" 2>/dev/null || { log "dnsmasq died:"; tail -5 "$TMP/dnsmasq.log" >&2; return 1; }
        sleep 0.025
    done
    log "dnsmasq or the link did not come up within 5 s"
    return 1
}

teardown_run() {
    if [ -n "$DNSMASQ_PID" ]; then
        kill -TERM "$DNSMASQ_PID" 2>/dev/null || true
        wait "$DNSMASQ_PID" 2>/dev/null || true
        DNSMASQ_PID=""
    fi
    # A lingering daemonized client can keep the client namespace (and so
    # the veth pair) alive: remove the server end explicitly.
    ip -n "$SRV" link del veth-s 2>/dev/null || true
    kill_ns "$CLI" # also removes the veth pair
    CLI=""
}

# --- the clients ------------------------------------------------------------------
cp "$HERE/dhclient-script.sh" "$HERE/udhcpc-script.sh" "$TMP/"
chmod 755 "$TMP/dhclient-script.sh" "$TMP/udhcpc-script.sh"
: >"$TMP/dhclient.conf" # dhclient's built-in defaults, not the host's config
# dhcpcd's own configuration, never the system one. `script ""` runs no hook
# scripts: Debian's hooks would rewrite the host's resolv.conf and hostname.
# noipv4ll: no 169.254/16 fallback address (it would only appear on failure).
printf 'script ""\nnoipv4ll\n' >"$TMP/dhcpcd-default.conf"
printf 'script ""\nnoipv4ll\nnodelay\n' >"$TMP/dhcpcd-nodelay.conf"
printf 'script ""\nnoipv4ll\nnodelay\nnoarp\n' >"$TMP/dhcpcd-noarp.conf"

# Variant table: name|client|variant label|conflict detection on/off
VARIANTS=()
for c in "${WANT[@]}"; do
    case "$c" in
    mirage) VARIANTS+=("mirage-acd|mirage-dhcp|default (ACD on), --sandbox seccomp|on"
        "mirage-noacd|mirage-dhcp|--no-acd --sandbox seccomp|off"
        "mirage-kvm|mirage-dhcp|--no-acd --sandbox kvm (engine as a KVM guest)|off") ;;
    mirage-stable) VARIANTS+=("mirage-stable|mirage-dhcp (stable build)|--no-acd|off") ;;
    mirage-baseline) VARIANTS+=("mirage-baseline|mirage-dhcp (baseline)|--no-acd|off") ;;
    dhcpcd) VARIANTS+=("dhcpcd-default|dhcpcd|default (ARP on, random delay)|on"
        "dhcpcd-nodelay|dhcpcd|nodelay (ARP on)|on" "dhcpcd-noarp|dhcpcd|nodelay + noarp|off") ;;
    dhclient) VARIANTS+=("dhclient|dhclient|default (no ACD)|off") ;;
    udhcpc) VARIANTS+=("udhcpc|udhcpc|default|off" "udhcpc-arp|udhcpc|-a (ARP check)|on") ;;
    esac
done

# Sets CMD (the client command line) and EXTRA (measuring tool options) for a
# variant, with per-run state files under $1.
client_command() {
    local name="$1" dir="$2"
    EXTRA=()
    case "$name" in
    mirage-acd | mirage-noacd | mirage-kvm | mirage-stable | mirage-baseline)
        # The client makes state/ and run/ for its actuator itself: it
        # refuses existing ones that are not the actuator's (root's here).
        mkdir -p "$dir"
        local bin="$BIN"
        [ "$name" = mirage-stable ] && bin="$STABLE_BIN"
        [ "$name" = mirage-baseline ] && bin="$BASELINE_BIN"
        CMD=("$bin" run --interface veth-c --state-dir "$dir/state" --run-dir "$dir/run"
            --resolv-conf "$dir/resolv.conf")
        [ "$name" != mirage-acd ] && CMD+=(--no-acd)
        # Rows side by side: seccomp explicitly (the default, auto, is kvm
        # where /dev/kvm works), and kvm in its own row.
        if [ "$name" = mirage-kvm ]; then CMD+=(--sandbox kvm); else CMD+=(--sandbox seccomp); fi
        ;;
    dhcpcd-*)
        # dhcpcd keeps its lease, DUID and pid file in fixed directories; the
        # measuring tool mounts private tmpfs there, visible to this run only.
        EXTRA=(--tmpfs /run --tmpfs /var/lib/dhcpcd)
        CMD=("$DHCPCD" -f "$TMP/$name.conf" -4 -B veth-c)
        ;;
    dhclient)
        CMD=("$DHCLIENT" -4 -d -cf "$TMP/dhclient.conf" -sf "$TMP/dhclient-script.sh"
            -lf "$dir/dhclient.leases" -pf "$dir/dhclient.pid" veth-c)
        ;;
    udhcpc | udhcpc-arp)
        CMD=("$BUSYBOX" udhcpc -f -i veth-c -s "$TMP/udhcpc-script.sh")
        [ "$name" = udhcpc-arp ] && CMD+=(-a)
        ;;
    esac
}

RESULTS="$TMP/results.jsonl"
: >"$RESULTS"
declare -A FAILS=() TRIES=() GAVE_UP=()
# Runs one variant once; appends a JSON line (with run metadata) to $RESULTS
# when measured (run index > 0).
run_one() {
    local name="$1" idx="$2" dir="$TMP/run-$1-$2" out rc
    local note="$MIRAGE_NOTE"
    [ "$name" = mirage-stable ] && note="$STABLE_NOTE"
    if [[ "$name" == mirage-* ]] && [ -n "$note" ]; then
        [ "$idx" -gt 0 ] && printf '{"variant":"%s","run":%d,"ok":false,"error":"%s"}\n' \
            "$name" "$idx" "$note" >>"$RESULTS"
        return 0
    fi
    if [ -n "${GAVE_UP[$name]:-}" ]; then
        [ "$idx" -gt 0 ] && printf '{"variant":"%s","run":%d,"ok":false,"error":"skipped after repeated failures"}\n' \
            "$name" "$idx" >>"$RESULTS"
        return 0
    fi
    mkdir -p "$dir"
    client_command "$name" "$dir"
    setup_run "$name-$idx" || { teardown_run; return 1; }
    out="$dir/result.json"
    timeout -k 5 $((TIMEOUT + 20)) "$PY" -I "$HERE/measure.py" --netns "$CLI" --ifname veth-c \
        --prefix "$NET_PREFIX" --timeout "$TIMEOUT" --settle-ms "$SETTLE_MS" --log "$dir/client.log" \
        --cwd "$dir" "${EXTRA[@]}" -- "${CMD[@]}" >"$out" &
    MEASURE_PID=$!
    rc=0
    wait "$MEASURE_PID" || rc=$?
    MEASURE_PID=""
    teardown_run
    if [ "$rc" = 2 ] || [ ! -s "$out" ]; then
        log "$name run $idx: measuring tool failed (exit $rc): $(cat "$out" 2>/dev/null)"
        return 1
    fi
    TRIES[$name]=$((${TRIES[$name]:-0} + 1))
    if [ "$rc" != 0 ]; then
        FAILS[$name]=$((${FAILS[$name]:-0} + 1))
        log "$name run $idx failed: $("$PY" -c 'import json,sys; print(json.load(sys.stdin).get("error"))' <"$out")"
        tail -n 5 "$dir/client.log" 2>/dev/null | sed 's/^/    | /' >&2 || true
        # A client that never worked in its first three tries is not retried
        # N more times at the full timeout each.
        if [ "${FAILS[$name]}" -ge 3 ] && [ "${FAILS[$name]}" = "${TRIES[$name]}" ]; then
            GAVE_UP[$name]=1
            log "$name: giving up after ${FAILS[$name]} failed runs"
        fi
    fi
    if [ "$idx" -gt 0 ]; then
        "$PY" -c 'import json,sys; r=json.load(sys.stdin); r.update(variant=sys.argv[1], run=int(sys.argv[2])); print(json.dumps(r))' \
            "$name" "$idx" <"$out" >>"$RESULTS"
    fi
    rm -rf "$dir"
}

log "variants: ${#VARIANTS[@]}, runs: $RUNS (+$WARMUP warm-up), timeout ${TIMEOUT}s"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
# Timings of multi-process clients suffer most from a busy machine: say so.
if awk -v n="$(nproc)" '{ exit !($1 > n) }' /proc/loadavg; then
    log "warning: load average ${LOAD_BEFORE%% *} exceeds $(nproc) CPUs; timings will be noisy"
fi
START_TS="$(date -u +%Y-%m-%dT%H:%MZ)"
# Round-robin over the variants, so that load that comes and goes on the
# machine is spread over all clients alike. Runs 1-WARMUP..0 are warm-up.
for ((idx = 1 - WARMUP; idx <= RUNS; idx++)); do
    for v in "${VARIANTS[@]}"; do
        run_one "${v%%|*}" "$idx" || { log "setup of ${v%%|*} run $idx failed; aborting"; exit 1; }
    done
    [ "$idx" -gt 0 ] && log "run $idx/$RUNS done"
done

# --- facts and the report -------------------------------------------------------------
pkgver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo unknown; }
size_of() { stat -L -c %s "$1" 2>/dev/null || echo 0; }
# Stripped size: the release profile strips already; strip a copy to be sure.
stripped_size() {
    if strip -o "$TMP/stripped" "$1" 2>/dev/null; then size_of "$TMP/stripped"; else size_of "$1"; fi
}
MIRAGE_SIZE=0
STABLE_SIZE=0
BASELINE_SIZE=0
[ -n "$BASELINE_BIN" ] && BASELINE_SIZE="$(stripped_size "$BASELINE_BIN")"
MIRAGE_VER="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ! git -C "$ROOT" diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null; then MIRAGE_VER="$MIRAGE_VER+local changes"; fi
[ -n "$BIN" ] && [ -x "$BIN" ] && MIRAGE_SIZE="$(stripped_size "$BIN")"
[ -n "$STABLE_BIN" ] && [ -x "$STABLE_BIN" ] && STABLE_SIZE="$(stripped_size "$STABLE_BIN")"
linkage() {
    local out
    out="$(ldd "$1" 2>&1)" || true
    case "$out" in *"statically linked"* | *"not a dynamic"*) echo static ;; *"=>"*) echo dynamic ;; *) echo unknown ;; esac
}
# Facts for the report travel as environment variables (no quoting games).
B_VARIANTS="$(printf '%s\n' "${VARIANTS[@]}")" B_RUNS="$RUNS" B_WARMUP="$WARMUP" \
    B_TIMEOUT="$TIMEOUT" B_SETTLE="$SETTLE_MS" B_ARGS="$ARGS_GIVEN" B_DATE="$START_TS" B_NPROC="$(nproc)" \
    B_KERNEL="$(uname -r)" B_CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
    B_OS="$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null)" B_LOAD_BEFORE="$LOAD_BEFORE" \
    B_LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)" B_SERVER="dnsmasq-base $(pkgver dnsmasq-base)" \
    B_MIRAGE="$MIRAGE_SIZE|git $MIRAGE_VER|$([ "$MIRAGE_SIZE" != 0 ] && linkage "$BIN" || echo -)" \
    B_MIRAGE_STABLE="$STABLE_SIZE|git $MIRAGE_VER|$([ "$STABLE_SIZE" != 0 ] && linkage "$STABLE_BIN" || echo -)" \
    B_MIRAGE_BASELINE="$BASELINE_SIZE|baseline|$([ "$BASELINE_SIZE" != 0 ] && linkage "$BASELINE_BIN" || echo -)" \
    B_DHCPCD="$(size_of "$DHCPCD")|dhcpcd-base $(pkgver dhcpcd-base)|$(linkage "$DHCPCD")" \
    B_DHCLIENT="$(size_of "$DHCLIENT")|isc-dhcp-client $(pkgver isc-dhcp-client)|$(linkage "$DHCLIENT")" \
    B_UDHCPC="$(size_of "$BUSYBOX")|busybox $(pkgver busybox)|$(linkage "$BUSYBOX")"
export B_VARIANTS B_RUNS B_WARMUP B_TIMEOUT B_SETTLE B_ARGS B_DATE B_NPROC B_KERNEL B_CPU B_OS B_LOAD_BEFORE \
    B_LOAD_AFTER B_SERVER B_MIRAGE B_MIRAGE_STABLE B_MIRAGE_BASELINE B_DHCPCD B_DHCLIENT B_UDHCPC
"$PY" -I - "$TMP/meta.json" <<'EOF'
import json, os, sys
e = os.environ
def binary(key):
    size, version, linkage = e[key].split("|")
    return {"size": int(size), "version": version, "linkage": linkage}
meta = {
    "variants": [dict(zip(("name", "client", "variant", "acd"), line.split("|")))
                 for line in e["B_VARIANTS"].splitlines() if line],
    "runs": int(e["B_RUNS"]), "warmup": int(e["B_WARMUP"]),
    "timeout_s": int(e["B_TIMEOUT"]), "settle_ms": int(e["B_SETTLE"]),
    "command": ("scripts/bench-lease.sh " + e["B_ARGS"]).strip(),
    "date": e["B_DATE"],
    "machine": {"nproc": e["B_NPROC"], "kernel": e["B_KERNEL"], "cpu": e["B_CPU"], "os": e["B_OS"],
                "loadavg_before": e["B_LOAD_BEFORE"], "loadavg_after": e["B_LOAD_AFTER"]},
    "binaries": {"mirage-dhcp": binary("B_MIRAGE"),
                 "mirage-dhcp (stable build)": binary("B_MIRAGE_STABLE"),
                 "mirage-dhcp (baseline)": binary("B_MIRAGE_BASELINE"), "dhcpcd": binary("B_DHCPCD"),
                 "dhclient": binary("B_DHCLIENT"), "udhcpc": binary("B_UDHCPC")},
    "server": e["B_SERVER"],
}
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=1)
EOF
[ -n "$JSON_OUT" ] && cp "$RESULTS" "$JSON_OUT"
REPORT_ARGS=(--results "$RESULTS" --meta "$TMP/meta.json")
[ "$WRITE_DOCS" = 1 ] && REPORT_ARGS+=(--write-docs "$ROOT/docs/benchmarks.md")
"$PY" -I "$HERE/report.py" "${REPORT_ARGS[@]}"
