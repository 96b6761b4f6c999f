"""SegOFA numerics: the official code's golden outputs, and independent formulas for each position/scaling rule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.ofa import randomize_, tiny_config

from ifseg_deploy.checkpoints.loader import load_fairseq_state, state_dict_into_model
from ifseg_deploy.checkpoints.ofa_keys import infer_config
from ifseg_deploy.modeling.attention import MultiheadAttention
from ifseg_deploy.modeling.position import grid_relative_index, seg_relative_index, token_bucket_index
from ifseg_deploy.modeling.segofa import SegOFA
from ifseg_deploy.presets import PRESETS

TOL = dict(atol=1e-4, rtol=1e-4)


# -- golden outputs of the official IFSeg code ----------------------------------------------------------------
@pytest.fixture(scope="module")
def golden(golden_dir, golden_checkpoint):
    meta = json.loads((golden_dir / "meta.json").read_text())
    state = load_fairseq_state(golden_checkpoint)
    cfg = infer_config(state, "golden")
    names = [np.load(golden_dir / "inputs.npz")[f"name_tokens_{i}"].tolist() for i in range(5)]
    inputs = dict(np.load(golden_dir / "inputs.npz"))
    model, report = state_dict_into_model(state, cfg, names, inputs["src_tokens"].tolist(), "golden", "fairseq")
    return model.eval(), report, inputs, dict(np.load(golden_dir / "outputs.npz")), meta, state


def _close(ours: torch.Tensor, ref: np.ndarray) -> None:
    np.testing.assert_allclose(ours.detach().numpy(), ref, **TOL)


def test_golden_loads_every_key_and_initialises_nothing(golden):
    model, report, *_ = golden
    assert report.unexpected == []
    assert report.initialised == []  # the IFSeg checkpoint already holds the seg parameters


def test_golden_class_table_is_mean_of_name_rows(golden):
    model, _, inputs, _, _, state = golden
    table = state["encoder.embed_tokens.weight"]
    for c in range(5):
        toks = torch.as_tensor(inputs[f"name_tokens_{c}"])
        expected = table[toks].mean(0)
        torch.testing.assert_close(model.decoder.seg_embed_tokens.weight[c], expected, atol=1e-6, rtol=0)
    # ...and equals the table the official lazy init computed
    torch.testing.assert_close(model.decoder.seg_embed_tokens.weight, state["decoder.seg_embed_tokens.weight"],
                               atol=1e-6, rtol=0)


@torch.no_grad()
def test_golden_real_image(golden):
    model, _, inputs, outputs, _, _ = golden
    u8 = torch.from_numpy(inputs["img_512x512_uint8_hwc"])
    x = u8.permute(2, 0, 1).float().div(255).sub(0.5).div(0.5).unsqueeze(0)
    feats = model.image_features(x)
    _close(feats[:, :64], outputs["real_512x512.resnet_feature_ch0_63"])
    out = model.run_tokens(model.project_features(feats))
    _close(out.encoder.out, outputs["real_512x512.encoder_out"])
    _close(out.sequence_logits, outputs["real_512x512.logits"])
    _close(out.logits, outputs["real_512x512.logits_bmhw"])
    _close(model(x), outputs["real_512x512.logits_bmhw"])


@torch.no_grad()
def test_golden_word_map(golden):
    model, _, inputs, outputs, _, _ = golden
    ids = torch.from_numpy(inputs["wordmap_ids32"]).long().reshape(1, 32, 32)
    grid = torch.from_numpy(inputs["wordmap_rand_grid_7x11"]).long().reshape(1, 1, 7, 11)
    # the word-map ids are the legacy-nearest resize of the 7x11 grid
    torch.testing.assert_close(F.interpolate(grid.float(), size=(32, 32), mode="nearest").long()[0], ids)
    wordmap = model.decoder.seg_embed_tokens.weight[ids]
    np.testing.assert_array_equal(wordmap.numpy(), outputs["wordmap.embedding_bag_out"])
    out = model.run_tokens(wordmap)
    _close(out.encoder.out, outputs["wordmap.encoder_out"])
    _close(out.decoder_features, outputs["wordmap.decoder_features"])
    _close(out.sequence_logits, outputs["wordmap.logits"])
    _close(model.forward_wordmap(wordmap), outputs["wordmap.logits_bmhw"])


def test_bucket_indices_equal_the_official_buffers(golden):
    *_, state = golden
    torch.testing.assert_close(token_bucket_index(1024), state["encoder.token_rp_bucket"], rtol=0, atol=0)
    ids = (torch.arange(32)[:, None] * 42 + torch.arange(32) + 1).flatten()
    official = state["encoder.image_rp_bucket"][ids][:, ids]
    torch.testing.assert_close(grid_relative_index(32, 32, 42), official, rtol=0, atol=0)
    torch.testing.assert_close(seg_relative_index(32), state["decoder.seg_rp_bucket"], rtol=0, atol=0)


# -- independent formulas ------------------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [0, 1, -1, 5, -77, 127, -127, 128, -128, 129, 200, -200, 640, 1023, -1023])
def test_token_bucket_values(offset):
    idx = token_bucket_index(1024)
    i, j = (offset, 0) if offset >= 0 else (0, -offset)
    mid = 128
    if abs(offset) <= mid:
        expected = offset
    else:  # ceil(log(|d|/mid) / log(1023/mid) * (mid - 1)) + mid, with the offset's sign
        expected = int(math.copysign(math.ceil(math.log(abs(offset) / mid) / math.log(1023 / mid) * 127) + mid,
                                     offset))
    assert idx[i, j].item() == expected + 255
    assert 0 <= idx.min() and idx.max() == 510


def test_grid_relative_index_formula():
    idx = grid_relative_index(3, 5, 42)
    for q in range(15):
        for k in range(15):
            (qr, qc), (kr, kc) = divmod(q, 5), divmod(k, 5)
            assert idx[q, k] == (qr - kr + 41) * 83 + (qc - kc + 41)


def test_attention_scaling_bias_and_head_scale():
    torch.manual_seed(1)
    d, heads = 16, 4
    attn = MultiheadAttention(d, heads, scale_factor=2.0)
    randomize_(attn, seed=3)
    x, mem = torch.randn(2, 5, d), torch.randn(2, 7, d)
    bias = torch.randn(1, heads, 5, 7)
    out = attn(x, mem, bias)
    hd = d // heads
    q = (x @ attn.q_proj.weight.T + attn.q_proj.bias).view(2, 5, heads, hd).transpose(1, 2)
    k = (mem @ attn.k_proj.weight.T + attn.k_proj.bias).view(2, 7, heads, hd).transpose(1, 2)
    v = (mem @ attn.v_proj.weight.T + attn.v_proj.bias).view(2, 7, heads, hd).transpose(1, 2)
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd * 2) + bias, dim=-1)
    o = (p @ v) * attn.c_attn.view(1, heads, 1, 1)
    expected = o.transpose(1, 2).reshape(2, 5, d) @ attn.out_proj.weight.T + attn.out_proj.bias
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_model() -> SegOFA:
    torch.manual_seed(0)
    model = SegOFA(tiny_config(vocab_rows=50), num_classes=3)
    randomize_(model, seed=5)
    model.set_prompt([0, 7, 8, 9, 10, 11, 2], [[7], [8, 9], [10, 11, 12]])
    return model.eval()


def test_class_rows_are_token_means(tiny_model):
    table = tiny_model.encoder.embed_tokens.weight
    expected = torch.stack([table[[7]].mean(0), table[[8, 9]].mean(0), table[[10, 11, 12]].mean(0)])
    torch.testing.assert_close(tiny_model.decoder.seg_embed_tokens.weight, expected)


@torch.no_grad()
def test_word_map_path_equals_image_path(tiny_model):
    x = torch.randn(2, 3, 128, 96)
    via_image = tiny_model(x)
    projected = tiny_model.project_features(tiny_model.image_features(x))
    torch.testing.assert_close(tiny_model.forward_wordmap(projected), via_image, rtol=0, atol=0)
    assert via_image.shape == (2, 3, 8, 6)


@torch.no_grad()
def test_non_square_grid_runs_and_32x32_uses_tables_unresized(tiny_model, monkeypatch):
    tokens = torch.randn(1, 24, 40, tiny_model.cfg.d_model)
    logits = tiny_model.forward_wordmap(tokens)
    assert logits.shape == (1, 3, 24, 40) and torch.isfinite(logits).all()
    calls = []
    real = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda *a, **k: calls.append(k.get("size")) or real(*a, **k))
    tiny_model.forward_wordmap(torch.randn(1, 32, 32, tiny_model.cfg.d_model))
    assert calls == []
    tiny_model.forward_wordmap(tokens)
    assert calls  # other grids do resize


@torch.no_grad()
def test_large_grid_resizes_position_table(tiny_model):
    pos = tiny_model.encoder.image_positions((48, 40))  # 1920 > 1024 cells
    table = tiny_model.encoder.embed_image_positions.weight
    block = table[(torch.arange(32)[:, None] * 42 + torch.arange(32) + 1)].permute(2, 0, 1)[None]
    expected = F.interpolate(block, size=(48, 40), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(pos, expected.flatten(1).T)
    small = tiny_model.encoder.image_positions((24, 40))  # direct lookup, as the official code
    torch.testing.assert_close(small, table[(torch.arange(24)[:, None] * 42 + torch.arange(40) + 1).flatten()])


def test_frozen_and_trainable_parts(tiny_model):
    frozen = {n for n, p in tiny_model.named_parameters() if not p.requires_grad}
    assert "encoder.embed_tokens.weight" in frozen and "encoder.image_proj.weight" in frozen
    assert "decoder.seg_embed_tokens.weight" in frozen
    assert any(n.startswith("encoder.embed_images.") for n in frozen)
    assert "encoder.type_embedding.weight" not in frozen
    assert "decoder.embed_seg_positions.weight" not in frozen


def test_base_preset_matches_official_inventory():
    """ifseg_method.md §1.1: component parameter counts of segofa_base, each within 1%."""
    with torch.device("meta"):
        model = SegOFA(PRESETS["base"], num_classes=150)
    enc, dec = model.encoder, model.decoder

    def count(mod_or_params):
        params = mod_or_params.parameters() if hasattr(mod_or_params, "parameters") else mod_or_params
        return sum(p.numel() for p in params)

    resnet = sum(p.numel() for n, p in enc.embed_images.named_parameters())
    enc_transformer = count(enc) - resnet - count(enc.image_proj) - count(enc.embed_tokens)
    dec_used = count(dec) - count(dec.seg_embed_tokens)
    for got, want in [(enc_transformer, 46.44e6), (dec_used, 60.21e6), (resnet, 27.45e6),
                      (count(enc.image_proj), 0.79e6), (count(enc.embed_tokens), 45.66e6)]:
        assert abs(got - want) / want < 0.01, (got, want)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # 109.33M trainable in the official model, of which 2.68M are decoder modules the surrogate never uses
    assert abs(trainable - (109.33e6 - 2.68e6)) / 106.65e6 < 0.01


@pytest.mark.parametrize("h, w", [(32, 32), (5, 7), (1, 9)])
def test_toeplitz_bias_equals_table_gather(h, w):
    from ifseg_deploy.modeling.position import grid_relative_bias

    table = torch.randn((2 * 9 - 1) ** 2 + 3, 3, dtype=torch.float64) if h < 32 else torch.randn(6892, 3).double()
    b = 9 if h < 32 else 42
    expected = table[grid_relative_index(h, w, b)].permute(2, 0, 1)
    torch.testing.assert_close(grid_relative_bias(table, h, w, b), expected, rtol=0, atol=0)


@pytest.mark.parametrize("dst", [(8, 8), (24, 40), (32, 43), (3, 1)])
def test_resized_bias_equals_the_official_two_step_resize(dst):
    """Resize keys then queries of the full 32x32 bias with F.interpolate, as encoder_module.py:782-808 does."""
    from ifseg_deploy.modeling.position import relative_bias_on_grid

    table = torch.randn(6892, 2, dtype=torch.float64)
    full = table[grid_relative_index(32, 32, 42)].permute(2, 0, 1)  # (H, 1024, 1024)
    keys = F.interpolate(full.reshape(2 * 1024, 1, 32, 32), size=dst, mode="bilinear", align_corners=False)
    keys = keys.reshape(2, 32, 32, dst[0] * dst[1]).permute(0, 3, 1, 2).reshape(-1, 1, 32, 32)
    both = F.interpolate(keys, size=dst, mode="bilinear", align_corners=False)
    expected = both.reshape(2, dst[0] * dst[1], dst[0] * dst[1]).transpose(1, 2)
    torch.testing.assert_close(relative_bias_on_grid(table, 32, dst, 42), expected, rtol=1e-12, atol=1e-12)
