"""What the stream tests share: panned synthetic-world videos, a fast backend, a slow one and a live source."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ifseg_deploy.preprocessing import PreprocessConfig
from ifseg_deploy.runtime.backend import Backend
from ifseg_deploy.runtime.sources import IterableSource
from ifseg_deploy.synthetic.world import make_scene


def pan_frames(n: int, h: int, w: int, step: int = 3, seed: int = 3) -> list[np.ndarray]:
    """``n`` frames of one synthetic scene, the view moving ``step`` pixels right per frame."""
    scene, _ = make_scene(seed, size=(h, w + step * n))
    return [np.ascontiguousarray(scene[:, step * i: step * i + w]) for i in range(n)]


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0, fourcc: str = "mp4v") -> Path:
    import cv2

    w = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), fps,
                        (frames[0].shape[1], frames[0].shape[0]))
    assert w.isOpened()
    for f in frames:
        w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    w.release()
    return path


def read_video(path: Path) -> list[np.ndarray]:
    """Every frame OpenCV decodes from ``path``, RGB."""
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


class ColourBackend(Backend):
    """A real backend in microseconds: each grid cell's class probabilities are a softmax over the (negative)
    distances of the cell's first pixel to fixed class colours. No smoothing of its own, so noise flickers."""

    name = "colour"

    def __init__(self, categories: list[str], short_side: int = 64, seed: int = 0) -> None:
        self.categories = list(categories)
        self.preprocessing = PreprocessConfig(short_side=short_side)
        self.colours = np.random.default_rng(seed).uniform(-1, 1, (len(categories), 3)).astype(np.float32)

    def probs(self, pixels: np.ndarray) -> np.ndarray:
        cells = np.asarray(pixels, np.float32)[:, :, ::16, ::16]  # (B, 3, ceil(H/16), ceil(W/16))
        d = ((cells[:, None] - self.colours[None, :, :, None, None]) ** 2).sum(2)
        e = np.exp(-(d - d.min(1, keepdims=True)) / 0.1)
        return (e / e.sum(1, keepdims=True)).astype(np.float32)


class SlowBackend(Backend):
    """Another backend's results, ``delay`` seconds late per call (a backend slower than the source); records
    the batch size of each call."""

    name = "slow"

    def __init__(self, inner: Backend, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.categories, self.preprocessing = inner.categories, inner.preprocessing
        self.calls: list[int] = []

    def probs(self, pixels: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        self.calls.append(len(pixels))
        return self.inner.probs(pixels)


class LiveFrames(IterableSource):
    """Frames from a list at ``fps``, marked live (as a camera is)."""

    live = True

    def __init__(self, frames: list[np.ndarray], fps: float) -> None:
        def paced():
            for f in frames:
                time.sleep(1.0 / fps)
                yield f
        super().__init__(paced(), fps=fps, description="paced frames")
