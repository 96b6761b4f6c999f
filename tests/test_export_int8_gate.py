"""The INT8 mIoU gate (`export --precision int8 --eval-dataset ... --max-miou-drop ...`) on the synthetic world's
trained model (the session's `demo --quick` output): a drop within the limit publishes the file, a drop over it
and an undefined mIoU fail and write nothing."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from ifseg_deploy.cli import cli

pytest.importorskip("onnxruntime", reason="INT8 export needs the [onnx] extra")
pytest.importorskip("modelopt.onnx.quantization", reason="INT8 export needs the [int8] extra")

#: The gate both runs share: at most 10 mIoU points lost. The demo model's INT8 stays within ~3 points of
#: fp32 with photo-like calibration; calibrated on flat gray frames it loses ~70.
GATE = ["--eval-dataset", "synthetic", "--eval-limit", "4", "--max-miou-drop", "0.1",
        # the gate under test is the mIoU one: label agreement must not be what fails
        "--reduced-agreement-threshold", "0"]


def _export_int8(fp32, calib, out, *extra):
    return CliRunner().invoke(cli, ["export", "--model", str(fp32), "--precision", "int8", "--calib-images",
                                    str(calib), "--calib-max", "4", "--out", str(out), *GATE, *extra])


def _miou_line(output: str) -> tuple[float, float]:
    m = re.search(r"mIoU: ([\d.]+) -> ([\d.]+)", output)
    assert m, output
    return float(m.group(1)), float(m.group(2))


def test_int8_within_the_mIoU_limit_is_written(demo_report, tmp_path):
    out_dir, _ = demo_report
    out = tmp_path / "ok.int8.onnx"
    res = _export_int8(out_dir / "model.onnx", out_dir / "calibration_images", out)
    assert res.exit_code == 0, res.output
    ref, cand = _miou_line(res.output)
    assert ref > 50 and ref - cand <= 10  # the gate measured a trained model, and it passed for a reason
    assert out.is_file()


def test_int8_over_the_mIoU_limit_fails_and_writes_nothing(demo_report, tmp_path):
    from PIL import Image

    out_dir, _ = demo_report
    gray = tmp_path / "gray"
    gray.mkdir()
    for i in range(4):  # a broken calibration: featureless frames give activation ranges far too narrow
        Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(gray / f"frame{i}.png")
    out = tmp_path / "bad" / "bad.int8.onnx"
    res = _export_int8(out_dir / "model.onnx", gray, out, "--calib-method", "max")
    assert res.exit_code == 1, res.output
    ref, cand = _miou_line(res.output)
    assert ref - cand > 10
    assert "mIoU drops by" in res.output and "more than the allowed 10.00" in res.output
    assert "nothing was written" in res.output and "Traceback" not in res.output
    assert not out.exists() and list(out.parent.iterdir()) == []  # not even a work folder is left


class _Unlabelled:
    """The synthetic scenes with every pixel ignored: no class has a union, so mIoU is undefined."""

    name = "unlabelled synthetic scenes"
    ignore_index = 255
    aliases: dict[str, list[str]] = {}

    def __init__(self, n: int = 2) -> None:
        from ifseg_deploy.synthetic.dataset import SyntheticDataset

        self.inner = SyntheticDataset(n, 256)
        self.classes = self.inner.classes

    def __len__(self) -> int:
        return len(self.inner)

    def load(self, i: int):
        image, mask = self.inner.load(i)
        return image, np.full_like(mask, 255)


def test_undefined_mIoU_fails_the_gate(demo_report):
    from ifseg_deploy.export.int8 import check_int8
    from ifseg_deploy.export.parity import ParityError

    out_dir, _ = demo_report
    x = np.zeros((1, 3, 256, 256), np.float32)
    with pytest.raises(ParityError, match="undefined on the evaluation set") as info:
        check_int8(out_dir / "model.onnx", out_dir / "model.int8.onnx", [x], min_agreement=0.0,
                   max_miou_drop=0.5, eval_dataset=_Unlabelled(), echo=lambda _: None)
    report = info.value.report
    assert report.miou == {"reference": None, "candidate": None}
    assert "no labelled pixel" in str(info.value)


@pytest.mark.parametrize("miou", [{"reference": math.nan, "candidate": math.nan},
                                  {"reference": 0.7, "candidate": None},
                                  {"reference": None, "candidate": 0.7}])
def test_gate_refuses_nan_or_missing_mIoU(miou):
    from ifseg_deploy.export.parity import ParityError, ParityReport, check

    report = ParityReport("INT8", "fp32", 0.0, 0.0, 1.0, 10, 1, [[1, 3, 16, 16]], miou=miou)
    with pytest.raises(ParityError, match="undefined"):
        check(report, 0.5, max_miou_drop=0.01)
    assert check(report, 0.5, max_miou_drop=None) is report  # no gate asked for: nothing to refuse
    ok = ParityReport("INT8", "fp32", 0.0, 0.0, 1.0, 10, 1, [[1, 3, 16, 16]],
                      miou={"reference": 0.7, "candidate": 0.695})
    assert check(ok, 0.5, max_miou_drop=0.01) is ok


def test_dynamic_int8_passes_the_issue_gate_on_the_trained_model(demo_report, tmp_path):
    """ONNX Runtime's dynamic INT8, the CPU INT8 format: at most 1 mIoU point lost and >= 97% of the labels kept
    on the demo's trained model, with int8 weights in the file (on skimage.data photos: the synthetic scenes alone
    keep 93.8% with int8 convolution weights, and the export falls back to float ones, next test)."""
    import onnx

    pytest.importorskip("skimage", reason="the gate's inputs are skimage.data photos (the dev extra installs it)")

    from ifseg_deploy.runtime.model_info import read_info

    out_dir, _ = demo_report
    out = tmp_path / "model.int8-dynamic.onnx"
    res = CliRunner().invoke(cli, ["export", "--model", str(out_dir / "model.onnx"), "--precision", "int8-dynamic",
                                   "--eval-dataset", "synthetic", "--eval-limit", "4", "--max-miou-drop", "0.01",
                                   "--reduced-agreement-threshold", "0.97", "--out", str(out)])
    assert res.exit_code == 0, res.output
    ref, cand = _miou_line(res.output)
    assert ref > 50 and ref - cand <= 1.0
    assert read_info(out).precision == "int8-dynamic"
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops and "ConvInteger" not in ops
    _check_conv_weights(model, int8=True)
    # (the 30% of fp32 the issue asks is OFA-Base's figure, in bench/README.md: this tiny model's file is mostly
    # position tables, which stay float)
    assert out.stat().st_size < (out_dir / "model.onnx").stat().st_size

    # the runtime folds the stored convolution weights back to float at load instead of per call
    import onnxruntime as ort

    from ifseg_deploy.runtime.backends.onnxruntime import OrtBackend

    base = ort.SessionOptions()
    base.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    OrtBackend.from_file(out, device="cpu", session_options=base).close()
    assert "DequantizeLinear" not in {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}


def _check_conv_weights(model, int8: bool) -> None:
    """Every convolution weight stored as int8 (one scale per output channel, computed in float), or none."""
    import onnx

    inits = {t.name: t for t in model.graph.initializer}
    made_by = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs
    if not int8:
        assert all(inits[c.input[1]].data_type == onnx.TensorProto.FLOAT for c in convs)
        return
    assert all(made_by[c.input[1]].op_type == "DequantizeLinear" for c in convs)
    for c in convs:
        q, scale = (inits[name] for name in made_by[c.input[1]].input[:2])
        assert q.data_type == onnx.TensorProto.INT8 and list(scale.dims) == [q.dims[0]]


def test_dynamic_int8_falls_back_to_float_convolutions_when_the_gate_refuses_int8_ones(demo_report, tmp_path):
    """On the demo model int8 convolution weights keep 97.1% of the labels and float ones 98.8% (photos): at a
    98% threshold the first file is refused and the second ships, with float convolution weights."""
    pytest.importorskip("skimage", reason="the figures above are on skimage.data photos")
    import onnx

    out_dir, _ = demo_report
    out = tmp_path / "model.int8-dynamic.onnx"
    res = CliRunner().invoke(cli, ["export", "--model", str(out_dir / "model.onnx"), "--precision", "int8-dynamic",
                                   "--reduced-agreement-threshold", "0.98", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "trying again with float convolution weights" in res.output
    _check_conv_weights(onnx.load(str(out)), int8=False)


def test_dynamic_int8_is_not_a_tensorrt_format(demo_report, tmp_path):
    out_dir, _ = demo_report
    out = tmp_path / "x.engine"
    res = CliRunner().invoke(cli, ["export", "--model", str(out_dir / "model.onnx"), "--format", "tensorrt",
                                   "--precision", "int8-dynamic", "--out", str(out)])
    assert res.exit_code == 2 and "TensorRT does not run" in res.output and "Traceback" not in res.output
    assert not out.exists()
