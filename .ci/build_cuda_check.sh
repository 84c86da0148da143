#!/usr/bin/env bash
# Compile and link natfast._C with its CUDA part forced on (no GPU needed) into a throwaway
# directory, then load it and check that every CUDA kernel registered. Any compile or link error
# (or a missing kernel) fails the script, so a CUDA build break cannot land.
#   env: CUDA_HOME (default: the toolkit behind `nvcc` on PATH), TORCH_CUDA_ARCH_LIST (8.0;9.0),
#        MAX_JOBS (2), PYTHON (python3), NATFAST_KEEP_BUILD=1 keeps the build directory.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

command -v nvcc >/dev/null || [ -n "${CUDA_HOME:-}" ] || { echo "build_cuda_check: no nvcc on PATH and no CUDA_HOME" >&2; exit 1; }
"$PYTHON" -c 'import sys, torch; sys.exit(torch.version.cuda is None)' ||
  { echo "build_cuda_check: this torch is a CPU-only build; the CUDA part cannot be compiled" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/natfast-cuda-build.XXXXXX")
if [ "${NATFAST_KEEP_BUILD:-0}" = 1 ]; then echo "build_cuda_check: build kept in $work"; else trap 'rm -rf "$work"' EXIT; fi

export NATFAST_FORCE_CUDA=1
unset NATFAST_SKIP_CUDA NATFAST_SKIP_EXTENSION
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export MAX_JOBS="${MAX_JOBS:-2}"
start=$(date +%s)
"$PYTHON" setup.py -q build_ext --build-lib "$work/lib" --build-temp "$work/tmp"
so=$(find "$work/lib" -name '_C*.so' | head -n 1)
[ -n "$so" ] || { echo "build_cuda_check: the build produced no natfast/_C*.so" >&2; exit 1; }

# Loading resolves every symbol (a link error shows here); then the kernels must be registered.
"$PYTHON" - "$so" <<'PY'
import importlib.machinery
import importlib.util
import sys

import torch

path = sys.argv[1]
loader = importlib.machinery.ExtensionFileLoader("natfast._C", path)
module = importlib.util.module_from_spec(importlib.util.spec_from_loader("natfast._C", loader))
loader.exec_module(module)
if not module.built_with_cuda():
    sys.exit(f"build_cuda_check: {path} was built without NATFAST_WITH_CUDA")
ops = ["cuda_gcn_forward", "cuda_gcn_backward"]
missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"natfast::{op}", "CUDA")]
if missing:
    sys.exit(f"build_cuda_check: no CUDA kernel registered for {', '.join(missing)}")
if not hasattr(torch.ops.natfast, "executor_forward"):
    sys.exit("build_cuda_check: natfast::executor_forward is missing")
print(f"build_cuda_check: OK, {len(ops)} CUDA kernels and the executor in {path}")
PY
echo "build_cuda_check: compiled and linked in $(( $(date +%s) - start )) s"
