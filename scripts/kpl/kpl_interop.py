#!/usr/bin/env python3
"""Interop helper: the official KPL aggregation library (aws-kinesis-agg, awslabs/kinesis-aggregation)
against kcl-core.

Subcommands (JSON on stdout; bytes as lowercase hex):

  generate
      Aggregates deterministic fixture sets with the official RecordAggregator and prints
      {"package_version", "cases": [{"name", "max_size", "user_records": [...], "aggregates": [...]}]}
      where a user record is {"pk", "ehk" (or null), "data"} and an aggregate is
      {"pk", "ehk" (or null), "data", "user_records"}.

  deaggregate
      Reads {"records": [{"seq", "pk", "data"}]} from stdin (raw Kinesis records, e.g. written by
      the kcl-core Aggregator), de-aggregates them with the official deaggregator and prints
      {"user_records": [{"seq", "sub_seq", "aggregated", "pk", "ehk", "data"}]}.

  compare FILE
      Like deaggregate, but also compares the result with the user records listed in FILE
      ({"expected": [{"pk", "ehk", "data"}]}) and exits 1 on the first difference.

Used by kcl-core/tests/deagg_interop.rs; see scripts/kpl/setup.sh for the environment.
"""

import json
import random
import sys
from importlib import metadata

import aws_kinesis_agg.aggregator as agg
import aws_kinesis_agg.deaggregator as deagg


def _case(name, user_records, max_size=51200):
    aggregator = agg.RecordAggregator(max_size=max_size)
    aggregates = []

    def emit(agg_record):
        pk, ehk, data = agg_record.get_contents()
        aggregates.append({
            "pk": pk,
            "ehk": ehk,
            "data": data.hex(),
            "user_records": agg_record.get_num_user_records(),
        })

    for r in user_records:
        full = aggregator.add_user_record(r["pk"], bytes.fromhex(r["data"]), r["ehk"])
        if full is not None:
            emit(full)
    last = aggregator.clear_and_get()
    if last is not None:
        emit(last)
    return {"name": name, "max_size": max_size, "user_records": user_records, "aggregates": aggregates}


def _rec(pk, data, ehk=None):
    return {"pk": pk, "ehk": ehk, "data": data.hex()}


def generate():
    rng = random.Random(20261123)
    cases = []
    cases.append(_case("no_explicit_hash_keys",
                       [_rec("pk-%d" % i, b"record %d" % i) for i in range(10)]))
    cases.append(_case("explicit_hash_keys",
                       [_rec("pk-%d" % i, b"record %d" % i, str(rng.randrange(2 ** 128)))
                        for i in range(10)]))
    cases.append(_case("shared_keys",
                       [_rec("pk-%d" % (i % 3), b"shared %d" % i, str(i % 2)) for i in range(12)]))
    cases.append(_case("empty_data",
                       [_rec("e", b""), _rec("e", b""), _rec("f", b"x"), _rec("g", b"")]))
    cases.append(_case("non_ascii_keys",
                       [_rec(pk, ("données %s" % pk).encode("utf-8"))
                        for pk in ["ключ", "鍵", "🦀", "clé", "ключ", "ü" * 256]]))
    cases.append(_case("binary_data",
                       [_rec("bin", bytes(rng.randrange(256) for _ in range(rng.randrange(300))))
                        for _ in range(50)]))
    cases.append(_case("many_100_byte_records_51200",
                       [_rec("pk-%d" % rng.randrange(1000), bytes(rng.randrange(256) for _ in range(100)))
                        for _ in range(2000)]))
    cases.append(_case("many_small_limit_1024",
                       [_rec("k%d" % rng.randrange(20), bytes(rng.randrange(256) for _ in range(rng.randrange(200))),
                             str(rng.randrange(2 ** 128)))
                        for _ in range(300)], max_size=1024))
    print(json.dumps({"package_version": metadata.version("aws-kinesis-agg"), "cases": cases}))


def _deaggregate(raw_records):
    boto3_records = [{
        "SequenceNumber": r["seq"],
        "PartitionKey": r["pk"],
        "ApproximateArrivalTimestamp": 0,
        "Data": bytes.fromhex(r["data"]),
    } for r in raw_records]
    out = []
    for u in deagg.iter_deaggregate_records(boto3_records, data_format="Boto3"):
        k = u["kinesis"]
        data = k["data"]
        out.append({
            "seq": k["sequenceNumber"],
            "sub_seq": k.get("subSequenceNumber", 0),
            "aggregated": k.get("aggregated", False),
            "pk": k["partitionKey"],
            "ehk": k.get("explicitHashKey"),
            # Aggregated user records come back base64-encoded, pass-through ones as raw bytes.
            "data": (__import__("base64").b64decode(data) if k.get("aggregated") else data).hex(),
        })
    return out


def deaggregate():
    request = json.load(sys.stdin)
    print(json.dumps({"user_records": _deaggregate(request["records"])}))


def compare(path):
    request = json.load(sys.stdin)
    with open(path) as f:
        expected = json.load(f)["expected"]
    got = _deaggregate(request["records"])
    if len(got) != len(expected):
        print(json.dumps({"ok": False, "error": "got %d records, expected %d" % (len(got), len(expected))}))
        sys.exit(1)
    for i, (g, e) in enumerate(zip(got, expected)):
        for field in ("pk", "ehk", "data"):
            if g[field] != e[field]:
                print(json.dumps({"ok": False, "index": i, "field": field, "got": g[field], "expected": e[field]}))
                sys.exit(1)
    print(json.dumps({"ok": True, "records": len(got)}))


def main(argv):
    if len(argv) >= 2 and argv[1] == "generate":
        generate()
    elif len(argv) >= 2 and argv[1] == "deaggregate":
        deaggregate()
    elif len(argv) >= 3 and argv[1] == "compare":
        compare(argv[2])
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
