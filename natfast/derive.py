"""Deriving transformed architectures with a trained policy (spec section 6): the argmax
transformation, or K sampled ones scored with the shared weights on the validation split."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from . import checkpoint as ckpt
from .config import SearchConfig, from_saved
from .data import BatchLoader, load_cifar10
from .genotype import Family, Genotype, GenotypeError, validate
from .policy import BasePolicy
from .search import build_models, pick_device, score_batch, search_data, search_loaders
from .supernet import Supernet
from .transitions import check_transformation


@dataclass
class SearchResult:
    """A trained supernet and policy, loaded from a search checkpoint."""
    config: SearchConfig
    family: Family
    supernet: Supernet
    policy: BasePolicy


def load_search(path: str, device: str = "auto") -> SearchResult:
    state = ckpt.load(path)
    cfg = from_saved(SearchConfig, state["config"])
    family, supernet, policy = build_models(cfg, pick_device(device))
    try:
        supernet.load_state_dict(state["supernet"])
        policy.load_state_dict(state["policy"])
    except (RuntimeError, KeyError) as exc:
        raise ckpt.CheckpointError(f"checkpoint {path} does not match its own config: {str(exc).splitlines()[0]}") from None
    return SearchResult(cfg, family, supernet.eval(), policy.eval())


def check_input(beta: Genotype, family: Family) -> Genotype:
    """The input architecture must live in the searched space (same topology family and ops)."""
    try:
        return validate(beta, family)
    except GenotypeError as exc:
        raise GenotypeError(f"this architecture cannot be transformed by a policy searched on "
                            f"{family.name}: {exc}") from None


def transform_argmax(policy: BasePolicy, beta: Genotype) -> Genotype:
    with torch.no_grad():
        tr = policy.argmax([beta.normal, beta.reduce])
    alpha = policy.to_genotype(beta, tr.targets)
    check_transformation(beta, alpha, policy.rule, policy.primitives)
    return alpha


SCORE_DATA = ("validation", "validation-augmented", "test", "authors")


def validation_loader(cfg: SearchConfig, data: Optional[str] = None, augment: bool = False) -> BatchLoader:
    """The search's validation split (the images that trained the policy), in order; `augment`:
    with a seeded random crop + flip."""
    if data is not None:
        cfg = from_saved(SearchConfig, {**vars(cfg), "data": data})
    _, theta_loader = search_loaders(cfg, search_data(cfg))
    return BatchLoader(theta_loader.dataset, theta_loader.indices, cfg.batch_size, shuffle=False,
                       augment=augment, drop_last=False, seed=cfg.seed)


def scoring_loader(cfg: SearchConfig, which: str = "validation", data: Optional[str] = None) -> BatchLoader:
    """The images best-of-k scores on: "validation" (natfast: the validation split, unaugmented),
    "validation-augmented" (the authors' NAT derive.py: that split with crop + flip), "test" (the
    authors' NAT++ derive.py: the CIFAR-10 test set), or "authors" (whichever of the two the
    checkpoint's transition rule calls for)."""
    if which not in SCORE_DATA:
        raise ValueError(f"score data must be one of {', '.join(SCORE_DATA)}, got {which!r}")
    if which == "authors":
        which = "test" if cfg.transitions == "natpp" else "validation-augmented"
    if which == "test":
        return BatchLoader(load_cifar10(data if data is not None else cfg.data, "test"), None, cfg.batch_size,
                           shuffle=False, drop_last=False)
    return validation_loader(cfg, data, augment=which == "validation-augmented")


def score_architectures(supernet: Supernet, archs: List[Genotype], loader: BatchLoader,
                        max_batches: int = 0, engine: str = "eager") -> List[float]:
    """Validation accuracy of each architecture with the shared weights, all scored in one
    batched pass per batch: eager (prefix-shared, natfast/engine.py) or, with `engine` graph (or
    auto where the graph engine is chosen: natfast/graph/engine.py), one lane per architecture on
    the graph engine's kernels, accumulated on the device and read back once."""
    from .graph import engine as graph
    from .graph.scoring import MAX_LANES, LaneScorer
    device = supernet.classifier.weight.device
    scorer = LaneScorer(supernet, min(len(archs), MAX_LANES)) if graph.chosen(engine, device, supernet) else None
    correct, total = torch.zeros(len(archs), device=device if scorer else "cpu"), 0
    for i, (x, y) in enumerate(loader.epoch(0)):
        if max_batches and i >= max_batches:
            break
        x, y = x.to(device), y.to(device)
        accs = scorer.accuracies(x, y, archs) if scorer else torch.tensor(score_batch(supernet, x, y, archs))
        correct += accs * len(y)
        total += len(y)
    return (correct / max(total, 1)).tolist()


@dataclass
class BestOfK:
    best: Genotype
    candidates: List[Genotype]
    scores: List[float]              # candidates' validation accuracies
    beta_score: float


def transform_best_of_k(result: SearchResult, beta: Genotype, k: int = 10, seed: int = 0,
                        loader: Optional[BatchLoader] = None, max_batches: int = 0, keep_input: bool = True,
                        engine: Optional[str] = None) -> BestOfK:
    """Sample K transformations of beta, score them and beta on the validation split (or `loader`),
    keep the best: beta itself if nothing beats it (`keep_input`), or else the best sample whatever
    beta scores (the authors' derive; on ties the first sampled). `engine` (auto, graph, eager;
    default: the search's) scores on the graph engine's lanes or eagerly (score_architectures)."""
    if k < 1:
        raise ValueError(f"best-of-k needs k >= 1 candidates, got {k}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        samples = result.policy.sample([beta.normal, beta.reduce], gen, k)
    candidates = [result.policy.to_genotype(beta, s.targets) for s in samples]
    loader = loader or validation_loader(result.config)
    scores = score_architectures(result.supernet, [beta] + candidates, loader, max_batches,
                                 engine or getattr(result.config, "engine", "auto"))
    beta_score, cand_scores = scores[0], scores[1:]
    best_i = max(range(k), key=lambda i: cand_scores[i])
    best = candidates[best_i] if cand_scores[best_i] > beta_score or not keep_input else beta
    return BestOfK(best, candidates, cand_scores, beta_score)
