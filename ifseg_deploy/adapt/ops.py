"""The three per-step operations of adaptation, bound to the model: word-map tokens, targets and the loss.

They delegate to ``ifseg_deploy.kernels`` (the fused Triton kernel on CUDA, its PyTorch reference elsewhere)."""

from __future__ import annotations

from torch import Tensor

from ..modeling.segofa import SegOFA


def wordmap_tokens(model: SegOFA, grid: Tensor, sizes: Tensor, size: int, impl: str = "auto") -> Tensor:
    """(B, size, size, d): class-table rows of the nearest-resized grid, + type embedding, patch LayerNorm."""
    from ..kernels import wordmap_embed

    ln = model.encoder.patch_layernorm_embedding
    return wordmap_embed(grid, sizes, model.decoder.seg_embed_tokens.weight, model.encoder.type_embedding.weight[1],
                         ln.weight, ln.bias, out_hw=(size, size), eps=ln.eps, impl=impl)


def wordmap_targets(grid: Tensor, sizes: Tensor, size: int) -> Tensor:
    """(B, size, size) int64 targets: the same grid nearest-resized separately to the loss resolution."""
    from ..kernels import nearest_targets

    return nearest_targets(grid, sizes, (size, size))


def segmentation_loss(logits: Tensor, target: Tensor, mode: str = "chunked") -> Tensor:
    """Mean cross-entropy of the logits bilinearly upsampled (align_corners=False) to the target's size.

    ``chunked`` never holds the full-resolution logits; ``reference`` materialises them (as the official code)."""
    from ..kernels import upsampled_cross_entropy, upsampled_cross_entropy_reference

    loss = upsampled_cross_entropy if mode == "chunked" else upsampled_cross_entropy_reference
    return loss(logits, target)

__all__ = ["segmentation_loss", "wordmap_targets", "wordmap_tokens"]
