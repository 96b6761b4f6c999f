"""The PyTorch backend: the adapted model's :class:`~ifseg_deploy.runtime.graph.InferenceGraph` (the same module
that ONNX export traces) on a torch device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..pretrained import DEFAULT_PREPROCESSING, AdaptedModel
from .backend import Backend
from .graph import InferenceGraph


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU; otherwise ``torch.device(device)``, checked."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown torch device {device!r} ({e}); use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this torch build sees no CUDA GPU; use --device cpu")
    return dev


class TorchBackend(Backend):
    """Runs the SegOFA model in PyTorch: softmax probabilities at 1/16, kNN-refined unless ``refine_k`` <= 1 or
    ``refine_iters`` == 0."""

    name = "torch"

    def __init__(self, adapted: AdaptedModel, device: str | torch.device | None = "cpu", refine_k: int = 3,
                 refine_iters: int = 25) -> None:
        if refine_k < 1 or refine_iters < 0:
            raise ValueError(f"need refine_k >= 1 and refine_iters >= 0 (got {refine_k}, {refine_iters})")
        self.device = resolve_device(device)
        self.adapted = adapted
        self.categories = list(adapted.categories)
        self.preprocessing = {**DEFAULT_PREPROCESSING, **(adapted.preprocessing or {})}
        on = refine_k > 1 and refine_iters > 0
        self.refinement = (refine_k, refine_iters) if on else (1, 0)
        model = adapted.model.to(self.device).eval()
        self.graph = InferenceGraph(model, *self.refinement).eval()

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device | None = "cpu", refine_k: int = 3,
                  refine_iters: int = 25) -> TorchBackend:
        """Load an adapted-model directory (``save_pretrained`` / ``ifseg-deploy adapt`` output)."""
        dev = resolve_device(device)
        return cls(AdaptedModel.from_pretrained(path, device=dev), dev, refine_k, refine_iters)

    def probs_tensor(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Like :meth:`probs` but returns a float32 tensor on the backend's device."""
        x = torch.as_tensor(pixels, dtype=torch.float32).to(self.device)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) pixels, got {tuple(x.shape)}")
        with torch.inference_mode():
            return self.graph(x).float()

    def probs(self, pixels: np.ndarray) -> np.ndarray:
        return self.probs_tensor(pixels).cpu().numpy()

    def close(self) -> None:
        self.graph = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __repr__(self) -> str:
        k, it = self.refinement
        return f"TorchBackend({len(self.categories)} categories, device={self.device}, refinement k={k} x{it})"

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": str(self.device), "refinement": list(self.refinement)}
