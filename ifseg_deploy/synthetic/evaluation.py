"""Measure a SegOFA model on world scenes: the model's own predictions, and the nearest-class-embedding
classification of its projected image tokens (how close image tokens are to the words of their concept).

mIoU is IFSeg's metric, computed by :mod:`ifseg_deploy.evaluation.metrics`: per-class intersection / union
accumulated over all scenes, mean over the classes that occur (union > 0); predictions are made at 1/16 and
bilinearly upsampled to the scene size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..evaluation.metrics import ConfusionMatrix
from ..modeling.segofa import SegOFA
from .world import to_model_input

__all__ = ["alignment_scores", "evaluate", "evaluate_alignment", "evaluate_model", "miou_from_confusion"]


def miou_from_confusion(conf: np.ndarray | Tensor) -> dict:
    """``{"miou", "pixel_accuracy", "iou": per-class list (nan where the class never occurs)}`` of a (K, K)
    confusion matrix (rows = true class, columns = predicted)."""
    counts = np.asarray(conf, dtype=np.int64)
    cm = ConfusionMatrix(counts.shape[0])
    cm.mat += counts
    return _summary(cm)


def _summary(cm: ConfusionMatrix) -> dict:
    scores = cm.scores()
    return {"miou": scores.miou, "pixel_accuracy": scores.aacc, "iou": scores.iou.tolist()}


def alignment_scores(model: SegOFA, pixels: Tensor) -> Tensor:
    """(B, M, h, w) cosine similarity of each projected image token with each class embedding."""
    tokens = model.project_features(model.image_features(pixels)).float()
    classes = model.decoder.seg_embed_tokens.weight.float()
    return torch.einsum("bhwd,md->bmhw", F.normalize(tokens, dim=-1), F.normalize(classes, dim=-1))


def evaluate(score_fn: Callable[[Tensor], Tensor], scenes: Iterable[tuple[np.ndarray, np.ndarray]],
             num_classes: int, batch_size: int = 8) -> dict:
    """Run ``score_fn`` (pixels -> (B, M, h, w) scores) over ``(image, mask)`` pairs of equal size."""
    conf = ConfusionMatrix(num_classes)
    batch: list[tuple[np.ndarray, np.ndarray]] = []

    def flush() -> None:
        pixels = to_model_input(np.stack([im for im, _ in batch]))
        target = np.stack([m for _, m in batch])
        with torch.no_grad():
            scores = score_fn(pixels).float()
        up = F.interpolate(scores, size=target.shape[-2:], mode="bilinear", align_corners=False)
        conf.update(target, up.argmax(1).numpy())
        batch.clear()

    for item in scenes:
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return {**_summary(conf), "confusion": conf.mat.tolist()}


def evaluate_model(model: SegOFA, scenes: Iterable[tuple[np.ndarray, np.ndarray]], batch_size: int = 8) -> dict:
    """mIoU of the model's class logits (the unadapted model, or an adapted one)."""
    model.eval()
    return evaluate(model, scenes, model.num_classes, batch_size)


def evaluate_alignment(model: SegOFA, scenes: Iterable[tuple[np.ndarray, np.ndarray]],
                       batch_size: int = 8) -> dict:
    """mIoU of nearest-class-embedding classification of the projected image tokens (argmax cosine). This is
    what the image side offers; adaptation of the transformer can at best approach it."""
    model.eval()
    return evaluate(lambda x: alignment_scores(model, x), scenes, model.num_classes, batch_size)
