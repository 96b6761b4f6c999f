"""The backends a Segmenter can run on: name -> factory class, imported only when asked for.

Every factory has the same ``from_file(path, *, device=None, refinement=None, **options)`` (see
:class:`~ifseg_deploy.runtime.backend.Backend`). A new backend plugs in with one line here. This module imports
nothing heavy, so the command line can offer the names as choices.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackendError, InputError

if TYPE_CHECKING:
    from .backend import Backend

__all__ = ["BACKENDS", "BACKEND_NAMES", "PRECISIONS", "BackendUnavailableError", "backend_factory", "load_backend"]

#: backend name -> "module:class"
BACKENDS: dict[str, str] = {
    "torch": "ifseg_deploy.runtime.backends.torch:TorchBackend",
    "onnxruntime": "ifseg_deploy.runtime.backends.onnxruntime:OrtBackend",
    "tensorrt": "ifseg_deploy.runtime.backends.tensorrt:TensorRTBackend",
}
BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)
#: the precisions an exported model file (and its metadata) can have
PRECISIONS = ("fp32", "fp16", "int8")
#: the pip extra that brings each backend's engine
EXTRAS = {"onnxruntime": "onnx", "tensorrt": "trt"}


class BackendUnavailableError(BackendError):
    """The asked-for backend is not part of this installation (its package is missing)."""


def backend_factory(name: str) -> type[Backend]:
    """The factory class of backend ``name``, imported now; :class:`BackendUnavailableError` if that fails."""
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module_name, attr = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise BackendUnavailableError(
                f"the {name} backend is not available in this version of ifseg-deploy ({module_name} is "
                "missing); use backend='torch' (--backend torch)") from None
        extra = EXTRAS.get(name)
        hint = f" (pip install 'ifseg-deploy[{extra}]')" if extra else ""
        raise BackendUnavailableError(f"the {name} backend needs the package {missing!r}, which is not "
                                      f"installed{hint}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise BackendUnavailableError(f"{module_name} has no {attr}: the {name} backend is not available in this "
                                      "version of ifseg-deploy") from None


def load_backend(name: str, path: str | Path, *, device: str | None = None,
                 refinement: tuple[int, int] | None = None, **options: Any) -> Backend:
    """``backend_factory(name).from_file(path, device=..., refinement=..., **options)``."""
    return backend_factory(name).from_file(path, device=device, refinement=refinement, **options)
