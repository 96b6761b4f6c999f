"""The runtime API: ``Segmenter`` turns images into label maps at their original size, on any backend.

>>> seg = Segmenter.from_pretrained("my_model")                      # PyTorch, CPU, paper settings
>>> result = seg("photo.jpg")                                         # path, PIL image or HWC uint8 array
>>> result.labels.shape, result.class_names                           # (H, W) ids at the photo's size
>>> seg = Segmenter.from_pretrained("model.onnx", backend="onnxruntime")  # same calls, another engine
>>> seg = Segmenter(my_backend)                                       # any ``Backend`` implementation

The pipeline is the paper's evaluation protocol (``ifseg_method.md`` §4; geometry in :mod:`.preprocess`):
resize (short side 512, long side at most 2048, bilinear), RGB / 255, (x - 0.5) / 0.5, the backend's
probabilities at (ceil(H'/16), ceil(W'/16)) (softmax, then the kNN refinement inside the backend), bilinear
upsampling straight to the original (H, W), argmax.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BackendError
from .backend import Backend
from .images import load_image
from .preprocess import grid_size, normalize, resize_image, resized_size, upsample_argmax

#: backend name -> "module:factory"; the factory has ``from_file(path, **options)``. The export stage's
#: backends are imported only when asked for.
BACKENDS: dict[str, str] = {
    "torch": "ifseg_deploy.runtime.torch_backend:TorchBackend",
    "onnxruntime": "ifseg_deploy.export.ort_backend:OrtBackend",
    "tensorrt": "ifseg_deploy.export.trt_backend:TensorRTBackend",
}

_EXTRAS = {"onnxruntime": "onnx", "tensorrt": "trt"}


class BackendUnavailableError(BackendError):
    """The asked-for backend is not part of this installation (not written yet, or its package is missing)."""


def backend_factory(name: str) -> Any:
    """Import the factory class of backend ``name`` lazily; :class:`BackendUnavailableError` if that fails."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    module_name, attr = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise BackendUnavailableError(
                f"the {name} backend is not available in this version of ifseg-deploy yet ({module_name} is "
                "missing); use backend='torch' (--backend torch)") from None
        extra = _EXTRAS.get(name)
        hint = f" (pip install 'ifseg-deploy[{extra}]')" if extra else ""
        raise BackendUnavailableError(f"the {name} backend needs the package {missing!r}, which is not "
                                      f"installed{hint}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise BackendUnavailableError(f"{module_name} has no {attr}: the {name} backend is not available in this "
                                      "version of ifseg-deploy yet") from None


@dataclass
class SegmentationResult:
    """What :class:`Segmenter` returns for one image."""

    #: (H, W) int32 class ids at the image's original size (after EXIF orientation); ``class_names[id]``.
    labels: np.ndarray
    class_names: list[str]
    #: (M, h, w) float32 class probabilities on the model's 1/16 grid (after refinement), if asked for.
    probs: np.ndarray | None = None
    #: (H', W') the image was resized to for the model.
    input_size: tuple[int, int] = (0, 0)
    #: the path the image came from, when it was given as a path.
    source: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the label map = the original image."""
        return int(self.labels.shape[0]), int(self.labels.shape[1])

    def mask(self, name: str) -> np.ndarray:
        """Boolean (H, W) mask of one class, by name."""
        try:
            return self.labels == self.class_names.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not one of the model's categories: {self.class_names}") from None

    def areas(self) -> dict[str, float]:
        """Fraction of the image each present class covers, largest first."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        total = max(1, self.labels.size)
        order = np.argsort(-counts, kind="stable")
        return {self.class_names[i]: float(counts[i] / total) for i in order if counts[i] > 0}


class Segmenter:
    """Images in, :class:`SegmentationResult` out, on any :class:`~ifseg_deploy.runtime.backend.Backend`.

    ``short_side`` / ``max_long_side`` override the model's preprocessing (None: the model's, by default
    512 / 2048; other values run the model at other resolutions). ``batch_size``: same-sized inputs of one
    call run together, up to this many at a time (the paper runs batch 1; results do not depend on it beyond
    float rounding). ``exif``: apply EXIF orientation to files and PIL images (default True). A backend with
    a ``fixed_input_size`` gets every image stretched to that size (aspect ratio not kept).
    """

    def __init__(self, backend: Backend, *, short_side: int | None = None,
                 max_long_side: int | None = None, batch_size: int = 8, exif: bool = True) -> None:
        if not isinstance(backend, Backend):
            raise TypeError(f"Segmenter needs a Backend, got {type(backend).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.backend = backend
        pre = dict(getattr(backend, "preprocessing", None) or {})
        if short_side is not None:
            pre["short_side"] = int(short_side)
        if max_long_side is not None:
            pre["max_long_side"] = int(max_long_side)
        pre.setdefault("short_side", 512)
        pre.setdefault("max_long_side", 2048)
        pre.setdefault("mean", [0.5, 0.5, 0.5])
        pre.setdefault("std", [0.5, 0.5, 0.5])
        pre.setdefault("patch_size", 16)
        interp = pre.setdefault("interpolation", "bilinear")
        if interp != "bilinear":
            raise ValueError(f"preprocessing interpolation {interp!r} is not supported (only 'bilinear')")
        self.preprocessing = pre
        self.batch_size = batch_size
        self.exif = exif

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, backend: str = "torch", device: str | None = "cpu", *,
                        refine: bool | None = None, refine_k: int | None = None, refine_iters: int | None = None,
                        short_side: int | None = None, max_long_side: int | None = None,
                        batch_size: int = 8, exif: bool = True, **backend_options: Any) -> Segmenter:
        """Load ``path`` with backend ``"torch"`` (an adapted-model directory), ``"onnxruntime"`` or
        ``"tensorrt"`` (an exported file; built by the export stage).

        Refinement: ``refine`` (default on), ``refine_k`` (3) and ``refine_iters`` (25). The torch backend
        applies them; an exported model has its refinement built in, and asking for other settings than the
        file has is an error (re-export instead). ``backend_options`` go to the backend's ``from_file``.
        """
        asked = refine is not None or refine_k is not None or refine_iters is not None
        k = 3 if refine_k is None else int(refine_k)
        iters = 25 if refine_iters is None else int(refine_iters)
        if refine is False:
            k, iters = 1, 0
        wanted = (k, iters) if k > 1 and iters > 0 else (1, 0)
        factory = backend_factory(backend)
        if backend == "torch":
            engine = factory.from_file(path, device=device, refine_k=wanted[0], refine_iters=wanted[1],
                                       **backend_options)
        else:
            options = dict(backend_options)
            params = inspect.signature(factory.from_file).parameters
            if "device" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
                options.setdefault("device", device)
            engine = factory.from_file(path, **options)
            have = tuple(getattr(engine, "refinement", (1, 0)))
            if asked and have != wanted:
                engine.close()
                raise ValueError(f"{path} was exported with refinement k={have[0]}, iterations={have[1]}, but "
                                 f"k={wanted[0]}, iterations={wanted[1]} was asked for; re-export the model with "
                                 "those settings (refinement is part of the exported graph)")
        return cls(engine, short_side=short_side, max_long_side=max_long_side, batch_size=batch_size, exif=exif)

    @classmethod
    def from_model(cls, adapted: Any, device: str | None = "cpu", *, refine: bool = True, refine_k: int = 3,
                   refine_iters: int = 25, **kwargs: Any) -> Segmenter:
        """Wrap an in-memory :class:`~ifseg_deploy.pretrained.AdaptedModel` (e.g. right after adaptation)."""
        from .torch_backend import TorchBackend

        k, iters = (refine_k, refine_iters) if refine else (1, 0)
        return cls(TorchBackend(adapted, device, k, iters), **kwargs)

    # -- properties --------------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return list(self.backend.categories)

    @property
    def refinement(self) -> tuple[int, int]:
        return tuple(self.backend.refinement)  # type: ignore[return-value]

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') an (H, W) image is resized to before the model."""
        fixed = getattr(self.backend, "fixed_input_size", None)
        if fixed is not None:
            # A fixed-shape ONNX file or engine takes one size: the image is stretched to it (aspect not kept).
            return int(fixed[0]), int(fixed[1])
        return resized_size(height, width, self.preprocessing["short_side"], self.preprocessing["max_long_side"])

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the probability grid for an (H, W) image."""
        return grid_size(*self.input_size(height, width), self.preprocessing["patch_size"])

    # -- running -----------------------------------------------------------------------------------------------
    def load(self, image: Any) -> np.ndarray:
        """Any accepted input -> (H, W, 3) uint8 RGB (see :mod:`.images`)."""
        return load_image(image, exif=self.exif)

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (3, H', W') float32 normalised pixels."""
        size = self.input_size(*rgb.shape[:2])
        pre = self.preprocessing
        return normalize(resize_image(rgb, size), pre["mean"], pre["std"])

    def _probs(self, batch: np.ndarray) -> torch.Tensor:
        probs_tensor = getattr(self.backend, "probs_tensor", None)
        if probs_tensor is not None:
            out = probs_tensor(batch)  # stays on the backend's device for the upsampling
        else:
            out = torch.from_numpy(np.ascontiguousarray(self.backend.probs(batch), dtype=np.float32))
        m = len(self.backend.categories)
        expected = (batch.shape[0], m, *grid_size(*batch.shape[-2:], self.preprocessing["patch_size"]))
        if tuple(out.shape) != expected:
            raise RuntimeError(f"backend {self.backend.name!r} returned probabilities of shape {tuple(out.shape)}, "
                               f"expected {expected}")
        return out

    def __call__(self, images: Any, return_probs: bool = False) -> SegmentationResult | list[SegmentationResult]:
        """Segment one image (path, PIL image, numpy array) or a list of them (-> a list of results)."""
        single = not isinstance(images, (list, tuple))
        items: Sequence[Any] = [images] if single else list(images)
        results = self.segment_many(items, return_probs=return_probs)
        return results[0] if single else results

    def segment_many(self, images: Sequence[Any], return_probs: bool = False) -> list[SegmentationResult]:
        loaded = [self.load(im) for im in images]
        sources = [str(im) if isinstance(im, (str, Path)) else None for im in images]
        sizes = [self.input_size(*rgb.shape[:2]) for rgb in loaded]
        results: list[SegmentationResult | None] = [None] * len(loaded)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, s in enumerate(sizes):
            groups.setdefault(s, []).append(i)
        for size, members in groups.items():
            for b0 in range(0, len(members), self.batch_size):
                chunk = members[b0:b0 + self.batch_size]
                batch = np.stack([self.preprocess(loaded[i]) for i in chunk])
                probs = self._probs(batch)
                for j, i in enumerate(chunk):
                    labels = upsample_argmax(probs[j], loaded[i].shape[:2])
                    p = probs[j].cpu().numpy() if return_probs else None
                    results[i] = SegmentationResult(labels, self.class_names, p, size, sources[i])
        return [r for r in results if r is not None]

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        k, it = self.refinement
        pre = self.preprocessing
        return (f"Segmenter(backend={self.backend.name}, {len(self.class_names)} classes, short side "
                f"{pre['short_side']}, long side <= {pre['max_long_side']}, refinement k={k} x{it})")
