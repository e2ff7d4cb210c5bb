#!/usr/bin/env bash
# Retraining inside serve: what it costs serving, and how fast it trains.
#
# A backlog of readings is produced up front; `serve` (with `[retrain] every`, history from
# the Kafka topic, `retrain.threads` threads) consumes it at full speed towards
# VictoriaMetrics. Every second the script samples sensorcast_readings_in_total,
# sensorcast_retrain_running and sensorcast_swap_pending, and reports the consumption rate
# before the retrain, while it runs, while the swap that follows re-warms every device (both
# models step every reading), and after. The retrain's own throughput (windows/s) comes from
# its log line. Numbers depend on the machine: run it on the one you care about.
#
# Usage: scripts/bench-retrain.sh [devices] [readings-per-device] [retrain-threads]
# Needs what scripts/test.sh installs (nisshi, victoria-metrics) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
devices=${1:-500}
readings=${2:-4000}
threads=${3:-1}
cargo build --release --locked --quiet
bin=target/release/sensorcast
broker=$(ls "${XDG_CACHE_HOME:-$HOME/.cache}"/sensorcast/nisshi-*/bin/nisshi 2>/dev/null | tail -n 1)
[ -n "$broker" ] || broker=$(command -v nisshi || command -v tansu)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
kport=$(free_port); vport=$(free_port); hport=$(free_port)
$broker broker --listener-url "tcp://127.0.0.1:$kport" --advertised-listener-url "tcp://127.0.0.1:$kport" \
  --storage-engine memory://bench/ >"$work/broker.log" 2>&1 & pids+=($!)
victoria-metrics -httpListenAddr="127.0.0.1:$vport" -storageDataPath="$work/vm" -retentionPeriod=100y \
  -loggerLevel=ERROR >"$work/vm.log" 2>&1 & pids+=($!)
sleep 2
$broker topic create --broker "tcp://127.0.0.1:$kport" --partitions 4 bench.retrain >/dev/null
cat >"$work/serve.toml" <<TOML
[[streams]]
name = "pumps"
topic = "bench.retrain"
features = ["vibration", "temperature", "current", "pressure"]
interval = "10s"
[model]
registry = "$work/models"
hidden = 64
horizon = 3
poll_interval = "1s"
# Long enough for the swap's cost to be measured.
swap_warmup = 1000
[train]
epochs = 2
max_windows = 5000
[retrain]
every = "20s"
source = "kafka"
window = "30d"
holdout = "1h"
margin = 0.0
max_over_line_ratio = 1000.0
threads = $threads
[kafka]
brokers = "127.0.0.1:$kport"
group_id = "bench-retrain"
dead_letter_topic = ""
[influxdb]
url = "http://127.0.0.1:$vport"
flush_interval = "20ms"
batch_bytes = 4194304
[engine]
max_linger = "10ms"
[http]
listen = "127.0.0.1:$hport"
[state]
dir = "$work/state"
[log]
level = "info"
TOML
$bin simulate --devices 8 --readings 300 --interval 10s --out "$work/history.jsonl" >/dev/null
$bin train --config "$work/serve.toml" --input "$work/history.jsonl" >/dev/null
total=$((devices * readings))
echo "producing $total readings ($devices devices × $readings, 10 s apart)…"
$bin simulate --devices "$devices" --readings "$readings" --interval 10s \
  --brokers "127.0.0.1:$kport" --topic bench.retrain >/dev/null
$bin serve --config "$work/serve.toml" 2>"$work/serve.log" & pids+=($!)
metrics() { curl -s "127.0.0.1:$hport/metrics" || true; }
value() { awk -v m="$1" 'index($1, m"{") == 1 || $1 == m {s+=$2} END {printf "%.0f", s}'; }
echo "t,readings,retrain,swap" >"$work/samples.csv"
t0=$(date +%s.%N)
while :; do
  m=$(metrics)
  n=$(value sensorcast_readings_in_total <<<"$m")
  r=$(value sensorcast_retrain_running <<<"$m")
  s=$(value sensorcast_swap_pending <<<"$m")
  t=$(python3 -c "print(round($(date +%s.%N) - $t0, 2))")
  echo "$t,$n,$r,$s" >>"$work/samples.csv"
  [ "${n:-0}" -ge "$total" ] && break
  sleep 1
  if (( ${t%.*} > 900 )); then echo "timed out" >&2; break; fi
done
grep -o 'challenger trained: [^"]*windows/s)' "$work/serve.log" | head -n 3 || true
grep -o 'retrain decision: [^"]*' "$work/serve.log" | head -n 3 || true
python3 - "$work/samples.csv" <<'PY'
import csv, sys
rows = [(float(r["t"]), int(r["readings"] or 0), int(r["retrain"] or 0), int(r["swap"] or 0))
        for r in csv.DictReader(open(sys.argv[1]))]
def phase(rows, keep):
    # Rate over consecutive samples that both belong to the phase.
    dt = dn = 0.0
    for a, b in zip(rows, rows[1:]):
        if keep(a) and keep(b) and b[1] > a[1] > 0:
            dt += b[0] - a[0]; dn += b[1] - a[1]
    return (dn / dt if dt else float("nan")), dt
first_retrain = next((r[0] for r in rows if r[2]), None)
base = phase(rows, lambda r: r[2] == 0 and r[3] == 0 and (first_retrain is None or r[0] < first_retrain))
during = phase(rows, lambda r: r[2] == 1)
swap = phase(rows, lambda r: r[3] > 0 and r[2] == 0)
after = phase(rows, lambda r: first_retrain is not None and r[0] > first_retrain and r[2] == 0 and r[3] == 0)
for name, (rate, secs) in [("before any retrain", base), ("while retraining", during),
                           ("during the swap (both models step)", swap), ("after", after)]:
    rel = f"  ({rate / base[0]:.0%} of before)" if base[0] == base[0] and rate == rate and base[0] else ""
    print(f"{name:38s} {rate:9.0f} readings/s over {secs:5.1f} s{rel}")
PY
echo "samples: $work/samples.csv (kept until exit)"
