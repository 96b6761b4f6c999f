"""The synthetic world as an ``eval`` dataset (``ifseg-deploy eval --dataset synthetic``): held-out scenes
generated on the fly, with the same interface as the readers of real datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .world import SyntheticScenes


class SyntheticDataset:
    """``num_scenes`` test-split scenes of ``size`` x ``size`` pixels; no pixel is ignored."""

    name = "synthetic"
    ignore_index = 255
    aliases: dict[str, list[str]] = {}
    root = None

    def __init__(self, num_scenes: int = 64, size: int = 256, split: str = "test", start: int = 0,
                 categories: list[str] | None = None) -> None:
        self.scenes = SyntheticScenes(num_scenes, (size, size), categories, split=split, start=start)
        self.classes = list(self.scenes.class_names)

    def __len__(self) -> int:
        return len(self.scenes)

    def item_name(self, i: int) -> str:
        return f"scene_{self.scenes.seeds[i]}"

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.scenes[i]


def synthetic(root: str | Path | None = None, **options) -> SyntheticDataset:
    """Registry factory; ``root`` is unused (the scenes are generated)."""
    return SyntheticDataset(**options)
