"""Training an architecture from scratch, to compare a transformed architecture with its original
trained the same way (DARTS protocol: SGD, cosine schedule, cutout, drop-path, auxiliary head).

Under torchrun it trains with DistributedDataParallel (the network's graph is fixed): each process
takes its shard of every batch, rank 0 evaluates and writes the checkpoints."""
from __future__ import annotations

import json
import math
import os
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint as ckpt
from . import distributed, faults
from .config import TrainConfig, describe, from_saved, to_dict
from .data import ArrayDataset, BatchLoader, load_cifar10, mix_seed
from .genotype import load_arch
from .imagenet import imagenet_loaders
from .network import Network
from .progress import Progress
from .search import pick_device

DROP_PATH_STREAM = 2  # data.py's streams are 0 (order) and 1 (augmentation)
RESUME_KEYS = ("arch", "channels", "layers", "batch_size", "seed", "data", "train_limit", "auxiliary_weight",
               "dataset", "image_size")


def cifar10_loaders(cfg: TrainConfig, shard: Tuple[int, int] = (0, 1)) -> tuple:
    """(train loader, test loader, 10): the CIFAR-10 folder or the embedded sample; `shard`: this
    process's (rank, world) share of every training batch."""
    train = load_cifar10(cfg.data, "train")
    if cfg.train_limit and cfg.train_limit < len(train):
        train = ArrayDataset(train.x[: cfg.train_limit], train.y[: cfg.train_limit], train.source)
    train_loader = BatchLoader(train, None, cfg.batch_size, shuffle=True, augment=True, cutout=cfg.cutout,
                               seed=cfg.seed, shard=shard)
    return train_loader, BatchLoader(load_cifar10(cfg.data, "test"), None, 256, shuffle=False, drop_last=False), 10


class LogitsAndAux(nn.Module):
    """The network's training forward (logits and the auxiliary head's) as `forward`, the one
    method DistributedDataParallel wraps."""

    def __init__(self, network: Network):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.network.forward_with_aux(x)


class Trainer:
    def __init__(self, cfg: TrainConfig, log: Callable[[str], None] = print):
        self.cfg, self.log = cfg, log
        # Under torchrun: this process's rank, and its own GPU (natfast/distributed.py).
        self.ranks, self.device = distributed.join(pick_device(cfg.device), cfg.dist_timeout)
        self.ranks.check_batch(cfg.batch_size)
        if not self.ranks.is_main:
            self.log = lambda _: None
        self.genotype, self.family = load_arch(cfg.arch)
        torch.manual_seed(cfg.seed)
        if cfg.dataset == "imagenet":
            self.train_loader, self.test_loader, num_classes = imagenet_loaders(
                cfg.data, cfg.batch_size, cfg.image_size, cfg.workers, cfg.seed, shard=self.ranks.shard)
        else:
            self.train_loader, self.test_loader, num_classes = cifar10_loaders(cfg, self.ranks.shard)
        self.model = Network(self.genotype, self.family, cfg.channels, cfg.layers, num_classes,
                             auxiliary=cfg.auxiliary_weight > 0,
                             stem="imagenet" if cfg.dataset == "imagenet" else "cifar").to(self.device)
        self.forward_train: nn.Module = LogitsAndAux(self.model)
        if self.ranks.distributed:
            # Every parameter is used every step: no find_unused_parameters walk. BN statistics are
            # each process's own; DDP sends rank 0's running averages to the others every step.
            self.forward_train = DistributedDataParallel(
                self.forward_train, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.SGD(self.model.parameters(), cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.epoch = 0

    def lr(self, epoch: int) -> float:
        if self.cfg.lr_schedule == "exponential":
            return self.cfg.lr * self.cfg.lr_gamma ** epoch
        return 0.5 * self.cfg.lr * (1 + math.cos(math.pi * epoch / self.cfg.epochs))

    def train_epoch(self, bar: Progress, done: int) -> Dict[str, float]:
        cfg, model = self.cfg, self.model
        model.train()
        model.drop_path_prob = cfg.drop_path * self.epoch / cfg.epochs
        # Drop-path draws from torch's global generator: seeded per epoch (and process: each draws its
        # own masks), so that a run resumed at an epoch boundary draws exactly what an uninterrupted
        # one does.
        torch.manual_seed(mix_seed(cfg.seed, self.epoch, DROP_PATH_STREAM, self.ranks.rank))
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr(self.epoch)
        total_loss = correct = seen = 0
        for i, (x, y) in enumerate(self.train_loader.epoch(self.epoch)):
            x, y = x.to(self.device), y.to(self.device)
            # DDP broadcasts rank 0's BN buffers in forward and all-reduces the gradients in backward.
            with self.ranks.communicating(f"epoch {self.epoch}, batch {i}: the gradient all-reduce"):
                logits, aux = self.forward_train(x)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                if aux is not None:
                    loss = loss + cfg.auxiliary_weight * F.cross_entropy(aux, y, label_smoothing=cfg.label_smoothing)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            loss_value = loss.item()
            # The norm is of the averaged gradient: a non-finite loss on any process stops them all here.
            faults.check_finite({"loss": loss_value, "gradient norm": float(norm)},
                                f"epoch {self.epoch}, batch {i}", os.path.join(cfg.out, "checkpoint.pt"))
            self.optimizer.step()
            total_loss += loss_value * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.update(done + i + 1, f"epoch {self.epoch} loss {total_loss / seen:.3f}")
        total_loss, correct, seen = self.ranks.sum([total_loss, correct, seen])
        return {"train_loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1)}

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        correct = seen = 0
        for x, y in self.test_loader.epoch(0):
            correct += (self.model(x.to(self.device)).argmax(1) == y.to(self.device)).sum().item()
            seen += len(y)
        return correct / max(seen, 1)

    def run(self) -> Dict[str, float]:
        cfg, main = self.cfg, self.ranks.is_main
        # Rank 0 reads the checkpoint and hands it to the others (only it needs the file).
        path, state = self.ranks.from_main(lambda: ckpt.start_run(cfg.out, cfg.resume, cfg.overwrite,
                                                                  ckpt.TRAIN_FORMAT))
        resuming = state is not None
        if resuming:
            self.load_state_dict(state)
            self.log(f"resumed from {path} at epoch {self.epoch}")
        self.log(describe(cfg))
        params = sum(p.numel() for n, p in self.model.named_parameters() if not n.startswith("aux_head"))
        self.log(f"{cfg.arch}: {params / 1e6:.3f}M params; data {self.train_loader.dataset.source}; device {self.device}")
        if self.ranks.distributed:
            self.log(f"data-parallel (DistributedDataParallel) over {self.ranks.world} processes, "
                     f"{cfg.batch_size // self.ranks.world} images of each batch per process")
        bar = Progress(cfg.epochs * len(self.train_loader), cfg.progress and main)
        record: Dict[str, float] = {}
        metrics_path = os.path.join(cfg.out, "metrics.jsonl") if main else os.devnull
        with open(metrics_path, "a" if resuming else "w") as metrics:
            while self.epoch < cfg.epochs:
                record = self.train_epoch(bar, self.epoch * len(self.train_loader))
                record.update(epoch=self.epoch, lr=self.lr(self.epoch))
                if (self.epoch + 1) % cfg.eval_every == 0 or self.epoch + 1 == cfg.epochs:
                    # Rank 0 evaluates (with its BN running averages, the ones it saves); all get the result.
                    record["test_acc"] = self.ranks.from_main(self.evaluate)
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                self.epoch += 1
                faults.check_parameters([self.model], f"end of epoch {self.epoch - 1}", path)
                if main:
                    ckpt.save(self.state_dict(), path)
        bar.close()
        self.ranks.barrier()   # every process returns once the checkpoint is written
        return record

    def state_dict(self) -> dict:
        return {"format": ckpt.TRAIN_FORMAT, "config": to_dict(self.cfg), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        saved = to_dict(from_saved(TrainConfig, state["config"]))   # fields added since: their defaults
        ckpt.check_resumable(saved, to_dict(self.cfg), RESUME_KEYS)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
