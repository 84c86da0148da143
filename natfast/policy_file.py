"""A trained policy on its own: exported from a search checkpoint (the policy's weights and the
search config that built it, under 100 kB with the default sizes, not the supernet's megabytes), loaded for
`natfast transform` without the supernet, and shipped with natfast in `natfast/assets/policies/`
(`<family>.pt`, e.g. `darts.pt`), where `natfast transform` finds it when no --checkpoint is given.

A policy alone transforms by argmax; best-of-K needs the supernet to score the candidates, so it
needs the search checkpoint."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from . import checkpoint as ckpt
from .config import SearchConfig, from_saved, to_dict
from .genotype import Family
from .policy import BasePolicy

POLICY_FORMAT = "natfast-policy-v1"
POLICY_DIR = Path(__file__).resolve().parent / "assets" / "policies"


@dataclass
class PolicyFile:
    """A policy ready to transform, and where it came from."""
    policy: BasePolicy
    family: Family
    config: SearchConfig
    description: str         # how it was trained, one line
    path: str


def describe_training(cfg: SearchConfig, steps: int, baseline: float, note: str = "") -> str:
    data = cfg.data or "the embedded CIFAR-10 sample"
    if cfg.train_limit:
        data += f" (first {cfg.train_limit} training images)"
    text = (f"{cfg.policy} policy, {cfg.transitions} transitions, family {cfg.family}: searched "
            f"{cfg.epochs} epochs ({steps} steps) on {data}, supernet C = {cfg.channels}, "
            f"{cfg.layers} cells, batch {cfg.batch_size}, seed {cfg.seed}; final reward baseline "
            f"{baseline:+.4f}")
    return f"{text}; {note}" if note else text


def export_policy(checkpoint: str, out: str, note: str = "") -> str:
    """Write the policy of a search checkpoint, with its config and a line saying how it was
    trained (plus `note`, e.g. the experiment it came from), to `out`. Returns that line."""
    state = ckpt.load(checkpoint)
    cfg = from_saved(SearchConfig, state["config"])
    description = describe_training(cfg, int(state["position"]["step"]), float(state["baseline"]), note)
    ckpt.save({"format": POLICY_FORMAT, "config": to_dict(cfg), "family": state["family"],
               "primitives": list(state["primitives"]), "policy": state["policy"],
               "description": description}, out)
    return description


def build_policy(cfg: SearchConfig) -> tuple:
    """The (untrained) policy a search with this config builds, and its family."""
    from .search import policy_of_config, search_family
    family = search_family(cfg)
    return family, policy_of_config(cfg, family)


def load_policy(path: str, device: str = "cpu") -> PolicyFile:
    """The policy of a policy file or of a search checkpoint (whose supernet is left unread)."""
    state = _load_either(path)
    cfg = from_saved(SearchConfig, state["config"])
    family, policy = build_policy(cfg)
    try:
        policy.load_state_dict(state["policy"])
    except (RuntimeError, KeyError) as exc:
        raise ckpt.CheckpointError(f"{path}: the policy does not match its own config: "
                                   f"{str(exc).splitlines()[0]}") from None
    if state["format"] == POLICY_FORMAT:
        description = str(state.get("description", ""))
    else:
        description = describe_training(cfg, int(state["position"]["step"]), float(state["baseline"]))
    from .search import pick_device
    return PolicyFile(policy.to(pick_device(device)).eval(), family, cfg, description, str(path))


def _load_either(path: str) -> Dict[str, Any]:
    try:
        return ckpt.load(path, POLICY_FORMAT)
    except ckpt.CheckpointError as exc:
        if "expected kind" not in str(exc):
            raise
    try:
        return ckpt.load(path, ckpt.FORMAT)
    except ckpt.CheckpointError:
        raise ckpt.CheckpointError(f"{path} is neither a natfast policy file ({POLICY_FORMAT!r}) nor a "
                                   f"search checkpoint ({ckpt.FORMAT!r})") from None


def shipped_policy_path(family: Family, folder: Optional[Path] = None) -> Path:
    return Path(folder or POLICY_DIR) / f"{family.name}.pt"


def load_shipped(family: Family, device: str = "cpu", folder: Optional[Path] = None) -> PolicyFile:
    """The policy natfast ships for this family, or a CheckpointError saying there is none."""
    if not family.searchable:
        raise ckpt.CheckpointError(f"the {family.name} family is for standalone networks only: no search (and so "
                                   f"no policy) covers its ops; NAT transforms darts- and enas-family cells")
    path = shipped_policy_path(family, folder)
    if not path.is_file():
        shipped = sorted(p.stem for p in Path(folder or POLICY_DIR).glob("*.pt"))
        raise ckpt.CheckpointError(
            f"no --checkpoint given, and natfast ships no trained policy for the {family.name} family "
            f"(looked for {path}; shipped: {', '.join(shipped) or 'none'}): run `natfast search` (or "
            f"`natfast experiment`) and pass --checkpoint OUT/checkpoint.pt")
    loaded = load_policy(str(path), device)
    if loaded.family.name != family.name:
        raise ckpt.CheckpointError(f"{path} holds a policy for the {loaded.family.name} family, "
                                   f"not {family.name}")
    return loaded
