#!/usr/bin/env bash
# Consumer CPU benchmark: Kinesin's record_sink (release, polling, SQLite leases) and the Python
# peer async-kinesis 3.0.1 consume the same kinesis-local stream of RECORDS records (default
# 100000, 4 shards, 100-byte records) one after the other; each writes one JSON line per record.
# Prints one JSON line per consumer: wall time, CPU (user+system of the consumer process only),
# records/s and CPU seconds per million records. See the README's benchmark section.
#
#   scripts/bench/consumer_cpu.sh [RECORDS]
#
# Installs kinesis-local and a venv with async-kinesis under target/bench-env; starts
# kinesis-local on 127.0.0.1 unless AWS_ENDPOINT_URL_KINESIS is set, and stops it on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
RECORDS=${1:-100000}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
DIR=${KCL_BENCH_ENV:-$TARGET/bench-env}

mkdir -p "$DIR"
export AWS_EC2_METADATA_DISABLED=true AWS_REGION=${AWS_REGION:-us-east-1}
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}

if [ ! -x "$DIR/venv/bin/python" ] || ! "$DIR/venv/bin/python" -c 'import kinesis' 2>/dev/null; then
  python3 -m venv "$DIR/venv"
  "$DIR/venv/bin/pip" install -q --disable-pip-version-check 'async-kinesis==3.0.1'
fi
PY=$DIR/venv/bin/python
cargo build --release -q -p kcl-examples --example record_sink
SINK=$TARGET/release/examples/record_sink

if [ -z "${AWS_ENDPOINT_URL_KINESIS:-}" ]; then
  scripts/servers/kinesis.sh install "$DIR/kinesis"
  trap 'scripts/servers/kinesis.sh stop "$DIR/kinesis"' EXIT
  AWS_ENDPOINT_URL_KINESIS=$(scripts/servers/kinesis.sh start "$DIR/kinesis" | tail -n 1)
  export AWS_ENDPOINT_URL_KINESIS
fi

STREAM=bench-$$-$RECORDS
echo "producing $RECORDS records into $STREAM" >&2
"$PY" scripts/bench/consumer_cpu.py produce "$STREAM" 4 "$RECORDS"

OUT=$DIR/out-$STREAM
mkdir -p "$OUT"
"$PY" scripts/bench/consumer_cpu.py measure kinesin "$RECORDS" "$OUT/kinesin.jsonl" -- \
  "$SINK" --stream "$STREAM" --application "bench-$$" --worker-id bench \
  --lease-table "sqlite:$OUT/leases.db" --retrieval polling --initial-position trim-horizon \
  --output "$OUT/kinesin.jsonl"
"$PY" scripts/bench/consumer_cpu.py measure async-kinesis "$RECORDS" "$OUT/peer.jsonl" -- \
  "$PY" scripts/bench/consumer_cpu.py peer "$STREAM" "$OUT/peer.jsonl"
