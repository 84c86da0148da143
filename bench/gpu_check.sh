#!/usr/bin/env bash
# One-call GPU check (< 8 minutes on an H100): build natfast with CUDA, run the CUDA and Triton
# tests on the GPU, run the GPU benchmarks, write everything under $OUT (else ./gpu_results) and
# print a short table last.
#   env: OUT, PYTHON (python3), MAX_JOBS (16), TORCH_CUDA_ARCH_LIST (9.0: H100/H200 only, faster build)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
RESULTS=${OUT:-./gpu_results}
mkdir -p "$RESULTS"
# The compiled kernels must run, not the CPU interpreter.
unset TRITON_INTERPRET NATFAST_TRITON_INTERPRET NATFAST_BACKEND
export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} NATFAST_FORCE_CUDA=1
start=$(date +%s)
stage() { echo "== $1 ($(( $(date +%s) - start ))s)"; }

stage "build (log: $RESULTS/build.log)"
if timeout 270 "$PYTHON" -m pip install --no-build-isolation --no-deps -e . >"$RESULTS/build.log" 2>&1; then
  build=ok
else
  build=FAILED; tail -n 30 "$RESULTS/build.log"
fi

stage "tests: pytest -m 'cuda or triton' (log: $RESULTS/pytest.log)"
timeout 150 "$PYTHON" -m pytest -q -m "cuda or triton" tests -p no:cacheprovider \
  --junitxml="$RESULTS/pytest.xml" >"$RESULTS/pytest.log" 2>&1
tests_rc=$?
tests_summary=$(tail -n 1 "$RESULTS/pytest.log")
[ $tests_rc -eq 0 ] || grep -E "^(FAILED|ERROR)" "$RESULTS/pytest.log" | head -n 20

stage "step, derive, executor and dispatch-table benchmarks (log: $RESULTS/natfast_bench.log)"
{
  timeout 90 "$PYTHON" -m natfast bench steps --device cuda --json >"$RESULTS/steps.json"
  timeout 60 "$PYTHON" -m natfast bench derive --device cuda --json >"$RESULTS/derive.json"
  timeout 60 "$PYTHON" bench/executor_overhead.py --device cuda
  timeout 60 "$PYTHON" -m natfast.ops.dispatch_table
} >"$RESULTS/natfast_bench.log" 2>&1
cat "$RESULTS/steps.json" "$RESULTS/derive.json" 2>/dev/null

stage "kernel benchmarks (log: $RESULTS/bench.log)"
timeout 180 "$PYTHON" bench/gpu_bench.py --out "$RESULTS/gpu_bench.json" >"$RESULTS/bench.log" 2>&1
bench_rc=$?
[ $bench_rc -eq 0 ] || tail -n 30 "$RESULTS/bench.log"

stage "done"
echo "build: $build | tests (rc $tests_rc): $tests_summary | bench rc $bench_rc"
sed -n '/^GPU check:/,$p' "$RESULTS/bench.log"
