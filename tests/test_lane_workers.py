"""Lane workers: chunks of architectures scored side by side on a CPU give what scoring them in turn
gives, under the caller's autograd mode and forced backends, and leave torch's thread count as it was."""
import time

import pytest
import torch

from natfast import lane_workers
from natfast.engine import split_evenly
from natfast.genotype import Genotype, get_family
from natfast.ops import dispatch
from natfast.sampler import sample_genotype
from natfast.supernet import Supernet

FWD_TOL = dict(rtol=1e-9, atol=1e-9)  # float64: only the kernels' summation order may differ


def _supernet(family_name, seed=0):
    torch.manual_seed(seed)
    return Supernet(get_family(family_name), 4, 4).double()


def _archs(family, gen, n=9):
    """Random architectures with a duplicate and ones that differ only in the reduction cell."""
    archs = [sample_genotype(family, gen) for _ in range(n - 3)]
    other = sample_genotype(family, gen)
    return archs + [archs[0], archs[1]._replace(reduce=other.reduce), archs[2]._replace(normal=other.normal)]


@pytest.fixture
def worker_calls(monkeypatch):
    """The worker counts `lane_workers.run` was called with."""
    seen = []
    real = lane_workers.run

    def spy(tasks, workers):
        seen.append(workers)
        return real(tasks, workers)
    monkeypatch.setattr(lane_workers, "run", spy)
    return seen


@pytest.mark.parametrize("mode", ["inference", "no_grad"])
@pytest.mark.parametrize("family_name", ["darts", "enas"])
def test_workers_equal_chunks_in_turn(family_name, mode, monkeypatch, worker_calls):
    sn = _supernet(family_name)
    gen = torch.Generator().manual_seed(7)
    archs = _archs(sn.family, gen)
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64, generator=gen)
    guard = torch.inference_mode if mode == "inference" else torch.no_grad
    threads = torch.get_num_threads()
    with guard():
        with lane_workers.at_most(1):
            alone = sn.forward_shared(x, archs)
        monkeypatch.setenv("NATFAST_LANE_WORKERS", "3")
        together = sn.run([x], [(0, a) for a in archs], lanes_at_once=2)
    assert worker_calls == [1, 3]  # 8 distinct lanes: chunks of 2 -> 4, rounded up to 6 for 3 workers
    assert torch.get_num_threads() == threads
    for a, b in zip(alone, together):
        torch.testing.assert_close(b, a, **FWD_TOL)
        assert b.is_inference() == (mode == "inference")


def test_routed_groups_with_workers_equal_each_group_alone(monkeypatch, worker_calls):
    sn = _supernet("darts")
    gen = torch.Generator().manual_seed(8)
    archs = _archs(sn.family, gen, n=6)
    sizes = [3, 2, 4, 1, 2, 3]
    x = torch.randn(sum(sizes), 3, 8, 8, dtype=torch.float64, generator=gen)
    monkeypatch.setenv("NATFAST_LANE_WORKERS", "2")
    with torch.inference_mode():
        routed = sn.run(list(torch.split(x, sizes)), list(enumerate(archs)), lanes_at_once=1)
        alone = [sn(part, a) for part, a in zip(torch.split(x, sizes), archs)]
    assert worker_calls[0] == 2
    for r, a in zip(routed, alone):
        torch.testing.assert_close(r, a, **FWD_TOL)


def test_workers_keep_forced_backend_and_recording(monkeypatch, worker_calls):
    sn = _supernet("darts")
    archs = _archs(sn.family, torch.Generator().manual_seed(9))
    monkeypatch.setenv("NATFAST_LANE_WORKERS", "2")
    with torch.inference_mode(), dispatch.use_backend("reference"), dispatch.recording() as used:
        sn.forward_shared(torch.randn(4, 3, 8, 8, dtype=torch.float64), archs)
    assert worker_calls == [2]
    assert used and all(names == {"reference"} for names in used.values()), used


def test_no_workers_when_autograd_records_or_one_chunk(monkeypatch, worker_calls):
    sn = _supernet("darts")
    archs = _archs(sn.family, torch.Generator().manual_seed(10))
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    monkeypatch.setenv("NATFAST_LANE_WORKERS", "2")
    sn.forward_shared(x, archs)                      # autograd records: the backward needs one thread's order
    with torch.inference_mode():
        sn(x, archs[0])                              # one lane, one chunk
        sn.run([x], [(0, a) for a in archs], lanes_at_once=len(archs))
    assert worker_calls == [1, 1, 1]


def test_worker_error_reaches_the_caller_after_every_task_and_threads_are_restored():
    threads = torch.get_num_threads()
    finished = []

    def fails():
        raise RuntimeError("lane 3 failed")

    def slow():
        time.sleep(0.2)
        finished.append(True)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="lane 3 failed"):
        lane_workers.run([fails, slow, slow], 2)
    assert finished == [True, True]  # nothing still runs behind the caller
    assert torch.get_num_threads() == threads
    with torch.inference_mode():
        assert lane_workers.run([lambda: 1, lambda: 2, lambda: 3], 2) == [1, 2, 3]


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_worker_setting_is_a_clear_error(value, monkeypatch):
    monkeypatch.setenv("NATFAST_LANE_WORKERS", value)
    with torch.inference_mode(), pytest.raises(ValueError, match="NATFAST_LANE_WORKERS"):
        lane_workers.worker_count(4, torch.zeros(1))
    assert lane_workers.describe().startswith("invalid setting: NATFAST_LANE_WORKERS")
    with pytest.raises(ValueError, match="at least 1"):
        with lane_workers.at_most(0):
            pass


def test_worker_count_follows_threads_cap_and_device(monkeypatch):
    monkeypatch.delenv("NATFAST_LANE_WORKERS", raising=False)
    cpu = torch.zeros(1)
    with torch.inference_mode():
        assert lane_workers.worker_count(8, cpu) == min(8, torch.get_num_threads())
        assert lane_workers.worker_count(1, cpu) == 1
        with lane_workers.at_most(1):
            assert lane_workers.worker_count(8, cpu) == 1
        monkeypatch.setenv("NATFAST_LANE_WORKERS", "5")
        assert lane_workers.worker_count(3, cpu) == 3
        assert lane_workers.worker_count(3, torch.zeros(1, device="meta")) == 1
    assert lane_workers.worker_count(3, cpu) == 1  # autograd records


@pytest.mark.parametrize("n,count", [(8, 3), (11, 4), (5, 5), (3, 1)])
def testsplit_evenly(n, count):
    parts = split_evenly(list(range(n)), count)
    assert len(parts) == count and [i for p in parts for i in p] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_architectures_hold_one_duplicate():
    # What the worker counts above assume: of the 9 architectures, 8 are distinct lanes.
    fam = get_family("darts")
    archs = _archs(fam, torch.Generator().manual_seed(7))
    assert archs[-3] == archs[0] and isinstance(archs[-1], Genotype)
    assert len({str(a) for a in archs}) == len(archs) - 1


def test_task_that_scores_again_runs_inline():
    inner = []

    def task():
        inner.append(lane_workers.run([lambda: 1, lambda: 2], 2))
        return len(inner)
    with torch.inference_mode():
        lane_workers.run([task, task], 2)
    assert inner == [[1, 2], [1, 2]]
