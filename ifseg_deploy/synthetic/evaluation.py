"""Measure a SegOFA model on world scenes: the model's own predictions, and the nearest-class-embedding
classification of its projected image tokens (how close image tokens are to the words of their concept).

mIoU follows IFSeg's metric: per-class intersection / union accumulated over all scenes, mean over the classes
that occur (union > 0); predictions are made at 1/16 and bilinearly upsampled to the scene size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..modeling.segofa import SegOFA
from .world import to_model_input

__all__ = ["alignment_scores", "confusion_matrix", "evaluate", "evaluate_alignment", "evaluate_model",
           "miou_from_confusion"]


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(K, K) int64 counts, rows = true class, columns = predicted (torchvision references' bincount)."""
    idx = target.flatten().long() * num_classes + pred.flatten().long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou_from_confusion(conf: Tensor) -> dict:
    """``{"miou", "pixel_accuracy", "iou": per-class list (nan where the class never occurs)}``."""
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))
    return {"miou": float(iou.nanmean()), "pixel_accuracy": float(inter.sum() / conf.sum().clamp(min=1)),
            "iou": iou.tolist()}


def alignment_scores(model: SegOFA, pixels: Tensor) -> Tensor:
    """(B, M, h, w) cosine similarity of each projected image token with each class embedding."""
    tokens = model.project_features(model.image_features(pixels)).float()
    classes = model.decoder.seg_embed_tokens.weight.float()
    return torch.einsum("bhwd,md->bmhw", F.normalize(tokens, dim=-1), F.normalize(classes, dim=-1))


def evaluate(score_fn: Callable[[Tensor], Tensor], scenes: Iterable[tuple[np.ndarray, np.ndarray]],
             num_classes: int, batch_size: int = 8) -> dict:
    """Run ``score_fn`` (pixels -> (B, M, h, w) scores) over ``(image, mask)`` pairs of equal size."""
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    batch: list[tuple[np.ndarray, np.ndarray]] = []

    def flush() -> None:
        pixels = to_model_input(np.stack([im for im, _ in batch]))
        target = torch.from_numpy(np.stack([m for _, m in batch]))
        with torch.no_grad():
            scores = score_fn(pixels).float()
        up = F.interpolate(scores, size=target.shape[-2:], mode="bilinear", align_corners=False)
        conf.add_(confusion_matrix(up.argmax(1), target, num_classes))
        batch.clear()

    for item in scenes:
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return {**miou_from_confusion(conf), "confusion": conf.tolist()}


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
