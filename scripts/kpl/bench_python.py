#!/usr/bin/env python3
"""De-aggregation throughput of the official Python library (aws-kinesis-agg) on the same input as
the Rust benchmark (kcl-core/benches/deagg.rs).

    KCL_DEAGG_BENCH_DUMP=/tmp/deagg-input.bin cargo bench -p kcl-core --bench deagg
    "$KCL_KPL_PYTHON" scripts/kpl/bench_python.py /tmp/deagg-input.bin

The dump holds the aggregated records as [u32 big-endian length][bytes]. Records are passed in the
boto3 shape (raw bytes, no base64), the cheapest path the library offers. Reports the best of
several rounds, and hashlib MD5 alone over the same protobuf bytes for reference.
"""

import hashlib
import sys
import time

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


def best_of(rounds, fn):
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main():
    if len(sys.argv) != 2:
        sys.stderr.write(__doc__)
        sys.exit(2)
    aggregates = load(sys.argv[1])
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

    t_md5, _ = best_of(10, run_md5)
    t_deagg, user_records = best_of(5, run_deagg)
    print("%-34s %10s %12s %14s" % ("case (aws-kinesis-agg, Python)", "MB/s", "records/s", "ns/aggregate"))
    print("-- %d aggregates, %.1f MB, %d user records" % (len(aggregates), total / 1e6, user_records))
    for name, t in (("hashlib MD5 only", t_md5), ("iter_deaggregate_records", t_deagg)):
        print("%-34s %10.1f %12.0f %14.0f" % (name, total / t / 1e6, user_records / t, t * 1e9 / len(aggregates)))


if __name__ == "__main__":
    main()
