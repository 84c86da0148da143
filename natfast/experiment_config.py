"""The config of `natfast experiment` (the paper's experiment end to end, natfast/experiment.py) and
its presets. Kept apart from natfast/config.py, like it a dataclass whose fields are the CLI flags;
the defaults are the paper's protocol (spec sections 5 and 6)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from .config import check_ranges, opt

VARIANTS = ("original", "argmax", "best-of-k", "random", "lstm")
NAT_VARIANTS = ("argmax", "best-of-k")


@dataclass
class ExperimentConfig:
    """Search once, transform each input (NAT argmax and best-of-K, a random transformation changing
    as many edges, optionally the LSTM policy's argmax), train every variant from scratch with S
    seeds, report test accuracy (mean and spread), params and MAdds."""
    out: str = opt("runs/experiment", "output folder (experiment.json, results.md, plots, search/, train/)")
    data: Optional[str] = opt(None, "CIFAR-10 folder (cifar-10-batches-py or its parent); default: the embedded sample")
    inputs: str = opt("DARTS,ENAS,ResBlock,VGG,random:4",
                      "input architectures, comma-separated: names, genotype files, random:N (N cells drawn as "
                      "the search draws beta, from --random-family)")
    random_family: str = opt("darts", "family of the random:N inputs (darts or enas)")
    variants: str = opt("original,argmax,best-of-k,random,lstm",
                        "what is trained, comma-separated: original, argmax (NAT's argmax), best-of-k (NAT's best of "
                        "K, chosen on the validation split), random (as many edges changed as the first NAT variant "
                        "listed, uniformly among the allowed transitions), lstm (argmax of an LSTM policy searched "
                        "the same way: the paper's ablation)")
    transitions: str = opt("nat", "transition rule: nat or natpp")
    checkpoints: str = opt("", "search checkpoints to use instead of searching, comma-separated, one per family "
                               "and policy (read from each checkpoint)")
    input_seed: int = opt(0, "seed of the random inputs and of the random transformations")
    # The search (one per family of the inputs, and per policy: gcn, and lstm for that variant).
    search_epochs: int = opt(100, "search epochs E", low=1)
    search_channels: int = opt(20, "supernet initial channels C", low=1)
    search_layers: int = opt(8, "supernet cells", low=1)
    search_batch_size: int = opt(64, "search batch size (both updates)", low=1)
    search_train_limit: int = opt(0, "search on at most this many training images (0: all)", low=0)
    search_seed: int = opt(0, "seed of the search")
    # Deriving.
    candidates: int = opt(10, "K for best-of-k", low=1)
    eval_batches: int = opt(0, "validation batches (of the search batch size) scoring best-of-K (0: all)", low=0)
    # Training from scratch (DARTS protocol).
    seeds: int = opt(3, "S: training seeds per architecture (0..S-1)", low=1)
    train_epochs: int = opt(600, "training epochs", low=1)
    train_channels: int = opt(36, "initial channels of the trained network", low=1)
    train_layers: int = opt(20, "cells of the trained network", low=1)
    train_batch_size: int = opt(96, "training batch size", low=1)
    train_limit: int = opt(0, "train on at most this many training images (0: all)", low=0)
    lr: float = opt(0.025, "SGD learning rate (cosine to 0)", low=0)
    drop_path: float = opt(0.2, "drop-path probability", low=0, below=1)
    cutout: int = opt(16, "cutout size (0: off)", low=0)
    auxiliary_weight: float = opt(0.4, "auxiliary head loss weight (0: none)", low=0)
    eval_every: int = opt(1, "test accuracy every this many epochs for the curves (the last epoch always)", low=1)
    # How it runs.
    workers: int = opt(1, "training runs side by side, each in its own process with --threads / workers threads", low=1)
    threads: int = opt(0, "CPU threads in all (0: torch's default)", low=0)
    device: str = opt("auto", "cpu, cuda or auto")
    estimate: bool = opt(False, "time a few steps of every stage at this scale, print the projected run time, stop")
    resume: bool = opt(False, "continue the experiment in OUT (finished parts are kept, started ones resume)")
    overwrite: bool = opt(False, "start afresh although OUT holds an experiment")
    progress: bool = opt(True, "show progress bars")

    def __post_init__(self):
        check_ranges(self)


# Settings that only say how the experiment runs: a resumed experiment may change them (and seeds:
# more seeds add runs).
FREE_KEYS = ("workers", "threads", "device", "estimate", "resume", "overwrite", "progress", "seeds")

EXPERIMENT_PRESETS: Dict[str, Dict[str, Any]] = {
    # A smoke run on the embedded sample: the whole pipeline, up to 16 tiny training runs.
    "tiny": dict(inputs="DARTS,random:1", variants="original,argmax,best-of-k,random",
                 search_epochs=1, search_channels=4, search_layers=3, search_batch_size=32,
                 search_train_limit=320, candidates=3, eval_batches=2, seeds=2,
                 train_epochs=2, train_channels=4, train_layers=3, train_batch_size=32, train_limit=64,
                 auxiliary_weight=0.0, drop_path=0.0),
    # Real CIFAR-10 (--data) on 2 idle CPU cores in about 100 minutes, at most 2 hours
    # (results/README.md: why this scale, and how it was calibrated). A 12,480-step search of a
    # small supernet; each of the (up to) 24 trained networks sees 36,000 images (2 epochs of
    # 18,000) at C = 16, 5 cells; regularisers that pay off only in long training (cutout,
    # drop-path, auxiliary head) are off; two runs train side by side, a thread each.
    "cpu": dict(inputs="DARTS,random:2", variants="original,argmax,best-of-k,random",
                search_epochs=16, search_channels=8, search_layers=5, search_batch_size=64,
                candidates=10, eval_batches=100, seeds=2,
                train_epochs=2, train_channels=16, train_layers=5, train_batch_size=96, train_limit=18000,
                cutout=0, drop_path=0.0, auxiliary_weight=0.0, workers=2),
    # The paper's protocol (spec sections 5, 6): the dataclass defaults (100-epoch searches, 600-epoch
    # training at C = 36, 20 cells, the four named inputs and four random cells, the LSTM ablation).
    "paper": dict(),
}
