#!/usr/bin/env bash
# The engine crates (the example's too), the IPC crate and the DNS codec must link into a freestanding guest later: no
# dependency of theirs may have its "std" feature on. (Both crates are
# `#![no_std]` themselves; this checks what they pull in.)
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for crate in mirage-engine dhcp-engine ntp-engine dns-wire dns-engine mirage-ipc heartbeat-engine; do
    found=$(cargo tree -p "$crate" -e normal,features --prefix none --locked 2>/dev/null \
        | grep -E 'feature "std"' | sort -u || true)
    if [ -n "$found" ]; then
        echo "check-no-std: $crate pulls in std through:" >&2
        echo "$found" >&2
        status=1
    fi
done
[ "$status" = 0 ] && echo "check-no-std: mirage-engine, dhcp-engine, ntp-engine, dns-wire, dns-engine, mirage-ipc and heartbeat-engine pull in no std feature"
exit "$status"
