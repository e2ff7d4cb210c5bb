#!/usr/bin/env bash
# Retraining inside serve, and model swaps: what they cost serving, and how fast it trains.
#
# One backlog of readings is produced up front; `serve` then consumes all of it towards
# VictoriaMetrics three times, each time as a new consumer group from the first offset:
#   baseline  nothing else runs;
#   retrain   `[retrain] every = "1s"`: retrains (history from the Kafka topic, on
#             `retrain.threads` threads) run back to back inside serve for the whole run;
#   swap      a second model is promoted as soon as serve is up, with a swap_warmup longer than
#             the backlog, so every reading is stepped through both models for the whole run.
# Every second the script samples sensorcast_readings_total, sensorcast_retrain_running,
# sensorcast_swap_pending, serve's resident memory and that of its children (the retrain
# process); each run's rate is taken over the samples in its phase (retrain running, swap
# pending, or neither for the baseline), and each run's peak RSS is printed, so the serving
# process's memory during retrains can be compared with the baseline's. The retrain's own throughput
# (windows/s) comes from its log lines. Numbers depend on the machine: run it on the one you
# care about; the ratios are what carries over.
#
# Usage: [SENSORCAST_BIN=path] scripts/bench-retrain.sh [devices] [readings-per-device] [retrain-threads]
# Needs what scripts/test.sh installs (Java and Maven for Apache Kafka, victoria-metrics) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
devices=${1:-500}
readings=${2:-3000}
threads=${3:-1}
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
  -loggerLevel=ERROR >"$work/vm.log" 2>&1 & pids+=($!)
sleep 2
scripts/kafka.sh topic "$work/kafka" bench.retrain 4
write_config() { # name, extra TOML
cat >"$work/$1.toml" <<TOML
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
swap_warmup = 1000000
[train]
epochs = 2
max_windows = 5000
[kafka]
brokers = "$kaddr"
group_id = "bench-$1"
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
dir = "$work/state-$1"
[log]
level = "info"
$2
TOML
}
write_config warmup ""
write_config baseline ""
write_config retrain "[retrain]
every = \"1s\"
source = \"kafka\"
window = \"30d\"
holdout = \"1h\"
threads = $threads"
write_config swap ""
$bin simulate --devices 8 --readings 300 --interval 10s --out "$work/history.jsonl" >/dev/null
$bin train --config "$work/baseline.toml" --input "$work/history.jsonl" >/dev/null
first=$(cat "$work/models/pumps/current")
SENSORCAST__TRAIN__SEED=7 $bin train --config "$work/baseline.toml" --input "$work/history.jsonl" >/dev/null
second=$(cat "$work/models/pumps/current")
$bin models promote --config "$work/baseline.toml" "$first" >/dev/null
total=$((devices * readings))
echo "producing $total readings ($devices devices × $readings, 10 s apart)…"
$bin simulate --devices "$devices" --readings "$readings" --interval 10s \
  --brokers "$kaddr" --topic bench.retrain >/dev/null
rss() { awk '/^VmRSS:/ {print $2 * 1024; f=1} END {if (!f) print 0}' "/proc/$1/status" 2>/dev/null || echo 0; }
value() { awk -v m="$1" 'index($1, m"{") == 1 || $1 == m {s+=$2} END {printf "%.0f", s}'; }
run() { # name
  $bin serve --config "$work/$1.toml" 2>"$work/serve-$1.log" & local spid=$!
  pids+=($spid)
  until curl -sf "127.0.0.1:$hport/health/live" >/dev/null; do sleep 0.2; done
  echo "t,readings,retrain,swap,rss,child_rss" >"$work/samples-$1.csv"
  local t0; t0=$(date +%s.%N)
  while :; do
    local m n r s t rs rc
    m=$(curl -s "127.0.0.1:$hport/metrics" || true)
    n=$(value sensorcast_readings_total <<<"$m")
    r=$(value sensorcast_retrain_running <<<"$m")
    s=$(value sensorcast_swap_pending <<<"$m")
    t=$(python3 -c "print(round($(date +%s.%N) - $t0, 2))")
    rs=$(rss "$spid"); rc=0
    for c in $(pgrep -P "$spid" || true); do rc=$((rc + $(rss "$c"))); done
    echo "$t,$n,$r,$s,$rs,$rc" >>"$work/samples-$1.csv"
    # The swap starts once every device is tracked (a tenth of the backlog is in).
    if [ "$1" = swap ] && [ -z "${promoted:-}" ] && [ "${n:-0}" -ge $((total / 10)) ]; then
      $bin models promote --config "$work/swap.toml" "$second" >/dev/null
      promoted=1
    fi
    [ "${n:-0}" -ge "$total" ] && break
    (( ${t%.*} < 1200 )) || { echo "$1: timed out" >&2; break; }
    sleep 1
  done
  kill "$spid"; wait "$spid" 2>/dev/null || true
  if [ "$1" = swap ]; then
    $bin models promote --config "$work/swap.toml" "$first" >/dev/null
  fi
}
# A first pass, not reported: the JVM broker compiles its fetch path and the log's pages are
# read in, which otherwise only the first measured run pays for.
for name in warmup baseline retrain swap; do echo "run: $name"; run "$name"; done
# Training on its own, on every core, for comparison (the same settings, 100 devices × 1000).
$bin simulate --devices 100 --readings 1000 --interval 10s --out "$work/train.jsonl" >/dev/null
echo "sensorcast train on its own ($(nproc) cores):"
$bin train --config "$work/baseline.toml" --input "$work/train.jsonl" | grep 'windows/s' | sed 's/^/  /'
echo "retrains inside serve (challenger training only):"
grep -o 'challenger trained: .*windows/s)' "$work/serve-retrain.log" | sed 's/^/  /' || true
python3 - "$work" <<'PY'
import csv, sys
def rows(name):
    return [(float(r["t"]), int(r["readings"] or 0), int(r["retrain"] or 0), int(r["swap"] or 0),
             int(r["rss"] or 0), int(r["child_rss"] or 0))
            for r in csv.DictReader(open(f"{sys.argv[1]}/samples-{name}.csv"))]
def rate(rs, keep):
    dt = dn = 0.0
    for a, b in zip(rs, rs[1:]):
        # Both samples in the phase, and the backlog not yet exhausted.
        if keep(a) and keep(b) and a[1] > 0 and b[1] > a[1]:
            dt += b[0] - a[0]; dn += b[1] - a[1]
    return (dn / dt if dt else float("nan")), dt
base = rate(rows("baseline"), lambda r: True)
during = rate(rows("retrain"), lambda r: r[2] == 1)
swap = rate(rows("swap"), lambda r: r[3] > 0)
for name, (v, secs) in [("baseline", base), ("while a retrain runs inside serve", during),
                        ("while a swap steps both models", swap)]:
    print(f"{name:34s} {v:9.0f} readings/s over {secs:5.1f} s  ({v / base[0]:.0%} of baseline)")
mib = 2 ** 20
for name in ["baseline", "retrain", "swap"]:
    rs = rows(name)
    late = [r[4] for r in rs[len(rs) // 2:]]
    line = f"{name:8s} serve RSS peak {max(r[4] for r in rs) / mib:6.1f} MiB, second half {min(late) / mib:6.1f}–{max(late) / mib:6.1f} MiB"
    if name == "retrain":
        line += f"; retrain child peak {max(r[5] for r in rs) / mib:6.1f} MiB"
    print(line)
PY
