#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer, nightly toolchain).
#   scripts/fuzz.sh smoke            every target for FUZZ_SMOKE_SECONDS (default 30)
#   scripts/fuzz.sh run TARGET SECS  one target for SECS seconds
#   scripts/fuzz.sh list             the targets
# The checked-in seed corpora live in fuzz/seeds/TARGET; new inputs found go
# to fuzz/corpus/TARGET (not tracked), crashes to fuzz/artifacts/TARGET.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
targets() { sed -n 's/^name = "\([a-z_]*\)"$/\1/p' Cargo.toml | grep -v '^mirage-fuzz$'; }
run() {
    local target=$1 secs=$2
    mkdir -p "corpus/$target" "seeds/$target"
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=1024 -max_len=4096 -print_final_stats=1
}
case "${1:-smoke}" in
    list) targets ;;
    run) run "$2" "${3:-60}" ;;
    smoke)
        for t in $(targets); do
            echo "== fuzz $t (${FUZZ_SMOKE_SECONDS:-30} s)"
            run "$t" "${FUZZ_SMOKE_SECONDS:-30}"
        done ;;
    *) echo "usage: $0 smoke | run TARGET SECONDS | list" >&2; exit 2 ;;
esac
