"""Images for the export checks: parity inputs and calibration batches, preprocessed as the runtime does.

The preprocessing is the :class:`~ifseg_deploy.runtime.segmenter.Segmenter`'s own (:mod:`ifseg_deploy.preprocessing`):
the keep-ratio resize (short side 512, long side at most 2048) for a dynamic-shape model, or a stretch to the
one accepted size for a fixed-shape model (what ``Segmenter.input_size`` does), then RGB / 255, (x - 0.5) / 0.5.
Calibrating on exactly what the deployed model will see is what makes the INT8 scales right.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ifseg_deploy.preprocessing import PreprocessConfig, preprocess
from ifseg_deploy.runtime.input_spec import InputSpec, Size, grid_cells

#: skimage.data photos used for parity when scikit-image is installed (all ship inside its wheel).
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
#: Parity skips sizes whose kNN similarity matrix (cells^2 floats) would dominate the check's memory and time.
MAX_PARITY_CELLS = 4096


def runtime_size(height: int, width: int, preprocessing: PreprocessConfig, fixed: Size | None) -> Size:
    """(H', W') the Segmenter feeds the model for an (H, W) image."""
    if fixed is not None:
        return int(fixed[0]), int(fixed[1])
    return preprocessing.input_size(height, width)


def synthetic_photos(n: int, seed: int = 0, size: Size = (480, 640)) -> list[np.ndarray]:
    """Smooth random RGB scenes (colour fields, a few flat rectangles, mild noise): photo-like statistics for
    parity where no real photo is at hand. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for _ in range(n):
        coarse = rng.uniform(0, 255, size=(4, 5, 3))
        ys = np.linspace(0, coarse.shape[0] - 1, h)
        xs = np.linspace(0, coarse.shape[1] - 1, w)
        y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
        y1, x1 = np.minimum(y0 + 1, coarse.shape[0] - 1), np.minimum(x0 + 1, coarse.shape[1] - 1)
        fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
        img = ((coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x1] * fx) * (1 - fy)
               + (coarse[y1][:, x0] * (1 - fx) + coarse[y1][:, x1] * fx) * fy)
        for _ in range(rng.integers(2, 6)):
            r0, c0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
            img[r0:r0 + rng.integers(8, h // 2), c0:c0 + rng.integers(8, w // 2)] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 6, size=img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def sample_photos(n: int, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """``n`` photos: real ones from ``skimage.data`` when scikit-image is installed, topped up with
    :func:`synthetic_photos`. Also returns a description of where they came from."""
    photos: list[np.ndarray] = []
    try:
        from skimage import data
    except ImportError:
        data = None
    if data is not None:
        for name in SKIMAGE_PHOTOS[:n]:
            try:
                img = np.asarray(getattr(data, name)())
            except Exception:  # noqa: BLE001 - a photo missing from this scikit-image build: skip it
                continue
            if img.ndim == 3 and img.shape[2] >= 3:
                photos.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    n_real = len(photos)
    photos += synthetic_photos(n - n_real, seed)
    if data is None:
        return photos, f"{n} synthetic scenes (install scikit-image for real photos)"
    return photos, f"{n_real} skimage.data photo(s) + {n - n_real} synthetic scene(s)"


def parity_sizes(spec: InputSpec) -> list[Size]:
    """Input sizes a parity check covers: the fixed size, or opt, min, an in-between size that is not a
    multiple of 16, and max (sizes over :data:`MAX_PARITY_CELLS` grid cells are left out)."""
    if not spec.is_dynamic:
        return [spec.opt_size]
    mid = tuple(min(hi, max(lo, (o + hi) // 2 | 1)) for lo, o, hi in zip(spec.min_size, spec.opt_size, spec.max_size))
    sizes: list[Size] = []
    for s in (spec.opt_size, spec.min_size, mid, spec.max_size):
        s = (int(s[0]), int(s[1]))
        if s not in sizes and (grid_cells(s) <= MAX_PARITY_CELLS or not sizes):
            sizes.append(s)
    return sizes


def parity_inputs(spec: InputSpec, preprocessing: PreprocessConfig, n_images: int = 4, seed: int = 0
                  ) -> tuple[list[np.ndarray], str]:
    """Normalised (B, 3, H, W) batches covering :func:`parity_sizes`, at least ``n_images`` images in all,
    and one batch of two where the model takes batches. Returns the batches and a description of the data."""
    sizes = parity_sizes(spec)
    per_size = max(1, math.ceil(n_images / len(sizes)))
    photos, source = sample_photos(per_size * len(sizes) + (1 if spec.max_batch >= 2 else 0), seed)
    batches: list[np.ndarray] = []
    it = iter(photos)
    for size in sizes:
        for _ in range(per_size):
            batches.append(preprocess(next(it), preprocessing, size)[None])
    if spec.max_batch >= 2:
        size = spec.opt_size
        batches.append(np.stack([preprocess(photos[0], preprocessing, size),
                                 preprocess(photos[-1], preprocessing, size)]))
    return batches, source


class CalibrationError(ValueError):
    """Too few usable calibration images; the message gives the counts and names the unreadable files."""


def calibration_batch(paths: Sequence[Path], preprocessing: PreprocessConfig, spec: InputSpec, *,
                      min_images: int = 1, warn: Callable[[str], None] | None = None) -> np.ndarray:
    """(N, 3, H, W) float32 calibration data from image files, at one size.

    A fixed-shape model gets its size (stretched, as the Segmenter does). A dynamic-shape model is calibrated
    at its opt size: each image is resized by the runtime rule and then centre-cropped (or edge-padded) to
    opt, so objects keep the scale they have at run time; activation ranges do not depend on the grid size.

    A file that cannot be read (empty, truncated, not an image) is skipped, and ``warn`` is told which and why;
    :class:`CalibrationError` when fewer than ``min_images`` readable images remain.
    """
    from ifseg_deploy.runtime.images import ImageLoadError, load_image

    if not paths:
        raise CalibrationError("no calibration images")
    out = np.empty((len(paths), 3, *spec.opt_size), dtype=np.float32)
    n, unreadable = 0, []
    for p in paths:
        try:
            rgb = load_image(p)
        except ImageLoadError as e:
            unreadable.append(Path(p))
            if warn is not None:
                warn(f"warning: skipping unreadable calibration image {e}")
            continue
        if spec.is_dynamic:
            x = preprocess(rgb, preprocessing, runtime_size(*rgb.shape[:2], preprocessing, None))
            out[n] = _crop_or_pad(x, spec.opt_size)
        else:
            out[n] = preprocess(rgb, preprocessing, spec.opt_size)
        n += 1
    if n < min_images:
        skipped = f"; unreadable: {', '.join(str(p) for p in unreadable)}" if unreadable else ""
        raise CalibrationError(f"only {n} of the {len(paths)} calibration image(s) could be read, fewer than the "
                               f"{min_images} required (--calib-min){skipped}")
    return out[:n]


def _crop_or_pad(x: np.ndarray, size: Size) -> np.ndarray:
    _, h, w = x.shape
    th, tw = size
    top, left = max(0, (h - th) // 2), max(0, (w - tw) // 2)
    x = x[:, top:top + th, left:left + tw]
    ph, pw = th - x.shape[1], tw - x.shape[2]
    if ph or pw:
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="edge")
    return x


def list_images(folder: str | Path, limit: int | None = None) -> list[Path]:
    """Image files of ``folder`` (sorted; the runtime's suffixes), at most ``limit`` spread evenly over it."""
    from ifseg_deploy.runtime.images import find_images

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of images")
    files = [p for p, _ in find_images([root], recursive=True)]
    if not files:
        raise FileNotFoundError(f"{root} holds no images")
    if limit is not None and len(files) > limit:
        step = len(files) / limit
        files = [files[int(i * step)] for i in range(limit)]
    return files
