"""``open_source(spec)``: one entry point for every kind of frame source.

========================================  =========================================================
spec                                      source
========================================  =========================================================
``0``, ``"0"``                            :class:`CameraSource` by index
``"/dev/video0"``                         :class:`CameraSource` by device path
``"rtsp://…"`` ``"http(s)://…"`` …        :class:`StreamSource` (FFmpeg; bounded open and read time)
``"… ! … ! appsink"``                     :class:`GStreamerSource` (where OpenCV has GStreamer)
a video file (any suffix not an image's)  :class:`VideoFileSource`
a folder, a glob, an image file           :class:`ImageFolderSource` (natural order: 2 before 10)
any other iterable, an (N, H, W, C) array :class:`IterableSource` (numpy arrays, PIL images, paths)
========================================  =========================================================

Every source gives :class:`Frame` objects (``image`` (H, W, 3) uint8 RGB, ``index``, ``timestamp``).
"""

from __future__ import annotations

import glob
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sized
from pathlib import Path
from typing import Any

import numpy as np

from ifseg_deploy.runtime.images import IMAGE_EXTENSIONS, ImageLoadError, find_images, load_image
from ifseg_deploy.runtime.source_base import (
    DamagedVideoError,
    Frame,
    FrameSource,
    GStreamerUnavailableError,
    OpenCVMissingError,
    SourceError,
    SourceOpenError,
    StreamEndedError,
)
from ifseg_deploy.runtime.source_capture import (
    OPEN_TIMEOUT_S,
    READ_TIMEOUT_S,
    CameraSource,
    GStreamerSource,
    StreamSource,
    VideoFileSource,
    gstreamer_support,
)

__all__ = [
    "VIDEO_EXTENSIONS", "CameraSource", "DamagedVideoError", "Frame", "FrameSource", "GStreamerSource",
    "GStreamerUnavailableError", "ImageFolderSource", "IterableSource", "OpenCVMissingError", "SourceError",
    "SourceOpenError", "StreamEndedError", "StreamSource", "VideoFileSource", "gstreamer_support", "open_source",
]

#: Suffixes documented as video files; any existing file without an image suffix is tried as a video too.
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".m2ts", ".mts",
                    ".wmv", ".flv", ".3gp", ".ogv", ".mjpeg", ".mjpg", ".h264", ".h265", ".hevc")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")

_USAGE = ("a source is a video file, an image folder or glob, an image file, a camera index or /dev/videoN, "
          "an rtsp:// or http(s):// URL, or a GStreamer pipeline ending in appsink")


def natural_key(path: str | os.PathLike) -> tuple:
    """Sort key that orders the numbers in names by value: ``frame2`` before ``frame10``."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t.lower())
                 for part in Path(path).parts for t in re.split(r"(\d+)", part) if t)


class ImageFolderSource(FrameSource):
    """Image files in a fixed order (natural order of their names); one frame per readable file.

    A file that cannot be read is skipped with a warning naming it, and listed in ``skipped`` as
    ``(path, reason)``. ``frame_count`` is the number of files; ``timestamp`` is ``index / fps`` when ``fps``
    is given, else None.
    """

    def __init__(self, paths: Iterable[str | os.PathLike], description: str, *, fps: float | None = None) -> None:
        super().__init__(description)
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise SourceOpenError(f"{description}: no image files ({' '.join(IMAGE_EXTENSIONS)})")
        self._fps = _check_fps(fps)
        self.skipped: list[tuple[Path, str]] = []

    @property
    def frame_count(self) -> int:
        return len(self.paths)

    def _frames(self) -> Iterator[Frame]:
        for path in self.paths:
            if self._closed:
                return
            try:
                image = load_image(path)
            except ImageLoadError as e:
                self.skipped.append((path, str(e)))
                warnings.warn(f"skipped {e}", stacklevel=2)
                continue
            if self._size is None:
                self._size = image.shape[:2]
            t = self.frames_read / self._fps if self._fps else None
            yield Frame(image, self.frames_read, t, path)
            self.frames_read += 1
        if self.frames_read == 0:
            raise SourceError(f"{self.description}: none of the {len(self.paths)} image files could be read "
                              f"(first: {self.skipped[0][1]})")


class IterableSource(FrameSource):
    """Frames from any iterable of numpy arrays, PIL images or image paths (see ``images.load_image``).

    ``timestamp`` is ``index / fps`` when ``fps`` is given, else None. An item that is not an image raises
    :class:`SourceError` naming its index (the iterable is the caller's own data: nothing is skipped).
    """

    def __init__(self, frames: Iterable[Any], *, fps: float | None = None, description: str | None = None) -> None:
        super().__init__(description or f"iterable {type(frames).__name__}")
        self._items = frames
        self._fps = _check_fps(fps)
        self._count = len(frames) if isinstance(frames, Sized) else None

    @property
    def frame_count(self) -> int | None:
        return self._count

    def _frames(self) -> Iterator[Frame]:
        for item in self._items:
            if self._closed:
                return
            try:
                image = load_image(item)
            except ImageLoadError as e:
                raise SourceError(f"{self.description}: frame {self.frames_read}: {e}") from None
            if self._size is None:
                self._size = image.shape[:2]
            t = self.frames_read / self._fps if self._fps else None
            yield Frame(image, self.frames_read, t)
            self.frames_read += 1


def _check_fps(fps: float | None) -> float | None:
    if fps is None:
        return None
    if not (isinstance(fps, (int, float)) and not isinstance(fps, bool) and 0 < fps <= 1000):
        raise SourceError(f"fps must be a number above 0 (and at most 1000), got {fps!r}")
    return float(fps)


def _image_files(pattern: str) -> list[Path]:
    matches = [Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    images = sorted((p for p in matches if p.suffix.lower() in IMAGE_EXTENSIONS), key=natural_key)
    if not images:
        extra = (f"; it matched {len(matches)} other files (open videos one at a time)" if matches else "")
        raise SourceOpenError(f"{pattern}: the pattern matches no image files ({' '.join(IMAGE_EXTENSIONS)})"
                              f"{extra}")
    return images


def _no_option(name: str, value: object, what: str) -> None:
    if value is not None:
        raise SourceError(f"{name}= does not apply to {what} (it applies to cameras, image folders and iterables)")


def open_source(spec: Any, *, fps: float | None = None, size: tuple[int, int] | None = None,
                open_timeout: float = OPEN_TIMEOUT_S, read_timeout: float = READ_TIMEOUT_S) -> FrameSource:
    """Open ``spec`` as a frame source (see the module docstring for what each spec means).

    ``fps``: requested from a camera; the rate of image folders and iterables (for timestamps); refused for
    files, streams and pipelines, which have their own. ``size`` (H, W): requested from a camera only.
    ``open_timeout`` / ``read_timeout`` (seconds) bound network streams and pipelines.
    """
    if isinstance(spec, FrameSource):
        return spec
    if isinstance(spec, bool):
        raise SourceOpenError(f"{spec!r}: {_USAGE}")
    if isinstance(spec, (int, np.integer)):
        return CameraSource(int(spec), fps=fps, size=size)
    if isinstance(spec, (str, os.PathLike)):
        return _open_named(os.fspath(spec), fps=fps, size=size, open_timeout=open_timeout,
                           read_timeout=read_timeout)
    _no_option("size", size, "an iterable")
    if isinstance(spec, np.ndarray):
        if spec.ndim != 4:
            raise SourceOpenError(f"array of shape {spec.shape}: give frames as an (N, H, W, C) array or a list "
                                  "of images (wrap a single image in a list)")
        return IterableSource(spec, fps=fps, description=f"array {spec.shape} {spec.dtype}")
    if isinstance(spec, Iterable) and not isinstance(spec, (bytes, dict)):
        return IterableSource(spec, fps=fps)
    raise SourceOpenError(f"cannot read frames from a {type(spec).__name__}: {_USAGE}")


def _open_named(spec: str, *, fps: float | None, size: tuple[int, int] | None, open_timeout: float,
                read_timeout: float) -> FrameSource:
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else None
    if scheme is not None and " ! " not in spec:
        if scheme not in STREAM_SCHEMES:
            raise SourceOpenError(f"{spec}: unsupported URL scheme {scheme}:// (supported: "
                                  f"{', '.join(STREAM_SCHEMES)})")
        _no_option("fps", fps, "a network stream")
        _no_option("size", size, "a network stream")
        return StreamSource(spec, open_timeout=open_timeout, read_timeout=read_timeout)
    if " ! " in spec:
        _no_option("fps", fps, "a GStreamer pipeline (set framerate= in its caps)")
        _no_option("size", size, "a GStreamer pipeline (set width= and height= in its caps)")
        return GStreamerSource(spec, open_timeout=open_timeout, read_timeout=read_timeout)
    path = Path(spec)
    if spec.isdigit() and not path.exists():
        return CameraSource(int(spec), fps=fps, size=size)
    if spec.startswith("/dev/video"):
        return CameraSource(spec, fps=fps, size=size)
    if path.is_dir():
        _no_option("size", size, "an image folder")
        files = [p for p, _ in find_images([path])]
        return ImageFolderSource(sorted(files, key=natural_key), f"folder {path}", fps=fps)
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            _no_option("size", size, "an image")
            return ImageFolderSource([path], str(path), fps=fps)
        _no_option("fps", fps, "a video file (it has its own frame rate)")
        _no_option("size", size, "a video file")
        return VideoFileSource(path)
    if re.search(r"[*?[]", spec):
        _no_option("size", size, "images")
        return ImageFolderSource(_image_files(spec), f"pattern {spec}", fps=fps)
    raise SourceOpenError(f"{spec}: no such file or folder; {_USAGE}")
