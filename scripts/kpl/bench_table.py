#!/usr/bin/env python3
"""Prints the KPL de-aggregation comparison table from the tab-separated lines that
kcl-core/benches/deagg.rs (KCL_DEAGG_BENCH_TSV), bench_python.py and bench_node.js (--tsv) append:

    impl  input  key  name  MB/s(best)  MB/s(median)  user-records/s(best)

Used by scripts/kpl/bench.sh; standard library only.
"""

import sys


def main():
    if len(sys.argv) != 2:
        sys.stderr.write(__doc__)
        sys.exit(2)
    rows = {}
    order = []
    with open(sys.argv[1]) as f:
        for line in f:
            impl, inp, key, name, best, median, rps = line.rstrip("\n").split("\t")
            rows[(impl, inp, key)] = (name, float(best), float(median), float(rps))
            order.append((impl, inp, key))

    def get(impl, inp, key):
        return rows.get((impl, inp, key))

    for inp, title in (("distinct", "a distinct partition key per user record (the input all three libraries read)"),
                       ("shared", "10 shared partition keys (Kinesin only)")):
        rank = {"rust": 0, "python": 1, "node": 2}
        keys = sorted((k for k in order if k[1] == inp), key=lambda k: rank.get(k[0], 3))
        if not keys:
            continue
        md5 = get("rust", inp, "md5")
        multi = get("rust", inp, "md5_multi")
        python = get("python", inp, "deagg")
        print()
        print("Input: %s" % title)
        print()
        print("| case | MB/s (best) | MB/s (median) | user records/s | vs MD5 only, md-5 | vs MD5 only, multi-buffer | vs Python |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for k in keys:
            name, best, median, rps = rows[k]
            impl = {"rust": "Kinesin", "python": "Python", "node": "Node"}[k[0]]
            cells = [
                "%s: %s" % (impl, name),
                "%.0f" % best,
                "%.0f" % median,
                "%.2f M" % (rps / 1e6),
                "%.0f%%" % (100 * best / md5[1]) if md5 else "",
                "%.0f%%" % (100 * best / multi[1]) if multi else "",
                "%.1fx" % (best / python[1]) if python else "",
            ]
            print("| " + " | ".join(cells) + " |")
    batch = get("rust", "distinct", "deagg_batch")
    md5 = get("rust", "distinct", "md5")
    multi = get("rust", "distinct", "md5_multi")
    python = get("python", "distinct", "deagg")
    node = get("node", "distinct", "deagg")
    if batch and md5 and multi:
        print()
        print("Kinesin deaggregate_batch_into (best round), distinct keys:")
        print("  %.0f%% of MD5 only with md-5 (target 85%%), %.0f%% of MD5 only with the multi-buffer kernel"
              % (100 * batch[1] / md5[1], 100 * batch[1] / multi[1]))
        if python:
            print("  %.1fx the official Python library (target 10x)" % (batch[1] / python[1]))
        if node:
            print("  %.1fx the official Node library" % (batch[1] / node[1]))


if __name__ == "__main__":
    main()
