#!/usr/bin/env python3
"""CPU cost of consuming a Kinesis stream: Kinesin's record_sink beside the Python peer
async-kinesis, on the same stream of kinesis-local, on this machine.

    scripts/bench/consumer_cpu.sh [RECORDS]      (the wrapper installs what this needs)

Subcommands (used by the wrapper):
    produce STREAM SHARDS RECORDS       create STREAM and put RECORDS 100-byte records over 1000 keys
    peer STREAM OUTPUT                  consume STREAM with async-kinesis, one JSON line per record
    measure NAME RECORDS OUTPUT -- CMD  run CMD, wait until OUTPUT has RECORDS lines, read the
                                        process's user+system CPU from /proc, stop it (SIGTERM),
                                        print one JSON result line

Each consumer reads the whole stream from TRIM_HORIZON and writes one JSON line per record
(base64 payload, processing time) to its own file; the measurement covers the consumer process
only (not kinesis-local), from its start until the last record's line is written.
"""

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time


def endpoint():
    return os.environ["AWS_ENDPOINT_URL_KINESIS"]


async def produce(stream, shards, records):
    from aiobotocore.session import get_session

    session = get_session()
    async with session.create_client("kinesis", endpoint_url=endpoint(), region_name="us-east-1") as client:
        await client.create_stream(StreamName=stream, ShardCount=shards)
        while True:
            d = await client.describe_stream_summary(StreamName=stream)
            if d["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                break
            await asyncio.sleep(0.1)
        payload = b"x" * 90
        sent = 0
        while sent < records:
            batch = [
                {"Data": b"%09d" % i + payload, "PartitionKey": "key-%d" % (i % 1000)}
                for i in range(sent, min(sent + 500, records))
            ]
            while batch:
                out = await client.put_records(StreamName=stream, Records=batch)
                batch = [e for e, r in zip(batch, out["Records"]) if "ErrorCode" in r]
            sent = min(sent + 500, records)


async def peer(stream, output):
    from kinesis import Consumer
    from kinesis.processors import StringProcessor

    with open(output, "a") as out:
        async with Consumer(
            stream_name=stream,
            endpoint_url=endpoint(),
            region_name="us-east-1",
            processor=StringProcessor(),
            iterator_type="TRIM_HORIZON",
            sleep_time_no_records=0.2,
        ) as consumer:
            while True:
                async for item in consumer:
                    line = {
                        "data": base64.b64encode(item.encode()).decode(),
                        "processed_at_ms": int(time.time() * 1000),
                    }
                    out.write(json.dumps(line) + "\n")
                out.flush()
                await asyncio.sleep(0.05)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    # utime, stime are fields 14 and 15 (1-based) of the whole line; after ')' they are 12, 13.
    return (int(fields[11]) + int(fields[12])) / ticks


def count_lines(path):
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def measure(name, records, output, cmd):
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited early with {proc.returncode}")
            if count_lines(output) >= records:
                break
            if time.monotonic() - start > 1800:
                raise SystemExit(f"{name} did not finish within 30 minutes")
            time.sleep(0.05)
        wall = time.monotonic() - start
        cpu = cpu_seconds(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(json.dumps({
        "consumer": name,
        "records": records,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "records_per_s": round(records / wall),
        "cpu_s_per_million": round(cpu * 1_000_000 / records, 1),
    }))


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__)
        sys.exit(2)
    if args[0] == "produce":
        asyncio.run(produce(args[1], int(args[2]), int(args[3])))
    elif args[0] == "peer":
        try:
            asyncio.run(peer(args[1], args[2]))
        except KeyboardInterrupt:
            pass
    elif args[0] == "measure":
        sep = args.index("--")
        measure(args[1], int(args[2]), args[3], args[sep + 1:])
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
