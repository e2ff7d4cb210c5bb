#!/usr/bin/env bash
# End-to-end throughput per database and output volume, against what the database alone
# accepts: Apache Kafka → sensorcast serve → VictoriaMetrics (v2 API) or InfluxDB 1.6 (v1 API), all on
# this machine.
#
# For each database × output ("default": the [output] defaults; "full": every forecast step, no
# reading points — the 13 points per reading written before [output] existed):
#   - end to end: N readings are produced up front; readings/s is N divided by the time from
#     the first reading consumed to the last point the database took in;
#   - sensorcast's CPU seconds (utime + stime of the process) and the database's, over the run;
#     readings per sensorcast CPU-second both for the whole process (start-up, model load and
#     joining the group included: about 0.1 CPU-s, 5 % of a run of 600 k readings) and for the
#     steady state (run_rd/cpu_s: from the first poll that sees a reading consumed to the last
#     point the database took in). The end is found by polling the database's own count, ten
#     times a second, and sensorcast's /metrics only once a second (each scrape encodes every
#     metric: ten a second cost sensorcast about 2 % of its CPU, measured 2026-12-07);
#   - the ceiling: the same points (`sensorcast replay` of the same readings with the same
#     config, in the order serve's consumer receives them) POSTed straight to a fresh database
#     by scripts/write-ceiling.py (the database restarted empty before it, as before serve's
#     run), the best of four request sizes × concurrencies (256 KiB, 1 MiB and 4 MiB over 2
#     connections, 1 MiB over 4; column ceiling_at says which); reported as readings/s
#     (lines/s ÷ points per reading).
#
# Usage: [SENSORCAST_BIN=path] [DBS="vm influx"] [OUTPUTS="default full"] [CEILING=0]
#        [BATCH_BYTES=n] [CONCURRENCY=n]
#        scripts/bench-output.sh [devices] [readings-per-device]
# DBS and OUTPUTS pick a subset; CEILING=0 skips the ceilings (sensorcast's own CPU per reading
# only, for a quick before/after). OUTPUTS may also name leaner outputs than the default:
# "basic" (anomaly = "basic"), "first" (horizons = "first") and "lean" (both). serve writes
# requests of up to BATCH_BYTES (default 4194304), CONCURRENCY (default 2) at a time.
# Needs what scripts/test.sh installs (Java and Maven for Apache Kafka, victoria-metrics, influxdb) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
devices=${1:-1000}
readings=${2:-200}
source scripts/sensorcast-bin.sh
work=$(mktemp -d)
pids=()
cleanup() { scripts/kafka.sh stop "$work/kafka" || true; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
vport=$(free_port); iport=$(free_port); irpc=$(free_port); hport=$(free_port)

# Apache Kafka (scripts/kafka.sh: its pinned version, from the cached jars).
kaddr=$(scripts/kafka.sh start "$work/kafka")
cat >"$work/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$irpc"
[meta]
  dir = "$work/influx/meta"
[data]
  dir = "$work/influx/data"
  wal-dir = "$work/influx/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:$iport"
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
CONF
# Every measurement (serve's run, each ceiling setting) starts on an empty database that has
# just started: what an earlier run left (InfluxDB's compactions, VictoriaMetrics' merges)
# would otherwise take CPU from the next on these 2 cores.
fresh() {
  case $1 in
    vm)
      if [ -n "${vmpid:-}" ]; then kill "$vmpid" 2>/dev/null || true; wait "$vmpid" 2>/dev/null || true; fi
      rm -rf "$work/vm"
      victoria-metrics -httpListenAddr="127.0.0.1:$vport" -storageDataPath="$work/vm" -retentionPeriod=100y \
        -search.latencyOffset=0s -loggerLevel=ERROR >>"$work/vm.log" 2>&1 & vmpid=$!; pids+=($vmpid)
      for _ in $(seq 1 100); do curl -sf "127.0.0.1:$vport/health" >/dev/null && break; sleep 0.1; done ;;
    influx)
      if [ -n "${ipid:-}" ]; then kill "$ipid" 2>/dev/null || true; wait "$ipid" 2>/dev/null || true; fi
      rm -rf "$work/influx"
      influxd run -config "$work/influxdb.conf" >>"$work/influxd.log" 2>&1 & ipid=$!; pids+=($ipid)
      for _ in $(seq 1 100); do curl -sf "127.0.0.1:$iport/ping" >/dev/null && break; sleep 0.1; done ;;
  esac
  sleep 1
}
fresh vm
scripts/kafka.sh topic "$work/kafka" bench.out 4
influxql() { curl -sf -XPOST "127.0.0.1:$iport/query" --data-urlencode "q=$1" >/dev/null; }

end=$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)
total=$((devices * readings))
$bin simulate --devices "$devices" --readings "$readings" --interval 1s --end "$end" --out "$work/readings.jsonl" >/dev/null
# The same readings in the order serve's consumer receives them, for the ceiling's points: each
# partition's messages in order (partition = CRC-32 of the key modulo 4, librdkafka's default
# partitioner), in runs of about one fetch (1 MiB) per partition. A database's cost per point
# depends on it: requests holding a quarter of the devices, several readings each, cost
# InfluxDB 1.6 ≈ 20 % less CPU than requests holding every device once, as the file's time order
# has it — the ceiling taken from that order was ≈ 20 % low (measured, 2026-12-05).
python3 - "$work/readings.jsonl" 4 $((1 << 20)) >"$work/consumed.jsonl" <<'PY'
import json, sys, zlib
path, partitions, fetch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
parts = [[] for _ in range(partitions)]
with open(path) as f:
    for line in f:
        key = json.loads(line)["device"].encode()
        parts[zlib.crc32(key) % partitions].append(line)
at = [0] * partitions
while any(at[p] < len(parts[p]) for p in range(partitions)):
    for p in range(partitions):
        size = 0
        while at[p] < len(parts[p]) and size < fetch:
            sys.stdout.write(parts[p][at[p]])
            size += len(parts[p][at[p]])
            at[p] += 1
PY
echo "producing $total readings ($devices devices × $readings)…"
$bin simulate --devices "$devices" --readings "$readings" --interval 1s --end "$end" \
  --brokers "$kaddr" --topic bench.out >/dev/null
$bin simulate --devices 8 --readings 300 --interval 1s --out "$work/history.jsonl" >/dev/null

# write_config NAME DB OUTPUT
write_config() {
  local influx output
  case $2 in
    vm) influx="url = \"http://127.0.0.1:$vport\"" ;;
    influx) influx="url = \"http://127.0.0.1:$iport\"
api = \"v1\"
database = \"$1\"" ;;
  esac
  case $3 in
    default) output="" ;;
    full) output='horizons = "all"
readings = false' ;;
    # Leaner outputs than the default, for what a smaller default would save (OUTPUTS only).
    basic) output='anomaly = "basic"' ;;
    first) output='horizons = "first"' ;;
    lean) output='horizons = "first"
anomaly = "basic"' ;;
    *) echo "unknown output $3 (default, full, basic, first, lean)" >&2; exit 2 ;;
  esac
  cat >"$work/$1.toml" <<TOML
[[streams]]
name = "pumps"
topic = "bench.out"
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
$influx
flush_interval = "20ms"
batch_bytes = ${BATCH_BYTES:-4194304}
concurrency = ${CONCURRENCY:-2}
[engine]
max_linger = "10ms"
[http]
listen = "127.0.0.1:$hport"
[state]
dir = "$work/state-$1"
[output]
$output
[log]
level = "warn"
TOML
}

write_config train vm default
$bin train --config "$work/train.toml" --input "$work/history.jsonl" >/dev/null
metric() { curl -s "127.0.0.1:$hport/metrics" | awk -v m="$1" '$1 ~ "^"m {s+=$2} END {printf "%.0f", s}'; }
cpu() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"; }
# What the database has taken in since it started: VictoriaMetrics' rows (one a numeric field),
# InfluxDB's points written. Polling it rather than sensorcast's /metrics keeps the script's
# polls out of sensorcast's CPU (ten scrapes a second cost it about 2 %); the database's own
# cost is small (measured 2026-12-07: 200 reads of VictoriaMetrics' /metrics took it under
# 10 ms of CPU, of InfluxDB's /debug/vars 0.12 s, 0.6 % of a core at ten a second).
db_count() {
  case $1 in
    vm) curl -s "127.0.0.1:$vport/metrics" | awk '/^vm_rows_inserted_total\{type="influx"\}/ {n = $2} END {print n + 0}' ;;
    influx) curl -s "127.0.0.1:$iport/debug/vars" |
      awk 'match($0, /"pointsWrittenOK":[0-9]+/) {n = substr($0, RSTART + 18, RLENGTH - 18)} END {print n + 0}' ;;
  esac
}

printf '%-16s %-8s %7s %12s %10s %14s %15s %9s %14s %7s  %s\n' database output pts/rd readings/s cpu_s readings/cpu_s run_rd/cpu_s db_cpu_s ceiling_rd/s e2e/ceil ceiling_at
for db in ${DBS:-vm influx}; do
  for out in ${OUTPUTS:-default full}; do
    name="$db-$out"
    write_config "$name" "$db" "$out"
    ppr=$($bin check-config --config "$work/$name.toml" | sed -n 's/^# stream "pumps": \([0-9]*\) points.*/\1/p')
    fresh "$db"
    [ "$db" = influx ] && influxql "CREATE DATABASE \"$name\""
    dbpid=$([ "$db" = vm ] && echo $vmpid || echo $ipid)
    db0=$(cpu $dbpid)
    $bin serve --config "$work/$name.toml" 2>"$work/serve-$name.log" & spid=$!; pids+=($spid)
    until r0=$(metric sensorcast_readings_total) && [ "$r0" -gt 0 ] 2>/dev/null; do sleep 0.05; done
    s0=$(date +%s.%N); scpu0=$(cpu $spid)
    # The end: when the database's own count of what it took in last moved, polled ten times
    # a second with sensorcast's and the database's CPU read at each poll; sensorcast's
    # /metrics only once a second, to learn that every point was acknowledged. A minute
    # without a new point stops the script.
    last=-1; next=0; moved=$(date +%s)
    while :; do
      n=$(db_count "$db") || { echo "the database's count could not be read" >&2; exit 1; }
      now=$(date +%s.%N)
      c=$(cpu $spid) || { echo "serve stopped before every point was written:" >&2; tail -5 "$work/serve-$name.log" >&2; exit 1; }
      if [ "$n" != "$last" ]; then last=$n; s1=$now; scpu=$c; db1=$(cpu $dbpid); moved=${now%.*}; fi
      if [ "${now%.*}" -ge "$next" ]; then
        [ "$(metric sensorcast_points_written_total)" -ge $((total * ppr)) ] 2>/dev/null && break
        next=$((${now%.*} + 1))
      fi
      if [ $((${now%.*} - moved)) -ge 60 ]; then
        echo "no point written for a minute (the database holds $n): stopping" >&2; exit 1
      fi
      sleep 0.1
    done
    # Its last points may have landed after the last poll.
    if n=$(db_count "$db") && [ "$n" != "$last" ]; then s1=$(date +%s.%N); scpu=$(cpu $spid); db1=$(cpu $dbpid); fi
    kill -TERM $spid; wait $spid || true
    # The same points, straight to a fresh database.
    $bin replay --config "$work/$name.toml" --input "$work/consumed.jsonl" --output "$work/$name.lp" >/dev/null
    # The database's best over a few request sizes and concurrencies, each into a fresh
    # database (new series, as serve's run had): serve's own setting is not necessarily the
    # one the database likes best, and a ceiling measured at one setting only can fall below
    # what serve reaches with smaller requests.
    lines_per_s=0; best_at=""
    settings=("262144 2" "1048576 2" "4194304 2" "1048576 4")
    [ "${CEILING:-1}" = 0 ] && settings=()
    for setting in "${settings[@]}"; do
      read -r bb cc <<<"$setting"
      target="ceiling-$name-$bb-$cc"
      fresh "$db"
      if [ "$db" = influx ]; then
        influxql "CREATE DATABASE \"$target\""
        ceil=$(python3 scripts/write-ceiling.py "http://127.0.0.1:$iport" "$work/$name.lp" --api v1 --db "$target" --batch-bytes "$bb" --concurrency "$cc")
      else
        ceil=$(python3 scripts/write-ceiling.py "http://127.0.0.1:$vport" "$work/$name.lp" --api v2 --bucket "$target" --batch-bytes "$bb" --concurrency "$cc")
      fi
      lps=$(echo "$ceil" | sed -n 's/.*: \([0-9]*\) lines\/s/\1/p')
      if [ "${lps:-0}" -gt "$lines_per_s" ]; then lines_per_s=$lps; best_at="$((bb / 1024))KiB×$cc"; fi
    done
    python3 - "$db" "$out" "$ppr" "$total" "$s0" "$s1" "$scpu" "$db0" "$db1" "$lines_per_s" "$best_at" "$r0" "$scpu0" <<'PY'
import sys
db, out, ppr, total, s0, s1, scpu, db0, db1, lps, best_at, r0, scpu0 = sys.argv[1:]
ppr, total = int(ppr), int(total)
# Steady state: the readings after the first poll that saw any, over the CPU from then on.
run = (total - int(r0)) / max(float(scpu) - float(scpu0), 1e-9)
rate = total / (float(s1) - float(s0))
ceiling = float(lps) / ppr or float("nan")
names = {"vm": "VictoriaMetrics", "influx": "InfluxDB 1.6"}
print(f"{names[db]:<16} {out:<8} {ppr:>7} {rate:>12,.0f} {float(scpu):>10.2f} {total / float(scpu):>14,.0f} "
      f"{run:>15,.0f} {float(db1) - float(db0):>9.1f} {ceiling:>14,.0f} {rate / ceiling:>7.0%}  {best_at}")
PY
  done
done
echo "(cpu_s: sensorcast's whole process, start-up and model load included; run_rd/cpu_s: the readings after the first one seen over sensorcast's CPU from then on, the steady state; both include this script's polls of its /metrics, once a second (twenty a second until the first reading is consumed); serve's requests: up to ${BATCH_BYTES:-4194304} bytes, ${CONCURRENCY:-2} at a time; machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
