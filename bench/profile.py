"""Which operators dominate: ``torch.profiler`` for the PyTorch backend, ONNX Runtime's own profiler
(``SessionOptions.enable_profiling``) for an ONNX file. ``ifseg-deploy bench --profile`` runs these once per
measured variant after the timed rounds and writes ``profile.json`` / ``profile.md``.

Both report *self* time per operator type for one model-only call (after one untimed call), summed over the
nodes of that type, and its share of the call. The profilers add overhead of their own; the shares are what to
read, not the absolute times.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _top(totals: dict[str, list[float]], wall_ms: float, top: int) -> list[dict[str, Any]]:
    busy = sum(v[0] for v in totals.values()) or 1.0
    items = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
    return [{"op": k, "self_ms": v[0], "calls": int(v[1]), "share_of_op_time": v[0] / busy} for k, v in items]


def profile_torch(backend: Any, pixels: np.ndarray, top: int = 15) -> dict[str, Any]:
    """Self CPU (and CUDA, on a GPU) time per aten operator of one ``backend.probs`` call."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    backend.probs(pixels)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        backend.probs(pixels)
    wall = (time.perf_counter() - t0) * 1e3
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for ev in prof.key_averages():
        t = ev.self_cpu_time_total / 1e3
        if torch.cuda.is_available():
            t = max(t, getattr(ev, "self_device_time_total", 0) / 1e3)
        totals[ev.key][0] += t
        totals[ev.key][1] += ev.count
    return {"profiler": "torch.profiler", "wall_ms": wall, "ops": _top(totals, wall, top)}


def profile_ort(path: str | Path, pixels: np.ndarray, threads: int | None = None,
                providers: list[str] | None = None, top: int = 15) -> dict[str, Any]:
    """Kernel time per ONNX Runtime operator type (the op types after ORT's graph optimisations and fusions,
    e.g. QLinearConv or MatMulIntegerToFloat for a Q/DQ model) of one run, after one untimed run."""
    import onnxruntime as ort

    from ifseg_deploy.runtime.model_info import INPUT_NAME, PROBS_NAME

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the timed sessions
        if threads:
            opts.intra_op_num_threads = int(threads)
        sess = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        sess.run([PROBS_NAME], {INPUT_NAME: x})
        sess.run([PROBS_NAME], {INPUT_NAME: x})
        trace = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last = runs[-1]
    lo, hi = last["ts"], last["ts"] + last["dur"]
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for e in trace:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if not lo <= e["ts"] <= hi:
            continue
        op = e.get("args", {}).get("op_name", "?")
        totals[op][0] += e["dur"] / 1e3
        totals[op][1] += 1
    return {"profiler": "onnxruntime", "wall_ms": last["dur"] / 1e3, "ops": _top(totals, last["dur"] / 1e3, top)}


def profile_rows(rows: list[Any], loaded: dict[tuple, Any], segmenters: dict[tuple, Any],
                 images: dict[tuple[int, int], np.ndarray], threads: int, echo: Callable[[str], None]
                 ) -> list[dict[str, Any]]:
    """One profiled model-only call per measured (backend, file, size) of an inference run (its
    :class:`~.variants.Row` s), at the smallest batch."""
    out: list[dict[str, Any]] = []
    seen: set = set()
    for row in sorted((r for r in rows if r.ok), key=lambda r: r.batch):
        if (row.key, row.size) in seen:
            continue
        seen.add((row.key, row.size))
        backend = loaded[row.key].backend
        seg = segmenters[(row.key, row.size)]
        pixels = np.stack([seg.preprocess(images[row.size])] * row.batch)
        name = f"{row.name} {row.size[0]}x{row.size[1]} batch {row.batch}"
        echo(f"profiling {name}")
        try:
            if row.backend == "torch":
                prof = profile_torch(backend, pixels)
            elif row.backend == "onnxruntime":
                prof = profile_ort(row.source, pixels, threads, list(getattr(backend, "providers", None) or []))
            else:
                prof = {"profiler": None, "wall_ms": 0.0, "ops": [],
                        "note": "not profiled here: use trtexec --dumpProfile or Nsight Systems for engines"}
        except Exception as e:  # noqa: BLE001 - a profile is a diagnostic, never a reason to fail the run
            prof = {"profiler": None, "wall_ms": 0.0, "ops": [], "note": f"failed: {type(e).__name__}: {e}"[:300]}
        out.append({"variant": name, **prof})
    return out


def profile_markdown(profiles: list[dict[str, Any]]) -> str:
    lines = ["# ifseg-deploy bench: operator profile", "",
             "Self time per operator type for one model-only call (after one untimed call); shares of the summed "
             "operator time. Profiler overhead included: read the shares.", ""]
    for p in profiles:
        if not p["ops"]:
            lines += [f"## {p['variant']}", "", p.get("note", "no profile"), ""]
            continue
        lines += [f"## {p['variant']} ({p['profiler']}, one call: {p['wall_ms']:.0f} ms)", "",
                  "| op | self ms | calls | share |", "|---|---|---|---|"]
        for o in p["ops"]:
            lines.append(f"| {o['op']} | {o['self_ms']:.1f} | {o['calls']} | {100 * o['share_of_op_time']:.1f}% |")
        lines.append("")
    return "\n".join(lines)
