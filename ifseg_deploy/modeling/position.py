"""Relative-position bucket indices and the bilinear resizing of position tables and biases.

OFA has no additive position embeddings: positions only enter attention as biases. Text tokens get a 1-D
log-bucketed relative bias, image tokens a 2-D relative bias on a (2b-1) x (2b-1) offset table, and both get a
TUPE-style absolute bias built from LayerNorm'd position tables. For grids other than the pre-training grid the
official code resizes tables and biases bilinearly; the helpers below do the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def token_bucket_index(length: int, bucket_size: int = 256, max_position: int = 1024,
                       device: torch.device | None = None) -> Tensor:
    """(length, length) indices into a 1-D relative table of ``2 * bucket_size - 1`` rows.

    Offsets with |d| <= bucket_size/2 map to themselves; larger ones are log-bucketed up to ``max_position``.
    The log is taken in float32 exactly as the official code does, because ``ceil`` near a bucket boundary
    would otherwise land differently.
    """
    pos = torch.arange(length, device=device)
    rel = pos[:, None] - pos[None, :]
    mid = bucket_size // 2
    magnitude = rel.abs()
    # Offsets inside the exact window are clamped to mid-1 so the log below stays finite; they are not used.
    clamped = torch.where(magnitude < mid, torch.full_like(magnitude, mid - 1), magnitude)
    scaled = torch.log(clamped.float() / mid) / math.log((max_position - 1) / mid) * (mid - 1)
    log_bucket = (torch.ceil(scaled) + mid).int().long()
    bucket = torch.where(clamped <= mid, rel, log_bucket * torch.sign(rel))
    return bucket + bucket_size - 1


def grid_relative_index(h: int, w: int, bucket_size: int, device: torch.device | None = None) -> Tensor:
    """(h*w, h*w) indices of the 2-D offsets between cells of a raster-ordered h x w grid.

    Row-major offset (dr, dc) maps to ``(dr + b - 1) * (2b - 1) + (dc + b - 1)`` with b = ``bucket_size``.
    """
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    dr = rows[:, None] - rows[None, :] + bucket_size - 1
    dc = cols[:, None] - cols[None, :] + bucket_size - 1
    return dr * (2 * bucket_size - 1) + dc


def seg_relative_index(bucket_size: int, device: torch.device | None = None) -> Tensor:
    """(1 + b*b)^2 indices for the decoder's seg grid with a leading BOS position.

    The BOS row, the BOS column and the BOS-BOS cell use the three extra table rows after the
    ``(2b-1)^2`` offsets, in the order of the official ``make_image_bucket_position``.
    """
    n_offsets = (2 * bucket_size - 1) ** 2
    grid = grid_relative_index(bucket_size, bucket_size, bucket_size, device)
    index = torch.empty(grid.shape[0] + 1, grid.shape[1] + 1, dtype=grid.dtype, device=device)
    index[1:, 1:] = grid
    index[0, :] = n_offsets
    index[:, 0] = n_offsets + 1
    index[0, 0] = n_offsets + 2
    return index


def resize_grid(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (align_corners=False) of the last two dims; exact identity when the size is unchanged."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    lead = x.shape[:-2]
    out = F.interpolate(x.reshape(-1, 1, *x.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def resize_pair_bias(bias: Tensor, src: tuple[int, int], dst: tuple[int, int]) -> Tensor:
    """Resize a (H, q, k) bias over a src grid to a dst grid, in the key dims and then the query dims.

    ``q`` and ``k`` are raster-ordered grid cells. Bilinear resizing is separable and linear, so this equals the
    official two-step rearrange/interpolate sequence.
    """
    if src == dst:
        return bias
    heads = bias.shape[0]
    b = bias.reshape(heads, src[0] * src[1], *src)
    b = resize_grid(b, dst)  # keys
    b = b.reshape(heads, *src, dst[0] * dst[1]).permute(0, 3, 1, 2)
    b = resize_grid(b, dst)  # queries
    return b.reshape(heads, dst[0] * dst[1], dst[0] * dst[1]).transpose(1, 2)
