"""Segmenting a stream of frames: :class:`SegmentStream`, what ``Segmenter.stream(source)`` returns.

A reader thread reads and preprocesses frames ahead of inference through a bounded queue, so decoding the next
frames overlaps with running the model on this one. When the queue is full the reader of a file waits (a file
never loses a frame); the reader of a live source (camera, network stream, pipeline) drops the oldest queued
frame instead and counts it, so results stay close to real time when inference falls behind.

``batch`` runs that many consecutive same-sized frames through the backend at once. ``smooth`` (0..1) keeps an
exponential moving average of the class probabilities on the model's grid, ``p_t = smooth * p_(t-1) + (1 -
smooth) * q_t``, before the upsampling and argmax (0: off, the labels ``Segmenter(frame)`` gives).

An error of the reader (a damaged video, a stream that stopped) reaches the consumer after the frames read
before it, as the source raised it. The reader thread is joined on ``close()``, at the end of a ``with`` block
and when iteration ends.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..preprocessing import upsample_argmax
from .source_base import Frame, FrameSource
from .sources import open_source

__all__ = ["STAGES", "SegmentStream", "StreamResult", "StreamStats"]

#: The per-frame stages timed, in order (seconds each).
STAGES = ("read", "preprocess", "infer", "postprocess")
_JOIN_POLL_S = 0.05


@dataclass
class StreamResult:
    """One segmented frame. ``timings``: seconds per stage of :data:`STAGES` (``infer`` is this frame's share of
    its batch); ``latency``: seconds from the end of its read to its labels, the time it waited in the queue
    included (for a file read ahead, mostly that wait; for a live source, how far the labels lag behind)."""

    frame: Frame
    labels: np.ndarray
    class_names: list[str]
    timings: dict[str, float]
    latency: float
    batch_size: int = 1

    @property
    def index(self) -> int:
        return self.frame.index

    @property
    def timestamp(self) -> float | None:
        return self.frame.timestamp

    @property
    def image(self) -> np.ndarray:
        return self.frame.image

    def areas(self) -> dict[str, float]:
        """Fraction of the frame each present class covers, largest first."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names))
        order = np.argsort(-counts, kind="stable")
        return {self.class_names[i]: float(counts[i] / self.labels.size) for i in order if counts[i] > 0}


@dataclass
class StreamStats:
    """Counts and latencies of a stream so far."""

    frames_read: int = 0
    frames_segmented: int = 0
    frames_dropped: int = 0
    started: float = field(default_factory=time.perf_counter)
    latencies: list[float] = field(default_factory=list)
    #: per frame, the sum of its stages (the latency without the time it waited in the queue)
    processing: list[float] = field(default_factory=list)
    #: seconds spent per stage of :data:`STAGES`, summed over the frames segmented
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, timings: dict[str, float], latency: float) -> None:
        self.frames_segmented += 1
        self.latencies.append(latency)
        self.processing.append(sum(timings[k] for k in STAGES))
        for k in STAGES:
            self.stage_seconds[k] += timings[k]

    def summary(self) -> dict[str, Any]:
        """frames read / segmented / dropped, p50 and p99 of the latency and of the processing time, mean time
        per stage (ms), mean fps since the start."""
        elapsed = time.perf_counter() - self.started
        n = self.frames_segmented
        return {"frames_read": self.frames_read, "frames_segmented": n, "frames_dropped": self.frames_dropped,
                **_percentiles("latency", self.latencies), **_percentiles("processing", self.processing),
                "stage_mean_ms": {k: 1000.0 * v / n for k, v in self.stage_seconds.items()} if n else None,
                "mean_fps": n / elapsed if elapsed > 0 else None, "seconds": elapsed}


def _percentiles(name: str, seconds: list[float]) -> dict[str, float | None]:
    ms = np.asarray(seconds) * 1000.0
    return {f"{name}_p{q}_ms": float(np.percentile(ms, q)) if ms.size else None for q in (50, 99)}


@dataclass
class _Item:
    frame: Frame
    pixels: np.ndarray
    read: float
    preprocess: float
    ready: float  # perf_counter when it entered the queue


@dataclass
class _Failure:
    error: BaseException


_END = object()


class SegmentStream:
    """Iterator of :class:`StreamResult` for ``source`` (anything :func:`~.sources.open_source` takes); see the
    module docstring. ``drop``: None = drop the oldest frames of live sources only; True / False forces it.
    ``segmenter``: a :class:`~.segmenter.Segmenter` (its preprocessing, backend and class names are used).
    ``queue_size``: frames read ahead (default ``2 * batch``). A source given as a spec is opened and closed
    here; a :class:`FrameSource` given as it is stays the caller's to close."""

    def __init__(self, segmenter: Any, source: Any, *, batch: int = 1, smooth: float = 0.0,
                 queue_size: int | None = None, drop: bool | None = None) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InputError(f"batch must be an integer >= 1, got {batch!r}")
        if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or not 0.0 <= smooth < 1.0:
            raise InputError(f"smooth must be a number in [0, 1) (0: off), got {smooth!r}")
        queue_size = 2 * batch if queue_size is None else queue_size
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise InputError(f"queue_size must be an integer >= 1, got {queue_size!r}")
        self.segmenter = segmenter
        self._owns_source = not isinstance(source, FrameSource)
        self.source = open_source(source)
        self.batch = min(batch, segmenter.backend.max_batch or batch)
        self.smooth = float(smooth)
        self.drop = self.source.live if drop is None else bool(drop)
        self.stats = StreamStats()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()  # a drop-then-put of the reader against close()'s draining
        self._stop = threading.Event()
        self._ema: Any = None
        self._pending: list[StreamResult] = []
        self._held: _Item | None = None
        self._finished = False
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="ifseg-stream-reader", daemon=True)
        self._thread.start()

    # -- the reader thread ---------------------------------------------------------------------------------------
    def _read(self) -> None:
        try:
            frames = iter(self.source)
            while not self._stop.is_set():
                t0 = time.perf_counter()
                frame = next(frames, None)
                if frame is None:
                    break
                t1 = time.perf_counter()
                pixels = self.segmenter.preprocess(frame.image)
                t2 = time.perf_counter()
                self.stats.frames_read += 1
                self._put(_Item(frame, pixels, t1 - t0, t2 - t1, t2))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(_Failure(e))
            return
        self._put(_END)

    def _put(self, item: Any) -> None:
        """Queue ``item``. A frame of a live source replaces the oldest queued frame when the queue is full;
        anything else waits for room (until stopped)."""
        if self.drop and isinstance(item, _Item):
            with self._lock:
                if self._queue.full():
                    try:  # the oldest is a frame: the end marker or an error is always put last
                        self._queue.get_nowait()
                        self.stats.frames_dropped += 1
                    except queue.Empty:  # the consumer took it meanwhile
                        pass
                self._queue.put_nowait(item)
            return
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_JOIN_POLL_S)
                return
            except queue.Full:
                continue

    # -- the consumer --------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[StreamResult]:
        return self

    def __next__(self) -> StreamResult:
        if not self._pending:
            if self._finished or self._closed:
                self.close()
                raise StopIteration
            try:
                self._pending = self._next_batch()
            except BaseException:
                self.close()
                raise
            if not self._pending:
                self.close()
                raise StopIteration
        return self._pending.pop(0)

    def _get(self) -> Any:
        if self._held is not None:
            item, self._held = self._held, None
            return item
        while not self._closed:  # closed from another thread: end instead of waiting for ever
            try:
                return self._queue.get(timeout=_JOIN_POLL_S * 4)
            except queue.Empty:
                continue
        return _END

    def _next_batch(self) -> list[StreamResult]:
        items: list[_Item] = []
        while len(items) < self.batch:
            item = self._get()
            if isinstance(item, _Failure):
                if items:  # the frames before the error first
                    self._held = item
                    break
                self._finished = True
                raise item.error
            if item is _END:
                self._finished = True
                break
            if items and item.pixels.shape != items[0].pixels.shape:
                self._held = item  # another input size: it starts the next batch
                break
            items.append(item)
        return self._segment(items) if items else []

    def _segment(self, items: list[_Item]) -> list[StreamResult]:
        seg = self.segmenter
        t0 = time.perf_counter()
        probs = seg._probs(np.stack([it.pixels for it in items]))
        infer = (time.perf_counter() - t0) / len(items)
        out = []
        for j, it in enumerate(items):
            t1 = time.perf_counter()
            p = self._smoothed(probs[j])
            labels = upsample_argmax(p, it.frame.image.shape[:2])
            t2 = time.perf_counter()
            timings = {"read": it.read, "preprocess": it.preprocess, "infer": infer, "postprocess": t2 - t1}
            latency = t2 - it.ready + it.preprocess
            self.stats.add(timings, latency)
            out.append(StreamResult(it.frame, labels, seg.class_names, timings, latency, len(items)))
        return out

    def _smoothed(self, p: Any) -> Any:
        if self.smooth == 0.0:
            return p
        if self._ema is None or self._ema.shape != p.shape:
            self._ema = p.clone()  # the first frame (or a new grid size) starts the average
        else:
            self._ema.mul_(self.smooth).add_(p, alpha=1.0 - self.smooth)
        return self._ema

    # -- closing -------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the reader, join it, and close the source if it was opened here. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        while self._thread.is_alive():
            self._drain()  # unblocks a reader waiting to put
            self._thread.join(_JOIN_POLL_S)
        self._drain()
        if self._owns_source:
            self.source.close()

    def _drain(self) -> None:
        with self._lock:
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    return

    def __enter__(self) -> SegmentStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()
