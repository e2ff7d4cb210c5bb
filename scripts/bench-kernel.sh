#!/usr/bin/env bash
# The model core alone, shape by shape: sensorcast's LSTM step and forecast head against the
# core's measured multiply-add peak and against PyTorch's batched nn.LSTMCell and nn.Linear,
# one core each (the README's model-core row and docs/PERFORMANCE.md §3 come from here).
#
#   scripts/bench-kernel.sh [ROUNDS]      # default 3
#
# For every shape (HIDDENS="32 64 128" × FEATURE_COUNTS="4 8 32", LAYERS=1 HORIZON=3, one
# micro-batch of BATCH=4096 rows) it runs `sensorcast bench --kernel` and
# `scripts/bench_pytorch.py --kernel` alternately, ROUNDS times each, pinned to CPU 0 with
# taskset when it is available, and prints one line per shape: the best step + head time of
# each side in ns per row, sensorcast's GFLOP/s and fraction of the peak (matrix products
# only: the cell's element-wise work is not counted), the fraction of the peak the step's
# products reach timed alone (so what the cell and the copies cost shows), and the ratio.
#
# PyTorch comes as for scripts/bench-pytorch.sh (scripts/against-pytorch.sh); ISA=avx2 measures
# both sides' AVX2 code on a machine with AVX-512, as there.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-3}
source scripts/against-pytorch.sh

# "step=S head=H" → S + H
total() { sed -n 's/^kernel_ns_per_row step=\([0-9.]*\) head=\([0-9.]*\)$/\1 \2/p' | awk '{print $1 + $2}'; }
best() { printf '%s\n' "$@" | sort -g | head -n1; }

echo "machine: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1), $(getconf _NPROCESSORS_ONLN) CPUs; pinned: ${pin[*]:-no}; rounds: $rounds; rows: ${BATCH:-4096}"
printf '%-8s %-8s %14s %10s %10s %12s %14s %8s\n' hidden features 'ours ns/row' GFLOP/s 'of peak' 'product/peak' 'pytorch ns/row' ratio
for hidden in ${HIDDENS:-32 64 128}; do
  for features in ${FEATURE_COUNTS:-4 8 32}; do
    shape=(--hidden "$hidden" --features "$features" --layers "${LAYERS:-1}"
      --horizon "${HORIZON:-3}" --batch "${BATCH:-4096}")
    ours=() theirs=() gflops=() peak=() product=()
    for _ in $(seq 1 "$rounds"); do
      out=$("${pin[@]}" "$bin" bench --kernel "${shape[@]}" "${isa[@]}")
      ours+=("$(total <<<"$out")")
      gflops+=("$(value kernel_gflops <<<"$out")")
      peak+=("$(value core_peak_gflops <<<"$out")")
      product+=("$(value kernel_product_fraction_of_peak <<<"$out")")
      out=$("${pin[@]}" "$venv/bin/python" scripts/bench_pytorch.py --kernel "${shape[@]}" --threads 1)
      theirs+=("$(total <<<"$out")")
    done
    o=$(best "${ours[@]}") t=$(best "${theirs[@]}")
    g=$(printf '%s\n' "${gflops[@]}" | sort -g | tail -n1)
    p=$(printf '%s\n' "${peak[@]}" | sort -g | tail -n1)
    frac=$(awk -v g="$g" -v p="$p" 'BEGIN { if (p > 0) printf "%.2f", g / p; else print "-" }')
    pf=$(printf '%s\n' "${product[@]}" | sort -g | tail -n1)
    printf '%-8s %-8s %14.1f %10.1f %10s %12s %14.1f %7.2fx\n' "$hidden" "$features" "$o" "$g" \
      "$frac" "${pf:--}" "$t" "$(awk -v o="$o" -v t="$t" 'BEGIN { print t / o }')"
  done
done
echo "peak: the core's measured multiply-add rate on the same instruction set, best of the runs"
echo "product/peak: the step's matrix products alone (no cell update, no copies) against the peak, best of the runs"
