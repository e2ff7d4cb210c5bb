#!/usr/bin/env bash
# End-to-end benchmark: Apache Kafka → sensorcast serve → VictoriaMetrics, all on this machine.
#
# 1. Throughput: N readings are produced up front, then `serve` starts; events/s is readings
#    divided by the time from the first reading consumed to the last point acknowledged.
# 2. Latency: one producer sends readings at a fixed rate (the third argument, default 100 k/s)
#    while `serve` runs; p50/p99 from Kafka create time to the database's acknowledgement are
#    read from the sensorcast_end_to_end_seconds histogram.
#
# 3. With PROFILE=1: where serve's CPU time goes in the throughput run (1.), by part of the
#    pipeline — `perf record` on the serve process, summed by scripts/profile_groups.py (needs
#    perf; the perf data is kept in PROFILE_OUT, default /tmp/sensorcast-serve.perf).
#    PERF_ARGS adds to perf record's arguments, e.g. PERF_ARGS="--call-graph dwarf,16384" to see
#    who calls a library function (`perf report -i … -G -S SYMBOL`).
#
# The latency run starts with a warm-up of LAT_WARMUP_S seconds (default 5; the same producer
# and devices, without a pause), reported apart; the figures that count are those of the
# readings acknowledged after it.
# LAT_INFLUX adds [influxdb] settings to the latency run (default: none, the defaults), e.g.
# LAT_INFLUX=$'batch_bytes = 262144\nconcurrency = 4'; LAT_OUTPUT adds [output] settings to it,
# e.g. LAT_OUTPUT=$'horizons = "first"\nanomaly = "basic"' (what a leaner output does to latency).
#
# Usage: [SENSORCAST_BIN=path] [PROFILE=1] [LAT_WARMUP_S=n] [LAT_INFLUX=…] [LAT_OUTPUT=…] scripts/bench-e2e.sh [devices] [readings-per-device] [rate]
# Needs what scripts/test.sh installs (Java and Maven for Apache Kafka, victoria-metrics) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
devices=${1:-1000}
readings=${2:-200}
rate=${3:-100000}
source scripts/sensorcast-bin.sh
work=$(mktemp -d)
pids=()
cleanup() { scripts/kafka.sh stop "$work/kafka" || true; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
vport=$(free_port); hport=$(free_port)
# Apache Kafka (scripts/kafka.sh: its pinned version, from the cached jars).
kaddr=$(scripts/kafka.sh start "$work/kafka")
victoria-metrics -httpListenAddr="127.0.0.1:$vport" -storageDataPath="$work/vm" -retentionPeriod=100y \
  -search.latencyOffset=0s -loggerLevel=ERROR >"$work/vm.log" 2>&1 & vmpid=$!; pids+=($vmpid)
# Up and listening (the free port can be taken between the check and the start): else stop.
for _ in $(seq 1 100); do curl -sf "127.0.0.1:$vport/health" >/dev/null && break; sleep 0.1; done
curl -sf "127.0.0.1:$vport/health" >/dev/null || { echo "victoria-metrics did not start:" >&2; tail -3 "$work/vm.log" >&2; exit 1; }
scripts/kafka.sh topic "$work/kafka" bench.tput 4
scripts/kafka.sh topic "$work/kafka" bench.lat 4
write_config() {
cat >"$work/$1.toml" <<TOML
[[streams]]
name = "pumps"
topic = "$2"
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
group_id = "bench-$1"
dead_letter_topic = ""
[influxdb]
url = "http://127.0.0.1:$vport"
$3
[engine]
max_linger = "10ms"
[http]
listen = "127.0.0.1:$hport"
[state]
dir = "$work/state-$1"
[output]
${4:-}
[log]
level = "warn"
TOML
}
# Throughput: large requests (4 MiB, flushed every 20 ms). Latency: the [influxdb] defaults.
write_config tput bench.tput 'flush_interval = "20ms"
batch_bytes = 4194304'
write_config lat bench.lat "${LAT_INFLUX:-}" "${LAT_OUTPUT:-}"
# A mistake in LAT_INFLUX or LAT_OUTPUT stops here, not after the throughput run.
$bin check-config --config "$work/lat.toml" >/dev/null
$bin simulate --devices 8 --readings 300 --interval 1s --out "$work/history.jsonl" >/dev/null
$bin train --config "$work/tput.toml" --input "$work/history.jsonl" >/dev/null
metric() { curl -s "127.0.0.1:$hport/metrics" | awk -v m="$1" '$1 ~ "^"m {s+=$2} END {printf "%.0f", s}'; }

total=$((devices * readings))
echo "producing $total readings ($devices devices × $readings)…"
t0=$(date +%s.%N)
$bin simulate --devices "$devices" --readings "$readings" --interval 1s --brokers "$kaddr" --topic bench.tput >/dev/null
t1=$(date +%s.%N)
echo "produced in $(python3 -c "print(round($t1 - $t0, 2))") s"
$bin serve --config "$work/tput.toml" 2>"$work/serve-tput.log" & spid=$!; pids+=($spid)
# Points per reading of this config (check-config counts them).
ppr=$($bin check-config --config "$work/tput.toml" | sed -n 's/^# stream "pumps": \([0-9]*\) points.*/\1/p')
points=$((total * ppr))
until [ "$(metric sensorcast_readings_total)" -gt 0 ] 2>/dev/null; do sleep 0.05; done
s0=$(date +%s.%N)
if [ -n "${PROFILE:-}" ]; then
  perf_out=${PROFILE_OUT:-/tmp/sensorcast-serve.perf}
  perf record -F 999 ${PERF_ARGS:-} -p "$spid" -o "$perf_out" </dev/null >"$work/perf.log" 2>&1 & perfpid=$!
fi
until [ "$(metric sensorcast_points_written_total)" -ge "$points" ] 2>/dev/null; do sleep 0.1; done
s1=$(date +%s.%N)
python3 -c "e=$s1-$s0; print(f'throughput: $total readings in {e:.2f} s -> {$total/e:,.0f} events/s end to end')"
# CPU seconds per process over the run (utime + stime, in clock ticks).
cpu() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"; }
python3 -c "
s, v = $(cpu $spid), $(cpu $vmpid)
print(f'cpu: sensorcast {s:.2f} s ({$total/max(s,1e-9):,.0f} readings per CPU-second), victoria-metrics {v:.2f} s (cumulative)')"
if [ -n "${PROFILE:-}" ]; then
  kill -INT "$perfpid" 2>/dev/null || echo "perf stopped early: $(cat "$work/perf.log")"
  wait "$perfpid" || true
  echo "where serve's CPU time went (perf, $perf_out):"
  perf report -i "$perf_out" --no-children --sort dso,sym --stdio --percent-limit 0 2>/dev/null |
    python3 scripts/profile_groups.py
fi
kill -TERM $spid; wait $spid || true

echo "latency at $rate readings/s…"
$bin serve --config "$work/lat.toml" 2>"$work/serve-lat.log" & spid=$!; pids+=($spid)
until curl -sf "127.0.0.1:$hport/health/ready" >/dev/null; do kill -0 "$spid" || exit 1; sleep 0.1; done
# One producer throughout, at the rate: a warm-up first (LAT_WARMUP_S seconds, default 5), left
# out of the figures, since the first seconds after serve starts and the producer connects are
# not the steady state a running plant sees; then the measured readings, those acknowledged
# after the warm-up's count was (the difference of the histogram then and at the end). Until
# 2026-12-07 the measured readings came from a second producer started after the warm-up's had
# finished, of devices new to serve, so a gap in the traffic, the new producer's connection and
# the new devices fell in the measured window and lifted its 99th percentile (by a quarter to a
# half at 300 readings a device).
warmup=$(( (${LAT_WARMUP_S:-5} * rate + devices - 1) / devices ))
$bin simulate --devices "$devices" --readings $((warmup + readings)) --interval 1s --rate "$rate" \
  --brokers "$kaddr" --topic bench.lat >/dev/null & ppid=$!; pids+=($ppid)
# The producer's end, once: stops the script if it failed.
produced=""
producer_done() {
  [ -n "$produced" ] && return
  wait "$ppid" || { echo "the producer (sensorcast simulate) failed" >&2; exit 1; }
  produced=1
}
# Until N readings are acknowledged (stops the script if serve stopped or the producer failed).
wait_acked() {
  until [ "$(metric sensorcast_end_to_end_seconds_count)" -ge "$1" ] 2>/dev/null; do
    kill -0 "$spid" 2>/dev/null || { echo "serve stopped:" >&2; tail -5 "$work/serve-lat.log" >&2; exit 1; }
    kill -0 "$ppid" 2>/dev/null || producer_done
    sleep 0.1
  done
}
wait_acked $((devices * warmup))
curl -s "127.0.0.1:$hport/metrics" >"$work/lat-warm.txt"
producer_done
wait_acked $((total + devices * warmup))
curl -s "127.0.0.1:$hport/metrics" >"$work/lat-end.txt"
python3 - "$work/lat-warm.txt" "$work/lat-end.txt" <<'PY'
import sys
sys.path.insert(0, "scripts")
from latency_histogram import buckets, difference, quantile
warm, end = (buckets(open(p).read()) for p in sys.argv[1:3])
assert end, "no latency histogram in /metrics"
# The readings acknowledged after the warm-up: the difference of the two histograms.
for name, b in (("after the warm-up", difference(end, warm)), ("warm-up", warm)):
    n = b[-1][1] if b else 0
    if n == 0:
        continue
    print("latency (%s): p50=%.0f ms p99=%.0f ms over %d readings (interpolated in 10 ms buckets below 1 s: +-5 ms; doubling buckets above 2 s)"
          % (name, quantile(b, .5) * 1000, quantile(b, .99) * 1000, n))
PY
if [ -n "${BENCH_VERBOSE:-}" ]; then curl -s "127.0.0.1:$hport/metrics" | grep -E "sink_write_seconds_(sum|count)|batch_readings_(sum|count)|end_to_end_seconds_bucket|engine_batch_seconds_(sum|count)|checkpoint"; fi
kill -TERM $spid; wait $spid || true
