#!/usr/bin/env bash
# Resident memory per device of a running `serve`, on the real growth path: Apache Kafka →
# sensorcast serve → VictoriaMetrics on this machine. D devices × R readings are produced up
# front; RSS is read once serve is ready (no device yet) and again once every point is
# written; the difference over D is what a device really costs, allocator included.
#
# With `live`, serve starts first and the readings arrive while it serves (at the rate the
# producer manages), which is how a plant feeds it; without, they are produced up front.
# Every 15 s it prints a sample (elapsed, points written, devices, RSS), so a long run shows
# whether memory settles or keeps growing.
#
# Usage: [SENSORCAST_BIN=path] scripts/bench-memory.sh [devices] [readings-per-device] [live]   (default 100000 2)
# Needs what scripts/test.sh installs (Java and Maven for Apache Kafka, victoria-metrics) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
devices=${1:-100000}
readings=${2:-2}
live=${3:-}
source scripts/sensorcast-bin.sh
work=$(mktemp -d)
pids=()
cleanup() { scripts/kafka.sh stop "$work/kafka" || true; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
vport=$(free_port); hport=$(free_port)
# Apache Kafka (scripts/kafka.sh: its pinned version, from the cached jars).
kaddr=$(scripts/kafka.sh start "$work/kafka")
victoria-metrics -httpListenAddr="127.0.0.1:$vport" -storageDataPath="$work/vm" -retentionPeriod=100y \
  -search.latencyOffset=0s -loggerLevel=ERROR >"$work/vm.log" 2>&1 & pids+=($!)
sleep 2
scripts/kafka.sh topic "$work/kafka" bench.mem 4
cat >"$work/mem.toml" <<TOML
[[streams]]
name = "pumps"
topic = "bench.mem"
features = ["vibration", "temperature", "current", "pressure"]
interval = "1s"
[model]
registry = "$work/models"
hidden = 64
horizon = 3
[train]
epochs = 3
[kafka]
brokers = "$kaddr"
group_id = "bench-mem"
dead_letter_topic = ""
[influxdb]
url = "http://127.0.0.1:$vport"
[http]
listen = "127.0.0.1:$hport"
[state]
dir = "$work/state"
[log]
level = "warn"
TOML
$bin simulate --devices 8 --readings 300 --interval 1s --out "$work/history.jsonl" >/dev/null
$bin train --config "$work/mem.toml" --input "$work/history.jsonl" >/dev/null
metric() { curl -s "127.0.0.1:$hport/metrics" | awk -v m="$1" '$1 == m || index($1, m"{") == 1 {s+=$2} END {printf "%.0f", s}'; }
rss() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$1/status"; }
total=$((devices * readings))
produce() {
  echo "producing $total readings ($devices devices × $readings)${live:+ while serving}…"
  $bin simulate --devices "$devices" --readings "$readings" --interval 1s --brokers "$kaddr" --topic bench.mem >/dev/null
}
[ -n "$live" ] || produce
$bin serve --config "$work/mem.toml" 2>"$work/serve.log" & spid=$!; pids+=($spid)
until curl -sf "127.0.0.1:$hport/health/ready" >/dev/null; do sleep 0.1; done
rss0=$(rss $spid)
[ -z "$live" ] || { produce & pids+=($!); }
peak=$rss0
start=$(date +%s); next=$((start + 15))
echo "seconds,points_written,devices,rss_mib"
# Points per reading of this config (check-config counts them).
ppr=$($bin check-config --config "$work/mem.toml" | sed -n 's/^# stream "pumps": \([0-9]*\) points.*/\1/p')
until [ "$(metric sensorcast_points_written_total)" -ge "$((total * ppr))" ] 2>/dev/null; do
  r=$(rss $spid); [ "$r" -gt "$peak" ] && peak=$r
  if [ "$(date +%s)" -ge "$next" ]; then
    next=$((next + 15))
    echo "$(($(date +%s) - start)),$(metric sensorcast_points_written_total),$(metric sensorcast_devices),$((r / 1048576))"
  fi
  sleep 0.2
done
sleep 2
rss1=$(rss $spid)
n=$(metric sensorcast_devices)
python3 -c "
d=$n; r0=$rss0; r1=$rss1; p=$peak
print(f'devices tracked: {d}')
print(f'rss: ready {r0/2**20:.1f} MiB, peak {p/2**20:.1f} MiB, after {r1/2**20:.1f} MiB')
print(f'rss growth per device: {(r1-r0)/max(d,1):.0f} bytes (peak {(p-r0)/max(d,1):.0f})')"
kill -TERM $spid; wait $spid || true
