"""The paper's kNN refinement (Eq. 18) against an independent, loop-based implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ifseg_deploy.refine import knn_refine


def loop_refine(probs: np.ndarray, features: np.ndarray, k: int, iterations: int) -> np.ndarray:
    """One image, plain Python: N(i) = i itself plus the k - 1 other cells of highest cosine similarity;
    ``iterations`` times p_i <- mean over N(i) of p_j."""
    m, h, w = probs.shape
    n = h * w
    f = features.reshape(features.shape[0], n).T.astype(np.float64)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    neighbours = []
    for i in range(n):
        sims = [(float(f[i] @ f[j]), j) for j in range(n) if j != i]
        sims.sort(key=lambda s: -s[0])
        neighbours.append([i] + [j for _, j in sims[: k - 1]])
    p = probs.reshape(m, n).T.astype(np.float64)
    for _ in range(iterations):
        p = np.stack([p[nb].mean(axis=0) for nb in neighbours])
    return p.T.reshape(m, h, w)


@pytest.mark.parametrize("k, iterations", [(3, 25), (5, 3), (2, 1)])
def test_refinement_equals_independent_loop(k, iterations):
    g = torch.Generator().manual_seed(k * 100 + iterations)
    logits = torch.randn(2, 4, 5, 7, generator=g)
    probs = logits.softmax(dim=1)
    feats = torch.randn(2, 16, 5, 7, generator=g)
    out = knn_refine(probs, feats, k=k, iterations=iterations)
    for b in range(2):
        ref = loop_refine(probs[b].numpy(), feats[b].numpy(), k, iterations)
        np.testing.assert_allclose(out[b].numpy(), ref, rtol=1e-5, atol=1e-6)
    # still distributions
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2, 5, 7))


def test_k1_and_zero_iterations_leave_probabilities_unchanged():
    g = torch.Generator().manual_seed(1)
    probs = torch.randn(1, 3, 4, 6, generator=g).softmax(1)
    feats = torch.randn(1, 8, 4, 6, generator=g)
    assert torch.equal(knn_refine(probs, feats, k=1, iterations=25), probs)
    assert torch.equal(knn_refine(probs, feats, k=3, iterations=0), probs)
    # identical features everywhere (a flat image): every cell ties with every other, yet k=1 keeps itself
    flat = torch.ones(1, 8, 4, 6)
    assert torch.equal(knn_refine(probs, flat, k=1, iterations=5), probs)


def test_neighbourhood_includes_the_cell_itself_under_ties():
    # cells come in twins with identical features; twins are orthogonal to everything else.
    # With k = 2 the neighbourhood must be {itself, its twin}, never {twin, someone else}.
    h, w = 2, 4  # 8 cells -> 4 twin pairs (0,1), (2,3), (4,5), (6,7) in row-major order
    feats = torch.zeros(1, 4, h, w)
    for cell in range(h * w):
        feats[0, cell // 2, cell // w, cell % w] = 1.0
    g = torch.Generator().manual_seed(2)
    probs = torch.randn(1, 3, h, w, generator=g).softmax(1)
    out = knn_refine(probs, feats, k=2, iterations=1)
    flat = probs.flatten(2)[0]
    expected = torch.stack([(flat[:, c] + flat[:, c ^ 1]) / 2 for c in range(h * w)], dim=1).reshape(3, h, w)
    torch.testing.assert_close(out[0], expected)
    ref = loop_refine(probs[0].numpy(), feats[0].numpy() + 1e-9, 2, 1)
    np.testing.assert_allclose(out[0].numpy(), ref, rtol=1e-5, atol=1e-6)


def test_k_larger_than_the_grid_and_bad_arguments():
    probs = torch.rand(1, 2, 1, 3).softmax(1)
    feats = torch.rand(1, 5, 1, 3)
    out = knn_refine(probs, feats, k=10, iterations=1)  # k clipped to the 3 cells: the global mean
    torch.testing.assert_close(out, probs.mean(dim=(2, 3), keepdim=True).expand_as(probs))
    with pytest.raises(ValueError):
        knn_refine(probs, feats, k=0)
    with pytest.raises(ValueError):
        knn_refine(probs, torch.rand(1, 5, 2, 3))


def test_lowest_index_tie_break_takes_the_lower_of_tied_cells():
    """Cells 1..3 share one feature vector, so each one's second neighbour is a tie between the other two:
    ``lowest_index`` must pick the lower one, whatever order topk would give."""
    from ifseg_deploy.refine import cosine_similarity, nearest_cells

    features = torch.zeros(1, 2, 1, 4)
    features[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    features[0, :, 0, 1:] = torch.tensor([0.0, 1.0])[:, None]
    nbrs = nearest_cells(cosine_similarity(features), 2, tie_break="lowest_index")[0]
    assert nbrs[:, 0].tolist() == [0, 1, 2, 3]  # every cell is its own first neighbour
    assert nbrs[1:, 1].tolist() == [2, 1, 1]
    with pytest.raises(ValueError, match="tie_break"):
        nearest_cells(cosine_similarity(features), 2, tie_break="random")
