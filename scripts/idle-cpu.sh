#!/usr/bin/env bash
# What an idle `serve` costs: CPU time per thread over a window with no readings arriving
# (Apache Kafka from scripts/kafka.sh, the demo's config with its dead-letter topic; the
# database is not needed while nothing is written).
#
# Usage: [SENSORCAST_BIN=path] scripts/idle-cpu.sh [seconds]
# Needs what scripts/test.sh installs (Java and Maven for Apache Kafka).
set -euo pipefail
cd "$(dirname "$0")/.."
window=${1:-30}
source scripts/sensorcast-bin.sh
work=$(mktemp -d)
spid=""
cleanup() {
  [ -n "$spid" ] && kill "$spid" 2>/dev/null && wait "$spid" 2>/dev/null
  scripts/kafka.sh stop "$work/kafka" || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

kaddr=$(scripts/kafka.sh start "$work/kafka")
$bin demo --out "$work/demo" >/dev/null 2>&1
sed -i "s/127.0.0.1:9092/$kaddr/; s/127.0.0.1:9898/127.0.0.1:$(free_port)/" "$work/demo/demo.toml"
(cd "$work/demo" && exec $bin serve --config demo.toml) 2>"$work/serve.log" & spid=$!
# Past start-up (model load, group join, topic checks).
sleep 15
ticks() { awk '{print $14 + $15}' "$1"; }
snapshot() {
  for t in /proc/"$spid"/task/*; do
    echo "$(basename "$t") $(ticks "$t/stat") $(tr ' ' _ <"$t/comm")"
  done | sort
}
snapshot >"$work/t0"; p0=$(ticks "/proc/$spid/stat")
sleep "$window"
snapshot >"$work/t1"; p1=$(ticks "/proc/$spid/stat")
hz=$(getconf CLK_TCK)
echo "idle serve over ${window} s (CPU seconds; machine: $(nproc) CPUs):"
join "$work/t0" "$work/t1" | awk -v hz="$hz" '$4 > $2 {printf "  %-18s %6.2f\n", $3, ($4 - $2) / hz}'
awk -v a="$p0" -v b="$p1" -v hz="$hz" -v w="$window" \
  'BEGIN {printf "  %-18s %6.2f  (%.2f %% of a core)\n", "whole process", (b - a) / hz, 100 * (b - a) / hz / w}'
