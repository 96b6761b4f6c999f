"""Reading images into (H, W, 3) uint8 RGB arrays: files, PIL images and numpy arrays.

Conversions (each chosen to match what OpenCV's ``imread(IMREAD_COLOR)`` gives the official mmseg pipeline, or
the obvious meaning where OpenCV has none):

* EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), as ``cv2.imread`` does; ``exif=False`` keeps
  the stored pixel order (dataset evaluation does that: annotation masks are in the stored frame).
* gray (L, 1-bit) -> the value repeated in R, G and B;
* RGBA / LA / palette with transparency -> the colour channels, alpha dropped (no compositing);
* 16-bit (PIL modes I;16*, I) -> the high byte (value >> 8); 32-bit float (mode F) -> clipped to [0, 255];
* CMYK (and YCbCr, LAB, HSV) -> PIL's conversion to RGB (CMYK without ICC colour management);
* multi-frame files (GIF, TIFF) -> the first frame.

A file PIL cannot open or decode completely (truncated, not an image, over PIL's decompression-bomb limit of
``PIL.Image.MAX_IMAGE_PIXELS`` * 2 pixels) raises :class:`ImageLoadError` naming the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError

#: File name suffixes that ``ifseg-deploy segment DIR`` treats as images (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm")


class ImageLoadError(InputError):
    """An input that cannot be turned into an RGB image; the message names it and says why."""


def _describe(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, np.ndarray):
        return f"array {src.shape} {src.dtype}"
    if isinstance(src, Image.Image):
        return f"PIL image {src.mode} {src.size[0]}x{src.size[1]}"
    return type(src).__name__


def pil_to_rgb(img: Image.Image, exif: bool = True) -> np.ndarray:
    """A PIL image -> (H, W, 3) uint8 RGB, with the conversions of the module docstring."""
    if exif:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 - a corrupt EXIF block: keep the stored orientation
            pass
    mode = img.mode
    if mode == "RGB":
        arr = np.asarray(img)
    elif mode.startswith("I;16") or mode == "I":
        a = np.asarray(img)
        if a.ndim == 3:  # some PIL versions give 16-bit RGB as (H, W, 3) of I;16
            a = a[..., :3]
        a = np.clip(a.astype(np.int64), 0, 65535) >> 8
        arr = a.astype(np.uint8)
    elif mode == "F":
        arr = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float32)), 0, 255).round().astype(np.uint8)
    elif mode in ("L", "1"):
        arr = np.asarray(img.convert("L"))
    elif mode in ("LA", "La"):
        arr = np.asarray(img)[..., 0]
    elif mode in ("RGBA", "RGBa", "RGBX"):
        arr = np.asarray(img)[..., :3]
    elif mode in ("P", "PA"):
        arr = np.asarray(img.convert("RGBA"))[..., :3]
    else:  # CMYK, YCbCr, LAB, HSV, ...
        arr = np.asarray(img.convert("RGB"))
    return _as_rgb(arr)


def _as_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    # contiguous and writable (PIL's buffers are read-only), copied only when needed
    return np.require(arr.astype(np.uint8, copy=False), requirements=["C", "W"])


def array_to_rgb(arr: np.ndarray) -> np.ndarray:
    """A numpy image -> (H, W, 3) uint8 RGB.

    Accepted: (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA; dtype uint8, uint16 (-> high byte) or bool
    (-> 0 / 255). Float arrays are refused (their range is ambiguous: convert to uint8 first), as are
    channel-first (3, H, W) arrays.
    """
    if not isinstance(arr, np.ndarray):
        raise ImageLoadError(f"expected a numpy array, got {type(arr).__name__}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        hint = " (channel-first? pass (H, W, C))" if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) else ""
        raise ImageLoadError(f"array of shape {arr.shape} is not an image: expected (H, W), (H, W, 1), "
                             f"(H, W, 3) RGB or (H, W, 4) RGBA{hint}")
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    else:
        raise ImageLoadError(f"array of dtype {arr.dtype} is not supported: give uint8 (0..255), uint16 or bool "
                             "pixels (floats are ambiguous: scale them to uint8 yourself)")
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageLoadError(f"empty image (shape {arr.shape})")
    return _as_rgb(arr)


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file with PIL (first frame); :class:`ImageLoadError` if that fails."""
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a directory")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()  # decode now: a truncated file fails here, not later
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"{path}: too large ({e}); raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
                             ) from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # PIL raises OSError("image file is truncated ...") / SyntaxError for broken headers
        raise ImageLoadError(f"{path}: cannot decode ({e})") from None
    return img


def load_image(src: Any, exif: bool = True) -> np.ndarray:
    """A path, PIL image or numpy array -> (H, W, 3) uint8 RGB (see the module docstring)."""
    if isinstance(src, (str, os.PathLike)):
        with open_image(src) as img:
            try:
                arr = pil_to_rgb(img, exif=exif)
            except (OSError, ValueError) as e:
                raise ImageLoadError(f"{src}: cannot convert {img.mode} pixels to RGB ({e})") from None
    elif isinstance(src, Image.Image):
        try:
            arr = pil_to_rgb(src, exif=exif)
        except (OSError, ValueError) as e:
            raise ImageLoadError(f"{_describe(src)}: cannot convert to RGB ({e})") from None
    elif isinstance(src, np.ndarray):
        return array_to_rgb(src)
    else:
        raise ImageLoadError(f"cannot read an image from {_describe(src)}: give a path, a PIL image or an "
                             "(H, W[, C]) uint8 numpy array")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageLoadError(f"{_describe(src)}: empty image")
    return arr


def find_images(inputs: Iterable[str | os.PathLike], recursive: bool = False
                ) -> list[tuple[Path, Path | None]]:
    """Expand files and folders into ``(path, root)`` pairs in a stable order.

    A folder contributes its files with an image suffix (:data:`IMAGE_EXTENSIONS`; sorted; sub-folders too when
    ``recursive``), each with ``root`` = the folder. A file is kept as given (``root`` None) whatever its
    suffix, so that a named file that is not an image is reported, not silently dropped.
    """
    out: list[tuple[Path, Path | None]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            pattern = p.rglob("*") if recursive else p.iterdir()
            files = sorted(f for f in pattern if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            out.extend((f, p) for f in files)
        else:
            out.append((p, None))
    return out
