"""natfast's benchmark library (natfast/benchmarks): the one timing loop, and every `natfast bench`
subcommand and bench/ script running at tiny sizes with the keys it documents."""
import io
import json
import runpy
import statistics
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

from natfast import benchmarks, executor
from natfast.benchmarks import timing

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    """The timing module's perf_counter: advances only when a variant says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def spend(self, ms):
        self.now += ms / 1000


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timing, "perf_counter", fake)
    return fake


def test_variants_take_turns_after_untimed_warmup_rounds(clock):
    calls = []
    durations = {"a": iter([9, 9, 3.0, 1.0, 2.0]), "b": iter([9, 9, 10.0, 30.0, 20.0])}

    def variant(name):
        def run():
            calls.append(name)
            clock.spend(next(durations[name]))
        return run

    times = timing.interleaved_times_ms({"a": variant("a"), "b": variant("b")}, repeats=3, warmup=2)
    assert calls == ["a", "b"] * 5            # interleaved, warm-up rounds included
    assert times == {"a": pytest.approx([3.0, 1.0, 2.0]), "b": pytest.approx([10.0, 30.0, 20.0])}


def test_median_ms_is_the_median_of_the_timed_calls_rounded_as_asked(clock):
    spent = iter([100.0, 1.23456, 7.0, 5.0])
    fn = lambda: clock.spend(next(spent))  # noqa: E731
    assert timing.median_ms(fn, repeats=3, warmup=1) == pytest.approx(statistics.median([1.235, 7.0, 5.0]))
    spent = iter([100.0, 1.23456, 1.0])
    assert timing.median_ms(fn, repeats=2, warmup=1, digits=None) == pytest.approx((1.23456 + 1.0) / 2)


def test_matmul_gflops_counts_two_flops_per_multiply_add_at_the_fastest_call(clock, monkeypatch):
    spent = iter([50.0, 4.0, 2.0, 8.0])     # warm-up, then three timed calls: the fastest takes 2 ms
    monkeypatch.setattr(timing.torch, "mm", lambda a, b: clock.spend(next(spent)))
    assert timing.matmul_gflops(size=100, repeats=3) == pytest.approx(2 * 100 ** 3 / 2e-3 / 1e9)


def test_every_benchmark_has_a_module_with_main():
    for what in benchmarks.COMMANDS:
        with pytest.raises(SystemExit) as exit_:   # its --help: the module loads and parses
            with redirect_stdout(io.StringIO()) as out:
                benchmarks.run(what, ["--help"])
        assert exit_.value.code == 0 and f"natfast bench {what}" in out.getvalue()
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        benchmarks.run("nope", [])


@pytest.mark.parametrize("script, what", [("derive_breakdown", "breakdown"), ("cpu_scoring_ab", "cpu-scoring"),
                                          ("executor_overhead", "executor"), ("dispatch_overhead", "dispatch"),
                                          ("factorized_reduce", "factorized-reduce"), ("lanes_sweep", "lanes")])
def test_bench_scripts_are_the_natfast_bench_subcommands(script, what, monkeypatch):
    monkeypatch.setattr(sys, "argv", [f"bench/{script}.py", "--help"])
    with pytest.raises(SystemExit) as exit_, redirect_stdout(io.StringIO()) as out:
        runpy.run_path(str(ROOT / "bench" / f"{script}.py"), run_name="__main__")
    assert exit_.value.code == 0 and out.getvalue().startswith(f"usage: natfast bench {what}")


def test_bench_dispatch_reports_microseconds_per_call():
    result = benchmarks.run("dispatch", ["--calls", "50", "--repeats", "1"])
    assert result["calls"] == 50
    for key in ("resolve_relu_dwconv_cpu_us", "resolve_relu_dwconv_cuda_rules_us", "forced_backend_us"):
        assert 0 < result[key] < 10_000


def test_bench_factorized_reduce_times_fused_and_unfused_on_every_shape():
    result = benchmarks.run("factorized-reduce", ["--batch-size", "2", "--repeats", "1"])
    shapes = [k for k in result if " -> " in k]
    assert shapes == ["4 x C20 H32 -> C40", "4 x C40 H16 -> C80", "1 x C20 H32 -> C40", "1 x C40 H32 -> C80"]
    for key in shapes:
        row = result[key]
        assert all(row[f"{a}_{b}_ms"] > 0 for a in ("fused", "unfused") for b in ("scoring", "fwd_bwd"))
        # Ratios rounded to 2 decimals, of times rounded to 3.
        ratio = row["unfused_scoring_ms"] / row["fused_scoring_ms"]
        assert row["scoring_speedup"] == pytest.approx(ratio, rel=0.01, abs=0.006)


@pytest.mark.slow
def test_bench_lanes_times_every_lane_count_and_the_sequential_way_on_the_same_rounds():
    from natfast.supernet import Supernet
    default = Supernet.LANES_AT_ONCE
    result = benchmarks.run("lanes", ["--rounds", "2", "--batch-size", "4", "--layers", "5", "--channels", "4"])
    assert Supernet.LANES_AT_ONCE == default      # the sweep leaves the class setting as it found it
    for name in ("1", "2", "4", "8", "all", "sequential"):
        row = result[name]
        assert len(row["rounds_s"]) == 2 and all(t > 0 for t in row["rounds_s"])
        assert row["median_s"] == pytest.approx(row["rounds_s"][1], abs=1e-3)   # the first round is a warm-up
        assert row["last_round_page_faults"] >= 0


def test_bench_lanes_needs_a_round_after_the_warmup(capsys):
    with pytest.raises(SystemExit):
        benchmarks.run("lanes", ["--rounds", "1"])
    assert "--rounds must be >= 2" in capsys.readouterr().err


@pytest.mark.slow
def test_cpu_scoring_ab_script_prints_the_json_keys_of_its_step_ab(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench/cpu_scoring_ab.py", "--step-only", "--rounds", "1", "--batch-size", "4",
                                      "--layers", "5", "--channels", "4"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "bench" / "cpu_scoring_ab.py"), run_name="__main__")
    assert exit_.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert "ops_one_thread_ms" not in report
    step = report["policy_step_4x4"]
    assert all(step[f"{k}_ms"] > 0 for k in ("shipped", "blas", "separate_preprocessing"))
    assert step["blas_over_shipped"] > 0 and step["separate_preprocessing_over_shipped"] > 0


def test_cpu_scoring_ops_ab_times_each_blas_setting_and_restores_threads():
    from natfast.benchmarks.cpu_scoring import ops_ab
    threads = torch.get_num_threads()
    result = ops_ab(rounds=1, batch=2)
    assert torch.get_num_threads() == threads
    assert len(result) == 9      # three ops at the three stages' shapes
    for row in result.values():
        assert all(row[k] > 0 for k in ("auto", "blas", "own"))


@pytest.mark.skipif(not executor.available(),
                    reason="natfast._C without natfast::executor_forward (extension not built)")
def test_bench_executor_measures_both_paths_on_the_same_step():
    from natfast.benchmarks.executor import measure
    row = measure(batch=2, channels=4, layers=5, repeat=1)
    assert row["python_ms"] > 0 and row["executor_ms"] > 0
    assert row["saved_ms"] == pytest.approx(row["python_ms"] - row["executor_ms"], abs=2e-3)
