"""What a variant's outputs are worth next to the baseline's: label agreement and probability differences on the
benchmark image, and with ``--dataset`` the mIoU / mAcc / aAcc of ``ifseg-deploy eval`` and the share of pixels
labelled as the baseline labels them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ifseg_deploy.evaluation.evaluate import ClassMismatchError, evaluate, match_classes
from ifseg_deploy.runtime.segmenter import SegmentationResult, Segmenter

from .settings import BenchUsageError, Echo, InferenceSettings, Size
from .variants import Loaded, Row


def open_dataset(s: InferenceSettings) -> Any:
    """The labelled set of ``--dataset`` (``--limit`` scenes of the synthetic one)."""
    from ifseg_deploy.evaluation.registry import DATASETS, get_dataset

    if s.dataset not in DATASETS:
        raise BenchUsageError(f"unknown dataset {s.dataset!r}; choose one of {', '.join(DATASETS)}")
    if s.dataset == "synthetic":
        return get_dataset("synthetic", None, num_scenes=s.limit)
    if not s.root:
        raise BenchUsageError(f"--dataset {s.dataset} needs --root")
    return get_dataset(s.dataset, s.root)


def check_classes(categories: Sequence[str], dataset: Any, s: InferenceSettings) -> None:
    """Refuse a model whose categories are not the dataset's classes (before anything is measured)."""
    try:
        match_classes(list(categories), dataset.classes, getattr(dataset, "aliases", None), dataset.name)
    except ClassMismatchError as e:
        raise BenchUsageError(f"--dataset {s.dataset}: {e}") from None


def agreement(rows: list[Row], segmenters: dict[tuple, Segmenter], images: dict[Size, np.ndarray]
              ) -> dict[tuple, dict[str, Any]]:
    """Per (backend key, size): label agreement with the baseline at the image's size, max |probability
    difference| on the 1/16 grid, and how many distinct labels the baseline predicts (1 means agreement says
    nothing: random weights often give one label everywhere)."""
    out: dict[tuple, dict[str, Any]] = {}
    base_rows = {r.size: r for r in rows if r.baseline and r.ok}
    for row in rows:
        if not row.ok or (row.key, row.size) in out or row.size not in base_rows:
            continue
        img = [images[row.size]]
        ref = segmenters[(base_rows[row.size].key, row.size)].segment_many(img, return_probs=True)[0]
        res = segmenters[(row.key, row.size)].segment_many(img, return_probs=True)[0]
        diff = np.abs(np.asarray(ref.probs) - np.asarray(res.probs))
        out[(row.key, row.size)] = {
            "label_agreement": float((ref.labels == res.labels).mean()),
            "max_abs_prob_diff": float(diff.max()),
            "mean_abs_prob_diff": float(diff.mean()),
            "baseline_distinct_labels": int(np.unique(ref.labels).size),
        }
    return out


class _Agreement:
    """A Segmenter, as :func:`~ifseg_deploy.evaluation.evaluate.evaluate` calls it, that also counts the pixels it
    labels as the baseline did on the same image. ``baseline`` None: this is the baseline, and it records its
    labels for the others."""

    def __init__(self, segmenter: Segmenter, baseline: list[np.ndarray] | None) -> None:
        self.segmenter = segmenter
        self.baseline = baseline
        self.recorded: list[np.ndarray] = []
        self.calls = self.same = self.pixels = 0

    def __getattr__(self, name: str) -> Any:  # class_names, backend, refinement, preprocessing
        return getattr(self.segmenter, name)

    def __call__(self, image: Any) -> SegmentationResult:
        result = self.segmenter.segment_many([image])[0]
        if self.baseline is None:
            self.recorded.append(result.labels.astype(np.int32))
            base = result.labels
        else:
            base = self.baseline[self.calls]
        self.calls += 1
        self.same += int((result.labels == base).sum())
        self.pixels += result.labels.size
        return result


def accuracy(rows: list[Row], loaded: dict[tuple, Loaded], dataset: Any, limit: int, echo: Echo
             ) -> dict[tuple, dict[str, Any]]:
    """mIoU / mAcc / aAcc per (backend key, size) on the labelled set, measured by ``ifseg-deploy eval``'s
    :func:`~ifseg_deploy.evaluation.evaluate.evaluate` (prediction at each image's own size), and the share of
    pixels labelled as the baseline of the same size labels them."""
    n = min(len(dataset), limit)
    variants: dict[tuple, Segmenter] = {}
    for row in rows:
        if row.ok and (row.key, row.size) not in variants:
            # keep-ratio resize to the row's short side (torch); a fixed-size file stretches to its size
            variants[(row.key, row.size)] = Segmenter(loaded[row.key].backend, short_side=min(row.size))  # type: ignore[index]
    baselines = {(r.key, r.size) for r in rows if r.baseline and r.ok}
    recorded: dict[Size, list[np.ndarray]] = {}
    out: dict[tuple, dict[str, Any]] = {}
    t0 = time.perf_counter()
    echo(f"accuracy: {n} image(s) of {dataset.name} x {len(variants)} variant(s)")
    for key in sorted(variants, key=lambda k: k not in baselines):  # each size's baseline first
        size = key[1]
        seg = _Agreement(variants[key], None if key in baselines else recorded.get(size))
        report = evaluate(seg, dataset, limit=n, progress=False)
        if key in baselines:
            recorded[size] = seg.recorded
        agree = None if seg.baseline is None and key not in baselines else seg.same / max(1, seg.pixels)
        out[key] = {"mIoU": report["mIoU"], "mAcc": report["mAcc"], "aAcc": report["aAcc"], "images": n,
                    "pixel_agreement_with_baseline": agree, "dataset": dataset.name}
    echo(f"  ({time.perf_counter() - t0:.0f} s)")
    return out
