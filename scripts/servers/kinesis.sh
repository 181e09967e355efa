#!/usr/bin/env bash
# A Kinesis API server for tests on machines without Docker: kinesis-local (kinesis-mock built for
# Node, pinned, from npm), loopback only.
#
#   scripts/servers/kinesis.sh install DIR     install the pinned package under DIR
#   scripts/servers/kinesis.sh start DIR       start it on 127.0.0.1 (free ports), wait until it
#                                              answers, write DIR/kinesis.pid, DIR/endpoint (plain
#                                              http URL) and DIR/endpoint-tls (https URL, HTTP/2,
#                                              certificate scripts/servers/tls/test-cert.pem), print
#                                              the plain URL (last line of stdout)
#   scripts/servers/kinesis.sh stop DIR        stop the server whose PID is in DIR/kinesis.pid
#                                              (SIGTERM, then SIGKILL after 3 s: it can hang while a
#                                              keep-alive connection is open)
#
# kinesis-local binds 0.0.0.0 and has no host flag: loopback.js, preloaded with `node -r`, forces
# every listen onto 127.0.0.1. State changes (create, split, merge, consumers) are instant and the
# open-shard limit is raised. The server log is DIR/kinesis.log.
set -euo pipefail

KINESIS_LOCAL_VERSION=0.6.2
HERE=$(cd "$(dirname "$0")" && pwd)

usage() {
  sed -n '2,17p' "$0" >&2
  exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
pidfile=$dir/kinesis.pid
main=$dir/node_modules/kinesis-local/main.js

. "$HERE/common.sh"

case $cmd in
  install)
    mkdir -p "$dir"
    if [ -f "$dir/node_modules/kinesis-local/package.json" ] \
      && grep -q "\"version\" : \"$KINESIS_LOCAL_VERSION\"" "$dir/node_modules/kinesis-local/package.json"; then
      echo "kinesis-local $KINESIS_LOCAL_VERSION already installed in $dir" >&2
      exit 0
    fi
    npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$dir" \
      "kinesis-local@$KINESIS_LOCAL_VERSION" >&2
    echo "kinesis-local $KINESIS_LOCAL_VERSION installed in $dir" >&2
    ;;
  start)
    [ -f "$main" ] || { echo "kinesis-local is not installed in $dir: run '$0 install $dir'" >&2; exit 1; }
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "a kinesis-local started from $dir is already running (PID $(cat "$pidfile"))" >&2
      exit 1
    fi
    plain=$(free_port)
    tls=$(free_port)
    while [ "$tls" = "$plain" ]; do tls=$(free_port); done
    # The bundled certificate has no subjectAltName (rustls refuses it): use ours, for 127.0.0.1.
    python3 - "$HERE/tls/test-key.pem" "$HERE/tls/test-cert.pem" "$dir/server.json" <<'PY'
import json, sys
key, cert, out = sys.argv[1:]
json.dump({"server": {"key": open(key).read(), "cert": open(cert).read()}}, open(out, "w"))
PY
    KINESIS_MOCK_PLAIN_PORT=$plain KINESIS_MOCK_TLS_PORT=$tls KINESIS_MOCK_CERT_PATH=$dir/server.json \
      SHARD_LIMIT=10000 LOG_LEVEL=${KINESIS_LOCAL_LOG_LEVEL:-WARN} \
      CREATE_STREAM_DURATION=0ms DELETE_STREAM_DURATION=0ms SPLIT_SHARD_DURATION=0ms \
      MERGE_SHARDS_DURATION=0ms UPDATE_SHARD_COUNT_DURATION=0ms \
      REGISTER_STREAM_CONSUMER_DURATION=0ms DEREGISTER_STREAM_CONSUMER_DURATION=0ms \
      node -r "$HERE/loopback.js" "$main" >"$dir/kinesis.log" 2>&1 &
    pid=$!
    echo "$pid" >"$pidfile"
    url=http://127.0.0.1:$plain
    if ! wait_for_server kinesis-local "$url" "$pid" "$dir/kinesis.log" 300; then
      rm -f "$pidfile"
      exit 1
    fi
    echo "$url" >"$dir/endpoint"
    echo "https://127.0.0.1:$tls" >"$dir/endpoint-tls"
    echo "kinesis-local PID $pid listening on $url and https://127.0.0.1:$tls" >&2
    echo "$url"
    ;;
  stop)
    if [ ! -f "$pidfile" ]; then
      echo "no $pidfile: nothing to stop" >&2
      exit 0
    fi
    stop_pid kinesis-local "$(cat "$pidfile")" 30
    rm -f "$pidfile" "$dir/endpoint" "$dir/endpoint-tls"
    ;;
  *)
    usage
    ;;
esac
