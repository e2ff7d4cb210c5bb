#!/usr/bin/env bash
# Soak: `serve` for a long stretch at a steady rate with device churn, on this machine
# (Apache Kafka → sensorcast serve → VictoriaMetrics). A stable fleet reports every second for the
# whole run; every round a new fleet appears, reports for one round and goes idle for good, so
# devices keep arriving and going quiet (they are parked after engine.device_ttl, here 2 min of
# event time). Checkpoints every 10 s. Every 15 s it samples resident memory, the
# produce-to-written latency of that interval (p50/p99 from the histogram's increments),
# consumer lag, devices in memory and parked, and prints a line; at the end a summary and a
# chart (soak-out/soak.svg, soak-out/soak.csv).
#
# Usage: [SENSORCAST_BIN=path] scripts/soak.sh [minutes] [stable-devices] [churn-devices-per-round]
#        (default 30 1000 200: ≈1 200 readings/s)
# Needs what scripts/test.sh installs (Java and Maven for Apache Kafka, victoria-metrics) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
stable=${2:-1000}
churn=${3:-200}
round_s=60
source scripts/sensorcast-bin.sh
out=$(pwd)/soak-out
mkdir -p "$out"
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
scripts/kafka.sh topic "$work/kafka" soak 4
cat >"$work/soak.toml" <<TOML
[[streams]]
name = "pumps"
topic = "soak"
features = ["vibration", "temperature", "current", "pressure"]
interval = "1s"
[model]
registry = "$work/models"
hidden = 64
horizon = 3
[train]
epochs = 3
[engine]
device_ttl = "2m"
[kafka]
brokers = "$kaddr"
group_id = "soak"
dead_letter_topic = ""
[influxdb]
url = "http://127.0.0.1:$vport"
[http]
listen = "127.0.0.1:$hport"
[state]
dir = "$work/state"
checkpoint_interval = "10s"
parked_retention = "1h"
[log]
level = "warn"
TOML
$bin simulate --devices 8 --readings 300 --interval 1s --out "$work/history.jsonl" >/dev/null
$bin train --config "$work/soak.toml" --input "$work/history.jsonl" >/dev/null
$bin serve --config "$work/soak.toml" 2>"$work/serve.log" & spid=$!; pids+=($spid)
until curl -sf "127.0.0.1:$hport/health/ready" >/dev/null; do sleep 0.2; done

# The producer: one round per minute, the stable fleet plus a fresh fleet, a reading per
# device per second, timestamps ending at the round's end.
(
  end=$(date +%s)
  for ((r = 0; r * round_s < minutes * 60; r++)); do
    end=$((end + round_s))
    when=$(date -u -d "@$end" +%Y-%m-%dT%H:%M:%SZ)
    "$bin" simulate --devices "$stable" --readings "$round_s" --interval 1s --end "$when" \
      --rate "$stable" --seed $((r + 1)) --brokers "$kaddr" --topic soak >/dev/null &
    "$bin" simulate --devices "$churn" --readings "$round_s" --interval 1s --end "$when" \
      --rate "$churn" --seed $((r + 1)) --device-prefix "churn$r-" --brokers "$kaddr" \
      --topic soak >/dev/null &
    wait
  done
) & ppid=$!; pids+=($ppid)

python3 - "$hport" "$spid" "$ppid" "$out" "$minutes" <<'PY'
import sys, time, urllib.request, os
sys.path.insert(0, "scripts")
from latency_histogram import buckets as latency_buckets, difference, quantile
hport, spid, ppid, out, minutes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
def metrics():
    text = urllib.request.urlopen(f"http://127.0.0.1:{hport}/metrics", timeout=5).read().decode()
    m = {}
    for l in text.splitlines():
        if l.startswith("#") or not l.strip():
            continue
        name, value = l.rsplit(" ", 1)
        base = name.split("{")[0]
        m[base] = m.get(base, 0.0) + float(value)
    return m, latency_buckets(text)
def rss():
    for l in open(f"/proc/{spid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1]) * 1024
rows = []
t0 = time.time()
last_b = None
print(f"{'min':>5} {'rss_MiB':>8} {'p50_ms':>7} {'p99_ms':>7} {'lag':>7} {'devices':>8} {'parked':>7} {'readings':>10} {'ckpts':>6}")
while True:
    time.sleep(15)
    m, b = metrics()
    d = difference(b, last_b)
    last_b = b
    row = dict(t=(time.time() - t0) / 60, rss=rss() / 2**20, p50=quantile(d, .5) * 1e3, p99=quantile(d, .99) * 1e3,
               lag=m.get("sensorcast_consumer_lag", 0), devices=m.get("sensorcast_devices", 0),
               parked=m.get("sensorcast_devices_parked", 0), readings=m.get("sensorcast_readings_total", 0),
               ckpts=m.get("sensorcast_checkpoints_written_total", 0))
    rows.append(row)
    print(f"{row['t']:5.1f} {row['rss']:8.1f} {row['p50']:7.0f} {row['p99']:7.0f} {row['lag']:7.0f} {row['devices']:8.0f} {row['parked']:7.0f} {row['readings']:10.0f} {row['ckpts']:6.0f}", flush=True)
    try:
        os.kill(ppid, 0)
        done = False
    except OSError:
        done = True
    if done or row["t"] > minutes + 2:
        break
with open(f"{out}/soak.csv", "w") as f:
    f.write("minute,rss_mib,p50_ms,p99_ms,lag,devices,parked,readings,checkpoints\n")
    for r in rows:
        f.write(f"{r['t']:.2f},{r['rss']:.1f},{r['p50']:.1f},{r['p99']:.1f},{r['lag']:.0f},{r['devices']:.0f},{r['parked']:.0f},{r['readings']:.0f},{r['ckpts']:.0f}\n")
warm = [r for r in rows if r["t"] >= 5] or rows
rs = [r["rss"] for r in warm]
print(f"\nafter warm-up (minute 5 on): rss {min(rs):.1f}..{max(rs):.1f} MiB (first {rs[0]:.1f}, last {rs[-1]:.1f});"
      f" p99 latency median {sorted(r['p99'] for r in warm)[len(warm)//2]:.0f} ms, worst {max(r['p99'] for r in warm):.0f} ms;"
      f" lag at most {max(r['lag'] for r in warm):.0f}; devices in memory {min(r['devices'] for r in warm):.0f}..{max(r['devices'] for r in warm):.0f},"
      f" parked at the end {warm[-1]['parked']:.0f}; readings {rows[-1]['readings']:.0f}")
# A small SVG chart: resident memory and p99 latency over time.
W, H, P = 720, 300, 40
tmax = max(r["t"] for r in rows) or 1
def path(key, vmax, color):
    pts = " ".join(f"{P + (W - 2 * P) * r['t'] / tmax:.1f},{H - P - (H - 2 * P) * (r[key] / vmax if vmax else 0):.1f}" for r in rows if r[key] == r[key])
    return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>'
rmax = max(r["rss"] for r in rows) * 1.1
lmax = max((r["p99"] for r in rows if r["p99"] == r["p99"]), default=1) * 1.1
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{P}" y="20">resident memory (blue, max {rmax:.0f} MiB) and p99 produce-to-written latency (red, max {lmax:.0f} ms) over {tmax:.0f} min</text>',
       f'<line x1="{P}" y1="{H-P}" x2="{W-P}" y2="{H-P}" stroke="black"/>', f'<line x1="{P}" y1="{P}" x2="{P}" y2="{H-P}" stroke="black"/>',
       path("rss", rmax, "#1f77b4"), path("p99", lmax, "#d62728"),
       f'<text x="{W-P}" y="{H-P+15}" text-anchor="end">minutes</text></svg>']
open(f"{out}/soak.svg", "w").write("\n".join(svg))
print(f"chart: {out}/soak.svg, data: {out}/soak.csv")
PY
kill -TERM $spid; wait $spid || true
