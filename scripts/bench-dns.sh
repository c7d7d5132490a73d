#!/usr/bin/env bash
# Side-by-side DNS forwarder benchmark: mirage-dns, dnsmasq (cache-size
# 10000) and unbound (a forwarding cache), all three in front of the same
# upstream (nsd serving a zone on 127.0.0.1:5300), in one network namespace
# (loopback only), in the same run, loaded by dnsperf one at a time in
# rotating order. Measures cache-hit queries per second at full speed and
# the p99 (and p50) latency of that run, the p99 (and p50) at a fixed
# offered load, queries per CPU-second of
# every process of each forwarder, upstream queries per client query over
# 10,000 distinct cache misses, the summed RSS of every process at idle and
# with 11,000 names cached, and the binary sizes; medians over N runs,
# ratios to mirage-dns, and the issue's goals met or missed.
#
# Needs root on Debian (nsd, dnsmasq, unbound, dnsperf, nftables:
# scripts/install-deps.sh). Sends traffic only inside the namespace it
# creates, and removes it on exit, failure or Ctrl-C.
# See docs/benchmarks.md ("DNS forwarders") for the method.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/bench-dns.sh [options]
  -n, --runs N          runs (default 5)
  -d, --duration S      seconds of each full-speed cache-hit run (default 10)
      --latency-duration S  seconds of each fixed-rate latency run (default 5)
  -r, --rate Q          the fixed offered load for latency, queries/s
                        (default 5000: below every forwarder's maximum here)
      --miss-rate Q     pace of the cache-fill and cache-miss runs, queries/s
                        (default 2000: under mirage-dns's upstream_per_second)
      --short           a quick look: 2 runs of 3 s, latency runs of 2 s
  -f, --forwarders LIST comma-separated subset of mirage-dns,dnsmasq,unbound
      --bin PATH        mirage-dns binary (skips scripts/build-release.sh)
      --sandbox S       mirage-dns's engine sandbox: seccomp (default), kvm or auto
      --mirage-config F mirage-dns's config file (default none: its defaults)
      --json FILE       also write the raw results (JSON) to FILE
      --write-docs      put the report into docs/benchmarks.md between its
                        bench-dns markers
  -h, --help            this text
USAGE
}

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUNS=5 DURATION=10 LAT_DURATION=5 RATE=5000 MISS_RATE=2000
FORWARDERS=mirage-dns,dnsmasq,unbound BIN="" JSON_OUT="" WRITE_DOCS=0 SANDBOX=seccomp MIRAGE_CONFIG=/dev/null
RECORD=() # the command as the report records it (no local paths)
while [ $# -gt 0 ]; do
    case "$1" in
    -n | --runs) RUNS="${2:?}"; RECORD+=("$1" "$2"); shift 2 ;;
    -d | --duration) DURATION="${2:?}"; RECORD+=("$1" "$2"); shift 2 ;;
    --latency-duration) LAT_DURATION="${2:?}"; RECORD+=("$1" "$2"); shift 2 ;;
    -r | --rate) RATE="${2:?}"; RECORD+=("$1" "$2"); shift 2 ;;
    --miss-rate) MISS_RATE="${2:?}"; RECORD+=("$1" "$2"); shift 2 ;;
    --short) RUNS=2 DURATION=3 LAT_DURATION=2; RECORD+=("$1"); shift ;;
    -f | --forwarders) FORWARDERS="${2:?}"; RECORD+=("$1" "$2"); shift 2 ;;
    --bin) BIN="${2:?}"; RECORD+=("$1" BIN); shift 2 ;;
    --sandbox) SANDBOX="${2:?}"; RECORD+=("$1" "$2"); shift 2 ;;
    --mirage-config) MIRAGE_CONFIG="$(realpath "${2:?}")"; RECORD+=("$1" "$(basename "$2")"); shift 2 ;;
    --json) JSON_OUT="${2:?}"; shift 2 ;;
    --write-docs) WRITE_DOCS=1; RECORD+=("$1"); shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench-dns.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
for n in "$RUNS" "$DURATION" "$LAT_DURATION" "$RATE" "$MISS_RATE"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench-dns.sh: $n is not a positive number" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "bench-dns.sh: run as root (network namespaces, port 53)" >&2; exit 1; }
for tool in ip nft nsd dnsperf dnsmasq unbound python3 file ss; do
    command -v "$tool" >/dev/null || { echo "bench-dns.sh: $tool is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
log() { echo "bench-dns: $*" >&2; }

TMP="$(mktemp -d)"
cleanup() {
    # What a failed run left behind: its namespace and its processes (the
    # Python side removes them itself when it gets to).
    ns="dbench-$(($$ % 100000))"
    if ip netns list | grep -qw "$ns"; then
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "$BIN" ]; then
    log "building mirage-dns (scripts/build-release.sh --best mirage-dns)"
    "$ROOT/scripts/build-release.sh" --best mirage-dns >"$TMP/build.log" 2>&1 ||
        { tail -n 20 "$TMP/build.log" >&2; exit 1; }
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/dist/mirage-dns"
fi

args=(--runs "$RUNS" --duration "$DURATION" --latency-duration "$LAT_DURATION" --rate "$RATE"
    --miss-rate "$MISS_RATE" --forwarders "$FORWARDERS" --mirage "$BIN" --sandbox "$SANDBOX" --mirage-config "$MIRAGE_CONFIG"
    --command "scripts/bench-dns.sh ${RECORD[*]}" --tmp "$TMP" --ns "dbench-$(($$ % 100000))")
[ -z "$JSON_OUT" ] || args+=(--json "$JSON_OUT")
[ "$WRITE_DOCS" = 0 ] || args+=(--write-docs "$ROOT/docs/benchmarks.md")
python3 "$ROOT/scripts/bench/dns.py" "${args[@]}"
