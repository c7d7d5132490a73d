#!/usr/bin/env python3
"""Tests of scripts/bench/dns.py (run with the others:
python3 -m unittest discover -s scripts/bench -v). They run anywhere, as any
user: dnsperf's summary and per-query lines, the percentile, the process
tree's CPU time and RSS, the zone."""

import os
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dns  # noqa: E402

SUMMARY = """\
DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.53 -d hit.txt -T 1 -l 3 -c 8
[Status] Sending queries (to 127.0.0.53:53)
> NOERROR h1.bench A 0.000120
> NOERROR h2.bench A 0.000300
[Timeout] Query timed out: msg id 7
> NOERROR h3.bench A 0.000200
> SERVFAIL h4.bench A 0.004000
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         150000
  Queries completed:    149990 (99.99%)
  Queries lost:         10 (0.01%)

  Response codes:       NOERROR 149990 (100.00%)
  Average packet size:  request 26, response 42
  Run time (s):         3.000123
  Queries per second:   49996.623

  Average Latency (s):  0.001920 (min 0.000041, max 0.012345)
  Latency StdDev (s):   0.000700
"""


class Parsing(unittest.TestCase):
    def test_summary(self):
        s = dns.parse_dnsperf(SUMMARY)
        self.assertEqual((s["sent"], s["completed"], s["lost"]), (150000, 149990, 10))
        self.assertAlmostEqual(s["qps"], 49996.623)
        self.assertAlmostEqual(s["avg_latency_s"], 0.001920)

    def test_a_summary_missing_is_an_error(self):
        with self.assertRaises(ValueError):
            dns.parse_dnsperf("dnsperf: error: could not open data file\n")

    def test_per_query_latencies_and_a_lost_query_as_the_timeout(self):
        self.assertEqual(dns.parse_latencies(SUMMARY), [0.000120, 0.000300, 5.0, 0.000200, 0.004000])

    def test_percentile_is_the_nearest_rank(self):
        values = list(range(1, 101))
        self.assertEqual(dns.percentile(values, 0.99), 99)
        self.assertEqual(dns.percentile(values, 0.50), 50)
        self.assertEqual(dns.percentile([5.0], 0.99), 5.0)
        self.assertIsNone(dns.percentile([], 0.99))
        # One slow query in a hundred is the p99, in 101 it is above it.
        self.assertEqual(dns.percentile([1] * 99 + [9], 0.99), 1)
        self.assertEqual(dns.percentile([1] * 98 + [9, 9], 0.99), 9)

    def test_median_skips_missing(self):
        self.assertEqual(dns.median([3, None, 1, 2]), 2)
        self.assertIsNone(dns.median([None]))


class Processes(unittest.TestCase):
    def test_cpu_and_rss_cover_the_children(self):
        # A parent that burns CPU in a child: the child's time and memory count.
        p = subprocess.Popen([sys.executable, "-c",
                              "import subprocess,sys,time;"
                              "c=subprocess.Popen([sys.executable,'-c','x=0\\nwhile True: x+=1']);"
                              "time.sleep(30)"])
        try:
            deadline = time.time() + 10
            while len(dns.descendants(p.pid)) < 2 and time.time() < deadline:
                time.sleep(0.05)
            self.assertEqual(len(dns.descendants(p.pid)), 2)
            before = dns.cpu_seconds(p.pid)
            time.sleep(0.5)
            self.assertGreater(dns.cpu_seconds(p.pid), before)
            total, n = dns.rss_kib(p.pid)
            self.assertEqual(n, 1, "both are `main`: not roles")
            self.assertGreater(total, 0)
        finally:
            for c in dns.descendants(p.pid)[1:]:
                os.kill(c, 9)
            p.kill()
            p.wait()


class Zone(unittest.TestCase):
    def test_every_name_once_with_distinct_addresses(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "z")
            dns.write_zone(path)
            lines = dns.read(path).splitlines()
        records = [l.split() for l in lines if " IN A 198." in l]
        self.assertEqual(len(records), dns.HIT_NAMES + dns.MISS_NAMES)
        self.assertEqual(len({r[0] for r in records}), len(records))
        self.assertEqual(len({r[3] for r in records}), len(records))
        for r in records:
            self.assertTrue(all(0 <= int(o) <= 255 for o in r[3].split(".")), r)


if __name__ == "__main__":
    unittest.main()
