"""The timed part of an inference benchmark: every row's model-only and end-to-end calls, run in interleaved
rounds (the order rotates from round to round, so slow phases of a shared machine hit every variant alike), with
the host memory, device memory and CPU time of each call."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from ifseg_deploy.runtime.segmenter import Segmenter

from .settings import Echo, Size
from .system import cpu_jiffies, cpu_split, peak_rss_mb, reset_peak_rss, rss_mb
from .variants import Loaded, Row


@dataclass
class Task:
    row: Row
    what: str  # "model" (backend.probs on pixels) or "e2e" (Segmenter on uint8 images)
    call: Callable[[], Any]


def segmenters_and_tasks(rows: list[Row], loaded: dict[tuple, Loaded], images: dict[Size, np.ndarray]
                         ) -> tuple[dict[tuple, Segmenter], list[Task]]:
    """Per running row: the Segmenter of its size and batch, and its two timed calls on the benchmark image."""
    segmenters: dict[tuple, Segmenter] = {}
    tasks: list[Task] = []
    for row in rows:
        if not row.ok:
            continue
        backend = loaded[row.key].backend  # type: ignore[index]
        h, w = row.size
        seg = Segmenter(backend, short_side=min(h, w), max_long_side=max(h, w), batch_size=row.batch)
        segmenters[(row.key, row.size)] = seg
        pixels = np.ascontiguousarray(np.stack([seg.preprocess(images[row.size])] * row.batch))
        batch_images = [images[row.size]] * row.batch
        tasks.append(Task(row, "model", partial(backend.probs, pixels)))
        tasks.append(Task(row, "e2e", partial(seg.segment_many, batch_images)))
    return segmenters, tasks


def run_rounds(tasks: list[Task], warmup: int, iters: int, on_gpu: bool, echo: Echo) -> None:
    """``warmup`` untimed and ``iters`` timed rounds; each round runs every task once, starting one variant later
    than the round before. Times, memory and CPU figures go into the rows; a call that raises fails its row."""
    first_seen: set[tuple[int, str]] = set()
    t_start = time.perf_counter()
    for r in range(warmup + iters):
        timed = r >= warmup
        k = r % max(1, len(tasks) // 2)
        for task in tasks[2 * k:] + tasks[:2 * k]:  # rotate by whole variants (model-only then end-to-end)
            row = task.row
            if not row.ok:
                continue
            try:
                ms, peak, call, dev_peak, cpu = time_call(task.call, on_gpu, row.timer == "cuda events")
            except Exception as e:  # noqa: BLE001
                row.fail(f"running: {type(e).__name__}: {e}")
                echo(f"{row.name} {row.size}: {row.reason}")
                continue
            if (id(row), task.what) not in first_seen:
                first_seen.add((id(row), task.what))
                row.rss_first = _max(row.rss_first, call)
            if timed:
                _record(row, task.what, ms, peak, call, dev_peak, cpu)
        phase, idx, total = ("round", r - warmup + 1, iters) if timed else ("warm-up", r + 1, warmup)
        echo(f"  {phase} {idx}/{total} ({time.perf_counter() - t_start:.0f} s)")


def _record(row: Row, what: str, ms: float, peak: float | None, call: float | None, dev_peak: float | None,
            cpu: dict[str, float] | None) -> None:
    (row.model_times if what == "model" else row.e2e_times).append(ms)
    row.rss_peak = _max(row.rss_peak, peak)
    row.rss_call = _max(row.rss_call, call)
    row.device_peak = _max(row.device_peak, dev_peak)
    for key, value in (cpu or {}).items():
        row.cpu[key] += value


def time_call(fn: Callable[[], Any], on_gpu: bool, events: bool) -> tuple[float, float | None, float | None,
                                                                         float | None, dict[str, float] | None]:
    """(milliseconds, peak RSS during the call, peak RSS minus RSS before it, peak device memory, the CPU
    jiffies of the call by kind: :func:`~.system.cpu_split`)."""
    before = rss_mb()
    reset_peak_rss()
    j0 = cpu_jiffies()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    if events:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        ms = float(start.elapsed_time(end))
    else:
        t0 = time.perf_counter()
        fn()
        if on_gpu:
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1e3
    j1 = cpu_jiffies()
    peak = peak_rss_mb()
    dev = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None
    return ms, peak, (None if peak is None or before is None else peak - before), dev, cpu_split(j0, j1)


def _max(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
