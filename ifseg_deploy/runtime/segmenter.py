"""The runtime API: ``Segmenter`` turns images into label maps at their original size, on any backend.

>>> seg = Segmenter.from_pretrained("my_model")                      # PyTorch, CPU, paper settings
>>> result = seg("photo.jpg")                                         # path, PIL image or HWC uint8 array
>>> result.labels.shape, result.class_names                           # (H, W) ids at the photo's size
>>> seg = Segmenter.from_pretrained("model.onnx", backend="onnxruntime")  # same calls, another engine
>>> seg = Segmenter(my_backend)                                       # any ``Backend`` implementation
>>> seg.set_categories(["floor", "person"])   # a subset of its own (any model); any names (open-vocabulary models
>>>                                           # on torch, and their `export --open-vocabulary` files)

The pipeline is the paper's evaluation protocol (``ifseg_method.md`` §4; geometry in :mod:`ifseg_deploy.preprocessing`):
resize (short side 512, long side at most 2048, bilinear), RGB / 255, (x - 0.5) / 0.5, the backend's
probabilities at (ceil(H'/16), ceil(W'/16)) (softmax, then the kNN refinement inside the backend), bilinear
upsampling straight to the original (H, W), argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import InputError
from ..preprocessing import preprocess, upsample_argmax
from ..refine import refinement_setting
from .backend import Backend
from .categories import check_names, restrict_probs, subset_index
from .images import load_image
from .registry import BackendUnavailableError, load_backend

if TYPE_CHECKING:
    from .stream import SegmentStream

__all__ = ["BackendUnavailableError", "SegmentationResult", "Segmenter"]


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
            raise InputError(f"batch_size must be >= 1 (got {batch_size})")
        self.backend = backend
        self.preprocessing = backend.preprocessing.replace(short_side=short_side, max_long_side=max_long_side)
        self.batch_size = batch_size
        self.exif = exif
        # A subset of the backend's own categories, kept here for backends that cannot change theirs.
        self._subset: tuple[list[str], torch.Tensor] | None = None

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, backend: str = "torch", device: str | None = "cpu", *,
                        refine: bool | None = None, refine_k: int | None = None, refine_iters: int | None = None,
                        short_side: int | None = None, max_long_side: int | None = None,
                        batch_size: int = 8, exif: bool = True, categories: Sequence[str] | str | None = None,
                        **backend_options: Any) -> Segmenter:
        """Load ``path`` with backend ``"torch"`` (an adapted-model directory), ``"onnxruntime"`` (an .onnx file)
        or ``"tensorrt"`` (an engine built by the export stage).

        Refinement: ``refine`` (default on), ``refine_k`` (3) and ``refine_iters`` (25). The torch backend
        applies them; an exported model has its refinement built in, and asking for other settings than the
        file has is an error (re-export instead). ``categories``: see :meth:`set_categories` (checked before the
        model is loaded when they are malformed). ``backend_options`` go to the backend's ``from_file``.
        """
        names = None if categories is None else check_names(categories)
        asked = refine is not None or refine_k is not None or refine_iters is not None
        wanted = refinement_setting(refine is not False, refine_k, refine_iters) if asked else None
        engine = load_backend(backend, path, device=device, refinement=wanted, **backend_options)
        seg = cls(engine, short_side=short_side, max_long_side=max_long_side, batch_size=batch_size, exif=exif)
        if names is not None:
            try:
                seg.set_categories(names)
            except BaseException:
                seg.close()
                raise
        return seg

    @classmethod
    def from_model(cls, adapted: Any, device: str | None = "cpu", *, refine: bool = True, refine_k: int = 3,
                   refine_iters: int = 25, **kwargs: Any) -> Segmenter:
        """Wrap an in-memory :class:`~ifseg_deploy.model_dir.AdaptedModel` (e.g. right after adaptation)."""
        from .backends.torch import TorchBackend

        return cls(TorchBackend(adapted, device, refinement_setting(refine, refine_k, refine_iters)), **kwargs)

    # -- categories --------------------------------------------------------------------------------------------
    def set_categories(self, names: Sequence[str] | str) -> None:
        """Segment ``names`` (a list, or one comma-separated string) from now on; ``class_names`` becomes them.

        Any model takes a subset of its own categories, in any order: the other classes' logits are masked
        before the softmax (the torch backend), or their probabilities dropped and the rest renormalised (the
        exported backends; the same when the file has no refinement). A model adapted with ``--vocabulary``
        takes any names: on the torch backend its prompt and class table are rebuilt; its ``export
        --open-vocabulary`` file (ONNX Runtime, TensorRT) gets new vocabulary inputs, within the file's bounds.
        Refused with :class:`~ifseg_deploy.errors.CategoryError`: an empty list, blank or duplicate names, names a
        per-vocabulary model does not know, and names beyond an open-vocabulary file's bounds."""
        checked = check_names(names)
        if self.backend.can_set_categories:
            self.backend.set_categories(checked)
            self._subset = None
            return
        own = list(self.backend.categories)  # the file's own list: a new subset replaces the previous one
        index = subset_index(checked, own)
        identity = index == list(range(len(own)))
        self._subset = None if identity else (checked, torch.tensor(index, dtype=torch.long))

    # -- properties --------------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return list(self._subset[0]) if self._subset is not None else list(self.backend.categories)

    @property
    def refinement(self) -> tuple[int, int]:
        return tuple(self.backend.refinement)  # type: ignore[return-value]

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') an (H, W) image is resized to before the model."""
        fixed = self.backend.fixed_input_size
        if fixed is not None:
            # A fixed-shape ONNX file or engine takes one size: the image is stretched to it (aspect not kept).
            return int(fixed[0]), int(fixed[1])
        return self.preprocessing.input_size(height, width)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the probability grid for an (H, W) image."""
        return self.preprocessing.grid(*self.input_size(height, width))

    # -- running -----------------------------------------------------------------------------------------------
    def load(self, image: Any) -> np.ndarray:
        """Any accepted input -> (H, W, 3) uint8 RGB (see :mod:`.images`)."""
        return load_image(image, exif=self.exif)

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (3, H', W') float32 normalised pixels."""
        return preprocess(rgb, self.preprocessing, self.input_size(*rgb.shape[:2]))

    def _probs(self, batch: np.ndarray) -> torch.Tensor:
        out = self.backend.probs_tensor(batch)  # a torch backend keeps it on its device for the upsampling
        m = len(self.backend.categories)
        if self._subset is not None and out.shape[1] == m:
            out = restrict_probs(out, self._subset[1])
            m = len(self._subset[0])
        expected = (batch.shape[0], m, *self.preprocessing.grid(*batch.shape[-2:]))
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

    def stream(self, source: Any, *, batch: int = 1, smooth: float = 0.0, queue_size: int | None = None,
               drop: bool | None = None) -> SegmentStream:
        """Segment a video, camera, network stream, GStreamer pipeline, image folder or iterable of frames
        (anything :func:`~.sources.open_source` takes): an iterator (and context manager) of
        :class:`~.stream.StreamResult`, read ahead by a thread; see :mod:`.stream` for ``batch``, ``smooth``
        (0..1, EMA of the probabilities), ``queue_size`` and ``drop`` (live sources drop the oldest frames)."""
        from .stream import SegmentStream

        return SegmentStream(self, source, batch=batch, smooth=smooth, queue_size=queue_size, drop=drop)

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
                f"{pre.short_side}, long side <= {pre.max_long_side}, refinement k={k} x{it})")
