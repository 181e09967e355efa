#!/usr/bin/env bash
# Installs the official KPL aggregation library for Node.js (aws-kinesis-agg, pinned with its
# dependencies in node/package-lock.json) into DIR and prints the node_modules directory to use as
# NODE_PATH.
#
#   NODE_PATH=$(scripts/kpl/setup_node.sh /tmp/kpl-node) node scripts/kpl/bench_node.js FILE
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$1
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
cp "$here/node/package.json" "$here/node/package-lock.json" "$dir/"
# --ignore-scripts: protobufjs's postinstall only checks optional CLI dependencies.
(cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
(cd "$dir" && node -e 'require("aws-kinesis-agg")' >&2)
cd "$dir/node_modules" && pwd
