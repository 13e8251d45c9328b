#!/usr/bin/env bash
# The GPU check of the Triton kernels, for a machine with a CUDA device (under 5 minutes).
#
#   bash benchmarks/device_check.sh            # from the repository root
#
# Installs nothing unless tracetorch is not importable (then `pip install -e .[test]`); prints the
# versions and the GPU, runs tests/test_gpu_kernels.py (the interpreter tests and the CUDA parity
# tests), then times LIB forward+backward (T=100, B=64, N=4096 and 65536) on CUDA: the kernel path
# against the plain loop, with the memory floor from the measured copy bandwidth.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! "$PY" -c "import tracetorch, pytest" 2>/dev/null; then
    "$PY" -m pip install -q -e '.[test]' || exit 1
fi
"$PY" - <<'PYEOF'
import torch
try:
    import triton
    tv = triton.__version__
except ImportError:
    tv = "not installed"
print(f"torch {torch.__version__}, triton {tv}, CUDA available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print("GPU:", torch.cuda.get_device_name(0), "| CUDA", torch.version.cuda)
PYEOF
status=0
timeout 200 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_gpu_kernels.py -n 8 2>&1 | tail -30
status=${PIPESTATUS[0]}
echo "pytest exit status: $status"
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    timeout 90 "$PY" benchmarks/gpu_timing.py --rounds 5 --loop-rounds 2
else
    echo "no CUDA device: timing skipped"
fi
exit "$status"
