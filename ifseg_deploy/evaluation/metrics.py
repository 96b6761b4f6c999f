"""Semantic-segmentation metrics over a whole dataset, as a bincount confusion matrix.

The torchvision references' way (``references/segmentation/utils.py`` ``ConfusionMatrix``): ground-truth
pixels outside ``[0, n)`` (the ignore label 255 among them) are dropped, then ``bincount(n * gt + pred)``
accumulates an (n, n) matrix over every image at its original resolution. From it, per class c:
intersection = diag[c], union = row[c] + column[c] - diag[c], IoU = intersection / union (NaN when the class
is in neither labels nor predictions); accuracy = diag[c] / row[c] (NaN when absent from the labels).
mIoU and mAcc are NaN-means over classes, aAcc = trace / total. This is what IFSeg computes with ``histc``
(``seg_criterion.py``) and mmseg's ``IoUMetric`` reports.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Scores:
    iou: np.ndarray  # (n,) float, NaN where union == 0
    acc: np.ndarray  # (n,) float, NaN where the class has no labelled pixel
    intersection: np.ndarray  # (n,) int64
    union: np.ndarray
    label_pixels: np.ndarray
    pred_pixels: np.ndarray
    miou: float
    macc: float
    aacc: float
    pixels: int

    def as_dict(self, class_names: list[str] | None = None) -> dict[str, Any]:
        def f(x: float) -> float | None:
            return None if np.isnan(x) else float(x)

        names = class_names or [str(i) for i in range(len(self.iou))]
        return {
            "mIoU": f(self.miou), "mAcc": f(self.macc), "aAcc": f(self.aacc), "pixels": int(self.pixels),
            "classes_evaluated": int((self.union > 0).sum()),
            "per_class": [
                {"id": i, "name": names[i], "iou": f(self.iou[i]), "acc": f(self.acc[i]),
                 "intersection": int(self.intersection[i]), "union": int(self.union[i]),
                 "label_pixels": int(self.label_pixels[i]), "pred_pixels": int(self.pred_pixels[i])}
                for i in range(len(self.iou))
            ],
        }


class ConfusionMatrix:
    """Accumulates ``mat[gt, pred]`` pixel counts for ``num_classes`` classes."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.n = num_classes
        self.ignore_index = ignore_index
        self.mat = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, target: np.ndarray, pred: np.ndarray) -> None:
        """Add one image: ``target`` ids (ignore_index and anything outside [0, n) are left out), ``pred`` ids
        in [0, n), same shape."""
        target = np.asarray(target)
        pred = np.asarray(pred)
        if target.shape != pred.shape:
            raise ValueError(f"labels {target.shape} and prediction {pred.shape} differ in size")
        t = target.astype(np.int64).ravel()
        p = pred.astype(np.int64).ravel()
        keep = (t >= 0) & (t < self.n) & (t != self.ignore_index)
        t, p = t[keep], p[keep]
        if p.size and (p.min() < 0 or p.max() >= self.n):
            raise ValueError(f"prediction ids must be in [0, {self.n}); got {p.min()}..{p.max()}")
        self.mat += np.bincount(self.n * t + p, minlength=self.n * self.n).reshape(self.n, self.n)

    def merge(self, other: ConfusionMatrix) -> None:
        self.mat += other.mat

    def scores(self) -> Scores:
        m = self.mat
        inter = np.diag(m).copy()
        label = m.sum(axis=1)
        pred = m.sum(axis=0)
        union = label + pred - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
            acc = np.where(label > 0, inter / np.maximum(label, 1), np.nan)
        total = int(m.sum())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN -> NaN, without the warning
            miou = float(np.nanmean(iou)) if np.any(union > 0) else float("nan")
            macc = float(np.nanmean(acc)) if np.any(label > 0) else float("nan")
        aacc = float(inter.sum() / total) if total else float("nan")
        return Scores(iou, acc, inter, union, label, pred, miou, macc, aacc, total)
