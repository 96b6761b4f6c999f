"""The PyTorch backend: the adapted model's :class:`~ifseg_deploy.runtime.graph.InferenceGraph` (the same module
that ONNX export traces) on a torch device, in fp32 (exact, the default) or under bf16/fp16 autocast."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...devices import torch_device
from ...errors import CategoryError, InputError
from ...model_dir import AdaptedModel
from ...modeling.position import max_text_tokens
from ...refine import PAPER_REFINEMENT, refinement_setting
from ..backend import Backend
from ..categories import check_names, subset_index
from ..graph import InferenceGraph
from ..registry import TORCH_PRECISIONS

#: precision -> autocast dtype (None: plain fp32)
PRECISION_DTYPES: dict[str, torch.dtype | None] = dict(zip(TORCH_PRECISIONS, (None, torch.bfloat16, torch.float16)))


def _check_precision(precision: str, device: torch.device) -> torch.dtype | None:
    if precision not in PRECISION_DTYPES:
        raise InputError(f"precision must be one of {', '.join(PRECISION_DTYPES)}, got {precision!r}")
    dtype = PRECISION_DTYPES[precision]
    if dtype is torch.float16 and device.type != "cuda":
        raise InputError("fp16 needs a CUDA device (PyTorch's CPU half precision is slow and not a deployment path); "
                         "on a CPU use bf16")
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError("this GPU has no bf16; use fp16")
    return dtype


class TorchBackend(Backend):
    """Runs the SegOFA model in PyTorch: softmax probabilities at 1/16, kNN-refined per ``refinement``
    ((k, iterations); (1, 0) = none).

    ``precision``: "fp32" (exact: the reference every export is checked against), "bf16" (CPUs with AVX-512 BF16
    or AMX, and GPUs) or "fp16" (GPUs): autocast over the model, with LayerNorm, softmax, GELU and the whole
    refinement kept in fp32. ``compile``: ``torch.compile`` the graph (slow first call per input size).
    ``channels_last``: put the ResNet's weights in channels-last memory format (what oneDNN's convolutions and
    reduced-precision kernels want). :meth:`from_file` does, for the model it loaded; a model handed in is left
    as it is by default, because the change alters the convolutions' rounding, and a model still being trained
    (self-training labels with it between rounds) must train on bit for bit as if it had not been lent.
    """

    name = "torch"
    can_set_categories = True

    def __init__(self, adapted: AdaptedModel, device: str | torch.device | None = "cpu",
                 refinement: tuple[int, int] = PAPER_REFINEMENT, precision: str = "fp32",
                 compile: bool = False, channels_last: bool = False) -> None:
        self.torch_device = torch_device(device)
        self.device = str(self.torch_device)
        self.autocast_dtype = _check_precision(precision, self.torch_device)
        self.precision = precision
        self.adapted = adapted
        self.categories = list(adapted.categories)
        self.preprocessing = adapted.preprocessing
        self.refinement = refinement_setting(True, *refinement)
        model = adapted.model.to(self.torch_device).eval()
        if channels_last:
            model.encoder.embed_images.to(memory_format=torch.channels_last)
        self.graph: Any = InferenceGraph(model, *self.refinement).eval()
        self.compiled = compile
        # the compiled callable runs the same module: set_categories and the bias caches act on self.graph
        self._run = torch.compile(self.graph, dynamic=False) if compile else self.graph

    @classmethod
    def from_file(cls, path: str | Path, *, device: str | None = None,
                  refinement: tuple[int, int] | None = None, precision: str = "fp32", compile: bool = False,
                  **options: Any) -> TorchBackend:
        """Load an adapted-model directory (``save_pretrained`` / ``ifseg-deploy adapt`` output). ``refinement``
        (default the paper's) is applied here; ``options`` go to :meth:`AdaptedModel.from_pretrained`."""
        dev = torch_device("cpu" if device is None else device)
        _check_precision(precision, dev)  # before reading the weights
        adapted = AdaptedModel.from_pretrained(path, device=dev, **options)
        return cls(adapted, dev, PAPER_REFINEMENT if refinement is None else refinement, precision, compile,
                   channels_last=True)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.torch_device.type, dtype=self.autocast_dtype)

    def set_categories(self, names: list[str]) -> None:
        """Segment ``names`` from now on.

        An open-vocabulary model gets the prompt and class table of ``names`` (milliseconds: one embedding
        lookup); a per-vocabulary model keeps its prompt and drops the other classes' logits before the softmax,
        and refuses names outside its list (:class:`~ifseg_deploy.errors.CategoryError`)."""
        names = check_names(names)
        if self.adapted.open_vocabulary:
            from ...tokenizer import TokenizerError

            tok, model = self.adapted.tokenizer, self.graph.model
            try:
                tok.check_prompt_length(names, max_text_tokens(model.cfg.max_source_positions), self.adapted.prompt)
                name_tokens = tok.name_tokens(names)
            except TokenizerError as e:
                raise CategoryError(f"cannot segment these categories: {e}") from None
            model.set_prompt(tok.prompt_ids(names, self.adapted.prompt), name_tokens)
            self.adapted.categories = list(names)
            self.graph.class_index = None
        else:
            index = subset_index(names, self.adapted.categories)
            keep_all = index == list(range(len(self.adapted.categories)))
            self.graph.class_index = None if keep_all else torch.tensor(index, device=self.torch_device)
        self.categories = list(names)

    def probs_tensor(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Like :meth:`probs` but returns a float32 tensor on the backend's device."""
        x = torch.as_tensor(pixels, dtype=torch.float32).to(self.torch_device)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) pixels, got {tuple(x.shape)}")
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            return self._run(x).float()

    def probs(self, pixels: np.ndarray) -> np.ndarray:
        return self.probs_tensor(pixels).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "precision": self.precision, "compile": self.compiled}

    def close(self) -> None:
        self.graph = self._run = None
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()

    def __repr__(self) -> str:
        k, it = self.refinement
        return (f"TorchBackend({len(self.categories)} categories, device={self.device}, {self.precision}, "
                f"refinement k={k} x{it})")
