# Sourced by the scripts that run PyTorch (bench-pytorch.sh, bench-kernel.sh): makes its virtual
# environment on first use and reuses it, sets `venv`, and pins every library PyTorch may use
# to one thread.
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
