#!/usr/bin/env bash
# Side-by-side NTP client benchmark: mirage-ntp (--observe), chronyd (-x,
# client only) and busybox ntpd (-w), none of which touches the clock,
# against the same chronyd -x servers in a network namespace, all three in
# the same run. Measures the time from start to the first synchronised
# estimate and the requests per server sent until then, the estimate's
# error, requests per server per hour in a steady window (scaled to an
# hour) with the poll each client reached, the summed RSS of every process
# of each client and the stripped binary sizes; medians over N runs, ratios
# to mirage-ntp. --poll MIN:MAX gives mirage-ntp and chronyd the same poll
# bounds, so that their steady state is reached within a run.
#
# Needs root on Debian (chrony, nftables, musl-tools; busybox with its ntpd
# applet is built from Debian's source package, since Debian's busybox has
# none: scripts/bench/busybox-ntpd.sh). Sends traffic only inside the
# namespaces it creates, and removes them on exit, failure or Ctrl-C.
# See docs/benchmarks.md ("NTP clients") for the method.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/bench-ntp.sh [options]
  -n, --runs N          runs (default 5)
  -s, --servers K       chronyd -x servers (default 3)
  -d, --duration S      seconds each run lasts (default 300)
      --steady-after S  the steady window starts S seconds after start
                        (default 60) and lasts to the end of the run; its
                        requests are scaled to an hour
  -c, --clients LIST    comma-separated subset of mirage-ntp,chronyd,busybox-ntpd
      --poll MIN:MAX    poll bounds, log2 s (4 <= MIN <= MAX <= 17): mirage-ntp's
                        min_poll/max_poll (its config file) and chronyd's
                        minpoll/maxpoll (its server lines); default: each
                        client's own (6:10 for both). busybox ntpd cannot be
                        configured so: it keeps its built-in bounds (at least
                        2^5 s, and with -w it never lengthens its poll) and the
                        report says so; leave it out (-c) for a steady-state run
      --bin PATH        mirage-ntp binary (skips scripts/build-release.sh)
      --busybox PATH    a busybox with the ntpd applet (skips building one)
      --json FILE       also write the per-run results (JSON lines) to FILE
      --write-docs      put the report into docs/benchmarks.md between its
                        bench-ntp markers
  -h, --help            this text
USAGE
}

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUNS=5 SERVERS=3 DURATION=300 STEADY=60 CLIENTS=mirage-ntp,chronyd,busybox-ntpd
BIN="" BUSYBOX="" JSON_OUT="" WRITE_DOCS=0 POLL=""
RECORD=() # the command as the report records it (no local paths)
while [ $# -gt 0 ]; do
    case "$1" in
    -n | --runs) RUNS="${2:?}"; RECORD+=("$1" "$2"); shift 2 ;;
    -s | --servers) SERVERS="${2:?}"; RECORD+=("$1" "$2"); shift 2 ;;
    -d | --duration) DURATION="${2:?}"; RECORD+=("$1" "$2"); shift 2 ;;
    --steady-after) STEADY="${2:?}"; RECORD+=("$1" "$2"); shift 2 ;;
    -c | --clients) CLIENTS="${2:?}"; RECORD+=("$1" "$2"); shift 2 ;;
    --poll) POLL="${2:?}"; RECORD+=("$1" "$2"); shift 2 ;;
    --bin) BIN="${2:?}"; RECORD+=("$1" BIN); shift 2 ;;
    --busybox) BUSYBOX="${2:?}"; RECORD+=("$1" BUSYBOX); shift 2 ;;
    --json) JSON_OUT="${2:?}"; shift 2 ;;
    --write-docs) WRITE_DOCS=1; RECORD+=("$1"); shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench-ntp.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench-ntp.sh: run as root (network namespaces)" >&2; exit 1; }
for tool in ip nft chronyd strip python3; do
    command -v "$tool" >/dev/null || { echo "bench-ntp.sh: $tool is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
log() { echo "bench-ntp: $*" >&2; }

TMP="$(mktemp -d)"
cleanup() {
    # Anything a failed run left behind: its namespaces and their processes.
    for ns in $(ip netns list | awk '/^nbench-/ {print $1}'); do
        case "$ns" in *-"$(($$ % 100000))"r*) ;; *) continue ;; esac
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

MIRAGE_WHAT="static"
if [[ ",$CLIENTS," == *,mirage-ntp,* ]]; then
    if [ -z "$BIN" ]; then
        log "building mirage-ntp (scripts/build-release.sh --best mirage-ntp)"
        "$ROOT/scripts/build-release.sh" --best mirage-ntp >"$TMP/build.log" 2>&1 ||
            { tail -n 20 "$TMP/build.log" >&2; exit 1; }
        BIN="${CARGO_TARGET_DIR:-$ROOT/target}/dist/mirage-ntp"
    fi
    MIRAGE_WHAT="git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown), static"
fi
BUSYBOX_WHAT=""
if [[ ",$CLIENTS," == *,busybox-ntpd,* ]]; then
    if [ -z "$BUSYBOX" ]; then
        if busybox ntpd --help >/dev/null 2>&1; then
            BUSYBOX="$(command -v busybox)"
        else
            BUSYBOX_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/bench-busybox"
            log "Debian's busybox has no ntpd applet: building one (scripts/bench/busybox-ntpd.sh)"
            "$ROOT/scripts/bench/busybox-ntpd.sh" "$BUSYBOX_DIR" >&2
            BUSYBOX="$BUSYBOX_DIR/busybox"
        fi
    fi
    if [ -s "$BUSYBOX.version" ]; then
        BUSYBOX_WHAT="$(cat "$BUSYBOX.version")" # (says how it was linked)
    else
        BUSYBOX_WHAT="$("$BUSYBOX" --help 2>&1 | head -1 | cut -d' ' -f1-2 || true)"
        if file "$BUSYBOX" | grep -q 'statically linked'; then
            BUSYBOX_WHAT="$BUSYBOX_WHAT, static"
        else
            BUSYBOX_WHAT="$BUSYBOX_WHAT, dynamic: libraries not counted in its size"
        fi
    fi
fi

args=(--runs "$RUNS" --servers "$SERVERS" --duration "$DURATION" --steady-after "$STEADY"
    --clients "$CLIENTS" --mirage "${BIN:-/nonexistent}" --busybox "${BUSYBOX:-/nonexistent}"
    --mirage-what "$MIRAGE_WHAT" --busybox-what "$BUSYBOX_WHAT"
    --command "scripts/bench-ntp.sh ${RECORD[*]}" --tmp "$TMP")
[ -z "$JSON_OUT" ] || args+=(--json "$JSON_OUT")
[ -z "$POLL" ] || args+=(--poll "$POLL")
[ "$WRITE_DOCS" = 0 ] || args+=(--write-docs "$ROOT/docs/benchmarks.md")
python3 "$ROOT/scripts/bench/ntp.py" "${args[@]}"
