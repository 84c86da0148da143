"""The policy's last step: masked softmax over the allowed transitions, then sample (or argmax).

`masked_sample(logits, mask, uniform)` treats the last dimension as the P candidate targets of one
edge. Targets where `mask` is False get probability zero. With `uniform` (one value in [0, 1) per
row, drawn by the caller from its own generator) the action is sampled by inverse CDF:
the number of targets j with cdf[j] <= u, clamped to the last allowed target; with `uniform=None`
it is the argmax (first index on ties). Returns (actions int64, log pi(action), entropy), the last
two float32 and differentiable w.r.t. the logits (REINFORCE needs exactly these).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import dispatch


def masked_sample_reference(logits: torch.Tensor, mask: torch.Tensor, uniform: Optional[torch.Tensor] = None
                            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = mask.expand_as(logits)
    logp = torch.log_softmax(logits.float().masked_fill(~mask, float("-inf")), dim=-1)
    safe_logp = logp.masked_fill(~mask, 0.0)  # 0 * -inf would poison the entropy and its gradient
    p = safe_logp.exp() * mask
    entropy = -(p * safe_logp).sum(-1)
    if uniform is None:
        actions = logp.argmax(-1)
    else:
        cdf = p.detach().cumsum(-1)
        actions = (cdf <= uniform.unsqueeze(-1)).sum(-1)
        positions = torch.arange(logits.shape[-1], device=logits.device)
        last_allowed = torch.where(mask, positions, -1).amax(-1)
        actions = torch.minimum(actions, last_allowed)
    return actions, safe_logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1), entropy


dispatch.register("masked_sample", "reference", masked_sample_reference)


def masked_sample(logits: torch.Tensor, mask: torch.Tensor, uniform: Optional[torch.Tensor] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(actions, log-prob of each action, entropy) over the last dimension; see the module docstring."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    if uniform is not None and uniform.shape != logits.shape[:-1]:
        raise ValueError(f"uniform has shape {tuple(uniform.shape)}, expected {tuple(logits.shape[:-1])}")
    return dispatch.call("masked_sample", logits, mask, uniform)


def smoothed_sample(logits: torch.Tensor, mask: torch.Tensor, eps: float, uniform: Optional[torch.Tensor] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """masked_sample as the NAT authors' policy computes it: p = softmax over the allowed targets,
    plus `eps` on each allowed target (not renormalised), log p and the entropy -sum p log p of
    those, the action drawn from p / sum(p) (their torch.multinomial) or the argmax. Plain torch:
    it runs only with eps > 0 (the --prob-epsilon option)."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    mask = mask.expand_as(logits)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    logp_exact = torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    p = (logp_exact.masked_fill(~mask, float("-inf")).exp() + eps) * mask
    logp = torch.log(p.masked_fill(~mask, 1.0))        # 0 where not allowed: no -inf in the sums
    entropy = -(p * logp).sum(-1)
    if uniform is None:
        actions = p.argmax(-1)
    else:
        if uniform.shape != logits.shape[:-1]:
            raise ValueError(f"uniform has shape {tuple(uniform.shape)}, expected {tuple(logits.shape[:-1])}")
        q = p.detach()
        cdf = q.cumsum(-1) / q.sum(-1, keepdim=True)
        actions = (cdf <= uniform.unsqueeze(-1)).sum(-1)
        positions = torch.arange(logits.shape[-1], device=logits.device)
        actions = torch.minimum(actions, torch.where(mask, positions, -1).amax(-1))
    return actions, logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1), entropy
