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
