"""One dataclass per command. The CLI flags are generated from these fields (with their help
text), so flags and Python API never drift apart; every run prints its config and stores it in
its checkpoint."""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple


def opt(default, help: str, **kw):
    """A field with its help text; `low` / `high` (inclusive) or `below` (exclusive) bound a number."""
    return field(default=default, metadata={"help": help, **kw})


def from_saved(cls, values: Dict[str, Any]):
    """The config stored in a checkpoint, as it was: fields it lacks take their defaults, and the
    ranges are not checked (a checkpoint written before a bound existed must still load)."""
    cfg = cls.__new__(cls)
    for f in dataclasses.fields(cls):
        value = values.get(f.name, f.default)
        object.__setattr__(cfg, f.name, tuple(value) if isinstance(value, list) else value)
    return cfg


def check_ranges(cfg) -> None:
    """Every bounded field within its bounds, or a ValueError naming its flag (out of range, such a
    value would fail deep inside torch, or silently do nothing); `choices` lists a field's values."""
    for f in dataclasses.fields(cfg):
        value, meta = getattr(cfg, f.name), f.metadata
        flag = "--" + f.name.replace("_", "-")
        if "choices" in meta and value not in meta["choices"]:
            raise ValueError(f"{flag} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
        if "low" in meta and value < meta["low"]:
            raise ValueError(f"{flag} must be >= {meta['low']}, got {value}")
        if "high" in meta and value > meta["high"]:
            raise ValueError(f"{flag} must be <= {meta['high']}, got {value}")
        if "below" in meta and value >= meta["below"]:
            raise ValueError(f"{flag} must be < {meta['below']}, got {value}")


@dataclass
class SearchConfig:
    """NAT search: alternate supernet (w) and policy (theta) updates (spec section 5)."""
    out: str = opt("runs/search", "output folder (checkpoint.pt, metrics.jsonl, config.json)")
    data: Optional[str] = opt(None, "CIFAR-10 folder (cifar-10-batches-py or its parent); default: the embedded sample")
    download: bool = opt(False, "download CIFAR-10 into --data with torchvision if it is missing (needs internet)")
    family: str = opt("darts", "cell family: darts (fully-concat) or enas (loose-end)")
    transitions: str = opt("nat", "transition rule: nat ({same, skip, null}) or natpp (NAT++ 13-op space)")
    epochs: int = opt(100, "epochs E (each: one pass for w, one pass for theta)", low=1)
    batch_size: int = opt(64, "batch size for both updates", low=1)
    channels: int = opt(20, "supernet initial channels C", low=1)
    layers: int = opt(8, "supernet cells L (reductions at L/3 and 2L/3)", low=1)
    w_fraction: float = opt(0.4, "fraction of the training set used for w (the rest updates theta)", low=0, high=1)
    w_lr: float = opt(0.01, "SGD learning rate for w", low=0)
    w_lr_min: float = opt(0.01, "cosine schedule floor for w (equal to w_lr: constant)", low=0)
    w_momentum: float = opt(0.9, "SGD momentum for w", low=0)
    w_weight_decay: float = opt(3e-4, "weight decay for w", low=0)
    grad_clip: float = opt(5.0, "gradient-norm clip for w (0: off)", low=0)
    policy: str = opt("gcn", "policy: gcn, lstm (ablation) or random (ablation, not trained)")
    adjacency: str = opt("normalized", "GCN adjacency: normalized (with self-loops) or raw (the authors')")
    policy_head: str = opt("masked", "policy head: masked (a logit per target op, forbidden ones masked) or relative "
                                     "(the authors' NAT head: three logits {null, same, skip}; NAT rule only)",
                           choices=("masked", "relative"))
    feature_size: int = opt(0, "GCN input size F: every node (input nodes too) projected to F, then the GCN maps "
                               "F -> H -> H (the authors: 1024); 0: nodes projected to the hidden size", low=0)
    policy_init: str = opt("xavier", "GCN init: xavier, or pygcn (the authors': U(+-1/sqrt(out)) weights and biases, "
                                     "input-node embeddings N(0, 1))", choices=("xavier", "pygcn"))
    prob_epsilon: float = opt(0.0, "added to the policy's probabilities before the log and the entropy (the authors: "
                                   "1e-5)", low=0)
    hidden_size: int = opt(64, "policy hidden size", low=1)
    embedding_size: int = opt(64, "policy op-embedding size", low=1)
    policy_lr: float = opt(3e-4, "Adam learning rate for theta", low=0)
    policy_betas: Tuple[float, float] = opt((0.5, 0.999), "Adam betas for theta")
    policy_weight_decay: float = opt(5e-4, "Adam weight decay for theta", low=0)
    entropy_weight: float = opt(0.003, "entropy bonus lambda")
    baseline_decay: float = opt(0.99, "EMA decay gamma of the reward baseline", low=0, high=1)
    baseline_update: str = opt("reward", "the baseline is an EMA of: reward (R, the spec) or advantage (R - b, as "
                                         "the authors' code updates it)", choices=("reward", "advantage"))
    num_inputs: int = opt(1, "m: input architectures per policy step", low=1)
    num_samples: int = opt(1, "n: transformations sampled per input architecture", low=1)
    augment: bool = opt(True, "random crop + flip on the w batches")
    augment_theta: bool = opt(False, "random crop + flip on the policy (theta) batches too (the authors')")
    executor: bool = opt(False, "run update_w's sampled path through the compiled C++ executor "
                                "(no per-op Python dispatch; natfast's C++ kernels on a CPU, ATen's on a "
                                "GPU) when the extension has it")
    engine: str = opt("auto", "update_w and policy-step scoring engine: graph (one launch sequence for every "
                              "architecture, captured as "
                              "one CUDA graph on a GPU; natfast/graph/), eager (per-op), auto "
                              "(eager until the graph engine has passed the GPU check)",
                      choices=("auto", "graph", "eager"))
    train_limit: int = opt(0, "use at most this many training images (0: all)", low=0)
    seed: int = opt(0, "seed of every random choice (data order, augmentation, architectures, init)")
    device: str = opt("auto", "cpu, cuda or auto")
    threads: int = opt(0, "CPU threads (0: torch's default)", low=0)
    dist_timeout: float = opt(600.0, "under torchrun: seconds a process waits for the others in a collective "
                                     "before it stops with an error", low=1)
    checkpoint_every: int = opt(100, "save a checkpoint every this many steps (and at each epoch end)", low=0)
    max_steps: int = opt(0, "stop after this many steps in total (0: run all epochs); resume continues", low=0)
    resume: bool = opt(False, "continue from OUT/checkpoint.pt if it exists")
    overwrite: bool = opt(False, "start afresh although OUT/checkpoint.pt exists (without this, or --resume, "
                                 "such a run stops before writing anything)")
    progress: bool = opt(True, "show a progress bar")
    show_every: int = opt(0, "every this many epochs, transform --show-archs with the current policy: logged to "
                             "metrics.jsonl, drawn to OUT/transforms/ (0: never)", low=0)
    show_archs: str = opt("", "comma-separated named architectures or genotype files to show; default: those of "
                              "DARTS, ENAS, ResBlock, VGG, Mobilenetv2 in the searched family")
    show_method: str = opt("argmax", "argmax, or best-of-k (K = 10 sampled, the best on the validation split, as "
                                     "the authors show it)", choices=("argmax", "best-of-k"))
    show_batches: int = opt(10, "validation batches scoring a best-of-k show (0: the whole split)", low=0)

    def __post_init__(self):
        check_ranges(self)


PRESETS: Dict[str, Dict[str, Any]] = {
    # Finishes in well under 3 minutes on a 2-core CPU with the embedded sample.
    "tiny": dict(epochs=2, batch_size=32, channels=8, layers=5, checkpoint_every=50),
    "small": dict(epochs=10, batch_size=64, channels=16, layers=8),
    "paper": dict(),
}
SEARCH_PRESETS = tuple(sorted(PRESETS)) + ("authors",)


def search_preset(name: Optional[str], transitions: Optional[str] = None) -> Dict[str, Any]:
    """A search preset's values; "authors" (natfast.authors) depends on the transition rule."""
    if not name:
        return {}
    if name == "authors":
        from .authors import search_preset as authors_preset
        return authors_preset(transitions or "nat")
    return dict(PRESETS[name])


@dataclass
class TransformConfig:
    """Transform an architecture with a trained policy (spec section 6)."""
    arch: str = opt("DARTS", "named architecture or a file with a Genotype(...) or JSON")
    checkpoint: Optional[str] = opt(None, "search checkpoint (supernet and policy) or policy file; default: the "
                                          "policy shipped with natfast for the arch's family (argmax only)")
    method: str = opt("argmax", "argmax, or best-of-k: sample K, score on the validation split, keep the best")
    candidates: int = opt(10, "K for best-of-k", low=1)
    keep_input: bool = opt(True, "best-of-k returns the input when no sample scores higher (--no-keep-input: the "
                                 "best sample always, as the authors)")
    score_data: str = opt("validation", "best-of-k scores on: validation (the split that trained the policy), "
                                        "validation-augmented (with crop + flip: the authors' NAT), test (the CIFAR-10 "
                                        "test set: the authors' NAT++) or authors (by the checkpoint's rule)",
                          choices=("validation", "validation-augmented", "test", "authors"))
    madds: str = opt("executed", "MAdds convention: executed (what runs) or authors (every conv module, as their "
                                 "counting code)", choices=("executed", "authors"))
    data: Optional[str] = opt(None, "CIFAR-10 folder for best-of-k scoring; default: the embedded sample")
    eval_batches: int = opt(0, "validation batches for scoring (0: the whole validation split)", low=0)
    engine: str = opt("search", "best-of-k scoring engine: graph (every candidate a lane of one launch sequence, "
                                "captured on a GPU; natfast/graph/), eager, auto, or search (the search's --engine)",
                      choices=("search", "auto", "graph", "eager"))
    out: Optional[str] = opt(None, "write the transformed genotype here (.json or .txt); default: next to the checkpoint, or runs/transform/ without one")
    draw: Optional[str] = opt(None, "write a PNG drawing of both architectures here")
    seed: int = opt(0, "seed for sampling")
    device: str = opt("auto", "cpu, cuda or auto")

    def __post_init__(self):
        check_ranges(self)


@dataclass
class TrainConfig:
    """Train an architecture from scratch (DARTS CIFAR-10 protocol by default, spec section 6)."""
    arch: str = opt("DARTS", "named architecture or a genotype file (e.g. the output of transform)")
    out: str = opt("runs/train", "output folder (checkpoint.pt, metrics.jsonl)")
    data: Optional[str] = opt(None, "CIFAR-10 folder; default: the embedded sample")
    epochs: int = opt(600, "training epochs", low=1)
    batch_size: int = opt(96, "batch size", low=1)
    channels: int = opt(36, "initial channels", low=1)
    layers: int = opt(20, "cells", low=1)
    lr: float = opt(0.025, "SGD learning rate (cosine to 0)", low=0)
    momentum: float = opt(0.9, "SGD momentum", low=0)
    weight_decay: float = opt(3e-4, "weight decay", low=0)
    drop_path: float = opt(0.2, "drop-path probability (ramped linearly over training)", low=0, below=1)
    cutout: int = opt(16, "cutout size (0: off)", low=0)
    auxiliary_weight: float = opt(0.4, "auxiliary head loss weight (0: no auxiliary head)", low=0)
    grad_clip: float = opt(5.0, "gradient-norm clip", low=0)
    train_limit: int = opt(0, "use at most this many training images (0: all)", low=0)
    eval_every: int = opt(1, "test accuracy every this many epochs (and after the last)", low=1)
    seed: int = opt(0, "seed")
    device: str = opt("auto", "cpu, cuda or auto")
    dist_timeout: float = opt(600.0, "under torchrun: seconds a process waits for the others in a collective "
                                     "(rank 0's evaluation included) before it stops with an error", low=1)
    resume: bool = opt(False, "continue from OUT/checkpoint.pt if it exists")
    overwrite: bool = opt(False, "start afresh although OUT/checkpoint.pt exists (without this, or --resume, "
                                 "such a run stops before writing anything)")
    progress: bool = opt(True, "show a progress bar")
    dataset: str = opt("cifar10", "cifar10, or imagenet: --data DIR holds train/<class>/*.JPEG and val/<class>/*.JPEG "
                                  "(the CLI then starts from --preset imagenet)", choices=("cifar10", "imagenet"))
    image_size: int = opt(224, "ImageNet training crop and validation size", low=8)
    workers: int = opt(4, "ImageNet DataLoader worker processes (0: decode in the main process)", low=0)
    label_smoothing: float = opt(0.0, "label smoothing of the loss (DARTS on ImageNet: 0.1)", low=0, below=1)
    lr_schedule: str = opt("cosine", "cosine (to 0), or exponential (lr x lr_gamma each epoch: DARTS on ImageNet)",
                           choices=("cosine", "exponential"))
    lr_gamma: float = opt(0.97, "per-epoch decay of the exponential schedule", low=0, high=1)

    def __post_init__(self):
        check_ranges(self)


TRAIN_PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(epochs=2, batch_size=32, channels=8, layers=5, train_limit=1000, auxiliary_weight=0.0),
    "paper": dict(),
    # DARTS' ImageNet (mobile setting) protocol, train_imagenet.py: 14 cells, C = 48.
    "imagenet": dict(dataset="imagenet", epochs=250, batch_size=128, channels=48, layers=14, lr=0.1,
                     weight_decay=3e-5, drop_path=0.0, cutout=0, label_smoothing=0.1, lr_schedule="exponential",
                     lr_gamma=0.97),
}


@dataclass
class DrawConfig:
    """Draw one or two architectures' cells as a PNG."""
    arch: str = opt("DARTS", "named architecture or genotype file")
    compare: Optional[str] = opt(None, "a second architecture drawn beside the first")
    out: str = opt("cells.png", "output PNG path")
    madds: str = opt("executed", "MAdds convention: executed (what runs) or authors (every conv module, as their "
                                 "counting code)", choices=("executed", "authors"))
    dataset: str = opt("cifar10", "the evaluation network costed: cifar10 (20 cells, C = 36, 32 x 32) or imagenet "
                                  "(14 cells, C = 48, 224 x 224)", choices=("cifar10", "imagenet"))

    def __post_init__(self):
        check_ranges(self)


def _arg_type(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        return _arg_type([a for a in typing.get_args(tp) if a is not type(None)][0])
    return tp


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _arg_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(tp) in (tuple, Tuple):
            parser.add_argument(flag, type=float, nargs=len(typing.get_args(tp)), default=None, help=help_text)
        else:
            parser.add_argument(flag, type=tp, default=None, choices=f.metadata.get("choices"), help=help_text)


def from_arguments(cls, args: argparse.Namespace, base: Optional[Dict[str, Any]] = None):
    """The config: dataclass defaults, then `base` (a preset), then the flags given."""
    values = dict(base or {})
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)


def to_dict(cfg) -> Dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def describe(cfg) -> str:
    return f"{type(cfg).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(cfg).items()) + ")"
