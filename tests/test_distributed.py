"""Data-parallel search and training on torch.distributed (gloo on the CPU).

The processes are started as torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT in their environment), one thread each; one test runs torchrun itself.

BN in the comparisons: the supernet's BN uses batch statistics, and each process computes them
over its own shard of the batch (as DDP does). So a 2-process search is compared with a 1-process
search whose w batches run as two groups of half a batch, each with its own BN statistics
(`Supernet.forward_routed`), which is what the 2 processes compute together; and a 2-process
training with a 1-process one that runs each batch as two halves (gradients averaged) and keeps
the BN running averages of the first half (rank 0's, which DDP sends to the others).
"""
import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from natfast import checkpoint as ckpt
from natfast.config import SearchConfig, TrainConfig
from natfast.data import BatchLoader, load_cifar10
from natfast.distributed import Ranks
from natfast.faults import NonFiniteError
from natfast.search import Searcher, step_generator
from natfast.train import Trainer

search_module = importlib.import_module("natfast.search")   # (natfast.search is also the function)

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).resolve().parent / "distributed_driver.py"

# 320 images, batch 32: 4 w steps then 6 theta steps per epoch (as tests/test_search.py).
SMALL = dict(epochs=2, batch_size=32, channels=4, layers=3, train_limit=320, progress=False,
             hidden_size=16, embedding_size=8, checkpoint_every=0, num_inputs=2, num_samples=2, device="cpu")


def _flags(cfg: dict) -> list:
    out = []
    for k, v in cfg.items():
        flag = "--" + k.replace("_", "-")
        out += [flag if v else "--no-" + flag[2:]] if isinstance(v, bool) else [flag, str(v)]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(argv: list, world: int, tmp_path: Path, name: str = "run") -> list:
    """`world` processes of `argv` with the environment torchrun gives its workers (alone for
    world 1: no process group), stdout and stderr to files in tmp_path."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        if world > 1:
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        out = open(tmp_path / f"{name}.rank{rank}.out", "w")
        err = open(tmp_path / f"{name}.rank{rank}.err", "w")
        procs.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=err))
    return procs


def _wait(procs: list, timeout: float = 300) -> list:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return codes


def _output(tmp_path: Path, name: str, rank: int, stream: str = "err") -> str:
    return (tmp_path / f"{name}.rank{rank}.{stream}").read_text()


def _natfast(command: str, out: Path, cfg: dict) -> list:
    return [sys.executable, "-m", "natfast", command, "--out", str(out)] + _flags(cfg)


def _state(out: Path, kind: str = ckpt.FORMAT) -> dict:
    return ckpt.load(str(out / "checkpoint.pt"), kind)


# ---------------------------------------------------------------------------------------------- units


def test_shards_of_a_batch_are_its_parts_augmented_alike():
    train = load_cifar10(None, "train")
    args = dict(indices=np.arange(256), batch_size=32, augment=True, cutout=16, seed=3)
    whole = list(BatchLoader(train, **args).epoch(2))
    halves = [list(BatchLoader(train, **args, shard=(r, 2)).epoch(2)) for r in range(2)]
    assert len(whole) == len(halves[0]) == len(halves[1]) == 8
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *halves):
        assert x0.shape == (16, 3, 32, 32)
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    with pytest.raises(ValueError, match="shard"):
        BatchLoader(train, batch_size=30, shard=(0, 4))


def test_the_global_batch_must_split_evenly():
    assert Ranks(rank=1, world=4).check_batch(64) == 16
    with pytest.raises(ValueError, match="--batch-size 30 does not split evenly over 4 processes"):
        Ranks(rank=0, world=4).check_batch(30)


def test_alone_nothing_is_averaged():
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    before = p.grad.clone()
    assert Ranks().average_gradients([p], [torch.tensor(0.25), 0.5]) == [0.25, 0.5]
    assert torch.equal(p.grad, before)


def test_a_non_finite_loss_stops_the_search_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    cfg = SearchConfig(out=str(tmp_path / "run"), **{**SMALL, "checkpoint_every": 1, "w_lr": 1e30,
                                                      "w_lr_min": 1e30, "grad_clip": 0.0})
    s = Searcher(cfg, log=lambda _: None)
    # The loss of a step, or the parameters an update left (checked before each save), go non-finite.
    with pytest.raises(NonFiniteError, match=r"^(step (\d+) \(epoch 0, update_w\): loss is (nan|inf)|"
                                             r"after step (\d+): the parameters are no longer finite)") as error:
        s.run()
    message = str(error.value)
    step = int(re.search(r"step (\d+)", message).group(1))
    assert "the last good checkpoint" in message and "is kept as it was" in message
    saved = _state(tmp_path / "run")
    assert saved["position"]["step"] == step      # every step before it was saved, nothing after
    assert all(torch.isfinite(t).all() for t in saved["supernet"].values())


def test_a_non_finite_loss_stops_training(tmp_path):
    cfg = TrainConfig(arch="DARTS", out=str(tmp_path / "train"), epochs=1, batch_size=16, channels=4, layers=3,
                      train_limit=64, lr=1e30, auxiliary_weight=0.0, progress=False, device="cpu")
    with pytest.raises(NonFiniteError, match=r"epoch 0, batch \d+: .*is (nan|inf)"):
        Trainer(cfg, log=lambda _: None).run()
    assert not (tmp_path / "train" / "checkpoint.pt").exists()


# ---------------------------------------------------------------------------------------------- search


class TwoProcessesInOne(Searcher):
    """What a 2-process search computes, in one process: each half of a w batch gets its own BN
    statistics (a process's shard does), and a policy step takes both processes' pairs (process r
    draws them from stream r), the policy gradient and the rewards averaged over both."""

    def w_logits(self, x, beta):
        return self.supernet.forward_routed(x, [beta, beta], [len(x) // 2, len(x) - len(x) // 2])

    def update_theta(self, x, y, gen):
        cfg = self.cfg
        parts = [self.policy_loss(x, y, step_generator(cfg.seed, self.position.step, r)) for r in range(2)]
        self.policy_optimizer.zero_grad(set_to_none=True)
        ((parts[0][0] + parts[1][0]) / 2).backward()
        self.policy_optimizer.step()
        means = [float((a + b).detach()) / 2 for a, b in zip(parts[0][1], parts[1][1])]
        reward, loss, entropy, beta_acc, alpha_acc = means
        self.baseline = cfg.baseline_decay * self.baseline + (1 - cfg.baseline_decay) * reward
        return {"loss": loss, "reward": reward, "baseline": self.baseline, "entropy": entropy,
                "beta_acc": beta_acc, "alpha_acc": alpha_acc}


def _recorded_run(searcher: Searcher) -> dict:
    """Run it, recording the architectures drawn at each step."""
    drawn, real = {}, search_module.sample_genotype

    def recording(family, generator):
        geno = real(family, generator)
        drawn.setdefault(searcher.position.step, []).append(str(geno))
        return geno

    search_module.sample_genotype = recording
    try:
        searcher.run()
    finally:
        search_module.sample_genotype = real
    return drawn


@pytest.mark.slow
def test_two_process_search_equals_one_process_search_of_the_same_global_batch(tmp_path):
    # 4 w steps then 2 policy steps, through the API in a process group the caller made.
    cfg = {**SMALL, "max_steps": 6}
    procs = _launch([sys.executable, str(DRIVER), str(tmp_path / "two"), json.dumps(cfg)], 2, tmp_path)
    reference = TwoProcessesInOne(SearchConfig(out=str(tmp_path / "one"), **cfg), log=lambda _: None)
    expected = _recorded_run(reference)
    assert _wait(procs) == [0, 0], _output(tmp_path, "run", 0) + _output(tmp_path, "run", 1)

    drawn = [json.loads((tmp_path / "two" / f"archs_rank{r}.json").read_text()) for r in range(2)]
    for step in range(4):     # update_w: one architecture, the same in both processes
        assert drawn[0][str(step)] == drawn[1][str(step)] == expected[step]
    for step in (4, 5):       # update_theta: each process its own m = 2 inputs
        assert drawn[0][str(step)] + drawn[1][str(step)] == expected[step]
        assert drawn[0][str(step)] != drawn[1][str(step)]

    state = _state(tmp_path / "two")
    assert state["position"] == vars(reference.position)
    assert state["baseline"] == pytest.approx(reference.baseline, abs=1e-7)
    for part, module in (("supernet", reference.supernet), ("policy", reference.policy)):
        for name, value in module.state_dict().items():
            torch.testing.assert_close(state[part][name], value, rtol=1e-4, atol=1e-6, msg=f"{part}.{name}")
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(6))   # written once, by rank 0
    for row, ref in zip(rows, ref_rows):
        for k in ("loss", "acc", "reward", "entropy"):
            if k in ref:
                assert row[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-6), (row, ref, k)


def _kill_after_checkpoint(procs: list, checkpoint: Path, timeout: float = 240) -> None:
    """SIGKILL every process once the first checkpoint is on disk (the run is mid-epoch then)."""
    deadline = time.monotonic() + timeout
    while not checkpoint.exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no checkpoint was written"
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    assert _wait(procs, 30) == [-signal.SIGKILL] * len(procs)


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
def test_a_run_killed_mid_epoch_resumes_to_the_same_state(tmp_path, world):
    cfg = {**SMALL, "epochs": 1, "checkpoint_every": 2, "max_steps": 9}
    straight = _launch(_natfast("search", tmp_path / "straight", cfg), world, tmp_path, "straight")
    assert _wait(straight) == [0] * world, _output(tmp_path, "straight", 0)

    killed = _launch(_natfast("search", tmp_path / "killed", cfg), world, tmp_path, "killed")
    _kill_after_checkpoint(killed, tmp_path / "killed" / "checkpoint.pt")
    stopped_at = _state(tmp_path / "killed")["position"]["step"]
    assert 2 <= stopped_at < 9
    if world == 2:   # without --resume: refused by rank 0, reported once, the others stop with it
        again = _launch(_natfast("search", tmp_path / "killed", cfg), world, tmp_path, "again")
        assert _wait(again) == [2, 1]
        assert "already holds a checkpoint" in _output(tmp_path, "again", 0)
        assert _output(tmp_path, "again", 1) == ""
    resumed = _launch(_natfast("search", tmp_path / "killed", {**cfg, "resume": True}), world, tmp_path, "resumed")
    assert _wait(resumed) == [0] * world, _output(tmp_path, "resumed", 0)
    assert f"resumed from {tmp_path / 'killed' / 'checkpoint.pt'} at step {stopped_at}" in \
        _output(tmp_path, "resumed", 0, "out")

    a, b = _state(tmp_path / "straight"), _state(tmp_path / "killed")
    assert a["position"] == b["position"] and a["baseline"] == b["baseline"]
    for part in ("supernet", "policy", "w_optimizer", "policy_optimizer"):
        for (name, x), y in zip(_tensors(a[part]), [t for _, t in _tensors(b[part])]):
            assert torch.equal(x, y), f"{part} {name}"

    # A resumed run may use another number of processes (the global batch is the same).
    other = 3 - world
    more = {**cfg, "max_steps": 12, "resume": True}
    assert _wait(_launch(_natfast("search", tmp_path / "killed", more), other, tmp_path, "other")) == [0] * other
    assert "at step 9" in _output(tmp_path, "other", 0, "out")
    assert _state(tmp_path / "killed")["position"] == {"epoch": 1, "phase": "w", "batch": 0, "step": 10}


def _tensors(tree, prefix=""):
    """(path, tensor) of every tensor in a nested state dict, in order."""
    if isinstance(tree, torch.Tensor):
        return [(prefix, tree)]
    if isinstance(tree, dict):
        return [pair for k in tree for pair in _tensors(tree[k], f"{prefix}.{k}")]
    if isinstance(tree, (list, tuple)):
        return [pair for i, v in enumerate(tree) for pair in _tensors(v, f"{prefix}.{i}")]
    return []


@pytest.mark.slow
@pytest.mark.parametrize("command,how", [("search", signal.SIGKILL), ("search", signal.SIGSTOP),
                                         ("train", signal.SIGKILL)],
                         ids=["search-killed", "search-stopped", "train-killed"])
def test_when_a_process_dies_or_hangs_the_others_stop_within_the_timeout(tmp_path, command, how):
    timeout = 8
    if command == "search":
        cfg, kind = {**SMALL, "epochs": 20, "checkpoint_every": 2, "dist_timeout": timeout}, ckpt.FORMAT
    else:
        cfg = dict(arch="DARTS", epochs=40, batch_size=16, channels=4, layers=3, train_limit=320, progress=False,
                   device="cpu", dist_timeout=timeout)
        kind = ckpt.TRAIN_FORMAT
    procs = _launch(_natfast(command, tmp_path / "run", cfg), 2, tmp_path)
    try:
        checkpoint = tmp_path / "run" / "checkpoint.pt"
        deadline = time.monotonic() + 240
        while not checkpoint.exists():
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.02)
        seen = _state(tmp_path / "run", kind)
        procs[1].send_signal(how)     # mid-step: the processes step without pause
        start = time.monotonic()
        code = procs[0].wait(timeout + 20)
        waited = time.monotonic() - start
    finally:
        procs[1].kill()
        procs[1].wait()
    assert code == 1
    err = _output(tmp_path, "run", 0)
    assert f"natfast {command}: error: " in err and "rank 0 of 2" in err, err
    assert f"another rank died or did not answer within the {timeout} s timeout" in err, err
    assert "Traceback" not in err
    # a dead process is noticed at the next collective; a hung one after the timeout
    assert waited < (timeout if how == signal.SIGKILL else timeout + 10), waited
    # the last checkpoint is whole: the one seen before, or a later one
    last = _state(tmp_path / "run", kind)
    assert (last["position"]["step"] >= seen["position"]["step"] if command == "search"
            else last["epoch"] >= seen["epoch"])


@pytest.mark.slow
def test_torchrun_search_prints_once_and_its_checkpoint_transforms(tmp_path):
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run"]   # what the torchrun command runs
    proc = subprocess.run(torchrun + ["--standalone", "--nproc_per_node", "2", "-m", "natfast", "search",
                                      "--preset", "tiny", "--out", str(out), "--max-steps", "6", "--train-limit",
                                      "640", "--channels", "4", "--layers", "3", "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("SearchConfig(") == 1 and proc.stdout.count("checkpoint: ") == 1, proc.stdout
    assert "data-parallel over 2 processes" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "natfast", "transform", "--arch", "DARTS", "--checkpoint",
                           str(out / "checkpoint.pt")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Genotype(") == 2


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_two_process_training_equals_one_process_training_of_the_same_global_batch(tmp_path):
    cfg = dict(arch="DARTS", epochs=1, batch_size=16, channels=4, layers=3, train_limit=64, cutout=16,
               auxiliary_weight=0.4, progress=False, device="cpu")
    procs = _launch(_natfast("train", tmp_path / "two", cfg), 2, tmp_path)

    # One process, each batch as two halves: each half its own BN statistics, gradients averaged;
    # the BN running averages are the first half's (rank 0's, which DDP sends to the others).
    ref = Trainer(TrainConfig(out=str(tmp_path / "one"), **cfg), log=lambda _: None)
    model, opt = ref.model.train(), ref.optimizer
    model.drop_path_prob = 0.0   # drop-path starts at 0 in the first epoch
    for g in opt.param_groups:
        g["lr"] = ref.lr(0)
    losses = []
    for x, y in ref.train_loader.epoch(0):
        opt.zero_grad(set_to_none=True)
        for half in (slice(0, 8), slice(8, 16)):
            kept = [b.clone() for b in model.buffers()]
            logits, aux = model.forward_with_aux(x[half])
            loss = F.cross_entropy(logits, y[half]) + 0.4 * F.cross_entropy(aux, y[half])
            (loss / 2).backward()
            losses.append(loss.item())
            if half.start:
                for b, k in zip(model.buffers(), kept):
                    b.copy_(k)
        torch.nn.utils.clip_grad_norm_(model.parameters(), ref.cfg.grad_clip)
        opt.step()
    test_acc = ref.evaluate()

    assert _wait(procs) == [0, 0], _output(tmp_path, "run", 0) + _output(tmp_path, "run", 1)
    out0, out1 = _output(tmp_path, "run", 0, "out"), _output(tmp_path, "run", 1, "out")
    assert out0.count("test accuracy") == 1 and out1 == ""
    state = _state(tmp_path / "two", ckpt.TRAIN_FORMAT)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(state["model"][name].to(value.dtype), value, rtol=1e-4, atol=1e-5, msg=name)
    record = json.loads((tmp_path / "two" / "metrics.jsonl").read_text())
    assert record["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    assert record["test_acc"] == pytest.approx(test_acc, abs=1 / 500 + 1e-9)
