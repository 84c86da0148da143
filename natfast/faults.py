"""Stopping a run that has gone wrong without losing its last good checkpoint."""
from __future__ import annotations

import math
import os
from typing import Dict, Iterable, Optional

import torch


class NonFiniteError(RuntimeError):
    """A loss, reward, gradient or parameter became NaN or infinite: the run stopped before saving it."""


def check_finite(values: Dict[str, object], where: str, checkpoint: Optional[str]) -> None:
    """Raise NonFiniteError naming `where` (e.g. the step) and the bad values if any float in
    `values` is NaN or infinite. Called before anything of that step is saved, so the checkpoint
    on disk (if any) is the last good state."""
    bad = {k: v for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        _stop(where, ", ".join(f"{k} is {v}" for k, v in bad.items()), checkpoint)


def check_parameters(modules: Iterable[torch.nn.Module], where: str, checkpoint: Optional[str]) -> None:
    """Raise NonFiniteError if any parameter of `modules` is NaN or infinite (an update can
    overflow while the loss was finite): called before a checkpoint is written, so none holds one."""
    params = [p.detach() for m in modules for p in m.parameters()]
    if params and not math.isfinite(float(torch.nn.utils.get_total_norm(params, norm_type=math.inf))):
        _stop(where, "the parameters are no longer finite (the last update overflowed)", checkpoint)


def _stop(where: str, what: str, checkpoint: Optional[str]) -> None:
    kept = (f"the last good checkpoint {checkpoint} is kept as it was" if checkpoint and os.path.exists(checkpoint)
            else "no checkpoint had been written yet")
    raise NonFiniteError(f"{where}: {what}; the run stopped and {kept} (a smaller learning rate or "
                         f"gradient clip may help)")
