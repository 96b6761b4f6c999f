"""The fused word-map embedding: padded category grid -> normalised word-map tokens, with dispatch.

``wordmap_embed`` computes, for every output cell (b, i, j) of ``out_hw``::

    c = grid[b, floor(i * U_b / H), floor(j * V_b / W)]
    out[b, i, j] = LayerNorm(class_table[c] + type_embed) * ln_weight + ln_bias      (fp32 statistics)

i.e. nearest resize (PyTorch's legacy rule, see ``wordmap_reference``) -> class-table row gather -> + image type
embedding -> patch LayerNorm, returned in the class table's dtype. These are the encoder's image tokens
(``SegOFA.run_tokens(..., embedded=True)``). Gradients flow to ``type_embed``, ``ln_weight`` and ``ln_bias``;
the class table is frozen and gets none.
"""

from __future__ import annotations

import functools
from typing import Literal

from torch import Tensor

from .wordmap_reference import wordmap_embed_reference

__all__ = ["wordmap_embed", "triton_available", "resolve_impl"]

Impl = Literal["auto", "triton", "torch"]


@functools.lru_cache(maxsize=1)
def _triton_import_error() -> str | None:
    try:
        from . import wordmap_triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken triton install raising something else
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_available() -> bool:
    """Whether the Triton kernel module imports (triton installed and usable)."""
    return _triton_import_error() is None


def resolve_impl(impl: Impl, device_type: str) -> str:
    """'triton' or 'torch' for a tensor on ``device_type``: auto = Triton on CUDA when it imports, else torch."""
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"impl must be 'auto', 'triton' or 'torch', got {impl!r}")
    if impl == "auto":
        return "triton" if device_type == "cuda" and triton_available() else "torch"
    if impl == "triton" and not triton_available():
        raise RuntimeError(f"impl='triton' but triton cannot be imported ({_triton_import_error()}); "
                           "install it with pip install 'ifseg-deploy[triton]', or use impl='torch'")
    return impl


def wordmap_embed(grid: Tensor, sizes: Tensor, class_table: Tensor, type_embed: Tensor, ln_weight: Tensor,
                  ln_bias: Tensor, out_hw: tuple[int, int] | int = (32, 32), eps: float = 1e-5, *,
                  impl: Impl = "auto") -> Tensor:
    """Fused word-map embedding, (B, S, S) grid + (B, 2) sizes -> (B, H, W, d).

    ``impl="auto"`` runs the Triton kernel on CUDA tensors when triton imports and the PyTorch reference
    otherwise; ``"triton"`` forces the kernel (on CPU tensors only under ``TRITON_INTERPRET=1``, else a
    RuntimeError says so); ``"torch"`` forces the reference."""
    if resolve_impl(impl, class_table.device.type) == "triton":
        from .wordmap_triton import wordmap_embed_triton

        return wordmap_embed_triton(grid, sizes, class_table, type_embed, ln_weight, ln_bias, out_hw, eps)
    return wordmap_embed_reference(grid, sizes, class_table, type_embed, ln_weight, ln_bias, out_hw, eps)
