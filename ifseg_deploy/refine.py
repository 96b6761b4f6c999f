"""IFSeg's post-processing (paper Eq. 18): kNN smoothing of class probabilities on raw ResNet features.

One definition for every user: the inference graph (PyTorch and the exported ONNX/TensorRT graph), and the
export's parity reference, which needs a defined order for tied neighbours (``tie_break="lowest_index"``) and
to know which cells hinge on such ties (:func:`tie_dependent_cells`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: (k, iterations) of the paper: average over the 3 most similar cells (the cell itself included), 25 times.
PAPER_REFINEMENT = (3, 25)
#: No refinement.
NO_REFINEMENT = (1, 0)
#: Similarities closer than this count as tied: engines sum the dot products in different orders, so two values
#: this close may come out in either order (float32 over ~1000 feature channels).
TIE_TOLERANCE = 1e-5
TIE_BREAKS = ("any", "lowest_index")


def refinement_setting(enabled: bool, k: int | None = None, iterations: int | None = None) -> tuple[int, int]:
    """(k, iterations) to apply: the paper's unless overridden, :data:`NO_REFINEMENT` when off or a no-op."""
    k = PAPER_REFINEMENT[0] if k is None else int(k)
    iterations = PAPER_REFINEMENT[1] if iterations is None else int(iterations)
    if k < 1 or iterations < 0:
        raise ValueError(f"need refinement k >= 1 and iterations >= 0 (got k={k}, iterations={iterations})")
    return (k, iterations) if enabled and k > 1 and iterations > 0 else NO_REFINEMENT


def cosine_similarity(features: Tensor) -> Tensor:
    """(B, C, h, w) features -> (B, n, n) cosine similarities of the n = h*w cells, the diagonal lifted by 2.

    Cosines are at most 1: lifting the diagonal keeps a cell its own first neighbour even when flat image regions
    give other cells identical features (a tie that a top-k could otherwise break either way).
    """
    f = F.normalize(features.flatten(2).float(), dim=1)  # (B, C, n)
    n = f.shape[-1]
    return f.transpose(1, 2) @ f + 2.0 * torch.eye(n, dtype=f.dtype, device=f.device)


def nearest_cells(sim: Tensor, k: int, tie_break: str = "any") -> Tensor:
    """(B, n, k) indices of each cell's ``k`` most similar cells.

    ``"any"``: ``topk`` (what the exported graph runs; engines order exact ties their own way). ``"lowest_index"``:
    ties go to the lower index (ONNX TopK's documented order), through a stable sort.
    """
    if tie_break == "any":
        return sim.topk(k, dim=-1).indices
    if tie_break == "lowest_index":
        return torch.sort(sim, dim=-1, descending=True, stable=True).indices[..., :k]
    raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")


def knn_refine(probs: Tensor, features: Tensor, k: int = PAPER_REFINEMENT[0],
               iterations: int = PAPER_REFINEMENT[1], tie_break: str = "any") -> Tensor:
    """Average each cell's probabilities over its ``k`` most similar cells, ``iterations`` times.

    probs (B, M, h, w) softmax probabilities; features (B, C, h, w) raw ResNet stage-3 features. The neighbourhood
    includes the cell itself, so ``k=1`` returns ``probs`` unchanged.
    """
    b, m, h, w = probs.shape
    if features.shape[0] != b or features.shape[-2:] != probs.shape[-2:]:
        raise ValueError(f"features {tuple(features.shape)} do not match probabilities {tuple(probs.shape)}")
    if k < 1 or iterations < 0:
        raise ValueError(f"need k >= 1 and iterations >= 0 (got k={k}, iterations={iterations})")
    device = probs.device.type
    if torch.is_autocast_enabled(device):
        # Reduced-precision similarities reorder near neighbours: with a bf16 cosine matrix the refined labels
        # agreed with fp32 on only 14-57% of the cells (57-97% without refinement). Always fp32 here.
        with torch.autocast(device_type=device, enabled=False):
            return knn_refine(probs.float(), features.float(), k, iterations, tie_break).to(probs.dtype)
    n = h * w
    k = min(k, n)
    neighbours = nearest_cells(cosine_similarity(features), k, tie_break)  # (B, n, k)
    p = probs.flatten(2).transpose(1, 2)  # (B, n, M)
    index = neighbours.reshape(b, n * k, 1).expand(-1, -1, m)
    for _ in range(iterations):
        p = p.gather(1, index).reshape(b, n, k, m).mean(dim=2)
    return p.transpose(1, 2).reshape(b, m, h, w).to(probs.dtype)


def tie_dependent_cells(sim: Tensor, k: int, iterations: int, tolerance: float = TIE_TOLERANCE) -> np.ndarray:
    """(B, n) cells whose refined value may depend on how (near-)ties in the neighbour search are broken.

    Photos have exact ties (a flat, saturated region gives identical features), and ``torch.topk``, ONNX Runtime
    and TensorRT each order them their own way (a GEMM may even round two identical similarities differently by
    their position). A cell whose k-th and (k+1)-th similarities are within ``tolerance`` can get other
    neighbours in another engine; every cell that averages over such a cell, directly or through the
    ``iterations`` rounds, can then differ too.
    """
    b, n, _ = sim.shape
    k = min(k, n)
    if k >= n:
        return np.zeros((b, n), dtype=bool)
    top = torch.sort(sim, dim=-1, descending=True).values  # (B, n, n)
    kth = top[..., k - 1: k]
    unsure = (top[..., k - 1] - top[..., k]) <= tolerance  # (B, n)
    # who may be whose neighbour: anything at least as similar as the k-th, give or take the tolerance
    candidates = (sim >= kth - tolerance).float()  # (B, n, n)
    affected = unsure.float()
    for _ in range(iterations):
        affected = torch.maximum(affected, (candidates @ affected[..., None])[..., 0].clamp(max=1))
    return affected.bool().cpu().numpy()
