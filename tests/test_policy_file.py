"""A trained policy on its own: exported from a search checkpoint, loaded without the supernet,
and used by `natfast transform` when no --checkpoint is given."""
import os

import pytest
import torch

from natfast import checkpoint as ckpt
from natfast import policy_file
from natfast.cli import main
from natfast.config import SearchConfig
from natfast.derive import load_search, transform_argmax
from natfast.genotype import get_family, get_named, normalize, parse
from natfast.policy_file import export_policy, load_policy, load_shipped
from natfast.sampler import sample_genotype
from natfast.search import Searcher


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A tiny search (one epoch: 4 w steps, 6 policy steps) and its exported policy."""
    folder = tmp_path_factory.mktemp("search")
    cfg = SearchConfig(out=str(folder / "run"), epochs=1, batch_size=32, channels=4, layers=3, train_limit=320,
                       hidden_size=16, embedding_size=8, progress=False, checkpoint_every=0)
    Searcher(cfg, log=lambda _: None).run()
    path = str(folder / "run" / "checkpoint.pt")
    shipped = folder / "policies"
    description = export_policy(path, str(shipped / "darts.pt"), note="a test search")
    return path, shipped, description


def _inputs():
    gen = torch.Generator().manual_seed(3)
    darts = get_family("darts")
    return [get_named("DARTS")[0], get_named("NAT_DARTS")[0], get_named("VGG")[0]] + \
        [sample_genotype(darts, gen) for _ in range(5)]


def test_exported_policy_transforms_as_the_checkpoint(searched):
    path, shipped, description = searched
    full = load_search(path)
    alone = load_policy(str(shipped / "darts.pt"))
    for name, t in full.policy.state_dict().items():
        assert torch.equal(t, alone.policy.state_dict()[name]), name
    for beta in _inputs():
        assert transform_argmax(alone.policy, beta) == transform_argmax(full.policy, beta)
    # Small: the policy alone, not the supernet.
    assert os.path.getsize(shipped / "darts.pt") < os.path.getsize(path) / 5
    assert "searched 1 epochs (10 steps) on the embedded CIFAR-10 sample (first 320 training images)" in description
    assert description.endswith("a test search") and alone.description == description
    # A search checkpoint loads the same way, its policy only.
    from_ckpt = load_policy(path)
    assert transform_argmax(from_ckpt.policy, _inputs()[0]) == transform_argmax(full.policy, _inputs()[0])


def test_transform_without_checkpoint_uses_the_shipped_policy(searched, monkeypatch, tmp_path, capsys):
    path, shipped, description = searched
    monkeypatch.setattr(policy_file, "POLICY_DIR", shipped)
    monkeypatch.chdir(tmp_path)
    assert main(["transform", "--arch", "DARTS"]) == 0
    out = capsys.readouterr().out
    assert f"policy shipped with natfast ({shipped / 'darts.pt'}): {description}" in out
    lines = [line for line in out.splitlines() if line.startswith("Genotype(")]
    darts = get_named("DARTS")[0]
    assert parse(lines[0]) == darts
    assert parse(lines[-1]) == normalize(transform_argmax(load_search(path).policy, darts))
    assert (tmp_path / "runs" / "transform" / "transformed.json").exists()
    # --checkpoint with the policy file gives the same.
    assert main(["transform", "--arch", "DARTS", "--checkpoint", str(shipped / "darts.pt"),
                 "--out", str(tmp_path / "t.json")]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("Genotype(")][-1] == lines[-1]


@pytest.mark.parametrize("args,message", [
    (["--arch", "ENAS"], "ships no trained policy for the enas family"),
    (["--arch", "NAONet"], "the enas-eval family is for standalone networks only"),
    (["--arch", "DARTS", "--method", "best-of-k"], "pass --checkpoint with a search checkpoint"),
    (["--arch", "ENAS", "--checkpoint", "{shipped}/darts.pt"], "policy searched on darts"),
    (["--arch", "DARTS", "--checkpoint", "{shipped}/darts.pt", "--method", "best-of-k"],
     "format 'natfast-policy-v1', expected 'natfast-search-v1'"),
    (["--arch", "DARTS", "--checkpoint", "{tmp}/corrupt.pt"], "is corrupt"),
])
def test_clear_errors(searched, monkeypatch, tmp_path, capsys, args, message):
    _, shipped, _ = searched
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    monkeypatch.setattr(policy_file, "POLICY_DIR", shipped)
    args = [a.format(shipped=shipped, tmp=tmp_path) for a in args]
    assert main(["transform", *args, "--out", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_load_shipped_refuses_a_file_of_another_family(searched, tmp_path):
    _, shipped, _ = searched
    (tmp_path / "enas.pt").write_bytes((shipped / "darts.pt").read_bytes())
    with pytest.raises(ckpt.CheckpointError, match="holds a policy for the darts family, not enas"):
        load_shipped(get_family("enas"), folder=tmp_path)


def test_a_nat_plus_plus_transformation_is_saved_in_the_searched_family(monkeypatch, tmp_path, capsys):
    """NAT++ widens the input's op set (enas -> enas++): the saved genotype names the searched
    family, so `natfast train --arch` reads back whatever ops the policy chose."""
    from natfast.config import to_dict
    from natfast.genotype import load_arch
    from natfast.search import policy_of_config, search_family
    cfg = SearchConfig(family="enas", transitions="natpp", hidden_size=16, embedding_size=8)
    family = search_family(cfg)
    torch.manual_seed(0)
    ckpt.save({"format": policy_file.POLICY_FORMAT, "config": to_dict(cfg), "family": family.name,
               "primitives": list(family.primitives), "policy": policy_of_config(cfg, family).state_dict(),
               "description": "untrained"}, str(tmp_path / "enas.pt"))
    out = tmp_path / "t.json"
    assert main(["transform", "--arch", "ENAS", "--checkpoint", str(tmp_path / "enas.pt"), "--out", str(out)]) == 0
    alpha, saved_family = load_arch(str(out))
    assert saved_family.name == family.name == "enas++"
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Genotype(")]
    assert normalize(parse(lines[-1])) == normalize(alpha)


def test_the_policy_shipped_for_darts_loads_and_transforms(monkeypatch, tmp_path, capsys):
    """The package's own darts.pt (natfast/assets/policies/): small, says how it was trained, and
    `natfast transform --arch DARTS` runs with it and no search first."""
    shipped = policy_file.shipped_policy_path(get_family("darts"))
    assert shipped.is_file(), f"natfast ships {shipped}"
    assert shipped.stat().st_size < 200_000
    loaded = load_shipped(get_family("darts"))
    assert "searched 16 epochs" in loaded.description and "CIFAR-10" in loaded.description
    monkeypatch.chdir(tmp_path)
    assert main(["transform", "--arch", "DARTS"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Genotype(")]
    assert normalize(parse(lines[-1])) == normalize(transform_argmax(loaded.policy, get_named("DARTS")[0]))
