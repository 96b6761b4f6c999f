"""What a Segmenter backend is: something that turns normalised pixels into class probabilities.

Every backend (:mod:`.backends`: PyTorch, ONNX Runtime, TensorRT) implements :class:`Backend`, so ``Segmenter``
callers never change when the engine underneath does. Preprocessing (resize, normalise), the upsampling to the
original image size and the argmax stay in the Segmenter. Backends load and run; they never build an artifact.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, InputError
from ..preprocessing import PreprocessConfig
from ..refine import NO_REFINEMENT


class Backend(ABC):
    """(B, 3, H, W) float32 pixels, normalised as ``preprocessing`` says -> (B, M, ceil(H/16), ceil(W/16)) float32
    class probabilities, after the kNN refinement when the backend has it enabled."""

    name: str = "abstract"
    categories: list[str]
    preprocessing: PreprocessConfig
    #: (k, iterations) of the refinement this backend applies; (1, 0) when it applies none.
    refinement: tuple[int, int] = NO_REFINEMENT
    #: None = any input size; otherwise the one (H, W) the backend accepts (a fixed-size ONNX file or engine).
    fixed_input_size: tuple[int, int] | None = None
    #: Where it runs: "cpu", "cuda:N", ...
    device: str = "cpu"
    #: The most images one run of the engine takes (None: any); :meth:`probs` splits larger batches itself.
    max_batch: int | None = None

    @classmethod
    def from_file(cls, path: str | Path, *, device: str | None = None, refinement: tuple[int, int] | None = None,
                  **options: Any) -> Backend:
        """Load the artifact at ``path``. ``refinement`` (k, iterations): what to apply (the PyTorch backend) or
        what the file must have been exported with (the others; re-export to change it). Backends registered in
        :mod:`.registry` implement it; one made in memory (``Segmenter(MyBackend(...))``) need not."""
        raise BackendError(f"the {cls.name} backend has no file format; construct {cls.__name__} directly")

    @abstractmethod
    def probs(self, pixels: np.ndarray) -> np.ndarray:
        """Run the model on a batch of same-sized images."""

    def probs_tensor(self, pixels: np.ndarray) -> Any:  # -> torch.Tensor
        """:meth:`probs` as a float32 tensor; backends that compute on a torch device keep it there, so the
        Segmenter's upsampling runs on that device too."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.probs(pixels), dtype=np.float32))

    def describe(self) -> dict[str, Any]:
        """What is running, for logs and benchmark reports."""
        return {"backend": self.name, "device": self.device, "refinement": list(self.refinement)}

    def close(self) -> None:  # noqa: B027 - optional hook; backends holding device memory override it
        """Release device resources (engines, buffers, sessions)."""


def require_refinement(path: str | Path, have: tuple[int, int], wanted: tuple[int, int] | None) -> None:
    """An exported model's refinement is part of its graph: asking for another one is an error, not a no-op (an
    :class:`~ifseg_deploy.errors.InputError`: the settings asked for do not fit the file; exit status 1)."""
    if wanted is not None and tuple(wanted) != tuple(have):
        raise InputError(f"{path} was exported with refinement k={have[0]}, iterations={have[1]}, but k={wanted[0]}, "
                         f"iterations={wanted[1]} was asked for; re-export the model with those settings "
                         "(refinement is part of the exported graph)")
