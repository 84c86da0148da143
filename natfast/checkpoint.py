"""Checkpoints: written atomically (a crash mid-write never loses the previous one) and read
with `torch.load(weights_only=True)`, so a checkpoint file can never run code."""
from __future__ import annotations

import os
from typing import Any, Dict, NamedTuple, Optional

import torch

FORMAT = "natfast-search-v1"
TRAIN_FORMAT = "natfast-train-v1"


class CheckpointError(ValueError):
    pass


def save(state: Dict[str, Any], path: str) -> None:
    """Write to a temporary file in the same folder, then rename over the old checkpoint; the
    previous checkpoint is kept as `<path>.prev`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    if os.path.exists(path):
        os.replace(path, f"{path}.prev")
    os.replace(tmp, path)


def check_fresh_start(out: str, resume: bool, overwrite: bool) -> str:
    """The checkpoint path in `out`; a run that would start afresh over a checkpoint already there
    (neither resume nor overwrite) is an error, raised before anything is written, so a finished
    run is never replaced by a new one by accident."""
    path = os.path.join(out, "checkpoint.pt")
    if os.path.exists(path) and not resume and not overwrite:
        raise CheckpointError(f"{out} already holds a checkpoint ({path}): pass --resume (resume=True) to "
                              f"continue it, --overwrite (overwrite=True) to start afresh over it, or another --out")
    return path


class RunStart(NamedTuple):
    path: str                          # OUT/checkpoint.pt, where the run saves
    state: Optional[Dict[str, Any]]    # the checkpoint to resume from; None: a fresh start


def start_run(out: str, resume: bool, overwrite: bool, expected: str = FORMAT) -> RunStart:
    """A search's or a training's start, the same rule for both: refuse to start afresh over a
    checkpoint (`check_fresh_start`), make `out`, and load the checkpoint when resuming one."""
    path = check_fresh_start(out, resume, overwrite)
    os.makedirs(out, exist_ok=True)
    return RunStart(path, load(path, expected) if resume and os.path.exists(path) else None)


def _first_sentence(message: str) -> str:
    """What failed, without torch's advice that follows it (for a file that is not a checkpoint,
    torch suggests loading it with weights_only=False, which no natfast checkpoint needs)."""
    line = message.splitlines()[0] if message else ""
    return line.split(". ")[0].rstrip(".")


def load(path: str, expected: str = FORMAT) -> Dict[str, Any]:
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist (run `natfast search --out DIR` to make one)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file; the message is what matters
        raise CheckpointError(f"checkpoint {path} is corrupt or not a natfast checkpoint: {type(exc).__name__}: "
                              f"{_first_sentence(str(exc))}") from None
    if not isinstance(state, dict) or state.get("format") != expected:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path} is not a natfast checkpoint of the expected kind "
                              f"(format {found!r}, expected {expected!r})")
    return state


def check_resumable(saved_config: Dict[str, Any], current_config: Dict[str, Any], keys) -> None:
    """A run resumes only from a checkpoint made with the same model- and data-defining settings."""
    mismatched = [k for k in keys if saved_config.get(k) != current_config.get(k)]
    if mismatched:
        raise CheckpointError("cannot resume: the checkpoint was made with different " + ", ".join(
            f"{k} ({saved_config.get(k)!r} there, {current_config.get(k)!r} now)" for k in mismatched))
