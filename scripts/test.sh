#!/usr/bin/env bash
# sensorcast's test command (the README's second command; .ci/run calls it).
#
# Does its own set-up on a fresh machine of this kind, then runs the whole suite:
#   - Debian packages: a C toolchain (librdkafka is built from source by rdkafka-sys),
#     VictoriaMetrics (the InfluxDB v2 write API stand-in the end-to-end tests write to) and
#     InfluxDB 1.6 (`influxdb`: a real InfluxDB, v1 /write and InfluxQL /query);
#   - nisshi (tansu's continuation), a Kafka-compatible broker, built once with
#     `cargo +nightly install` and reused;
#   - starts nisshi on a free loopback port (the tests start their own VictoriaMetrics and
#     InfluxDB instances on free loopback ports, so that a test can stop and restart its
#     database, and brokers of their own where they restart one), and stops it on exit, even
#     on failure;
#   - cargo fmt --check, clippy with warnings denied, every unit test, the CLI end-to-end
#     tests and the serve end-to-end tests against the real servers (feature `integration`),
#     the static checks of deploy/ and the docs (tests/deploy.rs), Kafka over TLS
#     (tests/tls.rs), and `systemd-analyze verify` of deploy/systemd;
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
NISSHI_VERSION=0.8.1

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
command -v influxd >/dev/null 2>&1 || packages+=(influxdb)
command -v python3 >/dev/null 2>&1 || packages+=(python3)
# librdkafka is built with TLS against Debian's OpenSSL (found through pkg-config).
command -v pkg-config >/dev/null 2>&1 || packages+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || packages+=(libssl-dev)
# systemd-analyze verifies the units in deploy/systemd.
command -v systemd-analyze >/dev/null 2>&1 || packages+=(systemd)
if [ ${#packages[@]} -gt 0 ]; then
  step "installing Debian packages: ${packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi
# The package may start a system-wide influxd on :8086 where an init system runs; the tests
# never use it (they start their own), so it is left alone.
export SENSORCAST_TEST_INFLUXD_BIN=${SENSORCAST_TEST_INFLUXD_BIN:-$(command -v influxd)}

# The Kafka-compatible broker the tests run against: nisshi 0.8.1, tansu's continuation (same
# CLI). Not tansu 0.6.0 any more: it answers a fetch that starts inside a record batch with the
# next batch (a consumer restarting from a mid-batch offset silently loses the rest of that
# batch) and keeps dead members in a consumer group, so their partitions are never taken over;
# tests/state.rs checks both. nisshi's locked build needs rustc >= 1.96, which on these
# machines only the nightly toolchain has. One build with every storage engine the tests use:
# in-memory (dynostore) and SQLite (libsql, topics that survive a broker restart), kept in its
# own root named by version and features, so that an older build is never reused.
BROKER_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/sensorcast/nisshi-$NISSHI_VERSION-dynostore-libsql
if [ ! -x "$BROKER_ROOT/bin/nisshi" ]; then
  if ! rustc +nightly --version >/dev/null 2>&1; then
    echo "error: building nisshi $NISSHI_VERSION needs rustc >= 1.96 (the nightly toolchain here); none found" >&2
    exit 1
  fi
  step "building nisshi $NISSHI_VERSION with dynostore,libsql (once; reused afterwards)"
  cargo +nightly install nisshi --version "$NISSHI_VERSION" --locked --no-default-features \
    --features dynostore,libsql --root "$BROKER_ROOT"
fi
export PATH="$BROKER_ROOT/bin:$PATH"
export SENSORCAST_TEST_BROKER_BIN="$BROKER_ROOT/bin/nisshi"

logs=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

step "starting nisshi"
port=$(free_port)
nisshi broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://nisshi/ >"$logs/nisshi.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.1
done
(echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "nisshi did not start:"; cat "$logs/nisshi.log"; exit 1; }
export SENSORCAST_TEST_BROKERS="127.0.0.1:$port"
echo "nisshi on $SENSORCAST_TEST_BROKERS (log: $logs/nisshi.log)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets --features integration -D warnings"
cargo clippy --release --all-targets --features integration --locked -- -D warnings

step "cargo test (unit, CLI end-to-end, serve end-to-end against nisshi and VictoriaMetrics)"
cargo test --release --locked --features integration -- --test-threads=2

step "systemd-analyze verify deploy/systemd"
# The units as shipped, with the binary they start pointed at the one just built (verify
# checks that ExecStart= is executable).
units=$(mktemp -d)
for f in deploy/systemd/*.service deploy/systemd/*.timer; do
  sed "s#/usr/local/bin/sensorcast#$root/target/release/sensorcast#g" "$f" >"$units/$(basename "$f")"
done
systemd-analyze verify "$units"/*.service "$units"/*.timer
echo "units verified: $(cd deploy/systemd && echo *)"

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
