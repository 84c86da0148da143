"""Training an architecture from scratch, to compare a transformed architecture with its original
trained the same way (DARTS protocol: SGD, cosine schedule, cutout, drop-path, auxiliary head)."""
from __future__ import annotations

import json
import math
import os
from typing import Callable, Dict

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from .config import TrainConfig, describe, to_dict
from .data import ArrayDataset, BatchLoader, load_cifar10, mix_seed
from .genotype import load_arch
from .network import Network
from .progress import Progress
from .search import pick_device

DROP_PATH_STREAM = 2  # data.py's streams are 0 (order) and 1 (augmentation)
RESUME_KEYS = ("arch", "channels", "layers", "batch_size", "seed", "data", "train_limit", "auxiliary_weight")


class Trainer:
    def __init__(self, cfg: TrainConfig, log: Callable[[str], None] = print):
        self.cfg, self.log = cfg, log
        self.device = pick_device(cfg.device)
        self.genotype, self.family = load_arch(cfg.arch)
        torch.manual_seed(cfg.seed)
        self.model = Network(self.genotype, self.family, cfg.channels, cfg.layers,
                             auxiliary=cfg.auxiliary_weight > 0).to(self.device)
        train = load_cifar10(cfg.data, "train")
        if cfg.train_limit and cfg.train_limit < len(train):
            train = ArrayDataset(train.x[: cfg.train_limit], train.y[: cfg.train_limit], train.source)
        self.train_loader = BatchLoader(train, None, cfg.batch_size, shuffle=True, augment=True,
                                        cutout=cfg.cutout, seed=cfg.seed)
        self.test_loader = BatchLoader(load_cifar10(cfg.data, "test"), None, 256, shuffle=False, drop_last=False)
        self.optimizer = torch.optim.SGD(self.model.parameters(), cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.epoch = 0

    def lr(self, epoch: int) -> float:
        return 0.5 * self.cfg.lr * (1 + math.cos(math.pi * epoch / self.cfg.epochs))

    def train_epoch(self, bar: Progress, done: int) -> Dict[str, float]:
        cfg, model = self.cfg, self.model
        model.train()
        model.drop_path_prob = cfg.drop_path * self.epoch / cfg.epochs
        # Drop-path draws from torch's global generator: seeded per epoch, so that a run resumed at an
        # epoch boundary draws exactly what an uninterrupted one does.
        torch.manual_seed(mix_seed(cfg.seed, self.epoch, DROP_PATH_STREAM))
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr(self.epoch)
        total_loss = correct = seen = 0
        for i, (x, y) in enumerate(self.train_loader.epoch(self.epoch)):
            x, y = x.to(self.device), y.to(self.device)
            logits, aux = model.forward_with_aux(x)
            loss = F.cross_entropy(logits, y)
            if aux is not None:
                loss = loss + cfg.auxiliary_weight * F.cross_entropy(aux, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.update(done + i + 1, f"epoch {self.epoch} loss {total_loss / seen:.3f}")
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
        cfg = self.cfg
        path, state = ckpt.start_run(cfg.out, cfg.resume, cfg.overwrite, ckpt.TRAIN_FORMAT)
        resuming = state is not None
        if resuming:
            self.load_state_dict(state)
            self.log(f"resumed from {path} at epoch {self.epoch}")
        self.log(describe(cfg))
        params = sum(p.numel() for n, p in self.model.named_parameters() if not n.startswith("aux_head"))
        self.log(f"{cfg.arch}: {params / 1e6:.3f}M params; data {self.train_loader.dataset.source}; device {self.device}")
        bar = Progress(cfg.epochs * len(self.train_loader), cfg.progress)
        record: Dict[str, float] = {}
        with open(os.path.join(cfg.out, "metrics.jsonl"), "a" if resuming else "w") as metrics:
            while self.epoch < cfg.epochs:
                record = self.train_epoch(bar, self.epoch * len(self.train_loader))
                record.update(epoch=self.epoch, lr=self.lr(self.epoch))
                if (self.epoch + 1) % cfg.eval_every == 0 or self.epoch + 1 == cfg.epochs:
                    record["test_acc"] = self.evaluate()
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                self.epoch += 1
                ckpt.save(self.state_dict(), path)
        bar.close()
        return record

    def state_dict(self) -> dict:
        return {"format": ckpt.TRAIN_FORMAT, "config": to_dict(self.cfg), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        ckpt.check_resumable(state["config"], to_dict(self.cfg), RESUME_KEYS)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
