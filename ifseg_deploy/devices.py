"""One reading of a ``--device`` string for every engine: PyTorch, ONNX Runtime and TensorRT.

Accepted: ``cpu``, ``cuda``, ``cuda:N``, ``auto`` (CUDA when PyTorch sees a GPU, else CPU) and ``tensorrt``
(ONNX Runtime's TensorRT provider on GPU 0; for the other engines the same as ``cuda``). Each engine asks this
module what the string means for it, so a typo is refused the same way everywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .errors import InputError

log = logging.getLogger(__name__)

DEVICE_HELP = "cpu, cuda, cuda:N, auto (CUDA when available) or tensorrt (ONNX Runtime's TensorRT provider)"


class DeviceError(InputError):
    """A device string that names no device, or one this machine does not have."""


@dataclass(frozen=True)
class Device:
    """``kind`` "cpu" or "cuda"; ``index`` the GPU (0 unless given); ``tensorrt`` asks ONNX Runtime for TensorRT."""

    kind: str
    index: int = 0
    tensorrt: bool = False

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        if self.kind == "cpu":
            return "cpu"
        return "tensorrt" if self.tensorrt else f"cuda:{self.index}"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def parse_device(text: str | Device | None) -> Device:
    """``None``/"auto" -> CUDA when PyTorch sees a GPU, else CPU; otherwise the named device (not checked for
    presence: :func:`torch_device` does that where it matters)."""
    if isinstance(text, Device):
        return text
    d = "auto" if text is None else str(text).strip().lower()
    if d == "auto":
        return Device("cuda") if _cuda_available() else Device("cpu")
    if d == "cpu":
        return Device("cpu")
    if d in ("cuda", "gpu"):
        return Device("cuda")
    if d in ("tensorrt", "trt"):
        return Device("cuda", 0, tensorrt=True)
    if d.startswith("cuda:"):
        index = d.split(":", 1)[1]
        if index.isdigit():
            return Device("cuda", int(index))
    raise DeviceError(f"unknown device {text!r}; use {DEVICE_HELP}")


def torch_device(text: str | Device | None):  # -> torch.device
    """The ``torch.device``; a CUDA device on a machine whose PyTorch sees none (or fewer GPUs than the index) is
    refused."""
    import torch

    dev = parse_device(text)
    if dev.is_cuda and not torch.cuda.is_available():
        raise DeviceError(f"device {str(text)!r} asked for, but this torch build sees no CUDA GPU; use --device cpu")
    if dev.is_cuda and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {str(text)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cpu") if dev.kind == "cpu" else torch.device("cuda", dev.index)


def cuda_index(text: str | Device | int | None) -> int:
    """The GPU index for TensorRT. TensorRT has no CPU mode; "cpu" (the CLI's default device) means GPU 0 here,
    with a warning, so that ``--backend tensorrt`` works without also naming the device."""
    if isinstance(text, int):
        return text
    dev = parse_device("cuda" if text is None else text)
    if not dev.is_cuda:
        log.warning("the tensorrt backend runs on the GPU; device 'cpu' means cuda:0 here")
        return 0
    return dev.index
