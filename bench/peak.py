"""The machine's own limit: the GEMM throughput it reaches in each data type, on the benchmark's threads and
device, so that every row can say which share of it the model achieves (``--peak``).

A square matrix product of size ``n`` (2n³ operations) is timed a few times after a warm-up and the best run
counts: fp32 and bf16 with ``torch.mm``, int8 with ``torch._int_mm`` (int8 x int8 -> int32, the VNNI/AMX and
IMMA path), fp16 on a GPU only. A data type the machine cannot run is reported as None with the reason.
"""

from __future__ import annotations

import time
from typing import Any

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}


def _matmul(dtype: str, n: int, device: torch.device) -> Any:
    g = torch.Generator(device="cpu").manual_seed(0)
    if dtype == "int8":
        a = torch.randint(-64, 64, (n, n), generator=g, dtype=torch.int8).to(device)
        b = torch.randint(-64, 64, (n, n), generator=g, dtype=torch.int8).to(device)
        return lambda: torch._int_mm(a, b)
    a = torch.randn(n, n, generator=g).to(device, DTYPES[dtype])
    b = torch.randn(n, n, generator=g).to(device, DTYPES[dtype])
    return lambda: torch.mm(a, b)


def _best_seconds(fn: Any, device: torch.device, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_peak(device: str = "cpu", n: int | None = None, reps: int = 5) -> dict[str, Any]:
    """{dtype: GFLOP/s (GOP/s for int8) or None, "n": n, "why": {dtype: reason}} on ``device`` with torch's
    current thread count."""
    dev = torch.device(device)
    n = n or (8192 if dev.type == "cuda" else 2048)
    out: dict[str, Any] = {"n": n, "why": {}}
    for name in ("fp32", "bf16", "int8", "fp16"):
        if name == "fp16" and dev.type != "cuda":
            out[name], out["why"][name] = None, "fp16 is measured on a GPU only"
            continue
        try:
            fn = _matmul(name, n, dev)
            fn()  # warm-up: first-call dispatch, oneDNN primitive creation, cuBLAS handles
            seconds = _best_seconds(fn, dev, reps)
        except RuntimeError as e:  # e.g. no int8 GEMM for this device or build
            out[name], out["why"][name] = None, f"{type(e).__name__}: {str(e)[:160]}"
            continue
        out[name] = 2.0 * n**3 / seconds / 1e9
    out["threads"] = torch.get_num_threads()
    out["device"] = str(dev)
    return out
