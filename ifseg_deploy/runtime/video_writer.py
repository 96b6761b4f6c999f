"""The overlay video: written frame by frame so that what was written so far is always a playable file.

MP4 keeps its index (the ``moov`` box) at the end, so an MP4 whose writer is killed cannot be read at all,
and OpenCV's FFmpeg writer cannot be told to write fragmented MP4. So the frames go first into
``NAME.partial.avi``: MPEG-4 Part 2 video (fourcc ``mp4v``) in AVI, a container that needs nothing at its
end: after a kill it plays up to the last data FFmpeg had handed to the system (FFmpeg buffers up to 256 KiB,
a few frames of 1280x720), and its last frame may be cut. On a clean close (also after Ctrl-C or an error
in the ``with`` block) the packets are copied without re-encoding into the final file under a temporary name,
which is then renamed over ``path``; only then is the partial file removed. :func:`recover_partial` turns a
partial file left by a kill into the final file the same way.

OpenCV older than 4.9 (JetPack 5 and 6 ship 4.5 and 4.8) cannot copy packets (no ``VIDEOWRITER_PROP_RAW_VIDEO``):
there the writer encodes every frame twice, into the partial file and into the final one (``strategy="dual"``),
and :func:`recover_partial` re-encodes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ifseg_deploy.atomic import fsync_dir
from ifseg_deploy.errors import BackendError, InputError
from ifseg_deploy.runtime.source_base import import_cv2

PARTIAL_SUFFIX = ".partial.avi"
FINAL_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi")
FOURCC = "mp4v"  # MPEG-4 Part 2: the one widely playable encoder in OpenCV's PyPI wheels (no H.264 encoder)


class VideoOutputError(InputError):
    """A video output that cannot be written as asked: its name, an interrupted recording in the way, a frame
    of another size."""


class VideoEncoderError(BackendError):
    """OpenCV cannot encode or finish the video here."""


def partial_path(path: str | os.PathLike) -> Path:
    """Where :class:`VideoWriter` records before the final file exists: ``clip_overlay.mp4`` ->
    ``clip_overlay.partial.avi``."""
    path = Path(path)
    return path.with_name(path.stem + PARTIAL_SUFFIX)


def raw_copy_supported() -> bool:
    """Whether this OpenCV can write encoded packets as they are (4.9 and later).

    Its fix for B-frame timestamps (4.11) does not matter here: mp4v as OpenCV writes it has no B-frames."""
    return hasattr(import_cv2(), "VIDEOWRITER_PROP_RAW_VIDEO")


def _open_writer(path: Path, fps: float, size: tuple[int, int], fourcc: str, raw: bool = False) -> Any:
    cv2 = import_cv2()
    params = [cv2.VIDEOWRITER_PROP_RAW_VIDEO, 1] if raw else []
    w = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), float(fps),
                        (size[1], size[0]), params)
    if not w.isOpened():
        w.release()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise VideoEncoderError(f"{path}: OpenCV {cv2.__version__} cannot write {fourcc} video in "
                                f"{path.suffix} here (FFmpeg backend)")
    return w


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _temp_beside(path: Path) -> Path:
    # the suffix stays last: OpenCV picks the container from it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _remove_stale_temps(path: Path) -> None:
    """Temporary files of ``path`` left by a killed writer (only ever called while its partial file exists,
    so no writer of ``path`` is running)."""
    for tmp in path.parent.glob(f".{glob.escape(path.stem)}.tmp-*{glob.escape(path.suffix)}"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def _copy_video(src: Path, dst: Path, *, raw: bool, drop_last: bool = False) -> int:
    """Copy the video ``src`` into ``dst`` (container from its suffix): packets as they are when ``raw``, else
    decoded and re-encoded as mp4v. ``drop_last`` leaves out the last frame (cut by a kill). Returns frames."""
    cv2 = import_cv2()
    cap = cv2.VideoCapture(str(src), cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1] if raw else [])
    if not cap.isOpened():
        raise VideoOutputError(f"{src}: cannot be read as a video: nothing to recover")
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        size = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        writer = None
        pending: tuple[np.ndarray, bool] | None = None
        n = 0

        def put(data: np.ndarray, key: bool) -> None:
            nonlocal writer, n
            if writer is None:
                writer = _open_writer(dst, fps, size, FOURCC, raw=raw)
            if raw:
                writer.set(cv2.VIDEOWRITER_PROP_KEY_FLAG, int(key))
            writer.write(data)
            n += 1

        try:
            while cap.grab():  # one frame behind, so that the last one can be left out
                ok, data = cap.retrieve()
                if not ok:
                    break
                if pending is not None:
                    put(*pending)
                pending = (data, bool(cap.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME)) if raw else False)
            if pending is not None and not drop_last:
                put(*pending)
        finally:
            if writer is not None:
                writer.release()
    finally:
        cap.release()
    return n


def _is_mpeg4(path: Path) -> bool:
    """Whether ``path`` holds MPEG-4 Part 2 video (what this writer records), whose packets can be copied."""
    cv2 = import_cv2()
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        tag = (int(cap.get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF).to_bytes(4, "little").decode("latin-1").lower()
    finally:
        cap.release()
    return tag in ("mp4v", "fmp4", "xvid", "divx", "dx50")


def _publish(tmp: Path, path: Path) -> None:
    _fsync(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


class VideoWriter:
    """Write RGB frames to ``path`` (``.mp4`` ``.mov`` ``.mkv`` ``.avi``) at ``fps``, crash-safe (module doc).

    The size is the first frame's unless ``size`` (H, W) is given; a frame of another size is refused. An
    existing ``path`` is replaced only when the new video is complete. A partial file left by an interrupted
    run is refused unless ``overwrite`` (recover it first with :func:`recover_partial`). ``strategy``:
    ``"copy"`` (packets copied on close; needs OpenCV >= 4.9) or ``"dual"`` (every frame encoded into both
    files); default: ``"copy"`` where possible.
    """

    def __init__(self, path: str | os.PathLike, fps: float, *, size: tuple[int, int] | None = None,
                 overwrite: bool = False, strategy: str | None = None) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in FINAL_SUFFIXES:
            raise VideoOutputError(f"{self.path}: a video name ends in one of {' '.join(FINAL_SUFFIXES)}")
        if self.path.name.endswith(PARTIAL_SUFFIX):
            raise VideoOutputError(f"{self.path}: names ending in {PARTIAL_SUFFIX} are the writer's own")
        if not (isinstance(fps, (int, float)) and 0 < fps <= 1000):
            raise VideoOutputError(f"fps must be above 0 (and at most 1000), got {fps!r}")
        if strategy is None:
            strategy = "copy" if raw_copy_supported() else "dual"
        if strategy not in ("copy", "dual"):
            raise VideoOutputError(f"strategy must be 'copy' or 'dual', got {strategy!r}")
        if strategy == "copy" and not raw_copy_supported():
            raise VideoEncoderError("strategy 'copy' needs OpenCV 4.9 or later (VIDEOWRITER_PROP_RAW_VIDEO)")
        self.partial = partial_path(self.path)
        if self.partial.exists():
            if not overwrite:
                raise VideoOutputError(
                    f"{self.partial}: a recording from an interrupted run is there (playable as it is). Turn it "
                    "into a video with ifseg_deploy.runtime.video_writer.recover_partial, move it away, or "
                    "overwrite it")
            self.partial.unlink()
            _remove_stale_temps(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = float(fps)
        self.strategy = strategy
        self.size = size
        self.frames_written = 0
        self._writers: list[Any] = []
        self._final_tmp: Path | None = None
        self._closed = False
        if size is not None:
            self._open(size)

    def _open(self, size: tuple[int, int]) -> None:
        self.size = (int(size[0]), int(size[1]))
        self._writers = [_open_writer(self.partial, self.fps, self.size, FOURCC)]
        if self.strategy == "dual" and self.path.suffix.lower() != ".avi":
            self._final_tmp = _temp_beside(self.path)
            self._writers.append(_open_writer(self._final_tmp, self.fps, self.size, FOURCC))

    def write(self, image: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        if self._closed:
            raise VideoOutputError(f"{self.path}: the video is closed")
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3):
            raise VideoOutputError(f"{self.path}: frames are (H, W, 3) uint8 RGB arrays, got "
                                   f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}")
        if not self._writers:
            self._open(image.shape[:2])
        assert self.size is not None  # set by _open
        if image.shape[:2] != self.size:
            raise VideoOutputError(f"{self.path}: frame {self.frames_written} is {image.shape[1]}x{image.shape[0]}"
                                   f", the video is {self.size[1]}x{self.size[0]}: resize frames to one size")
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        for w in self._writers:
            w.write(bgr)
        self.frames_written += 1

    def close(self) -> Path | None:
        """Finish the video: ``path`` once it holds every frame written, or None when no frame was written."""
        if self._closed:
            return self.path if self.path.exists() and self.frames_written else None
        self._closed = True
        for w in self._writers:
            w.release()
        if self.frames_written == 0:
            for p in (self.partial, self._final_tmp):
                if p is not None:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
            return None
        try:
            if self.path.suffix.lower() == ".avi":
                _publish(self.partial, self.path)
                return self.path
            tmp = self._final_tmp or _temp_beside(self.path)
            try:
                if self._final_tmp is None:
                    n = _copy_video(self.partial, tmp, raw=True)
                    if n != self.frames_written:
                        raise VideoEncoderError(f"{self.path}: copying the frames gave {n} of "
                                                f"{self.frames_written}")
                _publish(tmp, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                raise
        except BaseException as e:
            if isinstance(e, Exception) and not isinstance(e, VideoEncoderError):
                raise VideoEncoderError(f"{self.path}: could not be finished ({e}); every frame is kept in "
                                        f"{self.partial}") from e
            raise
        self.partial.unlink()
        fsync_dir(self.path.parent)
        return self.path

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # the error in the block is what the caller must see; the video is finished all the same
            self.close()
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"the video could not be finished: {e}", stacklevel=2)


def recover_partial(partial: str | os.PathLike, path: str | os.PathLike | None = None, *,
                    reencode: bool | None = None) -> tuple[Path, int]:
    """Turn ``NAME.partial.avi`` left by a killed run into the final video (default ``NAME.mp4``).

    The packets are copied as they are, or decoded and encoded again where this OpenCV cannot copy them
    (``reencode`` forces either). The last frame is left out (a kill usually cuts it). The final file appears
    atomically; then the partial file and any temporary file of the killed writer are removed. Returns
    (path, frames).
    """
    partial = Path(partial)
    if not partial.is_file():
        raise VideoOutputError(f"{partial}: no such file")
    if path is None:
        stem = partial.name[: -len(PARTIAL_SUFFIX)] if partial.name.endswith(PARTIAL_SUFFIX) else partial.stem
        path = partial.with_name(stem + ".mp4")
    path = Path(path)
    if path.suffix.lower() not in FINAL_SUFFIXES:
        raise VideoOutputError(f"{path}: a video name ends in one of {' '.join(FINAL_SUFFIXES)}")
    tmp = _temp_beside(path)
    try:
        if reencode is None:
            reencode = not (raw_copy_supported() and _is_mpeg4(partial))
        elif not reencode and not raw_copy_supported():
            raise VideoEncoderError("copying packets needs OpenCV 4.9 or later (VIDEOWRITER_PROP_RAW_VIDEO)")
        n = _copy_video(partial, tmp, raw=not reencode, drop_last=True)
        if n == 0:
            raise VideoOutputError(f"{partial}: holds no complete frame: nothing to recover")
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    partial.unlink()
    _remove_stale_temps(path)
    fsync_dir(path.parent)
    return path, n
