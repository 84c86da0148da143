"""Issue 23's capturability contract, proved without a GPU (natfast/graph/recording.py): the graph
engine's update_w issues the same Triton launches (kernel, grid, constexprs, buffer addresses) and
the same ATen ops for every genotype, with no host read, no data-dependent shape, no copy between
devices and no allocation after the first step; at the search size it stays under 600 launches.
The same for a scoring pass of several architectures at once (natfast/graph/scoring.py)."""
import pytest

from natfast.benchmarks import capture

pytestmark = pytest.mark.triton


def test_the_search_size_step_is_one_sequence_of_at_most_600_launches():
    """C = 20, 8 cells, batch 64 at 32x32: launches recorded without running the kernels (their
    sequence cannot depend on values the kernels compute, which the next test checks by running them)."""
    r = capture.measure(channels=20, layers=8, batch=64, image=32, genotypes=10, checks=0, count_only=True,
                        device=capture.torch.device("cpu"), lanes=11)
    assert r["identical_across_genotypes"], r
    assert r["launches_per_step"] <= 600, r
    assert r["host_syncs"] == 0 and r["data_dependent_shapes"] == 0 and r["device_copies"] == 0, r
    assert r["allocations_after_warmup"] == 0, r
    scoring = r["scoring"]   # derive's 11 architectures: the launches do not grow with the lanes
    assert scoring["lanes"] == 11 and scoring["identical_across_architecture_sets"], scoring
    assert scoring["launches_per_step"] < r["launches_per_step"], scoring
    assert scoring["host_syncs"] == 0 and scoring["data_dependent_shapes"] == 0 and scoring["device_copies"] == 0, scoring
    assert scoring["allocations_after_warmup"] == 0, scoring


@pytest.mark.slow
def test_the_small_step_run_in_the_interpreter_is_one_sequence_and_equals_eager():
    r = capture.measure(channels=8, layers=5, batch=8, image=16, genotypes=10, checks=3, count_only=False,
                        device=capture.torch.device("cpu"), lanes=2)
    assert r["identical_across_genotypes"], r
    assert r["host_syncs"] == 0 and r["data_dependent_shapes"] == 0 and r["device_copies"] == 0, r
    assert r["allocations_after_warmup"] == 0, r
    assert r["unused_bitwise_unchanged"], r
    assert r["max_rel_error_vs_reference"] < 2e-4, r
    scoring = r["scoring"]
    assert scoring["identical_across_architecture_sets"] and scoring["host_syncs"] == 0, scoring
    assert scoring["data_dependent_shapes"] == 0 and scoring["device_copies"] == 0, scoring
    assert scoring["allocations_after_warmup"] == 0, scoring
    assert scoring["max_rel_error_vs_reference"] < 2e-5, scoring


@pytest.mark.slow
def test_the_gpu_stage_script_runs_in_smoke_mode(tmp_path):
    """bench/gpu_graph_check.py (the GPU check's graph stage) at a tiny size on the CPU: the script
    works end to end before a GPU run spends its minutes on it."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "graph.json"
    run = subprocess.run([sys.executable, "bench/gpu_graph_check.py", "--smoke", "--out", str(out)], cwd=root,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["unused_bitwise_unchanged"] and max(result["max_rel_error"].values()) < 2e-4, result
    assert result["graph_median_ms"] > 0 and result["eager_ms"] > 0, result
    scorings = [v for k, v in result.items() if k.startswith("scoring_")]
    assert len(scorings) == 2, result
    for scoring in scorings:
        assert scoring["max_rel_error_logits"] < 2e-5 and scoring["graph_median_ms"] > 0, scoring
