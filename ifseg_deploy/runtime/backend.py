"""What a Segmenter backend is: something that turns normalised pixels into class probabilities.

Every backend (PyTorch here; ONNX Runtime and TensorRT in the export stage) implements :class:`Backend`, so
``Segmenter`` callers never change when the engine underneath does. Preprocessing (resize, normalise),
batching, the upsampling to the original image size and the argmax stay in the Segmenter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class Backend(ABC):
    """(B, 3, H, W) float32 pixels, normalised with mean = std = 0.5 -> (B, M, ceil(H/16), ceil(W/16)) float32
    class probabilities, after the kNN refinement when the backend has it enabled."""

    name: str = "abstract"
    categories: list[str]
    preprocessing: dict[str, Any]
    #: (k, iterations) of the refinement this backend applies; (1, 0) when it applies none.
    refinement: tuple[int, int] = (1, 0)
    #: None = any input size; otherwise the one (H, W) the backend accepts (a fixed-size ONNX file or engine).
    fixed_input_size: tuple[int, int] | None = None

    @abstractmethod
    def probs(self, pixels: np.ndarray) -> np.ndarray:
        """Run the model on a batch of same-sized images."""

    def close(self) -> None:  # noqa: B027 - optional hook; backends holding device memory override it
        """Release device resources (engines, buffers, sessions)."""
