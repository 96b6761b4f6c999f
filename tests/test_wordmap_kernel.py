"""The fused word-map embedding: the PyTorch reference against an independent composition of F.interpolate,
F.embedding and F.layer_norm, the Triton kernel against the reference (forward and backward), and dispatch.

Without a GPU the Triton kernel runs in Triton's CPU interpreter. ``TRITON_INTERPRET=1`` only takes effect if
it is set before the process first imports triton (triton decorates its own ``tl.sum`` & co. at import), so it
is set here, at collection, before anything imports triton. If triton was already imported in compiled mode,
the kernel tests are skipped in this process and one test re-runs them in a fresh one.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
if not CUDA and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

from ifseg_deploy.kernels import wordmap as dispatch  # noqa: E402
from ifseg_deploy.kernels.wordmap import resolve_impl, wordmap_embed  # noqa: E402
from ifseg_deploy.kernels.wordmap_reference import (  # noqa: E402
    nearest_ids,
    nearest_targets,
    wordmap_embed_reference,
)

try:
    from ifseg_deploy.kernels import wordmap_triton
except ImportError as exc:  # triton is the optional extra [triton]
    wordmap_triton, TRITON_MISSING = None, f"triton is not installed ({exc}); pip install -e '.[triton]'"
else:
    TRITON_MISSING = None

DEVICE = "cuda" if CUDA else "cpu"
FRESH_PROCESS_NEEDED = wordmap_triton is not None and not CUDA and not wordmap_triton.interpret_mode()
needs_triton = pytest.mark.skipif(
    wordmap_triton is None or FRESH_PROCESS_NEEDED,
    reason=TRITON_MISSING or "triton was imported before TRITON_INTERPRET=1 could be set; see the fresh-process test")

SIZES5 = [(7, 11), (1, 32), (32, 1), (1, 1), (32, 32)]
EPS = 1e-5


def make_inputs(batch: int, m: int, d: int, dtype: torch.dtype = torch.float32, param_dtype=torch.float32,
                sizes=None, s: int = 32, seed: int = 0, device: str = DEVICE):
    """Padded grids (padding = -1, never a valid class: reading it would fail or show), random non-trivial
    class table and LayerNorm parameters that require grad."""
    g = torch.Generator().manual_seed(seed)
    sizes = sizes or (SIZES5 if batch == 5 else [(7, 11)] * batch)
    grid = torch.full((batch, s, s), -1, dtype=torch.int64)
    for b, (u, v) in enumerate(sizes):
        grid[b, :u, :v] = torch.randint(0, m, (u, v), generator=g)
    table = (torch.randn(m, d, generator=g) * 0.5 + torch.randn(m, 1, generator=g)).to(dtype)
    t = torch.randn(d, generator=g).to(param_dtype)
    w = (1 + 0.1 * torch.randn(d, generator=g)).to(param_dtype)
    bias = (0.1 * torch.randn(d, generator=g)).to(param_dtype)
    params = [p.to(device).requires_grad_() for p in (t, w, bias)]
    return grid.to(device), torch.tensor(sizes, dtype=torch.int64, device=device), table.to(device), params


def composed(grid, sizes, table, t, w, bias, out_hw):
    """Independent composition: per sample, crop the valid region, F.interpolate(nearest), F.embedding,
    + type embedding, F.layer_norm in fp32."""
    outs = []
    for g, (u, v) in zip(grid, sizes.tolist()):
        ids = F.interpolate(g[:u, :v].double()[None, None], size=out_hw, mode="nearest")[0, 0].long()
        x = F.embedding(ids, table.float()) + t.float()
        outs.append(F.layer_norm(x, (table.shape[1],), w.float(), bias.float(), EPS))
    return torch.stack(outs).to(table.dtype)


def fwd_bwd(fn, grid, sizes, table, params, out_hw=(32, 32), seed: int = 1):
    y = fn(grid, sizes, table, *params, out_hw)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.device, y.dtype)
    return y, torch.autograd.grad(y, params, dy)


def _close_grads(got, want, rtol):
    for a, b, name in zip(got, want, ("type_embed", "ln_weight", "ln_bias")):
        assert a.dtype == b.dtype, name
        scale = b.abs().max().item()
        err = (a.float() - b.float()).abs().max().item()
        assert err <= rtol * scale, f"{name}: max err {err:.3g} vs scale {scale:.3g}"


# ---------------------------------------------------------------------------------------------------------------
# the reference and the resize helpers


@pytest.mark.parametrize("out_hw", [(32, 32), (16, 64)])
def test_reference_equals_composition(out_hw):
    grid, sizes, table, params = make_inputs(5, 171, 96, device="cpu")
    y, grads = fwd_bwd(lambda *a: wordmap_embed_reference(*a), grid, sizes, table, params, out_hw)
    y2, grads2 = fwd_bwd(lambda g, s, tab, t, w, b, hw: composed(g, s, tab, t, w, b, hw), grid, sizes, table,
                         params, out_hw)
    assert y.shape == (5, *out_hw, 96) and y.dtype == torch.float32
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    _close_grads(grads, grads2, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_low_precision_table(dtype):
    grid, sizes, table, params = make_inputs(5, 171, 48, dtype=dtype, device="cpu")
    y = wordmap_embed_reference(grid, sizes, table, *params)
    assert y.dtype == dtype
    # statistics in fp32, one rounding at the end, as the fp32 composition rounded once
    torch.testing.assert_close(y, composed(grid, sizes, table, *params, (32, 32)))


def test_reference_does_not_touch_the_table_or_padding():
    grid, sizes, table, params = make_inputs(2, 5, 16, device="cpu", sizes=[(3, 2), (1, 4)])
    table.requires_grad_()
    y = wordmap_embed_reference(grid, sizes, table, *params)
    y.sum().backward()
    assert table.grad is None  # frozen: detached
    assert set(nearest_ids(grid, sizes).unique().tolist()) <= set(grid[grid >= 0].tolist())


def test_nearest_targets_equal_interpolate_to_512():
    grid, sizes, _, _ = make_inputs(5, 171, 8, device="cpu")
    tgt = nearest_targets(grid, sizes)
    assert tgt.shape == (5, 512, 512) and tgt.dtype == torch.int64
    for b, (u, v) in enumerate(sizes.tolist()):
        want = F.interpolate(grid[b, :u, :v].double()[None, None], size=(512, 512), mode="nearest")[0, 0]
        assert torch.equal(tgt[b], want.long())
    assert torch.equal(nearest_ids(grid, sizes), nearest_targets(grid, sizes, (32, 32)))


def test_every_u_and_v_matches_interpolate_at_32_and_512():
    """Every U and every V in 1..32, both resize targets: the integer rule equals PyTorch's float rule exactly."""
    uv = [(u, 33 - u) for u in range(1, 33)]
    grid = torch.arange(32 * 32).view(1, 32, 32).expand(len(uv), 32, 32)  # distinct value per cell
    for out in (32, 512):
        got = nearest_targets(grid, torch.tensor(uv), (out, out))
        for b, (u, v) in enumerate(uv):
            want = F.interpolate(grid[b, :u, :v].double()[None, None], size=(out, out), mode="nearest")[0, 0]
            assert torch.equal(got[b], want.long()), (u, v, out)


def test_non_power_of_two_output_uses_the_exact_rule():
    grid = torch.arange(32 * 32).view(1, 32, 32)
    got = nearest_targets(grid, torch.tensor([[26, 26]]), (22, 22))
    want = [math.floor(Fraction(i * 26, 22)) for i in range(22)]
    assert (got[0, :, 0] // 32).tolist() == want


@pytest.mark.parametrize("bad, match", [
    (lambda g, s: (g, s.clone().fill_(0)), "sizes"),
    (lambda g, s: (g, s.clone().fill_(33)), "sizes"),
    (lambda g, s: (g.clone().fill_(171), s), "class ids"),
    (lambda g, s: (g.float(), s), "integer"),
])
def test_reference_rejects_bad_inputs(bad, match):
    grid, sizes, table, params = make_inputs(5, 171, 8, device="cpu")
    g, s = bad(grid, sizes)
    with pytest.raises(ValueError, match=match):
        wordmap_embed_reference(g, s, table, *params)


# ---------------------------------------------------------------------------------------------------------------
# the Triton kernel against the reference

# (table dtype, batch, M, d, param dtype); every case runs the forward and the backward
TRITON_CASES = [
    (torch.float32, 5, 171, 96, torch.float32),
    (torch.float32, 1, 1, 48, torch.float32),
    (torch.float16, 5, 1, 48, torch.float32),
    (torch.float16, 1, 171, 96, torch.float16),
    (torch.bfloat16, 5, 171, 48, torch.float32),
    (torch.bfloat16, 1, 1, 96, torch.bfloat16),
]


@needs_triton
@pytest.mark.parametrize("dtype, batch, m, d, param_dtype", TRITON_CASES,
                         ids=[f"{str(c[0])[6:]}-B{c[1]}-M{c[2]}-d{c[3]}-p{str(c[4])[6:]}" for c in TRITON_CASES])
def test_triton_equals_reference(dtype, batch, m, d, param_dtype):
    grid, sizes, table, params = make_inputs(batch, m, d, dtype=dtype, param_dtype=param_dtype)
    y, grads = fwd_bwd(lambda *a: wordmap_embed(*a, impl="triton"), grid, sizes, table, params)
    y_ref, grads_ref = fwd_bwd(lambda *a: wordmap_embed(*a, impl="torch"), grid, sizes, table, params)
    assert y.shape == (batch, 32, 32, d) and y.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    else:  # both round the same fp32 value once: at most one unit in the last place apart
        torch.testing.assert_close(y, y_ref)
    # both accumulate in fp32 from the same low-precision inputs, so gradients agree to fp32 precision
    # (rounded to the parameter dtype at the end)
    _close_grads(grads, grads_ref, 1e-5 if param_dtype == torch.float32 else 1e-2)


@needs_triton
def test_triton_odd_output_size_int32_grid_strided_inputs():
    grid, sizes, table, params = make_inputs(2, 7, 200, sizes=[(5, 3), (2, 9)], s=12)
    grid = grid.to(torch.int32).transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous strides
    sizes = sizes.to(torch.int32)
    wide = torch.randn(7, 400, device=table.device)
    wide[:, ::2] = table
    table = wide[:, ::2]  # row stride 400, column stride 2: the kernel copies it to unit column stride
    y, grads = fwd_bwd(lambda *a: wordmap_embed(*a, impl="triton"), grid, sizes, table, params, (8, 24))
    y_ref, grads_ref = fwd_bwd(lambda *a: wordmap_embed(*a, impl="torch"), grid, sizes, table, params, (8, 24))
    assert y.shape == (2, 8, 24, 200)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    _close_grads(grads, grads_ref, 1e-5)


@needs_triton
def test_triton_base_width_and_deterministic_backward():
    grid, sizes, table, params = make_inputs(1, 150, 768, sizes=[(32, 17)])
    hw = (8, 32)  # fewer rows than a word map keeps the interpreter quick; d = 768 is OFA-Base's width
    y, grads = fwd_bwd(lambda *a: wordmap_embed(*a, impl="triton"), grid, sizes, table, params, hw)
    _, grads_again = fwd_bwd(lambda *a: wordmap_embed(*a, impl="triton"), grid, sizes, table, params, hw)
    y_ref, grads_ref = fwd_bwd(lambda *a: wordmap_embed(*a, impl="torch"), grid, sizes, table, params, hw)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    _close_grads(grads, grads_ref, 1e-5)
    for a, b in zip(grads, grads_again):  # two-pass reduction, no atomics: bitwise reproducible
        assert torch.equal(a, b)


@needs_triton
def test_triton_frozen_table_gets_no_gradient():
    grid, sizes, table, params = make_inputs(1, 3, 16, sizes=[(2, 2)])
    table.requires_grad_()
    wordmap_embed(grid, sizes, table, *params, impl="triton").sum().backward()
    assert table.grad is None and all(p.grad is not None for p in params)


@pytest.mark.skipif(not FRESH_PROCESS_NEEDED, reason="the Triton kernel tests ran in this process")
def test_triton_kernel_tests_in_a_fresh_process():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                          "triton and not fresh_process"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary


# ---------------------------------------------------------------------------------------------------------------
# dispatch


def test_auto_on_cpu_runs_the_reference(monkeypatch):
    grid, sizes, table, params = make_inputs(1, 5, 16, device="cpu", sizes=[(3, 3)])
    if wordmap_triton is not None:
        def fail(*a, **k):
            raise AssertionError("auto picked Triton for CPU tensors")
        monkeypatch.setattr(wordmap_triton, "wordmap_embed_triton", fail)
    assert resolve_impl("auto", "cpu") == "torch"
    got = wordmap_embed(grid, sizes, table, *params)
    assert torch.equal(got, wordmap_embed_reference(grid, sizes, table, *params))


def test_auto_on_cuda_prefers_triton_when_it_imports(monkeypatch):
    assert resolve_impl("auto", "cuda") == ("triton" if dispatch.triton_available() else "torch")
    monkeypatch.setattr(dispatch, "_triton_import_error", lambda: "ImportError: no module named 'triton'")
    assert resolve_impl("auto", "cuda") == "torch"
    with pytest.raises(RuntimeError, match=r"ifseg-deploy\[triton\]"):
        resolve_impl("triton", "cuda")
    assert resolve_impl("torch", "cuda") == "torch"
    with pytest.raises(ValueError, match="impl must be"):
        resolve_impl("cuda", "cpu")


@pytest.mark.skipif(wordmap_triton is None, reason=TRITON_MISSING or "")
def test_forcing_triton_on_cpu_without_the_interpreter_says_how(monkeypatch):
    monkeypatch.setattr(wordmap_triton, "interpret_mode", lambda: False)
    grid, sizes, table, params = make_inputs(1, 5, 16, device="cpu", sizes=[(3, 3)])
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        wordmap_embed(grid, sizes, table, *params, impl="triton")


@needs_triton
def test_triton_output_feeds_the_model_as_embedded_tokens():
    """wordmap_embed(...) -> run_tokens(embedded=True) equals the model's own word-map path on table rows."""
    from helpers.ofa import randomize_, tiny_config

    from ifseg_deploy.modeling.segofa import SegOFA

    torch.manual_seed(0)
    model = SegOFA(tiny_config(vocab_rows=50), num_classes=3)
    randomize_(model, seed=5)
    model.set_prompt([0, 7, 8, 9, 10, 11, 2], [[7], [8, 9], [10, 11, 12]])
    model.to(DEVICE).eval()
    grid, sizes, _, _ = make_inputs(2, 3, 8, sizes=[(5, 9), (32, 2)])
    table = model.decoder.seg_embed_tokens.weight
    enc = model.encoder
    with torch.no_grad():
        tokens = wordmap_embed(grid, sizes, table, enc.type_embedding.weight[1], enc.patch_layernorm_embedding.weight,
                               enc.patch_layernorm_embedding.bias, (16, 16), impl="triton")
        got = model.run_tokens(tokens, embedded=True).logits
        want = model.forward_wordmap(table[nearest_ids(grid, sizes, (16, 16))])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
def test_trainer_step_feeds_the_encoder_what_the_image_path_would(impl, monkeypatch):
    """The training step (WordMapStep -> adapt.ops.wordmap_tokens -> run_tokens(embedded=True)), in eval mode,
    feeds the encoder exactly ``encoder.embed_patches(class_table[ids])`` for the nearest-resized grid: the image
    type embedding (row 1, not the text row 0) and the patch LayerNorm, as real image tokens get them."""
    from helpers.ofa import randomize_, tiny_config

    from ifseg_deploy.adapt import AdaptConfig
    from ifseg_deploy.adapt.trainer import WordMapStep
    from ifseg_deploy.modeling.segofa import SegOFA

    model = SegOFA(tiny_config(vocab_rows=50, encoder_layers=1, decoder_layers=1), num_classes=4)
    randomize_(model, seed=3)
    model.set_prompt([0, 7, 8, 9, 10, 11, 12, 2], [[7], [8, 9], [10], [11, 12]])
    model.to(DEVICE).eval()
    type_rows = model.encoder.type_embedding.weight
    assert (type_rows[0] - type_rows[1]).abs().max() > 0.1  # a swapped row would show
    size = 16
    grid, sizes, _, _ = make_inputs(3, 4, 8, sizes=[(5, 9), (32, 2), (1, 1)])
    fed = []
    run_tokens = model.run_tokens
    monkeypatch.setattr(model, "run_tokens", lambda tokens, *a, **kw: fed.append((tokens, kw)) or run_tokens(
        tokens, *a, **kw))  # records what the step hands the model, then runs the real model
    step = WordMapStep(model, AdaptConfig(wordmap_size=size, grid_max=32, kernel=impl)).eval()
    with torch.no_grad():
        logits = step(grid, sizes)
        monkeypatch.undo()
        # the ids by PyTorch's own nearest resize of each sample's U x V block
        ids = torch.stack([F.interpolate(g[:u, :v].double()[None, None], size=(size, size), mode="nearest")[0, 0]
                           for g, (u, v) in zip(grid, sizes.tolist())]).long()
        rows = model.decoder.seg_embed_tokens.weight[ids]  # (B, size, size, d)
        want = model.encoder.embed_patches(rows.flatten(1, 2)).view_as(rows)
        want_logits = model.forward_wordmap(rows)
    assert len(fed) == 1 and fed[0][1].get("embedded") is True
    torch.testing.assert_close(fed[0][0], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# the benchmark's correctness mode


def test_benchmark_reports_correctness_on_cpu():
    from ifseg_deploy.bench.kernel_wordmap import run_benchmark

    report = run_benchmark(batch=2, classes=7, dim=40, vocab=64, device="cpu", compile_ref=False)
    assert report["mode"].startswith("correctness only") and "copy" not in report
    res = report["results"]
    # every row, the eager reference included, is measured against the float64 composition
    assert res["torch"]["status"] == "ok" and 0 < res["torch"]["max_abs_diff_fwd"] < 1e-5
    assert max(res["torch"]["max_rel_diff_grads"]) < 1e-5
    assert res["torch.compile"]["status"] == "skipped: --no-compile"
    # IFSeg's EmbeddingBag(mean) path over name tokens lands on the same word map as the class-table gather
    assert res["official"]["status"] == "ok" and res["official"]["max_abs_diff_fwd"] < 1e-5
    assert max(res["official"]["max_rel_diff_grads"]) < 1e-5
    if wordmap_triton is not None and wordmap_triton.interpret_mode():
        assert res["triton"]["status"] == "ok" and res["triton"]["max_abs_diff_fwd"] < 1e-5
        assert max(res["triton"]["max_rel_diff_grads"]) < 1e-5
    else:
        assert res["triton"]["status"].startswith("skipped")
