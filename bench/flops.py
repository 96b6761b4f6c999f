"""How much arithmetic one image costs: the FLOPs of the eager PyTorch model per stage, counted by
``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions; element-wise work is not counted,
so a row's GFLOP/s is that of its GEMM-like work, the part a GEMM peak bounds).

Stages: ``resnet`` (the convolutional stem, ``encoder.embed_images``), ``encoder`` (image projection and the
transformer encoder), ``decoder`` (the surrogate decoder), ``head_refine`` (the class head and the kNN
refinement: everything else)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

STAGES = ("resnet", "encoder", "decoder", "head_refine")


@contextmanager
def _explicit_attention(graph: torch.nn.Module):
    """Count attention through its explicit formula (bmm, softmax, bmm): the counter's formulas for the fused
    kernels do not cover every CPU variant, and both compute the same products."""
    from ifseg_deploy.modeling.attention import MultiheadAttention

    mods = [m for m in graph.modules() if isinstance(m, MultiheadAttention)]
    saved = [m.use_sdpa for m in mods]
    for m in mods:
        m.use_sdpa = False
    try:
        yield
    finally:
        for m, s in zip(mods, saved):
            m.use_sdpa = s


def count_flops(backend: Any, size: tuple[int, int]) -> dict[str, float]:
    """FLOPs of one model-only call on a (1, 3, H, W) input of a :class:`TorchBackend` in fp32, per stage and in
    total (``total``). The position biases are built once before counting (the runtime caches them)."""
    from torch.utils.flop_counter import FlopCounterMode

    pixels = np.zeros((1, 3, *size), np.float32)
    graph = backend.graph
    with _explicit_attention(graph):
        backend.probs(pixels)
        with FlopCounterMode(display=False, depth=None) as counter:
            backend.probs(pixels)
    per_module = {k: float(sum(v.values())) for k, v in counter.get_flop_counts().items()}
    top = type(graph).__name__

    def get(name: str) -> float:
        return per_module.get(f"{top}.{name}", 0.0)

    total = per_module.get("Global", 0.0)
    resnet = get("model.encoder.embed_images")
    encoder = get("model.encoder") + get("model.encoder.image_proj")
    decoder = get("model.decoder")
    return {"resnet": resnet, "encoder": encoder, "decoder": decoder,
            "head_refine": total - resnet - encoder - decoder, "total": total}


def compute_dtype(backend: str, precision: str) -> str:
    """The data type a row's matrix products run in, i.e. which measured peak bounds it."""
    if precision.startswith("int8"):
        return "int8"
    return precision if precision in ("bf16", "fp16") else "fp32"
