#!/usr/bin/env bash
# promtool (Prometheus's rule checker), pinned, from Debian's `prometheus` package, unpacked
# under DIR without installing the package (no service is started, no root needed when the
# package index is present).
#
#   scripts/tools/promtool.sh install DIR     fetch and unpack it; print the promtool path (last line)
set -euo pipefail

VERSION=2.42.0+ds-5+b6

[ $# -eq 2 ] && [ "$1" = install ] || { sed -n '2,6p' "$0" >&2; exit 2; }
dir=$2
bin=$dir/root/usr/bin/promtool
if [ -x "$bin" ] && "$bin" --version 2>&1 | grep -q "version ${VERSION%%+*}"; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dir"
(
  cd "$dir"
  rm -f prometheus_*.deb
  if ! apt-get download "prometheus=$VERSION" >/dev/null 2>&1; then
    # A fresh machine may have no package index yet.
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq >/dev/null
      apt-get download "prometheus=$VERSION" >/dev/null
    else
      echo "cannot download prometheus=$VERSION (run apt-get update as root first)" >&2
      exit 1
    fi
  fi
  rm -rf root
  dpkg-deb -x prometheus_*.deb root
  rm -f prometheus_*.deb
)
"$bin" --version >/dev/null
echo "$bin"
