"""What self-training reads: unlabeled images (a folder, or frames of a video) and optional labelled images in
the ``folder`` dataset layout, checked against the model's classes before anything is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..evaluation.datasets import IGNORE, DatasetError, folder, read_class_file
from ..runtime.images import ImageLoadError, find_images, load_image

#: File suffixes read as videos (through OpenCV) by ``--images``.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass
class ImageSet:
    """Readable images (name, (H, W, 3) uint8 RGB) and the files that could not be read (name, why)."""

    items: list[tuple[str, np.ndarray]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.items]

    @property
    def arrays(self) -> list[np.ndarray]:
        return [a for _, a in self.items]


def read_images(source: str | Path, every: int = 1) -> ImageSet:
    """A folder of images (sorted; unreadable files skipped and listed), or every ``every``-th frame of a video."""
    path = Path(source)
    if every < 1:
        raise InputError(f"--every must be >= 1 (got {every})")
    if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
        return _read_video(path, every)
    if not path.is_dir():
        raise InputError(f"{path} is neither a folder of images nor a video file ({', '.join(VIDEO_EXTENSIONS)})")
    out = ImageSet()
    for file, _ in find_images([path]):
        try:
            out.items.append((file.name, load_image(file)))
        except ImageLoadError as e:
            out.skipped.append((file.name, str(e)))
    return out


def _read_video(path: Path, every: int) -> ImageSet:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputError(f"{path}: OpenCV cannot open this video")
    out = ImageSet()
    index = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if index % every == 0:
                out.items.append((f"{path.name}#{index}", np.ascontiguousarray(frame[:, :, ::-1])))  # BGR -> RGB
            index += 1
    finally:
        cap.release()
    if index == 0:
        raise InputError(f"{path}: no frame could be decoded")
    return out


@dataclass
class LabelledSet:
    """Labelled images: (name, RGB, (H, W) uint8 class ids of the model with 255 = ignore)."""

    items: list[tuple[str, np.ndarray, np.ndarray]]


def read_masks(root: str | Path, categories: list[str]) -> LabelledSet:
    """The ``folder`` dataset at ``root`` with its ids mapped to the model's ``categories`` (by name, so another
    order of classes.txt is fine); refused when the names differ or a mask holds an id beyond classes.txt."""
    r = Path(root)
    if not (r / "classes.txt").is_file():
        raise InputError(f"--masks {r}: no classes.txt (expected images/, masks/ and classes.txt, the `folder` "
                         "layout)")
    names = read_class_file(r / "classes.txt")
    only_file = [n for n in names if n not in categories]
    only_model = [n for n in categories if n not in names]
    if only_file or only_model or len(set(names)) != len(names):
        raise InputError(f"{r / 'classes.txt'} does not match the model's categories: only in classes.txt "
                         f"{only_file}, only in the model {only_model}"
                         + (" (classes.txt repeats a name)" if len(set(names)) != len(names) else ""))
    to_model = np.full(256, IGNORE, dtype=np.uint8)
    to_model[:len(names)] = [categories.index(n) for n in names]
    dataset = folder(r)
    items = []
    for i in range(len(dataset)):
        try:
            image, ids = dataset.load(i)
        except DatasetError as e:
            raise InputError(f"{e} (the model has {len(categories)} classes: ids 0..{len(categories) - 1}, "
                             f"{IGNORE} = ignore)") from None
        items.append((dataset.item_name(i), image, to_model[ids]))
    return LabelledSet(items)
