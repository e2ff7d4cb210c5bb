#!/usr/bin/env bash
# sensorcast's test command (the README's second command; .ci/run calls it).
#
# Does its own set-up on a fresh machine of this kind, then runs the whole suite:
#   - Debian packages: a C toolchain (librdkafka is built from source by rdkafka-sys),
#     VictoriaMetrics (the InfluxDB v2 write API stand-in the end-to-end tests write to) and
#     InfluxDB 1.6 (`influxdb`: a real InfluxDB, v1 /write and InfluxQL /query);
#   - Apache Kafka's jars (scripts/kafka.sh, pinned version, fetched once from Maven Central and
#     cached); starts a single-node KRaft broker on free loopback ports (the tests start their
#     own VictoriaMetrics and InfluxDB instances on free loopback ports, so that a test can stop
#     and restart its database, and brokers of their own, with the same script, where they
#     restart or configure one), and stops it on exit, even on failure;
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
#   SENSORCAST_CACHE        where scripts/kafka.sh caches Kafka's jars
#                           (default ${XDG_CACHE_HOME:-$HOME/.cache}/sensorcast)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
advisory_db=${SENSORCAST_ADVISORY_DB:-$root/../shared/advisory-db}

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
# Apache Kafka runs from its jars on Java 17+, fetched through Maven.
command -v java >/dev/null 2>&1 || packages+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || packages+=(maven)
# librdkafka is built with TLS against Debian's OpenSSL (found through pkg-config).
command -v pkg-config >/dev/null 2>&1 || packages+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || packages+=(libssl-dev)
# pkill stops what a test left running (below).
command -v pkill >/dev/null 2>&1 || packages+=(procps)
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

logs=$(mktemp -d)
broker_dir=$logs/kafka
# The tests' own scratch folders (brokers, databases) go under $scratch, so that whatever a
# test left running (its process killed before it could stop its servers) is found by path
# and stopped here; the broker of a test runs in a session of its own and would outlive it.
scratch=$logs/tmp
mkdir -p "$scratch"
cleanup() {
  scripts/kafka.sh stop "$broker_dir" || true
  if pkill -TERM -f "$scratch/" 2>/dev/null; then
    echo "stopped servers the tests left running under $scratch"
    sleep 5
    pkill -KILL -f "$scratch/" 2>/dev/null || true
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT

# Apache Kafka: scripts/kafka.sh fetches its jars once (cached by version) and runs the broker.
step "starting Apache Kafka (scripts/kafka.sh)"
java -version 2>&1 | head -n 1
started=$(date +%s)
SENSORCAST_TEST_BROKERS=$(scripts/kafka.sh start "$broker_dir")
export SENSORCAST_TEST_BROKERS
echo "Apache Kafka $(scripts/kafka.sh version) on $SENSORCAST_TEST_BROKERS in $(($(date +%s) - started)) s (logs: $broker_dir/logs)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets --features integration -D warnings"
cargo clippy --release --all-targets --features integration --locked -- -D warnings

step "cargo test (unit, CLI end-to-end, serve end-to-end against Apache Kafka, VictoriaMetrics and InfluxDB 1.6)"
TMPDIR=$scratch cargo test --release --locked --features integration -- --test-threads=2

step "cargo test --ignored (exhaustive checks too slow for a plain cargo test: every f32 written as before)"
cargo test --release --locked --features integration --lib -- --ignored

step "systemd-analyze verify and security deploy/systemd"
# The units as shipped, with the binary they start pointed at the one just built (verify
# checks that ExecStart= is executable).
units=$(mktemp -d)
for f in deploy/systemd/*.service deploy/systemd/*.timer; do
  sed "s#/usr/local/bin/sensorcast#$root/target/release/sensorcast#g" "$f" >"$units/$(basename "$f")"
done
systemd-analyze verify "$units"/*.service "$units"/*.timer
echo "units verified: $(cd deploy/systemd && echo *)"
# The service's sandbox, as deploy/README.md rates it: an exposure above 2.0 (systemd's
# threshold is in tenths) fails.
systemd-analyze security --offline=yes --threshold=20 "$units"/sensorcast.service | tail -1

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
