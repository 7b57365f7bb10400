"""Latency percentiles of an h2load --log-file (tab-separated: start µs, status, duration µs).

Usage: python3 bench/latency.py LOG  ->  "p50 0.41 ms  p99 1.20 ms  p99.9 2.31 ms"
"""
import sys

durations = sorted(int(line.split('\t')[2]) for line in open(sys.argv[1]) if line.strip())
if not durations:
    sys.exit("no requests in the log")


def at(q):
    return durations[min(len(durations) - 1, int(q * len(durations)))] / 1000


print(f"p50 {at(0.50):.2f} ms  p99 {at(0.99):.2f} ms  p99.9 {at(0.999):.2f} ms")
