#!/usr/bin/env bash
# sensorcast's engine against PyTorch on the same shape, one core each (the README's
# "× PyTorch" figure comes from here).
#
#   scripts/bench-pytorch.sh [ROUNDS]      # default 3
#
# Runs `sensorcast bench` and scripts/bench_pytorch.py (PyTorch's batched nn.LSTMCell and a
# linear head, one thread) alternately, ROUNDS times each, pinned to CPU 0 with taskset when
# it is available, and prints every run, the best of each and their ratio. sensorcast's side
# times only readings past each device's warm-up and learning (run first, untimed), so that
# all of its detection runs; PyTorch has no such phase and times every step. Shape (same for
# both; override through the environment): DEVICES=10000 STEPS=300 HIDDEN=64 FEATURES=8
# LAYERS=1 HORIZON=3 BATCH=4096.
#
# PyTorch comes from PyPI into its own virtual environment, made on first use and reused
# (scripts/against-pytorch.sh says where and how).
#
# ISA=avx2 measures both sides' AVX2 code on a machine with AVX-512: `sensorcast bench --isa
# avx2`, and PyTorch with ATEN_CPU_CAPABILITY=avx2 and MKL_ENABLE_INSTRUCTIONS=AVX2 (its own
# and MKL's dispatch). The default is each side's best.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-3}
shape=(--devices "${DEVICES:-10000}" --steps "${STEPS:-300}" --hidden "${HIDDEN:-64}"
  --features "${FEATURES:-8}" --layers "${LAYERS:-1}" --horizon "${HORIZON:-3}"
  --batch "${BATCH:-4096}")
source scripts/against-pytorch.sh


echo "machine: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1), $(getconf _NPROCESSORS_ONLN) CPUs; pinned: ${pin[*]:-no}"
ours=()
theirs=()
for r in $(seq 1 "$rounds"); do
  out=$("${pin[@]}" "$bin" bench "${shape[@]}" "${isa[@]}")
  [ "$r" = 1 ] && echo "sensorcast: $(head -n1 <<<"$out"); $(grep -E '^(events|phases_pct)' <<<"$out" | tr '\n' ' ')"
  ours+=("$(value events_per_s <<<"$out")")
  out=$("${pin[@]}" "$venv/bin/python" scripts/bench_pytorch.py "${shape[@]}" --threads 1)
  [ "$r" = 1 ] && echo "pytorch:    $(head -n1 <<<"$out")"
  theirs+=("$(value events_per_s <<<"$out")")
  echo "round $r: sensorcast events_per_s=${ours[-1]}  pytorch events_per_s=${theirs[-1]}"
done

python3 - "${#ours[@]}" "${ours[@]}" "${theirs[@]}" <<'EOF'
import sys
n = int(sys.argv[1])
ours = [float(v) for v in sys.argv[2:2 + n]]
theirs = [float(v) for v in sys.argv[2 + n:]]
ratios = [o / t for o, t in zip(ours, theirs)]
m = lambda v: f"{v / 1e6:.2f} M"
print(f"sensorcast: best {m(max(ours))} events/s (runs {', '.join(m(v) for v in ours)})")
print(f"pytorch:    best {m(max(theirs))} events/s (runs {', '.join(m(v) for v in theirs)})")
print(f"ratio of bests: {max(ours) / max(theirs):.2f}x "
      f"(per round {min(ratios):.2f}x to {max(ratios):.2f}x)")
EOF
