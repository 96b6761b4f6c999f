"""``ifseg-deploy segment`` on a video, camera, network stream or GStreamer pipeline: the overlay video,
``frames.jsonl``, optional label PNGs and a summary, stopped cleanly by Ctrl-C / SIGTERM, ``--max-frames`` or
``--duration``.

Nothing heavy is imported at module level (the command module imports this one).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

#: What a stream input looks like on the command line (an existing file is a video by its suffix).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: The output video's frame rate when the source has none (iterables, some streams).
DEFAULT_FPS = 25.0


def is_stream_input(spec: str) -> bool:
    """Whether a command-line input is a video, camera device, URL or pipeline rather than images."""
    from ..runtime.sources import VIDEO_EXTENSIONS

    return (bool(_URL.match(spec)) or " ! " in spec or spec.startswith("/dev/video")
            or (Path(spec).is_file() and Path(spec).suffix.lower() in VIDEO_EXTENSIONS))


def stream_name(spec: str | int) -> str:
    """The ``<name>`` of ``<name>_overlay.mp4``: a video's stem, ``camera0``, ``video0``, a URL's host and
    path, ``pipeline``."""
    if isinstance(spec, int):
        return f"camera{spec}"
    if " ! " in spec:
        return "pipeline"
    if _URL.match(spec):
        rest = spec.split("://", 1)[1].split("@")[-1]
        return re.sub(r"[^A-Za-z0-9._-]+", "_", rest).strip("_.") or "stream"
    return Path(spec).stem or "video"


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done (their handlers raise KeyboardInterrupt, which would
    otherwise land between a frame's video write and its log line; seen under load)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread while the block runs, so it stops as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Outputs:
    """What a stream run writes under ``out``: ``<name>_overlay.mp4`` (crash-safe, see
    :mod:`~ifseg_deploy.runtime.video_writer`), ``frames.jsonl`` (a line per frame, flushed at once) and with
    ``save_labels`` ``labels/<name>_<index>.png``."""

    def __init__(self, out: Path, name: str, class_names: list[str], fps: float, *, alpha: float,
                 save_labels: bool) -> None:
        from ..runtime.video_writer import VideoWriter
        from ..runtime.visualize import palette

        self.out, self.name, self.names, self.alpha, self.save_labels = out, name, class_names, alpha, save_labels
        self.colours = palette(len(class_names))
        self.video = VideoWriter(out / f"{name}_overlay.mp4", fps)  # refuses a killed run's partial file first
        self.log = open(out / "frames.jsonl", "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._times: deque[float] = deque(maxlen=16)

    def add(self, result: Any) -> None:
        from ..atomic import atomic_write_bytes
        from ..runtime.visualize import label_image, png_bytes, video_frame

        self._times.append(time.perf_counter())
        span = self._times[-1] - self._times[0]
        fps = (len(self._times) - 1) / span if span > 0 else None
        caption = f"{fps:.1f} fps" if fps else "-- fps"
        frame = video_frame(result.image, result.labels, self.names, self.colours, self.alpha, caption)
        png = png_bytes(label_image(result.labels, len(self.names))) if self.save_labels else None
        record = {"index": result.index, "timestamp": result.timestamp,
                  **{f"{k}_ms": round(v * 1000, 3) for k, v in result.timings.items()},
                  "latency_ms": round(result.latency * 1000, 3), "batch": result.batch_size,
                  "areas": {k: round(v, 6) for k, v in result.areas().items()}}
        with signals_held():  # a frame is in the video, its PNG and its log line, or in none of them
            self.video.write(frame)
            if png is not None:
                atomic_write_bytes(self.out / "labels" / f"{self.name}_{result.index:06d}.png", png)
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()

    def close(self) -> Path | None:
        self.log.close()
        return self.video.close()


def run_stream(seg: Any, source: Any, name: str, out: Path, *, alpha: float, save_labels: bool,
               max_frames: int | None, duration: float | None, batch: int, smooth: float) -> int:
    """Segment the open ``source`` into ``out`` (files named after ``name``) and close it; print the summary;
    the exit status (1 after a source error)."""
    from ..atomic import atomic_write_text
    from ..runtime.source_base import SourceError

    error: str | None = None
    stopped = None
    outputs = None
    try:
        outputs = Outputs(out, name, seg.class_names, source.fps or DEFAULT_FPS, alpha=alpha,
                          save_labels=save_labels)
        stream = seg.stream(source, batch=batch, smooth=smooth)
    except BaseException:
        source.close()
        if outputs is not None:
            outputs.close()
        raise
    t0 = time.monotonic()
    try:
        with stop_on_sigterm():
            for result in stream:
                outputs.add(result)
                if max_frames is not None and stream.stats.frames_segmented >= max_frames:
                    stopped = f"--max-frames {max_frames}"
                    break
                if duration is not None and time.monotonic() - t0 >= duration:
                    stopped = f"--duration {duration:g}"
                    break
    except KeyboardInterrupt as e:
        stopped = str(e) if str(e).startswith("signal") else "Ctrl-C"
    except SourceError as e:
        error = str(e)
    finally:
        stream.close()
        source.close()
        video = outputs.close()
    summary = _summary(stream, source, video, stopped, error)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    _echo_summary(summary)
    return 1 if error else 0


def _summary(stream: Any, source: Any, video: Path | None, stopped: str | None, error: str | None
             ) -> dict[str, Any]:
    return {"source": source.description, "live": source.live, "video": str(video) if video else None,
            **stream.stats.summary(), "stopped_by": stopped, "error": error}


def _echo_summary(s: dict[str, Any]) -> None:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} ms"

    click.echo(f"{s['source']}: read {s['frames_read']} frames, segmented {s['frames_segmented']}, "
               f"dropped {s['frames_dropped']}" + (f" (stopped by {s['stopped_by']})" if s["stopped_by"] else ""))
    fps = "-" if s["mean_fps"] is None else f"{s['mean_fps']:.2f}"
    click.echo(f"latency p50 {ms(s['latency_p50_ms'])}, p99 {ms(s['latency_p99_ms'])} (processing alone p50 "
               f"{ms(s['processing_p50_ms'])}, p99 {ms(s['processing_p99_ms'])}); mean {fps} fps")
    if s["stage_mean_ms"]:
        click.echo("per frame: " + ", ".join(f"{k} {v:.1f} ms" for k, v in s["stage_mean_ms"].items()))
    click.echo(f"wrote {s['video'] or 'no video (no frame)'}, frames.jsonl, summary.json")
    if s["error"]:
        click.echo(f"Error: {s['error']}", err=True)
