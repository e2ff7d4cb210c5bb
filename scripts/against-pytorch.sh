# Sourced by the scripts that hold sensorcast against PyTorch (bench-pytorch.sh,
# bench-kernel.sh), from the repository's root. Makes PyTorch's virtual environment on first use
# and reuses it (`venv`), pins every library PyTorch may use to one thread, takes sensorcast's
# binary (`bin`: scripts/sensorcast-bin.sh, so SENSORCAST_BIN works here too), and sets `pin`
# (taskset -c 0 where there is taskset), `isa` (sensorcast's --isa) and `value KEY` (reads
# KEY=NUMBER from standard input).
#   PYTORCH_VENV     where (default: ${XDG_CACHE_HOME:-~/.cache}/sensorcast/pytorch-venv)
#   TORCH_SPEC       what to install (default: torch)
#   TORCH_INDEX_URL  an index to install torch from instead of PyPI, e.g.
#                    https://download.pytorch.org/whl/cpu (CPU-only wheels, ~200 MB). PyPI's
#                    Linux wheel pulls in the CUDA libraries: ~3 GB to download, ~5.5 GB on disk.
#   PYTHON           interpreter for the venv (default: python3)
venv=${PYTORCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sensorcast/pytorch-venv}
if ! "$venv/bin/python" -c 'import torch' >/dev/null 2>&1; then
  echo "==> installing ${TORCH_SPEC:-torch} into $venv (once)" >&2
  "${PYTHON:-python3}" -m venv "$venv"
  index=()
  if [ -n "${TORCH_INDEX_URL:-}" ]; then index=(--index-url "$TORCH_INDEX_URL"); fi
  "$venv/bin/pip" install --quiet --progress-bar off "${index[@]}" "${TORCH_SPEC:-torch}"
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
# PyTorch warns once per run that NumPy is missing; it is not used.
export PYTHONWARNINGS=ignore

source scripts/sensorcast-bin.sh

pin=()
if command -v taskset >/dev/null 2>&1; then pin=(taskset -c 0); fi
# ISA=avx2: both sides' AVX2 code on a machine with AVX-512.
isa=()
if [ "${ISA:-}" = avx2 ]; then
  isa=(--isa avx2)
  export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
fi

value() { sed -n "s/^$1=\([0-9.]*\).*/\1/p" | head -n1; }
