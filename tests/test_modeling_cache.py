"""The inference bias cache and the fused attention: same numbers as the uncached / explicit computation, reuse
where it is safe, and never a stale bias."""

from __future__ import annotations

import pytest
import torch
from helpers.ofa import randomize_, tiny_config

from ifseg_deploy.modeling.attention import MultiheadAttention
from ifseg_deploy.modeling.segofa import SegOFA


@pytest.fixture()
def model() -> SegOFA:
    torch.manual_seed(0)
    m = SegOFA(tiny_config(64), num_classes=3)
    randomize_(m, seed=11)
    m.set_prompt([0, 5, 6, 7, 8, 2], [[5], [6, 7], [8]])
    return m.eval()


def _images(seed: int = 0, hw: tuple[int, int] = (64, 96)) -> torch.Tensor:
    return torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(seed))


def _uncached(model: SegOFA, x: torch.Tensor) -> torch.Tensor:
    caches = (model.encoder.bias_cache, model.decoder.bias_cache)
    for c in caches:
        c.enabled = False
    try:
        with torch.inference_mode():
            return model(x)
    finally:
        for c in caches:
            c.enabled = True


def test_second_call_reuses_the_biases_and_equals_the_first(model):
    x = _images()
    with torch.inference_mode():
        first = model(x)
        assert (model.encoder.bias_cache.misses, model.decoder.bias_cache.misses) == (1, 1)
        second = model(x)
        assert (model.encoder.bias_cache.hits, model.decoder.bias_cache.hits) == (1, 1)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, _uncached(model, x), rtol=0, atol=0)


def test_each_shape_has_its_own_entry(model):
    with torch.inference_mode():
        a = model(_images(1, (64, 96)))
        b = model(_images(1, (96, 64)))
        assert len(model.encoder.bias_cache) == 2
        assert torch.equal(model(_images(1, (64, 96))), a) and torch.equal(model(_images(1, (96, 64))), b)


def test_training_and_autograd_do_not_use_the_cache(model):
    x = _images()
    model.train()
    model(x).sum().backward()
    assert len(model.encoder.bias_cache) == 0 and model.encoder.bias_cache.misses == 0
    # the relative tables are trained: their gradient must arrive through the (uncached) biases
    assert model.encoder.image_rel_pos_table_list[0].weight.grad.abs().sum() > 0
    assert model.decoder.seg_rel_pos_table_list[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("change", ["train", "load_state_dict", "set_prompt", "in-place copy"])
def test_a_weight_change_is_never_served_a_stale_bias(model, change):
    x = _images()
    with torch.inference_mode():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    table = "encoder.image_rel_pos_table_list.0.weight"
    state[table] += 1.0
    if change == "train":
        model.train()
        with torch.no_grad():
            model.encoder.image_rel_pos_table_list[0].weight.add_(1.0)
        model.eval()
    elif change == "load_state_dict":
        model.load_state_dict(state)
    elif change == "set_prompt":
        model.set_prompt([0, 8, 7, 6, 5, 2], [[8], [7, 6], [5]])
    else:  # no method call at all: only the tensor's version counter knows
        with torch.no_grad():
            model.encoder.image_rel_pos_table_list[0].weight.add_(1.0)
    with torch.inference_mode():
        after = model(x)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, _uncached(model, x), rtol=0, atol=0)


def test_fused_attention_equals_the_explicit_formula_with_gradients():
    torch.manual_seed(3)
    attn = MultiheadAttention(32, 4, scale_factor=2.0)
    with torch.no_grad():
        attn.c_attn.uniform_(0.5, 1.5)
    q, kv = torch.randn(2, 7, 32), torch.randn(2, 9, 32)
    bias = torch.randn(1, 4, 7, 9, requires_grad=True)
    bias_ref = bias.detach().clone().requires_grad_(True)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, -3:] = True
    fused = attn(q, kv, bias, pad)
    attn.use_sdpa = False
    explicit = attn(q, kv, bias_ref, pad)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-6)
    weights = [attn.q_proj.weight, attn.c_attn]
    g_fused = torch.autograd.grad(fused.square().sum(), [bias, *weights])
    g_explicit = torch.autograd.grad(explicit.square().sum(), [bias_ref, *weights])
    for a, b in zip(g_fused, g_explicit):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert g_fused[0][..., -3:].abs().max() > 0  # padding is per sample: sample 0 still attends there
