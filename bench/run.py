"""Inference benchmark behind ``ifseg-deploy bench`` (``--mode inference``, the default).

For every requested (backend, precision, input size, batch) it measures, in one process:

* **model-only**: ``backend.probs(pixels)`` on preprocessed, normalised pixels (the exported graph: ResNet,
  encoder, decoder, class head, softmax and the kNN refinement);
* **end-to-end** (decode-free): ``Segmenter.segment_many`` on uint8 images of the input size, i.e. the
  normalisation (and resize where there is one) + the model + the bilinear upsampling to the image size + the
  argmax: what an application pays per frame once it has the frame in memory.

The PyTorch eager fp32 model is always measured too (the baseline), **interleaved** with the others
(:mod:`.timing`). Every figure is also given as a ratio to the baseline of the same size and batch, including the
median of the per-round ratios, which drifting load disturbs least (:mod:`.report`).

Files that a variant needs and that were not given (ONNX fp32 / INT8 for a size and batch, TensorRT engines)
are exported into ``OUT/exports`` (:mod:`.artifacts`; reused by later runs while the source model is unchanged).
Combinations that cannot run here (TensorRT without TensorRT or a GPU, fp16 on a CPU, PyTorch INT8) are reported
as skipped with the reason (:mod:`.variants`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ifseg_deploy.model_dir import AdaptedModel

from .artifacts import Exporter
from .quality import accuracy, agreement, check_classes, open_dataset
from .report import build_report
from .settings import Echo, InferenceSettings, Size, bench_device
from .sources import Sources, resolve_sources
from .system import load_average, reset_peak_rss, rss_mb
from .timing import run_rounds, segmenters_and_tasks
from .variants import Loaded, Row, attach_sources, load_all, plan_rows

#: The synthetic-world scene every variant segments (a validation-range seed).
SCENE_SEED = 1_500_000_000


def run_inference(s: InferenceSettings, echo: Echo = print) -> dict[str, Any]:
    """Run the benchmark and return the report (:func:`~.report.write_outputs` writes its files)."""
    s.check()
    device = bench_device(s.device)
    threads = int(s.threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    dataset = open_dataset(s) if s.dataset else None
    if dataset is not None and s.preset:  # fail before building the model
        from .models import default_categories

        check_classes(s.categories or default_categories(s.bpe_dir is not None), dataset, s)

    sources = resolve_sources(s, echo)
    Path(s.out).mkdir(parents=True, exist_ok=True)
    rss0 = rss_mb()
    adapted = AdaptedModel.from_pretrained(sources.model_dir)
    rss1 = rss_mb()
    if dataset is not None:
        check_classes(adapted.categories, dataset, s)
    sizes = s.sizes or sources.default_sizes(adapted)
    exporter = Exporter(s, sources, echo)
    rows = plan_rows(sizes, s.batches, s.backends, s.precisions, device, sources.model_dir, s.compile)
    attach_sources(rows, sources, exporter, max(s.batches), echo)
    torch_load = None if rss0 is None or rss1 is None else rss1 - rss0
    loaded = load_all(rows, adapted, device, threads, s.refinement, Path(s.out), torch_load, echo, s.ort_low_memory)
    try:
        return _measure(s, rows, loaded, sources, exporter, dataset, device, threads, sizes, echo)
    finally:
        for item in loaded.values():
            item.backend.close()


def _measure(s: InferenceSettings, rows: list[Row], loaded: dict[tuple, Loaded], sources: Sources,
             exporter: Exporter, dataset: Any, device: str, threads: int, sizes: list[Size], echo: Echo
             ) -> dict[str, Any]:
    """Time the loaded rows, then compare their outputs with the baseline's; the report."""
    images = {size: _scene(size) for size in sizes}
    limits = _limits(s, rows, loaded, sizes, device, echo)
    segmenters, tasks = segmenters_and_tasks(rows, loaded, images)
    echo(f"timing {len({id(t.row) for t in tasks})} variant(s): {s.warmup} warm-up + {s.iters} timed round(s), "
         f"interleaved; {threads} thread(s) for torch and onnxruntime; device {device}")
    peak_reset = reset_peak_rss()
    load_start = load_average()
    t_start = time.perf_counter()
    run_rounds(tasks, s.warmup, s.iters, device.startswith("cuda"), echo)

    agree = agreement(rows, segmenters, images)
    acc = accuracy(rows, loaded, dataset, s.limit, echo) if dataset is not None else {}
    profiles = None
    if s.profile:
        from .profile import profile_rows

        profiles = profile_rows(rows, loaded, segmenters, images, threads, echo)
    report = build_report(s, rows, loaded, sources, calibration=exporter.calibration, agreement=agree,
                          accuracy=acc, device=device, threads=threads, sizes=sizes, peak_reset=peak_reset,
                          **limits)
    report["settings"]["load_average_at_start"] = load_start
    report["settings"]["timing_seconds"] = round(time.perf_counter() - t_start, 1)
    if profiles is not None:
        report["profiles"] = profiles
    return report


def _limits(s: InferenceSettings, rows: list[Row], loaded: dict[tuple, Loaded], sizes: list[Size], device: str,
            echo: Echo) -> dict[str, Any]:
    """The model's FLOPs per size (counted on the baseline's eager model) and, with ``--peak``, the GEMM peak
    of each data type on these threads; measured before the timed rounds, so they do not disturb them."""
    from .flops import count_flops
    from .peak import gemm_peak

    flops: dict[Size, dict[str, float]] = {}
    for row in rows:
        if row.baseline and row.ok and row.size not in flops:
            flops[row.size] = count_flops(loaded[row.key].backend, row.size)  # type: ignore[index]
    peak = None
    if s.peak:
        echo("measuring the GEMM peak (fp32, bf16, int8" + (", fp16" if device.startswith("cuda") else "") + ")")
        peak = gemm_peak(device)
    return {"flops": flops, "peak": peak}


def _scene(size: Size) -> np.ndarray:
    from ifseg_deploy.synthetic.world import make_scene

    return make_scene(SCENE_SEED, size)[0]
