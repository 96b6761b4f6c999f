"""The rows of an inference benchmark: which (backend, precision, size, batch) run here (or why not), the file
each one runs, and its backend, loaded once per file through the runtime's backends."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ifseg_deploy.runtime.backend import Backend
from ifseg_deploy.runtime.backends.torch import TorchBackend
from ifseg_deploy.runtime.registry import load_backend

from .artifacts import Exporter
from .settings import DYNAMIC_INT8, Echo, Size
from .sources import Sources
from .system import CPU_KEYS, peak_rss_mb, reset_peak_rss, rss_mb


@dataclass
class Row:
    """One measured (or skipped) combination."""

    backend: str
    precision: str
    size: Size
    batch: int
    baseline: bool = False
    status: str = "ok"  # ok | skipped | failed
    reason: str | None = None
    source: str | None = None
    key: tuple | None = None  # the loaded backend instance it uses
    model_times: list[float] = field(default_factory=list)
    e2e_times: list[float] = field(default_factory=list)
    rss_peak: float | None = None
    rss_call: float | None = None
    rss_first: float | None = None  # RSS growth during the first calls (warm-up): working memory it allocated
    device_peak: float | None = None
    timer: str = "perf_counter"
    compiled: bool = False  # a torch row run through torch.compile
    calls_per_run: int = 1
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CPU_KEYS, 0.0))  # jiffies, timed calls

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}" + (" compiled" if self.compiled else "")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def fail(self, reason: str) -> None:
        self.status, self.reason = "failed", reason[:400]


@dataclass
class Loaded:
    """A backend instance shared by the rows (sizes, batches) that use it, with what loading it cost."""

    backend: Backend
    load_s: float
    rss_load: float | None
    source: str
    rss_load_peak: float | None = None


# -- what runs here -------------------------------------------------------------------------------------------------
def tensorrt_unavailable() -> str | None:
    """Why the TensorRT backend cannot run here, or None."""
    from ifseg_deploy.export.trt_build import TensorRTUnavailableError, import_pycuda, import_tensorrt

    try:
        import_tensorrt()
        import_pycuda()
    except TensorRTUnavailableError as e:
        return str(e).split(". ")[0]
    return None


def ort_unavailable() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed (pip install 'ifseg-deploy[onnx]')"
    return None


def skip_reason(backend: str, precision: str, device: str) -> str | None:
    """Why (backend, precision) cannot run on ``device`` here, or None."""
    on_gpu = device.startswith("cuda")
    if precision == DYNAMIC_INT8 and backend != "onnxruntime":
        return "int8-dynamic is onnxruntime's own CPU quantization; not a format for this backend"
    if precision == "bf16" and backend != "torch":
        return "bf16 is the torch backend's autocast; an exported file is fp32, fp16 or int8"
    if backend == "torch":
        if precision == "int8":
            return "no PyTorch eager INT8 path: INT8 is the Q/DQ ONNX (onnxruntime, tensorrt)"
        if precision == "fp16" and not on_gpu:
            return "fp16 needs a CUDA GPU (PyTorch's CPU half precision is not a deployment path)"
        if precision == "bf16" and not _bf16_here(on_gpu):
            return "no bf16 here (CPU: needs AVX-512 BF16 or AMX through oneDNN; GPU: compute capability >= 8)"
        return None
    if backend == "onnxruntime":
        why = ort_unavailable()
        if why or precision != "fp16":
            return why
        if not on_gpu:
            return "fp16 on onnxruntime is its TensorRT provider's fp16 mode: needs a GPU with TensorRT"
        from ifseg_deploy.runtime.backends.ort_providers import TRT_EP, usable_providers

        if TRT_EP not in usable_providers():
            return "onnxruntime's TensorRT provider is not usable here (fp16 runs through it)"
        return None
    if backend == "tensorrt":
        why = tensorrt_unavailable()
        if not on_gpu:
            return "TensorRT needs a CUDA GPU (device is cpu)" + (f"; {why}" if why else "")
        return why
    return f"unknown backend {backend!r}"


def _bf16_here(on_gpu: bool) -> bool:
    if on_gpu:
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def plan_rows(sizes: list[Size], batches: list[int], backends: list[str], precisions: list[str], device: str,
              model_dir: Path, compile: bool = False) -> list[Row]:
    """The PyTorch eager fp32 baseline and every asked-for combination, per size and batch; the ones that cannot
    run here are skipped with the reason. ``compile``: every torch row also runs through torch.compile."""
    rows: list[Row] = []
    for size in sizes:
        for batch in batches:
            rows.append(Row("torch", "fp32", size, batch, baseline=True, source=str(model_dir),
                            key=("torch", "fp32", str(model_dir), False)))
            for backend in backends:
                for precision in precisions:
                    if (backend, precision) == ("torch", "fp32"):
                        continue
                    row = Row(backend, precision, size, batch)
                    why = skip_reason(backend, precision, device)
                    if why:
                        row.status, row.reason = "skipped", why
                    rows.append(row)
    if compile:
        twins = [Row(r.backend, r.precision, r.size, r.batch, status=r.status, reason=r.reason, compiled=True)
                 for r in rows if r.backend == "torch"]
        rows += twins
    return rows


# -- the file each row runs -----------------------------------------------------------------------------------------
def attach_sources(rows: list[Row], sources: Sources, exporter: Exporter, max_batch: int, echo: Echo) -> None:
    """Pick (or export) the file of every row that runs; a row whose file cannot be made fails alone."""
    for row in rows:
        if not row.ok or row.baseline:
            continue
        try:
            path = _source(row, sources, exporter, max_batch)
        except Exception as e:  # noqa: BLE001 - reported in the row, the others still run
            row.fail(f"{type(e).__name__}: {e}")
            echo(f"{row.name} {row.size[0]}x{row.size[1]}: {row.reason}")
            continue
        row.source, row.key = str(path), (row.backend, row.precision, str(path), row.compiled)


def _source(row: Row, sources: Sources, exporter: Exporter, max_batch: int) -> Path:
    if row.backend == "torch":  # fp16 under autocast on the GPU
        return sources.model_dir
    if row.backend == "onnxruntime":
        if row.precision == DYNAMIC_INT8:
            return exporter.onnx(DYNAMIC_INT8, row.size, max_batch)
        want = "fp32" if row.precision == "fp16" else row.precision  # fp16: the TensorRT provider's mode
    elif row.backend == "tensorrt":
        engine = sources.given_engine(row.precision)
        if engine is not None:
            return engine
        want = "int8" if row.precision == "int8" else "fp32"  # an engine is built from it
    else:
        raise ValueError(row.backend)
    return sources.given_onnx(want, row.size) or exporter.onnx(want, row.size, max_batch)


# -- loading --------------------------------------------------------------------------------------------------------
def load_all(rows: list[Row], adapted: Any, device: str, threads: int, refinement: tuple[int, int], out: Path,
             torch_load_mb: float | None, echo: Echo, ort_low_memory: bool = False) -> dict[tuple, Loaded]:
    """Load every row's backend once; rows whose backend failed to load fail. ``torch_load_mb``: what loading the
    adapted model cost (on a CPU the torch rows share it)."""
    loaded: dict[tuple, Loaded] = {}
    for row in rows:
        if not row.ok or row.key in loaded:
            continue
        try:
            loaded[row.key] = load_variant(row, adapted, device, threads, refinement, out,  # type: ignore[index]
                                           ort_low_memory)
        except Exception as e:  # noqa: BLE001
            row.fail(f"loading: {type(e).__name__}: {e}")
            echo(f"{row.name}: {row.reason}")
            continue
        if row.backend == "torch" and not device.startswith("cuda"):
            loaded[row.key].rss_load = torch_load_mb  # type: ignore[index]  # the weights were loaded once
    for row in rows:
        if not row.ok:
            continue
        if row.key not in loaded:
            row.fail("its backend failed to load (see the row with the same file)")
            continue
        limit = loaded[row.key].backend.max_batch  # type: ignore[index]
        row.calls_per_run = -(-row.batch // limit) if limit else 1  # a fixed-batch file runs a batch in pieces
        row.timer = "cuda events" if (device.startswith("cuda") and row.backend == "torch") else "perf_counter"
    return loaded


def load_variant(row: Row, adapted: Any, device: str, threads: int, refinement: tuple[int, int],
                 out: Path, ort_low_memory: bool = False) -> Loaded:
    """Load the row's backend, with the time and the host memory (growth and peak) that took."""
    gc.collect()
    before = rss_mb()
    reset_ok = reset_peak_rss()
    t0 = time.perf_counter()
    backend = _open(row, adapted, device, threads, refinement, out, ort_low_memory)
    after, peak = rss_mb(), peak_rss_mb()
    return Loaded(backend, time.perf_counter() - t0, None if before is None or after is None else after - before,
                  str(row.source), None if not reset_ok or before is None or peak is None else peak - before)


def _open(row: Row, adapted: Any, device: str, threads: int, refinement: tuple[int, int], out: Path,
          ort_low_memory: bool = False) -> Backend:
    if row.backend == "torch":
        return TorchBackend(adapted, device, refinement, precision=row.precision, compile=row.compiled,
                            channels_last=True)
    source = str(row.source)
    if row.backend == "onnxruntime":
        from ifseg_deploy.runtime.backends.ort_session import OrtSessionSettings

        # Its pool's threads would otherwise spin for a while after every run and take the cores from the next
        # variant (PyTorch's threads) in the interleaved rounds; with that off, each engine has the cores alone.
        settings = (OrtSessionSettings.low_memory(threads, spinning=False) if ort_low_memory
                    else OrtSessionSettings(threads=threads, spinning=False))
        fp16 = row.precision == "fp16"  # the TensorRT provider's fp16 mode
        return load_backend("onnxruntime", source, device="tensorrt" if fp16 else device, refinement=refinement,
                            fp16=fp16, settings=settings)
    if source.endswith(".onnx"):
        from ifseg_deploy.export.trt_build import engine_for

        # engines built from an .onnx file are cached under OUT/engines (keyed by ONNX hash, GPU, TensorRT, ...)
        source = str(engine_for(source, row.precision, cache_dir=out / "engines", device=device))
    return load_backend("tensorrt", source, device=device)
