"""Readers of labelled segmentation sets in their official layouts, returning images and class-id masks.

Every reader maps its masks to ids ``0..K-1`` with ``ignore_index`` (255) for pixels that do not count:

* **ADE20K** (``ADEChallengeData2016``): ``images/validation/*.jpg`` with ``annotations/validation/*.png``;
  raw value 0 ("other") -> ignore, k -> k - 1 (150 classes). ``root`` is that folder or its parent.
* **COCO-Stuff-164k** val2017: ``images/val2017/*.jpg`` with the stuffthingmaps PNGs in
  ``annotations/val2017`` (where the official instructions and mmseg unzip ``stuffthingmaps_trainval2017.zip``;
  ``stuffthingmaps_trainval2017/val2017`` and ``stuffthingmaps/val2017`` are also looked in). Raw values are the
  0-based COCO ids 0..181, 255 = unlabeled; the 11 unused ids and 255 -> ignore, the other 171 -> 0..170 in id
  order. mmseg's converted ``*_labelTrainIds.png`` (already 0..170 / 255) are read when the raw PNG is absent.
  ``coco-stuff-15`` keeps the 15 unseen classes of the paper and ignores every other pixel.
* **folder**: ``images/`` (any image type), ``masks/`` (PNG, same file stem; pixel = class id, 255 = ignore)
  and ``classes.txt`` (one name per line in id order; blank lines and ``#`` lines skipped; at most 255).

Images are read in their stored pixel order (EXIF orientation ignored, because the masks are drawn on the
stored pixels); only when the stored size does not match the mask but the EXIF-rotated one does, the rotated
image is used. A mask value a reader does not expect (e.g. 151 in ADE20K) is an error naming the file: it
usually means masks that were already converted, which would otherwise shift every class silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..runtime.images import IMAGE_EXTENSIONS, load_image, open_image
from .classnames import (
    ADE20K_150,
    ALIASES,
    COCO_STUFF_15_UNSEEN,
    COCO_STUFF_171,
    COCO_UNUSED_RAW_IDS,
)

IGNORE = 255


class DatasetError(InputError):
    """A dataset folder that does not have the expected layout or contents."""


@dataclass
class SegDataset:
    """A list of (image, mask) files with the mapping of raw mask values to class ids.

    ``luts[suffix]`` maps raw mask values to ids (``IGNORE`` for ignored pixels, -1 for values that must not
    occur); ``suffix`` is the mask file name ending the table applies to (the longest match wins)."""

    name: str
    classes: list[str]
    samples: list[tuple[str, Path, Path]]  # (name, image, mask)
    luts: dict[str, np.ndarray]
    root: Path | None = None
    ignore_index: int = IGNORE
    #: other accepted spellings of class names: {official name: [aliases]}
    aliases: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def item_name(self, i: int) -> str:
        return self.samples[i][0]

    def _lut(self, mask_path: Path) -> np.ndarray:
        for suffix in sorted(self.luts, key=len, reverse=True):
            if mask_path.name.endswith(suffix):
                return self.luts[suffix]
        raise DatasetError(f"{mask_path}: no label mapping for this file name")

    def load_mask(self, path: Path) -> np.ndarray:
        """The mask file -> (H, W) int64 ids with ``ignore_index``."""
        try:
            with open_image(path) as img:
                if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                    raise DatasetError(f"{path}: mask has mode {img.mode}; expected a single-channel PNG whose "
                                       "pixel values are class ids")
                raw = np.asarray(img).astype(np.int64)
        except DatasetError:
            raise
        except ValueError as e:
            raise DatasetError(str(e)) from None
        lut = self._lut(path)
        if raw.size and (raw.min() < 0 or raw.max() >= len(lut)):
            raise DatasetError(f"{path}: mask value {int(raw.max())} is out of range for {self.name}")
        ids = lut[raw]
        if (ids < 0).any():
            bad = sorted(set(np.unique(raw[ids < 0]).tolist()))[:8]
            raise DatasetError(f"{path}: unexpected mask values {bad} for {self.name} "
                               f"({len(self.classes)} classes); are these masks already converted?")
        return ids

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i`` -> ((H, W, 3) uint8 RGB image, (H, W) int64 ids)."""
        name, image_path, mask_path = self.samples[i]
        mask = self.load_mask(mask_path)
        image = load_image(image_path, exif=False)
        if image.shape[:2] != mask.shape:
            rotated = load_image(image_path, exif=True)
            if rotated.shape[:2] != mask.shape:
                raise DatasetError(f"{image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
                                   f"{mask.shape[1]}x{mask.shape[0]}")
            image = rotated
        return image, mask


def _lut(size: int, mapping: dict[int, int], default: int = -1) -> np.ndarray:
    lut = np.full(size, default, dtype=np.int64)
    for raw, new in mapping.items():
        lut[raw] = new
    return lut


def _pair(images_dir: Path, masks_dir: Path, mask_names: tuple[str, ...], what: str
          ) -> list[tuple[str, Path, Path]]:
    """Match every image in ``images_dir`` to the first existing ``masks_dir / (stem + suffix)``."""
    images = sorted(p for p in images_dir.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not images:
        raise DatasetError(f"no images in {images_dir}")
    samples, missing = [], []
    for img in images:
        for suffix in mask_names:
            m = masks_dir / f"{img.stem}{suffix}"
            if m.is_file():
                samples.append((img.stem, img, m))
                break
        else:
            missing.append(img.name)
    if missing:
        raise DatasetError(f"{len(missing)} of {len(images)} {what} images have no mask in {masks_dir} "
                           f"(e.g. {', '.join(missing[:3])})")
    return samples


def _first_dir(candidates: list[Path], what: str) -> Path:
    for c in candidates:
        if c.is_dir():
            return c
    raise DatasetError(f"{what} not found; looked for: {', '.join(str(c) for c in candidates)}")


def _root(root: str | Path | None, name: str) -> Path:
    if root is None:
        raise DatasetError(f"the {name} dataset needs --root (the folder holding it)")
    r = Path(root)
    if not r.is_dir():
        raise DatasetError(f"{r} is not a folder")
    return r


# -- ADE20K ----------------------------------------------------------------------------------------------------
def ade20k(root: str | Path | None, split: str = "validation") -> SegDataset:
    r = _root(root, "ade20k")
    base = r if (r / "images" / split).is_dir() else r / "ADEChallengeData2016"
    images = _first_dir([base / "images" / split], f"ADE20K images ({split})")
    masks = _first_dir([base / "annotations" / split], f"ADE20K annotations ({split})")
    lut = _lut(256, {0: IGNORE, **{k: k - 1 for k in range(1, 151)}})
    return SegDataset("ade20k", list(ADE20K_150), _pair(images, masks, (".png",), "ADE20K"), {".png": lut}, base)


# -- COCO-Stuff ------------------------------------------------------------------------------------------------
def coco_raw_to_train_ids() -> np.ndarray:
    """256-entry table: raw stuffthingmaps value -> 0..170, unused ids and 255 (and 182..254) -> IGNORE."""
    used = [i for i in range(182) if i not in COCO_UNUSED_RAW_IDS]
    return _lut(256, dict(zip(used, range(171))), default=IGNORE)


def _coco(root: str | Path | None, name: str, split: str) -> tuple[Path, list[tuple[str, Path, Path]]]:
    r = _root(root, name)
    images = _first_dir([r / "images" / split, r / split], f"COCO images ({split})")
    masks = _first_dir([r / "annotations" / split, r / "stuffthingmaps_trainval2017" / split,
                        r / "stuffthingmaps" / split, r / "annotations" / "stuffthingmaps_trainval2017" / split],
                       f"COCO-Stuff stuffthingmaps ({split})")
    return r, _pair(images, masks, (".png", "_labelTrainIds.png"), "COCO")


def _coco_luts(to_class: np.ndarray) -> dict[str, np.ndarray]:
    """Tables for raw PNGs and for mmseg's converted ones, followed by ``to_class`` (171 train id -> id)."""
    raw = coco_raw_to_train_ids()
    converted = _lut(256, {**{k: k for k in range(171)}, IGNORE: IGNORE})
    out = {}
    for suffix, lut in ((".png", raw), ("_labelTrainIds.png", converted)):
        mapped = np.where(lut >= 0, np.where(lut == IGNORE, IGNORE, to_class[np.clip(lut, 0, 170)]), -1)
        out[suffix] = mapped
    return out


def coco_stuff_171(root: str | Path | None, split: str = "val2017") -> SegDataset:
    r, samples = _coco(root, "coco-stuff-171", split)
    return SegDataset("coco-stuff-171", list(COCO_STUFF_171), samples, _coco_luts(np.arange(171)), r,
                      aliases=ALIASES["coco"])


def coco_stuff_15(root: str | Path | None, split: str = "val2017") -> SegDataset:
    r, samples = _coco(root, "coco-stuff-15", split)
    to15 = np.full(171, IGNORE, dtype=np.int64)
    for j, n in enumerate(COCO_STUFF_15_UNSEEN):
        to15[COCO_STUFF_171.index(n)] = j
    aliases = {k: v for k, v in ALIASES["coco"].items() if k in COCO_STUFF_15_UNSEEN}
    return SegDataset("coco-stuff-15", list(COCO_STUFF_15_UNSEEN), samples, _coco_luts(to15), r, aliases=aliases)


# -- plain folder ----------------------------------------------------------------------------------------------
def read_class_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    names = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not names:
        raise DatasetError(f"{path} lists no classes")
    if len(names) > 255:
        raise DatasetError(f"{path} lists {len(names)} classes; the folder layout supports at most 255 (255 is "
                           "the ignore value)")
    return names


def folder(root: str | Path | None) -> SegDataset:
    r = _root(root, "folder")
    classes = read_class_file(r / "classes.txt") if (r / "classes.txt").is_file() else None
    if classes is None:
        raise DatasetError(f"{r} has no classes.txt (expected images/, masks/ and classes.txt)")
    images = _first_dir([r / "images"], "images/")
    masks = _first_dir([r / "masks"], "masks/")
    lut = _lut(65536, {**{k: k for k in range(len(classes))}, IGNORE: IGNORE})
    return SegDataset("folder", classes, _pair(images, masks, (".png",), "folder"), {".png": lut}, r)
