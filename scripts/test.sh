#!/usr/bin/env bash
# sensorcast's test command (the README's second command; .ci/run calls it).
#
# Does its own set-up on a fresh machine of this kind, then runs the whole suite:
#   - Debian packages: a C toolchain (librdkafka is built from source by rdkafka-sys) and
#     VictoriaMetrics (the InfluxDB v2 write API stand-in the end-to-end tests write to);
#   - tansu, a Kafka-compatible broker, built once with `cargo install` and reused;
#   - starts tansu on a free loopback port (the tests start their own VictoriaMetrics
#     instances, so that they can stop and restart them), and stops it on exit, even on failure;
#   - cargo fmt --check, clippy with warnings denied, every unit test, the CLI end-to-end
#     tests and the serve end-to-end tests against the real servers (feature `integration`);
#   - cargo audit against an offline advisory database, when one is there (optional).
#
# Everything the tests read is in the repository (the PyTorch golden vectors are in
# tests/data/golden/). Environment:
#   SENSORCAST_ADVISORY_DB  offline RustSec advisory database for `cargo audit`
#                           (default: ../shared/advisory-db; the audit is skipped when absent)
#   SKIP_AUDIT=1            skip `cargo audit`
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
advisory_db=${SENSORCAST_ADVISORY_DB:-$root/../shared/advisory-db}
TANSU_VERSION=0.6.0

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
cargo --version
rustc --version
if ! ls tests/data/golden/*.json >/dev/null 2>&1; then
  echo "error: tests/data/golden/*.json is missing (the PyTorch golden vectors the kernel is tested against)" >&2
  exit 1
fi

packages=()
command -v cc >/dev/null 2>&1 || packages+=(build-essential)
command -v make >/dev/null 2>&1 || packages+=(make)
command -v victoria-metrics >/dev/null 2>&1 || packages+=(victoria-metrics)
command -v python3 >/dev/null 2>&1 || packages+=(python3)
if [ ${#packages[@]} -gt 0 ]; then
  step "installing Debian packages: ${packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
fi

# One build with every storage engine the tests use: in-memory (dynostore) and SQLite
# (libsql, a topic store that survives a broker restart). Kept in its own root, named by
# version and features, so that an older build with fewer features is never reused.
TANSU_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/sensorcast/tansu-$TANSU_VERSION-dynostore-libsql
if [ ! -x "$TANSU_ROOT/bin/tansu" ]; then
  step "building tansu $TANSU_VERSION with dynostore,libsql (once; reused afterwards)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql --root "$TANSU_ROOT"
fi
export PATH="$TANSU_ROOT/bin:$PATH"

logs=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

step "starting tansu"
port=$(free_port)
tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >"$logs/tansu.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.1
done
(echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "tansu did not start:"; cat "$logs/tansu.log"; exit 1; }
export SENSORCAST_TEST_BROKERS="127.0.0.1:$port"
echo "tansu on $SENSORCAST_TEST_BROKERS (log: $logs/tansu.log)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets --features integration -D warnings"
cargo clippy --release --all-targets --features integration --locked -- -D warnings

step "cargo test (unit, CLI end-to-end, serve end-to-end against tansu and VictoriaMetrics)"
cargo test --release --locked --features integration -- --test-threads=2

if [ "${SKIP_AUDIT:-0}" = 1 ]; then
  step "cargo audit skipped (SKIP_AUDIT=1)"
elif [ ! -d "$advisory_db" ]; then
  step "cargo audit skipped (no advisory database at $advisory_db; set SENSORCAST_ADVISORY_DB)"
else
  step "cargo audit (offline advisory database $advisory_db)"
  if ! command -v cargo-audit >/dev/null 2>&1; then
    cargo install cargo-audit --locked --quiet
  fi
  # Fails on any known vulnerability; "unmaintained" and similar notices are printed only.
  cargo audit --db "$advisory_db" --no-fetch
fi

step "done"
