"""PyTorch reference of the fused word-map embedding, and the nearest-resize helpers.

Everything here is plain tensor arithmetic on the grid's device: no Python loops over cells, no host syncs
(input values are only checked on the CPU, where a check costs no device round trip).

Nearest resize. IFSeg resizes each random U x V category grid with torchvision NEAREST, i.e. PyTorch's legacy
``F.interpolate(mode="nearest")``: ``src = min(floor(dst * scale), in - 1)`` with ``scale = float32(in / out)``.
We compute ``src = (dst * in) // out`` in integer arithmetic instead. The two agree exactly whenever ``out`` is
a power of two (the 32 x 32 word map and the 512 x 512 target): ``in / out`` is then a dyadic fraction that
float32 represents exactly, ``dst * scale`` is exact too (both factors are small), so ``floor`` sees the true
rational and ``src <= in - 1`` holds without the clamp. For other ``out`` PyTorch's rounded ``scale`` moves
the source index down by one at a few positions (e.g. in 26 -> out 22); we keep the exact rule there.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["nearest_ids", "nearest_targets", "wordmap_embed_reference", "wordmap_embed_core", "check_wordmap_inputs"]


def _out_hw(out_hw: tuple[int, int] | int) -> tuple[int, int]:
    h, w = (out_hw, out_hw) if isinstance(out_hw, int) else tuple(out_hw)
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise ValueError(f"out_hw must be two positive ints, got {out_hw!r}")
    return h, w


def _check_grid(grid: Tensor, sizes: Tensor) -> None:
    if grid.dim() != 3 or grid.is_floating_point() or grid.is_complex() or grid.dtype == torch.bool:
        raise ValueError(f"grid must be an integer tensor (B, S, S), got {tuple(grid.shape)} {grid.dtype}")
    if sizes.shape != (grid.shape[0], 2) or sizes.is_floating_point() or sizes.dtype == torch.bool:
        raise ValueError(f"sizes must be an integer tensor ({grid.shape[0]}, 2), got {tuple(sizes.shape)} "
                         f"{sizes.dtype}")
    if sizes.device != grid.device:
        raise ValueError(f"grid is on {grid.device} but sizes on {sizes.device}")
    if grid.device.type == "cpu" and sizes.numel():
        # Only on the CPU: on a GPU this would be a host sync every training step.
        lo, hi = sizes.amin(0), sizes.amax(0)
        if lo.min() < 1 or hi[0] > grid.shape[1] or hi[1] > grid.shape[2]:
            raise ValueError(f"sizes (U, V) must lie in 1..{grid.shape[1]} x 1..{grid.shape[2]}, "
                             f"got values in [{lo.tolist()}, {hi.tolist()}]")


def check_wordmap_inputs(grid: Tensor, sizes: Tensor, class_table: Tensor, type_embed: Tensor, ln_weight: Tensor,
                         ln_bias: Tensor) -> None:
    """Shapes, dtypes and devices of the fused op's inputs (and, on the CPU only, the value ranges)."""
    _check_grid(grid, sizes)
    if class_table.dim() != 2 or not class_table.is_floating_point():
        raise ValueError(f"class_table must be a float (M, d) tensor, got {tuple(class_table.shape)} "
                         f"{class_table.dtype}")
    d = class_table.shape[1]
    for name, t in (("type_embed", type_embed), ("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if t.shape != (d,) or not t.is_floating_point():
            raise ValueError(f"{name} must be a float ({d},) tensor, got {tuple(t.shape)} {t.dtype}")
    for name, t in (("class_table", class_table), ("type_embed", type_embed), ("ln_weight", ln_weight),
                    ("ln_bias", ln_bias)):
        if t.device != grid.device:
            raise ValueError(f"{name} is on {t.device} but grid on {grid.device}")
    if grid.device.type == "cpu" and grid.numel():
        ids = nearest_ids(grid, sizes, grid.shape[1:])  # exactly the cells that get read
        if ids.min() < 0 or ids.max() >= class_table.shape[0]:
            raise ValueError(f"grid holds class ids outside 0..{class_table.shape[0] - 1} in its valid region")


def _source_index(n_out: int, n_in: Tensor) -> Tensor:
    """(B,) input sizes -> (B, n_out) source indices floor(dst * in / out), exact in int64."""
    dst = torch.arange(n_out, device=n_in.device, dtype=torch.int64)
    return torch.div(dst[None, :] * n_in.long()[:, None], n_out, rounding_mode="floor")


def nearest_targets(grid: Tensor, sizes: Tensor, out_hw: tuple[int, int] | int = (512, 512)) -> Tensor:
    """Nearest-resize each valid region ``grid[b, :U_b, :V_b]`` to ``out_hw``: (B, H, W) int64 class ids.

    With the default 512 x 512 these are IFSeg's loss targets (resized from the grid itself, not from the
    32 x 32 word map, so target boundaries need not fall on 16-pixel patch edges)."""
    _check_grid(grid, sizes)
    return _nearest(grid, sizes, *_out_hw(out_hw))


def _nearest(grid: Tensor, sizes: Tensor, h: int, w: int) -> Tensor:
    rows = _source_index(h, sizes[:, 0])  # (B, H)
    cols = _source_index(w, sizes[:, 1])  # (B, W)
    batch = torch.arange(grid.shape[0], device=grid.device)
    return grid[batch[:, None, None], rows[:, :, None], cols[:, None, :]].long()


def nearest_ids(grid: Tensor, sizes: Tensor, out_hw: tuple[int, int] | int = (32, 32)) -> Tensor:
    """The word-map ids: the same nearest resize as :func:`nearest_targets`, to the 32 x 32 token grid."""
    return nearest_targets(grid, sizes, out_hw)


def wordmap_embed_reference(grid: Tensor, sizes: Tensor, class_table: Tensor, type_embed: Tensor,
                            ln_weight: Tensor, ln_bias: Tensor, out_hw: tuple[int, int] | int = (32, 32),
                            eps: float = 1e-5) -> Tensor:
    """(B, H, W, d) = LN(class_table[nearest_ids] + type_embed) * ln_weight + ln_bias, in the table's dtype.

    LayerNorm statistics and the affine are computed in fp32 whatever the dtypes. The class table is frozen:
    it is detached, so no gradient ever reaches it (the Triton kernel behaves the same)."""
    check_wordmap_inputs(grid, sizes, class_table, type_embed, ln_weight, ln_bias)
    return wordmap_embed_core(grid, sizes, class_table, type_embed, ln_weight, ln_bias, *_out_hw(out_hw), eps)


def wordmap_embed_core(grid: Tensor, sizes: Tensor, class_table: Tensor, type_embed: Tensor, ln_weight: Tensor,
                       ln_bias: Tensor, h: int, w: int, eps: float = 1e-5) -> Tensor:
    """:func:`wordmap_embed_reference` without the input checks (what the benchmark hands to torch.compile)."""
    ids = _nearest(grid, sizes, h, w)
    x = class_table.detach()[ids].float() + type_embed.float()
    mean = x.mean(dim=-1, keepdim=True)
    centred = x - mean
    var = centred.square().mean(dim=-1, keepdim=True)  # biased, as LayerNorm
    y = centred * torch.rsqrt(var + eps) * ln_weight.float() + ln_bias.float()
    return y.to(class_table.dtype)
