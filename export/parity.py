"""Parity of an exported model with its reference: probability errors and label agreement over inputs.

Every export runs one (ONNX Runtime against PyTorch for fp32, against the fp32 ONNX for INT8, TensorRT against
the ONNX on a GPU) and fails loudly below its threshold, so a broken export never reaches a device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ifseg_deploy.errors import QualityError

ProbsFn = Callable[[np.ndarray], np.ndarray]

#: fp32 exports must reproduce PyTorch's label of at least this fraction of grid cells.
FP32_AGREEMENT = 0.999
#: reduced precision (fp16 / INT8) against fp32, by default.
REDUCED_AGREEMENT = 0.95


class ParityError(QualityError):
    """An exported model that does not reproduce its reference closely enough."""

    def __init__(self, message: str, report: ParityReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ParityReport:
    """Errors of ``candidate`` against ``reference`` over all inputs (probabilities at the model's 1/16 grid)."""

    candidate: str
    reference: str
    max_abs: float  # over the cells without refinement ties (all cells when the reference knows of none)
    mean_abs: float
    agreement: float  # fraction of those cells whose argmax label is the same: what the gate checks
    cells: int
    inputs: int
    shapes: list[list[int]]
    data: str = ""
    #: cells whose refined value depends on how exact ties in the kNN search are broken (see
    #: :func:`ifseg_deploy.refine.tie_dependent_cells`), and the label agreement over all cells, ties included
    tie_cells: int = 0
    agreement_all: float | None = None
    #: mIoU of reference and candidate on a labelled set, when one was given (None: undefined on that set)
    miou: dict[str, float | None] = field(default_factory=dict)

    @property
    def miou_undefined(self) -> list[str]:
        """Which of "reference" / "candidate" were evaluated but have no mIoU (no labelled pixel to score)."""
        return [k for k in ("reference", "candidate") if k in self.miou and not _defined(self.miou[k])]

    @property
    def miou_drop(self) -> float | None:
        ref, cand = self.miou.get("reference"), self.miou.get("candidate")
        if ref is None or cand is None or self.miou_undefined:
            return None
        return ref - cand

    def format(self) -> str:
        shapes = ", ".join("x".join(str(d) for d in s[2:]) + (f" (batch {s[0]})" if s[0] > 1 else "")
                           for s in self.shapes)
        lines = [f"parity {self.candidate} vs {self.reference} over {self.inputs} input batch(es) [{shapes}]"
                 + (f" of {self.data}" if self.data else ""),
                 f"  probabilities: max abs error {self.max_abs:.3g}, mean abs error {self.mean_abs:.3g}",
                 f"  labels: {100 * self.agreement:.3f}% of {self.cells} grid cells agree"]
        if self.tie_cells:
            lines.append(f"  ({self.tie_cells} more cell(s) average, directly or through the refinement's rounds, over "
                         "cells with (near-)tied neighbours, whose order no engine defines; counting them "
                         f"{100 * (self.agreement_all or 0):.3f}% agree)")
        if self.miou_undefined:
            lines.append("  mIoU: undefined for the " + " and the ".join(self.miou_undefined)
                         + " (no labelled pixel of the model's classes in the evaluation images)")
        elif (drop := self.miou_drop) is not None:
            ref, cand = self.miou["reference"], self.miou["candidate"]
            assert ref is not None and cand is not None  # a drop exists only between two defined values
            lines.append(f"  mIoU: {100 * ref:.2f} -> {100 * cand:.2f} ({-100 * drop:+.2f} points)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _defined(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def compare(candidate: ProbsFn, reference: ProbsFn, inputs: Sequence[np.ndarray], candidate_name: str,
            reference_name: str, data: str = "") -> ParityReport:
    """Run both on every (B, 3, H, W) input and pool the errors over all grid cells.

    A reference with a ``tie_cells(x)`` method (:func:`torch_reference`) marks the cells whose refined value
    hinges on tie-breaking; they are reported apart and left out of the errors and the gated agreement.
    """
    if not inputs:
        raise ValueError("parity needs at least one input")
    max_abs, abs_sum, values, agree, cells, ties, agree_all = 0.0, 0.0, 0, 0, 0, 0, 0
    shapes = []
    tie_cells = getattr(reference, "tie_cells", None)
    for x in inputs:
        ref = np.asarray(reference(x), dtype=np.float32)
        got = np.asarray(candidate(x), dtype=np.float32)
        if got.shape != ref.shape:
            raise ParityError(f"{candidate_name} returned shape {got.shape} for input {x.shape}, "
                              f"{reference_name} {ref.shape}")
        if not np.isfinite(got).all():
            raise ParityError(f"{candidate_name} returned non-finite values for input {x.shape}")
        same = got.argmax(1) == ref.argmax(1)  # (B, h, w)
        tied = np.asarray(tie_cells(x), dtype=bool) if tie_cells else np.zeros_like(same)
        keep = ~tied
        diff = np.abs(got - ref).transpose(0, 2, 3, 1)[keep]  # (cells kept, M)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            abs_sum += float(diff.sum(dtype=np.float64))
            values += diff.size
        agree += int(same[keep].sum())
        agree_all += int(same.sum())
        cells += int(keep.sum())
        ties += int(tied.sum())
        shapes.append(list(x.shape))
    return ParityReport(candidate_name, reference_name, max_abs, abs_sum / max(values, 1), agree / max(cells, 1),
                        cells, len(inputs), shapes, data, ties, agree_all / max(cells + ties, 1))


def check(report: ParityReport, min_agreement: float, max_miou_drop: float | None = None) -> ParityReport:
    """Raise :class:`ParityError` (with the report) below ``min_agreement`` or above ``max_miou_drop``."""
    problems = []
    if report.agreement < min_agreement:
        problems.append(f"label agreement {100 * report.agreement:.3f}% is below the required "
                        f"{100 * min_agreement:.3f}%")
    drop = report.miou_drop
    if max_miou_drop is not None and report.miou_undefined:
        # NaN > limit is False: without this an undefined mIoU would pass the gate unchecked.
        names = " and the ".join({"reference": report.reference, "candidate": report.candidate}[k]
                                 for k in report.miou_undefined)
        problems.append(f"the mIoU of the {names} is undefined on the evaluation set (it has no labelled pixel of "
                        "the model's classes: every pixel is ignored), so the mIoU drop cannot be checked")
    elif max_miou_drop is not None and drop is not None and drop > max_miou_drop:
        problems.append(f"mIoU drops by {100 * drop:.2f} points, more than the allowed {100 * max_miou_drop:.2f}")
    if problems:
        raise ParityError(f"{report.candidate} does not match {report.reference}: " + "; ".join(problems)
                          + "\n" + report.format(), report)
    return report


class TorchReference:
    """PyTorch probabilities of an adapted model (the raw :class:`~ifseg_deploy.runtime.graph.InferenceGraph`
    softmax, refined with ties broken lowest index first), and which cells hinge on tie-breaking."""

    def __init__(self, model: Any, refinement: tuple[int, int]) -> None:
        from ifseg_deploy.runtime.graph import InferenceGraph

        self.model = model.eval()
        self.raw = InferenceGraph(self.model, 1, 0).eval()
        self.k, self.iterations = refinement
        self._last: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from ifseg_deploy.refine import cosine_similarity, knn_refine, tie_dependent_cells

        if self._last is not None and self._last[0] == id(x):
            return self._last[1]
        pixels = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        b, _, h, w = pixels.shape
        with torch.inference_mode():
            probs = self.raw(pixels).float()
            ties = np.zeros((b, probs.shape[2], probs.shape[3]), dtype=bool)
            if self.k > 1 and self.iterations > 0:
                features = self.model.image_features(pixels)
                probs = knn_refine(probs, features, self.k, self.iterations, tie_break="lowest_index")
                sim = cosine_similarity(features)
                ties = tie_dependent_cells(sim, self.k, self.iterations).reshape(ties.shape)
        out = (probs.numpy(), ties)
        self._last = (id(x), out)
        return out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._run(x)[0]

    def tie_cells(self, x: np.ndarray) -> np.ndarray:
        return self._run(x)[1]


def torch_reference(model: Any, refinement: tuple[int, int]) -> TorchReference:
    return TorchReference(model, refinement)


def ort_probs(path: str, providers: Sequence[str] = ("CPUExecutionProvider",),
              feeds: dict[str, np.ndarray] | None = None) -> ProbsFn:
    """ONNX Runtime probabilities of an exported file (the ``probs`` output only); ``feeds``: its other inputs
    (an open-vocabulary file's vocabulary)."""
    import onnxruntime as ort

    from ifseg_deploy.runtime.model_info import INPUT_NAME, PROBS_NAME

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=list(providers))

    def run(x: np.ndarray) -> np.ndarray:
        return session.run([PROBS_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32), **(feeds or {})})[0]

    return run
