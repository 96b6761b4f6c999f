"""The inference benchmark's report: the JSON document (every figure and every timed run), the files it is
written to (``bench.json``, ``bench.md``, ``bench.png``, ``profile.md``) and the console summary."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ifseg_deploy.atomic import atomic_write_text

from .settings import InferenceSettings, Size
from .sources import Sources
from .stats import latency_stats, ratios_to_baseline
from .system import machine_info
from .variants import Loaded, Row

SCHEMA = "ifseg-deploy/bench-inference/1"
NOTES = [
    "model = backend.probs on preprocessed pixels (ResNet + encoder + decoder + softmax + kNN refinement); "
    "e2e = Segmenter on a uint8 image of the input size (normalise + model + bilinear upsampling + argmax).",
    "ratio = value / baseline (PyTorch eager fp32, same size and batch, measured interleaved in this run); "
    "speedup = baseline mean / mean; speedup_paired_median = median over rounds of baseline / variant.",
    "cpu (from /proc, over a row's timed calls): other_processes_cores / steal_cores = cores that other "
    "processes / the hypervisor kept busy (how disturbed the timing was); own_cores = cores this process "
    "used; own_kernel_share = share of its CPU time spent in the kernel (page faults of freshly mapped "
    "memory: glibc returns allocations above its mmap threshold to the OS on every free).",
    "memory (one process holds every variant): rss_load_mb = RSS growth when the backend loaded (its weights "
    "and session), rss_load_peak_mb = the peak above the RSS before loading, while it loaded (ONNX Runtime's "
    "graph optimisations); rss_first_call_mb = RSS growth during its first model-only / end-to-end call (working "
    "memory; memory another variant freed may be reused, so this is a lower bound); rss_peak_mb = peak RSS of "
    "the whole process during a timed call; rss_call_mb = that peak minus the RSS before the call.",
]


def build_report(s: InferenceSettings, rows: list[Row], loaded: dict[tuple, Loaded], sources: Sources, *,
                 calibration: str | None, agreement: dict, accuracy: dict, device: str, threads: int,
                 sizes: list[Size], peak_reset: bool, flops: dict[Size, dict[str, float]] | None = None,
                 peak: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report of a run (schema :data:`SCHEMA`). ``flops``: per size, the model's FLOPs per stage
    (:mod:`.flops`); ``peak``: the GEMM peak per data type (:mod:`.peak`)."""
    base_of = {(r.size, r.batch): r for r in rows if r.baseline}
    notes = list(NOTES)
    if not peak_reset:
        notes.append("peak RSS could not be reset per call here: rss_peak_mb is the process-lifetime peak")
    if sources.random:
        notes.append("random weights: speed is that of the preset; labels and agreement say nothing about a "
                     "trained model (see baseline_distinct_labels)")
    return {
        "schema": SCHEMA,
        "mode": "inference",
        "command": s.command or " ".join(shlex.quote(a) for a in sys.argv),
        "machine": machine_info(),
        "settings": {
            "device": device, "threads": threads, "ort_intra_op_threads": threads, "ort_spinning": False,
            "ort_memory_arena": not s.ort_low_memory,
            "warmup": s.warmup,
            "iters": s.iters, "sizes": [list(x) for x in sizes], "batches": s.batches, "backends": s.backends,
            "precisions": s.precisions, "refinement": list(s.refinement),
            "calibration": calibration, "dataset": s.dataset, "limit": s.limit if s.dataset else None,
        },
        "model": {"dir": str(sources.model_dir), "random_weights": sources.random,
                  "onnx": [str(p) for p, _ in sources.onnx], "engines": [str(p) for p, _ in sources.engines]},
        "flops": {f"{h}x{w}": v for (h, w), v in (flops or {}).items()},
        "peak_gflops": peak,
        "rows": [_with_limits(_row(row, base_of[(row.size, row.batch)], loaded, agreement, accuracy), row,
                              flops or {}, peak) for row in rows],
        "notes": notes,
    }


def _row(row: Row, base: Row, loaded: dict[tuple, Loaded], agreement: dict, accuracy: dict) -> dict[str, Any]:
    d: dict[str, Any] = {
        "backend": row.backend, "precision": row.precision, "size": list(row.size), "batch": row.batch,
        "baseline": row.baseline, "status": row.status, "reason": row.reason, "source": row.source,
    }
    if not row.ok:
        return d
    if not (row.model_times and row.e2e_times):
        d["status"], d["reason"] = "failed", "no timed runs"
        return d
    item = loaded[row.key]  # type: ignore[index]
    d["timer"] = row.timer
    d["calls_per_run"] = row.calls_per_run
    d["model"] = latency_stats(row.model_times, row.batch)
    d["e2e"] = latency_stats(row.e2e_times, row.batch)
    d["memory"] = {"rss_load_mb": item.rss_load, "rss_load_peak_mb": item.rss_load_peak,
                   "rss_first_call_mb": row.rss_first, "rss_peak_mb": row.rss_peak, "rss_call_mb": row.rss_call,
                   "device_peak_mb": row.device_peak}
    d["load_s"] = item.load_s
    d["cpu"] = cpu_figures(row.cpu)
    d["backend_info"] = item.backend.describe()
    if base.ok and base.model_times and base.e2e_times:
        d["ratio"] = {
            "model": ratios_to_baseline(d["model"], latency_stats(base.model_times, base.batch)),
            "e2e": ratios_to_baseline(d["e2e"], latency_stats(base.e2e_times, base.batch)),
            "rss_peak": _div(row.rss_peak, base.rss_peak),
        }
    d["agreement"] = agreement.get((row.key, row.size))
    d["accuracy"] = accuracy.get((row.key, row.size))
    return d


def _with_limits(d: dict[str, Any], row: Row, flops: dict[Size, dict[str, float]], peak: dict[str, Any] | None
                 ) -> dict[str, Any]:
    """A measured row's achieved GFLOP/s (the model's counted FLOPs x batch / mean model-only time) and its share
    of the measured peak of the data type its products run in."""
    from .flops import compute_dtype

    d["compiled"] = row.compiled
    d["compute_dtype"] = compute_dtype(row.backend, row.precision)
    if "model" not in d or row.size not in flops:
        return d
    achieved = flops[row.size]["total"] * row.batch / (d["model"]["mean_ms"] / 1e3) / 1e9
    d["gflops_per_s"] = achieved
    top = (peak or {}).get(d["compute_dtype"])
    d["share_of_peak"] = achieved / top if top else None
    return d


def cpu_figures(c: dict[str, float]) -> dict[str, float | None]:
    """From a row's CPU jiffies (:func:`~.system.cpu_split` summed over its timed calls): cores other processes
    kept busy, cores the hypervisor stole, cores this process used, and the share of its CPU time spent in the
    kernel."""
    if c["all"] <= 0:
        return {"other_processes_cores": None, "steal_cores": None, "own_cores": None, "own_kernel_share": None}
    n = os.cpu_count() or 1
    own = c["self_user"] + c["self_kernel"]
    return {"other_processes_cores": c["other"] / c["all"] * n, "steal_cores": c["steal"] / c["all"] * n,
            "own_cores": own / c["all"] * n, "own_kernel_share": c["self_kernel"] / own if own > 0 else None}


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Short console summary: one line per row."""
    lines = []
    for r in report["rows"]:
        backend = r["backend"] + (" compiled" if r.get("compiled") else "")
        label = f"{backend:11s} {r['precision']:4s} {r['size'][0]}x{r['size'][1]} b{r['batch']}"
        if r["status"] != "ok":
            lines.append(f"  {label}  {r['status']}: {r['reason']}")
            continue
        ratio = r.get("ratio") or {}
        sp_m = (ratio.get("model") or {}).get("speedup")
        sp_e = (ratio.get("e2e") or {}).get("speedup")
        line = (f"  {label}  model {r['model']['mean_ms']:9.1f} ms (x{sp_m:.2f})  e2e {r['e2e']['mean_ms']:9.1f} ms "
                f"(x{sp_e:.2f})  {r['e2e']['throughput_ips']:.2f} img/s")
        if r.get("gflops_per_s") is not None:
            share = r.get("share_of_peak")
            line += f"  {r['gflops_per_s']:.0f} GFLOP/s" + (f" ({100 * share:.1f}% of peak)" if share else "")
        agr = r.get("agreement")
        if agr and not r["baseline"]:
            line += f"  labels {100 * agr['label_agreement']:.2f}%"
        acc = r.get("accuracy")
        if acc and acc.get("mIoU") is not None:
            line += f"  mIoU {acc['mIoU']:.3f}"
        lines.append(line)
    return lines


def write_outputs(report: dict[str, Any], out: str | Path, plot: bool = True) -> dict[str, str]:
    """``bench.json``, ``bench.md`` and ``bench.png`` (the plot only where matplotlib is installed)."""
    from .render import inference_markdown, plot_inference

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / "bench.json"), "markdown": str(out / "bench.md")}
    png = out / "bench.png"
    if plot:
        note = plot_inference(report, png)
        if note is None:
            files["png"] = str(png)
        else:
            report.setdefault("notes", []).append(note)
    if report.get("profiles"):
        from .profile import profile_markdown

        atomic_write_text(out / "profile.md", profile_markdown(report["profiles"]))
        files["profile"] = str(out / "profile.md")
    atomic_write_text(out / "bench.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "bench.md", inference_markdown(report))
    return files
