"""`--preset authors` and each of its flags: search (NAT and NAT++), derive, and the progress
snapshots of a search."""
import json
import re
from pathlib import Path

import pytest
import torch

from natfast import checkpoint as ckpt
from natfast.authors import TRANSFORM_PRESET, search_preset
from natfast.cli import build_parser, main
from natfast.config import SearchConfig, TransformConfig, from_arguments
from natfast.data import BatchLoader
from natfast.derive import load_search, scoring_loader, transform_argmax, transform_best_of_k
from natfast.genotype import format_genotype, get_named, normalize, parse
from natfast.policy import GCNPolicy
from natfast.search import Searcher

SMALL = dict(epochs=1, batch_size=32, channels=4, layers=3, train_limit=160, progress=False,
             hidden_size=16, embedding_size=8, checkpoint_every=0)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "authors.md"


def _searcher(tmp_path, name="run", **kw):
    return Searcher(SearchConfig(out=str(tmp_path / name), **{**SMALL, **kw}), log=lambda _: None)


# ----------------------------------------------------------------------------- the preset
def test_authors_preset_for_nat_and_natpp():
    nat, natpp = search_preset("nat"), search_preset("natpp")
    assert nat["policy_head"] == "relative" and natpp["policy_head"] == "masked"
    assert (nat["epochs"], natpp["epochs"]) == (100, 200) and (nat["show_every"], natpp["show_every"]) == (10, 4)
    for preset in (nat, natpp):
        assert preset["grad_clip"] == 0 and preset["augment_theta"] and preset["prob_epsilon"] == 1e-5
        assert (preset["embedding_size"], preset["feature_size"], preset["hidden_size"]) == (100, 1024, 100)
        assert preset["adjacency"] == "raw" and preset["baseline_update"] == "advantage"
        SearchConfig(**preset)          # every value is a valid setting


def test_cli_preset_follows_the_rule_and_flags_override_it():
    parser = build_parser()

    def config(*argv):
        from natfast.config import search_preset as preset
        args = parser.parse_args(["search", *argv])
        return from_arguments(SearchConfig, args, preset(args.preset, args.transitions))

    nat = config("--preset", "authors")
    assert nat.policy_head == "relative" and nat.epochs == 100 and nat.grad_clip == 0 and nat.transitions == "nat"
    natpp = config("--preset", "authors", "--transitions", "natpp")
    assert natpp.policy_head == "masked" and natpp.epochs == 200
    assert config("--preset", "authors", "--epochs", "3", "--grad-clip", "5").epochs == 3
    args = parser.parse_args(["transform", "--preset", "authors"])
    cfg = from_arguments(TransformConfig, args, dict(TRANSFORM_PRESET))
    assert (cfg.method, cfg.candidates, cfg.keep_input, cfg.score_data) == ("best-of-k", 10, False, "authors")


def test_every_preset_setting_is_in_the_docs_table():
    text = DOCS.read_text()
    flags = {flag for span in re.findall(r"`([^`]*)`", text) for flag in re.findall(r"--[a-z][a-z-]*", span)}
    for key in list(search_preset("nat")) + list(TRANSFORM_PRESET):
        flag = "--" + key.replace("_", "-")
        assert flag in flags or f"--no-{key.replace('_', '-')}" in flags, flag


def test_bad_choices_are_clear_errors(capsys):
    assert main(["search", "--policy-head", "relative", "--transitions", "natpp", "--epochs", "1",
                 "--train-limit", "64", "--out", "/nonexistent/x"]) == 2
    assert "relative head chooses among" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--baseline-update must be one of reward, advantage"):
        SearchConfig(baseline_update="mean")


def test_evaluation_only_families_cannot_be_searched(tmp_path):
    with pytest.raises(ValueError, match="family darts-eval is for standalone networks only"):
        _searcher(tmp_path, family="darts-eval")


# ----------------------------------------------------------------------------- each flag
def test_authors_policy_sizes_and_head_in_a_search(tmp_path):
    s = _searcher(tmp_path, policy_head="relative", feature_size=32, policy_init="pygcn", prob_epsilon=1e-5)
    assert isinstance(s.policy, GCNPolicy) and s.policy.head_kind == "relative" and s.policy.w1.shape == (32, 16)
    assert s.policy.head.out_features == 6 and s.policy.prob_epsilon == 1e-5
    record = s.update_theta(*next(s.theta_loader.epoch(0)), torch.Generator().manual_seed(0))
    assert all(torch.isfinite(p.grad).all() for p in s.policy.parameters())
    assert record["entropy"] > 0


def test_augmented_policy_batches(tmp_path):
    plain, augmented = _searcher(tmp_path, "a"), _searcher(tmp_path, "b", augment_theta=True)
    (xa, ya), (xb, yb) = next(plain.theta_loader.epoch(0)), next(augmented.theta_loader.epoch(0))
    assert torch.equal(ya, yb) and not torch.equal(xa, xb)      # same images, cropped and flipped
    assert augmented.theta_loader.augment and not plain.theta_loader.augment


def test_grad_clip_zero_leaves_the_supernet_gradient_alone(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(a))
    s = _searcher(tmp_path, grad_clip=0.0)
    s.update_w(*next(s.w_loader.epoch(0)), torch.Generator().manual_seed(0))
    assert calls == []
    s = _searcher(tmp_path, "clipped")
    s.update_w(*next(s.w_loader.epoch(0)), torch.Generator().manual_seed(0))
    assert len(calls) == 1


def test_baseline_tracks_the_advantage_as_the_authors_code_does(tmp_path):
    """nat_learner.py: baseline <- gamma * baseline + (1 - gamma) * (R - baseline)."""
    s = _searcher(tmp_path, baseline_update="advantage", baseline_decay=0.9)
    rewards = []
    for i, (x, y) in enumerate(s.theta_loader.epoch(0)):
        before = s.baseline
        rewards.append(s.update_theta(x, y, torch.Generator().manual_seed(i))["reward"])
        assert s.baseline == pytest.approx(0.9 * before + 0.1 * (rewards[-1] - before), abs=1e-12)
    assert any(r != 0 for r in rewards)


def test_old_checkpoints_resume_with_the_new_settings_at_their_defaults(tmp_path):
    s = _searcher(tmp_path, max_steps=1)
    s.run()
    path = Path(s.cfg.out, "checkpoint.pt")
    state = torch.load(path, weights_only=True)
    for key in ("policy_head", "feature_size", "augment_theta", "policy_init", "prob_epsilon", "baseline_update",
                "show_every", "show_archs", "show_method", "show_batches"):
        del state["config"][key]
    ckpt.save(state, str(path))
    resumed = _searcher(tmp_path, max_steps=2, resume=True)
    resumed.run()
    assert resumed.position.step == 2
    with pytest.raises(ckpt.CheckpointError, match="policy_head"):
        _searcher(tmp_path, max_steps=3, resume=True, policy_head="relative").run()


# ----------------------------------------------------------------------------- derive
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    s = Searcher(SearchConfig(out=str(out), **SMALL), log=lambda _: None)
    s.run()
    return load_search(str(out / "checkpoint.pt"), "cpu")


def test_best_of_k_the_authors_way_returns_the_best_sample(trained):
    darts, _ = get_named("DARTS")
    loader = scoring_loader(trained.config, "validation")
    kept = transform_best_of_k(trained, darts, k=4, seed=3, loader=loader, max_batches=1)
    best = transform_best_of_k(trained, darts, k=4, seed=3, loader=loader, max_batches=1, keep_input=False)
    assert best.scores == kept.scores and best.candidates == kept.candidates
    top = max(range(4), key=lambda i: best.scores[i])
    assert best.best == best.candidates[top]
    assert kept.best == (best.best if best.scores[top] > kept.beta_score else darts)


def test_scoring_data(trained):
    validation = scoring_loader(trained.config, "validation")
    augmented = scoring_loader(trained.config, "validation-augmented")
    assert len(validation) == len(augmented) and augmented.augment and not validation.augment
    (xv, yv), (xa, ya) = next(validation.epoch(0)), next(augmented.epoch(0))
    assert torch.equal(yv, ya) and not torch.equal(xv, xa)
    test = scoring_loader(trained.config, "test")
    assert len(test.dataset) == 500 and "test" in test.dataset.source      # the embedded sample's test set
    assert scoring_loader(trained.config, "authors").augment                # NAT: the augmented split
    natpp = trained.config.__class__(**{**vars(trained.config), "transitions": "natpp"})
    assert "test" in scoring_loader(natpp, "authors").dataset.source        # NAT++: the test set
    with pytest.raises(ValueError, match="score data must be one of"):
        scoring_loader(trained.config, "train")


def test_transform_cli_with_the_authors_preset(trained, tmp_path, capsys):
    out = tmp_path / "t.txt"
    assert main(["transform", "--preset", "authors", "--checkpoint", str(Path(trained.config.out, "checkpoint.pt")),
                 "--arch", "ResBlock", "--eval-batches", "1", "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "best-of-10" in text and "MAdds 548.4M" in text     # ResBlock, MAdds as the authors count them
    alpha = parse(out.read_text())
    assert format_genotype(alpha) == text.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- progress snapshots
@pytest.mark.parametrize("method", ["argmax", pytest.param("best-of-k", marks=pytest.mark.slow)])
def test_search_shows_its_transformations_every_k_epochs(tmp_path, method):
    s = _searcher(tmp_path, epochs=2, show_every=1, show_archs="DARTS,VGG", show_method=method, show_batches=1)
    s.run()
    rows = [json.loads(line) for line in Path(s.cfg.out, "metrics.jsonl").read_text().splitlines()]
    shows = [r for r in rows if r.get("event") == "transform"]
    assert [(r["epoch"], r["arch"]) for r in shows] == [(0, "DARTS"), (0, "VGG"), (1, "DARTS"), (1, "VGG")]
    for r in shows:
        assert Path(r["png"]).stat().st_size > 10_000 and r["method"] == method
        assert parse(r["input"]) == get_named(r["arch"])[0]
    if method == "argmax":   # the last show is the final policy's argmax
        assert parse(shows[-1]["transformed"]) == normalize(transform_argmax(s.policy, get_named("VGG")[0]))
    steps = [r for r in rows if "phase" in r]
    assert shows[0]["step"] == max(r["step"] for r in steps if r["epoch"] == 0) + 1


def test_show_archs_must_fit_the_searched_family(tmp_path):
    with pytest.raises(Exception, match="--show-archs ENAS: a policy searched on darts cannot transform it"):
        _searcher(tmp_path, show_every=1, show_archs="ENAS")
    s = _searcher(tmp_path, show_every=2, family="enas")
    assert [name for name, _ in s.snapshots.archs] == ["ENAS"]
