#!/usr/bin/env bash
# Runs the interop and fault suites (crates/mirage-dhcp/tests/interop.rs and
# faults.rs) with a results file, then rewrites the results table in
# docs/interop.md (between its "results:begin" and "results:end" markers)
# from what the tests recorded. Run as root, with the packages of .ci/run.
# Extra arguments go to cargo test (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "scripts/interop-table.sh: run as root (the tests create network namespaces)" >&2
    exit 1
fi
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
status=0
MIRAGE_INTEROP_RESULTS="$results" timeout 1200 \
    cargo test -p mirage-dhcp --locked --test interop --test faults "$@" || status=$?
python3 - "$results" docs/interop.md <<'PY'
import json, sys
results, doc = sys.argv[1], sys.argv[2]
servers = ["dnsmasq", "kea", "dhcpd", "udhcpd"]
cells = {}
order = []
for line in open(results):
    r = json.loads(line)
    key = (r["scenario"], r["server"])
    if r["scenario"] not in order:
        order.append(r["scenario"])
    cells.setdefault(key, {})[r["sandbox"]] = (r["outcome"], r["note"])
# Scenarios in the order the suites list them; anything new goes last.
known = [
    "plain lease", "MTU (26)", "search list (119)", "classless routes (121)",
    "cloud /32 + 121 host route", "NTP servers (42)", "short lease, renewals",
    "subnet changes under a lease", "server gone: rebind, expiry",
    "two servers at once", "relayed (giaddr)",
    "carrier down/up", "engine SIGKILL in REQUESTING", "engine SIGKILL in BOUND",
    "actuator SIGKILL", "daemon restart in RENEWING", "state dir read-only",
    "state dir full", "corrupt lease file at start", "SIGTERM, release-on-stop",
    "SIGTERM, no release",
]
order = [s for s in known if s in order] + sorted(s for s in order if s not in known)
def one(v):
    outcome, note = v
    note = note.replace("|", "\\|").replace("\n", " ")
    return f"**{outcome}**: {note}" if note else f"**{outcome}**"
def cell(by_sandbox):
    if not by_sandbox:
        return "not run"
    vals = list(by_sandbox.values())
    if len(vals) > 1 and all(v == vals[0] for v in vals):
        return one(vals[0]) + (" (both sandboxes)" if len(vals) == 2 else f" (all {len(vals)} sandboxes)")
    return "; ".join(f"{sb}: {one(v)}" for sb, v in sorted(by_sandbox.items()))
rows = ["| scenario | " + " | ".join(servers) + " |", "| --- |" + " --- |" * len(servers)]
for s in order:
    rows.append(f"| {s} | " + " | ".join(cell(cells.get((s, sv), {})) for sv in servers) + " |")
table = "\n".join(rows)
text = open(doc).read()
begin, end = "<!-- results:begin -->", "<!-- results:end -->"
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(doc, "w").write(f"{head}{begin}\n{table}\n{end}{tail}")
print(f"docs/interop.md: {len(order)} scenarios x {len(servers)} servers")
PY
exit "$status"
