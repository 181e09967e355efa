# Shared by the server scripts (moto.sh, kinesis.sh): sourced, not run.

# A free loopback port (several checkouts may run their tests at once on one machine).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Whether anything answers HTTP on URL (any status counts: the server is up).
answers() {
  python3 - "$1" <<'PY'
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=1)
except urllib.error.HTTPError:
    pass
except Exception:
    sys.exit(1)
PY
}

# stop_pid NAME PID TENTHS: SIGTERM, then SIGKILL if still running after TENTHS tenths of a second.
stop_pid() {
  local name=$1 pid=$2 tenths=$3
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 "$tenths"); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid" 2>/dev/null || true
  fi
  echo "stopped $name PID $pid" >&2
}

# wait_for_server NAME URL PID LOG TENTHS: waits (bounded) until URL answers. On failure (the
# process exited, or no answer in time) prints why, stops the process and returns 1.
wait_for_server() {
  local name=$1 url=$2 pid=$3 log=$4 tenths=$5
  for _ in $(seq 1 "$tenths"); do
    answers "$url" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited; log:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "$name did not answer on $url within $((tenths / 10)) s; stopping it" >&2
  stop_pid "$name" "$pid" 30
  return 1
}
