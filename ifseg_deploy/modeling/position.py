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


def max_text_tokens(max_source_positions: int) -> int:
    """The longest encoder text (prompt ids with ``<s>`` and ``</s>``) the position tables cover.

    Two tables bound it. ``embed_positions`` has ``max_source_positions + 2`` rows. The relative bias is
    tighter: :func:`token_bucket_index` log-buckets an offset ``d`` to ``ceil(log(d / mid) / log((P - 1) / mid)
    * (mid - 1)) + mid`` (P = ``max_source_positions``), which reaches the last of the ``2 * bucket_size - 1``
    rows at ``d = P - 1``. A text of L tokens has offsets up to L - 1, so L = P + 1 indexes past the table (a
    1200-name prompt of ~7000 tokens asks for row ~630 of 511).
    """
    return min(max_source_positions + 2, max_source_positions)


def grid_relative_index(h: int, w: int, bucket_size: int, device: torch.device | None = None) -> Tensor:
    """(h*w, h*w) indices of the 2-D offsets between cells of a raster-ordered h x w grid.

    Row-major offset (dr, dc) maps to ``(dr + b - 1) * (2b - 1) + (dc + b - 1)`` with b = ``bucket_size``.
    """
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    dr = rows[:, None] - rows[None, :] + bucket_size - 1
    dc = cols[:, None] - cols[None, :] + bucket_size - 1
    return dr * (2 * bucket_size - 1) + dc


def toeplitz_2d(offsets: Tensor, h: int, w: int) -> Tensor:
    """(2h-1, 2w-1, H) per-offset values -> (H, h*w, h*w) with [q, k] = offsets[qr - kr + h - 1, qc - kc + w - 1].

    Built with flips and ``unfold`` (views and one copy) instead of gathering h*w*h*w table rows: the gather's
    backward scatters millions of gradients into a few thousand rows, which dominated a CPU training step.
    """
    rows = offsets.flip(0).unfold(0, h, 1).flip(0)  # (h, 2w-1, H, h): [qr, :, :, kr]
    both = rows.flip(1).unfold(1, w, 1).flip(1)  # (h, w, H, h, w): [qr, qc, :, kr, kc]
    return both.permute(2, 0, 1, 3, 4).reshape(offsets.shape[-1], h * w, h * w)


def grid_relative_bias(table: Tensor, h: int, w: int, bucket_size: int) -> Tensor:
    """(H, h*w, h*w) relative bias of an h x w grid from a ``(2b-1)^2 (+3)`` x H table (b = ``bucket_size``).

    Equals ``table[grid_relative_index(h, w, b)].permute(2, 0, 1)`` for h, w <= b.
    """
    return toeplitz_2d(grid_offsets(table, h, w, bucket_size), h, w)


def grid_offsets(table: Tensor, h: int, w: int, bucket_size: int) -> Tensor:
    """(2h-1, 2w-1, H): the rows of a 2-D relative table that an h x w grid's offsets use."""
    b = bucket_size
    if h > b or w > b:
        raise ValueError(f"a {h}x{w} grid has offsets beyond the {b}-bucket table")
    offsets = table[: (2 * b - 1) ** 2].reshape(2 * b - 1, 2 * b - 1, -1)
    return offsets[b - h: b + h - 1, b - w: b + w - 1]


def relative_bias_on_grid(table: Tensor, src: int, dst: tuple[int, int], bucket_size: int,
                          always_resize: bool = False) -> Tensor:
    """(H, N, N) bias of the src x src pre-training grid, resized to ``dst`` when it differs (§1.4).

    ``always_resize`` takes the resize path for every ``dst`` (a resize to the same size is the identity), so
    that a dynamic-shape export traces one graph for all grids instead of a Python branch on the grid size.
    """
    offsets = grid_offsets(table, src, src, bucket_size)
    if not always_resize and tuple(dst) == (src, src):
        return toeplitz_2d(offsets, src, src)
    return resized_relative_bias(offsets, src, dst)


def interpolation_matrix(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """(n_out, n_in) weights of a 1-D bilinear resize with align_corners=False, taken from F.interpolate itself
    (resizing the identity), so they are the weights the official resize applies."""
    eye = torch.eye(n_in, dtype=like.dtype, device=like.device).reshape(1, n_in, n_in, 1)
    return F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=False)[0, :, :, 0].transpose(0, 1)


def resized_relative_bias(offsets: Tensor, src: int, dst: tuple[int, int]) -> Tensor:
    """The (H, q, k) relative bias of a src x src grid, bilinearly resized in the key and the query dims to dst.

    ``offsets`` is (2*src-1, 2*src-1, H) indexed by (dr + src - 1, dc + src - 1). Equal to resizing
    ``toeplitz_2d(offsets, src, src)`` over its key cells and then its query cells (the official two-step
    resize), but applies the separable resize to the Toeplitz structure row axis first, so the src^4 bias is
    never materialised.
    """
    h, w = dst
    heads = offsets.shape[-1]
    wr = interpolation_matrix(src, h, offsets)  # (h, src)
    wc = interpolation_matrix(src, w, offsets)  # (w, src)
    by_rows = offsets.flip(0).unfold(0, src, 1).flip(0)  # (src_qr, 2src-1, H, src_kr): [qr, dc, :, kr]
    rows = torch.einsum("ap,pcHq,bq->abcH", wr, by_rows, wr)  # (h, h, 2src-1, H)
    by_cols = rows.flip(2).unfold(2, src, 1).flip(2)  # (h, h, src_qc, H, src_kc)
    cells = torch.einsum("xp,abpHq,yq->Haxby", wc, by_cols, wc)  # (H, h_q, w_q, h_k, w_k)
    return cells.reshape(heads, h * w, h * w)


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


def resize_grid(x: Tensor, size: tuple[int, int], always_resize: bool = False) -> Tensor:
    """Bilinear resize (align_corners=False) of the last two dims; exact identity when the size is unchanged
    (``always_resize`` runs the resize anyway, for a shape-agnostic trace: same values)."""
    if not always_resize and tuple(x.shape[-2:]) == tuple(size):
        return x
    lead = x.shape[:-2]
    out = F.interpolate(x.reshape(-1, 1, *x.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def block_diagonal(a: Tensor, b: Tensor) -> Tensor:
    """(H, n, n) and (H, m, m) -> (H, n + m, n + m) with zeros off the two diagonal blocks."""
    heads, n, m = a.shape[0], a.shape[-1], b.shape[-1]
    top = torch.cat([a, a.new_zeros(heads, n, m)], dim=2)
    bottom = torch.cat([b.new_zeros(heads, m, n), b], dim=2)
    return torch.cat([top, bottom], dim=1)


def bias_anchor(x: Tensor) -> Tensor:
    """A (1,) zero that depends on ``x`` (a per-call input of the graph), finite whatever ``x`` holds."""
    return torch.nan_to_num(x.reshape(-1)[:1].detach().float() * 0.0, nan=0.0, posinf=0.0, neginf=0.0)


def anchored(table: Tensor, anchor: Tensor | None) -> Tensor:
    """``table + anchor``: the same values, but a graph runtime can no longer fold what is computed from it.

    ONNX Runtime folds every subgraph whose inputs are constants at session creation. For the position biases
    that means materialising each (heads, L, L) intermediate of every layer at once (14 GB at creation for
    OFA-Base at 512 x 512) and keeping the folded biases (~0.7 GB, more than the weights of an INT8 model);
    computed per call from their tables they cost a few small gathers and two matmuls per stack.
    """
    return table if anchor is None else table + anchor.to(table.dtype)


def gather_rows(table: Tensor, index: Tensor) -> Tensor:
    """(R, H) and an (n, m) index -> (H, n, m) with [h, i, j] = table[index[i, j], h].

    Exports as one ``Gather`` on axis 0 and a ``Transpose``: ONNX Runtime copies one H-wide row per index, 2.4x
    faster than gathering single elements from the (H, R) transpose on axis 1 (OFA-Base's (12, 1239, 1239)
    biases: 15 vs 35 ms per layer on 2 cores, measured in bench/README.md); ``table[:, index]`` exports as
    GatherND, slower still.
    """
    return table.index_select(0, index.reshape(-1)).reshape(*index.shape, table.shape[1]).permute(2, 0, 1)
