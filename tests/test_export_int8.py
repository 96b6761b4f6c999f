"""INT8 by explicit quantization (modelopt Q/DQ): what is quantized and what is not, calibration preprocessing,
and the ONNX Runtime check against fp32."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("modelopt.onnx.quantization")

import onnx  # noqa: E402
from helpers.export import CATEGORIES, FIXED, TINY_INT8_AGREEMENT  # noqa: E402

from ifseg_deploy.runtime.model_info import read_metadata  # noqa: E402

SENSITIVE = {"LayerNormalization", "Softmax", "Pow", "ReduceMean", "ReduceL2", "Sqrt", "TopK"}


def _graph(int8_export):
    model = onnx.load(str(int8_export[0]))
    made_by = {o: n for n in model.graph.node for o in n.output}
    return model, made_by


def _dq_fed(node, made_by) -> bool:
    return any(made_by.get(i) is not None and made_by[i].op_type == "DequantizeLinear" for i in node.input)


def test_int8_graph_quantizes_convolutions_and_linear_layers(fixed_export, int8_export):
    model, made_by = _graph(int8_export)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] >= ops["QuantizeLinear"]
    quantized = Counter(n.op_type for n in model.graph.node if _dq_fed(n, made_by))
    fp32_ops = Counter(n.op_type for n in onnx.load(str(fixed_export[0])).graph.node)
    # every convolution of the ResNet, and most matmuls (linear layers, attention, class head)
    assert quantized["Conv"] == fp32_ops["Conv"]
    assert quantized["MatMul"] >= fp32_ops["MatMul"] // 2


def test_no_qdq_pair_feeds_a_precision_sensitive_op(int8_export):
    model, made_by = _graph(int8_export)
    present = {n.op_type for n in model.graph.node} & SENSITIVE
    assert {"LayerNormalization", "Softmax", "TopK"} <= present  # the check below is not vacuous
    offenders = [f"{n.op_type} {n.name}" for n in model.graph.node if n.op_type in SENSITIVE and _dq_fed(n, made_by)]
    assert offenders == []
    # residual adds (whose input Q/DQ the next LayerNorm would share) and position-table resizes stay fp32
    assert [n.name for n in model.graph.node if n.op_type in ("Add", "Resize") and _dq_fed(n, made_by)] == []


def test_knn_similarity_matmul_is_not_quantized(int8_export):
    """The refinement picks neighbours by cosine similarity (MatMul -> Add(2I) -> TopK); INT8 there could swap
    neighbours. Walk up from the TopK to that MatMul and check its inputs are plain floats."""
    model, made_by = _graph(int8_export)
    (topk,) = [n for n in model.graph.node if n.op_type == "TopK"]
    node, hops = made_by[topk.input[0]], 0
    while node.op_type != "MatMul":
        node, hops = made_by[node.input[0]], hops + 1
        assert hops < 5
    assert not _dq_fed(node, made_by)


def test_int8_metadata_says_what_it_is(int8_export):
    info = read_metadata(onnx.load(str(int8_export[0])))
    assert info.precision == "int8" and info.categories == CATEGORIES
    cal = info.extra["calibration"]
    assert cal["method"] == "entropy" and cal["images"] == 12 and cal["size"] == list(FIXED)
    assert "LayerNormalization" in cal["excluded_op_types"]


def test_calibration_images_are_preprocessed_like_the_runtime(fixed_export, dynamic_export, calibration_dir):
    """Compared with the Segmenter's own preprocessing: a stretch to the fixed size, or the keep-ratio resize
    (centre-cropped to the opt size) for a dynamic model."""
    from PIL import Image

    from ifseg_deploy.export.inputs import calibration_batch, list_images
    from ifseg_deploy.runtime.backends.onnxruntime import OrtBackend
    from ifseg_deploy.runtime.segmenter import Segmenter

    files = list_images(calibration_dir)[:3]
    fixed = OrtBackend.from_file(fixed_export[0])
    batch = calibration_batch(files, fixed.preprocessing, fixed.info.input)
    seg = Segmenter(fixed)
    for f, got in zip(files, batch):
        np.testing.assert_array_equal(got, seg.preprocess(np.asarray(Image.open(f).convert("RGB"))))
    dyn = OrtBackend.from_file(dynamic_export)
    batch = calibration_batch(files, dyn.preprocessing, dyn.info.input)
    seg = Segmenter(dyn)
    h, w = dyn.info.input.opt_size
    for f, got in zip(files, batch):
        full = seg.preprocess(np.asarray(Image.open(f).convert("RGB")))  # (3, 512, 683) or (3, 683, 512) ...
        top, left = (full.shape[1] - h) // 2, (full.shape[2] - w) // 2
        np.testing.assert_array_equal(got, full[:, top:top + h, left:left + w])


def test_int8_runs_on_onnxruntime_and_mostly_agrees_with_fp32(fixed_export, int8_export):
    from ifseg_deploy.runtime.backends.onnxruntime import OrtBackend

    x = np.random.default_rng(3).standard_normal((2, 3, *FIXED)).astype(np.float32)
    int8 = OrtBackend.from_file(int8_export[0])
    fp32 = OrtBackend.from_file(fixed_export[0])
    a, b = int8.probs(x), fp32.probs(x)
    assert a.shape == b.shape and np.isfinite(a).all()
    assert not np.array_equal(a, b)  # it really is a different (quantized) computation
    assert (a.argmax(1) == b.argmax(1)).mean() >= TINY_INT8_AGREEMENT
    # the export reported its check (ORT INT8 against ORT fp32) before writing the file
    report = "\n".join(int8_export[1])
    assert "parity onnxruntime INT8 (CPU) vs onnxruntime fp32 (CPU)" in report and "grid cells agree" in report


def test_int8_needs_calibration_images_and_an_fp32_source(tmp_path, fixed_export, int8_export):
    from ifseg_deploy.export.int8 import QuantizationError, quantize_int8
    from ifseg_deploy.export.pipeline import ExportUsageError, export_model

    with pytest.raises(ExportUsageError, match="calib-images"):
        export_model(fixed_export[0], tmp_path / "x.onnx", precision="int8")
    with pytest.raises(QuantizationError, match="already int8"):
        quantize_int8(int8_export[0], tmp_path / "y.onnx", np.zeros((1, 3, *FIXED), np.float32))
    with pytest.raises(QuantizationError, match="outside"):
        quantize_int8(fixed_export[0], tmp_path / "z.onnx", np.zeros((1, 3, 32, 32), np.float32))
