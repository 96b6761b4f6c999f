"""Damaged or mismatched model files get a named error (the file, its size, what it is not), in the Python API
and on every command that opens them; and a TensorRT engine is checked (sidecar, checksum, TensorRT version,
GPU) before TensorRT is imported, against an explicit ``environment`` or the real machine.

None of this needs TensorRT: engine plans are opaque bytes until they pass their checks, and the tests never
get further than that (a plan that passes them needs TensorRT, which is blocked here).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ifseg_deploy.artifacts import ArtifactError, check_artifact
from ifseg_deploy.checkpoints.errors import CheckpointError
from ifseg_deploy.cli import cli
from ifseg_deploy.runtime.engine_file import (
    CorruptEngineError,
    EngineEnvironment,
    EngineKey,
    StaleEngineError,
    sidecar_path,
    write_engine,
)
from ifseg_deploy.runtime.input_spec import InputSpec
from ifseg_deploy.runtime.model_info import ModelInfo

onnx = pytest.importorskip("onnx")

ORIN = EngineEnvironment(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7")
PLAN = bytes(range(256)) * 40  # stands for a serialized engine: only its bytes matter before TensorRT


def _key(env: EngineEnvironment = ORIN) -> EngineKey:
    return EngineKey.create("ab" * 32, env.tensorrt_version, env.gpu_name, env.compute_capability, "fp16",
                            [[1, 3, 64, 96]] * 3)


def _engine(folder: Path, env: EngineEnvironment = ORIN) -> Path:
    info = ModelInfo(categories=["floor", "wall"], preprocessing={}, input=InputSpec.fixed((64, 96)),
                     precision="fp16")
    return write_engine(folder / "model.engine", PLAN, _key(env), info.to_props())


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Any `import tensorrt` now fails, on every machine: what passes a check below never reached TensorRT."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


# -- damaged ONNX files ------------------------------------------------------------------------------------------
def _damaged_onnx(folder: Path, damage: str, good_file: Path) -> tuple[Path, int]:
    path = folder / f"{damage}.onnx"
    good = good_file.read_bytes()
    data = {"truncated": good[: len(good) // 2], "text": b"this is a README, not a model\n", "empty": b"",
            "header-only": good[:2]}[damage]  # header-only: the ir_version field, a "valid" empty message
    path.write_bytes(data)
    return path, len(data)


@pytest.mark.parametrize("damage", ["truncated", "text", "empty", "header-only"])
def test_damaged_onnx_is_named_with_its_size(tmp_path, damage, fixed_export):
    from ifseg_deploy.runtime.backends.onnxruntime import OrtBackend
    from ifseg_deploy.runtime.model_info import read_info

    path, size = _damaged_onnx(tmp_path, damage, fixed_export[0])
    for opener in (OrtBackend.from_file, read_info):  # the backend; export, bench and int8 read the info
        with pytest.raises(ArtifactError) as err:
            opener(path)
        message = str(err.value)
        assert f"{path} ({size:,} bytes) is not a complete ONNX file" in message
        assert "DecodeError" not in message


def _refused(result, *fragments: str, code: int = 1) -> str:
    """A clean refusal: the exit code, a message with every fragment, and no exception left for a traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # anything else prints a traceback
    assert "Traceback" not in result.output
    assert "Error" in result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)
    return result.output


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("command", ["segment", "eval", "export", "export-int8", "export-int8-nocalib",
                                     "export-tensorrt", "bench"])
def test_every_command_refuses_a_truncated_onnx_by_name(tmp_path, image, command, export_model_dir, fixed_export):
    path, size = _damaged_onnx(tmp_path, "truncated", fixed_export[0])
    args = {
        "segment": ["segment", str(image), "--model", str(path), "--backend", "onnxruntime", "--out",
                    str(tmp_path / "o")],
        "eval": ["eval", "--model", str(path), "--backend", "onnxruntime", "--dataset", "synthetic", "--limit",
                 "1"],
        "export": ["export", "--model", str(path), "--out", str(tmp_path / "q.onnx")],
        "export-int8-nocalib": ["export", "--model", str(path), "--precision", "int8", "--out",
                                str(tmp_path / "q.onnx")],
        "export-int8": ["export", "--model", str(path), "--precision", "int8", "--calib-images", str(image.parent),
                        "--out", str(tmp_path / "q.onnx")],
        "export-tensorrt": ["export", "--model", str(path), "--format", "tensorrt", "--out",
                            str(tmp_path / "m.engine")],
        "bench": ["bench", "--model", str(export_model_dir), "--model", str(path), "--backends", "onnxruntime",
                  "--precisions", "fp32", "--out", str(tmp_path / "b")],
    }[command]
    _refused(CliRunner().invoke(cli, args), str(path), f"{size:,} bytes", "not a complete ONNX file")


# -- damaged engines: checked before TensorRT --------------------------------------------------------------------
@pytest.mark.parametrize("damage,message", [
    ("empty", "(0 bytes) is not a complete TensorRT engine: the file is empty"),
    ("truncated", "(10,000 bytes) is not a complete TensorRT engine: model.engine.json records 10,240 bytes"),
    ("altered", "does not match the checksum in model.engine.json"),
    ("no-sidecar", "has no model.engine.json beside it"),
])
def test_damaged_engine_is_refused_before_tensorrt(tmp_path, image, no_tensorrt, damage, message):
    from ifseg_deploy.runtime.backends.tensorrt import TensorRTBackend

    path = _engine(tmp_path)
    if damage == "empty":
        path.write_bytes(b"")
        sidecar_path(path).unlink()
    elif damage == "truncated":
        path.write_bytes(PLAN[:10_000])
    elif damage == "altered":
        path.write_bytes(PLAN[::-1])
    else:
        sidecar_path(path).unlink()
    with pytest.raises(CorruptEngineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TensorRTBackend.from_file(path, environment=ORIN)
    result = CliRunner().invoke(cli, ["segment", str(image), "--model", str(path), "--backend", "tensorrt",
                                      "--out", str(tmp_path / "o")])
    _refused(result, str(path), message)


# -- item 7: an engine from another machine, through the public entry point ----------------------------------------
@pytest.mark.parametrize("here,differs", [
    (EngineEnvironment("10.3.0", "NVIDIA H100 80GB HBM3", "9.0"),
     ["gpu_name: engine Orin / this machine NVIDIA H100 80GB HBM3",
      "compute_capability: engine 8.7 / this machine 9.0"]),
    (EngineEnvironment("10.13.0.35", "Orin", "8.7"), ["tensorrt_version: engine 10.3.0 / this machine 10.13.0.35"]),
])
def test_engine_from_another_machine_is_refused_before_tensorrt(tmp_path, no_tensorrt, here, differs):
    from ifseg_deploy.export.trt_build import TensorRTUnavailableError
    from ifseg_deploy.runtime.backends.tensorrt import TensorRTBackend
    from ifseg_deploy.runtime.segmenter import Segmenter

    path = _engine(tmp_path)  # an intact plan and sidecar, built on a Jetson Orin with TensorRT 10.3
    with pytest.raises(StaleEngineError) as err:
        TensorRTBackend.from_file(path, environment=here)
    for line in differs:
        assert line in str(err.value)
    assert len(str(err.value).splitlines()) == 2 + len(differs)  # only the fields that differ are named
    with pytest.raises(StaleEngineError):
        Segmenter.from_pretrained(path, backend="tensorrt", environment=here)
    # On the machine it was built for, every check passes and the next step needs TensorRT itself.
    with pytest.raises(TensorRTUnavailableError):
        TensorRTBackend.from_file(path, environment=ORIN)


# -- damaged adapted-model directories ---------------------------------------------------------------------------
@pytest.fixture
def damaged_model(tmp_path, request, export_model_dir) -> tuple[Path, str]:
    model = tmp_path / "my_model"
    shutil.copytree(export_model_dir, model)
    damage = request.param
    if damage == "config":
        cfg = model / "config.json"
        cfg.write_text(cfg.read_text()[:50])
        return model, f"{cfg} is corrupt (50 bytes;"
    weights = model / "model.safetensors"
    data = weights.read_bytes()[:4000]
    weights.write_bytes(data)
    return model, f"{weights} is truncated or corrupt (4,000 bytes;"


@pytest.mark.parametrize("damaged_model", ["config", "weights"], indirect=True)
def test_damaged_model_directory_is_named(damaged_model, image, tmp_path):
    from ifseg_deploy.model_dir import AdaptedModel

    model, detail = damaged_model
    with pytest.raises(CheckpointError) as err:
        AdaptedModel.from_pretrained(model)
    assert f"{model} is not a complete adapted-model directory: {detail}" in str(err.value)
    runner = CliRunner()
    for args in (["segment", str(image), "--model", str(model), "--out", str(tmp_path / "o")],
                 ["eval", "--model", str(model), "--dataset", "synthetic", "--limit", "1"],
                 ["export", "--model", str(model), "--out", str(tmp_path / "m.onnx")],
                 ["bench", "--model", str(model), "--backends", "torch", "--out", str(tmp_path / "b")]):
        _refused(runner.invoke(cli, args), "not a complete adapted-model directory", detail)
    assert not (tmp_path / "m.onnx").exists()


# -- a file of one kind given where another is needed -------------------------------------------------------------
def test_wrong_kind_is_named_with_the_backend_that_opens_it(tmp_path, image, fixed_export, export_model_dir):
    engine = _engine(tmp_path)
    onnx_file, model = fixed_export[0], export_model_dir
    cases = [
        (onnx_file, "torch", "is an ONNX file, not an adapted-model directory; open it with backend 'onnxruntime'"),
        (model, "onnxruntime", "is an adapted-model directory, not an ONNX file; open it with backend 'torch'"),
        (engine, "onnxruntime", "is a TensorRT engine, not an ONNX file; open it with backend 'tensorrt'"),
        (tmp_path, "tensorrt", "is a folder, not a TensorRT engine"),
    ]
    for path, backend, message in cases:
        result = CliRunner().invoke(cli, ["segment", str(image), "--model", str(path), "--backend", backend,
                                          "--out", str(tmp_path / "o")])
        _refused(result, f"{path} {message}")
    result = CliRunner().invoke(cli, ["export", "--model", str(engine), "--out", str(tmp_path / "x.onnx")])
    _refused(result, f"{engine} is a TensorRT engine", "export takes an adapted-model directory or an .onnx file",
             code=2)
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        check_artifact(tmp_path / "missing.onnx", "onnx")
