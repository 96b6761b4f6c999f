"""The real-image training path: random crops of labelled images, beside the word maps of ``data.py``.

mmseg's training pipeline as IFSeg's fine-tuning uses it: resize so the short side is ``crop * r`` with ``r``
uniform in ``scale_range`` (keep ratio; bilinear, the inference resampling of :mod:`ifseg_deploy.preprocessing`;
labels nearest), a random ``crop`` x ``crop`` window, a horizontal flip with probability 1/2, padding with
zero pixels and ignored labels, then the model's normalisation. Labels are class ids with ``IGNORE`` (255) for
pixels that do not count (low-confidence pseudo-labels, classes a labelled mask does not mark).

All randomness comes from one seeded CPU generator whose state checkpoints save (bit-exact resume). Under DDP
every rank draws the random parameters of the whole global batch (a fixed number of draws per step, so the
streams stay in step) and builds only its own slice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..modeling.segofa import SegOFA
from ..preprocessing import PreprocessConfig, normalize, resize_image
from .config import AdaptConfig
from .ops import segmentation_loss
from .step import TrainStep

IGNORE = 255
#: Crop positions tried before a crop is centred on a labelled pixel (mmseg retries crops ten times too).
CROP_TRIES = 10


class ImageCrops:
    """Random training crops of images ((H, W, 3) uint8) with their labels ((H, W) uint8, 255 = ignore), given
    by :meth:`set_data`.

    ``sample(batch)`` returns this rank's share: pixels (b, 3, crop, crop) float32 and targets (b, crop, crop)
    int64 on ``device``. An image whose labels are all ignored is refused (it could never teach anything).
    """

    def __init__(self, crop: int, *, preprocessing: PreprocessConfig | None = None,
                 scale_range: tuple[float, float] = (0.5, 2.0), seed: int = 0, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu") -> None:
        if crop < 1 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"need crop >= 1 and 0 < scale_range[0] <= scale_range[1] (got {crop}, {scale_range})")
        self.images: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.crop, self.scale_range = crop, scale_range
        self.preprocessing = preprocessing or PreprocessConfig()
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def set_data(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> None:
        """Train on these (e.g. the pseudo-labels of a new round); the random stream goes on where it was."""
        if not images or len(images) != len(labels):
            raise ValueError(f"need as many label maps as images, at least one ({len(images)} images, "
                             f"{len(labels)} label maps)")
        for i, (im, lab) in enumerate(zip(images, labels)):
            if im.shape[:2] != lab.shape:
                raise ValueError(f"image {i} is {im.shape[:2]} but its labels are {lab.shape}")
            if not (lab != IGNORE).any():
                raise ValueError(f"image {i} has no labelled pixel")
        self.images, self.labels = list(images), list(labels)

    def sample(self, batch: int) -> tuple[Tensor, Tensor]:
        if batch % self.world_size:
            raise ValueError(f"batch {batch} is not divisible by the {self.world_size} processes")
        if not self.images:
            raise RuntimeError("no training images: call set_data first")
        # per sample: image index, scale, flip, then (y, x) of each crop try and of the fallback pixel
        draws = torch.rand((batch, 3 + 2 * CROP_TRIES + 1), generator=self.generator, dtype=torch.float64)
        local = batch // self.world_size
        rows = draws[self.rank * local:(self.rank + 1) * local]
        pixels, targets = zip(*(self._one(r.tolist()) for r in rows))
        return (torch.from_numpy(np.stack(pixels)).to(self.device),
                torch.from_numpy(np.stack(targets)).long().to(self.device))

    def _one(self, u: list[float]) -> tuple[np.ndarray, np.ndarray]:
        i = min(int(u[0] * len(self.images)), len(self.images) - 1)
        lo, hi = self.scale_range
        image, labels = self.images[i], self.labels[i]
        h, w = labels.shape
        short = max(1, round(self.crop * (lo + (hi - lo) * u[1])))
        factor = short / min(h, w)
        size = (max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5)))
        image = resize_image(image, size)
        labels = labels[_nearest(h, size[0])][:, _nearest(w, size[1])]
        if u[2] < 0.5:
            image, labels = image[:, ::-1], labels[:, ::-1]
        y0, x0 = self._window(labels, u[3:])
        c = self.crop
        out_img = np.zeros((c, c, 3), dtype=np.uint8)
        out_lab = np.full((c, c), IGNORE, dtype=np.uint8)
        win_img, win_lab = image[y0:y0 + c, x0:x0 + c], labels[y0:y0 + c, x0:x0 + c]
        out_img[:win_img.shape[0], :win_img.shape[1]] = win_img
        out_lab[:win_lab.shape[0], :win_lab.shape[1]] = win_lab
        pre = self.preprocessing
        return normalize(out_img, pre.mean, pre.std), out_lab

    def _window(self, labels: np.ndarray, u: list[float]) -> tuple[int, int]:
        """The top-left corner of a crop that holds at least one labelled pixel."""
        h, w = labels.shape
        c = self.crop
        for t in range(CROP_TRIES):
            y0, x0 = int(u[2 * t] * (max(h - c, 0) + 1)), int(u[2 * t + 1] * (max(w - c, 0) + 1))
            if (labels[y0:y0 + c, x0:x0 + c] != IGNORE).any():
                return y0, x0
        ys, xs = np.nonzero(labels != IGNORE)
        k = min(int(u[2 * CROP_TRIES] * len(ys)), len(ys) - 1)
        y0 = min(max(int(ys[k]) - c // 2, 0), max(h - c, 0))
        x0 = min(max(int(xs[k]) - c // 2, 0), max(w - c, 0))
        return y0, x0

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def _nearest(n_in: int, n_out: int) -> np.ndarray:
    """Nearest-neighbour source indices (half-pixel centres) along one axis."""
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


class ImageForward(nn.Module):
    """One training forward: normalised image crops -> SegOFA logits (B, M, h, w); the frozen parts (ResNet,
    ``image_proj``, token and class tables) stay frozen as in adaptation."""

    def __init__(self, model: SegOFA) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: Tensor, target: Tensor) -> Tensor:
        return self.model(pixels)


def image_train_step(model: SegOFA, cfg: AdaptConfig, device: torch.device, amp_dtype: torch.dtype | None,
                     wrap: Callable[[nn.Module], nn.Module] | None = None) -> TrainStep:
    """The step that trains ``model``'s trainable parameters on (pixels, target) batches of :class:`ImageCrops`
    with adaptation's loss (ignoring label 255), optimizer and schedule."""
    forward = ImageForward(model)
    return TrainStep.from_config(
        wrap(forward) if wrap is not None else forward,
        lambda pixels, target: target,
        lambda logits, target: segmentation_loss(logits, target, cfg.loss, ignore_index=IGNORE),
        [p for p in model.parameters() if p.requires_grad], cfg, device, amp_dtype)


__all__ = ["IGNORE", "ImageCrops", "ImageForward", "image_train_step"]
