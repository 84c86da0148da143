"""Masked softmax over allowed transitions, sampling (inverse CDF of a given uniform) or argmax,
log-probability of the chosen target and entropy, for M rows of P logits at once.

The action is #{j : cdf[j] <= u}, clamped to the last allowed target (cdf rounding may leave
cdf[-1] < u); masked targets have zero mass, so this never lands on one. Ties in argmax go to the
first index. The backward needs only the logits, the mask and the actions:
  d log p[a] / dz = onehot(a) - p,   d H / dz = -p * (log p + H)   (zero where masked).
"""
import torch
import triton
import triton.language as tl

ROWS = 32


@triton.jit
def _softmax(logits_ptr, mask_ptr, M, P, R: tl.constexpr, PP: tl.constexpr):
    rows = tl.program_id(0) * R + tl.arange(0, R)
    cols = tl.arange(0, PP)
    inside = (rows[:, None] < M) & (cols[None, :] < P)
    addr = rows[:, None].to(tl.int64) * P + cols[None, :]
    allowed = (tl.load(mask_ptr + addr, mask=inside, other=0) != 0) & inside
    z = tl.load(logits_ptr + addr, mask=allowed, other=0.0).to(tl.float32)
    z = tl.where(allowed, z, float("-inf"))
    # Rows with no allowed target (padding rows) get a finite max so that nothing turns into NaN.
    zmax = tl.maximum(tl.max(z, axis=1), -3.0e38)
    e = tl.where(allowed, tl.exp(z - zmax[:, None]), 0.0)
    total = tl.maximum(tl.sum(e, axis=1), 1e-38)
    logp = tl.where(allowed, z - zmax[:, None] - tl.log(total)[:, None], 0.0)
    p = e / total[:, None]
    entropy = -tl.sum(p * logp, axis=1)
    return rows, cols, allowed, p, logp, entropy


@triton.jit
def _fwd_kernel(logits_ptr, mask_ptr, u_ptr, act_ptr, logp_ptr, ent_ptr, M, P,
                GREEDY: tl.constexpr, R: tl.constexpr, PP: tl.constexpr):
    rows, cols, allowed, p, logp, entropy = _softmax(logits_ptr, mask_ptr, M, P, R, PP)
    row_ok = rows < M
    if GREEDY:
        action = tl.argmax(tl.where(allowed, logp, float("-inf")), axis=1)
    else:
        u = tl.load(u_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        # cdf[r, j] = sum_{i <= j} p[r, i], as a masked sum over a (R, PP, PP) tile (P is small).
        lower = cols[None, :, None] >= cols[None, None, :]
        cdf = tl.sum(tl.where(lower, p[:, None, :], 0.0), axis=2)
        below = (cdf <= u[:, None]) & (cols[None, :] < P)
        action = tl.sum(below.to(tl.int32), axis=1)
        last = tl.max(tl.where(allowed, cols[None, :], -1), axis=1)
        action = tl.minimum(action, last)
    chosen = cols[None, :] == action[:, None]
    tl.store(act_ptr + rows, action.to(tl.int64), mask=row_ok)
    tl.store(logp_ptr + rows, tl.sum(tl.where(chosen, logp, 0.0), axis=1), mask=row_ok)
    tl.store(ent_ptr + rows, entropy, mask=row_ok)


@triton.jit
def _bwd_kernel(logits_ptr, mask_ptr, act_ptr, g_logp_ptr, g_ent_ptr, dz_ptr, M, P,
                R: tl.constexpr, PP: tl.constexpr):
    rows, cols, allowed, p, logp, entropy = _softmax(logits_ptr, mask_ptr, M, P, R, PP)
    row_ok = rows < M
    action = tl.load(act_ptr + rows, mask=row_ok, other=-1)
    g_logp = tl.load(g_logp_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    g_ent = tl.load(g_ent_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    onehot = (cols[None, :] == action[:, None]).to(tl.float32)
    dz = g_logp[:, None] * (onehot - p) - g_ent[:, None] * p * (logp + entropy[:, None])
    dz = tl.where(allowed, dz, 0.0)
    addr = rows[:, None].to(tl.int64) * P + cols[None, :]
    tl.store(dz_ptr + addr, dz, mask=(rows[:, None] < M) & (cols[None, :] < P))


def _meta(p: int):
    return dict(R=ROWS, PP=max(2, triton.next_power_of_2(p)))


def forward(logits: torch.Tensor, mask: torch.Tensor, uniform):
    """logits (M, P) contiguous, mask (M, P) bool contiguous, uniform (M,) float32 or None (argmax).
    Returns actions int64, log-prob of each action and entropy (float32)."""
    m, p = logits.shape
    actions = torch.empty(m, device=logits.device, dtype=torch.int64)
    logp = torch.empty(m, device=logits.device, dtype=torch.float32)
    ent = torch.empty(m, device=logits.device, dtype=torch.float32)
    greedy = uniform is None
    _fwd_kernel[(triton.cdiv(m, ROWS),)](logits, mask.view(torch.uint8), logp if greedy else uniform, actions, logp, ent, m, p,
                                         GREEDY=greedy, **_meta(p))
    return actions, logp, ent


def backward(logits, mask, actions, g_logp, g_ent) -> torch.Tensor:
    """d loss / d logits, in the logits' dtype. Written in float32 and cast once here: the policy's
    logits are a few hundred values, and Triton's interpreter stored a bfloat16 dz from this kernel
    as garbage (NaN and denormals), while float32 is exact on both."""
    m, p = logits.shape
    dz = torch.empty(logits.shape, device=logits.device, dtype=torch.float32)
    _bwd_kernel[(triton.cdiv(m, ROWS),)](logits, mask.view(torch.uint8), actions, g_logp, g_ent, dz, m, p, **_meta(p))
    return dz.to(logits.dtype)
