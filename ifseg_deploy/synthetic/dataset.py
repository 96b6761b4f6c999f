"""The synthetic world as an ``eval`` dataset (``ifseg-deploy eval --dataset synthetic``): held-out scenes
generated on the fly, with the same interface as the readers of real datasets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .world import SyntheticScenes


class SyntheticDataset:
    """``num_scenes`` test-split scenes of ``size`` x ``size`` pixels, whose classes are ``categories``.

    ``world``: the concepts the scenes are made of, when they are more than the classes scored (e.g. all sixteen
    for a vocabulary of five): pixels of concepts outside ``categories`` are ignored, the COCO-15 protocol of
    testing a vocabulary on scenes that show more. None: the scenes show exactly ``categories``; no pixel is
    ignored."""

    name = "synthetic"
    ignore_index = 255
    aliases: dict[str, list[str]] = {}
    root = None

    def __init__(self, num_scenes: int = 64, size: int = 256, split: str = "test", start: int = 0,
                 categories: list[str] | None = None, world: Sequence[str] | None = None) -> None:
        self.scenes = SyntheticScenes(num_scenes, (size, size), categories if world is None else world, split=split,
                                      start=start)
        self.classes = list(self.scenes.class_names) if world is None else list(categories or [])
        unknown = [c for c in self.classes if c not in self.scenes.class_names]
        if not self.classes or unknown or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"categories must be distinct concepts of the world {self.scenes.class_names}, "
                             f"got {self.classes}")
        # world concept id -> class id, or ignore_index for a concept that is not scored
        self._lut = np.full(len(self.scenes.class_names), self.ignore_index, dtype=np.int64)
        for i, name in enumerate(self.classes):
            self._lut[self.scenes.class_names.index(name)] = i

    def __len__(self) -> int:
        return len(self.scenes)

    def item_name(self, i: int) -> str:
        return f"scene_{self.scenes.seeds[i]}"

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.scenes[i]
        return image, self._lut[mask]


def synthetic(root: str | Path | None = None, **options) -> SyntheticDataset:
    """Registry factory; ``root`` is unused (the scenes are generated)."""
    return SyntheticDataset(**options)
