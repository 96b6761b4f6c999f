"""The synthetic world (DESIGN.md decision 12): procedural scenes with exact masks, and a tiny OFA-architecture
vision-language model in which image tokens lie near the word tokens of their concept.

``make_scene`` / ``SyntheticScenes`` need only numpy; the model parts import torch when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ALL_CATEGORIES": "world",
    "CONCEPTS": "world",
    "DEFAULT_CATEGORIES": "world",
    "SPLITS": "world",
    "TEST_SEEDS": "world",
    "TRAIN_SEEDS": "world",
    "VALIDATION_SEEDS": "world",
    "SyntheticScenes": "world",
    "make_scene": "world",
    "to_model_input": "world",
    "world_tokenizer": "vocab",
    "world_words": "vocab",
    "write_bpe_files": "vocab",
    "WorldRecipe": "tiny_vlm",
    "build_world_checkpoint": "tiny_vlm",
    "build_world_model": "tiny_vlm",
    "world_config": "tiny_vlm",
    "build_or_load_world_model": "cache",
    "default_cache_root": "cache",
    "world_cache_entry": "cache",
    "evaluate_alignment": "evaluation",
    "evaluate_model": "evaluation",
    "miou_from_confusion": "evaluation",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
