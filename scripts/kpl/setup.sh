#!/usr/bin/env bash
# Creates a Python virtual environment in DIR with the official aws-kinesis-agg package (pinned in
# requirements.txt) and prints the interpreter path to use as KCL_KPL_PYTHON.
#
#   scripts/kpl/setup.sh /tmp/kpl-venv
#   KCL_KPL_PYTHON=/tmp/kpl-venv/bin/python cargo test -p kcl-core --test deagg_interop -- --include-ignored
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$1
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
"$python" -m venv "$dir"
"$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
"$dir/bin/python" -c 'import aws_kinesis_agg.aggregator, aws_kinesis_agg.deaggregator' >&2
cd "$dir" && echo "$(pwd)/bin/python"
