#!/usr/bin/env python3
"""Time mirage-ntp from its start to its first NTP exchange, per sandbox.

Runs as root on a machine with chronyd. It creates a network namespace,
starts `chronyd -x` (it never touches the clock) serving on that namespace's
loopback, and then, round-robin over the sandboxes asked for, starts

    mirage-ntp run --server 127.0.0.1 --observe --sandbox S

in the namespace (`--observe`: the clock is never touched either). A packet
socket on the namespace's loopback, open before the start, stamps the first
request to port 123 and the first reply from it (CLOCK_MONOTONIC, from the
moment before the binary is started). The engine makes its first estimate
from that first reply (docs/ntp.md: a burst at start, "the first estimate
comes after one round trip"); the run then waits for status.json to show an
offset, which checks that an estimate was made (it is not timed: the status
is written at most every 500 ms). With `kvm` the time includes the
supervisor's probe (a guest booted once) and the engine's VM build.

Prints a Markdown table (median, min, max in ms) and the probe times the
supervisor logged. Every wait is bounded; the namespace and chronyd are
removed at the end, also on failure.

usage: scripts/bench/ntp_start.py [--bin PATH] [--runs N] [--sandboxes seccomp,kvm]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
NTP_PORT = 123
WAIT_S = 15.0


def ntp_ports(frame: bytes) -> tuple[int, int] | None:
    """The UDP ports of an IPv4 frame seen on loopback, else None."""
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != 17 or len(ip) < ihl + 8:
        return None
    return struct.unpack("!HH", ip[ihl : ihl + 4])


def wait_for_server(deadline: float) -> None:
    """Until chronyd answers a client request on 127.0.0.1:123."""
    request = b"\x23" + bytes(47)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(request, ("127.0.0.1", NTP_PORT))
            try:
                if len(s.recv(512)) >= 48:
                    return
            except socket.timeout:
                pass
    raise SystemExit("ntp_start: chronyd did not answer")


def one_run(binary: str, sandbox: str, sniff: socket.socket) -> dict:
    """One start of the client: its first request and reply, in ms."""
    while select.select([sniff], [], [], 0)[0]:
        sniff.recv(65536)
    work = tempfile.mkdtemp(prefix="mirage-ntp-start-")
    log_path = os.path.join(work, "ntp.log")
    record = {"sandbox": sandbox, "request_ms": None, "reply_ms": None, "estimate": False}
    with open(log_path, "wb") as log:
        t0 = time.monotonic()
        client = subprocess.Popen(
            [binary, "run", "--server", "127.0.0.1", "--observe", "--config", "/dev/null"]
            + ["--sandbox", sandbox, "--log-level", "info"]
            + ["--state-dir", os.path.join(work, "state"), "--run-dir", os.path.join(work, "run")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = t0 + WAIT_S
            while record["reply_ms"] is None and time.monotonic() < deadline:
                if not select.select([sniff], [], [], 0.1)[0]:
                    continue
                frame, addr = sniff.recvfrom(65536)
                at = time.monotonic()
                ports = ntp_ports(frame)
                if addr[2] != PACKET_OUTGOING or ports is None:
                    continue
                if ports[1] == NTP_PORT and record["request_ms"] is None:
                    record["request_ms"] = (at - t0) * 1000
                elif ports[0] == NTP_PORT and record["request_ms"] is not None:
                    record["reply_ms"] = (at - t0) * 1000
            status_path = os.path.join(work, "run", "status.json")
            while time.monotonic() < deadline and not record["estimate"]:
                try:
                    with open(status_path) as f:
                        record["estimate"] = json.load(f).get("offset_ms") is not None
                except (OSError, ValueError):
                    pass
                time.sleep(0.05)
        finally:
            client.send_signal(signal.SIGTERM)
            try:
                client.wait(10)
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait()
    with open(log_path, errors="replace") as f:
        text = f.read()
    probe = re.search(r"answered in (\d+) us", text)
    record["probe_us"] = int(probe.group(1)) if probe else None
    in_force = re.search(r"sandbox (\w+):", text)
    record["in_force"] = in_force.group(1) if in_force else None
    if record["reply_ms"] is None or not record["estimate"] or record["in_force"] != sandbox:
        record["log"] = text
    shutil.rmtree(work, ignore_errors=True)
    return record


def inner(args: argparse.Namespace) -> None:
    """In the namespace: the runs, one JSON record a line."""
    wait_for_server(time.monotonic() + 20)
    sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sniff.bind(("lo", 0))
    for _ in range(args.runs):
        for sandbox in args.sandboxes.split(","):
            print(json.dumps(one_run(args.bin, sandbox, sniff)), flush=True)


def summary(records: list[dict]) -> str:
    lines = [
        "| sandbox | runs | first request ms (median, min, max) | first reply ms (median, min, max) | probe us (median) |",
        "| --- | ---: | --- | --- | ---: |",
    ]
    for sandbox in dict.fromkeys(r["sandbox"] for r in records):
        rs = [r for r in records if r["sandbox"] == sandbox]

        def three(key: str) -> str:
            v = [r[key] for r in rs]
            return f"{statistics.median(v):.1f}, {min(v):.1f}, {max(v):.1f}"

        probes = [r["probe_us"] for r in rs if r["probe_us"] is not None]
        probe = f"{statistics.median(probes):.0f}" if probes else "-"
        lines.append(f"| {sandbox} | {len(rs)} | {three('request_ms')} | {three('reply_ms')} | {probe} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default="target/dist/mirage-ntp")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--sandboxes", default="seccomp,kvm")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.bin = os.path.abspath(args.bin)
    if args.inner:
        inner(args)
        return
    if os.geteuid() != 0:
        raise SystemExit("ntp_start: run as root (namespaces)")
    ns = f"mirage-ntp-start-{os.getpid()}"
    work = tempfile.mkdtemp(prefix="mirage-ntp-chrony-")
    conf = os.path.join(work, "chrony.conf")
    with open(conf, "w") as f:
        f.write(
            f"allow all\nlocal stratum 8\nport {NTP_PORT}\ncmdport 0\n"
            f"pidfile {work}/chronyd.pid\ndriftfile {work}/chrony.drift\n"
        )
    subprocess.run(["ip", "netns", "add", ns], check=True)
    chronyd = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        chronyd = subprocess.Popen(
            ["ip", "netns", "exec", ns, "chronyd", "-x", "-d", "-u", "root", "-f", conf],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        me = [sys.executable, os.path.abspath(__file__), "--inner", "--bin", args.bin]
        me += ["--runs", str(args.runs), "--sandboxes", args.sandboxes]
        timeout = 60 + args.runs * len(args.sandboxes.split(",")) * 2 * WAIT_S
        out = subprocess.run(
            ["ip", "netns", "exec", ns] + me, check=True, capture_output=True, text=True, timeout=timeout
        ).stdout
    finally:
        if chronyd is not None:
            chronyd.terminate()
            try:
                chronyd.wait(10)
            except subprocess.TimeoutExpired:
                chronyd.kill()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(work, ignore_errors=True)
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    failed = [r for r in records if "log" in r]
    for r in failed:
        print(f"ntp_start: a {r['sandbox']} run failed:\n{r['log']}", file=sys.stderr)
    print(summary([r for r in records if "log" not in r]))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
