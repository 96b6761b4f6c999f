"""Frame sources read through OpenCV's ``VideoCapture``: video files, cameras, network streams, GStreamer.

Files and network streams go through OpenCV's FFmpeg backend (bundled with ``opencv-python-headless``),
cameras through the platform's default backend (V4L2 on Linux), pipeline strings through GStreamer where
this OpenCV was built with it (JetPack's is; the PyPI wheels are not).

Bounded time: a network source that does not answer fails after ``open_timeout`` seconds and a stream that
stops delivering after ``read_timeout`` seconds (FFmpeg's own default would be 30 s each). Live sources read
their first frame while opening, so a camera or URL that opens but sends nothing is an open error.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ifseg_deploy.runtime.source_base import (
    DamagedVideoError,
    Frame,
    FrameSource,
    GStreamerUnavailableError,
    SourceOpenError,
    StreamEndedError,
    import_cv2,
)

OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 10.0
# A header's frame count is exact for MP4 and AVI but an estimate (duration x fps) for some containers (MKV):
# fewer frames than announced by more than this much means the file is damaged or cut short.
COUNT_TOLERANCE = 0.02


def bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    """An OpenCV frame (BGR, BGRA or gray) -> (H, W, 3) uint8 RGB."""
    cv2 = import_cv2()
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (messages name the source, never its credentials)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def gstreamer_support() -> tuple[bool, str]:
    """Whether this OpenCV can open GStreamer pipelines, and the build-information line that says so."""
    cv2 = import_cv2()
    m = re.search(r"GStreamer:\s*([^\n]*)", cv2.getBuildInformation())
    line = m.group(1).strip() if m else "not listed"
    return line.upper().startswith("YES"), f"GStreamer: {line}"


def _timeouts(cv2: Any, open_timeout: float, read_timeout: float) -> list[int]:
    return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout * 1000)]


def mp4_lacks_index(path: Path) -> bool:
    """True for an MP4/MOV file whose top-level boxes have no ``moov`` (its index): a recording cut off
    before its writer finished, since MP4 writers put the index at the end unless told otherwise."""
    seen: list[bytes] = []
    try:
        with open(path, "rb") as f:
            end = os.fstat(f.fileno()).st_size
            pos = 0
            while pos + 8 <= end and len(seen) < 1000:
                f.seek(pos)
                head = f.read(16)
                size, kind = int.from_bytes(head[:4], "big"), head[4:8]
                if size == 1 and len(head) == 16:
                    size = int.from_bytes(head[8:16], "big")
                elif size == 0:
                    size = end - pos
                if size < 8:
                    break
                seen.append(kind)
                pos += size
    except OSError:
        return False
    return bool(seen) and seen[0] == b"ftyp" and b"moov" not in seen


class CaptureSource(FrameSource):
    """Common part of the OpenCV sources: properties read from the capture, frames converted to RGB."""

    def __init__(self, cap: Any, description: str) -> None:
        super().__init__(description)
        self._cap = cap
        cv2 = import_cv2()
        fps = cap.get(cv2.CAP_PROP_FPS)
        self._fps = float(fps) if 0 < fps <= 1000 else None
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self._size = (h, w) if h > 0 and w > 0 else None
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self._count = int(round(count)) if 0 < count < 2**62 else None

    @property
    def frame_count(self) -> int | None:
        return None if self.live else self._count

    def _read(self) -> np.ndarray | None:
        ok, image = self._cap.read()
        return bgr_to_rgb(image) if ok and image is not None and image.size else None

    def close(self) -> None:
        if not self._closed:
            self._cap.release()
        super().close()

    def _file_frames(self) -> Iterator[Frame]:
        """Frames of a finite video, timed by the container; a short read against the header is damage.

        Each frame is given once the next one was read: at damage, the frame read last (the one the cut went
        through, which FFmpeg decodes with gaps papered over) is left out."""
        cv2 = import_cv2()
        pending: Frame | None = None
        decoded = 0
        while not self._closed:
            image = self._read()
            if image is None:
                break
            frame = Frame(image, decoded, self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
            decoded += 1
            if pending is not None:
                yield pending
                self.frames_read += 1
            pending = frame
        if self._closed:
            return
        count = self._count
        if count is not None and decoded < count - max(1, round(COUNT_TOLERANCE * count)):
            n = self.frames_read
            raise DamagedVideoError(
                f"{self.description}: damaged or cut short after frame {n}: it stops decoding there, but its "
                f"header announces {count} frames. The {n} frames before the damage were read (the frame at the "
                "cut was left out); re-copy or re-record the file to get the rest")
        if pending is not None:
            yield pending
            self.frames_read += 1
        n = self.frames_read
        if n == 0:
            raise DamagedVideoError(
                f"{self.description}: no frame could be decoded (a damaged file, or a codec this OpenCV "
                f"{cv2.__version__} cannot decode)")


class VideoFileSource(CaptureSource):
    """A video file (``.mp4 .avi .mkv .mov`` …) read with OpenCV's FFmpeg backend.

    ``frame_count`` is the header's count; timestamps are the frames' presentation times. A file that ends
    before the frames its header announces raises :class:`DamagedVideoError` after the frames it could read.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        cv2 = import_cv2()
        path = Path(path)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "no such file"
            raise SourceOpenError(f"{path}: {what}")
        self.path = path
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            if mp4_lacks_index(path):
                raise DamagedVideoError(
                    f"{path}: cut short: this MP4/MOV file has no index (no 'moov' box). MP4 writers put the "
                    "index at the end, so a recording interrupted before it finished cannot be read at all; "
                    "re-record it, or try a repair tool such as untrunc with a good file from the same camera")
            raise SourceOpenError(
                f"{path}: cannot be read as a video: not a video, damaged, or a codec this OpenCV "
                f"{cv2.__version__} (FFmpeg backend) cannot decode. Check it with another player, or convert "
                "it (e.g. to H.264 or MPEG-4 in .mp4)")
        super().__init__(cap, str(path))

    def _frames(self) -> Iterator[Frame]:
        return self._file_frames()


class _LiveSource(CaptureSource):
    """A source that runs until stopped; timestamps on the monotonic clock since it was opened."""

    live = True

    def _start(self, what_to_do: str) -> None:
        self._t0 = time.monotonic()
        first = self._read()
        if first is None:
            self._cap.release()
            raise SourceOpenError(f"{self.description}: opened, but delivered no frame; {what_to_do}")
        self._first: np.ndarray | None = first
        self._first_t = time.monotonic() - self._t0
        self._size = first.shape[:2]

    def _live_frames(self, why: str) -> Iterator[Frame]:
        if self._first is not None:
            first, t, self._first = self._first, self._first_t, None
            yield Frame(first, 0, t)
            self.frames_read = 1
        while not self._closed:
            image = self._read()
            if image is None:
                if self._closed:
                    return
                raise StreamEndedError(f"{self.description}: stopped delivering frames after {self.frames_read} "
                                       f"frames ({why}); the frames before were read")
            yield Frame(image, self.frames_read, time.monotonic() - self._t0)
            self.frames_read += 1


class CameraSource(_LiveSource):
    """A camera by index (``0``) or device path (``/dev/video0``); ``fps`` and ``size`` (H, W) are requests
    the camera may round to what it supports (the properties report what it delivers)."""

    def __init__(self, device: int | str, *, fps: float | None = None, size: tuple[int, int] | None = None) -> None:
        cv2 = import_cv2()
        name = f"camera {device}" if isinstance(device, int) else str(device)
        if isinstance(device, int) and device < 0:
            raise SourceOpenError(f"{name}: a camera index is 0 or more")
        if isinstance(device, str) and not os.path.exists(device):
            raise SourceOpenError(f"{name}: no such camera device (connected cameras: ls /dev/video*)")
        cap = cv2.VideoCapture(device, cv2.CAP_ANY)
        if not cap.isOpened():
            cap.release()
            raise SourceOpenError(f"{name}: cannot be opened: no such camera, or it is in use or not permitted "
                                  "(connected cameras: ls /dev/video*; a CSI camera on a Jetson needs a "
                                  "GStreamer pipeline)")
        if size is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(size[1]))
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(size[0]))
        if fps is not None:
            cap.set(cv2.CAP_PROP_FPS, float(fps))
        super().__init__(cap, name)
        self._start("check that no other program uses it")

    def _frames(self) -> Iterator[Frame]:
        return self._live_frames("unplugged, or the driver stopped")


class StreamSource(_LiveSource):
    """A network stream (``rtsp://``, ``http://`` …) through FFmpeg, with bounded open and read times.

    A URL that serves a finite video (an HTTP file with a frame count) behaves like a video file: not live,
    timed by the container, damage detected. Otherwise it is live and ends with :class:`StreamEndedError`.
    """

    def __init__(self, url: str, *, open_timeout: float = OPEN_TIMEOUT_S, read_timeout: float = READ_TIMEOUT_S
                 ) -> None:
        cv2 = import_cv2()
        name = redact_url(url)
        t0 = time.monotonic()
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, _timeouts(cv2, open_timeout, read_timeout))
        if not cap.isOpened():
            cap.release()
            waited = time.monotonic() - t0
            why = (f"no answer within {open_timeout:g} s" if waited >= open_timeout * 0.9
                   else "refused, not found, or not a video stream")
            raise SourceOpenError(f"{name}: cannot be opened ({why}); check the address, that the sender is "
                                  "running, and the network")
        super().__init__(cap, name)
        self._read_timeout = read_timeout
        self.live = self._count is None
        if self.live:
            self._start(f"no frame within {read_timeout:g} s")

    def _frames(self) -> Iterator[Frame]:
        if not self.live:
            return self._file_frames()
        return self._live_frames(f"no frame within {self._read_timeout:g} s, or the sender closed the stream")


class GStreamerSource(_LiveSource):
    """A GStreamer pipeline string ending in ``appsink``, e.g. the Jetson CSI camera::

        nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 !
        nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1

    Refused with :class:`GStreamerUnavailableError` where this OpenCV was built without GStreamer.
    """

    def __init__(self, pipeline: str, *, open_timeout: float = OPEN_TIMEOUT_S, read_timeout: float = READ_TIMEOUT_S
                 ) -> None:
        cv2 = import_cv2()
        short = pipeline if len(pipeline) <= 80 else pipeline[:77] + "..."
        name = f"GStreamer pipeline '{short}'"
        if "appsink" not in pipeline:
            raise SourceOpenError(f"{name}: a capture pipeline must end in appsink "
                                  "(e.g. '... ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1')")
        available, line = gstreamer_support()
        if not available:
            raise GStreamerUnavailableError(
                f"{name}: this OpenCV {cv2.__version__} was built without GStreamer ('{line}' in "
                "cv2.getBuildInformation()), so it cannot open pipelines. On a Jetson, use JetPack's OpenCV "
                "(sudo apt install python3-opencv) and uninstall the opencv-python(-headless) wheel that hides "
                "it; elsewhere, open a USB camera by index or /dev/videoN")
        cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER, _timeouts(cv2, open_timeout, read_timeout))
        if not cap.isOpened():  # a GStreamer backend without the timeout parameters refuses to open with them
            cap.release()
            cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            cap.release()
            raise SourceOpenError(f"{name}: GStreamer could not start it; run it with gst-launch-1.0 (appsink "
                                  "replaced by fakesink) to see why")
        super().__init__(cap, name)
        self._start("check the camera and the caps of the pipeline")

    def _frames(self) -> Iterator[Frame]:
        return self._live_frames("the pipeline stopped")
