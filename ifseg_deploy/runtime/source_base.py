"""What every frame source gives: :class:`Frame` objects from a :class:`FrameSource`, and the errors it raises.

A source is a single-pass iterator of frames and a context manager; ``close()`` releases the device or file.
Every error is a :class:`SourceError` (an :class:`~ifseg_deploy.errors.InputError`), whose message names the
source and says what to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ifseg_deploy.errors import BackendError, InputError


class SourceError(InputError):
    """A frame source that cannot be opened or read; the message names it and says what to do."""


class SourceOpenError(SourceError):
    """A source that cannot be opened: missing file, camera or URL that does not answer, unknown codec."""


class DamagedVideoError(SourceError):
    """A video file that is damaged or cut short; raised after the frames before the damage were given."""


class StreamEndedError(SourceError):
    """A live source (camera, network stream, pipeline) that stopped delivering frames."""


class GStreamerUnavailableError(SourceOpenError):
    """A GStreamer pipeline given to an OpenCV built without GStreamer."""


class OpenCVMissingError(BackendError):
    """OpenCV (the ``video`` extra) is not installed."""


def import_cv2():
    """The ``cv2`` module, or :class:`OpenCVMissingError` saying how to install it."""
    try:
        import cv2
    except ImportError:
        raise OpenCVMissingError(
            "video and camera input needs OpenCV: pip install 'ifseg-deploy[video]' (on a Jetson, use JetPack's "
            "OpenCV instead: sudo apt install python3-opencv)") from None
    return cv2


@dataclass
class Frame:
    """One frame: ``image`` (H, W, 3) uint8 RGB; ``index`` counts the frames this source gave, from 0.

    ``timestamp`` is in seconds: the frame's presentation time for video files, the monotonic time since the
    source was opened for live sources, ``index / fps`` for images and iterables given an ``fps``, else None.
    ``path`` is the image file a frame came from (image folders only).
    """

    image: np.ndarray
    index: int
    timestamp: float | None
    path: Path | None = field(default=None)


class FrameSource:
    """Base of all sources: iterate for :class:`Frame` objects (once), then ``close()`` (or use ``with``).

    Properties (None where unknown): ``live`` (a camera or stream that runs until stopped), ``fps``,
    ``size`` as (H, W), ``frame_count`` (files, folders and sized iterables), ``description`` (for messages).
    """

    live: bool = False

    def __init__(self, description: str) -> None:
        self.description = description
        self.frames_read = 0
        self._closed = False
        self._fps: float | None = None  # what a subclass knows of these, it sets here
        self._size: tuple[int, int] | None = None
        self._started = False

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def size(self) -> tuple[int, int] | None:
        """(H, W): a capture's, or the first frame's once it was read."""
        return self._size

    @property
    def frame_count(self) -> int | None:
        return None

    def _frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            raise SourceError(f"{self.description}: the source is closed")
        if self._started:
            raise SourceError(f"{self.description}: a source can be iterated once; open it again to re-read it")
        self._started = True
        return self._frames()

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"
