"""``ifseg-deploy bench --mode adapt`` and ``--mode kernel``: the adaptation-throughput and word-map-kernel
benchmarks (``adapt_throughput.py``, ``kernel_wordmap.py``) with the same report files as the inference mode
(``adapt.json`` / ``adapt.md``, ``kernel.json`` / ``kernel.md``), so one command reproduces every figure."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from .system import load_average, machine_info


def _wrap(mode: str, result: dict[str, Any], settings: dict[str, Any], command: str | None) -> dict[str, Any]:
    return {
        "schema": f"ifseg-deploy/bench-{mode}/1",
        "mode": mode,
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "machine": machine_info(),
        "settings": settings,
        "result": result,
    }


def run_adapt(preset: str = "tiny", classes: int = 150, batch: int = 4, steps: int = 10, warmup: int = 2,
              device: str | None = None, threads: int | None = None, command: str | None = None) -> dict[str, Any]:
    """Adaptation samples/s and the share of step time spent making the artificial data."""
    import torch

    from .adapt_throughput import run_benchmark

    if threads:
        torch.set_num_threads(int(threads))
    dev = None if device in (None, "auto") else device
    load = load_average()
    result = run_benchmark(preset, classes, batch, steps, warmup, dev)
    settings = {"device": result["device"], "threads": torch.get_num_threads(), "warmup": warmup, "iters": steps,
                "load_average_at_start": load}
    return _wrap("adapt", result, settings, command)


def run_kernel(batch: int = 4, classes: int = 150, iters: int = 100, warmup: int = 10, device: str | None = None,
               threads: int | None = None, command: str | None = None) -> dict[str, Any]:
    """The fused word-map kernel against its references (timed with CUDA events on a GPU; correctness only on a
    CPU, where the Triton kernel runs in its interpreter)."""
    import torch

    # Without a GPU the Triton kernel can only run in its interpreter, chosen before triton is first imported.
    if not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from .kernel_wordmap import run_benchmark

    if threads:
        torch.set_num_threads(int(threads))
    dev = None if device in (None, "auto") else device
    load = load_average()
    # torch.compile needs a C++ compiler on the CPU and minutes on 2 cores; keep it for the GPU.
    result = run_benchmark(batch, classes, iters=iters, warmup=warmup, device=dev,
                           compile_ref=torch.cuda.is_available())
    settings = {"device": result["device"], "threads": torch.get_num_threads(), "warmup": warmup, "iters": iters,
                "load_average_at_start": load}
    tc = result["results"].get("torch.compile")
    if tc is not None and tc.get("status") == "skipped: --no-compile":
        tc["status"] = "skipped: measured on a GPU only (on a CPU it needs a C++ compiler and minutes)"
    return _wrap("kernel", result, settings, command)


def write_mode_outputs(report: dict[str, Any], out: str | Path) -> dict[str, str]:
    from .render import adapt_markdown, kernel_markdown

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mode = report["mode"]
    render = {"adapt": adapt_markdown, "kernel": kernel_markdown}[mode]
    (out / f"{mode}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{mode}.md").write_text(render(report))
    return {"json": str(out / f"{mode}.json"), "markdown": str(out / f"{mode}.md")}
