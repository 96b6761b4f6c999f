"""Self-training on the user's own images (``ifseg-deploy selftrain``): pseudo-labels from an adapted model,
optionally mixed with a few labelled images, and fine-tuning through the real-image path.

``from ifseg_deploy.selftraining import selftrain`` (also ``ifseg_deploy.selftrain``); names load lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "selftrain": "ifseg_deploy.selftraining.run",
    "SelfTrainConfig": "ifseg_deploy.selftraining.run",
    "SelfTrainResult": "ifseg_deploy.selftraining.run",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
