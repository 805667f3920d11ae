#!/usr/bin/env bash
# The checks that need a real NVIDIA GPU, in one run: the kernel on CuPy against NumPy (every
# kernel test over both namespaces, and the capacity-edge table) and the NVML backend against
# the real library. Read only: it never changes the GPU's settings (MIG mode, clocks).
#   tools/gpu-check.sh            (on a machine with an NVIDIA GPU, its driver and CUDA 12)
# Without a GPU these tests skip with their reason in every other run; here the skips fail.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-gpu
.venv-gpu/bin/pip install --quiet --upgrade pip
.venv-gpu/bin/pip install --quiet -e '.[test,cuda]'
.venv-gpu/bin/python - <<'PY'
import cupy, pynvml
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
print("GPU:", pynvml.nvmlDeviceGetName(h), "| driver", pynvml.nvmlSystemGetDriverVersion(),
      "| MIG mode", pynvml.nvmlDeviceGetMigMode(h), "| CuPy", cupy.__version__)
PY
export GPUPACK_REQUIRE_GPU=1
.venv-gpu/bin/python -m pytest -q -rs -p no:cacheprovider \
  tests/gpupack/kernel tests/device_plugin/test_nvml_real.py
echo "GPU checks passed"
