#!/usr/bin/env python3
"""De-aggregation throughput of the official Python library (aws-kinesis-agg) on the same input as
the Rust benchmark (kcl-core/benches/deagg.rs); scripts/kpl/bench.sh runs all of them.

    KCL_DEAGG_BENCH_DUMP=/tmp/deagg-input.bin cargo bench -p kcl-core --bench deagg
    "$KCL_KPL_PYTHON" scripts/kpl/bench_python.py /tmp/deagg-input.bin [--tsv OUT]

The dump holds the aggregated records as [u32 big-endian length][bytes]. Records are passed in the
boto3 shape (raw bytes, no base64), the cheapest path the library offers. Reports the best and the
median of several rounds, and hashlib MD5 alone over the same protobuf bytes for reference.
--tsv appends tab-separated result lines for scripts/kpl/bench_table.py.
"""

import hashlib
import platform
import sys
import time
from importlib import metadata

import aws_kinesis_agg.deaggregator as deagg


def load(path):
    with open(path, "rb") as f:
        blob = f.read()
    records, pos = [], 0
    while pos < len(blob):
        n = int.from_bytes(blob[pos:pos + 4], "big")
        records.append(blob[pos + 4:pos + 4 + n])
        pos += 4 + n
    return records


def measure(rounds, fn):
    """Best and median seconds per call over `rounds` rounds (each at least ~50 ms of calls)."""
    times = []
    result = None
    for _ in range(rounds):
        iters = 0
        start = time.perf_counter()
        while True:
            result = fn()
            iters += 1
            elapsed = time.perf_counter() - start
            if elapsed >= 0.05:
                break
        times.append(elapsed / iters)
    times.sort()
    return times[0], times[len(times) // 2], result


def main():
    args = sys.argv[1:]
    tsv = None
    if "--tsv" in args:
        at = args.index("--tsv")
        tsv = args[at + 1] if at + 1 < len(args) else None
        del args[at:at + 2]
    if len(args) != 1 or (tsv is None and "--tsv" in sys.argv):
        sys.stderr.write(__doc__)
        sys.exit(2)
    aggregates = load(args[0])
    total = sum(len(a) for a in aggregates)
    boto3 = [{
        "SequenceNumber": str(49590338271490256608559692538361571095921575989130000000 + i),
        "PartitionKey": "pk",
        "ApproximateArrivalTimestamp": 0,
        "Data": a,
    } for i, a in enumerate(aggregates)]

    def run_deagg():
        return sum(1 for _ in deagg.iter_deaggregate_records(boto3, data_format="Boto3"))

    def run_md5():
        for a in aggregates:
            hashlib.md5(a[4:-16]).digest()
        return 0

    md5_best, md5_median, _ = measure(20, run_md5)
    best, median, user_records = measure(10, run_deagg)
    label = "aws-kinesis-agg %s, Python %s" % (metadata.version("aws-kinesis-agg"), platform.python_version())
    print("%-38s %8s %8s %11s" % ("case (%s)" % label, "MB/s", "median", "records/s"))
    print("-- %d aggregates, %.1f MB, %d user records" % (len(aggregates), total / 1e6, user_records))
    lines = []
    for key, name, b, m in (("md5", "hashlib MD5 only", md5_best, md5_median),
                            ("deagg", "iter_deaggregate_records", best, median)):
        print("%-38s %8.1f %8.1f %11.0f" % (name, total / b / 1e6, total / m / 1e6, user_records / b))
        lines.append("\t".join(["python", "distinct", key, "%s (%s)" % (name, label),
                                "%.1f" % (total / b / 1e6), "%.1f" % (total / m / 1e6),
                                "%.0f" % (user_records / b)]))
    if tsv:
        with open(tsv, "a") as f:
            f.write("\n".join(lines) + "\n")

if __name__ == "__main__":
    main()
