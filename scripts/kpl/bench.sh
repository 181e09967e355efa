#!/usr/bin/env bash
# KPL de-aggregation throughput of Kinesin (kcl-core), the official Python library and the official Node.js
# library, on the identical input, printed as one table. One command:
#
#   scripts/kpl/bench.sh
#
# Installs the pinned libraries (scripts/kpl/setup.sh, scripts/kpl/setup_node.sh) under
# $KCL_TEST_ENV (default target/test-env), runs kcl-core/benches/deagg.rs (which writes the input:
# 4.2 MB of 50 KB aggregates of 100-byte user records), then scripts/kpl/bench_python.py and
# scripts/kpl/bench_node.js on that file, all on one thread each, one after the other. The
# machine's load average is printed before and after: the figures are only as quiet as the
# machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
ENV_DIR=${KCL_TEST_ENV:-$ROOT/target/test-env}
mkdir -p "$ENV_DIR"
python=$(scripts/kpl/setup.sh "$ENV_DIR/kpl" | tail -n 1)
node_path=$(scripts/kpl/setup_node.sh "$ENV_DIR/kpl-node" | tail -n 1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
KCL_DEAGG_BENCH_DUMP="$work/input.bin" KCL_DEAGG_BENCH_TSV="$work/results.tsv" \
    cargo bench -p kcl-core --bench deagg
echo
"$python" scripts/kpl/bench_python.py "$work/input.bin" --tsv "$work/results.tsv"
echo
NODE_PATH="$node_path" node scripts/kpl/bench_node.js "$work/input.bin" --tsv "$work/results.tsv"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$python" scripts/kpl/bench_table.py "$work/results.tsv"
