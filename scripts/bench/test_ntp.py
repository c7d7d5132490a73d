#!/usr/bin/env python3
"""Tests of scripts/bench/ntp.py (run with the others:
python3 -m unittest discover -s scripts/bench -v). They run anywhere, as any
user: parsing, the first-estimate rules, process-tree RSS, the report."""

import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ntp  # noqa: E402

TRACKING = """\
===================================================================================================================================
   Date (UTC) Time     IP Address   St   Freq ppm   Skew ppm     Offset L Co  Offset sd Rem. corr. Root delay Root disp. Max. error
===================================================================================================================================
2026-12-02 17:50:20 0.0.0.0          0      0.000 1000000.000  0.000e+00 ?  0  0.000e+00 -0.000e+00  1.000e+00  1.000e+00  1.500e+00
2026-12-02 17:50:24 127.0.0.1        9      0.000 1000000.000 -6.322e-06 N  1  3.202e-05 -0.000e+00  9.305e-05  6.129e-01  1.500e+00
2026-12-02 17:50:26 127.0.0.1        9     -0.125     39.492  8.157e-06 N  1  3.675e-06  6.322e-06  8.270e-06  1.842e-05  2.634e+00
"""


class Parsing(unittest.TestCase):
    def test_tracking_log_skips_the_start_line_and_reads_offsets_in_us(self):
        got = ntp.chrony_tracking_offsets(TRACKING)
        self.assertEqual(len(got), 2)
        self.assertEqual(got[0][0], ntp.parse_utc("2026-12-02 17:50:24"))
        self.assertAlmostEqual(got[0][1], -6.322)
        self.assertAlmostEqual(got[1][1], 8.157)

    def test_nft_counters_follow_the_server_order(self):
        def rule(addr, packets):
            return {"rule": {"expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": addr}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 123}},
                {"counter": {"packets": packets, "bytes": packets * 76}},
            ]}}
        doc = {"nftables": [{"metainfo": {}}, {"table": {}}, rule("198.19.0.2", 5), rule("198.19.0.1", 3)]}
        self.assertEqual(ntp.parse_counters(doc, ["198.19.0.1", "198.19.0.2"]), [3, 5])

    def test_chrony_is_synchronised_at_its_selected_source_line(self):
        lines = [(1.0, "chronyd version 4.3 starting"), (4.5, "Selected source 198.19.0.1"), (9.0, "x")]
        self.assertEqual(ntp.chrony_first(lines), 4.5)
        self.assertIsNone(ntp.chrony_first(lines[:1]))

    def test_busybox_is_synchronised_at_the_second_reply_from_one_server(self):
        reply = "ntpd: reply from {}: offset:+0.000010 delay:0.000100 status:0x24 strat:9"
        lines = [
            (0.01, reply.format("198.19.0.1")),
            (0.02, reply.format("198.19.0.2")),
            (1.01, "ntpd: sending query to 198.19.0.1"),
            (1.02, reply.format("198.19.0.2")),
            (1.03, reply.format("198.19.0.1")),
        ]
        self.assertEqual(ntp.busybox_first(lines), 1.02)
        self.assertIsNone(ntp.busybox_first(lines[:3]))


MEASUREMENTS = """\
========================================================================================================================================
   Date (UTC) Time     IP Address   L St 123 567 ABCD  LP RP Score    Offset  Peer del. Peer disp.  Root del. Root disp. Refid     MTxRx
========================================================================================================================================
2026-12-03 07:40:01 198.19.0.1      N  8 111 111 1111   4  4 0.00 -2.1e-06  5.0e-05  1.9e-06  0.0e+00  1.1e-05 7F7F0101  4B K K
2026-12-03 07:40:02 198.19.0.2      N  8 111 111 1111   4  4 0.00 -2.1e-06  5.0e-05  1.9e-06  0.0e+00  1.1e-05 7F7F0101  4B K K
2026-12-03 07:52:10 198.19.0.1      N  8 111 111 1111   7  7 0.50 -2.1e-06  5.0e-05  1.9e-06  0.0e+00  1.1e-05 7F7F0101  4B K K
"""


class Poll(unittest.TestCase):
    def test_poll_bounds_are_parsed_and_checked(self):
        self.assertEqual(ntp.parse_poll("4:7"), (4, 7))
        self.assertEqual(ntp.parse_poll("6:6"), (6, 6))
        for bad in ("7:4", "3:7", "4:18", "4", "4:7:8", "a:7", "-4:7", ""):
            with self.assertRaises(ValueError, msg=bad):
                ntp.parse_poll(bad)

    def test_chrony_measurements_give_each_servers_latest_local_poll(self):
        self.assertEqual(ntp.chrony_local_polls(MEASUREMENTS), {"198.19.0.1": 7, "198.19.0.2": 4})
        self.assertEqual(ntp.chrony_local_polls(""), {})

    def test_the_report_says_which_bounds_each_client_ran_with(self):
        class A:
            clients = ["mirage-ntp", "chronyd", "busybox-ntpd"]
            poll = (4, 7)
        text = ntp.poll_bounds_text(A())
        self.assertIn("mirage-ntp 4:7 (16..128 s, min_poll/max_poll)", text)
        self.assertIn("chronyd 4:7 (16..128 s, minpoll/maxpoll)", text)
        self.assertIn("busybox-ntpd its built-in 5:12 (32..4096 s; not configurable", text)
        A.poll = None
        self.assertIn("mirage-ntp its default 6:10 (64..1024 s)", ntp.poll_bounds_text(A()))


class ProcessTree(unittest.TestCase):
    def test_rss_sums_a_process_and_its_children(self):
        p = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
        try:
            for _ in range(100):
                if len(ntp.tree(p.pid)) == 3:
                    break
                time.sleep(0.02)
            total, names = ntp.rss_kib(p.pid)
            self.assertEqual(sorted(names), ["sh", "sleep", "sleep"])
            self.assertGreater(total, 0)
        finally:
            for pid in reversed(ntp.tree(p.pid)):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            p.wait()


class Report(unittest.TestCase):
    def args(self):
        class A:
            runs = 2
            servers = 3
            duration = 300
            steady_after = 60
            clients = ["mirage-ntp", "chronyd"]
        return A()

    def test_medians_ratios_and_goals(self):
        results = [
            {"client": "mirage-ntp", "run": i, "rss_kib": 3600 + i, "processes": ["mirage-ntp", "exe"],
             "first_s": 0.5, "first_req": 1, "error_us": 3.0, "req_h": 60.0}
            for i in range(2)
        ] + [
            {"client": "chronyd", "run": i, "rss_kib": 5400, "processes": ["chronyd"],
             "first_s": 5.0, "first_req": 3, "error_us": 200.0, "req_h": 45.0}
            for i in range(2)
        ]
        sizes = {"mirage-ntp": {"kib": 900.0, "what": "static"}, "chronyd": {"kib": 300.0, "what": "dynamic"}}
        meta = {"command": "scripts/bench-ntp.sh -n 2", "date": "d", "machine": "m", "load_before": "1",
                "load_after": "2", "server": "chronyd 4.3 -x"}
        text = ntp.report(self.args(), results, sizes, meta)
        self.assertIn("| chronyd | 5.000 (10.00x) | 3.0 (3.00x) | 200 (66.67x) |", text)
        self.assertIn("- under 1 s to the first estimate on a LAN: met (0.500)", text)
        self.assertIn("- no more requests per server per hour than chrony: NOT met (60.0 vs chronyd 45.0)", text)
        self.assertIn("- summed RSS under 4 MiB: met (3,600)", text)
        self.assertIn("| mirage-ntp | 0.500 | 1.0 | 3.0 | 60.0 | 3,600 | 900 | 2/2 |", text)
        self.assertNotIn("Poll in s", text, "no poll measured, none reported")
        for r in results:
            r["poll_start"], r["poll_end"] = (128, 128) if r["client"] == "chronyd" else (64, 128)
        text = ntp.report(self.args(), results, sizes, meta)
        self.assertIn("at the start of the steady window and at the end: mirage-ntp 64 and 128; chronyd 128 and 128.",
                      text)

    def test_a_client_without_an_estimate_is_n_a_not_zero(self):
        results = [{"client": "mirage-ntp", "run": 0, "rss_kib": 3000, "processes": []},
                   {"client": "chronyd", "run": 0, "rss_kib": 5000, "processes": [], "exited": 1}]
        sizes = {c: {"kib": 1.0, "what": ""} for c in ("mirage-ntp", "chronyd")}
        meta = {"command": "c", "date": "d", "machine": "m", "load_before": "", "load_after": "", "server": "s"}
        text = ntp.report(self.args(), results, sizes, meta)
        self.assertIn("| mirage-ntp | n/a | n/a | n/a | n/a |", text)
        self.assertIn("0/2 |", text)
        self.assertIn("Exited early: chronyd run 0 exited 1.", text)
        self.assertIn("under 1 s to the first estimate on a LAN: not measured", text)


if __name__ == "__main__":
    unittest.main()
