"""The PyTorch backend: the adapted model's :class:`~ifseg_deploy.runtime.graph.InferenceGraph` (the same module
that ONNX export traces) on a torch device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...devices import torch_device
from ...model_dir import AdaptedModel
from ...refine import PAPER_REFINEMENT, refinement_setting
from ..backend import Backend
from ..graph import InferenceGraph


class TorchBackend(Backend):
    """Runs the SegOFA model in PyTorch: softmax probabilities at 1/16, kNN-refined per ``refinement``
    ((k, iterations); (1, 0) = none)."""

    name = "torch"

    def __init__(self, adapted: AdaptedModel, device: str | torch.device | None = "cpu",
                 refinement: tuple[int, int] = PAPER_REFINEMENT) -> None:
        self.torch_device = torch_device(device)
        self.device = str(self.torch_device)
        self.adapted = adapted
        self.categories = list(adapted.categories)
        self.preprocessing = adapted.preprocessing
        self.refinement = refinement_setting(True, *refinement)
        model = adapted.model.to(self.torch_device).eval()
        self.graph = InferenceGraph(model, *self.refinement).eval()

    @classmethod
    def from_file(cls, path: str | Path, *, device: str | None = None,
                  refinement: tuple[int, int] | None = None, **options: Any) -> TorchBackend:
        """Load an adapted-model directory (``save_pretrained`` / ``ifseg-deploy adapt`` output). ``refinement``
        (default the paper's) is applied here; ``options`` go to :meth:`AdaptedModel.from_pretrained`."""
        dev = torch_device("cpu" if device is None else device)
        adapted = AdaptedModel.from_pretrained(path, device=dev, **options)
        return cls(adapted, dev, PAPER_REFINEMENT if refinement is None else refinement)

    def probs_tensor(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Like :meth:`probs` but returns a float32 tensor on the backend's device."""
        x = torch.as_tensor(pixels, dtype=torch.float32).to(self.torch_device)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) pixels, got {tuple(x.shape)}")
        with torch.inference_mode():
            return self.graph(x).float()

    def probs(self, pixels: np.ndarray) -> np.ndarray:
        return self.probs_tensor(pixels).cpu().numpy()

    def close(self) -> None:
        self.graph = None  # type: ignore[assignment]
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()

    def __repr__(self) -> str:
        k, it = self.refinement
        return f"TorchBackend({len(self.categories)} categories, device={self.device}, refinement k={k} x{it})"
