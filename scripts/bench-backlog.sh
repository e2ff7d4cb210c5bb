#!/usr/bin/env bash
# Catching up on a backlog: peak resident memory and throughput of `serve` started after N
# readings were produced while it was down (a plant restarting after a weekend outage), on the
# real path: Apache Kafka → sensorcast serve (default config: hidden 64, 4 features, default
# output) → VictoriaMetrics, all on this machine. Each size gets a topic and group of its own.
# Peak memory must not grow with the backlog: it is bounded by the configuration (the formula
# in docs/OPERATIONS.md, "Memory"), which the script prints beside the measurement.
#
# Usage: [SENSORCAST_BIN=path] scripts/bench-backlog.sh [devices] [backlog...]   (default 1000 1000000 4000000)
# Needs what scripts/test.sh installs (Java and Maven for Apache Kafka, victoria-metrics) and a
# release build.
set -euo pipefail
cd "$(dirname "$0")/.."
devices=${1:-1000}
if [ $# -gt 1 ]; then shift; sizes=("$@"); else sizes=(1000000 4000000); fi
source scripts/sensorcast-bin.sh
work=$(mktemp -d)
pids=()
cleanup() { scripts/kafka.sh stop "$work/kafka" || true; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
vport=$(free_port); hport=$(free_port)
kaddr=$(scripts/kafka.sh start "$work/kafka")
victoria-metrics -httpListenAddr="127.0.0.1:$vport" -storageDataPath="$work/vm" -retentionPeriod=100y \
  -search.latencyOffset=0s -loggerLevel=ERROR >"$work/vm.log" 2>&1 & pids+=($!)
sleep 2
config() { # topic group
  cat <<TOML
[[streams]]
name = "pumps"
topic = "$1"
features = ["vibration", "temperature", "current", "pressure"]
interval = "1s"
[model]
registry = "$work/models"
[train]
epochs = 3
[kafka]
brokers = "$kaddr"
group_id = "$2"
dead_letter_topic = ""
[influxdb]
url = "http://127.0.0.1:$vport"
[http]
listen = "127.0.0.1:$hport"
[state]
dir = "$work/state-$2"
[log]
level = "warn"
TOML
}
config unused unused >"$work/train.toml"
$bin simulate --devices 8 --readings 300 --interval 1s --out "$work/history.jsonl" >/dev/null
$bin train --config "$work/train.toml" --input "$work/history.jsonl" >/dev/null
metric() { curl -s "127.0.0.1:$hport/metrics" | awk -v m="$1" '$1 == m || index($1, m"{") == 1 {s+=$2} END {printf "%.0f", s}'; }
status() { awk -v k="$2:" '$1 == k {print $2 * 1024}' "/proc/$1/status"; }
ppr=$($bin check-config --config "$work/train.toml" | sed -n 's/^# stream "pumps": \([0-9]*\) points.*/\1/p')
# Output bytes per reading of this config (the default output), from a replay.
$bin replay --config "$work/train.toml" --input "$work/history.jsonl" --output "$work/replay.lp" >/dev/null
bout=$(( $(stat -c %s "$work/replay.lp") / 2400 ))
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $devices devices, $ppr points ($bout bytes) per reading"
for total in "${sizes[@]}"; do
  topic="backlog.$total"; group="bench-backlog-$total"
  scripts/kafka.sh topic "$work/kafka" "$topic" 4 >/dev/null
  config "$topic" "$group" >"$work/$group.toml"
  per=$((total / devices))
  t0=$(date +%s.%N)
  $bin simulate --devices "$devices" --readings "$per" --interval 1s --brokers "$kaddr" --topic "$topic" >/dev/null
  t1=$(date +%s.%N)
  $bin serve --config "$work/$group.toml" 2>"$work/$group.log" & spid=$!; pids+=($spid)
  until curl -sf "127.0.0.1:$hport/health/ready" >/dev/null; do sleep 0.1; done
  ready=$(date +%s.%N); rss0=$(status $spid VmRSS)
  want=$(( $(metric sensorcast_points_written_total) + devices * per * ppr ))
  until [ "$(metric sensorcast_points_written_total)" -ge "$want" ] 2>/dev/null; do sleep 0.5; done
  done_at=$(date +%s.%N)
  peak=$(status $spid VmHWM); cpu=$(awk '{print ($14 + $15) / 100}' "/proc/$spid/stat")
  kill -TERM $spid; wait $spid || true
  python3 -c "
n=$devices*$per; rss0=$rss0; peak=$peak; secs=$done_at-$ready; cpu=$cpu
# docs/OPERATIONS.md, Memory: the default config's sizes (engine.max_batch 4096, influxdb
# queue_batches 16, concurrency 2, batch_bytes 1 MiB; librdkafka prefetch 16 MiB + 1 MiB per
# partition, 4 here; a decoded reading ≤ 512 bytes; output buffers at up to twice their length,
# as a growing String may be; devices at 2 KiB and one checkpoint copy).
mb, qb, conc, bb, bin_, bout = 4096, 16, 2, 1 << 20, 512, $bout
bound = rss0 + (16 + 4) * 2**20 + 4 * mb * bin_ + 2 * mb * bout * (qb + conc + 2) + (conc + 1) * bb + $devices * 2 * 2048
print(f'backlog {n:>9,} readings (produced in {$t1-$t0:.0f} s): caught up in {secs:.1f} s = {n/secs:,.0f} readings/s, '
      f'{n/cpu:,.0f} per CPU-second; rss at ready {rss0/2**20:.0f} MiB, peak {peak/2**20:.0f} MiB '
      f'(bound from the configuration {bound/2**20:.0f} MiB)')"
done
