"""FP16 ONNX (`export --precision fp16`): a real fp16 graph whose Cast nodes keep LayerNorm, softmax, the norms and
the kNN refinement in fp32; checked against fp32 on ONNX Runtime before it is written; and the engine key of the
strongly typed TensorRT build that consumes it (the build itself needs TensorRT: tests/test_export_trt.py)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from ifseg_deploy.cli import cli

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime", reason="the FP16 export is checked on ONNX Runtime: needs the [onnx] extra")
pytest.importorskip("modelopt.onnx.autocast", reason="the FP16 conversion is ModelOpt's AutoCast: the [int8] extra")

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def fp16_export(fixed_export, tmp_path_factory):
    """(the fixed tiny export converted through the CLI, what the CLI printed)."""
    out = tmp_path_factory.mktemp("fp16-export") / "fixed.fp16.onnx"
    res = CliRunner().invoke(cli, ["export", "--model", str(fixed_export[0]), "--precision", "fp16", "--out",
                                   str(out)])
    assert res.exit_code == 0, res.output
    return out, res.output


def _types(model) -> dict[str, int]:
    typed = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             [*typed.graph.value_info, *typed.graph.input, *typed.graph.output]}
    types.update({i.name: i.data_type for i in typed.graph.initializer})
    return types


def test_fp16_file_is_an_fp16_graph(fixed_export, fp16_export):
    from ifseg_deploy.export.int8 import similarity_matmuls
    from ifseg_deploy.runtime.model_info import read_info

    path, output = fp16_export
    assert path.stat().st_size < 0.6 * fixed_export[0].stat().st_size  # weights stored fp16
    model = onnx.load(str(path))
    types = _types(model)
    similarity = set(similarity_matmuls(model))
    assert len(similarity) == 1
    compute = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    assert {n.op_type for n in compute} == {"MatMul", "Gemm", "Conv"}
    for n in compute:  # every product on fp16 tensors, except the refinement's cosine similarity
        want = FLOAT if n.name in similarity else FLOAT16
        assert types[n.input[0]] == want and types[n.input[1]] == want, (n.op_type, n.name)
    # the runtime feeds and reads it as before
    assert [types[i.name] for i in model.graph.input] == [FLOAT]
    assert types["probs"] == FLOAT
    info = read_info(path)
    assert info.precision == "fp16" and info.extra["fp16"]["fp32_op_types"][0] == "LayerNormalization"
    assert "labels: 100.000%" in output or "labels: 99." in output


@pytest.mark.parametrize("op_type", ["LayerNormalization", "Softmax", "ReduceMean", "ReduceL2", "TopK"])
def test_precision_sensitive_ops_compute_in_fp32(fp16_export, op_type):
    model = onnx.load(str(fp16_export[0]))
    types = _types(model)
    made_by = {o: n for n in model.graph.node for o in n.output}
    nodes = [n for n in model.graph.node if n.op_type == op_type]
    assert nodes
    for n in nodes:
        data = n.input[0]
        assert types[data] == FLOAT, (op_type, n.name)
        assert all(types[o] in (FLOAT, onnx.TensorProto.INT64) for o in n.output)
    if op_type == "LayerNormalization":  # fed by an explicit Cast from the fp16 part of the graph
        assert any(made_by.get(n.input[0]) is not None and made_by[n.input[0]].op_type == "Cast" for n in nodes)


def test_refinement_stays_fp32(fp16_export):
    """The neighbour search and the averaging rounds: no fp16 value between the features and the outputs."""
    model = onnx.load(str(fp16_export[0]))
    types = _types(model)
    gathers = [n for n in model.graph.node if n.op_type == "GatherElements"]
    assert len(gathers) == 25  # the 25 rounds
    assert all(types[n.input[0]] == FLOAT for n in gathers)


def test_fp16_agrees_with_fp32_on_the_trained_model(demo_report, tmp_path):
    """The gate on a trained model: >= 99% of the labels (and close probabilities) at its own size."""
    from ifseg_deploy.export.pipeline import export_model

    out_dir, _ = demo_report
    out = tmp_path / "model.fp16.onnx"
    summary = export_model(out_dir / "model.onnx", out, precision="fp16", echo=lambda _: None)
    report = summary.reports[-1]
    assert report.candidate == "onnxruntime fp16 (CPU)" and report.cells >= 1000
    assert report.agreement >= 0.99
    # measured 1.4e-4; with the refinement in fp16 (its similarity and rounds) 1.0e-3
    assert report.mean_abs < 5e-4
    assert out.stat().st_size < 0.8 * (out_dir / "model.onnx").stat().st_size


def _overflowing_fp32(src, dst) -> None:
    """A model whose first convolution's outputs exceed fp16's range (65504): fine in fp32, inf in fp16."""
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    w = numpy_helper.to_array(inits[conv.input[1]])
    # the weights themselves stay within fp16 (AutoCast keeps out-of-range initializers fp32), their sums do not
    inits[conv.input[1]].CopyFrom(numpy_helper.from_array((w * (6e4 / np.abs(w).max())).astype(np.float32),
                                                          conv.input[1]))
    onnx.save(model, str(dst))


def test_fp16_that_overflows_is_refused_and_nothing_written(fixed_export, tmp_path):
    src = tmp_path / "loud.onnx"
    _overflowing_fp32(fixed_export[0], src)
    out = tmp_path / "out" / "loud.fp16.onnx"
    res = CliRunner().invoke(cli, ["export", "--model", str(src), "--precision", "fp16", "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "non-finite" in res.output and "nothing was written" in res.output and "Traceback" not in res.output
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_fp16_file_builds_only_fp16_engines(fp16_export, tmp_path):
    out = tmp_path / "x.engine"
    res = CliRunner().invoke(cli, ["export", "--model", str(fp16_export[0]), "--format", "tensorrt", "--precision",
                                   "fp32", "--out", str(out)])
    assert res.exit_code == 1 and "this ONNX file is fp16" in res.output and not out.exists()
    res = CliRunner().invoke(cli, ["export", "--model", str(fp16_export[0]), "--precision", "fp16", "--out",
                                   str(out)])
    assert res.exit_code == 2 and "already a fp16 ONNX file" in res.output


def test_engine_key_names_the_strongly_typed_build():
    """fp16 engines are strongly typed; the key says so, so an engine of the older pinned build is never reused."""
    from ifseg_deploy.export.trt_build import BuildOptions

    fp16, int8, fp32 = BuildOptions("fp16"), BuildOptions("int8"), BuildOptions("fp32")
    assert fp16.strongly_typed and not int8.strongly_typed and not fp32.strongly_typed
    assert fp16.key_options()["network"] == "strongly_typed" and fp16.key_options()["fp32_pins"] is None
    assert int8.key_options()["network"] == "weakly_typed" and int8.key_options()["fp32_pins"]
    old_pinned_fp16 = {"workspace_bytes": fp16.workspace_bytes, "optimization_level": None,
                       "fp32_pins": int8.key_options()["fp32_pins"]}
    assert fp16.key_options() != old_pinned_fp16
