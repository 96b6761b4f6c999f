"""What this installation can do: model presets and the optional parts that are importable.

Used by ``ifseg-deploy info``. Every probe is defensive: a missing package is reported as ``not installed``,
a package that is present but fails to import (a missing shared library, a version clash) as ``error`` with a
short message, and nothing here ever raises. Heavy modules are imported only inside the probes.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import platform
import sys
from typing import Any

INSTALLED = "installed"
NOT_INSTALLED = "not installed"
ERROR = "error"

# module name -> distributions that may provide it (the first one found names the version)
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "triton": ("triton", "pytorch-triton", "triton-nightly"),
    "onnx": ("onnx",),
    "onnxruntime": (
        "onnxruntime-gpu",
        "onnxruntime",
        "onnxruntime-training",
        "ort-nightly-gpu",
        "ort-nightly",
    ),
    "modelopt": ("nvidia-modelopt", "nvidia-modelopt-core"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu11", "tensorrt-cu13", "tensorrt-libs"),
    "pycuda": ("pycuda",),
    "onnxslim": ("onnxslim",),
    "onnxsim": ("onnxsim", "onnx-simplifier"),
}

# what each optional part is used for (shown by `info`)
PURPOSE: dict[str, str] = {
    "torch": "model, adaptation, PyTorch backend",
    "triton": "fused GPU kernels",
    "onnx": "ONNX export",
    "onnxruntime": "ONNX backend, INT8 checking",
    "modelopt": "INT8 (Q/DQ) quantization",
    "tensorrt": "TensorRT engines",
    "pycuda": "TensorRT runtime buffers",
    "onnxslim": "ONNX graph simplification",
    "onnxsim": "ONNX graph simplification",
}


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = f"{type(exc).__name__}: {text}" if not text.startswith(type(exc).__name__) else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dist_version(module: str) -> tuple[str | None, str | None]:
    for dist in _DISTRIBUTIONS.get(module, (module,)):
        try:
            return importlib.metadata.version(dist), dist
        except importlib.metadata.PackageNotFoundError:
            continue
        except Exception:  # broken metadata
            continue
    return None, None


def _entry(module: str) -> tuple[dict[str, Any], Any]:
    """Import ``module`` if it can be found. Returns (entry, module object or None)."""
    entry: dict[str, Any] = {"status": NOT_INSTALLED, "version": None, "distribution": None, "error": None}
    try:
        found = importlib.util.find_spec(module) is not None
    except Exception as exc:  # a broken parent package or a bad sys.path entry
        entry.update(status=ERROR, error=_short(exc))
        return entry, None
    if not found:
        return entry, None
    version, dist = _dist_version(module)
    entry.update(version=version, distribution=dist)
    try:
        mod = importlib.import_module(module)
    except (Exception, SystemExit) as exc:  # e.g. a missing libnvinfer / libcuda
        entry.update(status=ERROR, error=_short(exc))
        return entry, None
    entry["status"] = INSTALLED
    if entry["version"] is None:  # e.g. JetPack's TensorRT, installed by apt without pip metadata
        v = getattr(mod, "__version__", None) or getattr(mod, "VERSION_TEXT", None)
        entry["version"] = str(v) if v is not None else None
    return entry, mod


def probe_torch() -> dict[str, Any]:
    entry, torch = _entry("torch")
    if torch is None:
        return entry
    try:
        entry["cuda_build"] = torch.version.cuda  # None for a CPU wheel
        entry["cuda_available"] = bool(torch.cuda.is_available())
        devices = []
        if entry["cuda_available"]:
            for i in range(torch.cuda.device_count()):
                major, minor = torch.cuda.get_device_capability(i)
                devices.append(
                    {
                        "index": i,
                        "name": torch.cuda.get_device_name(i),
                        "compute_capability": f"{major}.{minor}",
                    }
                )
        entry["devices"] = devices
    except Exception as exc:
        entry["cuda_error"] = _short(exc)
    return entry


def probe_onnxruntime(test_providers: bool = True) -> dict[str, Any]:
    """onnxruntime: providers *listed* by the build, and which of them are *usable*.

    onnxruntime-gpu lists CUDA and TensorRT providers even where their libraries (CUDA, cuDNN, TensorRT)
    are missing; a session asked for such a provider silently falls back to CPU. So "usable" is decided by
    creating a session on a tiny in-memory model with that one provider and checking
    ``sess.get_providers()``.
    """
    entry, ort = _entry("onnxruntime")
    if ort is None:
        return entry
    try:
        listed = list(ort.get_available_providers())
    except Exception as exc:
        entry["providers_error"] = _short(exc)
        return entry
    entry["providers_listed"] = listed
    entry["providers_usable"] = None
    if not test_providers:
        entry["providers_note"] = "usability not tested"
        return entry
    try:
        from ifseg_deploy.runtime.backends.ort_providers import probe_providers

        _, usable, failures = probe_providers()
    except Exception as exc:  # noqa: BLE001 - e.g. no onnx to build the probe model
        entry["providers_note"] = f"usability not tested: {_short(exc, 80)}"
        return entry
    entry["providers_usable"] = usable
    entry["providers_unusable"] = failures
    return entry


def probe_tensorrt() -> dict[str, Any]:
    return _entry("tensorrt")[0]


def probe_plain(module: str) -> dict[str, Any]:
    return _entry(module)[0]


def probe_components(test_providers: bool = True) -> dict[str, dict[str, Any]]:
    """All optional parts, in a fixed order. Never raises."""
    probes = {
        "torch": probe_torch,
        "triton": lambda: probe_plain("triton"),
        "onnx": lambda: probe_plain("onnx"),
        "onnxruntime": lambda: probe_onnxruntime(test_providers),
        "modelopt": lambda: probe_plain("modelopt"),
        "tensorrt": probe_tensorrt,
        "pycuda": lambda: probe_plain("pycuda"),
        "onnxslim": lambda: probe_plain("onnxslim"),
        "onnxsim": lambda: probe_plain("onnxsim"),
    }
    out: dict[str, dict[str, Any]] = {}
    for name, probe in probes.items():
        try:
            entry = probe()
        except BaseException as exc:  # a probe must never take `info` down
            if isinstance(exc, KeyboardInterrupt):
                raise
            entry = {"status": ERROR, "version": None, "distribution": None, "error": _short(exc)}
        entry["purpose"] = PURPOSE.get(name, "")
        out[name] = entry
    return out


def preset_info(with_params: bool = True) -> dict[str, Any]:
    """The model presets from :mod:`ifseg_deploy.presets`, as plain data.

    Returns ``{"presets": {name: {...}}, "error": None}``, or ``{"presets": {}, "error": msg}`` when the
    preset table cannot be imported.
    """
    try:
        from ifseg_deploy.presets import PRESETS
    except Exception as exc:
        return {"presets": {}, "error": f"cannot import ifseg_deploy.presets ({_short(exc)})"}
    presets: dict[str, Any] = {}
    for name, cfg in PRESETS.items():
        row: dict[str, Any] = {}
        for field in ("d_model", "ffn_dim", "heads", "encoder_layers", "decoder_layers", "resnet_type"):
            value = getattr(cfg, field, None)
            row[field] = value
        try:
            layers = getattr(cfg, "resnet_layers", None)
            row["resnet_layers"] = list(layers) if layers is not None else None
        except Exception:
            row["resnet_layers"] = None
        row["approx_params"] = None
        if with_params:
            try:
                from ifseg_deploy.modeling.segofa import parameter_count

                row["approx_params"] = parameter_count(cfg)
            except Exception as exc:
                row["approx_params_error"] = _short(exc, 120)
        presets[name] = row
    return {"presets": presets, "error": None}


def collect(with_params: bool = True, test_providers: bool = True) -> dict[str, Any]:
    """Everything ``ifseg-deploy info`` reports, JSON-serialisable."""
    from ifseg_deploy.version import __version__

    presets = preset_info(with_params=with_params)
    return {
        "ifseg_deploy": {"version": __version__},
        "python": {
            "version": platform.python_version(),
            "executable": sys.executable,
            "platform": platform.platform(),
            "machine": platform.machine(),
        },
        "presets": presets["presets"],
        "presets_error": presets["error"],
        "components": probe_components(test_providers=test_providers),
    }
