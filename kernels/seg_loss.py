"""Memory-lean segmentation loss: cross-entropy on bilinearly upsampled logits, computed in row chunks.

IFSeg's loss is ``F.cross_entropy(F.interpolate(logits.float(), (512, 512), mode="bilinear",
align_corners=False), target)``. Written that way it materialises the full-resolution fp32 logits
(B * M * 512 * 512 = 157 M elements for an ADE step of 4 images) and autograd keeps them, plus the log-softmax,
for the backward. ``upsampled_cross_entropy`` gives the same value and gradient while holding only one band of
output rows at a time.

How. Bilinear resizing is separable: ``up = Ay @ x @ Ax^T`` with interpolation matrices Ay (Ho, Hi) and
Ax (Wo, Wi) that have two non-zeros per row. A chunk of output rows [r0, r1) needs only the band of source rows
its Ay rows touch (2-5 rows for a chunk of IFSeg's x16 upsampling), so the chunk's logits are
``(Ay[r0:r1, band] @ x[:, :, band]) @ Ax^T``; from them we take the log-sum-exp and the target logit and drop
the chunk. The backward recomputes each chunk, forms ``softmax - onehot`` scaled by the valid-pixel mask and the
upstream gradient, and applies the adjoint: ``Ay[r0:r1, band]^T @ (dz @ Ax)`` accumulated into the low-res
gradient. Only the per-pixel log-sum-exp (1/M of the full size) is saved, and nothing else of full-resolution
size is ever allocated, whatever the resize ratio. Every step is a dense matmul or an elementwise op, so the
result is deterministic on the GPU too (an index_add scatter would use atomics). Dense Ax costs Wi
multiply-adds per output element instead of 2, which a GPU hides: the chunk is bound by writing its output.

The interpolation weights follow PyTorch's ``align_corners=False`` rule (``src = (dst + 0.5) * in / out - 0.5``,
clamped at 0) with PyTorch's own rounding, so they are exactly the weights F.interpolate uses (see
``bilinear_matrix``); the loss differs from the plain formula only in the order of the sums.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["upsampled_cross_entropy", "upsampled_cross_entropy_reference", "bilinear_matrix", "DEFAULT_CHUNK_ELEMS"]

# Elements of one chunk of upsampled logits (64 MiB in fp32). For an ADE step (4 x 150 x 512 x 512) that is
# 54 of 512 rows, so ~10 chunks: few enough that launch overhead stays small on a GPU, while the chunk and
# its temporaries (softmax, gradient) stay well below one full-resolution copy.
DEFAULT_CHUNK_ELEMS = 1 << 24


def bilinear_matrix(n_in: int, n_out: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(n_out, n_in) matrix A with ``A @ v`` = 1-D bilinear resize of v, align_corners=False (on the CPU)."""
    # PyTorch computes scale = float(in) / out in the op's accumulation type (float for fp32/fp16/bf16) and
    # src = scale * (dst + 0.5) - 0.5 as one fused multiply-add (the compiler contracts it), i.e. rounded once.
    # Forming the product exactly in fp64 and rounding once reproduces its weights bit for bit (checked against
    # F.interpolate for every in <= 39, out <= 79). fp64 logits get fp64 weights.
    cdtype = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.tensor(n_in, dtype=cdtype) / n_out
    dst = torch.arange(n_out, dtype=cdtype) + 0.5  # exact
    src = (scale.double() * dst.double() - 0.5).to(cdtype).clamp_min(0)
    i0 = src.long()  # truncation == floor for src >= 0
    lam1 = (src - i0).clamp(0, 1)
    i1 = torch.clamp(i0 + 1, max=n_in - 1)
    a = torch.zeros(n_out, n_in, dtype=cdtype)
    rows = torch.arange(n_out)
    a.index_put_((rows, i0), 1 - lam1, accumulate=True)
    a.index_put_((rows, i1), lam1, accumulate=True)  # at the last row i1 == i0 and the weights add to 1
    return a.to(dtype)


def _bands(a: Tensor, chunk: int) -> list[tuple[int, int, int, int]]:
    """Output-row chunks [r0, r1) with the source-row band [lo, hi) holding all their non-zero weights."""
    nz = a != 0
    first = nz.int().argmax(dim=1)
    last = a.shape[1] - 1 - nz.flip(1).int().argmax(dim=1)
    out = []
    for r0 in range(0, a.shape[0], chunk):
        r1 = min(a.shape[0], r0 + chunk)
        out.append((r0, r1, int(first[r0:r1].min()), int(last[r0:r1].max()) + 1))
    return out


def _chunk_rows(b: int, m: int, wo: int, ho: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        return min(chunk_rows, ho)
    return max(1, min(ho, DEFAULT_CHUNK_ELEMS // max(1, b * m * wo)))


class _UpsampledCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, ignore_index: int, chunk_rows: int | None) -> Tensor:
        cdtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        x = logits.detach().to(cdtype)
        b, m, hi, wi = x.shape
        ho, wo = target.shape[-2:]
        ay_cpu = bilinear_matrix(hi, ho, cdtype)
        bands = _bands(ay_cpu, _chunk_rows(b, m, wo, ho, chunk_rows))  # from shapes only: no device sync
        ay = ay_cpu.to(x.device)
        ax = bilinear_matrix(wi, wo, cdtype).to(x.device)
        lse = torch.empty(b, ho, wo, dtype=cdtype, device=x.device)
        total = torch.zeros((), dtype=cdtype, device=x.device)
        count = torch.zeros((), dtype=cdtype, device=x.device)
        for r0, r1, lo, hi_ in bands:
            z = torch.matmul(torch.matmul(ay[r0:r1, lo:hi_], x[:, :, lo:hi_]), ax.T)  # (B, M, R, Wo)
            t = target[:, r0:r1]
            valid = t != ignore_index
            safe = torch.where(valid, t, 0).unsqueeze(1)
            lse_c = torch.logsumexp(z, dim=1)
            lse[:, r0:r1] = lse_c
            total += torch.where(valid, lse_c - z.gather(1, safe).squeeze(1), 0).sum()
            count += valid.sum()
            del z
        ctx.save_for_backward(logits, target, lse, count)
        ctx.setup = (ignore_index, bands, ay, ax, cdtype)
        return total / count  # all pixels ignored -> nan, as F.cross_entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        logits, target, lse, count = ctx.saved_tensors
        ignore_index, bands, ay, ax, cdtype = ctx.setup
        x = logits.detach().to(cdtype)
        dx = torch.zeros_like(x)
        scale = grad.to(cdtype) / count
        for r0, r1, lo, hi_ in bands:
            band = ay[r0:r1, lo:hi_]
            z = torch.matmul(torch.matmul(band, x[:, :, lo:hi_]), ax.T)
            t = target[:, r0:r1]
            valid = t != ignore_index
            safe = torch.where(valid, t, 0).unsqueeze(1)
            dz = torch.exp_(z.sub_(lse[:, r0:r1].unsqueeze(1)))  # softmax, in place of z
            dz.scatter_add_(1, safe, torch.full_like(safe, -1, dtype=cdtype))
            dz.mul_((valid * scale).unsqueeze(1))
            dx[:, :, lo:hi_] += torch.matmul(band.T, torch.matmul(dz, ax))
            del z, dz
        return dx.to(logits.dtype), None, None, None


def upsampled_cross_entropy(logits: Tensor, target: Tensor, *, ignore_index: int = -100,
                            chunk_rows: int | None = None) -> Tensor:
    """Mean cross-entropy of ``logits`` (B, M, h, w) bilinearly upsampled (align_corners=False) to the size of
    ``target`` (B, H, W) int64, over the pixels whose target is not ``ignore_index``.

    Equals :func:`upsampled_cross_entropy_reference` (value and gradient, up to rounding) without holding the
    (B, M, H, W) upsampled logits: they are made ``chunk_rows`` output rows at a time (default: chunks of
    ``DEFAULT_CHUNK_ELEMS`` elements). Computed in fp32 (fp64 for fp64 logits); the gradient has the logits' dtype.
    """
    if logits.dim() != 4 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float (B, M, h, w) tensor, got {tuple(logits.shape)} {logits.dtype}")
    if target.dim() != 3 or target.shape[0] != logits.shape[0] or target.dtype != torch.long:
        raise ValueError(f"target must be an int64 ({logits.shape[0]}, H, W) tensor, got {tuple(target.shape)} "
                         f"{target.dtype}")
    if target.device != logits.device:
        raise ValueError(f"logits are on {logits.device} but target on {target.device}")
    return _UpsampledCE.apply(logits, target, int(ignore_index), chunk_rows)


def upsampled_cross_entropy_reference(logits: Tensor, target: Tensor, *, ignore_index: int = -100) -> Tensor:
    """The plain formulation (materialises the full-resolution fp32 logits); for tests and benchmarks."""
    up = torch.nn.functional.interpolate(logits.float(), size=tuple(target.shape[-2:]), mode="bilinear",
                                         align_corners=False)
    return torch.nn.functional.cross_entropy(up, target, ignore_index=ignore_index)
