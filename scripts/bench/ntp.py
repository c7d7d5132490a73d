#!/usr/bin/env python3
"""Side-by-side NTP client benchmark (run by scripts/bench-ntp.sh; see
docs/benchmarks.md, "NTP clients").

Each run: a server namespace with K chronyd -x servers (one address each on
the server namespace's loopback), and one client namespace per client, linked to it by a veth
pair. The clients start at the same moment and run for the same time:

  mirage-ntp  run --observe (never touches the clock)
  chronyd     -x (never touches the clock), client only (port 0, cmdport 0)
  busybox     ntpd -w (query only, never sets the clock)

Measured per client and run:
  first_s     seconds from the client's start to its first synchronised
              estimate (mirage-ntp: status.json shows state "observing";
              chronyd: its "Selected source" log line; busybox: the reply that
              makes a server fit for its selection, the second from the same
              server, since busybox prints nothing on selection with -w)
  first_req   requests per server sent until then (nft counters in the
              client's namespace, on the output hook)
  error_us    the estimate's error: all servers serve this host's clock,
              so the true offset is 0 and the error is |offset| (mirage-ntp:
              status.json offset_ms; chronyd: the Offset of its tracking log;
              busybox: the offset of each reply, it has no combined
              estimate with -w); median over the steady window
  req_h       requests per server per hour in the steady window (from
              --steady-after s after start to the end), scaled to an hour
  rss_kib     summed VmRSS of every process of the client at the end
  poll_start, poll_end
              the poll in seconds (median over the servers) at the start of
              the steady window and at the end (mirage-ntp: status.json's
              poll_s per source; chronyd: the local poll of its
              measurements log; busybox: not measured)
Binary sizes are measured once.

--poll MIN:MAX sets the poll bounds (log2 s) of mirage-ntp (min_poll and
max_poll in its config file) and chronyd (minpoll and maxpoll on each
server line). busybox ntpd has no such option (its bounds are built in:
2^5 s at least; with -w it stays there), so it runs as ever and the report
says so.
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

CLIENTS = ["mirage-ntp", "chronyd", "busybox-ntpd"]
# busybox ntpd's own bounds (networking/ntpd.c MINPOLL and MAXPOLL).
BUSYBOX_POLL = (5, 12)


def parse_poll(text):
    """--poll MIN:MAX as (MIN, MAX), log2 s, within mirage-ntp's range
    (4..=17) and ordered; ValueError otherwise."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--poll {text}: want MIN:MAX (log2 s), e.g. 4:7")
    lo, hi = int(parts[0]), int(parts[1])
    if not (4 <= lo <= hi <= 17):
        raise ValueError(f"--poll {text}: want 4 <= MIN <= MAX <= 17")
    return lo, hi


def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def ns_exec(ns, *args, check=True):
    return sh("ip", "netns", "exec", ns, *args, check=check)


def log(msg):
    print(f"bench-ntp: {msg}", file=sys.stderr, flush=True)


class Lines(threading.Thread):
    """Reads a process's output, stamping each line on arrival."""

    def __init__(self, stream, path):
        super().__init__(daemon=True)
        self.stream = stream
        self.lines = []  # (monotonic, text)
        self.file = open(path, "w")
        self.lock = threading.Lock()

    def run(self):
        for raw in self.stream:
            now = time.monotonic()
            text = raw.decode(errors="replace").rstrip("\n")
            with self.lock:
                self.lines.append((now, text))
            self.file.write(f"{now:.6f} {text}\n")
        self.file.flush()

    def snapshot(self):
        with self.lock:
            return list(self.lines)


def tree(root):
    """root and its descendants (from /proc)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return out


def rss_kib(root):
    total, names = 0, []
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                st = f.read()
        except OSError:
            continue
        m = re.search(r"^VmRSS:\s+(\d+) kB", st, re.M)
        if m:
            total += int(m.group(1))
            names.append(re.search(r"^Name:\s+(\S+)", st, re.M).group(1))
    return total, names


class Run:
    def __init__(self, args, index, tmp):
        self.args = args
        self.index = index
        self.tmp = os.path.join(tmp, f"run{index}")
        os.makedirs(self.tmp)
        self.tag = f"{os.getpid() % 100000}r{index}"
        self.srv = f"nbench-s-{self.tag}"
        self.servers = [f"198.19.0.{i + 1}" for i in range(args.servers)]
        self.namespaces = []
        self.procs = []  # (name, Popen)

    # --- network -------------------------------------------------------------
    def setup(self):
        self.add_ns(self.srv)
        ip = lambda *a: sh("ip", "-n", self.srv, *a)
        # The servers' addresses on the namespace's loopback: local
        # addresses, reached from every client's veth (no dummy link
        # needed, which some kernels lack).
        for s in self.servers:
            ip("addr", "add", f"{s}/32", "dev", "lo")
        for s in self.servers:
            conf = os.path.join(self.tmp, f"server-{s}.conf")
            with open(conf, "w") as f:
                f.write(
                    f"allow all\nlocal stratum 8\nbindaddress {s}\nport 123\ncmdport 0\n"
                    f"pidfile {self.tmp}/server-{s}.pid\n"
                )
            self.spawn(f"server-{s}", self.srv, ["chronyd", "-x", "-d", "-u", "root", "-f", conf])
        for k, client in enumerate(self.args.clients):
            ns = f"nbench-c{k}-{self.tag}"
            self.add_ns(ns)
            sh("ip", "-n", self.srv, "link", "add", f"v{k}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", self.srv, "addr", "add", f"198.18.{k}.1/24", "dev", f"v{k}")
            sh("ip", "-n", self.srv, "link", "set", f"v{k}", "up")
            sh("ip", "-n", ns, "addr", "add", f"198.18.{k}.2/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", f"198.18.{k}.1")
            rules = "".join(
                f"add rule inet bench out ip daddr {s} udp dport 123 counter\n" for s in self.servers
            )
            nft = "add table inet bench\nadd chain inet bench out { type filter hook output priority 0; }\n" + rules
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=nft, text=True, check=True)
        # Servers answer before any client starts.
        deadline = time.monotonic() + 20
        while True:
            listening = ns_exec(self.srv, "ss", "-Hlun", "sport = :123").stdout
            if all(f"{s}:123" in listening for s in self.servers):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"chronyd servers not listening: {listening}")
            time.sleep(0.05)
        # Links up with carrier everywhere, then one quiet moment.
        time.sleep(0.5)

    def add_ns(self, ns):
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        ns_exec(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        sh("ip", "-n", ns, "link", "set", "lo", "up")

    def spawn(self, name, ns, argv):
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns] + argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        lines = Lines(p.stdout, os.path.join(self.tmp, f"{name}.log"))
        lines.start()
        self.procs.append((name, p))
        return p, lines

    def counters(self, k):
        ns = f"nbench-c{k}-{self.tag}"
        doc = json.loads(ns_exec(ns, "nft", "-j", "list", "table", "inet", "bench").stdout)
        return parse_counters(doc, self.servers)

    def teardown(self):
        for _, p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        for _, p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for ns in reversed(self.namespaces):
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)

    # --- clients ---------------------------------------------------------------
    def start_client(self, k, client):
        ns = f"nbench-c{k}-{self.tag}"
        d = os.path.join(self.tmp, client)
        os.makedirs(d)
        if client == "mirage-ntp":
            config = "/dev/null"
            if self.args.poll:
                config = os.path.join(d, "config.toml")
                with open(config, "w") as f:
                    f.write(f"min_poll = {self.args.poll[0]}\nmax_poll = {self.args.poll[1]}\n")
            argv = [self.args.mirage, "run", "--observe", "--config", config]
            for s in self.servers:
                argv += ["--server", s]
            argv += ["--state-dir", f"{d}/state", "--run-dir", f"{d}/run"]
        elif client == "chronyd":
            conf = os.path.join(d, "chrony.conf")
            with open(conf, "w") as f:
                bounds = f" minpoll {self.args.poll[0]} maxpoll {self.args.poll[1]}" if self.args.poll else ""
                for s in self.servers:
                    f.write(f"server {s} iburst{bounds}\n")
                f.write(f"port 0\ncmdport 0\npidfile {d}/chronyd.pid\nlogdir {d}\nlog tracking measurements\n")
            argv = ["chronyd", "-x", "-d", "-u", "root", "-f", conf]
        else:
            argv = [self.args.busybox, "ntpd", "-w", "-d"]
            for s in self.servers:
                argv += ["-p", s]
        t0 = time.monotonic()
        p, lines = self.spawn(client, ns, argv)
        return {"client": client, "k": k, "dir": d, "t0": t0, "proc": p, "lines": lines}

    def first_estimate(self, c, now):
        """The time of the client's first synchronised estimate, or None."""
        if c["client"] == "mirage-ntp":
            st = read_json(os.path.join(c["dir"], "run", "status.json"))
            if st and st.get("state") in ("observing", "synchronized"):
                return now
            return None
        lines = c["lines"].snapshot()
        if c["client"] == "chronyd":
            return chrony_first(lines)
        return busybox_first(lines)

    def offsets_us(self, c, since):
        """The client's offset estimates in the steady window, in us."""
        if c["client"] == "mirage-ntp":
            return c.get("mirage_offsets", [])
        if c["client"] == "chronyd":
            path = os.path.join(c["dir"], "tracking.log")
            text = open(path).read() if os.path.exists(path) else ""
            wall_since = c["wall_t0"] + (since - c["t0"])
            return [v for (t, v) in chrony_tracking_offsets(text) if t >= wall_since - 1]
        vals = []
        for t, text in c["lines"].snapshot():
            m = re.search(r"reply from \S+: offset:([-+]?[0-9.]+)", text)
            if m and t >= since:
                vals.append(float(m.group(1)) * 1e6)
        return vals

    def polls_s(self, c):
        """The client's current poll per server, in s (None: not known)."""
        if c["client"] == "mirage-ntp":
            st = read_json(os.path.join(c["dir"], "run", "status.json"))
            if not st:
                return None
            polls = [s.get("poll_s") for s in st.get("sources", [])]
            return [p for p in polls if p is not None] or None
        if c["client"] == "chronyd":
            path = os.path.join(c["dir"], "measurements.log")
            text = open(path).read() if os.path.exists(path) else ""
            last = chrony_local_polls(text)
            return [2 ** last[s] for s in self.servers if s in last] or None
        return None

    def measure(self):
        self.setup()
        clients = []
        for k, client in enumerate(self.args.clients):
            c = self.start_client(k, client)
            c["wall_t0"] = time.time()
            clients.append(c)
        end = min(c["t0"] for c in clients) + self.args.duration
        steady_from = {id(c): c["t0"] + self.args.steady_after for c in clients}
        for c in clients:
            c["first"] = None
            c["steady_count"] = None
        while True:
            now = time.monotonic()
            if now >= end:
                break
            for c in clients:
                if c["first"] is None:
                    t = self.first_estimate(c, now)
                    if t is not None:
                        c["first"] = t - c["t0"]
                        c["first_req"] = self.counters(c["k"])
                if c["steady_count"] is None and now >= steady_from[id(c)]:
                    c["steady_count"] = (now, self.counters(c["k"]))
                    c["poll_start"] = self.polls_s(c)
                if c["client"] == "mirage-ntp" and now >= steady_from[id(c)]:
                    # One sample a second.
                    last = c.get("last_sample", 0)
                    if now - last >= 1:
                        c["last_sample"] = now
                        st = read_json(os.path.join(c["dir"], "run", "status.json"))
                        if st and st.get("offset_ms") is not None and st.get("state") == "observing":
                            c.setdefault("mirage_offsets", []).append(st["offset_ms"] * 1e3)
                if c["proc"].poll() is not None and not c.get("exited"):
                    c["exited"] = True
                    log(f"run {self.index}: {c['client']} exited with {c['proc'].returncode}")
            time.sleep(0.01 if any(c["first"] is None for c in clients) else 0.2)
        results = []
        now = time.monotonic()
        for c in clients:
            rss, names = rss_kib(c["proc"].pid)
            final = self.counters(c["k"])
            r = {"client": c["client"], "run": self.index, "rss_kib": rss, "processes": names}
            if c["first"] is not None:
                r["first_s"] = c["first"]
                r["first_req"] = statistics.median(c["first_req"])
            if c["steady_count"] is not None:
                t, counts = c["steady_count"]
                per_server = [f - s for f, s in zip(final, counts)]
                r["req_h"] = statistics.median(per_server) * 3600 / (now - t)
                r["steady_s"] = now - t
            offs = self.offsets_us(c, steady_from[id(c)])
            if offs:
                r["error_us"] = statistics.median(abs(v) for v in offs)
                r["error_samples"] = len(offs)
            for key, polls in (("poll_start", c.get("poll_start")), ("poll_end", self.polls_s(c))):
                if polls:
                    r[key] = statistics.median(polls)
            if c.get("exited"):
                r["exited"] = c["proc"].returncode
            results.append(r)
        return results


def parse_counters(doc, servers):
    """Packets per server, in `servers` order, from `nft -j list table`."""
    got = {}
    for item in doc["nftables"]:
        rule = item.get("rule")
        if not rule:
            continue
        dst, packets = None, None
        for e in rule["expr"]:
            if "match" in e and e["match"]["left"].get("payload", {}).get("field") == "daddr":
                dst = e["match"]["right"]
            if "counter" in e:
                packets = e["counter"]["packets"]
        got[dst] = packets
    return [got[s] for s in servers]


def chrony_first(lines):
    """chronyd's first synchronised estimate: its "Selected source" line."""
    for t, text in lines:
        if "Selected source" in text:
            return t
    return None


def busybox_first(lines):
    """busybox ntpd's first synchronised estimate. With -w it prints nothing
    when it selects, and its fit() takes a server once two replies from it
    are in (two bits in its reach register): the second reply from any one
    server is the moment."""
    seen = {}
    for t, text in lines:
        m = re.search(r"reply from (\S+): offset", text)
        if m:
            seen[m.group(1)] = seen.get(m.group(1), 0) + 1
            if seen[m.group(1)] >= 2:
                return t
    return None


def chrony_tracking_offsets(text):
    """(seconds since the epoch, offset in us) of each line of a chronyd
    tracking log (Date Time IP St Freq Skew Offset ...) but the one it
    writes at start (source 0.0.0.0)."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) > 7 and re.match(r"\d{4}-\d\d-\d\d$", f[0]) and f[2] != "0.0.0.0":
            out.append((parse_utc(f"{f[0]} {f[1]}"), float(f[6]) * 1e6))
    return out


def chrony_local_polls(text):
    """Each server's latest local poll (log2 s) in a chronyd measurements
    log (Date Time IP L St 123 567 ABCD LP RP Score Offset ...)."""
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) > 10 and re.match(r"\d{4}-\d\d-\d\d$", f[0]) and re.match(r"-?\d+$", f[8]):
            out[f[2]] = int(f[8])
    return out


def parse_utc(text):
    import calendar

    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S"))


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=2):
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


GOALS = [
    ("first_s", "under 1 s to the first estimate on a LAN", lambda v: v < 1.0),
    ("error_us", "estimate within 100 us", lambda v: v <= 100.0),
    ("req_h", "no more requests per server per hour than chrony", None),
    ("rss_kib", "summed RSS under 4 MiB", lambda v: v < 4096),
    ("size_kib", "binary under 1.2 MiB", lambda v: v < 1.2 * 1024),
]


def report(args, results, sizes, meta):
    by = {c: [r for r in results if r["client"] == c] for c in args.clients}
    med = {}
    for c, rs in by.items():
        med[c] = {
            key: median(r.get(key) for r in rs)
            for key in ("first_s", "first_req", "error_us", "req_h", "rss_kib", "poll_start", "poll_end")
        }
        med[c]["size_kib"] = sizes[c]["kib"]
        med[c]["runs"] = sum(1 for r in rs if "first_s" in r)
    base = med.get("mirage-ntp", {})
    cols = [
        ("first_s", "first estimate s"),
        ("first_req", "requests/server until then"),
        ("error_us", "estimate error us"),
        ("req_h", "requests/server/hour (scaled)"),
        ("rss_kib", "summed RSS KiB"),
        ("size_kib", "binary KiB"),
    ]
    out = []
    out.append(f"Command: `{meta['command']}` ({args.runs} runs, {args.servers} chronyd -x servers, "
               f"{args.duration} s a run, steady window from {args.steady_after} s to the end, "
               f"so {args.duration - args.steady_after} s scaled to an hour).")
    out.append("")
    out.append(poll_bounds_text(args))
    out.append("")
    out.append(f"Date: {meta['date']}. Machine: {meta['machine']}; load average {meta['load_before']} before, "
               f"{meta['load_after']} after.")
    out.append("")
    out.append(f"Servers: {meta['server']}. Clients: " + ", ".join(f"{c} ({sizes[c]['what']})" for c in args.clients) + ".")
    out.append("")
    out.append("| client | " + " | ".join(h for _, h in cols) + " | runs with an estimate |")
    out.append("| --- | " + " | ".join("---:" for _ in cols) + " | ---: |")
    for c in args.clients:
        cells = []
        for key, _ in cols:
            v = med[c][key]
            cell = fmt(v, 3 if key == "first_s" else 1 if key in ("error_us", "req_h", "first_req") else 0)
            if c != "mirage-ntp" and v is not None and base.get(key):
                cell += f" ({v / base[key]:.2f}x)"
            cells.append(cell)
        out.append(f"| {c} | " + " | ".join(cells) + f" | {med[c]['runs']}/{args.runs} |")
    out.append("")
    out.append("Medians over the runs; (Nx) is the peer's median divided by mirage-ntp's.")
    procs = []
    for c in args.clients:
        names = max((r.get("processes", []) for r in by[c]), key=len, default=[])
        procs.append(f"{c}: {len(names)} ({', '.join(sorted(set(names)))})")
    out.append("Processes in the summed RSS: " + "; ".join(procs) + ".")
    polled = [c for c in args.clients if med[c]["poll_start"] is not None or med[c]["poll_end"] is not None]
    if polled:
        out.append("Poll in s (median over the servers, then over the runs) at the start of the steady window "
                   "and at the end: " + "; ".join(
                       f"{c} {fmt(med[c]['poll_start'], 0)} and {fmt(med[c]['poll_end'], 0)}" for c in polled) + ".")
    exited = [f"{r['client']} run {r['run']} exited {r['exited']}" for r in results if "exited" in r]
    if exited:
        out.append("Exited early: " + "; ".join(exited) + ".")
    out.append("")
    if "mirage-ntp" in med:
        out.append("Goals (mirage-ntp, from the issue):")
        out.append("")
        m = med["mirage-ntp"]
        for key, text, ok in GOALS:
            v = m.get(key)
            if v is None:
                verdict = "not measured"
            elif key == "req_h":
                ch = med.get("chronyd", {}).get("req_h")
                verdict = "not measured (no chronyd row)" if ch is None else (
                    f"{'met' if v <= ch else 'NOT met'} ({fmt(v, 1)} vs chronyd {fmt(ch, 1)})")
            else:
                verdict = f"{'met' if ok(v) else 'NOT met'} ({fmt(v, 3 if key == 'first_s' else 1)})"
            out.append(f"- {text}: {verdict}")
    return "\n".join(out) + "\n"


def poll_bounds_text(args):
    """The poll bounds each client ran with, for the report."""
    poll = getattr(args, "poll", None)
    parts = []
    for c in args.clients:
        if c == "busybox-ntpd":
            lo, hi = BUSYBOX_POLL
            parts.append(f"busybox-ntpd its built-in {lo}:{hi} ({2 ** lo}..{2 ** hi} s; not configurable, "
                         "and with -w it stays at the minimum)")
        elif poll:
            key = "min_poll/max_poll" if c == "mirage-ntp" else "minpoll/maxpoll"
            parts.append(f"{c} {poll[0]}:{poll[1]} ({2 ** poll[0]}..{2 ** poll[1]} s, {key})")
        else:
            parts.append(f"{c} its default 6:10 (64..1024 s)")
    return "Poll bounds (log2 s): " + "; ".join(parts) + "."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--servers", type=int, default=3)
    ap.add_argument("--duration", type=int, default=300)
    ap.add_argument("--steady-after", type=int, default=60)
    ap.add_argument("--clients", default=",".join(CLIENTS))
    ap.add_argument("--poll", default=None, help="MIN:MAX, log2 s")
    ap.add_argument("--mirage", required=True)
    ap.add_argument("--busybox", required=True)
    ap.add_argument("--busybox-what", default="")
    ap.add_argument("--mirage-what", default="")
    ap.add_argument("--command", required=True)
    ap.add_argument("--json")
    ap.add_argument("--write-docs")
    ap.add_argument("--tmp", required=True)
    args = ap.parse_args()
    args.clients = [c for c in args.clients.split(",") if c]
    for c in args.clients:
        if c not in CLIENTS:
            ap.error(f"unknown client {c}: one of {', '.join(CLIENTS)}")
    try:
        args.poll = parse_poll(args.poll) if args.poll else None
    except ValueError as e:
        ap.error(str(e))
    if not 1 <= args.servers <= 16:
        ap.error("--servers: 1..16")
    if not 0 < args.steady_after < args.duration:
        ap.error("--steady-after must be within --duration")

    chronyd = shutil.which("chronyd")
    sizes = {}
    for c in args.clients:
        path = {"mirage-ntp": args.mirage, "chronyd": chronyd, "busybox-ntpd": args.busybox}[c]
        stripped = os.path.join(args.tmp, f"{c}.stripped")
        sh("strip", "-o", stripped, path)
        what = {"mirage-ntp": args.mirage_what, "chronyd": "", "busybox-ntpd": args.busybox_what}[c]
        if c == "chronyd":
            ver = sh("dpkg-query", "-W", "-f", "${Version}", "chrony", check=False).stdout
            what = f"chrony {ver}, dynamic: libraries not counted in its size"
        sizes[c] = {"kib": os.path.getsize(stripped) / 1024, "what": what}

    meta = {
        "command": args.command,
        "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "load_before": " ".join(open("/proc/loadavg").read().split()[:3]),
        "server": "chronyd " + sh("chronyd", "--version").stdout.split()[3] + " -x, local stratum 8",
    }
    cpu = re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read())
    meta["machine"] = f"{os.cpu_count()} CPUs ({cpu.group(1).strip() if cpu else '?'}), kernel {os.uname().release}"

    results = []
    jsonf = open(args.json, "w") if args.json else None
    for i in range(args.runs):
        run = Run(args, i, args.tmp)
        log(f"run {i + 1}/{args.runs} ({args.duration} s)")
        try:
            rs = run.measure()
        finally:
            run.teardown()
        for r in rs:
            log(f"  {r['client']}: first {fmt(r.get('first_s'), 3)} s, {fmt(r.get('first_req'), 1)} req/server, "
                f"error {fmt(r.get('error_us'), 1)} us, {fmt(r.get('req_h'), 1)} req/server/h, RSS {r['rss_kib']} KiB")
            if jsonf:
                jsonf.write(json.dumps(r) + "\n")
        results.extend(rs)
    meta["load_after"] = " ".join(open("/proc/loadavg").read().split()[:3])
    text = report(args, results, sizes, meta)
    print(text)
    if args.write_docs:
        doc = open(args.write_docs).read()
        begin, end = "<!-- bench-ntp:begin -->", "<!-- bench-ntp:end -->"
        if begin not in doc or end not in doc:
            log(f"{args.write_docs} has no {begin} ... {end} markers")
            return 1
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        with open(args.write_docs, "w") as f:
            f.write(head + begin + "\n" + text + end + tail)
        log(f"wrote the results into {args.write_docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
