"""The one definition of IFSeg's preprocessing (``ifseg_method.md`` §4): :class:`PreprocessConfig` (saved in a
model directory's config.json and an exported file's metadata) and the single implementation of the resize rule,
the bilinear resampling, the normalisation and the upsampling of probabilities back to the original image,
memory-bounded for very large images. The Segmenter, the export's calibration and parity inputs and the synthetic
world all call :func:`preprocess`.

**Size rule** (mmcv ``imrescale`` with mmseg ``Resize(img_scale=(2048, 512), keep_ratio=True)``):
``factor = min(max_long_side / long, short_side / short)``, each side becomes ``int(side * factor + 0.5)``
(640x480 -> 683x512). Images smaller than ``short_side`` are enlarged (a 10x10 image becomes 512x512). When the
long-side cap decides (aspect ratio above 4:1) the short side can round below one pixel: it is kept at one
pixel (a 100000x10 image becomes 2048x1), so every non-empty image has a defined result.

**Resampling**: bilinear with half-pixel centres (``align_corners=False``) and *no* antialiasing, i.e.
``torch.nn.functional.interpolate(mode="bilinear", antialias=False)``; the resized image is rounded back to
uint8. This is what OpenCV's ``INTER_LINEAR`` (mmcv's default ``cv2`` backend) computes: on photos it agrees
with ``cv2.resize`` within one grey level (OpenCV uses 11-bit fixed-point weights), also when shrinking,
where PIL's ``BILINEAR`` (which antialiases) differs by up to tens of grey levels.

The same separable kernel upsamples the (M, h, w) probabilities to the original (H, W) before the argmax,
row block by row block, so a 100-megapixel image never holds an (M, H, W) float array.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import InputError

#: Elements (per intermediate array) that one block of rows may use when resampling: 2**22 floats = 16 MiB
#: (smaller blocks stay in cache and run faster than one whole-image pass).
BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class PreprocessConfig:
    """How images become model input: the paper's evaluation preprocessing by default (short side 512, long side
    at most 2048, bilinear, RGB / 255 normalised with mean = std = 0.5; the model's grid is ceil(H/16) x
    ceil(W/16)). ``short_side`` / ``max_long_side`` None drop that constraint."""

    short_side: int | None = 512
    max_long_side: int | None = 2048
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    patch_size: int = 16
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.interpolation != "bilinear":
            raise InputError(f"preprocessing interpolation {self.interpolation!r} is not supported (only "
                             "'bilinear')")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InputError(f"preprocessing needs 3 means and 3 positive stds, got {self.mean}, {self.std}")
        for name in ("short_side", "max_long_side"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise InputError(f"preprocessing {name} must be >= 1 (got {value})")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | PreprocessConfig | None) -> PreprocessConfig:
        """From the saved form (config.json, ONNX metadata); missing keys take the defaults, unknown ones are
        refused (a file written by a newer version that preprocesses differently must not be misread)."""
        if isinstance(d, PreprocessConfig):
            return d
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown preprocessing settings {unknown}; this version knows {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def replace(self, **changes: Any) -> PreprocessConfig:
        """A copy with ``changes``; None values leave a field as it is."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def __getitem__(self, key: str) -> Any:
        # Preprocessing used to be a plain dict; keep ``cfg["short_side"]`` working for one release.
        warnings.warn("preprocessing is a PreprocessConfig now: use attributes (cfg.short_side)",
                      DeprecationWarning, stacklevel=2)
        return self.to_dict()[key]

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') an (H, W) image is resized to."""
        return resized_size(height, width, self.short_side, self.max_long_side)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The model's output grid for an input of (H', W')."""
        return grid_size(height, width, self.patch_size)


def preprocess(rgb: np.ndarray, cfg: PreprocessConfig, size: Sequence[int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H', W') float32 model input: resized to ``size`` (default: ``cfg``'s rule)
    and normalised."""
    size = cfg.input_size(*rgb.shape[:2]) if size is None else size
    return normalize(resize_image(rgb, size), cfg.mean, cfg.std)


_DEFAULT = PreprocessConfig()


def resized_size(height: int, width: int, short_side: int | None = _DEFAULT.short_side,
                 max_long_side: int | None = _DEFAULT.max_long_side) -> tuple[int, int]:
    """(H, W) -> (H', W') by the mmseg keep-ratio rule; ``None`` drops a constraint (both None: unchanged)."""
    if height < 1 or width < 1:
        raise ValueError(f"empty image ({height}x{width})")
    factors = []
    if max_long_side is not None:
        if max_long_side < 1:
            raise ValueError(f"max_long_side must be >= 1 (got {max_long_side})")
        factors.append(max_long_side / max(height, width))
    if short_side is not None:
        if short_side < 1:
            raise ValueError(f"short_side must be >= 1 (got {short_side})")
        factors.append(short_side / min(height, width))
    if not factors:
        return height, width
    factor = min(factors)
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def grid_size(height: int, width: int, patch_size: int = _DEFAULT.patch_size) -> tuple[int, int]:
    """The model's output grid for an input of (H', W'): (ceil(H'/16), ceil(W'/16))."""
    return -(-height // patch_size), -(-width // patch_size)


def _axis(in_size: int, out_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Indices and weights of PyTorch's bilinear kernel (align_corners=False) along one axis, in float32 as
    ``aten/src/ATen/native/UpSample.h`` computes them: src = max(scale * (dst + 0.5) - 0.5, 0)."""
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float64) + 0.5
    # PyTorch's CPU kernel evaluates this as one fused multiply-add in float32: the float64 product of two
    # float32 numbers is exact, so rounding once to float32 reproduces it bit for bit.
    src = np.maximum((np.float64(scale) * dst - 0.5).astype(np.float32), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam0 = (np.float32(1) - lam1).astype(np.float32)

    def t(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return t(i0), t(i1), t(lam0), t(lam1)


def iter_bilinear(x: Tensor, size: Sequence[int], block_elements: int = BLOCK_ELEMENTS
                  ) -> Iterator[tuple[int, int, Tensor]]:
    """Bilinear resampling (align_corners=False, no antialias) of (C, h, w) to (C, H, W), yielded as
    ``(r0, r1, rows)`` blocks with ``rows`` = output rows r0..r1-1 as float32 (C, r1 - r0, W).

    Equal (within float32 rounding, one ulp) to ``F.interpolate(x[None].float(), size, mode="bilinear")[0]``;
    integer inputs are gathered before the float conversion, so a large uint8 image is never converted whole.
    """
    c, h, w = x.shape
    out_h, out_w = int(size[0]), int(size[1])
    hi0, hi1, hl0, hl1 = _axis(h, out_h, x.device)
    wi0, wi1, wl0, wl1 = _axis(w, out_w, x.device)
    rows = max(1, block_elements // max(1, c * max(out_w, w)))
    for r0 in range(0, out_h, rows):
        r1 = min(out_h, r0 + rows)
        n = r1 - r0
        # Interpolate along W only the source rows this block needs (each once), then along H: the same
        # association as PyTorch's kernel, (x00 w0 + x01 w1) h0 + (x10 w0 + x11 w1) h1.
        needed, inverse = torch.unique(torch.cat([hi0[r0:r1], hi1[r0:r1]]), return_inverse=True)
        src = x.index_select(1, needed).float()
        src = src.index_select(2, wi0) * wl0 + src.index_select(2, wi1) * wl1  # (C, len(needed), W)
        top = src.index_select(1, inverse[:n]) * hl0[r0:r1, None]
        top += src.index_select(1, inverse[n:]) * hl1[r0:r1, None]
        yield r0, r1, top


def resize_image(image: np.ndarray, size: Sequence[int], block_elements: int = BLOCK_ELEMENTS) -> np.ndarray:
    """(H, W, 3) uint8 -> (H', W', 3) uint8, bilinear without antialiasing (cv2 INTER_LINEAR), rounded."""
    out_h, out_w = int(size[0]), int(size[1])
    if image.shape[:2] == (out_h, out_w):
        return image
    x = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)  # (3, H, W) view
    out = np.empty((out_h, out_w, image.shape[2]), dtype=np.uint8)
    for r0, r1, rows in iter_bilinear(x, (out_h, out_w), block_elements):
        out[r0:r1] = rows.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return out


def normalize(image: np.ndarray, mean: Sequence[float] = _DEFAULT.mean,
              std: Sequence[float] = _DEFAULT.std) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32: ToTensor (/255) then Normalize(mean, std)."""
    x = image.astype(np.float32).transpose(2, 0, 1) / np.float32(255)
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((x - m) / s)


def upsample_argmax(probs: Tensor | np.ndarray, size: Sequence[int],
                    block_elements: int = BLOCK_ELEMENTS) -> np.ndarray:
    """(M, h, w) class scores -> (H, W) int32 labels: bilinear upsampling (align_corners=False) straight to
    ``size``, then the argmax over classes (first class wins a tie), in blocks of rows."""
    p = torch.as_tensor(probs)
    if p.dim() != 3:
        raise ValueError(f"expected (M, h, w) probabilities, got shape {tuple(p.shape)}")
    out_h, out_w = int(size[0]), int(size[1])
    labels = np.empty((out_h, out_w), dtype=np.int32)
    for r0, r1, rows in iter_bilinear(p, (out_h, out_w), block_elements):
        labels[r0:r1] = rows.argmax(dim=0).to(torch.int32).cpu().numpy()
    return labels
