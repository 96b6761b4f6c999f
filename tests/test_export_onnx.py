"""ONNX export: fixed and dynamic shapes against eager PyTorch, metadata, the onnxruntime backend, and a
Segmenter built from the .onnx file alone."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from helpers.export import CATEGORIES, DYNAMIC, FIXED, ort_run  # noqa: E402

from ifseg_deploy.model_dir import AdaptedModel  # noqa: E402
from ifseg_deploy.runtime.backends.onnxruntime import OrtBackend  # noqa: E402
from ifseg_deploy.runtime.input_spec import InputSpec  # noqa: E402
from ifseg_deploy.runtime.model_info import MetadataError, ModelInfo, read_metadata  # noqa: E402
from ifseg_deploy.version import __version__  # noqa: E402


def _pixels(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_fixture_model_is_the_small_one(export_model_dir):
    adapted = AdaptedModel.from_pretrained(export_model_dir)
    cfg = adapted.model.cfg
    assert (cfg.encoder_layers, cfg.decoder_layers, cfg.d_model) == (1, 1, 32)
    assert adapted.categories == CATEGORIES


# -- fixed size ------------------------------------------------------------------------------------------------
def test_fixed_export_reproduces_pytorch(fixed_export, torch_reference):
    path, _ = fixed_export
    x = _pixels((2, 3, *FIXED), seed=1)
    probs, labels = ort_run(path, x)
    ref = torch_reference(x)
    assert probs.shape == (2, len(CATEGORIES), 4, 6)
    np.testing.assert_allclose(probs, ref, atol=1e-4, rtol=0)
    # The labels output: bilinear upsampling to the input size and argmax, computed here independently.
    up = F.interpolate(torch.from_numpy(ref), size=FIXED, mode="bilinear", align_corners=False).argmax(1).numpy()
    assert labels.shape == (2, *FIXED)
    assert (labels == up).mean() > 0.999


def test_fixed_graph_is_checked_static_and_uses_one_layernorm_op(fixed_export):
    path, output = fixed_export
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, *FIXED] and isinstance(dims[0], str)  # batch stays dynamic (max 2)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["LayerNormalization"] > 0 and ops["Pow"] == 0  # one op per LN: what TensorRT pins to fp32
    assert min(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    # the CLI printed the parity report of the export
    assert "parity onnxruntime fp32 (CPU) vs PyTorch" in output and "% of" in output


# -- dynamic shapes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [
    (1, 3, 64, 96),  # 4x6 grid: image positions looked up directly (official rule)
    (1, 3, 512, 512),  # 32x32: the pre-training grid, tables unresized
    (1, 3, 528, 528),  # 33x33 > 1024 cells: the 32x32 position block is resized
    (1, 3, 96, 700),  # 6x44: few cells but wider than the 42-bucket table: resized
    (2, 3, 80, 80),  # batch of two
])
def test_dynamic_export_equals_eager_model_at_every_size(shape, dynamic_export, torch_reference):
    x = _pixels(shape, seed=sum(shape))
    (probs,) = ort_run(dynamic_export, x)
    np.testing.assert_allclose(probs, torch_reference(x), atol=1e-4, rtol=0)


def test_the_two_position_paths_differ_so_the_dynamic_test_can_tell_them_apart(monkeypatch, torch_reference):
    """Were the dynamic graph to always resize (an easy mistake), the 4x6 case above would fail: the official
    lookup and the resize give clearly different outputs there."""
    x = _pixels((1, 3, 64, 96), seed=5)
    lookup = torch_reference(x, refine=False)
    from ifseg_deploy.modeling.encoder import OFAEncoder

    real = OFAEncoder.image_positions

    def always_resize(self, grid):
        h, w = grid
        g, b = self.cfg.orig_patch_grid, self.cfg.image_bucket_size
        ids = torch.arange(g)[:, None] * b + torch.arange(g) + 1
        block = self.embed_image_positions.weight[ids].permute(2, 0, 1)
        return F.interpolate(block[None], size=(h, w), mode="bilinear", align_corners=False)[0].flatten(1).T

    monkeypatch.setattr(OFAEncoder, "image_positions", always_resize)
    resized = torch_reference(x, refine=False)
    monkeypatch.setattr(OFAEncoder, "image_positions", real)
    assert np.abs(lookup - resized).max() > 1e-3


def test_shape_agnostic_tracing_mode_keeps_eager_numerics_bit_exact(export_model_dir):
    import copy

    from ifseg_deploy.runtime.graph import InferenceGraph

    model = AdaptedModel.from_pretrained(export_model_dir).model.eval()
    graph = InferenceGraph(model, 3, 25).eval()
    agnostic_graph = InferenceGraph(copy.deepcopy(model), 3, 25, shape_agnostic=True).eval()
    assert agnostic_graph.model.encoder.shape_agnostic and not model.encoder.shape_agnostic
    for hw in [(64, 96), (512, 512), (528, 528), (96, 700)]:
        x = torch.from_numpy(_pixels((1, 3, *hw), seed=hw[0]))
        with torch.no_grad():
            plain = graph(x)
            agnostic = agnostic_graph(x)
        assert torch.equal(plain, agnostic), hw


def test_dynamic_graph_declares_symbolic_height_width_and_batch(dynamic_export):
    model = onnx.load(str(dynamic_export))
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))


# -- metadata ----------------------------------------------------------------------------------------------------
def test_metadata_round_trip(fixed_export, dynamic_export, export_model_dir):
    adapted = AdaptedModel.from_pretrained(export_model_dir)
    for path, spec, outputs in [
        (fixed_export[0], InputSpec.fixed(FIXED, 2), ["probs", "labels"]),
        (dynamic_export, InputSpec.dynamic(DYNAMIC["min"], DYNAMIC["opt"], DYNAMIC["max"], 2), ["probs"]),
    ]:
        model = onnx.load(str(path))
        info = read_metadata(model)
        assert info.categories == adapted.categories == CATEGORIES
        assert info.preprocessing == adapted.preprocessing
        assert info.input == spec
        assert (info.precision, info.refinement, info.outputs) == ("fp32", (3, 25), outputs)
        assert info.package_version == __version__ and info.prompt == adapted.prompt
        assert info.opset == next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        assert ModelInfo.from_props(info.to_props()) == info


def test_broken_or_missing_metadata_is_refused(tmp_path, fixed_export):
    info = read_metadata(onnx.load(str(fixed_export[0])))
    props = info.to_props()
    with pytest.raises(MetadataError, match="no ifseg-deploy metadata"):
        ModelInfo.from_props({})
    with pytest.raises(MetadataError, match="incomplete or broken"):
        ModelInfo.from_props({**props, "ifseg.categories": "[not json"})
    with pytest.raises(MetadataError, match="incomplete or broken"):
        ModelInfo.from_props({k: v for k, v in props.items() if k != "ifseg.input"})
    with pytest.raises(MetadataError, match="newer"):
        ModelInfo.from_props({**props, "ifseg.format_version": "99"})
    # a valid ONNX file that ifseg-deploy did not write
    model = onnx.load(str(fixed_export[0]))
    del model.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    with pytest.raises(MetadataError, match="export it with"):
        OrtBackend.from_file(plain)


# -- runtime backend and Segmenter ------------------------------------------------------------------------------
def test_ort_backend_needs_only_the_onnx_file(tmp_path, fixed_export, torch_reference):
    alone = tmp_path / "deploy" / "model.onnx"
    alone.parent.mkdir()
    shutil.copy(fixed_export[0], alone)
    backend = OrtBackend.from_file(alone)
    assert backend.providers == ["CPUExecutionProvider"]  # no GPU here: the probe must not pretend one
    assert backend.categories == CATEGORIES and tuple(backend.refinement) == (3, 25)
    assert backend.fixed_input_size == FIXED
    x = _pixels((3, 3, *FIXED), seed=7)  # 3 > max batch 2: run in chunks
    np.testing.assert_allclose(backend.probs(x), torch_reference(x), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="64x96 inputs only"):
        backend.probs(_pixels((1, 3, 64, 64)))
    backend.close()


def test_segmenter_from_the_onnx_file_alone_matches_the_pytorch_segmenter(tmp_path, dynamic_export, export_model_dir):
    from ifseg_deploy.export.inputs import synthetic_photos
    from ifseg_deploy.runtime.segmenter import Segmenter

    alone = tmp_path / "model.onnx"
    shutil.copy(dynamic_export, alone)
    photos = synthetic_photos(2, seed=3, size=(90, 120)) + synthetic_photos(1, seed=4, size=(120, 70))
    with Segmenter.from_pretrained(alone, backend="onnxruntime", short_side=96) as seg:
        assert seg.backend.name == "onnxruntime" and seg.class_names == CATEGORIES
        got = seg(photos)
    with Segmenter.from_pretrained(export_model_dir, backend="torch", short_side=96) as ref:
        want = ref(photos)
    for g, w in zip(got, want):
        assert g.labels.shape == w.labels.shape
        assert (g.labels == w.labels).mean() > 0.999


# -- failure -----------------------------------------------------------------------------------------------------
def test_an_export_that_disagrees_with_pytorch_fails_and_leaves_nothing(tmp_path, monkeypatch, fixed_export,
                                                                         export_model_dir):
    """A genuinely wrong graph (the class head of the traced model altered) must be caught by parity."""
    from ifseg_deploy.export import onnx_export
    from ifseg_deploy.export.parity import ParityError

    good = onnx.load(str(fixed_export[0]))

    def wrong_trace(graph, spec, path, opset=18):
        model = onnx.ModelProto()
        model.CopyFrom(good)
        # The tied class head (d_model x classes, stored transposed after folding): negated, every argmax
        # becomes an argmin.
        head = next(i for i in model.graph.initializer if sorted(i.dims) == sorted([32, len(CATEGORIES)]))
        w = onnx.numpy_helper.to_array(head)
        head.CopyFrom(onnx.numpy_helper.from_array(-w, head.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(onnx_export, "trace_to_onnx", wrong_trace)
    monkeypatch.setattr(onnx_export, "simplify", lambda m: m)
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(ParityError, match="label agreement"):
        onnx_export.export_onnx(AdaptedModel.from_pretrained(export_model_dir), out, InputSpec.fixed(FIXED, 2),
                                labels=True, echo=lambda _: None)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no staging folder left behind either


def test_export_refuses_to_overwrite_without_being_asked(export_model_dir, tmp_path):
    from ifseg_deploy.export.onnx_export import export_onnx

    existing = tmp_path / "existing.onnx"
    existing.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(AdaptedModel.from_pretrained(export_model_dir), existing, InputSpec.fixed(FIXED))
    assert existing.read_bytes() == b"keep me"


# -- the parity reference ----------------------------------------------------------------------------------------
def test_parity_reference_refinement_equals_the_runtime_one_without_ties():
    from ifseg_deploy.refine import cosine_similarity, knn_refine, tie_dependent_cells

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 5, 4, 6, generator=g), dim=1)
    features = torch.randn(2, 16, 4, 6, generator=g)
    sim = cosine_similarity(features)
    torch.testing.assert_close(knn_refine(probs, features, 3, 25, tie_break="lowest_index"),
                               knn_refine(probs, features, 3, 25))
    assert not tie_dependent_cells(sim, 3, 25).any()


def test_parity_sets_tie_dependent_cells_apart():
    """Cells 1, 2 and 3 have identical features, so cell 0's second neighbour (k=2: itself and one more) is any
    of them: cell 0 depends on tie-breaking; cells 4 and 5, each the other's clear neighbour, do not."""
    from ifseg_deploy.export.parity import compare
    from ifseg_deploy.refine import cosine_similarity, tie_dependent_cells

    features = torch.zeros(1, 4, 1, 6)
    features[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    features[0, :, 0, 1:4] = torch.tensor([0.6, 0.8, 0.0, 0.0])[:, None]
    features[0, :, 0, 4] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    features[0, :, 0, 5] = torch.tensor([0.0, 0.0, 0.6, 0.8])
    ties = tie_dependent_cells(cosine_similarity(features), k=2, iterations=3)[0]
    assert ties.tolist() == [True, True, True, True, False, False]

    class Ref:
        def __call__(self, x):
            return np.full((1, 2, 1, 3), 0.5, np.float32) + np.array([0.1, -0.1], np.float32)[None, :, None, None]

        def tie_cells(self, x):
            return np.array([[[True, False, False]]])

    flipped = Ref()(None).copy()
    flipped[0, :, 0, 0] = flipped[0, ::-1, 0, 0]  # the tie-dependent cell changes label
    report = compare(lambda x: flipped, Ref(), [np.zeros((1, 3, 16, 48), np.float32)], "cand", "ref")
    assert (report.agreement, report.cells, report.tie_cells) == (1.0, 2, 1)
    assert report.agreement_all == pytest.approx(2 / 3) and report.max_abs == 0.0
