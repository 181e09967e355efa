#!/usr/bin/env bash
# A DynamoDB API server for tests on machines without Docker: moto (pinned), loopback only, run by
# moto_serial.py so that conditional writes are atomic as in DynamoDB.
#
#   scripts/servers/moto.sh install DIR        create DIR/venv and install the pinned packages
#   scripts/servers/moto.sh start DIR [PORT]   start moto on 127.0.0.1:PORT (default: a free port),
#                                              wait until it answers, write DIR/moto.pid, print the
#                                              endpoint URL (last line of stdout)
#   scripts/servers/moto.sh stop DIR           stop the server whose PID is in DIR/moto.pid
#
# Use it in tests:
#   scripts/servers/moto.sh install "$DIR"
#   export AWS_ENDPOINT_URL_DYNAMODB=$(scripts/servers/moto.sh start "$DIR" | tail -n 1)
#   ...; scripts/servers/moto.sh stop "$DIR"
# The server log is DIR/moto.log.
set -euo pipefail

MOTO_VERSION=5.2.5
FLASK_VERSION=3.1.3
FLASK_CORS_VERSION=6.0.5

usage() {
  sed -n '2,15p' "$0" >&2
  exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
pidfile=$dir/moto.pid

. "$(dirname "$0")/common.sh"

case $cmd in
  install)
    mkdir -p "$dir"
    if [ -x "$dir/venv/bin/moto_server" ] \
      && "$dir/venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
      echo "moto $MOTO_VERSION already installed in $dir/venv" >&2
      exit 0
    fi
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install -q --disable-pip-version-check \
      "moto[dynamodb]==$MOTO_VERSION" "flask==$FLASK_VERSION" "flask-cors==$FLASK_CORS_VERSION"
    echo "moto $MOTO_VERSION installed in $dir/venv" >&2
    ;;
  start)
    port=${3:-auto}
    if [ "$port" = auto ]; then
      port=$(free_port)
    fi
    [ -x "$dir/venv/bin/moto_server" ] || { echo "moto is not installed in $dir: run '$0 install $dir'" >&2; exit 1; }
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "a moto server started from $dir is already running (PID $(cat "$pidfile"))" >&2
      exit 1
    fi
    url=http://127.0.0.1:$port
    if answers "$url"; then
      echo "something already listens on 127.0.0.1:$port" >&2
      exit 1
    fi
    # moto_serial.py: moto_server's application with requests applied one at a time (see there).
    MOTO_PORT=$port "$dir/venv/bin/python" "$(dirname "$0")/moto_serial.py" 127.0.0.1 "$port" \
      >"$dir/moto.log" 2>&1 &
    pid=$!
    echo "$pid" >"$pidfile"
    if ! wait_for_server moto "$url" "$pid" "$dir/moto.log" 200; then
      rm -f "$pidfile"
      exit 1
    fi
    echo "moto PID $pid listening on $url" >&2
    echo "$url"
    ;;
  stop)
    if [ ! -f "$pidfile" ]; then
      echo "no $pidfile: nothing to stop" >&2
      exit 0
    fi
    stop_pid moto "$(cat "$pidfile")" 50
    rm -f "$pidfile"
    ;;
  *)
    usage
    ;;
esac
