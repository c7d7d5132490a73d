#!/usr/bin/env python3
"""Tests of the benchmark tools: python3 -m unittest discover -s scripts/bench -v

The parsing and statistics tests run anywhere. The MeasureInNamespace tests
need root (they create a network namespace and a veth pair, and send no
traffic at all); CI runs as root. They are reported as skipped, with the
reason, when not root.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import measure  # noqa: E402
import ntp_start  # noqa: E402
import report  # noqa: E402


def nlmsg(kind: int, payload: bytes, flags: int = 0) -> bytes:
    raw = measure.NLMSG_HDR.pack(measure.NLMSG_HDR.size + len(payload), kind, flags, 0, 0) + payload
    return raw + b"\0" * (measure.align4(len(raw)) - len(raw))


def newaddr(index: int, addr: str, prefixlen: int, local: str | None = None) -> bytes:
    body = measure.IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, 0, index)
    body += measure.nl_attr(measure.IFA_ADDRESS, socket.inet_aton(addr))
    if local:
        body += measure.nl_attr(measure.IFA_LOCAL, socket.inet_aton(local))
    return body


def taskstats_record(tid: int, ppid: int, kib: int, comm: bytes, version: int = 13, tgid: int = 0) -> bytes:
    stats = bytearray(416 if version >= 12 else 360)
    struct.pack_into("=H", stats, measure.TS_VERSION_OFF, version)
    stats[measure.TS_COMM_OFF : measure.TS_COMM_OFF + len(comm)] = comm
    struct.pack_into("=II", stats, measure.TS_PID_OFF, tid, ppid)
    struct.pack_into("=Q", stats, measure.TS_HIWATER_OFF, kib)
    if version >= 12:
        struct.pack_into("=I", stats, measure.TS_TGID_OFF, tgid or tid)
    inner = measure.nl_attr(measure.TASKSTATS_TYPE_PID, struct.pack("=I", tid))
    inner += measure.nl_attr(measure.TASKSTATS_TYPE_STATS, bytes(stats))
    return measure.GENL_HDR.pack(measure.TASKSTATS_CMD_NEW, 1, 0) + measure.nl_attr(
        measure.TASKSTATS_TYPE_AGGR_PID | 0x8000, inner  # NLA_F_NESTED, as the kernel sets it
    )


class NetlinkParsing(unittest.TestCase):
    def test_newaddr_prefers_ifa_local(self):
        msg = nlmsg(measure.RTM_NEWADDR, newaddr(7, "198.18.0.99", 24, local="198.18.0.50"))
        (kind, _flags, payload), *_ = list(measure.iter_messages(msg))
        self.assertEqual(kind, measure.RTM_NEWADDR)
        index, iface = measure.parse_newaddr(payload)
        self.assertEqual(index, 7)
        self.assertEqual(iface, ipaddress.IPv4Interface("198.18.0.50/24"))

    def test_newaddr_with_only_ifa_address(self):
        index, iface = measure.parse_newaddr(newaddr(3, "198.18.1.2", 16))
        self.assertEqual((index, str(iface)), (3, "198.18.1.2/16"))

    def test_newaddr_rejects_other_families_and_garbage(self):
        v6 = bytearray(newaddr(3, "198.18.1.2", 16))
        v6[0] = socket.AF_INET6
        self.assertIsNone(measure.parse_newaddr(bytes(v6)))
        self.assertIsNone(measure.parse_newaddr(b"\x02\x18"))
        bad_prefix = bytearray(newaddr(3, "198.18.1.2", 16))
        bad_prefix[1] = 40
        self.assertIsNone(measure.parse_newaddr(bytes(bad_prefix)))
        # An attribute that claims more bytes than there are is ignored.
        truncated = measure.IFADDRMSG.pack(socket.AF_INET, 24, 0, 0, 1) + struct.pack("=HH", 200, 1) + b"\1\2\3\4"
        self.assertIsNone(measure.parse_newaddr(truncated))

    def test_message_iteration_stops_on_bad_lengths(self):
        good = nlmsg(measure.RTM_NEWADDR, newaddr(1, "198.18.0.1", 16))
        zero_len = struct.pack("=IHHII", 0, 20, 0, 0, 0)
        self.assertEqual(len(list(measure.iter_messages(good + zero_len + good))), 1)
        self.assertEqual(len(list(measure.iter_messages(good + good))), 2)
        self.assertEqual(list(measure.iter_messages(good[:10])), [])

    def test_attribute_iteration_terminates_on_zero_length(self):
        blob = struct.pack("=HH", 0, 1) * 4
        self.assertEqual(list(measure.iter_attrs(blob)), [])


class TaskstatsParsing(unittest.TestCase):
    def test_exit_record_fields(self):
        (rec,) = measure.parse_taskstats(taskstats_record(4242, 100, 5120, b"dhclient"))
        self.assertEqual(rec, {"tid": 4242, "tgid": 4242, "ppid": 100, "hiwater_kib": 5120, "comm": "dhclient"})

    def test_thread_record_carries_its_group(self):
        (rec,) = measure.parse_taskstats(taskstats_record(4243, 100, 7000, b"worker", tgid=4242))
        self.assertEqual((rec["tid"], rec["tgid"]), (4243, 4242))

    def test_old_struct_without_tgid(self):
        (rec,) = measure.parse_taskstats(taskstats_record(55, 1, 900, b"udhcpc", version=11))
        self.assertEqual((rec["tid"], rec["tgid"], rec["hiwater_kib"]), (55, 55, 900))

    def test_short_or_foreign_messages_yield_nothing(self):
        full = taskstats_record(1, 1, 1, b"x")
        self.assertEqual(measure.parse_taskstats(full[:40]), [])
        other_cmd = bytes([measure.TASKSTATS_CMD_GET]) + full[1:]
        self.assertEqual(measure.parse_taskstats(other_cmd), [])
        self.assertEqual(measure.parse_taskstats(b""), [])


class ProcessTree(unittest.TestCase):
    def test_members_follow_parent_chains_only(self):
        parent_of = {10: 1, 11: 10, 12: 11, 13: 1, 20: 2, 21: 20}
        self.assertEqual(measure.tree_members(1, parent_of), {10, 11, 12, 13})

    def test_sum_counts_each_process_once(self):
        parent_of = {10: 1, 11: 10, 30: 3}
        peak_of = {10: 4000, 11: 1500, 30: 99999}
        self.assertEqual(measure.sum_peak_rss(1, parent_of, peak_of), (5500, 2))

    def test_thread_records_merge_into_their_process(self):
        run = measure.Run.__new__(measure.Run)
        run.parent_of, run.peak_of, run.comm_of = {}, {}, {}
        run.note(10, 1, 3000, "daemon")
        run.note(10, 0, 3500)  # a thread of 10 exited later, with a higher mark
        run.note(10, 99, 100)  # a later, smaller sample does not lower it or re-parent it
        self.assertEqual((run.parent_of, run.peak_of, run.comm_of), ({10: 1}, {10: 3500}, {10: "daemon"}))


def meta_for(variants):
    return {
        "variants": [dict(zip(("name", "client", "variant", "acd"), v)) for v in variants],
        "runs": 3,
        "warmup": 1,
        "timeout_s": 20,
        "settle_ms": 500,
        "command": "scripts/bench-lease.sh --runs 3",
        "date": "2000-01-01T00:00Z",
        "machine": {
            "nproc": "2",
            "kernel": "k",
            "cpu": "c",
            "os": "o",
            "loadavg_before": "0 0 0",
            "loadavg_after": "0 0 0",
        },
        "binaries": {
            "mirage-dhcp": {"size": 2048 * 1024, "version": "git x", "linkage": "static"},
            "udhcpc": {"size": 512 * 1024, "version": "busybox y", "linkage": "dynamic"},
        },
        "server": "dnsmasq-base z",
    }


VARIANTS = [
    ("m-acd", "mirage-dhcp", "default", "on"),
    ("m-noacd", "mirage-dhcp", "--no-acd", "off"),
    ("u", "udhcpc", "default", "off"),
    ("u-arp", "udhcpc", "-a", "on"),
]


def ok(variant, ms, rss=1000):
    return {"variant": variant, "ok": True, "ms": ms, "rss_kib": rss, "procs": 2}


class Statistics(unittest.TestCase):
    def test_percentiles_interpolate_linearly(self):
        values = [4.0, 1.0, 3.0, 2.0]
        self.assertAlmostEqual(report.percentile(values, 50), 2.5)
        self.assertAlmostEqual(report.percentile(values, 10), 1.3)
        self.assertAlmostEqual(report.percentile(values, 90), 3.7)
        self.assertEqual(report.percentile([7.0], 90), 7.0)
        with self.assertRaises(ValueError):
            report.percentile([], 50)
        with self.assertRaises(ValueError):
            report.percentile([1.0], 101)

    def test_failed_runs_are_counted_not_averaged(self):
        runs = [ok("u", 10), ok("u", 30), {"variant": "u", "ok": False, "ms": None, "error": "timeout"}]
        s = report.summarise(runs)
        self.assertEqual((s["runs"], s["ok"], s["failed"], s["median"]), (3, 2, 1, 20.0))
        self.assertEqual(s["errors"], ["timeout"])

    def test_table_ratios_compare_like_with_like(self):
        results = [ok("m-acd", 200), ok("m-noacd", 20), ok("u", 80), ok("u-arp", 2000)]
        rows = report.render(meta_for(VARIANTS), results).splitlines()
        row = {r.split(" | ")[1]: r for r in rows if r.startswith("| udhcpc")}
        self.assertIn("| 4.00 |", row["default"])  # 80 / 20 (both without ACD)
        self.assertIn("| 10.00 |", row["-a"])  # 2000 / 200 (both with ACD)
        self.assertIn("| 512 |", row["default"])  # binary size in KiB
        self.assertIn("udhcpc default: 2", report.render(meta_for(VARIANTS), results))

    def test_failing_client_is_reported_as_failed(self):
        results = [{"variant": "m-acd", "ok": False, "error": "build failed"}] + [ok("u", 80), ok("u-arp", 90)]
        text = report.render(meta_for(VARIANTS), results)
        m_row = next(line for line in text.splitlines() if line.startswith("| mirage-dhcp | default"))
        self.assertIn("| failed |", m_row)
        u_arp = next(line for line in text.splitlines() if line.startswith("| udhcpc | -a"))
        self.assertIn("| n/a |", u_arp)
        self.assertIn("build failed", text)

    def test_partial_failures_are_visible(self):
        results = [ok("u", 80), {"variant": "u", "ok": False, "error": "no address"}]
        text = report.render(meta_for(VARIANTS), results)
        self.assertIn("80.0 (1/2 failed)", text)


class NtpStart(unittest.TestCase):
    @staticmethod
    def frame(proto: int, sport: int, dport: int, ihl: int = 5) -> bytes:
        eth = bytes(12) + b"\x08\x00"
        ip = bytes([0x40 | ihl]) + bytes(8) + bytes([proto]) + bytes(ihl * 4 - 10)
        return eth + ip + struct.pack("!HHHH", sport, dport, 56, 0) + bytes(48)

    def test_udp_ports_are_read_past_ip_options(self):
        self.assertEqual(ntp_start.ntp_ports(self.frame(17, 40000, 123)), (40000, 123))
        self.assertEqual(ntp_start.ntp_ports(self.frame(17, 123, 40000, ihl=6)), (123, 40000))

    def test_other_frames_have_no_ports(self):
        self.assertIsNone(ntp_start.ntp_ports(self.frame(6, 40000, 123)))
        ipv6 = bytes(12) + b"\x86\xdd" + bytes(60)
        self.assertIsNone(ntp_start.ntp_ports(ipv6))
        self.assertIsNone(ntp_start.ntp_ports(self.frame(17, 1, 2)[:30]))

    def test_summary_gives_median_min_max_per_sandbox(self):
        records = [
            {"sandbox": "seccomp", "request_ms": r, "reply_ms": r + 1, "probe_us": None}
            for r in (3.0, 5.0, 4.0)
        ] + [{"sandbox": "kvm", "request_ms": 9.0, "reply_ms": 10.0, "probe_us": 2000}]
        table = ntp_start.summary(records).splitlines()
        self.assertEqual(table[2], "| seccomp | 3 | 4.0, 3.0, 5.0 | 5.0, 4.0, 6.0 | - |")
        self.assertEqual(table[3], "| kvm | 1 | 9.0, 9.0, 9.0 | 10.0, 10.0, 10.0 | 2000 |")


class DocsMarkers(unittest.TestCase):
    def test_block_replaced_and_rest_kept(self):
        doc = f"intro\n{report.BEGIN}\nold table\n{report.END}\noutro\n"
        once = report.replace_between_markers(doc, "new table\n")
        self.assertEqual(once, f"intro\n{report.BEGIN}\nnew table\n{report.END}\noutro\n")
        self.assertEqual(report.replace_between_markers(once, "new table\n"), once)

    def test_missing_or_reversed_markers_are_errors(self):
        with self.assertRaises(ValueError):
            report.replace_between_markers("no markers", "x")
        with self.assertRaises(ValueError):
            report.replace_between_markers(f"{report.END}\n{report.BEGIN}\n", "x")

    def test_repository_doc_has_the_markers(self):
        path = os.path.join(HERE, "..", "..", "docs", "benchmarks.md")
        with open(path, encoding="utf-8") as f:
            report.replace_between_markers(f.read(), "x\n")


class Script(unittest.TestCase):
    SCRIPT = os.path.join(HERE, "..", "bench-lease.sh")

    def test_help_and_bad_options(self):
        out = subprocess.run(["bash", self.SCRIPT, "--help"], capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0)
        self.assertIn("--runs", out.stdout)
        for bad in (["--bogus"], ["--runs", "x"], ["--clients", "nosuch"]):
            out = subprocess.run(["bash", self.SCRIPT, *bad], capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 2, bad)


# Needs root: creates a network namespace with a veth pair (no traffic).
@unittest.skipUnless(os.geteuid() == 0, "needs root to create network namespaces")
class MeasureInNamespace(unittest.TestCase):
    def setUp(self):
        self.ns = f"mbench-test-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.ns], check=True, timeout=10)
        self.addCleanup(self.remove_ns)
        subprocess.run(
            ["ip", "-n", self.ns, "link", "add", "tv0", "type", "veth", "peer", "name", "tv1"],
            check=True,
            timeout=10,
        )
        subprocess.run(["ip", "-n", self.ns, "link", "set", "tv0", "up"], check=True, timeout=10)

    def remove_ns(self):
        pids = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True, timeout=10)
        for pid in pids.stdout.split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", self.ns], timeout=10)

    def measure(self, command: str, timeout: float = 5.0):
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-I", os.path.join(HERE, "measure.py"), "--netns", self.ns, "--ifname", "tv0",
             "--prefix", "198.18.0.0/16", "--timeout", str(timeout), "--settle-ms", "100", "--grace", "1",
             "--", "sh", "-c", command],
            capture_output=True, text=True, timeout=timeout + 30,
        )
        elapsed = time.monotonic() - started
        self.assertTrue(out.stdout.strip(), out.stderr)
        return out.returncode, json.loads(out.stdout), elapsed

    def ns_pids(self):
        out = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True, timeout=10)
        return out.stdout.split()

    def test_address_time_and_memory_of_all_processes(self):
        # A helper that touches 48 MiB and exits before the address appears:
        # only exit accounting (or luck) can see it.
        command = (
            f"{sys.executable} -c 'b = bytearray(48 << 20)'; "
            "ip addr add 198.18.7.7/255.255.0.0 dev tv0; sleep 30"
        )
        rc, res, _ = self.measure(command)
        self.assertEqual(rc, 0, res)
        self.assertTrue(res["ok"])
        self.assertEqual(res["addr"], "198.18.7.7/16")
        self.assertGreater(res["ms"], 0)
        self.assertGreaterEqual(res["procs"], 4)  # sh, python, ip, sleep
        if res["rss_source"] == "taskstats":
            self.assertGreaterEqual(res["rss_kib"], 48 * 1024)
        self.assertEqual(self.ns_pids(), [])

    def test_addresses_outside_the_prefix_do_not_count(self):
        rc, res, _ = self.measure(
            "ip addr add 10.99.0.1/24 dev tv0; sleep 0.3; ip addr add 198.18.0.9/16 dev tv0; sleep 30"
        )
        self.assertEqual(rc, 0, res)
        self.assertEqual(res["addr"], "198.18.0.9/16")
        self.assertGreaterEqual(res["ms"], 250)

    def test_client_that_exits_without_address_fails_fast(self):
        rc, res, elapsed = self.measure("exit 3", timeout=20)
        self.assertEqual(rc, 1)
        self.assertFalse(res["ok"])
        self.assertIn("status 3", res["error"])
        self.assertLess(elapsed, 15)  # did not wait for the 20 s timeout

    def test_daemonised_client_is_killed_after_timeout(self):
        # The client forks a grandchild that ignores SIGTERM, and its parent
        # exits: the subreaper still finds it and SIGKILLs it.
        rc, res, _ = self.measure("(trap '' TERM; sleep 60) & exit 0", timeout=1)
        self.assertEqual(rc, 1)
        self.assertFalse(res["ok"])
        self.assertEqual(self.ns_pids(), [])

    def test_existing_address_is_a_setup_error(self):
        subprocess.run(["ip", "-n", self.ns, "addr", "add", "198.18.0.2/16", "dev", "tv0"], check=True, timeout=10)
        rc, res, _ = self.measure("sleep 30")
        self.assertEqual(rc, 2)
        self.assertIn("already has an address", res["setup_error"])

    def test_private_tmpfs_does_not_reach_the_host(self):
        marker = f"mbench-{uuid.uuid4().hex}"
        self.addCleanup(lambda: os.path.exists(f"/run/{marker}") and os.unlink(f"/run/{marker}"))
        out = subprocess.run(
            [sys.executable, "-I", os.path.join(HERE, "measure.py"), "--netns", self.ns, "--ifname", "tv0",
             "--prefix", "198.19.0.0/16", "--timeout", "5", "--settle-ms", "0", "--tmpfs", "/run",
             "--", "sh", "-c", f"touch /run/{marker} && ip addr add 198.19.0.3/16 dev tv0; sleep 30"],
            capture_output=True, text=True, timeout=40,
        )
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertFalse(os.path.exists(f"/run/{marker}"))


if __name__ == "__main__":
    unittest.main()
