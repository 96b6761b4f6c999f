"""The chunked upsample + cross-entropy loss against F.interpolate + F.cross_entropy, and its memory bound."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ifseg_deploy.kernels import seg_loss
from ifseg_deploy.kernels.seg_loss import bilinear_matrix, upsampled_cross_entropy, upsampled_cross_entropy_reference


def reference(logits, target, ignore_index=-100):
    """Written out here, independently of the module: IFSeg's loss as the official code computes it."""
    up = F.interpolate(logits.float(), size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)
    return F.cross_entropy(up, target, ignore_index=ignore_index)


def value_and_grad(fn, logits, target, **kw):
    x = logits.detach().clone().requires_grad_()
    loss = fn(x, target, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    return loss, grad


def inputs(shape, out, seed=0, ignore=None):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 3
    target = torch.randint(0, shape[1], (shape[0], *out), generator=g)
    if ignore is not None:
        target[torch.rand(target.shape, generator=g) < 0.3] = ignore
    return logits, target


CASES = [
    ((2, 5, 8, 8), (64, 64), None),  # x8, square
    ((2, 5, 8, 8), (64, 64), 7),  # chunks that do not divide the height
    ((2, 5, 8, 8), (64, 64), 1),  # one row per chunk
    ((2, 3, 6, 10), (45, 80), 4),  # non-square, non-integer height ratio
    ((1, 4, 12, 9), (5, 7), 2),  # downsampling
    ((1, 1, 1, 1), (3, 4), None),  # M = 1, a single source pixel
]


@pytest.mark.parametrize("shape, out, chunk_rows", CASES)
def test_equals_interpolate_then_cross_entropy(shape, out, chunk_rows):
    logits, target = inputs(shape, out)
    loss, grad = value_and_grad(upsampled_cross_entropy, logits, target, chunk_rows=chunk_rows)
    want, want_grad = value_and_grad(reference, logits, target)
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-5 * want_grad.abs().max().item())


@pytest.mark.parametrize("ignore_index", [-100, 5, 255])
def test_ignore_index(ignore_index):
    logits, target = inputs((2, 5, 8, 8), (64, 64), seed=3, ignore=ignore_index)
    loss, grad = value_and_grad(upsampled_cross_entropy, logits, target, ignore_index=ignore_index, chunk_rows=9)
    want, want_grad = value_and_grad(reference, logits, target, ignore_index=ignore_index)
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-5 * want_grad.abs().max().item())
    # ignoring changes the value: the check above could fail
    assert abs(loss.item() - reference(logits, target.clamp(0, 4)).item()) > 1e-3


def test_all_pixels_ignored_is_nan_like_cross_entropy():
    logits, target = inputs((1, 3, 4, 4), (16, 16))
    target.fill_(-100)
    assert torch.isnan(upsampled_cross_entropy(logits, target)) and torch.isnan(reference(logits, target))


def test_gradcheck_in_float64():
    logits, target = inputs((2, 3, 4, 5), (9, 11), seed=1, ignore=-100)
    x = logits.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: upsampled_cross_entropy(t, target, chunk_rows=4), (x,))


def test_low_precision_logits_are_upcast():
    logits, target = inputs((2, 5, 8, 8), (64, 64), seed=2)
    half = logits.to(torch.bfloat16)
    loss, grad = value_and_grad(upsampled_cross_entropy, half, target, chunk_rows=16)
    want, want_grad = value_and_grad(reference, half, target)  # .float() first, as the official code
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, want_grad)


def test_bilinear_matrix_is_what_interpolate_does():
    """Resizing the identity gives F.interpolate's own weights: bit for bit the same matrix, for every size pair
    up to 33 -> 70 (non-dyadic ratios included, where a differently rounded coordinate would show) and x16."""
    for n_in, n_out in [(a, b) for a in range(1, 34) for b in range(1, 71)] + [(32, 512), (43, 683)]:
        eye = torch.eye(n_in).view(1, n_in, n_in, 1)  # n_in channels, each a one-hot column
        want = F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=False)[0, :, :, 0].T
        assert torch.equal(bilinear_matrix(n_in, n_out), want), (n_in, n_out)


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _largest_during_forward_and_backward(fn, logits, target, **kw):
    x = logits.detach().clone().requires_grad_()
    with _LargestTensor() as mode:
        fn(x, target, **kw).backward()
    return mode.largest


def test_never_materialises_the_full_resolution_logits():
    b, m, h, w = 2, 21, 64, 64  # M large enough that a chunk is bigger than the per-pixel (B, H, W) tensors
    logits, target = inputs((b, m, 8, 8), (h, w))
    full = b * m * h * w
    # the detector sees the reference's full-resolution copy ...
    assert _largest_during_forward_and_backward(reference, logits, target) >= full
    # ... and the chunked loss never allocates more than one chunk of it
    largest = _largest_during_forward_and_backward(upsampled_cross_entropy, logits, target, chunk_rows=8)
    assert largest <= b * m * 8 * w < full


def test_default_chunk_follows_the_element_budget(monkeypatch):
    b, m, h, w = 2, 21, 64, 64
    logits, target = inputs((b, m, 8, 8), (h, w))
    monkeypatch.setattr(seg_loss, "DEFAULT_CHUNK_ELEMS", b * m * w * 10)  # 10 rows per chunk
    largest = _largest_during_forward_and_backward(upsampled_cross_entropy, logits, target)
    assert largest <= b * m * w * 10
    loss = upsampled_cross_entropy(logits, target)
    torch.testing.assert_close(loss, reference(logits, target), rtol=1e-6, atol=1e-6)


def test_module_reference_is_the_plain_formula():
    logits, target = inputs((1, 3, 4, 4), (16, 16))
    assert torch.equal(upsampled_cross_entropy_reference(logits, target), reference(logits, target))


@pytest.mark.parametrize("logits, target, match", [
    (torch.zeros(2, 3, 4), torch.zeros(2, 8, 8, dtype=torch.long), "logits"),
    (torch.zeros(2, 3, 4, 4), torch.zeros(2, 8, 8, dtype=torch.int32), "int64"),
    (torch.zeros(2, 3, 4, 4), torch.zeros(3, 8, 8, dtype=torch.long), "target"),
])
def test_rejects_bad_inputs(logits, target, match):
    with pytest.raises(ValueError, match=match):
        upsampled_cross_entropy(logits, target)
