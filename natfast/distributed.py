"""Data-parallel runs on torch.distributed (gloo on CPUs, NCCL on GPUs), as torchrun starts them.

A search or a training joins the process group it finds: one the caller initialised, or else one
made from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). With
neither it runs alone, and every method here is a no-op or a plain local computation.

Every collective runs under the group's timeout and a failed one (a rank that died, or one that did
not answer in time) raises `RankFailure` with a message saying so, so the surviving ranks stop
instead of hanging.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar

import torch
import torch.distributed as dist

R = TypeVar("R")

# Environment variables torchrun (and torch.distributed.launch) set for each worker.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class RankFailure(RuntimeError):
    """A collective failed: another rank died or did not answer within the timeout."""


class StoppedOnRankZero(RuntimeError):
    """Rank 0 could not start the run (it reports why); the other ranks stop with it."""


@dataclass
class Ranks:
    """This process's place in the data-parallel group (rank 0 of 1 when running alone)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    timeout_s: Optional[float] = None    # None: the group was made by the caller, with its own timeout

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, shows progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    # ------------------------------------------------------------------ data
    def check_batch(self, batch_size: int, flag: str = "--batch-size") -> int:
        """This rank's share of a global batch; the batch must split evenly over the ranks."""
        if batch_size % self.world:
            raise ValueError(f"{flag} {batch_size} does not split evenly over {self.world} processes: "
                             f"use a multiple of {self.world} (it is the global batch, shared by all of them)")
        return batch_size // self.world

    @property
    def shard(self) -> Tuple[int, int]:
        """(rank, world), as BatchLoader takes it."""
        return self.rank, self.world

    # ------------------------------------------------------------------ collectives
    def average_gradients(self, params: Sequence[torch.Tensor], values: Sequence) -> List[float]:
        """Average the gradients of `params` (those that have one) and `values` (scalars or 0-d
        tensors: this rank's statistics) over the ranks with one flat all-reduce; returns the
        averaged values as floats. Every rank must pass the same parameters with gradients: in a
        search they all train the same architecture, so the same parameters have gradients."""
        if not self.distributed:
            return [float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for v in values]
        grads = [p.grad for p in params if p.grad is not None]
        device = grads[0].device if grads else self._device()
        stats = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device).detach().float().reshape(())
                             for v in values])
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [stats]) if grads else stats
        self._call("all_reduce", dist.all_reduce, flat)
        flat.div_(self.world)
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[offset:].tolist()

    def sum(self, values: Sequence[float]) -> List[float]:
        """Each value summed over the ranks."""
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device())
        self._call("all_reduce", dist.all_reduce, t)
        return t.tolist()

    def barrier(self) -> None:
        if self.distributed:
            self._call("barrier", dist.barrier)

    def broadcast_parameters(self, modules: Sequence[torch.nn.Module]) -> None:
        """Rank 0's parameters and buffers to every rank (one flat broadcast)."""
        if not self.distributed:
            return
        tensors = [t for m in modules for t in list(m.parameters()) + list(m.buffers())]
        by_dtype = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        with torch.no_grad():
            for group in by_dtype.values():
                flat = torch.cat([t.reshape(-1) for t in group])
                self._call("broadcast", dist.broadcast, flat, 0)
                offset = 0
                for t in group:
                    t.copy_(flat[offset: offset + t.numel()].view_as(t))
                    offset += t.numel()

    def from_main(self, fn: Callable[[], R]) -> R:
        """Rank 0 runs fn and every rank gets its result (e.g. the checkpoint a run resumes from,
        read once, so only rank 0 needs the file). If fn raises on rank 0, rank 0 raises that
        error and the other ranks raise StoppedOnRankZero."""
        if not self.distributed:
            return fn()
        box: List[object] = [None]
        error: Optional[BaseException] = None
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as exc:  # sent to the others as text, raised here as it is
                error = exc
                box[0] = ("error", f"{type(exc).__name__}: {exc}")
        self._call("broadcast", dist.broadcast_object_list, box, 0)
        if error is not None:
            raise error
        kind, payload = box[0]
        if kind == "error":
            raise StoppedOnRankZero(f"rank 0 stopped the run: {payload}")
        return payload

    @contextlib.contextmanager
    def communicating(self, what: str) -> Iterator[None]:
        """A block holding collectives natfast does not call itself (DistributedDataParallel's, in
        forward and backward): a communication failure in it becomes a RankFailure naming `what`."""
        try:
            yield
        except RuntimeError as exc:
            if not self.distributed or not _is_communication_error(exc):
                raise
            raise self._failure(what, exc) from None

    def _device(self) -> torch.device:
        # NCCL reduces CUDA tensors only; gloo CPU ones.
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except RuntimeError as exc:  # gloo and NCCL raise RuntimeError (DistBackendError) subclasses
            raise self._failure(what, exc) from None

    def _failure(self, what: str, exc: BaseException) -> RankFailure:
        timeout = (f"the {self.timeout_s:.0f} s timeout (--dist-timeout)" if self.timeout_s is not None
                   else "the process group's timeout")
        return RankFailure(f"rank {self.rank} of {self.world}: {what} across the processes failed: another "
                           f"rank died or did not answer within {timeout} ({_what_failed(exc)})")


def _is_communication_error(exc: BaseException) -> bool:
    """torch's distributed errors, and gloo's, which come as plain RuntimeErrors naming gloo."""
    return (isinstance(exc, getattr(dist, "DistError", ())) or
            re.search(r"gloo|nccl|connection (reset|closed)|timed out", str(exc), re.IGNORECASE) is not None)


def _what_failed(exc: BaseException) -> str:
    """The backend's own words, without its source location and advice: "[.../pair.cc:545] Read
    error [127.0.0.1]:5000: Connection reset by peer. This is typically caused by ..." ->
    "Read error [127.0.0.1]:5000: Connection reset by peer"."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    return text.split(". ")[0].rstrip(".")[:300]


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in TORCHRUN_ENV) and int(os.environ["WORLD_SIZE"]) > 1


def join(device: torch.device, timeout_s: float) -> Tuple[Ranks, torch.device]:
    """This process's Ranks and the device it computes on. Uses the process group the caller
    initialised if there is one, else makes one from torchrun's environment (NCCL for CUDA
    devices, gloo otherwise, with `timeout_s` on every collective); alone otherwise. Under
    torchrun a CUDA device without an index becomes this process's local GPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_available() or (not dist.is_initialized() and not launched_by_torchrun()):
        return Ranks(timeout_s=timeout_s), device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        except RuntimeError as exc:
            raise RankFailure(f"could not join the {os.environ['WORLD_SIZE']} processes at "
                              f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within "
                              f"{timeout_s:.0f} s ({_what_failed(exc)})") from None
    else:
        timeout_s = None
    if dist.get_backend() == "nccl" and device.type != "cuda":
        raise ValueError(f"the process group uses NCCL, which needs CUDA tensors, but the device is {device}: "
                         f"use --device cuda, or a gloo group for CPUs")
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, timeout_s), device


def main_rank_only() -> bool:
    """Whether this process is rank 0 (or alone), from the group or torchrun's environment: for
    code that prints before or after a run (the CLI)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def shutdown() -> None:
    """Destroy the process group at the end of a command (the CLI's; an API caller's group is theirs)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
