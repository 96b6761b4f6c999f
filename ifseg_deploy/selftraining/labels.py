"""Pseudo-labels: the paper's inference (whole image at the model's short side, kNN refinement) on any backend,
each pixel's label and confidence (its refined class probability after the upsampling to the image), and the
selection of the pixels confident enough to train on."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..evaluation.datasets import IGNORE
from ..preprocessing import iter_bilinear

#: ``on_image(done, total)``: called after each labelled image.
LabelProgress = Callable[[int, int], None]


def label_and_confidence(probs: torch.Tensor, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(M, h, w) probabilities -> ((H, W) uint8 labels, (H, W) float32 confidence): bilinear upsampling straight
    to ``size`` (as :func:`~ifseg_deploy.preprocessing.upsample_argmax`), argmax and max, in blocks of rows."""
    h, w = int(size[0]), int(size[1])
    labels = np.empty((h, w), dtype=np.uint8)
    conf = np.empty((h, w), dtype=np.float32)
    for r0, r1, rows in iter_bilinear(torch.as_tensor(probs), (h, w)):
        best = rows.max(dim=0)
        labels[r0:r1] = best.indices.to(torch.uint8).cpu().numpy()
        conf[r0:r1] = best.values.cpu().numpy()
    return labels, conf


def pseudo_label(segmenter, images: Sequence[np.ndarray], on_image: LabelProgress | None = None
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(labels, confidence) of every image, by ``segmenter`` (a :class:`~ifseg_deploy.runtime.Segmenter`)."""
    if len(segmenter.class_names) > IGNORE:
        raise ValueError(f"pseudo-labels hold at most {IGNORE} classes (255 marks ignored pixels)")
    out = []
    step = segmenter.batch_size  # same-sized images of one call run as one batch
    for b0 in range(0, len(images), step):
        for result in segmenter.segment_many(images[b0:b0 + step], return_probs=True):
            out.append(label_and_confidence(torch.from_numpy(result.probs), result.size))
            if on_image is not None:
                on_image(len(out), len(images))
    return out


def class_thresholds(labelled: Sequence[tuple[np.ndarray, np.ndarray]], num_classes: int, min_confidence: float,
                     balance: bool) -> np.ndarray:
    """The confidence each class's pixels need: ``min_confidence`` for all, or with ``balance`` at most that,
    lowered per class so that every class keeps at least the fraction of its pixels that the global threshold
    keeps over all classes (confident classes would otherwise crowd out the hard ones)."""
    thresholds = np.full(num_classes, min_confidence, dtype=np.float64)
    if not balance or not labelled:
        return thresholds
    conf_all = np.concatenate([c.ravel() for _, c in labelled])
    labels_all = np.concatenate([lab.ravel() for lab, _ in labelled])
    kept = float((conf_all >= min_confidence).mean())
    for c in range(num_classes):
        mine = conf_all[labels_all == c]
        if mine.size and kept > 0:
            thresholds[c] = min(min_confidence, float(np.quantile(mine, 1.0 - kept)))
    return thresholds


def select(labels: np.ndarray, conf: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``labels`` with the pixels below their class's threshold set to 255 (ignored)."""
    return np.where(conf >= thresholds[labels], labels, IGNORE).astype(np.uint8)


def coverage(labels: Sequence[np.ndarray]) -> float:
    """The fraction of all pixels that carry a label (not 255)."""
    total = sum(lab.size for lab in labels)
    return sum(int((lab != IGNORE).sum()) for lab in labels) / max(1, total)
