"""Scoring many architectures at once on the graph engine (natfast/graph/scoring.py): each lane's
logits against the eager supernet's forward of its architecture, accuracies against
natfast.search.score_batch, chunks of more architectures than lanes, and the policy step and
derive run on it."""
import pytest
import torch

from graph_cases import random_genotype
from natfast.genotype import get_family
from natfast.graph.scoring import LaneScorer
from natfast.ops import dispatch
from natfast.search import score_batch
from natfast.supernet import Supernet

FAMILIES = {"darts": get_family("darts"), "darts++": get_family("darts++"), "enas": get_family("enas")}
# Relative to the largest logit: float32 sums in another order (per-lane BN statistics by
# var_mean, the cells' kernels).
LOGITS_TOLERANCE = 2e-5


def _case(family_name: str, archs: int, seed: int = 0):
    family = FAMILIES[family_name]
    torch.manual_seed(seed)
    net = Supernet(family, channels=8, layers=5)
    gen = torch.Generator().manual_seed(seed + 1)
    x, y = torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    genotypes = [random_genotype(100 * seed + i, family.primitives, family.num_nodes) for i in range(archs)]
    return net, x, y, genotypes


def _eager_logits(net, x, archs) -> torch.Tensor:
    with torch.no_grad(), dispatch.use_backend("reference"):
        return torch.stack([net(x, a) for a in archs])


def _check(backend: str, family_name: str, lanes: int, archs: int) -> None:
    net, x, y, genotypes = _case(family_name, archs)
    want = _eager_logits(net, x, genotypes)
    scorer = LaneScorer(net, lanes, backend=backend, capture=False)
    got = scorer.logits(x, genotypes[:lanes])
    err = ((got - want[:lanes]).abs().max() / want.abs().max()).item()
    assert err < LOGITS_TOLERANCE, f"{family_name}: logits relative error {err}"
    accs = scorer.accuracies(x, y, genotypes)   # more architectures than lanes: chunks, the last padded
    assert accs.shape == (archs,) and accs.device == x.device
    # Equal to the eager scores, except where an argmax is a near tie the rounding may flip.
    margin = want.topk(2, -1).values.diff(dim=-1).abs().squeeze(-1)      # (archs, N)
    flips = ((accs - (want.argmax(-1) == y).float().mean(-1)).abs() * len(y)).round()
    assert (flips <= (margin < 1e-4).sum(-1)).all(), (accs, want.argmax(-1), y)
    assert torch.allclose(accs, torch.tensor(score_batch(net, x, y, genotypes)), atol=1.0 / len(y))


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_reference_lanes_equal_the_eager_supernet(family_name):
    _check("reference", family_name, lanes=3, archs=5)


@pytest.mark.triton
@pytest.mark.slow
def test_triton_lanes_equal_the_eager_supernet():
    """The CPU contract for lanes: the Triton cells in the interpreter, every family's op set."""
    _check("triton", "darts", lanes=3, archs=5)
    _check("triton", "enas", lanes=2, archs=2)
    _check("triton", "darts++", lanes=2, archs=2)


def test_clear_errors():
    net, x, y, genotypes = _case("darts", 3)
    with pytest.raises(ValueError, match="lanes must be at least 1"):
        LaneScorer(net, 0, backend="reference")
    scorer = LaneScorer(net, 2, backend="reference")
    with pytest.raises(ValueError, match="this table has 2 lanes, got 3 architectures"):
        scorer.logits(x, genotypes)
    with pytest.raises(ValueError, match="no architectures to score"):
        scorer.accuracies(x, y, [])
    bad = genotypes[0]._replace(normal=[("conv_9x9", 0, 2)] + list(genotypes[0].normal[1:]))
    with pytest.raises(ValueError, match="conv_9x9"):
        scorer.accuracies(x, y, [bad])
    with pytest.raises(ValueError, match="reduction cell needs even feature maps"):
        scorer.accuracies(torch.randn(2, 3, 15, 15), y[:2], genotypes[:1])


@pytest.mark.triton
@pytest.mark.slow
def test_best_of_k_scores_on_the_graph_engine_as_eagerly(tmp_path):
    """`natfast transform --method best-of-k --engine graph`: the same candidates, scored on lanes,
    equal to the eager scores (a near tie may move one sample of the 16)."""
    from natfast.config import SearchConfig
    from natfast.derive import load_search, transform_best_of_k, validation_loader
    from natfast.sampler import sample_genotype
    from natfast.search import Searcher

    cfg = SearchConfig(out=str(tmp_path), epochs=1, batch_size=16, channels=4, layers=3, train_limit=128,
                       progress=False, hidden_size=16, embedding_size=8, checkpoint_every=0, engine="eager",
                       max_steps=3)
    Searcher(cfg, log=lambda _: None).run()
    result = load_search(str(tmp_path / "checkpoint.pt"), "cpu")
    beta = sample_genotype(result.family, torch.Generator().manual_seed(4))
    loader = validation_loader(result.config)
    graph = transform_best_of_k(result, beta, k=3, seed=1, loader=loader, max_batches=1, engine="graph")
    eager = transform_best_of_k(result, beta, k=3, seed=1, loader=loader, max_batches=1, engine="eager")
    assert graph.candidates == eager.candidates
    scores = torch.tensor([graph.beta_score] + graph.scores)
    assert torch.allclose(scores, torch.tensor([eager.beta_score] + eager.scores), atol=1.0 / 16 + 1e-6), (graph, eager)
