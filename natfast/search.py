"""The alternating NAT trainer (spec section 5): update the supernet weights w on sampled input
architectures, then the policy theta by REINFORCE on the reward acc(alpha) - acc(beta).

Every random choice of step k comes from generators seeded by (seed, k), so a run stopped after
step k and resumed from its checkpoint takes exactly the same step k + 1.

Under torchrun the search is data-parallel (natfast/distributed.py): every process trains the same
architecture on its shard of each w batch, gradients averaged; in the policy step each process
scores its own m x n pairs on the whole theta batch, the policy gradient and the rewards averaged.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import distributed, executor, faults
from .config import SearchConfig, describe, from_saved, to_dict
from .data import BatchLoader, load_cifar10, split_indices, ArrayDataset
from .genotype import Family, Genotype, get_family
from .policy import make_policy
from .progress import Progress
from .sampler import sample_genotype
from .snapshots import TransformSnapshots
from .supernet import Supernet

# Fields that define the model and the data stream: a resumed run must agree on them.
RESUME_KEYS = ("family", "transitions", "channels", "layers", "policy", "adjacency", "hidden_size",
               "embedding_size", "batch_size", "w_fraction", "train_limit", "seed", "data", "augment",
               "policy_head", "feature_size", "augment_theta", "prob_epsilon", "baseline_update")


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """Independent, reproducible randomness for (seed, step, stream)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919 + stream * 104_729) % (2**63))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but no CUDA GPU is available (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def search_family(cfg) -> Family:
    family = get_family(cfg.family, natpp=(cfg.transitions == "natpp"))
    if not family.searchable:
        raise ValueError(f"family {family.name} is for standalone networks only (no supernet has its ops); "
                         f"search darts or enas")
    return family


def build_models(cfg, device) -> tuple:
    family = search_family(cfg)
    torch.manual_seed(cfg.seed)
    supernet = Supernet(family, cfg.channels, cfg.layers).to(device)
    return family, supernet, policy_of_config(cfg, family).to(device)


def policy_of_config(cfg, family: Family):
    """The (untrained) policy a search with this config trains: one place, so a policy file
    rebuilds exactly the policy its search saved."""
    return make_policy(cfg.policy, family.primitives, cfg.transitions, hidden_size=cfg.hidden_size,
                       embedding_size=cfg.embedding_size, adjacency=cfg.adjacency, head=cfg.policy_head,
                       prob_epsilon=cfg.prob_epsilon, feature_size=cfg.feature_size, init=cfg.policy_init)


def search_data(cfg) -> ArrayDataset:
    ds = load_cifar10(cfg.data, "train", download=cfg.download)
    if cfg.train_limit and cfg.train_limit < len(ds):
        ds = ArrayDataset(ds.x[: cfg.train_limit], ds.y[: cfg.train_limit], f"{ds.source}, first {cfg.train_limit}")
    return ds


def search_loaders(cfg, ds: ArrayDataset, shard: tuple = (0, 1)) -> tuple:
    """The w loader (its batches sharded over the processes: `shard` = (rank, world)) and the
    theta loader (whole batches: every process scores its pairs on the same images)."""
    w_idx, theta_idx = split_indices(len(ds), cfg.w_fraction, cfg.seed)
    w_loader = BatchLoader(ds, w_idx, cfg.batch_size, shuffle=True, augment=cfg.augment, seed=cfg.seed,
                           shard=shard)
    theta_loader = BatchLoader(ds, theta_idx, cfg.batch_size, shuffle=True, augment=cfg.augment_theta,
                               seed=cfg.seed + 1)
    if len(w_loader) == 0 or len(theta_loader) == 0:
        raise ValueError(f"{len(ds)} training images are too few for batch size {cfg.batch_size} "
                         f"with a {cfg.w_fraction:.0%}/{1 - cfg.w_fraction:.0%} split")
    return w_loader, theta_loader


class PhaseSummary:
    """Means of one phase's step records, logged as one line when the phase ends (the
    per-step records are in metrics.jsonl). After a resume it covers the steps run since."""

    SKIP = ("step", "epoch", "batch", "seconds")

    def __init__(self, epoch: int, phase: str):
        self.epoch, self.phase = epoch, phase
        self.sums: Dict[str, float] = {}
        self.steps = 0
        self.seconds = 0.0

    def add(self, record: Dict) -> None:
        self.steps += 1
        self.seconds += record["seconds"]
        for k, v in record.items():
            if k not in self.SKIP and isinstance(v, (int, float)):
                self.sums[k] = self.sums.get(k, 0.0) + v

    def means(self) -> Dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}

    def line(self) -> str:
        means = " ".join(f"{k} {v:.4f}" for k, v in self.means().items())
        return f"epoch {self.epoch} {self.phase} (means of {self.steps} steps, {self.seconds:.1f} s): {means}"


class PendingStatistics:
    """A step's statistics on their way from the device: copied into pinned host memory without
    waiting, read (waiting for that copy only) by `read()`. The search loop reads a graph-engine
    step's after issuing the next step, so the host never stalls the GPU between steps."""

    def __init__(self, names, values: torch.Tensor):
        self.names = tuple(names)
        if values.is_cuda:
            self.host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.host.copy_(values, non_blocking=True)
            self.copied = torch.cuda.Event()
            self.copied.record()
        else:
            self.host, self.copied = values.clone(), None

    def read(self) -> Dict[str, float]:
        if self.copied is not None:
            self.copied.synchronize()
        return dict(zip(self.names, self.host.tolist()))


@dataclass
class Position:
    """Where the run is: the next step to take."""
    epoch: int = 0
    phase: str = "w"      # "w" then "theta" in every epoch
    batch: int = 0
    step: int = 0


class Searcher:
    def __init__(self, cfg: SearchConfig, log: Callable[[str], None] = print):
        self.cfg, self.log = cfg, log
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # Under torchrun: this process's rank, and its own GPU (natfast/distributed.py).
        self.ranks, self.device = distributed.join(pick_device(cfg.device), cfg.dist_timeout)
        self.ranks.check_batch(cfg.batch_size)
        if not self.ranks.is_main:
            self.log = lambda _: None
        self.family, self.supernet, self.policy = build_models(cfg, self.device)
        self.dataset = search_data(cfg)
        self.w_loader, self.theta_loader = search_loaders(cfg, self.dataset, self.ranks.shard)
        # Listed once: walking the supernet's ~2500 modules for them costs milliseconds a step.
        self.w_params = list(self.supernet.parameters())
        self.w_optimizer = torch.optim.SGD(self.w_params, cfg.w_lr, momentum=cfg.w_momentum,
                                           weight_decay=cfg.w_weight_decay)
        params = self.policy_params = list(self.policy.parameters())
        self.policy_optimizer = (torch.optim.Adam(params, cfg.policy_lr, betas=tuple(cfg.policy_betas),
                                                  weight_decay=cfg.policy_weight_decay) if params else None)
        self.graph = self._graph_engine()
        self.baseline = 0.0
        self.position = Position()
        self.snapshots = TransformSnapshots(cfg, self.family, log) if cfg.show_every else None

    def _graph_engine(self):
        """The graph engine when cfg.engine asks for it (natfast/graph/), else None (eager steps)."""
        from .graph import engine as graph
        cfg = self.cfg
        if not graph.chosen(cfg.engine, self.device, self.supernet):
            return None
        if self.ranks.world > 1:
            raise ValueError("--engine graph runs in one process; under torchrun use --engine eager")
        return graph.GraphEngine(self.supernet, cfg.w_lr, cfg.w_momentum, cfg.w_weight_decay, cfg.grad_clip)

    # ------------------------------------------------------------------ one step of each kind
    def update_w(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> Dict[str, float]:
        stats = self.issue_w(x, y, gen)
        return stats.read() if isinstance(stats, PendingStatistics) else stats

    def issue_w(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
        """update_w, its statistics not yet read where the graph engine runs it (PendingStatistics)."""
        beta = sample_genotype(self.family, gen)
        if self.graph is not None:
            loss, acc = self.graph.step(x, y, beta)   # the captured step's outputs: copied before the next
            return PendingStatistics(("loss", "acc"), torch.stack([loss, acc]))
        if not self.supernet.training:  # train() walks every module: only when it changes
            self.supernet.train()
        logits = self.w_logits(x, beta)
        loss = F.cross_entropy(logits, y)
        self.w_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # With several processes: one flat all-reduce of the gradients the path made (every process
        # trained the same beta, so the same parameters have one), and the loss and accuracy.
        loss_value, acc = self.ranks.average_gradients(
            self.w_params, [loss.detach(), (logits.argmax(1) == y).float().mean()])
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.w_params, self.cfg.grad_clip)
        self.w_optimizer.step()
        return {"loss": loss_value, "acc": acc}

    def w_logits(self, x: torch.Tensor, beta: Genotype) -> torch.Tensor:
        """The sampled path's logits (BN statistics over this process's samples)."""
        return executor.forward(self.supernet, x, beta) if self.cfg.executor else self.supernet(x, beta)

    def draw_transformations(self, gen: torch.Generator) -> tuple:
        """The policy step's draws: m = num_inputs input architectures, and n = num_samples
        transformations of all of them from one policy pass. Returns (betas, samples, alphas),
        samples[j].targets[2i:2i+2] transforming betas[i] into alphas[j][i]."""
        cfg = self.cfg
        betas = [sample_genotype(self.family, gen) for _ in range(cfg.num_inputs)]
        cells = [c for b in betas for c in (b.normal, b.reduce)]
        samples = self.policy.sample(cells, gen, cfg.num_samples)
        alphas = [[self.policy.to_genotype(b, s.targets[2 * i: 2 * i + 2]) for i, b in enumerate(betas)] for s in samples]
        return betas, samples, alphas

    def policy_loss(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple:
        """The REINFORCE loss of this process's m x n pairs, and their mean reward, loss, entropy,
        beta and alpha accuracies (tensors)."""
        cfg = self.cfg
        betas, samples, alphas = self.draw_transformations(gen)
        archs = betas + [a for row in alphas for a in row]
        if self.graph is not None:  # one lane per architecture, nothing read back (natfast/graph/scoring.py)
            from .graph.scoring import MAX_LANES
            accs = self.graph.scorer(min(len(archs), MAX_LANES)).accuracies(x, y, archs)
        else:
            accs = torch.tensor(score_batch(self.supernet, x, y, archs), device=self.device)
        beta_acc = accs[: len(betas)]
        alpha_acc = accs[len(betas):].view(len(samples), len(betas))
        reward = alpha_acc - beta_acc                                            # (n, m)
        log_prob = torch.stack([s.log_prob.view(-1, 2).sum(1) for s in samples])  # (n, m)
        entropy = torch.stack([s.entropy.view(-1, 2).sum(1) for s in samples])
        advantage = reward - self.baseline
        loss = -(log_prob * advantage).mean() - cfg.entropy_weight * entropy.mean()
        return loss, [reward.mean(), loss.detach(), entropy.mean(), beta_acc.mean(), alpha_acc.mean()]

    def update_theta(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> Dict[str, float]:
        cfg = self.cfg
        loss, stats = self.policy_loss(x, y, gen)
        if self.policy_optimizer is not None:
            self.policy_optimizer.zero_grad(set_to_none=True)
            loss.backward()
        # With several processes (each with its own pairs): the policy gradient and the statistics,
        # the reward that moves the shared baseline included, averaged over all processes' pairs.
        mean_reward, loss_value, entropy, beta_acc, alpha_acc = self.ranks.average_gradients(
            self.policy_params, stats)
        if self.policy_optimizer is not None:
            self.policy_optimizer.step()
        tracked = mean_reward - self.baseline if cfg.baseline_update == "advantage" else mean_reward
        self.baseline = cfg.baseline_decay * self.baseline + (1 - cfg.baseline_decay) * tracked
        return {"loss": loss_value, "reward": mean_reward, "baseline": self.baseline,
                "entropy": entropy, "beta_acc": beta_acc, "alpha_acc": alpha_acc}

    # ------------------------------------------------------------------ the loop
    def w_lr(self, epoch: int) -> float:
        cfg = self.cfg
        return cfg.w_lr_min + 0.5 * (cfg.w_lr - cfg.w_lr_min) * (1 + math.cos(math.pi * epoch / cfg.epochs))

    def total_steps(self) -> int:
        return self.cfg.epochs * (len(self.w_loader) + len(self.theta_loader))

    def run(self) -> Dict[str, float]:
        cfg, main = self.cfg, self.ranks.is_main
        # Rank 0 reads the checkpoint and hands it to the others (only it needs the file).
        path, state = self.ranks.from_main(lambda: ckpt.start_run(cfg.out, cfg.resume, cfg.overwrite))
        resuming = state is not None
        if resuming:
            self.load_state_dict(state)
            self.log(f"resumed from {path} at step {self.position.step}")
        else:
            self.ranks.broadcast_parameters([self.supernet, self.policy])
        self.log(describe(cfg))
        self.log(f"data: {self.dataset.source}; w batches/epoch {len(self.w_loader)}, "
                 f"theta batches/epoch {len(self.theta_loader)}; device {self.device}")
        if self.ranks.distributed:
            self.log(f"data-parallel over {self.ranks.world} processes: each w step "
                     f"{cfg.batch_size // self.ranks.world} images per process, each policy step "
                     f"{cfg.num_inputs} x {cfg.num_samples} pairs per process")
        if main:
            with open(os.path.join(cfg.out, "config.json"), "w") as fh:
                json.dump(to_dict(cfg), fh, indent=2)
        # A fresh start's records replace any earlier run's; a resumed run's follow its own.
        metrics_file = open(os.path.join(cfg.out, "metrics.jsonl") if main else os.devnull,
                            "a" if resuming else "w")
        bar = Progress(self.total_steps(), cfg.progress and main)
        last: Dict[str, float] = {}
        try:
            while self.position.epoch < cfg.epochs:
                if cfg.max_steps and self.position.step >= cfg.max_steps:
                    break
                last = self._run_phase(metrics_file, bar) or last
                if self.position.phase == "w" and self.position.batch == 0:  # an epoch just ended
                    if self.snapshots and main and self.snapshots.due(self.position.epoch):
                        self.snapshots.take(self, metrics_file)   # rank 0 alone (no collectives in it)
                    self.save(path)
        except distributed.RankFailure as exc:
            raise distributed.RankFailure(f"step {self.position.step}: {exc}") from None
        finally:
            metrics_file.close()
            bar.close()
        self.save(path)
        self.ranks.barrier()   # every process returns once the checkpoint is written
        return last

    def _run_phase(self, metrics_file, bar) -> Dict[str, float]:
        pos, cfg = self.position, self.cfg
        loader = self.w_loader if pos.phase == "w" else self.theta_loader
        update = self.issue_w if pos.phase == "w" else self.update_theta
        for g in self.w_optimizer.param_groups:
            g["lr"] = self.w_lr(pos.epoch)
        if self.graph is not None:
            self.graph.set_lr(self.w_lr(pos.epoch))
        record: Dict[str, float] = {}
        summary = PhaseSummary(pos.epoch, pos.phase)
        # A graph-engine step's statistics are read after the next step is issued (PendingStatistics),
        # so the GPU runs one step while the host prepares the next; every other step's at once.
        # Either way a step is recorded, checked for non-finite values and counted before anything
        # after it is saved.
        pending = None

        def record_pending() -> Dict[str, float]:
            nonlocal pending
            stats, meta, start = pending
            pending = None
            values = stats.read() if isinstance(stats, PendingStatistics) else stats
            faults.check_finite(values, f"step {meta['step']} (epoch {meta['epoch']}, update_{meta['phase']})",
                                os.path.join(cfg.out, "checkpoint.pt"))
            values.update(meta, seconds=round(time.perf_counter() - start, 4))
            metrics_file.write(json.dumps(values) + "\n")
            summary.add(values)
            bar.update(meta["step"] + 1, f"epoch {meta['epoch']} {meta['phase']} " + " ".join(
                f"{k}={values[k]:.3f}" for k in ("loss", "acc", "reward") if k in values))
            return values

        for x, y in loader.epoch(pos.epoch, pos.batch):
            start = time.perf_counter()
            # One architecture per w step for all processes; each process its own policy-step pairs.
            gen = step_generator(cfg.seed, pos.step, self.ranks.rank if pos.phase == "theta" else 0)
            stats = update(self._to_device(x), self._to_device(y), gen)
            if pending is not None:
                record = record_pending()
            pending = (stats, dict(step=pos.step, epoch=pos.epoch, phase=pos.phase, batch=pos.batch), start)
            if not isinstance(stats, PendingStatistics):
                record = record_pending()
            pos.step += 1
            pos.batch += 1
            if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0:
                if pending is not None:
                    record = record_pending()
                metrics_file.flush()
                self.save(os.path.join(cfg.out, "checkpoint.pt"))
            if cfg.max_steps and pos.step >= cfg.max_steps:
                if pending is not None:
                    record = record_pending()
                if pos.batch == len(loader):
                    self._finish_phase(summary, bar)
                return record
        if pending is not None:
            record = record_pending()
        self._finish_phase(summary, bar)
        return record

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A batch on the device; for the graph engine on a GPU through pinned memory without waiting
        (a pageable copy would wait for the step before it)."""
        if self.graph is not None and self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _finish_phase(self, summary: PhaseSummary, bar: Progress) -> None:
        bar.clear()
        self.log(summary.line())
        self._advance_phase()

    def _advance_phase(self) -> None:
        pos = self.position
        pos.batch = 0
        if pos.phase == "w":
            pos.phase = "theta"
        else:
            pos.phase, pos.epoch = "w", pos.epoch + 1

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "format": ckpt.FORMAT,
            "config": to_dict(self.cfg),
            "family": self.family.name,
            "primitives": list(self.family.primitives),
            "supernet": self.supernet.state_dict(),
            "policy": self.policy.state_dict(),
            "w_optimizer": self._w_optimizer_state(),
            "policy_optimizer": self.policy_optimizer.state_dict() if self.policy_optimizer else {},
            "baseline": self.baseline,
            "position": dict(vars(self.position)),
            "torch_version": str(torch.__version__),
        }

    def load_state_dict(self, state: dict) -> None:
        saved = to_dict(from_saved(SearchConfig, state["config"]))   # fields added since: their defaults
        ckpt.check_resumable(saved, to_dict(self.cfg), RESUME_KEYS)
        self.supernet.load_state_dict(state["supernet"])
        self.policy.load_state_dict(state["policy"])
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        if self.graph is not None:
            self.graph.sgd.load_torch_state(self.w_params, self.w_optimizer)
        if self.policy_optimizer is not None:
            self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.baseline = float(state["baseline"])
        self.position = Position(**state["position"])

    def _w_optimizer_state(self) -> dict:
        """torch.optim.SGD's state dict whichever engine ran: checkpoints resume under either."""
        if self.graph is not None:
            self.graph.sgd.store_torch_state(self.w_params, self.w_optimizer)
        return self.w_optimizer.state_dict()

    def save(self, path: str) -> None:
        # Every process holds the same parameters: all of them stop here if they are not finite.
        faults.check_parameters([self.supernet, self.policy], f"after step {self.position.step - 1}", path)
        if self.ranks.is_main:
            ckpt.save(self.state_dict(), path)


def score_batch(supernet: Supernet, x: torch.Tensor, y: torch.Tensor, archs: List[Genotype]) -> List[float]:
    """Accuracy of each architecture on one batch with the shared weights (one batched pass)."""
    with torch.inference_mode():
        logits = supernet.forward_shared(x, archs)
        return [(l.argmax(1) == y).float().mean().item() for l in logits]


def search(cfg: Optional[SearchConfig] = None, log: Callable[[str], None] = print, **overrides) -> Searcher:
    """Run a NAT search; returns the Searcher (its supernet and policy are trained)."""
    cfg = cfg or SearchConfig(**overrides)
    searcher = Searcher(cfg, log)
    searcher.run()
    return searcher
