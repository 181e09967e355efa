#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: checks formatting and lints, installs the pinned
# helper tools it needs (under target/test-env), builds, runs every test (including the ones that
# need those tools), the doctests, checks the Prometheus rules, and stops whatever it started.
#
# Usage: scripts/test.sh            (from anywhere inside the repository)
# Env:   KCL_TEST_ENV=DIR           where helper tools are installed (default target/test-env)
#        AWS_ENDPOINT_URL_KINESIS    run the Kinesis tests against this server instead of starting
#                                    kinesis-local (the TLS/HTTP2 check then needs
#                                    KCL_TEST_KINESIS_TLS_ENDPOINT and KCL_TEST_TLS_CERT too)
#        AWS_ENDPOINT_URL_DYNAMODB   likewise for DynamoDB (instead of moto)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ENV_DIR=${KCL_TEST_ENV:-$ROOT/target/test-env}
mkdir -p "$ENV_DIR"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# A one-off build gains nothing from incremental caches, which would add over a gigabyte of disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
export AWS_EC2_METADATA_DISABLED=true

log() { printf '\n==> %s\n' "$*"; }

# ---- formatting and lints (fast failures first) -----------------------------------------------
log "checking formatting (cargo fmt --check)"
cargo fmt --all -- --check

log "linting (cargo clippy --workspace --all-targets -- -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

# ---- pinned helper tools -------------------------------------------------------------------
log "installing promtool (Debian's prometheus package, pinned) to check the alerting rules"
PROMTOOL=$(scripts/tools/promtool.sh install "$ENV_DIR/promtool" | tail -n 1)

if [ -x scripts/kpl/setup.sh ]; then
  log "installing the official KPL aggregation library (pinned) for interop tests"
  KCL_KPL_PYTHON=$(scripts/kpl/setup.sh "$ENV_DIR/kpl" | tail -n 1)
  export KCL_KPL_PYTHON
fi

log "installing moto (DynamoDB API, pinned) for the kcl-lease-dynamo tests"
scripts/servers/moto.sh install "$ENV_DIR/moto"

if [ -z "${AWS_ENDPOINT_URL_KINESIS:-}" ]; then
  log "installing kinesis-local (Kinesis API, pinned) for the AWS backend and end-to-end tests"
  scripts/servers/kinesis.sh install "$ENV_DIR/kinesis"
fi

# ---- build first, so servers started later do not compete with the compiler -----------------
log "building tests"
if cargo nextest --version >/dev/null 2>&1; then
  RUNNER=nextest
  cargo nextest run --workspace --no-run
else
  RUNNER=cargo
  cargo test --workspace --no-run
fi

log "building the record_sink example (the end-to-end tests run it as a black box)"
# With --workspace the features match the test build above, so only the example itself is
# compiled; `-p kcl-examples` alone would build the AWS SDK crates again with other features.
cargo build --workspace --example record_sink
KCL_RECORD_SINK=${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples/record_sink
export KCL_RECORD_SINK

log "building the kcl binary (the kcl-cli end-to-end test runs it as a black box)"
cargo build --workspace --bin kcl
KCL_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/kcl
export KCL_BIN

# ---- servers (loopback only), stopped on exit ------------------------------------------------
STOPS=()
stop_servers() {
  local stop
  for stop in "${STOPS[@]}"; do eval "$stop" || true; done
}
trap stop_servers EXIT

if [ -z "${AWS_ENDPOINT_URL_DYNAMODB:-}" ] && [ "${KCL_TEST_DYNAMODB:-}" != docker ]; then
  log "starting the DynamoDB test server (moto on 127.0.0.1)"
  STOPS+=("scripts/servers/moto.sh stop '$ENV_DIR/moto'")
  AWS_ENDPOINT_URL_DYNAMODB=$(scripts/servers/moto.sh start "$ENV_DIR/moto" | tail -n 1)
  export AWS_ENDPOINT_URL_DYNAMODB
fi

if [ -z "${AWS_ENDPOINT_URL_KINESIS:-}" ]; then
  log "starting the Kinesis test server (kinesis-local on 127.0.0.1)"
  STOPS+=("scripts/servers/kinesis.sh stop '$ENV_DIR/kinesis'")
  AWS_ENDPOINT_URL_KINESIS=$(scripts/servers/kinesis.sh start "$ENV_DIR/kinesis" | tail -n 1)
  export AWS_ENDPOINT_URL_KINESIS
  # The same server over TLS (HTTP/2), with the test certificate.
  KCL_TEST_KINESIS_TLS_ENDPOINT=$(cat "$ENV_DIR/kinesis/endpoint-tls")
  KCL_TEST_TLS_CERT=$ROOT/scripts/servers/tls/test-cert.pem
  export KCL_TEST_KINESIS_TLS_ENDPOINT KCL_TEST_TLS_CERT
fi
export AWS_REGION=${AWS_REGION:-us-east-1}
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}

# ---- run ------------------------------------------------------------------------------------
log "running tests (including those needing the helper tools)"
# testcontainers is compiled only when asked for (KCL_TEST_DYNAMODB=docker).
FEATURES=()
if [ "${KCL_TEST_DYNAMODB:-}" = docker ]; then FEATURES=(--features kcl-lease-dynamo/docker-tests); fi
if [ "$RUNNER" = nextest ]; then
  cargo nextest run --workspace "${FEATURES[@]}" --run-ignored all --no-fail-fast
else
  cargo test --workspace "${FEATURES[@]}" --no-fail-fast -- --include-ignored
fi

log "running doctests"
cargo test --workspace --doc

log "checking and unit-testing the Prometheus alerting rules (deploy/prometheus)"
"$PROMTOOL" check rules deploy/prometheus/kcl-alerts.yml
(cd deploy/prometheus && "$PROMTOOL" test rules kcl-alerts.test.yml)

log "all tests passed"
