#!/usr/bin/env bash
# The GPU machine runs other versions than CI (torch 2.11 + Triton 3.6 there, 2.14 + 3.8 here), and
# time on it is rare and short: a CUDA build that breaks only under torch 2.11's headers would spend it
# (bench/RESULTS.md, "GPU (H100)"). This check installs the GPU machine's torch (and the Triton it pins) into a
# throwaway virtual environment and, with no GPU, there
#   1. compiles, links and loads natfast._C with its CUDA part (.ci/build_cuda_check.sh), and
#   2. runs the Triton kernels' tests under that Triton's interpreter and compiles every launch they
#      make for sm_80 and sm_90 (tests/test_triton_compile.py).
#   env: GPU_TORCH (2.11.0), PYTHON (python3), NATFAST_SKIP_GPU_VERSIONS_CHECK=1 skips (say why).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
GPU_TORCH=${GPU_TORCH:-2.11.0}

if [ "${NATFAST_SKIP_GPU_VERSIONS_CHECK:-0}" = 1 ]; then
  echo "gpu_versions_check: skipped (NATFAST_SKIP_GPU_VERSIONS_CHECK=1)"
  exit 0
fi

env_dir=$(mktemp -d "${TMPDIR:-/tmp}/natfast-gpu-versions.XXXXXX")
trap 'rm -rf "$env_dir"' EXIT
start=$(date +%s)
"$PYTHON" -m venv "$env_dir"
# numpy < 2.4: Triton 3.6's interpreter converts one-element arrays to Python ints, which numpy 2.4
# refuses (its compiler, what the GPU runs, is unaffected).
"$env_dir/bin/python" -m pip install -q "torch==$GPU_TORCH" "numpy<2.4" pybind11 ninja pytest pillow ||
  { echo "gpu_versions_check: could not install torch==$GPU_TORCH (set NATFAST_SKIP_GPU_VERSIONS_CHECK=1 to skip)" >&2; exit 1; }
"$env_dir/bin/python" -c 'import torch, triton; print(f"gpu_versions_check: torch {torch.__version__}, triton {triton.__version__}")'

PYTHON="$env_dir/bin/python" .ci/build_cuda_check.sh
# This environment holds torch and Triton only (the extension built above stays in its throwaway
# folder), so the suite's missing-fast-path guard is told which paths this run does without.
NATFAST_TEST_WITHOUT=cpu_kernels,executor \
  "$env_dir/bin/python" -m pytest -q -p no:cacheprovider tests/test_triton_compile.py
echo "gpu_versions_check: passed in $(( $(date +%s) - start )) s"
