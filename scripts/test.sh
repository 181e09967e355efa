#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs the pinned helper tools it needs
# (under target/test-env), builds, runs every test (including the ones that need those tools),
# the doctests, and stops whatever it started.
#
# Usage: scripts/test.sh            (from anywhere inside the repository)
# Env:   KCL_TEST_ENV=DIR           where helper tools are installed (default target/test-env)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ENV_DIR=${KCL_TEST_ENV:-$ROOT/target/test-env}
mkdir -p "$ENV_DIR"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export AWS_EC2_METADATA_DISABLED=true

log() { printf '\n==> %s\n' "$*"; }

# ---- pinned helper tools -------------------------------------------------------------------
if [ -x scripts/kpl/setup.sh ]; then
  log "installing the official KPL aggregation library (pinned) for interop tests"
  KCL_KPL_PYTHON=$(scripts/kpl/setup.sh "$ENV_DIR/kpl" | tail -n 1)
  export KCL_KPL_PYTHON
fi

log "installing moto (DynamoDB API, pinned) for the kcl-lease-dynamo tests"
scripts/servers/moto.sh install "$ENV_DIR/moto"

# ---- build first, so servers started later do not compete with the compiler -----------------
log "building tests"
if cargo nextest --version >/dev/null 2>&1; then
  RUNNER=nextest
  cargo nextest run --workspace --no-run
else
  RUNNER=cargo
  cargo test --workspace --no-run
fi

# ---- servers (loopback only), stopped on exit ------------------------------------------------
if [ -z "${AWS_ENDPOINT_URL_DYNAMODB:-}" ] && [ "${KCL_TEST_DYNAMODB:-}" != docker ]; then
  log "starting the DynamoDB test server (moto on 127.0.0.1)"
  AWS_ENDPOINT_URL_DYNAMODB=$(scripts/servers/moto.sh start "$ENV_DIR/moto" | tail -n 1)
  export AWS_ENDPOINT_URL_DYNAMODB
  trap 'scripts/servers/moto.sh stop "$ENV_DIR/moto"' EXIT
fi

# ---- run ------------------------------------------------------------------------------------
log "running tests (including those needing the helper tools)"
if [ "$RUNNER" = nextest ]; then
  cargo nextest run --workspace --run-ignored all --no-fail-fast
else
  cargo test --workspace --no-fail-fast -- --include-ignored
fi

log "running doctests"
cargo test --workspace --doc

log "all tests passed"
