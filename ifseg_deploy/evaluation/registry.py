"""The datasets ``ifseg-deploy eval --dataset NAME`` knows: name -> ``"module:factory"``, imported on use.

A factory is called as ``factory(root, **options)`` (``root`` may be None for generated data) and returns an
object with the interface of :class:`ifseg_deploy.evaluation.datasets.SegDataset`: ``name``, ``classes``,
``ignore_index``, ``aliases``, ``__len__``, ``item_name(i)`` and ``load(i) -> (rgb uint8 (H, W, 3), ids (H, W))``.
Adding a dataset is one line here (this module imports nothing heavy, so the CLI can list the names).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

DATASETS: dict[str, str] = {
    "ade20k": "ifseg_deploy.evaluation.datasets:ade20k",
    "coco-stuff-171": "ifseg_deploy.evaluation.datasets:coco_stuff_171",
    "coco-stuff-15": "ifseg_deploy.evaluation.datasets:coco_stuff_15",
    "folder": "ifseg_deploy.evaluation.datasets:folder",
    "synthetic": "ifseg_deploy.synthetic.dataset:synthetic",
}


def get_dataset(name: str, root: str | Path | None, **options: Any) -> Any:
    """Build dataset ``name`` from ``root``; ValueError for an unknown name."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    module_name, attr = DATASETS[name].split(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(root, **options)
