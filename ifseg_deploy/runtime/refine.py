"""IFSeg's post-processing (paper Eq. 18): kNN smoothing of class probabilities on raw ResNet features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def knn_refine(probs: Tensor, features: Tensor, k: int = 3, iterations: int = 25) -> Tensor:
    """Average each cell's probabilities over its ``k`` most similar cells, ``iterations`` times.

    probs (B, M, h, w) softmax probabilities; features (B, C, h, w) raw ResNet stage-3 features. Similarity
    is the cosine of the feature vectors; the neighbourhood includes the cell itself (its own similarity is the
    largest), so ``k=1`` returns ``probs`` unchanged.
    """
    b, m, h, w = probs.shape
    if features.shape[0] != b or features.shape[-2:] != probs.shape[-2:]:
        raise ValueError(f"features {tuple(features.shape)} do not match probabilities {tuple(probs.shape)}")
    if k < 1 or iterations < 0:
        raise ValueError(f"need k >= 1 and iterations >= 0 (got k={k}, iterations={iterations})")
    n = h * w
    k = min(k, n)
    f = F.normalize(features.flatten(2).float(), dim=1)  # (B, C, n)
    sim = f.transpose(1, 2) @ f  # (B, n, n)
    # Cosines are at most 1: lifting the diagonal by 2 keeps a cell its own first neighbour even when flat
    # image regions give other cells identical features (a tie topk could otherwise break either way).
    sim = sim + 2.0 * torch.eye(n, dtype=sim.dtype, device=sim.device)
    neighbours = sim.topk(k, dim=-1).indices  # (B, n, k)
    p = probs.flatten(2).transpose(1, 2)  # (B, n, M)
    index = neighbours.reshape(b, n * k, 1).expand(-1, -1, m)
    for _ in range(iterations):
        p = p.gather(1, index).reshape(b, n, k, m).mean(dim=2)
    return p.transpose(1, 2).reshape(b, m, h, w).to(probs.dtype)
