"""Which ONNX Runtime execution providers work here, and which ones a ``--device`` asks for.

onnxruntime-gpu *lists* the CUDA and TensorRT providers even where their libraries (CUDA, cuDNN, TensorRT) are
missing, and a session asked for such a provider silently falls back to the CPU. So a provider counts as usable
only after a session on a tiny in-memory model really ran with it.
"""

from __future__ import annotations

import contextlib
import functools
import io
from typing import Any

from ...devices import DEVICE_HELP, DeviceError, parse_device

TRT_EP, CUDA_EP, CPU_EP = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
PREFERENCE = (TRT_EP, CUDA_EP, CPU_EP)


def _tiny_model() -> bytes:
    """A one-node Identity model, serialized (needs onnx)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "ifseg_deploy_probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="ifseg-deploy")
    model.ir_version = 8  # old enough for any onnxruntime, whatever IR version onnx writes by default
    return model.SerializeToString()


def _ep_error(printed: str) -> str | None:
    """The message of an "EP Error" block that onnxruntime printed, without the C++ source location."""
    for line in printed.splitlines():
        if line.startswith("EP Error "):
            msg = line.split(") ", 1)[1] if ") " in line else line
            return " ".join(msg.split())[:120]
    return None


def probe_providers() -> tuple[list[str], list[str], dict[str, str]]:
    """(listed, usable, {unusable provider: why}) for this onnxruntime build on this machine."""
    import onnxruntime as ort

    listed = list(ort.get_available_providers())
    model = _tiny_model()
    usable: list[str] = []
    failures: dict[str, str] = {}
    ort.set_default_logger_severity(4)  # a provider that fails to load logs errors; this is only a probe
    try:
        for provider in listed:
            # onnxruntime *prints* "EP Error ..." when a provider fails and it falls back: keep it off the
            # console (it would corrupt `info --json`) and use it as the reason
            printed = io.StringIO()
            try:
                with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                    opts = ort.SessionOptions()
                    opts.log_severity_level = 4
                    active = list(ort.InferenceSession(model, sess_options=opts, providers=[provider]).get_providers())
            except Exception as exc:  # noqa: BLE001 - a probe: any failure means "not usable", with its reason
                failures[provider] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
                continue
            if provider in active:
                usable.append(provider)
            else:
                reason = _ep_error(printed.getvalue())
                failures[provider] = "fell back to " + ", ".join(active) + (f": {reason}" if reason else "")
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default (warning)
    return listed, usable, failures


@functools.lru_cache(maxsize=1)
def usable_providers() -> tuple[str, ...]:
    """:func:`probe_providers`' usable list, cached per process."""
    try:
        usable = probe_providers()[1]
    except Exception:  # noqa: BLE001 - no onnx to build the probe model: the CPU provider always works
        usable = []
    return tuple(usable) or (CPU_EP,)


def providers_for(device: str | None) -> list[str]:
    """Providers for a device string: "cpu" -> CPU; "cuda[:N]" -> CUDA then CPU; "tensorrt" -> TensorRT, CUDA,
    CPU; None / "auto" -> the usable ones among :data:`PREFERENCE`, in that order. Explicit choices are not
    filtered (a GPU provider that then fails to load is an error when the session is made)."""
    if device is None or str(device).strip().lower() == "auto":
        usable = usable_providers()
        return [p for p in PREFERENCE if p in usable] or [CPU_EP]
    try:
        dev = parse_device(device)
    except DeviceError:
        raise DeviceError(f"unknown device {device!r} for the onnxruntime backend; use {DEVICE_HELP}") from None
    if dev.kind == "cpu":
        return [CPU_EP]
    return [TRT_EP, CUDA_EP, CPU_EP] if dev.tensorrt else [CUDA_EP, CPU_EP]


def device_id(device: str | None) -> int:
    """The GPU index the CUDA and TensorRT providers get (0 for "auto" and "tensorrt")."""
    if device is None or str(device).strip().lower() == "auto":
        return 0
    return parse_device(device).index


def describe_probe() -> dict[str, Any]:
    """The probe as plain data (for `ifseg-deploy info`)."""
    listed, usable, failures = probe_providers()
    return {"providers_listed": listed, "providers_usable": usable, "providers_unusable": failures}
