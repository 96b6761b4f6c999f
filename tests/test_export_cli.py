"""``ifseg-deploy export`` on the command line: help, a real export (the fixture), usage errors, INT8 from an
.onnx file, and what happens on a machine without TensorRT."""

from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner

from ifseg_deploy.cli import cli


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_help_names_every_option(runner):
    result = runner.invoke(cli, ["export", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--format", "--precision", "--calib-images", "--calib-method", "--input-size",
                   "--dynamic", "--min-size", "--opt-size", "--max-size", "--max-batch", "--no-refine", "--labels",
                   "--opset", "--agreement-threshold", "--out"):
        assert option in result.output
    assert "export" in runner.invoke(cli, ["--help"]).output


def test_cli_export_writes_a_checked_file(fixed_export):
    pytest.importorskip("onnxruntime")
    path, output = fixed_export
    assert path.is_file() and path.stat().st_size > 0
    assert "labels: 100.000% of" in output  # fp32 parity on the tiny model is exact up to rounding
    assert f"done: {path} (onnx, fp32, fixed 64x96, batch 1..2)" in output


@pytest.mark.parametrize("args,message", [
    (["--input-size", "64x96", "--dynamic"], "not both"),
    (["--min-size", "64x64"], "go with --dynamic"),
    (["--input-size", "64 by 96"], "HEIGHTxWIDTH"),
    (["--precision", "int8"], "--calib-images"),
    (["--eval-dataset", "folder"], "--eval-root"),
    (["--opset", "13"], "13"),
])
def test_usage_errors(runner, tmp_path, args, message, export_model_dir):
    out = tmp_path / "m.onnx"
    result = runner.invoke(cli, ["export", "--model", str(export_model_dir), "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_existing_output_is_kept(runner, tmp_path, export_model_dir):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    result = runner.invoke(cli, ["export", "--model", str(export_model_dir), "--out", str(out)])
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert out.read_bytes() == b"previous"


def test_int8_from_an_onnx_file_with_max_calibration(runner, tmp_path, fixed_export, calibration_dir):
    pytest.importorskip("modelopt.onnx.quantization")
    out = tmp_path / "m.int8.onnx"
    result = runner.invoke(cli, ["export", "--model", str(fixed_export[0]), "--precision", "int8",
                                 "--calib-images", str(calibration_dir), "--calib-method", "max",
                                 "--reduced-agreement-threshold", "0.75", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "calibrating INT8 (max) on 12 image(s)" in result.output
    assert "parity onnxruntime INT8 (CPU) vs onnxruntime fp32 (CPU)" in result.output
    from ifseg_deploy.runtime.backends.onnxruntime import OrtBackend

    info = OrtBackend.from_file(out).info
    assert info.precision == "int8" and info.extra["calibration"]["method"] == "max"


def test_int8_below_its_threshold_fails_and_writes_nothing(runner, tmp_path, fixed_export, calibration_dir):
    pytest.importorskip("modelopt.onnx.quantization")
    out = tmp_path / "m.int8.onnx"
    result = runner.invoke(cli, ["export", "--model", str(fixed_export[0]), "--precision", "int8",
                                 "--calib-images", str(calibration_dir), "--calib-max", "3",
                                 "--reduced-agreement-threshold", "1.0", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "failed its parity check" in result.output and "below the required 100.000%" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_format_without_tensorrt_says_how_to_get_it(runner, tmp_path, fixed_export):
    out = tmp_path / "m.engine"
    result = runner.invoke(cli, ["export", "--model", str(fixed_export[0]), "--format", "tensorrt",
                                 "--out", str(out), "--engine-cache", str(tmp_path / "cache")])
    assert result.exit_code == 1
    assert "TensorRT is not installed" in result.output and "JetPack" in result.output
    assert "nothing was written" in result.output
    assert not out.exists()
