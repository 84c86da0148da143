"""The alternating trainer: exact resume, checkpoints, derive."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from natfast import checkpoint as ckpt
from natfast.config import SearchConfig
from natfast.derive import load_search, transform_argmax, transform_best_of_k, validation_loader
from natfast.genotype import get_named, parse
from natfast.search import Searcher
from natfast.transitions import is_valid_transformation

# 320 images, batch 32: 4 w-steps then 6 theta-steps per epoch.
SMALL = dict(epochs=2, batch_size=32, channels=4, layers=3, train_limit=320, progress=False,
             hidden_size=16, embedding_size=8, checkpoint_every=0, num_inputs=2, num_samples=2)


def _run(tmp_path, name, **kw):
    cfg = SearchConfig(out=str(tmp_path / name), **{**SMALL, **kw})
    s = Searcher(cfg, log=lambda _: None)
    s.run()
    return s


def _same_state(a: Searcher, b: Searcher):
    for sa, sb in ((a.supernet, b.supernet), (a.policy, b.policy)):
        for (name, ta), tb in zip(sa.state_dict().items(), sb.state_dict().values()):
            assert torch.equal(ta, tb), name
    assert a.baseline == b.baseline
    assert vars(a.position) == vars(b.position)


# An epoch is 10 steps (4 w, then 6 theta): stop inside the w phase, inside the theta phase, at the
# epoch boundary, and inside epoch 0 resuming across the boundary into epoch 1's theta phase.
@pytest.mark.parametrize("stop,end", [(3, 4), (5, 6), (10, 11), (7, 16)])
def test_resume_gives_the_same_next_steps(tmp_path, stop, end):
    straight = _run(tmp_path, "straight", max_steps=end)
    _run(tmp_path, "resumed", max_steps=stop)
    resumed = _run(tmp_path, "resumed", max_steps=end, resume=True)
    assert resumed.position.step == end
    _same_state(straight, resumed)
    if end > 10:
        assert resumed.position.epoch == 1


def test_resume_refuses_a_different_model(tmp_path):
    _run(tmp_path, "run", max_steps=1)
    with pytest.raises(ckpt.CheckpointError, match="channels"):
        _run(tmp_path, "run", max_steps=2, resume=True, channels=6)


def test_checkpoint_is_weights_only_and_kept_on_overwrite(tmp_path):
    s = _run(tmp_path, "run", max_steps=2)
    path = os.path.join(s.cfg.out, "checkpoint.pt")
    state = torch.load(path, weights_only=True)
    assert state["format"] == ckpt.FORMAT and state["position"]["step"] == 2
    s.save(path)
    assert os.path.exists(path + ".prev") and not os.path.exists(path + ".tmp")


def test_a_fresh_run_never_replaces_a_checkpoint_unless_told(tmp_path):
    first = _run(tmp_path, "run", max_steps=2)
    out = Path(first.cfg.out)
    before = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "metrics.jsonl", "config.json")}
    with pytest.raises(ckpt.CheckpointError, match="--resume.*--overwrite"):
        _run(tmp_path, "run", max_steps=3)
    # nothing was written: the first run's files are as they were, and no .prev was made
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not (out / "checkpoint.pt.prev").exists()
    again = _run(tmp_path, "run", max_steps=1, overwrite=True)
    assert again.position.step == 1
    # the fresh run's records replace the first run's; the replaced checkpoint is kept as .prev
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0]
    assert (out / "checkpoint.pt.prev").read_bytes() == before["checkpoint.pt"]


def test_a_checkpoint_loads_whatever_bounds_its_config_predates(tmp_path):
    # Configs are range-checked when made (flags, API); one stored in a checkpoint is taken as it
    # was, so a checkpoint written before a bound existed (here epochs = 0), or lacking a newer
    # field, still loads.
    run = _run(tmp_path, "run", max_steps=1)
    path = os.path.join(run.cfg.out, "checkpoint.pt")
    state = torch.load(path, weights_only=True)
    state["config"]["epochs"] = 0
    del state["config"]["overwrite"]
    torch.save(state, path)
    loaded = load_search(path)
    assert loaded.config.epochs == 0 and loaded.config.overwrite is False
    assert loaded.config.policy_betas == run.cfg.policy_betas   # lists come back as tuples
    with pytest.raises(ValueError, match="--epochs must be >= 1"):
        SearchConfig(epochs=0)


@pytest.mark.parametrize("content,match", [(b"\x00garbage" * 10, "corrupt"), (None, "not a natfast")])
def test_bad_checkpoints_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"format": "something-else"}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ckpt.CheckpointError, match=match) as error:
        load_search(str(path))
    # torch's advice to load with weights_only=False (unsafe, and never needed here) is left out
    assert "weights_only" not in str(error.value)


def test_metrics_log_has_both_phases(tmp_path):
    s = _run(tmp_path, "run", epochs=1)
    rows = [json.loads(line) for line in Path(s.cfg.out, "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["w"] * 4 + ["theta"] * 6
    assert all("reward" in r and "entropy" in r for r in rows if r["phase"] == "theta")


def test_each_finished_phase_logs_the_means_of_its_steps(tmp_path):
    lines = []
    cfg = SearchConfig(out=str(tmp_path / "run"), **{**SMALL, "epochs": 2})
    Searcher(cfg, log=lines.append).run()
    rows = [json.loads(line) for line in Path(cfg.out, "metrics.jsonl").read_text().splitlines()]
    summaries = [line for line in lines if line.startswith("epoch ")]
    assert [s.split(" (")[0] for s in summaries] == ["epoch 0 w", "epoch 0 theta", "epoch 1 w", "epoch 1 theta"]
    for line in summaries:
        epoch, phase = int(line.split()[1]), line.split()[2]
        mine = [r for r in rows if r["epoch"] == epoch and r["phase"] == phase]
        assert f"means of {len(mine)} steps" in line
        logged = dict(zip(*[iter(line.split("): ")[1].split())] * 2))
        keys = ("loss", "acc") if phase == "w" else ("loss", "reward", "entropy", "beta_acc", "alpha_acc")
        for k in keys:
            assert float(logged[k]) == pytest.approx(sum(r[k] for r in mine) / len(mine), abs=1e-4), (line, k)


def test_a_phase_ended_by_max_steps_is_summarised_too(tmp_path):
    lines = []
    cfg = SearchConfig(out=str(tmp_path / "run"), **{**SMALL, "max_steps": 4})  # the w phase's 4 steps
    Searcher(cfg, log=lines.append).run()
    assert [line.split(" (")[0] for line in lines if line.startswith("epoch ")] == ["epoch 0 w"]


def test_derive_argmax_and_best_of_k(tmp_path):
    s = _run(tmp_path, "run", epochs=1)
    result = load_search(os.path.join(s.cfg.out, "checkpoint.pt"))
    beta, family = get_named("DARTS")
    alpha = transform_argmax(result.policy, beta)
    assert is_valid_transformation(beta, alpha, "nat", family.primitives)
    best = transform_best_of_k(result, beta, k=4, seed=1, loader=validation_loader(result.config), max_batches=2)
    assert len(best.scores) == 4 and all(0 <= x <= 1 for x in best.scores)
    assert best.best == beta or max(best.scores) > best.beta_score
    assert is_valid_transformation(beta, best.best, "nat", family.primitives)


@pytest.mark.parametrize("policy", ["lstm", "random"])
def test_ablation_policies_train(tmp_path, policy):
    s = _run(tmp_path, policy, epochs=1, policy=policy)
    assert s.position.step == 10


def test_policy_gradient_of_m_by_n_pairs_is_the_average_of_per_pair_gradients(tmp_path):
    """update_theta scores all m x n (beta, alpha) pairs in one batched pass; its gradient must equal
    the average of the gradients of each pair's REINFORCE loss computed on its own."""
    # lr 0: the optimiser step must not move the policy before the replay below.
    s = Searcher(SearchConfig(out=str(tmp_path), **{**SMALL, "num_inputs": 2, "num_samples": 3, "policy_lr": 0.0,
                                                    "policy_weight_decay": 0.0}), log=lambda _: None)
    s.baseline = 0.05
    x, y = next(iter(s.theta_loader.epoch(0)))
    from natfast.sampler import sample_genotype
    from natfast.search import step_generator
    baseline = s.baseline
    s.update_theta(x, y, step_generator(0, 7, 0))
    batched = {n: p.grad.clone() for n, p in s.policy.named_parameters()}

    # Replay the same random choices, then one pair at a time (rewards scored sequentially too).
    gen = step_generator(0, 7, 0)
    betas = [sample_genotype(s.family, gen) for _ in range(2)]
    cells = [c for b in betas for c in (b.normal, b.reduce)]
    samples = s.policy.sample(cells, gen, 3)
    expected = {n: torch.zeros_like(g) for n, g in batched.items()}
    pairs = 0
    for sample in samples:
        for i, beta in enumerate(betas):
            targets = sample.targets[2 * i: 2 * i + 2]
            alpha = s.policy.to_genotype(beta, targets)
            with torch.no_grad():
                reward = ((s.supernet(x, alpha).argmax(1) == y).float().mean()
                          - (s.supernet(x, beta).argmax(1) == y).float().mean()).item()
            tr = s.policy.evaluate([beta.normal, beta.reduce], targets)
            loss = -tr.log_prob.sum() * (reward - baseline) - s.cfg.entropy_weight * tr.entropy.sum()
            grads = torch.autograd.grad(loss, list(s.policy.parameters()), allow_unused=True)
            for (n, _), g in zip(s.policy.named_parameters(), grads):
                if g is not None:
                    expected[n] += g
            pairs += 1
    for n in batched:
        torch.testing.assert_close(batched[n], expected[n] / pairs, rtol=1e-4, atol=1e-6)


def test_benchmarks_sequential_policy_step_takes_the_batched_steps_draws_and_gradient(tmp_path):
    """`natfast bench steps` times the authors' sequential way against update_theta on the same
    architectures: with the same generator both must draw the same pairs and (the policy's lr 0)
    leave the same gradient."""
    from natfast.benchmarks.steps import sequential_update_theta
    from natfast.search import step_generator
    s = Searcher(SearchConfig(out=str(tmp_path), **{**SMALL, "num_inputs": 2, "num_samples": 2, "policy_lr": 0.0,
                                                    "policy_weight_decay": 0.0}), log=lambda _: None)
    s.baseline = 0.05
    x, y = next(iter(s.theta_loader.epoch(0)))
    betas, samples, alphas = s.draw_transformations(step_generator(0, 3, 2))
    assert [str(b) for b in betas] == [str(b) for b in s.draw_transformations(step_generator(0, 3, 2))[0]]
    assert len(alphas) == 2 and all(len(row) == 2 for row in alphas)
    s.update_theta(x, y, step_generator(0, 3, 2))
    batched = {n: p.grad.clone() for n, p in s.policy.named_parameters() if p.grad is not None}
    s.baseline = 0.05
    sequential_update_theta(s, x, y, step_generator(0, 3, 2))
    sequential = {n: p.grad.clone() for n, p in s.policy.named_parameters() if p.grad is not None}
    assert batched.keys() == sequential.keys() and batched
    for n in batched:
        torch.testing.assert_close(sequential[n], batched[n], rtol=1e-4, atol=1e-6)


def test_search_quality_script_scores_policy_and_random_transformations(tmp_path):
    """bench/search_quality.py on a small search: every input's row, accuracies in [0, 1], costs
    reported, and the argmax transformation valid. (Its cost may exceed the input's: a pool
    turned into a skip on a reduction edge becomes a FactorizedReduce, which has weights.)"""
    s = _run(tmp_path, "run", epochs=1)
    out = tmp_path / "quality.json"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "bench" / "search_quality.py"), "--checkpoint",
                           str(Path(s.cfg.out, "checkpoint.pt")), "--random-inputs", "1", "--samples", "2",
                           "--images", "50", "--batch-size", "25", "--json", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["input"] for r in rows] == ["DARTS", "ResBlock", "VGG", "random0"]
    for r in rows:
        for k in ("beta_acc", "argmax_acc", "policy_mean_acc", "policy_best_acc", "random_mean_acc", "random_best_acc"):
            assert 0.0 <= r[k] <= 1.0
        assert r["policy_mean_acc"] <= r["policy_best_acc"] and r["random_mean_acc"] <= r["random_best_acc"]
        assert r["beta_params_m"] > 0 and r["argmax_madds_m"] > 0
    darts_alpha = parse(rows[0]["argmax"])
    assert is_valid_transformation(get_named("DARTS")[0], darts_alpha, "nat", s.family.primitives)
    assert "| DARTS |" in proc.stdout
