"""`natfast experiment`: the random baseline, the inputs, the whole pipeline at a tiny scale on the
embedded sample, resuming after interruptions, and clear refusals."""
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from natfast import checkpoint as ckpt
from natfast.cli import main
from natfast.config import TrainConfig
from natfast.derive import load_search, transform_argmax, transform_best_of_k, validation_loader
from natfast.experiment import (Experiment, ExperimentError, State, changed_edges, experiment, parse_inputs,
                                random_transformation)
from natfast.experiment_config import EXPERIMENT_PRESETS, ExperimentConfig
from natfast.genotype import get_family, get_named, load_arch, normalize
from natfast.policy_file import load_policy
from natfast.sampler import sample_genotype
from natfast.train import Trainer
from natfast.transitions import is_valid_transformation

# The tiny preset. Search: 320 images, batch 32 (4 w steps, 6 theta steps); training: 64 images,
# 2 steps an epoch.
TINY = dict(EXPERIMENT_PRESETS["tiny"], progress=False)


def _quiet(_):
    pass


# ----------------------------------------------------------------------------- the random baseline
@pytest.mark.parametrize("family_name,rule", [("darts", "nat"), ("enas", "nat"), ("darts", "natpp")])
def test_random_transformation_changes_exactly_the_counts(family_name, rule):
    family = get_family(family_name, natpp=(rule == "natpp"))
    gen = torch.Generator().manual_seed(1)
    for trial in range(30):
        beta = sample_genotype(family, gen)
        n_edges = 2 * family.num_nodes
        counts = tuple(int(torch.randint(n_edges + 1, (1,), generator=gen)) for _ in range(2))
        alpha = random_transformation(beta, counts, rule, family.primitives, gen)
        assert changed_edges(beta, alpha) == counts
        assert is_valid_transformation(beta, alpha, rule, family.primitives)


def test_random_transformation_is_uniform_over_edges_and_targets():
    """One edge of DARTS' normal cell changed, 4000 times: each of the 8 edges about 500 times,
    and a sep_conv_3x3 edge goes to skip_connect or null about half the time each."""
    darts, family = get_named("DARTS")
    gen = torch.Generator().manual_seed(0)
    edges, targets = Counter(), Counter()
    for _ in range(4000):
        alpha = random_transformation(darts, (1, 0), "nat", family.primitives, gen)
        (i,) = [k for k, (a, b) in enumerate(zip(darts.normal, alpha.normal)) if a[0] != b[0]]
        edges[i] += 1
        if darts.normal[i][0] == "sep_conv_3x3":
            targets[alpha.normal[i][0]] += 1
        assert alpha.reduce == normalize(darts).reduce
    assert set(edges) == set(range(8))
    assert all(abs(n - 500) < 100 for n in edges.values()), edges      # 500 +- 4.7 sd
    assert set(targets) == {"skip_connect", "null"}
    assert abs(targets["skip_connect"] / sum(targets.values()) - 0.5) < 0.05, targets


def test_random_transformation_refuses_impossible_counts():
    darts, family = get_named("DARTS")
    with pytest.raises(ValueError, match="cannot change 9 of 8"):
        random_transformation(darts, (9, 0), "nat", family.primitives, torch.Generator())


# ----------------------------------------------------------------------------- inputs
def test_inputs_names_files_and_random_cells_drawn_as_the_search_draws(tmp_path):
    arch_file = tmp_path / "my cell.json"
    arch_file.write_text(json.dumps({**normalize(get_named("NAT_DARTS")[0])._asdict(), "family": "darts"}))
    inputs = parse_inputs(ExperimentConfig(inputs=f"DARTS,ENAS,random:2,{arch_file}", input_seed=7))
    assert [i.name for i in inputs] == ["DARTS", "ENAS", "random0", "random1", "my_cell"]
    assert [i.family.name for i in inputs] == ["darts", "enas", "darts", "darts", "darts"]
    gen = torch.Generator().manual_seed(7)
    darts = get_family("darts")
    assert [i.genotype for i in inputs[2:4]] == [normalize(sample_genotype(darts, gen)) for _ in range(2)]
    assert inputs[4].genotype == normalize(get_named("NAT_DARTS")[0])
    natpp = parse_inputs(ExperimentConfig(inputs="DARTS,random:1", transitions="natpp"))
    assert [i.family.name for i in natpp] == ["darts++", "darts++"]


@pytest.mark.parametrize("overrides,message", [
    (dict(inputs="DARTS,darts"), "repeated: DARTS"),
    (dict(inputs="NOT_AN_ARCH"), "NOT_AN_ARCH"),
    (dict(inputs="DARTS,NAONet"), "NAONet is of the enas-eval family, for standalone networks only"),
    (dict(variants="original,nat"), "--variants"),
    (dict(seeds=0), "--seeds must be >= 1"),
    (dict(data="/nonexistent/cifar"), "no CIFAR-10 data at /nonexistent/cifar"),
])
def test_bad_settings_are_one_clear_line(tmp_path, capsys, overrides, message):
    args = ["experiment", "--out", str(tmp_path / "e")]
    for k, v in overrides.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "e").exists()


def test_checkpoints_must_cover_every_family(tmp_path):
    from natfast.config import SearchConfig, to_dict
    path = str(tmp_path / "darts.pt")
    ckpt.save({"format": ckpt.FORMAT, "config": to_dict(SearchConfig(family="darts"))}, path)
    with pytest.raises(ExperimentError, match="no search for enas-gcn"):
        Experiment(ExperimentConfig(**{**TINY, "inputs": "DARTS,ENAS", "checkpoints": path}), _quiet)
    with pytest.raises(ExperimentError, match="natpp"):
        Experiment(ExperimentConfig(**{**TINY, "transitions": "natpp", "checkpoints": path}), _quiet)
    with pytest.raises(ExperimentError, match="both a darts-gcn search"):
        Experiment(ExperimentConfig(**{**TINY, "checkpoints": f"{path},{path}"}), _quiet)
    Experiment(ExperimentConfig(**{**TINY, "checkpoints": path}), _quiet)


def test_an_existing_experiment_is_never_replaced_by_accident(tmp_path):
    cfg = ExperimentConfig(out=str(tmp_path / "e"), **TINY)
    State.start(cfg).save()
    kept = (tmp_path / "e" / "experiment.json").read_bytes()
    with pytest.raises(ExperimentError, match="--resume"):
        State.start(cfg)
    changed = ExperimentConfig(out=str(tmp_path / "e"), **{**TINY, "train_epochs": 3, "resume": True})
    with pytest.raises(ExperimentError, match=r"--train-epochs \(2 there, 3 now\)"):
        State.start(changed)
    assert (tmp_path / "e" / "experiment.json").read_bytes() == kept
    # How it runs may change on resume; more seeds only add runs.
    State.start(ExperimentConfig(out=str(tmp_path / "e"), **{**TINY, "seeds": 3, "workers": 2, "resume": True}))


def test_train_evaluates_every_k_epochs_and_after_the_last(tmp_path):
    cfg = TrainConfig(arch="DARTS", out=str(tmp_path / "t"), epochs=3, eval_every=2, channels=4, layers=3,
                      batch_size=32, train_limit=64, auxiliary_weight=0.0, progress=False)
    Trainer(cfg, log=_quiet).run()
    rows = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert ["test_acc" in r for r in rows] == [False, True, True]


def test_presets_are_valid_configs():
    for name, values in EXPERIMENT_PRESETS.items():
        ExperimentConfig(**values)


# ----------------------------------------------------------------------------- end to end
def _final_test_acc(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]["test_acc"]


def _check_results(out: Path, summary: dict) -> None:
    archs = json.loads((out / "architectures.json").read_text())["inputs"]
    assert [a["name"] for a in archs] == ["DARTS", "random0"]
    result = load_search(str(out / "search" / "darts-gcn" / "checkpoint.pt"))
    loader = validation_loader(result.config)
    for index, row in enumerate(archs):
        v = row["variants"]
        beta = load_arch(v["original"]["genotype"])[0]
        argmax = normalize(transform_argmax(result.policy, beta))
        # NAT's argmax, and best-of-K recomputed on the search's validation split with the same seed.
        assert load_arch(v["argmax"]["genotype"])[0] == argmax
        best = transform_best_of_k(result, beta, 3, index, loader, 2)
        assert load_arch(v["best-of-k"]["genotype"])[0] == normalize(best.best)
        assert v["best-of-k"]["validation_candidates"] == pytest.approx(best.scores)
        # The random baseline changes as many edges in each cell as the argmax, by allowed transitions.
        assert v["random"]["changed"] == v["argmax"]["changed"] == list(changed_edges(beta, argmax))
        assert is_valid_transformation(beta, load_arch(v["random"]["genotype"])[0], "nat", result.family.primitives)
        assert (out / "cells" / f"{row['name']}.png").read_bytes()[:4] == b"\x89PNG"
    # Every run trained its own architecture; the table reports each seed's final test accuracy.
    for inp in summary["inputs"]:
        for variant, d in inp["variants"].items():
            assert [s["seed"] for s in d["seeds"]] == [0, 1]
            for s in d["seeds"]:
                run_dir = out / "train" / f"{inp['name']}-{d['run']}" / f"seed{s['seed']}"
                assert s["test_acc"] == _final_test_acc(run_dir)
                saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)["config"]
                assert load_arch(saved["arch"])[0] == load_arch(d["genotype"])[0] and saved["seed"] == s["seed"]
            accs = [s["test_acc"] for s in d["seeds"]]
            assert d["test_acc"]["mean"] == pytest.approx(sum(accs) / 2)
    table = (out / "results.md").read_text()
    for name in ("DARTS", "random0"):
        for variant in ("original", "argmax", "best-of-k", "random"):
            assert f"| {name} | {variant}" in table
    for png in ("accuracy_vs_madds.png", "training_curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # The policy alone, exported for shipping, transforms as the search checkpoint does.
    shipped = load_policy(str(out / "policies" / "darts.pt"))
    darts = get_named("DARTS")[0]
    assert transform_argmax(shipped.policy, darts) == transform_argmax(result.policy, darts)


@pytest.mark.slow
def test_tiny_experiment_killed_twice_continues_where_it_stopped(tmp_path, monkeypatch):
    """The whole pipeline at a tiny scale, interrupted inside the search, then inside a training
    run: each part resumes from its own checkpoint, runs that finished are not trained again, and
    the results are what the architectures and runs say."""
    from natfast.search import Searcher
    out = tmp_path / "e"
    cfg = dict(out=str(out), **{**TINY, "search_epochs": 2})
    calls = Counter()

    def stop_at(name, count, real):
        def wrapped(self, *a):
            calls[name] += 1
            if calls[name] == count:
                raise KeyboardInterrupt
            return real(self, *a)
        return wrapped

    # Epoch 1 of the search ends at step 10 (checkpoint); stop at its third policy step.
    monkeypatch.setattr(Searcher, "update_theta", stop_at("theta", 9, Searcher.update_theta))
    with pytest.raises(KeyboardInterrupt):
        experiment(ExperimentConfig(**cfg), log=_quiet)
    monkeypatch.undo()
    assert not (out / "architectures.json").exists()

    # The second training run (seed 0's second architecture) stops in its second epoch.
    monkeypatch.setattr(Trainer, "train_epoch", stop_at("epoch", 4, Trainer.train_epoch))
    lines = []
    with pytest.raises(KeyboardInterrupt):
        experiment(ExperimentConfig(**{**cfg, "resume": True}), log=lines.append)
    monkeypatch.undo()
    assert any(line.startswith("resumed from") and "at step 10" in line for line in lines)
    assert torch.load(out / "search" / "darts-gcn" / "checkpoint.pt", weights_only=True)["position"]["step"] == 20
    state = json.loads((out / "experiment.json").read_text())
    assert [k for k, r in state["runs"].items() if r.get("done")] == ["DARTS-original/seed0"]
    (stopped,) = [k for k, r in state["runs"].items() if r.get("started") and not r.get("done")]
    first = (out / "train" / "DARTS-original" / "seed0" / "metrics.jsonl").read_bytes()

    lines = []
    summary = experiment(ExperimentConfig(**{**cfg, "resume": True}), log=lines.append)
    assert (out / "train" / "DARTS-original" / "seed0" / "metrics.jsonl").read_bytes() == first
    assert not any("DARTS-original/seed0" in line or line.startswith("== search") for line in lines)
    assert "resumed from" in (out / "train" / stopped / "train.log").read_text()
    records = (out / "train" / stopped / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [0, 1]
    assert json.loads((out / "experiment.json").read_text())["finished"] is True
    _check_results(out, summary)


@pytest.mark.slow
def test_one_search_per_family_and_policy_and_the_lstm_ablation(tmp_path):
    """DARTS and ENAS need a search each (their ops differ), here with the LSTM policy (the
    ablation; without the GCN variants no GCN search runs); each input is transformed by the policy
    of its family."""
    cfg = ExperimentConfig(out=str(tmp_path / "e"), **{**TINY, "inputs": "DARTS,ENAS", "variants": "original,lstm"})
    exp = Experiment(cfg, _quiet)
    state = State.start(cfg)
    checkpoints = exp.run_searches(state)
    assert sorted(checkpoints) == ["darts-lstm", "enas-lstm"]
    rows = {row["name"]: row for row in exp.derive_architectures(checkpoints)}
    for key, path in checkpoints.items():
        family, policy = key.split("-")
        result = load_search(path)
        assert (result.config.family, result.config.policy) == (family, policy)
        assert type(result.policy).__name__ == {"gcn": "GCNPolicy", "lstm": "LSTMPolicy"}[policy]
        name = {"darts": "DARTS", "enas": "ENAS"}[family]
        variant = rows[name]["variants"]["argmax" if policy == "gcn" else "lstm"]
        beta = get_named(name)[0]
        assert load_arch(variant["genotype"])[0] == normalize(transform_argmax(result.policy, beta))
        assert is_valid_transformation(beta, load_arch(variant["genotype"])[0], "nat", result.family.primitives)
        exported = tmp_path / "e" / "policies" / (f"{family}.pt" if policy == "gcn" else f"{key}.pt")
        assert load_policy(str(exported)).config.policy == policy


@pytest.mark.slow
def test_parallel_workers_give_the_same_results(tmp_path):
    """Two training workers (processes, one thread each) reproduce the runs of one process."""
    common = {**TINY, "inputs": "DARTS,random:1", "variants": "original", "seeds": 1}
    one = experiment(ExperimentConfig(out=str(tmp_path / "one"), threads=1, **common), log=_quiet)
    two = experiment(ExperimentConfig(out=str(tmp_path / "two"), workers=2, threads=2, **common), log=_quiet)
    accs = lambda s: [inp["variants"]["original"]["seeds"][0]["test_acc"] for inp in s["inputs"]]  # noqa: E731
    assert accs(one) == accs(two)
    state = json.loads((tmp_path / "two" / "experiment.json").read_text())
    assert len(state["runs"]) == 2 and all(r["done"] for r in state["runs"].values())


def test_estimate_times_every_stage_and_writes_nothing(tmp_path):
    out = tmp_path / "e"
    lines = []
    result = experiment(ExperimentConfig(out=str(out), estimate=True, **{**TINY, "inputs": "DARTS"}), log=lines.append)
    names = [s["stage"] for s in result["stages"]]
    assert names[:3] == ["search darts-gcn: update w", "search darts-gcn: update theta",
                         "best-of-3 scoring, darts (1 inputs)"]
    assert names[3].startswith("training DARTS: 8 runs")
    for s in result["stages"]:
        assert s["wall_per_call"] > 0 and s["cpu_per_call"] > 0 and s["now_s"] > 0
    # 1 epoch of 4 w steps and 6 theta steps; best-of-K on 2 batches; 4 variants x 2 seeds.
    assert [s["calls"] for s in result["stages"]] == [4, 6, 2, 8]
    assert result["total_now_s"] == pytest.approx(sum(s["now_s"] for s in result["stages"]))
    assert "total" in lines[-1]
    assert not out.exists()


def test_report_numbers_from_the_runs_metrics(tmp_path):
    """The table and comparisons from hand-written run metrics: paired by seed, a deduplicated
    variant sharing its twin's runs, unfinished runs left out, and a resumed run's repeated epoch
    counted once (its last record)."""
    from natfast.experiment_report import write_report
    cfg = ExperimentConfig(out=str(tmp_path), seeds=2, train_epochs=2, variants="original,argmax,best-of-k,random")
    acc = {("A", "original", 0): 0.50, ("A", "original", 1): 0.54, ("A", "argmax", 0): 0.53,
           ("A", "argmax", 1): 0.56, ("A", "random", 0): 0.47, ("B", "original", 0): 0.40}
    state = {"runs": {}, "seconds": {}, "wall_seconds": 60.0}
    for (name, variant, seed), a in acc.items():
        key = f"{name}-{variant}/seed{seed}"
        folder = tmp_path / "train" / key
        folder.mkdir(parents=True)
        records = [{"epoch": 0, "train_loss": 2.0, "test_acc": 0.1}, {"epoch": 1, "train_loss": 1.5, "test_acc": 0.0},
                   {"epoch": 1, "train_loss": 1.4, "test_acc": a}]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        state["runs"][key] = {"started": True, "done": True}
    state["runs"]["A-random/seed1"] = {"started": True}      # unfinished: left out
    costs = {"original": 200, "argmax": 150, "best-of-k": 150, "random": 100}
    rows = [{"name": name, "family": "darts", "variants": {
        v: {"genotype": "{}", "changed": [0, 0] if v == "original" else [2, 1], "params": costs[v],
            "madds": 10 * costs[v],
            "paper_params": 3e6, "paper_madds": 5e8, "run": "argmax" if v == "best-of-k" else v,
            **({"validation_input": 0.2, "validation_candidates": [0.1, 0.25]} if v == "best-of-k" else {}),
            **({"matches": "argmax"} if v == "random" else {})}
        for v in costs}} for name in ("A", "B")]
    summary = write_report(cfg, rows, state, {})
    a = summary["inputs"][0]["variants"]
    assert [s["test_acc"] for s in a["argmax"]["seeds"]] == [0.53, 0.56]
    assert [s["test_acc"] for s in a["best-of-k"]["seeds"]] == [0.53, 0.56]
    assert a["argmax"]["test_acc"]["mean"] == pytest.approx(0.545)
    assert a["argmax"]["test_acc"]["sd"] == pytest.approx(0.03 / 2 ** 0.5)
    assert [s["seed"] for s in a["random"]["seeds"]] == [0] and a["random"]["test_acc"]["sd"] is None
    c = summary["comparisons"]
    # A: argmax - original = mean(0.03, 0.02); B has no argmax run yet.
    assert c["argmax vs original"]["diff"]["mean"] == pytest.approx(0.025)
    assert c["argmax vs original"]["inputs"] == 1 and c["argmax vs original"]["better_on"] == 1
    assert c["argmax vs original"]["params_ratio"] == pytest.approx(0.75)
    assert c["random vs original"]["diff"]["mean"] == pytest.approx(-0.03)
    assert c["argmax vs random"]["diff"]["mean"] == pytest.approx(0.06)          # seed 0 only
    assert c["argmax vs random"]["params_ratio"] == pytest.approx(1.5)
    table = (tmp_path / "results.md").read_text()
    assert "| A | argmax | 2 + 1 | 54.50 ± 2.12 (53.00, 56.00) |" in table
    assert "| A | best-of-k (= argmax) |" in table
    assert "| A | random | 2 + 1 | 47.00 (47.00) |" in table
    assert "| B | argmax | 2 + 1 | pending |" in table
    assert "| argmax vs original | 1 | +2.50 | 1 | 0 | 0.750 | 0.750 |" in table
    assert "| A | 20.00 | 10.00, 25.00 | the best candidate (25.00) |" in table
    assert "as NAT's argmax" in table
    assert json.loads((tmp_path / "results.json").read_text())["comparisons"]["argmax vs random"]["inputs"] == 1
