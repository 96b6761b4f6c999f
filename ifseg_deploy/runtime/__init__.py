"""Inference: the image-in/probabilities-out graph, the paper's refinement, and the Segmenter API.

``from ifseg_deploy.runtime import Segmenter`` (names are imported lazily, so this package stays light).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Segmenter": "ifseg_deploy.runtime.segmenter",
    "SegmentationResult": "ifseg_deploy.runtime.segmenter",
    "BackendUnavailableError": "ifseg_deploy.runtime.segmenter",
    "Backend": "ifseg_deploy.runtime.backend",
    "TorchBackend": "ifseg_deploy.runtime.backends.torch",
    "ImageLoadError": "ifseg_deploy.runtime.images",
    "load_image": "ifseg_deploy.runtime.images",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ifseg_deploy.runtime' has no attribute {name!r}")
