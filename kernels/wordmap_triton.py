"""Triton implementation of the fused word-map embedding (forward and backward kernels).

Each program normalises a tile of BLOCK_R output rows x BLOCK_D (next power of two >= d) channels: it derives
(b, i, j) from the row number, finds the source cell with the integer nearest rule of
``wordmap_reference``, reads the class id from the padded grid, gathers that class-table row, adds the type
embedding and applies LayerNorm with fp32 statistics. Channels past d are masked, so d need not be a power of
two.

The backward kernel recomputes the gather and the statistics (cheaper than saving (N, d) activations) and
reduces dgamma, dbeta and dtype over its own span of rows into one fp32 partial row per program; a torch sum
over programs finishes the job. We chose this two-pass reduction over atomics: float atomics add in whatever
order the hardware schedules, so gradients would differ from run to run, while here the partial layout depends
only on the shapes and the sum is a fixed-order reduction, hence bitwise reproducible. The partial buffer is
small (programs x 3 x d fp32, e.g. 128 x 3 x 768 for a 4 x 32 x 32 word map).

Interpreter. ``triton.jit`` picks compiled or interpreted mode when it decorates, and triton's own
``tl.sum`` & co. are decorated when ``triton`` is first imported, so ``TRITON_INTERPRET=1`` must be in the
environment before the process first imports triton; setting it later has no effect (checked: the interpreter
then fails inside ``tl.sum``). ``interpret_mode()`` reports which mode these kernels were built in.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.jit import JITFunction

from .wordmap_reference import _out_hw, check_wordmap_inputs

__all__ = ["wordmap_embed_triton", "interpret_mode"]

_TILE_ELEMS = 4096  # elements per program tile: BLOCK_R * BLOCK_D
_BWD_TILES = 8  # row tiles each backward program reduces before writing its partial sums


def interpret_mode() -> bool:
    """Whether these kernels run through Triton's CPU interpreter (``TRITON_INTERPRET=1`` at triton's import)."""
    return not isinstance(_wordmap_fwd, JITFunction)


@triton.jit
def _wordmap_fwd(grid_ptr, sizes_ptr, table_ptr, type_ptr, w_ptr, b_ptr, out_ptr,
                 n_rows, D, H, W, stride_gb, stride_gu, stride_gv, stride_sb, stride_su, stride_tm, eps,
                 BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    mask = row_ok[:, None] & col_ok[None, :]

    # row -> (b, i, j) -> source cell (floor(i * U / H), floor(j * V / W)) -> class id
    b = rows // (H * W)
    p = rows % (H * W)
    u = tl.load(sizes_ptr + b * stride_sb, mask=row_ok, other=1)
    v = tl.load(sizes_ptr + b * stride_sb + stride_su, mask=row_ok, other=1)
    si = ((p // W) * u) // H
    sj = ((p % W) * v) // W
    cls = tl.load(grid_ptr + b * stride_gb + si * stride_gu + sj * stride_gv, mask=row_ok, other=0).to(tl.int64)

    x = tl.load(table_ptr + cls[:, None] * stride_tm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x += tl.load(type_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    mean = tl.sum(tl.where(mask, x, 0.0), axis=1) / D
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
    gamma = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    beta = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * gamma[None, :] + beta[None, :]
    out_offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
    tl.store(out_ptr + out_offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _wordmap_bwd(grid_ptr, sizes_ptr, table_ptr, type_ptr, w_ptr, dy_ptr, part_ptr,
                 n_rows, D, H, W, stride_gb, stride_gu, stride_gv, stride_sb, stride_su, stride_tm, eps,
                 BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, TILES: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    t_emb = tl.load(type_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    gamma = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    acc_dt = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_db = tl.zeros([BLOCK_D], dtype=tl.float32)
    for k in range(TILES):
        rows = (pid * TILES + k) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        # recompute exactly what the forward did
        b = rows // (H * W)
        p = rows % (H * W)
        u = tl.load(sizes_ptr + b * stride_sb, mask=row_ok, other=1)
        v = tl.load(sizes_ptr + b * stride_sb + stride_su, mask=row_ok, other=1)
        si = ((p // W) * u) // H
        sj = ((p % W) * v) // W
        cls = tl.load(grid_ptr + b * stride_gb + si * stride_gu + sj * stride_gv, mask=row_ok,
                      other=0).to(tl.int64)
        x = tl.load(table_ptr + cls[:, None] * stride_tm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x += t_emb[None, :]
        mean = tl.sum(tl.where(mask, x, 0.0), axis=1) / D
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
        xhat = xc * rstd[:, None]  # zero on masked rows and columns

        dy_offs = rows.to(tl.int64)[:, None] * D + cols[None, :]
        dy = tl.load(dy_ptr + dy_offs, mask=mask, other=0.0).to(tl.float32)
        g = dy * gamma[None, :]
        mean_g = tl.sum(g, axis=1) / D
        mean_gx = tl.sum(g * xhat, axis=1) / D
        dx = tl.where(mask, (g - mean_g[:, None] - xhat * mean_gx[:, None]) * rstd[:, None], 0.0)
        acc_dt += tl.sum(dx, axis=0)
        acc_dw += tl.sum(dy * xhat, axis=0)
        acc_db += tl.sum(dy, axis=0)
    base = part_ptr + pid.to(tl.int64) * 3 * D
    tl.store(base + cols, acc_dt, mask=col_ok)
    tl.store(base + D + cols, acc_dw, mask=col_ok)
    tl.store(base + 2 * D + cols, acc_db, mask=col_ok)


def _tiles(d: int) -> tuple[int, int, int]:
    block_d = triton.next_power_of_2(d)
    block_r = max(1, min(64, _TILE_ELEMS // block_d))
    num_warps = 4 if block_r * block_d <= 4096 else 8
    return block_r, block_d, num_warps


def _common_args(grid: Tensor, sizes: Tensor, table: Tensor, h: int, w: int) -> tuple:
    n_rows = grid.shape[0] * h * w
    return (n_rows, table.shape[1], h, w, grid.stride(0), grid.stride(1), grid.stride(2), sizes.stride(0),
            sizes.stride(1), table.stride(0))


class _WordmapEmbed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grid: Tensor, sizes: Tensor, table: Tensor, type_embed: Tensor, ln_weight: Tensor,
                ln_bias: Tensor, h: int, w: int, eps: float) -> Tensor:
        block_r, block_d, num_warps = _tiles(table.shape[1])
        args = _common_args(grid, sizes, table, h, w)
        out = torch.empty(grid.shape[0], h, w, table.shape[1], device=table.device, dtype=table.dtype)
        if out.numel():
            launch = _wordmap_fwd[(triton.cdiv(args[0], block_r),)]
            launch(grid, sizes, table, type_embed, ln_weight, ln_bias, out, *args, eps, BLOCK_R=block_r,
                   BLOCK_D=block_d, num_warps=num_warps)
        ctx.save_for_backward(grid, sizes, table, type_embed, ln_weight, ln_bias)
        ctx.hw_eps = (h, w, eps)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor):
        grid, sizes, table, type_embed, ln_weight, ln_bias = ctx.saved_tensors
        h, w, eps = ctx.hw_eps
        block_r, block_d, num_warps = _tiles(table.shape[1])
        args = _common_args(grid, sizes, table, h, w)
        programs = max(1, triton.cdiv(args[0], block_r * _BWD_TILES))
        partial = torch.zeros(programs, 3, table.shape[1], device=table.device, dtype=torch.float32)
        if dy.numel():
            launch = _wordmap_bwd[(programs,)]
            launch(grid, sizes, table, type_embed, ln_weight, dy.contiguous(), partial, *args, eps, BLOCK_R=block_r,
                   BLOCK_D=block_d, TILES=_BWD_TILES, num_warps=num_warps)
        d_type, d_weight, d_bias = partial.sum(dim=0).unbind(0)  # fixed-order: deterministic
        return (None, None, None, d_type.to(type_embed.dtype), d_weight.to(ln_weight.dtype),
                d_bias.to(ln_bias.dtype), None, None, None)


def wordmap_embed_triton(grid: Tensor, sizes: Tensor, class_table: Tensor, type_embed: Tensor, ln_weight: Tensor,
                         ln_bias: Tensor, out_hw: tuple[int, int] | int = (32, 32), eps: float = 1e-5) -> Tensor:
    """The Triton kernel behind :func:`wordmap_embed` (same arguments and result as the reference)."""
    check_wordmap_inputs(grid, sizes, class_table, type_embed, ln_weight, ln_bias)
    h, w = _out_hw(out_hw)
    if not class_table.is_cuda and not interpret_mode():
        raise RuntimeError(f"the Triton word-map kernel needs CUDA tensors (got {class_table.device}); on the CPU "
                           "it runs only under Triton's interpreter: set TRITON_INTERPRET=1 before triton is first "
                           "imported (slow, for tests), or use impl='torch'")
    table = class_table.detach()
    if table.stride(1) != 1:
        table = table.contiguous()  # the kernel reads rows as contiguous vectors
    return _WordmapEmbed.apply(grid, sizes, table, type_embed.contiguous(), ln_weight.contiguous(),
                               ln_bias.contiguous(), h, w, float(eps))
