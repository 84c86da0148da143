"""Deterministic second stage of split reductions: out[m] = sum over r of partial[r, m], r in order.

Weight gradients are reduced over the whole batch. Atomics would make them depend on scheduling;
instead each program writes one row of partial sums and this kernel adds the rows in a fixed order.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _sum_rows_kernel(part_ptr, out_ptr, R, M, BLOCK: tl.constexpr):
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < M
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for r in range(R):
        acc += tl.load(part_ptr + r * M + cols, mask=ok, other=0.0)
    tl.store(out_ptr + cols, acc.to(out_ptr.dtype.element_ty), mask=ok)


def sum_rows(partial: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """partial (R, M) contiguous float32 -> (M,) in `dtype`, rows added in order."""
    rows, cols = partial.shape
    out = torch.empty(cols, device=partial.device, dtype=dtype)
    block = 256
    _sum_rows_kernel[(triton.cdiv(cols, block),)](partial, out, rows, cols, BLOCK=block)
    return out
