"""The per-step operations of adaptation, bound to the model: word-map tokens, targets and the loss, and the
:class:`~.step.TrainStep` that trains on word maps with them.

They delegate to ``ifseg_deploy.kernels`` (the fused Triton kernel on CUDA, its PyTorch reference elsewhere)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..modeling.segofa import SegOFA
from .config import AdaptConfig
from .step import TrainStep


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


def segmentation_loss(logits: Tensor, target: Tensor, mode: str = "chunked", ignore_index: int = -100) -> Tensor:
    """Mean cross-entropy of the logits bilinearly upsampled (align_corners=False) to the target's size, over the
    pixels whose target is not ``ignore_index``.

    ``chunked`` never holds the full-resolution logits; ``reference`` materialises them (as the official code)."""
    from ..kernels import upsampled_cross_entropy, upsampled_cross_entropy_reference

    loss = upsampled_cross_entropy if mode == "chunked" else upsampled_cross_entropy_reference
    return loss(logits, target, ignore_index=ignore_index)


class WordMapForward(nn.Module):
    """One training forward: category grids -> fused word-map embeddings -> SegOFA logits (B, M, h, w).

    A module of its own so DistributedDataParallel sees the whole computation as ``forward``."""

    def __init__(self, model: SegOFA, cfg: AdaptConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, grid: Tensor, sizes: Tensor) -> Tensor:
        tokens = wordmap_tokens(self.model, grid, sizes, self.cfg.wordmap_size, self.cfg.kernel)
        return self.model.run_tokens(tokens, embedded=True, check_padding=False).logits


def wordmap_train_step(model: SegOFA, cfg: AdaptConfig, device: torch.device, amp_dtype: torch.dtype | None,
                       wrap: Callable[[nn.Module], nn.Module] | None = None) -> TrainStep:
    """The step that trains ``model``'s trainable parameters on (grid, sizes) batches of
    :class:`~.data.ArtificialMaps`; ``wrap`` (e.g. DistributedDataParallel) wraps the forward module."""
    forward = WordMapForward(model, cfg)
    return TrainStep.from_config(
        wrap(forward) if wrap is not None else forward,
        lambda grid, sizes: wordmap_targets(grid, sizes, cfg.target_size),
        lambda logits, target: segmentation_loss(logits, target, cfg.loss),
        [p for p in model.parameters() if p.requires_grad], cfg, device, amp_dtype)


__all__ = ["WordMapForward", "segmentation_loss", "wordmap_targets", "wordmap_tokens", "wordmap_train_step"]
