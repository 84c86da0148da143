#!/usr/bin/env bash
# One-call GPU check (< 8 minutes on an H100; give it DEADLINE=540 when the graph stage runs): build natfast with CUDA, run the CUDA and Triton
# tests on the GPU, run the GPU benchmarks, write everything under $OUT (else ./gpu_results) and
# print a short table last. Stages run most important first; each is cut off so the whole script
# ends by DEADLINE seconds, and a stage that would start too late is skipped (and says so).
#   env: OUT, PYTHON (python3), MAX_JOBS (16), TORCH_CUDA_ARCH_LIST (9.0: H100/H200 only, faster
#        build), DEADLINE (450)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
RESULTS=${OUT:-./gpu_results}
DEADLINE=${DEADLINE:-450}
mkdir -p "$RESULTS"
# The compiled kernels must run, not the CPU interpreter.
unset TRITON_INTERPRET NATFAST_TRITON_INTERPRET NATFAST_BACKEND
export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} NATFAST_FORCE_CUDA=1
# The scripts import natfast from this source tree (the build is in place, not installed).
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
stage() { echo "== $1 ($(elapsed)s)"; }
# run_for MAX CMD...: run CMD with at most MAX seconds, fewer if the deadline is nearer.
run_for() {
  local max=$1; shift
  local left=$(( DEADLINE - $(elapsed) ))
  (( left < max )) && max=$left
  if (( max < 10 )); then echo "skipped (deadline): $*"; return 124; fi
  timeout "$max" "$@"
}

stage "build (log: $RESULTS/build.log)"
if run_for 240 "$PYTHON" setup.py build_ext --inplace >"$RESULTS/build.log" 2>&1; then
  build=ok
else
  build=FAILED; tail -n 30 "$RESULTS/build.log"
fi
"$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"

stage "graph engine: capture, equivalence, timing against eager and the floor, profile (log: $RESULTS/graph.log)"
# First after the build (issue 23): the number that decides the GPU engine.
run_for 360 "$PYTHON" bench/gpu_graph_check.py --out "$RESULTS/graph.json" >"$RESULTS/graph.log" 2>&1
graph_rc=$?
[ $graph_rc -eq 0 ] || tail -n 30 "$RESULTS/graph.log"

stage "tests: pytest -m 'cuda or triton' (log: $RESULTS/pytest.log)"
# Several workers compile Triton kernels in parallel (pytest-xdist, when installed).
workers=$("$PYTHON" -c "import xdist" 2>/dev/null && echo "-n 8")
run_for 150 "$PYTHON" -m pytest -q $workers -m "cuda or triton" tests -p no:cacheprovider \
  --junitxml="$RESULTS/pytest.xml" >"$RESULTS/pytest.log" 2>&1
tests_rc=$?
tests_summary=$(tail -n 1 "$RESULTS/pytest.log")
[ $tests_rc -eq 0 ] || grep -E "^(FAILED|ERROR)" "$RESULTS/pytest.log" | head -n 30

stage "GCN and update_w benchmarks (log: $RESULTS/bench.log)"
run_for 150 "$PYTHON" bench/gpu_bench.py --out "$RESULTS/gpu_bench.json" >"$RESULTS/bench.log" 2>&1
bench_rc=$?
[ $bench_rc -eq 0 ] || tail -n 30 "$RESULTS/bench.log"

stage "step, derive, dispatch-table and executor benchmarks (log: $RESULTS/natfast_bench.log)"
{
  run_for 90 "$PYTHON" -m natfast bench steps --device cuda --json >"$RESULTS/steps.json"
  run_for 60 "$PYTHON" -m natfast bench derive --device cuda --json >"$RESULTS/derive.json"
  run_for 90 "$PYTHON" -m natfast.ops.dispatch_table
  run_for 40 "$PYTHON" -m natfast bench executor --device cuda --json >"$RESULTS/executor.json"
} >"$RESULTS/natfast_bench.log" 2>&1
cat "$RESULTS/steps.json" "$RESULTS/derive.json" "$RESULTS/executor.json" 2>/dev/null
grep -E "^(gcn_policy_logits|measuring|TABLE|skipped)" "$RESULTS/natfast_bench.log"

stage "done"
echo "build: $build | graph rc $graph_rc | tests (rc $tests_rc): $tests_summary | bench rc $bench_rc"
grep "^GRAPH:" "$RESULTS/graph.log"
sed -n '/^GPU check:/,$p' "$RESULTS/bench.log"
