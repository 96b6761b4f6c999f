"""ifseg-deploy: category names + an OFA checkpoint -> a semantic segmenter for NVIDIA edge devices.

The public names are imported lazily, so ``import ifseg_deploy`` (and the CLI's ``--help``) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

_EXPORTS = {
    "AdaptedModel": "ifseg_deploy.model_dir",
    "SegOFA": "ifseg_deploy.modeling.segofa",
    "OFAConfig": "ifseg_deploy.presets",
    "PRESETS": "ifseg_deploy.presets",
    "get_preset": "ifseg_deploy.presets",
    "OFATokenizer": "ifseg_deploy.tokenizer",
    "parse_categories": "ifseg_deploy.tokenizer",
    "load_ofa": "ifseg_deploy.checkpoints.loader",
    "CheckpointError": "ifseg_deploy.checkpoints.errors",
    "Segmenter": "ifseg_deploy.runtime.segmenter",
    "SegmentationResult": "ifseg_deploy.runtime.segmenter",
    "adapt": "ifseg_deploy.adapt.trainer",
    "AdaptConfig": "ifseg_deploy.adapt.config",
    "selftrain": "ifseg_deploy.selftraining.run",
    "SelfTrainConfig": "ifseg_deploy.selftraining.run",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ifseg_deploy' has no attribute {name!r}")
