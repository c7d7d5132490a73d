#!/usr/bin/env python3
"""Side-by-side DNS forwarder benchmark (run by scripts/bench-dns.sh; see
docs/benchmarks.md, "DNS forwarders").

One network namespace, loopback only. nsd serves the zone `bench.` on
127.0.0.1:5300 (the upstream of all three; every record TTL 3600). The
forwarders run side by side in the same namespace, all started at once,
each on its own loopback address, port 53, forwarding to nsd:

  mirage-dns  run --listen 127.0.0.53 --upstream 127.0.0.1:5300, the
              shipped defaults otherwise (cache 4 MiB), started as root so
              each role has its own uid
  dnsmasq     --cache-size=10000, --no-resolv --server=127.0.0.1#5300,
              on 127.0.0.54
  unbound     a forwarding cache (forward-zone "." to 127.0.0.1@5300,
              module-config "iterator": no validation, as the others),
              its defaults otherwise (one thread), on 127.0.0.55

dnsperf loads one forwarder at a time, the order rotated each run.

Measured:
  qps          cache hits: dnsperf at full speed (-q 100 outstanding) over
               HIT_NAMES names queried once before (so in every cache), for
               --duration seconds; completed queries per second
  full_p99_ms  the same run (dnsperf -v): the 99th percentile of the
               per-query latencies it prints (and p50), the issue's p99
  p99_ms       cache hits at a fixed offered load (--rate queries per
               second, the same for every forwarder, below all their
               maxima), dnsperf -v: the 99th percentile of the per-query
               latencies (and p50): the latency of a lightly loaded host
  q_per_cpu_s  completed queries of the full-speed run divided by the CPU
               seconds (user + system) every process of the forwarder
               used meanwhile (/proc/PID/stat; mirage-dns: supervisor and
               roles)
  upstream     cache misses: MISS_NAMES distinct names, each asked once at
               --miss-rate per second; UDP queries and TCP connections to
               port 5300 counted by nftables on the namespace's output
               hook, per client query
  rss_kib      summed VmRSS of every process of the forwarder at idle
               (after start, before any query) and after the miss run
               (HIT_NAMES + MISS_NAMES names cached)
Binary sizes are measured once (the files as installed; dnsmasq and
unbound are dynamically linked, their libraries are not counted).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

HIT_NAMES = 1000
MISS_NAMES = 10000
UPSTREAM = ("127.0.0.1", 5300)
FORWARDERS = {
    "mirage-dns": "127.0.0.53",
    "dnsmasq": "127.0.0.54",
    "unbound": "127.0.0.55",
}


def read(path):
    with open(path) as f:
        return f.read()


def log(msg):
    print(f"bench-dns: {msg}", file=sys.stderr, flush=True)


def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def ns_exec(ns, *args, check=True, **kw):
    return sh("ip", "netns", "exec", ns, *args, check=check, **kw)


def descendants(pid):
    """pid and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            kids = read(f"/proc/{p}/task/{p}/children").split()
        except OSError:
            kids = []
        todo.extend(int(k) for k in kids)
    return out


def cpu_seconds(pid):
    """user + system seconds of pid and its descendants (all threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in descendants(pid):
        try:
            stat = read(f"/proc/{p}/stat")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def rss_each(pid):
    """VmRSS (KiB) of pid and each of its descendants, by name (a role's
    name is its third argument: `mirage-dns role engine`)."""
    out = {}
    for p in descendants(pid):
        try:
            argv = read(f"/proc/{p}/cmdline").split("\0")
            name = argv[2] if len(argv) > 2 and argv[1] == "role" else "main"
            for line in read(f"/proc/{p}/status").splitlines():
                if line.startswith("VmRSS:"):
                    out[name] = out.get(name, 0) + int(line.split()[1])
        except (OSError, IndexError):
            continue
    return out


def rss_kib(pid):
    """Summed VmRSS (KiB) of pid and its descendants, and how many."""
    each = rss_each(pid)
    return sum(each.values()), len(each)


def parse_dnsperf(text):
    """The summary of a dnsperf run: sent, completed, lost, qps, average
    latency (s)."""
    def num(pattern, cast=float):
        m = re.search(pattern, text)
        if not m:
            raise ValueError(f"no {pattern!r} in dnsperf output:\n{text}")
        return cast(m.group(1))

    return {
        "sent": num(r"Queries sent:\s+(\d+)", int),
        "completed": num(r"Queries completed:\s+(\d+)", int),
        "lost": num(r"Queries lost:\s+(\d+)", int),
        "qps": num(r"Queries per second:\s+([\d.]+)"),
        "avg_latency_s": num(r"Average Latency \(s\):\s+([\d.]+)"),
    }


def parse_latencies(text, timeout_s=5.0):
    """Per-query latencies (s) from dnsperf -v lines such as
    `> NOERROR h1.bench. A 0.000123`; a query lost (`[Timeout] Query timed
    out: ...`) counts as dnsperf's timeout (5 s), so losses raise the
    percentiles instead of leaving them out."""
    out = []
    for line in text.splitlines():
        if line.startswith("[Timeout]"):
            out.append(timeout_s)
        elif line.startswith("> "):
            try:
                out.append(float(line.split()[-1]))
            except ValueError:
                continue
    return out


def percentile(values, q):
    """The q-quantile (0..1) by the nearest-rank method."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 1)) - 1))
    return s[k]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


ZONE_HEAD = """$ORIGIN bench.
$TTL 3600
@ IN SOA ns.bench. admin.bench. 1 3600 600 86400 3600
@ IN NS ns.bench.
ns IN A 127.0.0.1
"""


def write_zone(path):
    with open(path, "w") as f:
        f.write(ZONE_HEAD)
        for i in range(1, HIT_NAMES + 1):
            f.write(f"h{i} IN A 198.18.{i // 250}.{i % 250 + 1}\n")
        for i in range(1, MISS_NAMES + 1):
            f.write(f"m{i} IN A 198.19.{i // 250}.{i % 250 + 1}\n")


class Bench:
    def __init__(self, args):
        self.a = args
        self.tmp = args.tmp
        self.ns = args.ns
        self.procs = {}  # name -> Popen
        self.logs = []

    # --- setup ---------------------------------------------------------
    def spawn(self, name, argv):
        logf = open(os.path.join(self.tmp, f"{name}.log"), "w")
        self.logs.append(logf)
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stdout=logf, stderr=subprocess.STDOUT)
        self.procs[name] = p
        return p

    def wait_udp(self, addr, port, what, proc):
        for _ in range(400):
            out = ns_exec(self.ns, "ss", "-lun").stdout
            if f"{addr}:{port} " in out:
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = read(os.path.join(self.tmp, f"{what}.log"))[-2000:]
        raise RuntimeError(f"{what} does not listen on {addr}:{port}:\n{tail}")

    def setup(self):
        sh("ip", "netns", "add", self.ns)
        ns_exec(self.ns, "ip", "link", "set", "lo", "up")
        # Upstream traffic, counted on the output hook: every query any
        # forwarder sends to nsd, UDP datagrams and TCP connections.
        nft = """table inet dbench {
  counter up_udp {}
  counter up_tcp {}
  chain out {
    type filter hook output priority 0; policy accept;
    udp dport 5300 counter name "up_udp"
    tcp dport 5300 tcp flags & (syn | ack) == syn counter name "up_tcp"
  }
}
"""
        path = os.path.join(self.tmp, "counters.nft")
        with open(path, "w") as f:
            f.write(nft)
        ns_exec(self.ns, "nft", "-f", path)

        zone = os.path.join(self.tmp, "bench.zone")
        write_zone(zone)
        t = self.tmp
        with open(os.path.join(t, "nsd.conf"), "w") as f:
            f.write(
            f"""server:
    ip-address: {UPSTREAM[0]}@{UPSTREAM[1]}
    username: ""
    chroot: ""
    zonesdir: "{t}"
    database: ""
    zonelistfile: "{t}/zone.list"
    xfrdfile: "{t}/xfrd.state"
    xfrdir: "{t}"
    pidfile: "{t}/nsd.pid"
    logfile: "{t}/nsd.messages"
    server-count: 1
    verbosity: 0
remote-control:
    control-enable: no
zone:
    name: "bench."
    zonefile: "{zone}"
"""
        )
        nsd = self.spawn("nsd", ["nsd", "-d", "-c", os.path.join(t, "nsd.conf")])
        self.wait_udp(*UPSTREAM, "nsd", nsd)

        for name in self.a.forwarders:
            addr = FORWARDERS[name]
            if name == "mirage-dns":
                argv = [self.a.mirage, "run", "--config", self.a.mirage_config, "--listen", addr,
                        "--upstream", f"{UPSTREAM[0]}:{UPSTREAM[1]}", "--sandbox", self.a.sandbox,
                        "--state-dir", os.path.join(t, "dns-state"), "--run-dir", os.path.join(t, "dns-run")]
            elif name == "dnsmasq":
                argv = ["dnsmasq", "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null",
                        "--no-resolv", "--no-hosts", "--bind-interfaces",
                        f"--listen-address={addr}", "--port=53", f"--server={UPSTREAM[0]}#{UPSTREAM[1]}",
                        "--cache-size=10000", f"--pid-file={t}/dnsmasq.pid"]
            else:
                conf = os.path.join(t, "unbound.conf")
                with open(conf, "w") as f:
                    f.write(
                    f"""server:
    interface: {addr}
    port: 53
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{t}"
    pidfile: "{t}/unbound.pid"
    use-syslog: no
    logfile: ""
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "iterator"
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: {UPSTREAM[0]}@{UPSTREAM[1]}
"""
                )
                argv = ["unbound", "-d", "-c", conf]
            p = self.spawn(name, argv)
            self.wait_udp(addr, 53, name, p)

    def stop(self):
        for name, p in self.procs.items():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in self.logs:
            f.close()

    # --- measurements ----------------------------------------------------
    def counters(self):
        out = json.loads(ns_exec(self.ns, "nft", "-j", "list", "counters", "table", "inet", "dbench").stdout)
        got = {}
        for item in out["nftables"]:
            c = item.get("counter")
            if c:
                got[c["name"]] = c["packets"]
        return got["up_udp"], got["up_tcp"]

    def dnsperf(self, name, datafile, *extra):
        addr = FORWARDERS[name]
        r = ns_exec(self.ns, "dnsperf", "-s", addr, "-d", datafile, "-T", "1", *extra, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"dnsperf against {name} failed:\n{r.stdout}\n{r.stderr}")
        return r.stdout

    def pid(self, name):
        return self.procs[name].pid

    def run(self):
        a, t = self.a, self.tmp
        hit = os.path.join(t, "hit.txt")
        miss = os.path.join(t, "miss.txt")
        with open(hit, "w") as f:
            f.writelines(f"h{i}.bench A\n" for i in range(1, HIT_NAMES + 1))
        with open(miss, "w") as f:
            f.writelines(f"m{i}.bench A\n" for i in range(1, MISS_NAMES + 1))
        self.setup()
        time.sleep(2)
        res = {n: {"qps": [], "q_per_cpu_s": [], "full_p99_ms": [], "full_p50_ms": [], "p99_ms": [], "p50_ms": [],
                   "lost": [], "lat_lost": []}
               for n in a.forwarders}
        for n in a.forwarders:
            res[n]["rss_idle"], res[n]["procs"] = rss_kib(self.pid(n))
            res[n]["rss_idle_each"] = rss_each(self.pid(n))
        # Fill every cache with the hit names (one query each, paced).
        for n in a.forwarders:
            parse_dnsperf(self.dnsperf(n, hit, "-n", "1", "-Q", str(a.miss_rate)))
        time.sleep(1)
        for n in a.forwarders:
            res[n]["rss_filled_each"] = rss_each(self.pid(n))
        order = list(a.forwarders)
        for run in range(a.runs):
            for n in order:
                before = cpu_seconds(self.pid(n))
                # -v (a line per query) costs dnsperf little: the
                # throughput measured with and without it is the same
                # within this machine's noise (docs/benchmarks.md).
                full = self.dnsperf(n, hit, "-l", str(a.duration), "-c", "8", "-v")
                used = cpu_seconds(self.pid(n)) - before
                s = parse_dnsperf(full)
                lat = parse_latencies(full)
                del full
                res[n]["full_p99_ms"].append(percentile(lat, 0.99) * 1000 if lat else None)
                res[n]["full_p50_ms"].append(percentile(lat, 0.50) * 1000 if lat else None)
                res[n]["qps"].append(s["qps"])
                res[n]["lost"].append(s["lost"])
                res[n]["q_per_cpu_s"].append(s["completed"] / used if used > 0 else None)
                out = self.dnsperf(n, hit, "-l", str(a.latency_duration), "-c", "8", "-Q", str(a.rate), "-v")
                lat = parse_latencies(out)
                s2 = parse_dnsperf(out)
                res[n]["lat_lost"].append(s2["lost"])
                res[n]["p99_ms"].append(percentile(lat, 0.99) * 1000 if lat else None)
                res[n]["p50_ms"].append(percentile(lat, 0.50) * 1000 if lat else None)
                log(f"run {run + 1}/{a.runs} {n}: {s['qps']:.0f} q/s (p99 {res[n]['full_p99_ms'][-1] or 0:.3f} ms), "
                    f"{res[n]['q_per_cpu_s'][-1] or 0:.0f} q/CPU-s, p99 {res[n]['p99_ms'][-1] or 0:.3f} ms "
                    f"at {a.rate} q/s, lost {s['lost']}+{s2['lost']}")
            order = order[1:] + order[:1]
        for n in a.forwarders:
            res[n]["rss_loaded_each"] = rss_each(self.pid(n))
        # Cache misses: every name new to every cache.
        for n in a.forwarders:
            u0, t0 = self.counters()
            s = parse_dnsperf(self.dnsperf(n, miss, "-n", "1", "-Q", str(a.miss_rate), "-c", "8"))
            u1, t1 = self.counters()
            res[n]["miss"] = {"sent": s["sent"], "completed": s["completed"], "lost": s["lost"],
                              "upstream_udp": u1 - u0, "upstream_tcp": t1 - t0}
            log(f"miss {n}: {s['completed']}/{s['sent']} answered, {u1 - u0} upstream UDP, {t1 - t0} TCP")
        time.sleep(1)
        for n in a.forwarders:
            res[n]["rss_cached"], _ = rss_kib(self.pid(n))
            res[n]["rss_cached_each"] = rss_each(self.pid(n))
        if "mirage-dns" in a.forwarders:
            try:
                st = json.loads(read(os.path.join(t, "dns-run", "status.json")))
                res["mirage-dns"]["status"] = {k: st["engine"].get(k) for k in
                                               ("queries", "cache_hits", "cache_entries", "cache_bytes",
                                                "upstream_queries", "servfail")}
                res["mirage-dns"]["status"]["network_refused"] = st["network"].get("refused")
            except (OSError, KeyError, ValueError) as e:
                log(f"mirage-dns status.json: {e}")
        for n, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{n} exited during the run (status {p.returncode})")
        return res


# --- report --------------------------------------------------------------
def fmt(v, digits=0):
    if v is None:
        return "-"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(v, base):
    if v is None or not base:
        return ""
    return f" ({v / base:.2f}x)"


def version_of(name, mirage):
    try:
        if name == "mirage-dns":
            return sh(mirage, "--version").stdout.strip()
        if name == "dnsmasq":
            return sh("dnsmasq", "--version").stdout.splitlines()[0].split("  ")[0]
        if name == "unbound":
            return sh("unbound", "-V").stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        pass
    return name


def binary(name, mirage):
    path = mirage if name == "mirage-dns" else shutil.which(name) or f"/usr/sbin/{name}"
    size = os.path.getsize(path)
    static = "static" in sh("file", "-L", path, check=False).stdout
    return size, static


def report(a, res):
    names = a.forwarders
    base = "mirage-dns" if "mirage-dns" in names else names[0]
    med = {n: {k: median(res[n][k]) for k in ("qps", "q_per_cpu_s", "full_p99_ms", "full_p50_ms", "p99_ms", "p50_ms")} for n in names}
    sizes = {n: binary(n, a.mirage) for n in names}
    load = read("/proc/loadavg").split()[:3]
    lines = []
    lines.append(f"Command: `{a.command}` ({a.runs} runs; {a.duration} s at full speed and "
                 f"{a.latency_duration} s at {a.rate:,} queries/s per forwarder and run; "
                 f"{MISS_NAMES:,} cache misses at {a.miss_rate:,}/s).")
    lines.append("")
    uname = os.uname()
    cpus = os.cpu_count()
    lines.append(f"Date: {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}. Machine: {cpus} CPUs, kernel "
                 f"{uname.release}; load average {a.load_before} before, {' '.join(load)} after. "
                 "The machine is a virtual machine on a shared host: a run can be slower for every "
                 "forwarder alike (the per-run lines the script prints show it); the forwarders took "
                 "turns, so the medians and ratios are fairer than any one run.")
    lines.append("")
    lines.append("Upstream: " + sh("nsd", "-v", check=False).stderr.splitlines()[0] +
                 f" on 127.0.0.1:5300, zone `bench.` (TTL 3600). Forwarders: " +
                 ", ".join(f"{n} ({version_of(n, a.mirage)})" for n in names) + ".")
    lines.append("")
    lines.append("| forwarder | cache hits, queries/s | p99 ms at full speed (p50) | p99 ms at "
                 f"{a.rate:,}/s (p50) | queries per CPU-second | upstream queries per miss "
                 "| summed RSS KiB idle | with "
                 f"{HIT_NAMES + MISS_NAMES:,} names cached | binary KiB |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in names:
        m, r = med[n], res[n]
        miss = r["miss"]
        per_miss = (miss["upstream_udp"] + miss["upstream_tcp"]) / miss["sent"] if miss["sent"] else None
        size, static = sizes[n]
        b = med[base]
        row = [
            n,
            fmt(m["qps"]) + ("" if n == base else ratio(m["qps"], b["qps"])),
            (fmt(m["full_p99_ms"], 3) + ("" if n == base else ratio(m["full_p99_ms"], b["full_p99_ms"]))
             + f" ({fmt(m['full_p50_ms'], 3)})"),
            (fmt(m["p99_ms"], 3) + ("" if n == base else ratio(m["p99_ms"], b["p99_ms"]))
             + f" ({fmt(m['p50_ms'], 3)})"),
            fmt(m["q_per_cpu_s"]) + ("" if n == base else ratio(m["q_per_cpu_s"], b["q_per_cpu_s"])),
            fmt(per_miss, 3),
            fmt(r["rss_idle"]) + ("" if n == base else ratio(r["rss_idle"], res[base]["rss_idle"])),
            fmt(r["rss_cached"]) + ("" if n == base else ratio(r["rss_cached"], res[base]["rss_cached"])),
            fmt(size / 1024) + ("" if static else " (dynamic)")
            + ("" if n == base else ratio(size, sizes[base][0])),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"Medians over the runs; (Nx) is the peer's figure divided by {base}'s. "
                 "Processes summed: " + ", ".join(f"{n} {res[n]['procs']}" for n in names) + ". "
                 "Queries lost (full speed / fixed rate, summed over runs): " +
                 ", ".join(f"{n} {sum(res[n]['lost'])} / {sum(res[n]['lat_lost'])}" for n in names) + ". "
                 "Cache-miss run, answered of sent: " +
                 ", ".join(f"{n} {res[n]['miss']['completed']:,}/{res[n]['miss']['sent']:,} "
                           f"(UDP {res[n]['miss']['upstream_udp']:,}, TCP {res[n]['miss']['upstream_tcp']})"
                           for n in names) + ".")
    if "mirage-dns" in names:
        r = res["mirage-dns"]
        lines.append("")
        lines.append(f"mirage-dns's processes, VmRSS KiB idle / {HIT_NAMES:,} names cached / after the "
                     f"cache-hit runs / {HIT_NAMES + MISS_NAMES:,} names cached: " + ", ".join(
                         f"{k} " + " / ".join(fmt(r[f"rss_{w}_each"].get(k))
                                              for w in ("idle", "filled", "loaded", "cached"))
                         for k in sorted(r["rss_cached_each"])) + ".")
    if "status" in res.get("mirage-dns", {}):
        lines.append("")
        lines.append(f"mirage-dns's own status.json at the end: `{json.dumps(res['mirage-dns']['status'])}`.")
    if base == "mirage-dns" and {"dnsmasq", "unbound"} <= set(names):
        m, d, u = med["mirage-dns"], med["dnsmasq"], med["unbound"]
        r = res["mirage-dns"]

        def verdict(ok):
            return "met" if ok else "**missed**"

        lines.append("")
        lines.append("Goals (mirage-dns, from the issue):")
        lines.append("")
        lines.append(f"- more cache-hit queries/s than dnsmasq and unbound: "
                     f"{verdict(m['qps'] > d['qps'] and m['qps'] > u['qps'])} "
                     f"({fmt(m['qps'])} vs {fmt(d['qps'])} and {fmt(u['qps'])})")
        lines.append(f"- p99 latency no higher than theirs, in the cache-hit run at full speed: "
                     f"{verdict(m['full_p99_ms'] <= d['full_p99_ms'] and m['full_p99_ms'] <= u['full_p99_ms'])} "
                     f"({fmt(m['full_p99_ms'], 3)} ms vs {fmt(d['full_p99_ms'], 3)} and "
                     f"{fmt(u['full_p99_ms'], 3)})")
        lines.append(f"- (not a goal of the issue; reported) p99 at {a.rate:,} queries/s no higher than "
                     f"theirs: {verdict(m['p99_ms'] <= d['p99_ms'] and m['p99_ms'] <= u['p99_ms'])} "
                     f"({fmt(m['p99_ms'], 3)} ms vs {fmt(d['p99_ms'], 3)} and {fmt(u['p99_ms'], 3)})")
        lines.append(f"- summed RSS below dnsmasq's (about 6 MB): "
                     f"{verdict(r['rss_cached'] < res['dnsmasq']['rss_cached'] and r['rss_cached'] < 6 * 1024)} "
                     f"({fmt(r['rss_idle'])} KiB idle, {fmt(r['rss_cached'])} KiB cached; dnsmasq "
                     f"{fmt(res['dnsmasq']['rss_idle'])} and {fmt(res['dnsmasq']['rss_cached'])})")
        lines.append(f"- binary under 1.5 MiB: {verdict(sizes['mirage-dns'][0] < 1.5 * 1024 * 1024)} "
                     f"({fmt(sizes['mirage-dns'][0] / 1024)} KiB)")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, required=True)
    p.add_argument("--duration", type=int, required=True)
    p.add_argument("--latency-duration", type=int, required=True)
    p.add_argument("--rate", type=int, required=True)
    p.add_argument("--miss-rate", type=int, required=True)
    p.add_argument("--forwarders", required=True)
    p.add_argument("--mirage", required=True)
    p.add_argument("--sandbox", default="seccomp", choices=["seccomp", "kvm", "auto"])
    p.add_argument("--mirage-config", default="/dev/null")
    p.add_argument("--command", required=True)
    p.add_argument("--tmp", required=True)
    p.add_argument("--ns", default=f"dbench-{os.getpid() % 100000}")
    p.add_argument("--json")
    p.add_argument("--write-docs")
    a = p.parse_args()
    a.forwarders = [f for f in a.forwarders.split(",") if f]
    for f in a.forwarders:
        if f not in FORWARDERS:
            log(f"unknown forwarder {f}: one of {', '.join(FORWARDERS)}")
            return 2
    a.load_before = " ".join(read("/proc/loadavg").split()[:3])
    b = Bench(a)
    try:
        res = b.run()
    finally:
        b.stop()
        subprocess.run(["ip", "netns", "del", b.ns], capture_output=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    text = report(a, res)
    print(text)
    if a.write_docs:
        doc = read(a.write_docs)
        begin, end = "<!-- bench-dns:begin -->", "<!-- bench-dns:end -->"
        if begin not in doc or end not in doc:
            log(f"{a.write_docs} has no {begin} ... {end} markers")
            return 1
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        with open(a.write_docs, "w") as f:
            f.write(head + begin + "\n" + text + end + tail)
        log(f"wrote the results into {a.write_docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
