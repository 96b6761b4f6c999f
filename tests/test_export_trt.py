"""TensorRT engine build and run: only where TensorRT >= 10, pycuda and a CUDA GPU are present (never faked).

On such a machine: fp32 and fp16 engines from the exported ONNX files (fixed and dynamic), parity with ONNX
Runtime, the engine cache (second build is a hit), an engine file + sidecar opened by ``TensorRTBackend`` and
by a ``Segmenter``, and a stale sidecar refused.
"""

from __future__ import annotations

import json

import numpy as np
import pytest


def _gpu_tensorrt_reason() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return "TensorRT is not installed (it cannot be installed on the development machines)"
    if int(tensorrt.__version__.split(".")[0]) < 10:
        return f"TensorRT {tensorrt.__version__} < 10"
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() < 1:
            return "no CUDA GPU"
    except Exception as e:  # noqa: BLE001 - any failure means: no usable GPU here
        return f"pycuda/CUDA unusable: {e}"
    return None


REASON = _gpu_tensorrt_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


@pytest.fixture(scope="module")
def exports(fixed_export, dynamic_export):
    return {"fixed": fixed_export[0], "dynamic": dynamic_export}


@pytest.mark.parametrize("which,precision,min_agreement", [("fixed", "fp32", 0.999), ("fixed", "fp16", 0.95),
                                                           ("dynamic", "fp16", 0.95)])
def test_engine_matches_onnxruntime(exports, tmp_path, which, precision, min_agreement):
    from ifseg_deploy.export.inputs import parity_inputs
    from ifseg_deploy.runtime.backends.onnxruntime import OrtBackend
    from ifseg_deploy.runtime.backends.tensorrt import TensorRTBackend

    onnx_path = exports[which]
    trt_backend = TensorRTBackend.from_file(onnx_path, precision=precision, cache_dir=tmp_path)
    ref = OrtBackend.from_file(onnx_path, device="cpu")
    inputs, _ = parity_inputs(ref.info.input, ref.preprocessing, 4)
    agree, cells = 0, 0
    for x in inputs:
        got, want = trt_backend.probs(x), ref.probs(x)
        assert got.shape == want.shape and np.isfinite(got).all()
        if precision == "fp32":
            assert np.abs(got - want).max() < 1e-3
        agree += int((got.argmax(1) == want.argmax(1)).sum())
        cells += want.shape[0] * want.shape[2] * want.shape[3]
    assert agree / cells >= min_agreement
    trt_backend.close()


def test_cli_engine_is_cached_and_opened_from_its_file(exports, tmp_path):
    from click.testing import CliRunner

    from ifseg_deploy.cli import cli
    from ifseg_deploy.runtime.backends.tensorrt import TensorRTBackend
    from ifseg_deploy.runtime.engine_file import StaleEngineError, sidecar_path
    from ifseg_deploy.runtime.segmenter import Segmenter

    out, cache = tmp_path / "m.engine", tmp_path / "cache"
    args = ["export", "--model", str(exports["fixed"]), "--format", "tensorrt", "--precision", "fp16",
            "--engine-cache", str(cache), "--out", str(out)]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "building a fp16 TensorRT" in first.output and "layer(s) in fp32" in first.output
    second = CliRunner().invoke(cli, [*args, "--overwrite"])
    assert second.exit_code == 0 and "using the cached engine" in second.output
    with Segmenter.from_pretrained(out, backend="tensorrt", device="cuda") as seg:
        result = seg(np.zeros((48, 64, 3), np.uint8))
        assert result.labels.shape == (48, 64)
    side = sidecar_path(out)
    record = json.loads(side.read_text())
    record["key"]["tensorrt_version"] = "9.9.9"
    from ifseg_deploy.runtime.engine_file import EngineKey

    record["key_digest"] = EngineKey.from_dict(record["key"]).digest()
    side.write_text(json.dumps(record))
    with pytest.raises(StaleEngineError, match="tensorrt_version: engine 9.9.9"):
        TensorRTBackend.from_file(out)
