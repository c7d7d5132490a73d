#!/usr/bin/env python3
"""Turns the per-run results of scripts/bench-lease.sh into a Markdown report.

Input: a JSON-lines file (one object per measured run, as printed by
measure.py plus "variant" and "run") and a JSON file of facts (variants,
machine, binaries). Output: the report on stdout and, with --write-docs, the
same report between the markers of a Markdown file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

BEGIN = "<!-- bench-lease:begin -->"
END = "<!-- bench-lease:end -->"


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError("percentile outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def summarise(runs: list[dict]) -> dict:
    """Statistics of one variant's measured runs."""
    ok = [r for r in runs if r.get("ok") and isinstance(r.get("ms"), (int, float))]
    times = [float(r["ms"]) for r in ok]
    rss = [int(r["rss_kib"]) for r in ok if isinstance(r.get("rss_kib"), int) and r["rss_kib"] > 0]
    errors = sorted({str(r.get("error")) for r in runs if not r.get("ok")})
    out = {"runs": len(runs), "ok": len(ok), "failed": len(runs) - len(ok), "errors": errors}
    if times:
        out.update(median=percentile(times, 50), p10=percentile(times, 10), p90=percentile(times, 90))
    if rss:
        out.update(rss_median=round(percentile(rss, 50)), rss_max=max(rss))
    procs = [int(r["procs"]) for r in ok if isinstance(r.get("procs"), int)]
    if procs:
        out["procs_max"] = max(procs)
    out["comms"] = sorted({c for r in ok for c in r.get("comms", []) if isinstance(c, str)})
    return out


def fmt_ms(v: float) -> str:
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def fmt_kib(n: int) -> str:
    return f"{n:,}"


def table(meta: dict, stats: dict[str, dict]) -> list[str]:
    """The Markdown table rows. The ratio compares a variant's median with
    mirage-dhcp's median in the same conflict-detection setting (ACD on with
    ACD on, off with off), so a client is never compared against work it
    skipped."""
    mirage_by_acd = {}
    for v in meta["variants"]:
        s = stats.get(v["name"], {})
        # The first row of each setting is the shipped build's default
        # sandbox (seccomp); later ones (kvm, stable, baseline) compare to it.
        if v["client"] == "mirage-dhcp" and "median" in s:
            mirage_by_acd.setdefault(v["acd"], s["median"])
    rows = [
        "| client | variant | conflict detection | median ms | p10 ms | p90 ms | ratio to mirage-dhcp "
        "| peak RSS KiB | binary size KiB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v in meta["variants"]:
        s = stats.get(v["name"], {"runs": 0, "ok": 0, "failed": 0})
        binary = meta["binaries"].get(v["client"], {})
        size = fmt_kib(round(binary["size"] / 1024)) if binary.get("size") else "-"
        if "median" not in s:
            cells = ["failed", "-", "-", "-", "-"]
        else:
            med = fmt_ms(s["median"])
            if s["failed"]:
                med += f" ({s['failed']}/{s['runs']} failed)"
            base = mirage_by_acd.get(v["acd"])
            ratio = f"{s['median'] / base:.2f}" if base else "n/a"
            rss = fmt_kib(s["rss_median"]) if "rss_median" in s else "-"
            cells = [med, fmt_ms(s["p10"]), fmt_ms(s["p90"]), ratio, rss]
        rows.append("| " + " | ".join([v["client"], v["variant"], v["acd"], *cells, size]) + " |")
    return rows


def render(meta: dict, results: list[dict]) -> str:
    by_variant: dict[str, list[dict]] = {v["name"]: [] for v in meta["variants"]}
    for r in results:
        by_variant.setdefault(r.get("variant", "?"), []).append(r)
    stats = {name: summarise(runs) for name, runs in by_variant.items()}
    m = meta["machine"]
    lines = [
        f"Command: `{meta['command']}` ({meta['runs']} measured runs per variant after "
        f"{meta['warmup']} warm-up, timeout {meta['timeout_s']} s, clients kept running "
        f"{meta['settle_ms']} ms after their address).",
        "",
        f"Date: {meta['date']}. Machine: {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, "
        f"{m['os']}; load average {m['loadavg_before']} before, {m['loadavg_after']} after.",
        "",
        "Server: " + meta["server"] + ". Clients: "
        + ", ".join(
            f"{name} ({b['version']}, {b['linkage']})"
            for name, b in meta["binaries"].items()
            if b.get("size") and name in {v["client"] for v in meta["variants"]}
        )
        + ".",
        "",
        *table(meta, stats),
    ]
    counted = [
        f"{v['client']} {v['variant']}: {stats[v['name']]['procs_max']} ({', '.join(stats[v['name']]['comms'])})"
        for v in meta["variants"]
        if "procs_max" in stats.get(v["name"], {})
    ]
    if counted:
        lines += ["", "Processes counted in the peak RSS (most in one run, with their names): " + "; ".join(counted) + "."]
    notes = []
    for v in meta["variants"]:
        s = stats.get(v["name"], {})
        if s.get("errors"):
            notes.append(f"- {v['client']} {v['variant']}: " + "; ".join(s["errors"][:3]))
    if notes:
        lines += ["", "Failures:", *notes]
    return "\n".join(lines) + "\n"


def replace_between_markers(doc: str, block: str) -> str:
    """Puts block between the BEGIN and END markers of doc (markers kept)."""
    start = doc.find(BEGIN)
    end = doc.find(END, start + len(BEGIN)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise ValueError(f"markers {BEGIN} ... {END} not found in order")
    return doc[: start + len(BEGIN)] + "\n" + block + doc[end:]


def load_results(path: str) -> list[dict]:
    results = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{number}: not JSON: {e}") from None
            if isinstance(record, dict):
                results.append(record)
    return results


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True)
    p.add_argument("--meta", required=True)
    p.add_argument("--write-docs", metavar="MARKDOWN_FILE")
    args = p.parse_args(argv)
    with open(args.meta, encoding="utf-8") as f:
        meta = json.load(f)
    report = render(meta, load_results(args.results))
    sys.stdout.write(report)
    if args.write_docs:
        with open(args.write_docs, encoding="utf-8") as f:
            doc = f.read()
        try:
            doc = replace_between_markers(doc, report)
        except ValueError as e:
            print(f"report.py: {args.write_docs}: {e}", file=sys.stderr)
            return 1
        with open(args.write_docs, "w", encoding="utf-8") as f:
            f.write(doc)
        print(f"report.py: table written to {args.write_docs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
