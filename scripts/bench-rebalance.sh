#!/usr/bin/env bash
# Scale-out pause under incremental (cooperative-sticky) rebalancing, on Apache Kafka: 200
# devices stream in real time (one reading a second each, 200 readings/s) on 8 partitions; a
# second instance joins after 40 s and leaves (SIGTERM) 40 s later. Reports the longest gap
# between two written points of a partition that stayed with the first instance and of one
# that moved, and checks (as the test does) that no partition that stayed was revoked,
# restored or started cold, and that the points equal `replay`'s. Then the same run with
# librdkafka's eager default (range,roundrobin) for comparison (measured only: under it every
# partition is revoked and restored at each rebalance).
#
# It is tests/state.rs's instances_joining_and_leaving_move_only_the_partitions_that_change_owner
# at the benchmark's scale (SENSORCAST_BENCH_REBALANCE=1); the gaps are read by polling
# VictoriaMetrics every 250 ms, so they are exact to about a quarter of a second.
#
# Usage: scripts/bench-rebalance.sh
# Needs what scripts/test.sh installs (Java and Maven for Apache Kafka, victoria-metrics).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
cleanup() { scripts/kafka.sh stop "$work/kafka" || true; rm -rf "$work"; }
trap cleanup EXIT
SENSORCAST_TEST_BROKERS=$(scripts/kafka.sh start "$work/kafka")
export SENSORCAST_TEST_BROKERS SENSORCAST_BENCH_REBALANCE=1
echo "Apache Kafka $(scripts/kafka.sh version) on $SENSORCAST_TEST_BROKERS; $(nproc) cores"
for strategy in cooperative eager; do
  SENSORCAST_REBALANCE_STRATEGY=$strategy cargo test --release --locked --features integration --test state \
    instances_joining_and_leaving_move_only_the_partitions_that_change_owner -- --nocapture 2>&1 |
    tee "$work/test-$strategy.log" | grep -E "scale-out pause|partitions moved|test result|panicked" || true
  grep -q "test result: ok" "$work/test-$strategy.log" || { tail -n 60 "$work/test-$strategy.log"; exit 1; }
done
