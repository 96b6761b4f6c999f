"""The evaluation loop behind ``ifseg-deploy eval``: a Segmenter over a labelled set, the paper's protocol.

Every image is segmented at its original resolution (the Segmenter upsamples the probabilities to it); the
confusion matrix accumulates over the whole set; mIoU is the mean IoU over the classes present in labels or
predictions, plus mAcc and aAcc (``metrics.py``). The model's categories must be the dataset's classes (any
order; names compared case-insensitively, with the dataset's alias spellings): predicted ids are mapped to
dataset ids by name, and a model adapted to other categories is refused.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from ..version import __version__
from .metrics import ConfusionMatrix


class ClassMismatchError(InputError):
    """The model's categories are not the dataset's classes."""


def _norm(name: str) -> str:
    return re.sub(r"\s+", " ", name.strip().lower())


def match_classes(model_classes: Sequence[str], dataset_classes: Sequence[str],
                  aliases: dict[str, list[str]] | None = None, dataset_name: str = "the dataset") -> np.ndarray:
    """(M,) array: model class id -> dataset class id, matched by name. Raises :class:`ClassMismatchError`
    unless the two lists name the same classes."""
    lookup: dict[str, int] = {}
    for i, n in enumerate(dataset_classes):
        lookup[_norm(n)] = i
    for official, alts in (aliases or {}).items():
        if official in dataset_classes:
            for a in alts:
                lookup.setdefault(_norm(a), dataset_classes.index(official))
    mapping, unknown = [], []
    for n in model_classes:
        j = lookup.get(_norm(n))
        if j is None:
            unknown.append(n)
        mapping.append(-1 if j is None else j)
    hit = {j for j in mapping if j >= 0}
    lacking = [dataset_classes[j] for j in range(len(dataset_classes)) if j not in hit]
    dup = len(hit) != sum(j >= 0 for j in mapping)
    if unknown or lacking or dup:
        parts = [f"the model's {len(model_classes)} categories do not match the {len(dataset_classes)} classes "
                 f"of {dataset_name}"]
        if unknown:
            parts.append(f"not in the dataset: {_few(unknown)}")
        if lacking:
            parts.append(f"missing from the model: {_few(lacking)}")
        if dup:
            parts.append("two model categories name the same dataset class")
        parts.append("adapt a model to exactly the dataset's class names (the lists are in "
                     "ifseg_deploy/evaluation/classnames.py; the folder layout reads classes.txt)")
        raise ClassMismatchError("; ".join(parts))
    return np.asarray(mapping, dtype=np.int64)


def _few(names: Sequence[str], n: int = 8) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def evaluate(segmenter: Any, dataset: Any, limit: int | None = None, progress: bool = True,
             model_path: str | None = None) -> dict[str, Any]:
    """Run ``segmenter`` over ``dataset`` (the first ``limit`` images) and return the report dictionary
    (metrics as fractions in [0, 1]; None where undefined)."""
    from tqdm.auto import tqdm

    mapping = match_classes(segmenter.class_names, dataset.classes, getattr(dataset, "aliases", None),
                            getattr(dataset, "name", "the dataset"))
    n_total = len(dataset)
    n = n_total if limit is None else max(0, min(int(limit), n_total))
    cm = ConfusionMatrix(len(dataset.classes), getattr(dataset, "ignore_index", 255))
    start = time.perf_counter()
    for i in tqdm(range(n), desc=f"eval {getattr(dataset, 'name', '')}", unit="img", disable=not progress):
        image, mask = dataset.load(i)
        result = segmenter(image)
        cm.update(mask, mapping[result.labels])
    seconds = time.perf_counter() - start
    scores = cm.scores()
    backend = segmenter.backend
    k, iters = segmenter.refinement
    report: dict[str, Any] = {
        "ifseg_deploy_version": __version__,
        "dataset": {"name": getattr(dataset, "name", None), "root": str(getattr(dataset, "root", None) or ""),
                    "images": n, "images_available": n_total, "limit": limit, "classes": len(dataset.classes),
                    "ignore_index": cm.ignore_index},
        "model": {"path": model_path, "backend": backend.name, "device": str(getattr(backend, "device", "")),
                  "categories": len(segmenter.class_names),
                  "refinement": {"k": int(k), "iterations": int(iters)},
                  "preprocessing": segmenter.preprocessing.to_dict()},
        "protocol": "single scale, whole image, original resolution; IoU summed over the set; mIoU = mean over "
                    "classes with union > 0",
        "seconds": round(seconds, 3),
    }
    report.update(scores.as_dict(list(dataset.classes)))
    return report


def format_table(report: dict[str, Any]) -> str:
    """The per-class IoU / accuracy table and the summary line, in percent."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    rows = report["per_class"]
    width = max([len("class"), *(len(r["name"]) for r in rows)])
    lines = [f"{'class'.ljust(width)}  {'IoU':>6}  {'Acc':>6}  {'label px':>11}  {'pred px':>11}"]
    for r in rows:
        lines.append(f"{r['name'].ljust(width)}  {pct(r['iou']):>6}  {pct(r['acc']):>6}  "
                     f"{r['label_pixels']:>11}  {r['pred_pixels']:>11}")
    d = report["dataset"]
    lines.append("")
    lines.append(f"mIoU {pct(report['mIoU'])}  mAcc {pct(report['mAcc'])}  aAcc {pct(report['aAcc'])}  (percent; "
                 f"{d['images']} of {d['images_available']} images of {d['name']}, {report['classes_evaluated']} of "
                 f"{d['classes']} classes in labels or predictions)")
    return "\n".join(lines)
