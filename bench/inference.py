"""Inference benchmark behind ``ifseg-deploy bench`` (``--mode inference``, the default).

For every requested (backend, precision, input size, batch) it measures, in one process:

* **model-only**: ``backend.probs(pixels)`` on preprocessed, normalised pixels (the exported graph: ResNet,
  encoder, decoder, class head, softmax and the kNN refinement);
* **end-to-end** (decode-free): ``Segmenter.segment_many`` on uint8 images of the input size, i.e. the
  normalisation (and resize where there is one) + the model + the bilinear upsampling to the image size + the
  argmax: what an application pays per frame once it has the frame in memory.

The PyTorch eager fp32 model is always measured too (the baseline), **interleaved** with the others: every
timed round runs each variant once (model-only, then end-to-end), with the order rotated from round to round,
so slow phases of a shared machine hit every variant alike. Every figure is also given as a ratio to the
baseline of the same size and batch, including the median of the per-round ratios, which drifting load
disturbs least.

Files that a variant needs and that were not given (ONNX fp32 / INT8 for a size and batch, TensorRT engines)
are exported into ``OUT/exports`` (reused by later runs while the source model is unchanged). Combinations
that cannot run here (TensorRT without TensorRT or a GPU, fp16 on a CPU, PyTorch INT8) are reported as skipped
with the reason.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ifseg_deploy.errors import UsageError

from .common import (
    CPU_KEYS,
    cpu_jiffies,
    cpu_split,
    latency_stats,
    load_average,
    machine_info,
    peak_rss_mb,
    ratios_to_baseline,
    reset_peak_rss,
    rss_mb,
)

BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")
#: ``int8-dynamic`` is a CPU diagnostic, not a deployment format: ONNX Runtime's own dynamic quantization of the
#: MatMul/Gemm weights (activations quantized at run time), which its CPU provider runs with integer kernels.
#: The toolkit's INT8 (Q/DQ from TensorRT Model Optimizer) is laid out for TensorRT; ORT's CPU provider runs its
#: quantized ops in float plus the Q/DQ nodes. The two side by side show what INT8 can give on a CPU.
SCHEMA = "ifseg-deploy/bench-inference/1"
Echo = Callable[[str], None]
Size = tuple[int, int]


class BenchUsageError(UsageError):
    """Impossible options (the message says what to give instead)."""


@dataclass
class InferenceSettings:
    out: str
    models: list[str] = field(default_factory=list)
    preset: str | None = None
    categories: list[str] | None = None
    bpe_dir: str | None = None
    seed: int = 0
    backends: list[str] = field(default_factory=lambda: list(BACKENDS))
    precisions: list[str] = field(default_factory=lambda: ["fp32", "fp16", "int8"])
    sizes: list[Size] | None = None
    batches: list[int] = field(default_factory=lambda: [1])
    warmup: int = 5
    iters: int = 20
    calib_images: str | None = None
    calib_max: int = 8
    threads: int | None = None
    device: str = "auto"
    dataset: str | None = None
    root: str | None = None
    limit: int = 16
    refine: bool = True
    plot: bool = True
    profile: bool = False
    command: str | None = None


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
    calls_per_run: int = 1
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CPU_KEYS, 0.0))  # jiffies, timed calls

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}"


# -- model sources --------------------------------------------------------------------------------------------------
@dataclass
class Sources:
    model_dir: Path
    onnx: list[tuple[Path, Any]] = field(default_factory=list)  # (path, ModelInfo)
    engines: list[tuple[Path, str]] = field(default_factory=list)  # (path, precision)
    random: dict[str, Any] | None = None


def _read_onnx_info(path: Path) -> Any:
    from ifseg_deploy.runtime.model_info import read_info

    return read_info(path)


def _engine_precision(path: Path) -> str:
    from ifseg_deploy.runtime.engine_file import read_sidecar

    return str(read_sidecar(path)["key"].precision)


def resolve_sources(s: InferenceSettings, echo: Echo) -> Sources:
    """The adapted-model directory (baseline) and the exported files among ``--model``, or a random model of
    ``--preset`` written to ``OUT/model``."""
    if s.preset and s.models:
        raise BenchUsageError("give either --preset (a random-weight model) or --model, not both")
    if not s.preset and not s.models:
        raise BenchUsageError("give --model (an adapted-model directory, plus any .onnx / .engine exported from "
                              "it) or --preset NAME (a random-weight model of that size)")
    out = Path(s.out)
    if s.preset:
        model_dir, info = _random_model(s, out / "model", echo)
        return Sources(model_dir, random=info)
    model_dir: Path | None = None
    onnx_files: list[tuple[Path, Any]] = []
    engines: list[tuple[Path, str]] = []

    def add_dir(d: Path) -> None:
        nonlocal model_dir
        if model_dir is not None and model_dir.resolve() != d.resolve():
            raise BenchUsageError(f"two adapted-model directories given ({model_dir}, {d}); the benchmark compares "
                                  "the backends of one model")
        model_dir = d

    for m in s.models:
        p = Path(m)
        if p.is_dir() and (p / "config.json").is_file():
            add_dir(p)
        elif p.is_dir() and (p / "model" / "config.json").is_file():
            # an `ifseg-deploy demo` output: model/, model.onnx, model.int8.onnx
            add_dir(p / "model")
            for f in sorted(p.glob("*.onnx")):
                onnx_files.append((f, _read_onnx_info(f)))
        elif p.is_file() and p.suffix.lower() == ".onnx":
            onnx_files.append((p, _read_onnx_info(p)))
        elif p.is_file() and p.suffix.lower() in (".engine", ".plan"):
            engines.append((p, _engine_precision(p)))
        else:
            raise BenchUsageError(f"{m}: not an adapted-model directory, a demo output folder, an .onnx or an "
                                  ".engine file")
    if model_dir is None:
        raise BenchUsageError("the PyTorch eager fp32 baseline needs the adapted-model directory the files were "
                              "exported from: add it with --model DIR")
    from ifseg_deploy.model_dir import AdaptedModel

    categories = AdaptedModel.from_pretrained(model_dir).categories
    for f, info in onnx_files:
        if list(info.categories) != list(categories):
            raise BenchUsageError(f"{f} has other categories than {model_dir}: it was exported from another model")
    return Sources(model_dir, onnx_files, engines)


def _random_model(s: InferenceSettings, model_dir: Path, echo: Echo) -> tuple[Path, dict[str, Any]]:
    """Write (or reuse) the random-weight model of the preset."""
    from .models import INIT_RECIPE, default_categories, write_random_model

    categories = list(s.categories or default_categories(s.bpe_dir is not None))
    want = {"preset": s.preset, "seed": s.seed, "tokenizer": str(s.bpe_dir) if s.bpe_dir else "synthetic world",
            "init": INIT_RECIPE}
    cfg = model_dir / "config.json"
    if cfg.is_file():
        conf = json.loads(cfg.read_text())
        if conf.get("metadata", {}).get("random_weights") == want and conf.get("categories") == categories:
            echo(f"random-weight {s.preset} model: reusing {model_dir}")
            return model_dir, {**want, "categories": len(categories)}
    echo(f"random-weight {s.preset} model ({len(categories)} categories, seed {s.seed}) -> {model_dir}")
    write_random_model(s.preset, model_dir, categories, s.bpe_dir, s.seed, overwrite=True)  # type: ignore[arg-type]
    return model_dir, {**want, "categories": len(categories)}


def _model_digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        with open(model_dir / name, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


# -- exports --------------------------------------------------------------------------------------------------------
class Exporter:
    """ONNX fp32 / INT8 files for a size and batch, made from the model directory on first use and reused while
    the model and the settings are unchanged (a JSON sidecar records them)."""

    def __init__(self, s: InferenceSettings, sources: Sources, echo: Echo) -> None:
        self.s, self.sources, self.echo = s, sources, echo
        self.dir = Path(s.out) / "exports"
        self._digest: str | None = None
        self._done: dict[tuple, Path] = {}
        self.calibration: str | None = None

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = _model_digest(self.sources.model_dir)
        return self._digest

    def _reuse(self, path: Path, record: dict[str, Any]) -> bool:
        side = path.with_suffix(".json")
        if not (path.is_file() and side.is_file()):
            return False
        try:
            return json.loads(side.read_text()) == record
        except (OSError, json.JSONDecodeError):
            return False

    def onnx(self, precision: str, size: Size, max_batch: int) -> Path:
        key = (precision, tuple(size), max_batch)
        if key not in self._done:
            self._done[key] = self._onnx(precision, size, max_batch)
        return self._done[key]

    def _onnx(self, precision: str, size: Size, max_batch: int) -> Path:
        from ifseg_deploy.export.pipeline import export_model
        from ifseg_deploy.runtime.input_spec import InputSpec

        self.dir.mkdir(parents=True, exist_ok=True)
        tag = f"{size[0]}x{size[1]}_b{max_batch}{'' if self.s.refine else '_norefine'}"
        path = self.dir / f"{precision}_{tag}.onnx"
        record: dict[str, Any] = {"source_sha256": self.digest, "precision": precision, "size": list(size),
                                  "max_batch": max_batch, "refine": self.s.refine}
        if precision == "int8":
            calib, n = self._calibration(size)
            record["calibration"] = {"images": calib, "max": self.s.calib_max, "count": n}
        if self._reuse(path, record):
            self.echo(f"reusing {path}")
            return path
        say: Echo = lambda m: self.echo(f"  {m}")  # noqa: E731
        t0 = time.perf_counter()
        if precision == "fp32":
            self.echo(f"exporting {path.name} (ONNX fp32, fixed {size[0]}x{size[1]}, batch 1..{max_batch})")
            # The benchmark measures agreement itself (and random weights give near-flat probabilities): no gate.
            export_model(self.sources.model_dir, path, format="onnx", precision="fp32",
                         input_spec=InputSpec.fixed(size, max_batch), refine=self.s.refine, agreement_threshold=0.0,
                         overwrite=True, echo=say)
        elif precision == "int8-dynamic":
            fp32 = self.onnx("fp32", size, max_batch)
            self.echo(f"exporting {path.name} (onnxruntime dynamic INT8 of the MatMul/Gemm weights; CPU diagnostic)")
            _quantize_dynamic(fp32, path)
        elif precision == "int8":
            fp32 = self.onnx("fp32", size, max_batch)
            self.echo(f"exporting {path.name} (INT8 Q/DQ, calibrated on {n} image(s) from {calib})")
            export_model(fp32, path, format="onnx", precision="int8", calib_images=calib,
                         calib_max=self.s.calib_max, reduced_agreement_threshold=0.0, max_miou_drop=None,
                         overwrite=True, echo=say)
        else:
            raise ValueError(precision)
        path.with_suffix(".json").write_text(json.dumps(record, indent=2))
        self.echo(f"  ({time.perf_counter() - t0:.0f} s)")
        return path

    def _calibration(self, size: Size) -> tuple[str, int]:
        """``--calib-images``, or ``calib_max`` synthetic-world scenes (validation seeds) written as PNGs."""
        if self.s.calib_images:
            from ifseg_deploy.export.inputs import list_images

            n = len(list_images(self.s.calib_images, self.s.calib_max))
            self.calibration = f"{n} image(s) from {self.s.calib_images}"
            return str(self.s.calib_images), n
        from PIL import Image

        from ifseg_deploy.synthetic.world import SyntheticScenes

        folder = Path(self.s.out) / "calibration" / f"{size[0]}x{size[1]}"
        n = self.s.calib_max
        files = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if len(files) != n:
            folder.mkdir(parents=True, exist_ok=True)
            for f in files:
                f.unlink()
            for i, (image, _) in enumerate(SyntheticScenes(n, size, split="validation")):
                Image.fromarray(image).save(folder / f"scene{i:03d}.png")
        self.calibration = f"{n} synthetic-world scene(s) (validation seeds) at {size[0]}x{size[1]}"
        return str(folder), n


def _quantize_dynamic(fp32: Path, out: Path) -> None:
    """ONNX Runtime's dynamic INT8 quantization of MatMul/Gemm weights, leaving out the kNN refinement's similarity
    MatMul (as the Q/DQ export does), written atomically."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ifseg_deploy.export.int8 import similarity_matmuls

    exclude = similarity_matmuls(onnx.load(str(fp32), load_external_data=False))
    tmp = out.with_name(f".{out.name}.tmp")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" warning
    try:
        quantize_dynamic(str(fp32), str(tmp), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
                         nodes_to_exclude=exclude, extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    tmp.replace(out)


# -- availability ---------------------------------------------------------------------------------------------------
def resolve_device(device: str) -> str:
    import torch

    d = (device or "auto").lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise BenchUsageError(f"--device {device}: this torch build sees no CUDA GPU; use --device cpu")
    if d != "cpu" and not d.startswith("cuda"):
        raise BenchUsageError(f"--device must be cpu, cuda, cuda:N or auto (got {device!r})")
    return d


def tensorrt_unavailable() -> str | None:
    """Why the TensorRT backend cannot run here, or None."""
    try:
        from ifseg_deploy.export.trt_build import TensorRTUnavailableError, import_pycuda, import_tensorrt
    except ImportError as e:  # pragma: no cover - export package missing
        return f"export stage not installed ({e})"
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
    if precision == "int8-dynamic" and backend != "onnxruntime":
        return "int8-dynamic is onnxruntime's own CPU quantization (a diagnostic); not a format for this backend"
    if backend == "torch":
        if precision == "int8":
            return "no PyTorch eager INT8 path: INT8 is the Q/DQ ONNX (onnxruntime, tensorrt)"
        if precision == "fp16" and not on_gpu:
            return "fp16 needs a CUDA GPU (PyTorch's CPU half precision is not a deployment path)"
        return None
    if backend == "onnxruntime":
        why = ort_unavailable()
        if why:
            return why
        if precision == "fp16":
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


# -- the run --------------------------------------------------------------------------------------------------------
class _Loaded:
    """A backend instance shared by the rows (sizes, batches) that use it."""

    def __init__(self, backend: Any, load_s: float, rss_load: float | None, source: str,
                 rss_load_peak: float | None = None) -> None:
        self.backend, self.load_s, self.rss_load, self.source = backend, load_s, rss_load, source
        self.rss_load_peak = rss_load_peak


def _torch_fp16_backend(adapted: Any, device: str, refine: tuple[int, int]) -> Any:
    """The torch backend under CUDA autocast fp16 (softmax and refinement stay fp32 as in the graph)."""
    import torch

    from ifseg_deploy.runtime.backends.torch import TorchBackend

    class _Fp16TorchBackend(TorchBackend):
        name = "torch"

        def probs_tensor(self, pixels: Any) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.float16):
                return super().probs_tensor(pixels)

    return _Fp16TorchBackend(adapted, device, refine)


def _scene(size: Size, seed: int = 1_500_000_000) -> np.ndarray:
    from ifseg_deploy.synthetic.world import make_scene

    return make_scene(seed, size)[0]


def run_inference(s: InferenceSettings, echo: Echo = print) -> dict[str, Any]:
    """Run the benchmark and return the report (see :func:`write_outputs` for the files)."""
    import torch

    from ifseg_deploy.model_dir import AdaptedModel
    from ifseg_deploy.runtime.segmenter import Segmenter

    for name, value in (("--iters", s.iters), ("--calib-max", s.calib_max), ("--limit", s.limit)):
        if value < 1:
            raise BenchUsageError(f"{name} must be >= 1")
    if s.warmup < 0:
        raise BenchUsageError("--warmup must be >= 0")
    bad = [b for b in s.backends if b not in BACKENDS] + [p for p in s.precisions if p not in PRECISIONS]
    if bad:
        raise BenchUsageError(f"unknown backend/precision {bad}")
    device = resolve_device(s.device)
    on_gpu = device.startswith("cuda")
    threads = int(s.threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    dataset = _dataset(s) if s.dataset else None
    if dataset is not None and s.preset:  # fail before building the model
        from .models import default_categories

        _check_classes(s.categories or default_categories(s.bpe_dir is not None), dataset, s)

    sources = resolve_sources(s, echo)
    Path(s.out).mkdir(parents=True, exist_ok=True)
    rss0 = rss_mb()
    adapted = AdaptedModel.from_pretrained(sources.model_dir)
    rss1 = rss_mb()
    torch_load = None if rss0 is None or rss1 is None else rss1 - rss0
    if dataset is not None:
        _check_classes(adapted.categories, dataset, s)
    sizes = s.sizes or _default_sizes(sources, adapted)
    max_batch = max(s.batches)
    refinement = (3, 25) if s.refine else (1, 0)
    exporter = Exporter(s, sources, echo)

    # 1. plan the rows and find / make their files
    rows: list[Row] = []
    for size in sizes:
        for batch in s.batches:
            rows.append(Row("torch", "fp32", size, batch, baseline=True, source=str(sources.model_dir),
                            key=("torch", "fp32", str(sources.model_dir))))
            for backend in s.backends:
                for precision in s.precisions:
                    if (backend, precision) == ("torch", "fp32"):
                        continue
                    row = Row(backend, precision, size, batch)
                    why = skip_reason(backend, precision, device)
                    if why:
                        row.status, row.reason = "skipped", why
                    rows.append(row)
    for row in rows:
        if row.status != "ok" or row.baseline:
            continue
        try:
            _attach_source(row, sources, exporter, max_batch, device)
        except Exception as e:  # noqa: BLE001 - reported in the row, the others still run
            row.status, row.reason = "failed", f"{type(e).__name__}: {e}"[:400]
            echo(f"{row.name} {row.size[0]}x{row.size[1]}: {row.reason}")

    # 2. load every backend once
    loaded: dict[tuple, _Loaded] = {}
    for row in rows:
        if row.status != "ok" or row.key in loaded:
            continue
        try:
            loaded[row.key] = _load(row, adapted, device, threads, refinement, Path(s.out))  # type: ignore[index]
            if row.backend == "torch" and not device.startswith("cuda"):
                loaded[row.key].rss_load = torch_load  # the weights were loaded above, once for both torch rows
        except Exception as e:  # noqa: BLE001
            row.status, row.reason = "failed", f"loading: {type(e).__name__}: {e}"[:400]
            echo(f"{row.name}: {row.reason}")
    for row in rows:
        if row.status == "ok" and row.key not in loaded:
            row.status, row.reason = "failed", "its backend failed to load (see the row with the same file)"
    # a fixed-batch file runs a larger batch as several calls
    for row in rows:
        if row.status == "ok":
            limit = loaded[row.key].backend.max_batch  # type: ignore[index]
            row.calls_per_run = -(-row.batch // limit) if limit else 1
            row.timer = "cuda events" if (on_gpu and row.backend == "torch") else "perf_counter"

    # 3. inputs and segmenters
    images = {size: _scene(size) for size in sizes}
    segmenters: dict[tuple, Any] = {}
    tasks: list[tuple[Row, str, Callable[[], Any]]] = []
    for row in rows:
        if row.status != "ok":
            continue
        backend = loaded[row.key].backend  # type: ignore[index]
        h, w = row.size
        seg = Segmenter(backend, short_side=min(h, w), max_long_side=max(h, w), batch_size=row.batch)
        segmenters[(row.key, row.size)] = seg
        pixels = np.ascontiguousarray(np.stack([seg.preprocess(images[row.size])] * row.batch))
        batch_images = [images[row.size]] * row.batch
        tasks.append((row, "model", lambda b=backend, x=pixels: b.probs(x)))
        tasks.append((row, "e2e", lambda sg=seg, ims=batch_images: sg.segment_many(ims)))

    # 4. warm-up and timed rounds, interleaved
    n_ok = len({id(t[0]) for t in tasks})
    echo(f"timing {n_ok} variant(s): {s.warmup} warm-up + {s.iters} timed round(s), interleaved; "
         f"{threads} thread(s) for torch and onnxruntime; device {device}")
    peak_note = reset_peak_rss()
    load_start = load_average()
    first_seen: set[tuple[int, str]] = set()
    t_start = time.perf_counter()
    for r in range(s.warmup + s.iters):
        timed = r >= s.warmup
        k = r % max(1, len(tasks) // 2)
        order = tasks[2 * k:] + tasks[:2 * k]  # rotate by whole variants (model-only then end-to-end)
        for row, what, fn in order:
            if row.status != "ok":
                continue
            try:
                ms, peak, call, dev_peak, cpu = _time_call(fn, on_gpu, row.timer == "cuda events")
            except Exception as e:  # noqa: BLE001
                row.status, row.reason = "failed", f"running: {type(e).__name__}: {e}"[:400]
                echo(f"{row.name} {row.size}: {row.reason}")
                continue
            if (id(row), what) not in first_seen:
                first_seen.add((id(row), what))
                row.rss_first = _max(row.rss_first, call)
            if not timed:
                continue
            (row.model_times if what == "model" else row.e2e_times).append(ms)
            row.rss_peak = _max(row.rss_peak, peak)
            row.rss_call = _max(row.rss_call, call)
            row.device_peak = _max(row.device_peak, dev_peak)
            if cpu is not None:
                for k2, v in cpu.items():
                    row.cpu[k2] += v
        phase = "warm-up" if not timed else "round"
        idx = r + 1 if not timed else r - s.warmup + 1
        total = s.warmup if not timed else s.iters
        echo(f"  {phase} {idx}/{total} ({time.perf_counter() - t_start:.0f} s)")

    # 5. agreement with the baseline on the benchmark image, and accuracy on the dataset
    agreement = _agreement(rows, loaded, segmenters, images)
    accuracy = _accuracy(rows, loaded, dataset, s, echo) if dataset is not None else {}
    profiles = _profiles(rows, loaded, segmenters, images, threads, echo) if s.profile else None
    report = _report(s, rows, loaded, sources, exporter, agreement, accuracy, device, threads, sizes, peak_note)
    report["settings"]["load_average_at_start"] = load_start
    report["settings"]["timing_seconds"] = round(time.perf_counter() - t_start, 1)
    if profiles is not None:
        report["profiles"] = profiles
    for item in loaded.values():
        item.backend.close()
    return report


def _check_classes(categories: Sequence[str], dataset: Any, s: InferenceSettings) -> None:
    from ifseg_deploy.evaluation.evaluate import ClassMismatchError, match_classes

    try:
        match_classes(list(categories), dataset.classes, getattr(dataset, "aliases", None), dataset.name)
    except ClassMismatchError as e:
        raise BenchUsageError(f"--dataset {s.dataset}: {e}") from None


def _max(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _default_sizes(sources: Sources, adapted: Any) -> list[Size]:
    fixed = []
    for _, info in sources.onnx:
        f = info.input.fixed_size
        if f is not None and tuple(f) not in fixed:
            fixed.append(tuple(f))
    if fixed:
        return fixed  # type: ignore[return-value]
    side = int((adapted.preprocessing or {}).get("short_side", 512))
    return [(side, side)]


def _attach_source(row: Row, sources: Sources, exporter: Exporter, max_batch: int, device: str) -> None:
    """Pick (or make) the file a row runs and its backend key."""
    if row.backend == "torch":  # fp16 under autocast on the GPU
        row.source, row.key = str(sources.model_dir), ("torch", row.precision, str(sources.model_dir))
        return
    if row.backend == "onnxruntime":
        want = "fp32" if row.precision == "fp16" else row.precision
        if want == "int8-dynamic":
            path = exporter.onnx(want, row.size, max_batch)
            row.source, row.key = str(path), ("onnxruntime", row.precision, str(path))
            return
        path = _given_onnx(sources, want, row.size, row.batch)
        if path is None:
            path = exporter.onnx(want, row.size, max_batch)
        row.source, row.key = str(path), ("onnxruntime", row.precision, str(path))
        return
    if row.backend == "tensorrt":
        for path, precision in sources.engines:
            if precision == row.precision:
                row.source, row.key = str(path), ("tensorrt", row.precision, str(path))
                return
        onnx_precision = "int8" if row.precision == "int8" else "fp32"
        path = _given_onnx(sources, onnx_precision, row.size, row.batch) or exporter.onnx(
            onnx_precision, row.size, max_batch)
        row.source, row.key = str(path), ("tensorrt", row.precision, str(path))
        return
    raise ValueError(row.backend)


def _given_onnx(sources: Sources, precision: str, size: Size, batch: int) -> Path | None:
    """A given .onnx of that precision accepting the size (a fixed-batch file runs larger batches in pieces)."""
    for path, info in sources.onnx:
        if info.precision == precision and info.input.accepts(size[0], size[1], 1):
            return path
    return None


def _load(row: Row, adapted: Any, device: str, threads: int, refinement: tuple[int, int], out: Path) -> _Loaded:
    import gc

    gc.collect()
    before = rss_mb()
    reset_ok = reset_peak_rss()
    t0 = time.perf_counter()
    if row.backend == "torch":
        from ifseg_deploy.runtime.backends.torch import TorchBackend

        if row.precision == "fp32":
            backend = TorchBackend(adapted, device, refinement)
        else:
            backend = _torch_fp16_backend(adapted, device, refinement)
    elif row.backend == "onnxruntime":
        import onnxruntime as ort

        from ifseg_deploy.runtime.backends.onnxruntime import CPU_EP, OrtBackend

        # Its pool's threads would otherwise spin for a while after every run and take the cores from the next
        # variant (PyTorch's threads) in the interleaved rounds; with that off, each engine has the cores alone.
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        common = {"threads": threads, "session_options": opts}
        if row.precision == "fp16":
            backend = OrtBackend.from_file(row.source, device="tensorrt", fp16=True, **common)
        elif device == "cpu":
            backend = OrtBackend.from_file(row.source, providers=[CPU_EP], **common)
        else:
            backend = OrtBackend.from_file(row.source, device=device, **common)
        if tuple(backend.refinement) != tuple(refinement):
            raise RuntimeError(f"{row.source} has refinement {backend.refinement}, the baseline {refinement}")
    elif row.backend == "tensorrt":
        from ifseg_deploy.runtime.backends.tensorrt import TensorRTBackend

        engine = row.source
        if str(row.source).endswith(".onnx"):
            from ifseg_deploy.export.trt_build import engine_for

            # engines built from an .onnx file are cached under OUT/engines (keyed by ONNX hash, GPU, TensorRT, ...)
            engine = str(engine_for(row.source, row.precision, cache_dir=out / "engines", device=device))
        backend = TensorRTBackend.from_file(engine, device=device)
    else:
        raise ValueError(row.backend)
    after, peak = rss_mb(), peak_rss_mb()
    return _Loaded(backend, time.perf_counter() - t0,
                   None if before is None or after is None else after - before, str(row.source),
                   None if not reset_ok or before is None or peak is None else peak - before)


def _time_call(fn: Callable[[], Any], on_gpu: bool, events: bool) -> tuple[float, float | None, float | None,
                                                                          float | None, Any]:
    """(milliseconds, peak RSS during the call, peak RSS minus RSS before it, peak device memory, the CPU
    jiffies of the call by kind: :func:`~.common.cpu_split`)."""
    import torch

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


def _agreement(rows: list[Row], loaded: dict[tuple, _Loaded], segmenters: dict[tuple, Any],
               images: dict[Size, np.ndarray]) -> dict[tuple, dict[str, Any]]:
    """Per (backend key, size): label agreement with the baseline at the image's size, max |probability
    difference| on the 1/16 grid, and how many distinct labels the baseline predicts (1 means agreement says
    nothing: random weights often give one label everywhere)."""
    out: dict[tuple, dict[str, Any]] = {}
    base_rows = {r.size: r for r in rows if r.baseline and r.status == "ok"}
    for row in rows:
        if row.status != "ok" or (row.key, row.size) in out or row.size not in base_rows:
            continue
        base = base_rows[row.size]
        img = images[row.size]
        bseg, seg = segmenters[(base.key, row.size)], segmenters[(row.key, row.size)]
        ref, res = bseg(img, return_probs=True), seg(img, return_probs=True)
        out[(row.key, row.size)] = {
            "label_agreement": float((ref.labels == res.labels).mean()),
            "max_abs_prob_diff": float(np.abs(ref.probs - res.probs).max()),
            "mean_abs_prob_diff": float(np.abs(ref.probs - res.probs).mean()),
            "baseline_distinct_labels": int(np.unique(ref.labels).size),
        }
    return out


def _profiles(rows: list[Row], loaded: dict[tuple, _Loaded], segmenters: dict[tuple, Any],
              images: dict[Size, np.ndarray], threads: int, echo: Echo) -> list[dict[str, Any]]:
    """One profiled model-only call per measured (backend, file, size), at the smallest batch."""
    from .profile import profile_ort, profile_torch

    out: list[dict[str, Any]] = []
    seen: set = set()
    for row in sorted((r for r in rows if r.status == "ok"), key=lambda r: r.batch):
        if (row.key, row.size) in seen:
            continue
        seen.add((row.key, row.size))
        backend = loaded[row.key].backend  # type: ignore[index]
        seg = segmenters[(row.key, row.size)]
        pixels = np.stack([seg.preprocess(images[row.size])] * row.batch)
        name = f"{row.name} {row.size[0]}x{row.size[1]} batch {row.batch}"
        echo(f"profiling {name}")
        try:
            if row.backend == "torch":
                prof = profile_torch(backend, pixels)
            elif row.backend == "onnxruntime":
                prof = profile_ort(row.source, pixels, threads, list(getattr(backend, "providers", None) or []))  # type: ignore[arg-type]
            else:
                prof = {"profiler": None, "wall_ms": 0.0, "ops": [],
                        "note": "not profiled here: use trtexec --dumpProfile or Nsight Systems for engines"}
        except Exception as e:  # noqa: BLE001 - a profile is a diagnostic, never a reason to fail the run
            prof = {"profiler": None, "wall_ms": 0.0, "ops": [], "note": f"failed: {type(e).__name__}: {e}"[:300]}
        out.append({"variant": name, **prof})
    return out


def _dataset(s: InferenceSettings) -> Any:
    from ifseg_deploy.evaluation.registry import DATASETS, get_dataset

    if s.dataset not in DATASETS:
        raise BenchUsageError(f"unknown dataset {s.dataset!r}; choose one of {', '.join(DATASETS)}")
    if s.dataset == "synthetic":
        return get_dataset("synthetic", None, num_scenes=s.limit)
    if not s.root:
        raise BenchUsageError(f"--dataset {s.dataset} needs --root")
    return get_dataset(s.dataset, s.root)


def _accuracy(rows: list[Row], loaded: dict[tuple, _Loaded], dataset: Any, s: InferenceSettings,
              echo: Echo) -> dict[tuple, dict[str, Any]]:
    """mIoU / mAcc / aAcc per (backend key, size) on the labelled set (the eval protocol: prediction at each
    image's own size), and pixel agreement with the baseline's labels at the same size."""
    from ifseg_deploy.evaluation.evaluate import match_classes
    from ifseg_deploy.evaluation.metrics import ConfusionMatrix
    from ifseg_deploy.runtime.segmenter import Segmenter

    n = min(len(dataset), s.limit)
    variants: dict[tuple, Any] = {}
    base_for: dict[tuple, tuple] = {}
    for row in rows:
        if row.status == "ok" and (row.key, row.size) not in variants:
            # keep-ratio resize to the row's short side (torch); a fixed-size file stretches to its size
            variants[(row.key, row.size)] = Segmenter(loaded[row.key].backend, short_side=min(row.size))  # type: ignore[index]
            base = next(r for r in rows if r.baseline and r.size == row.size)
            base_for[(row.key, row.size)] = (base.key, row.size)
    mapping = {k: match_classes(seg.class_names, dataset.classes, getattr(dataset, "aliases", None), dataset.name)
               for k, seg in variants.items()}
    cms = {k: ConfusionMatrix(len(dataset.classes), getattr(dataset, "ignore_index", 255)) for k in variants}
    same = dict.fromkeys(variants, 0)
    pixels = 0
    t0 = time.perf_counter()
    echo(f"accuracy: {n} image(s) of {dataset.name} x {len(variants)} variant(s)")
    for i in range(n):
        image, mask = dataset.load(i)
        labels = {k: seg(image).labels for k, seg in variants.items()}
        pixels += mask.size
        for k in variants:
            cms[k].update(mask, mapping[k][labels[k]])
            same[k] += int((labels[k] == labels[base_for[k]]).sum())
    echo(f"  ({time.perf_counter() - t0:.0f} s)")
    out = {}
    for k in variants:
        sc = cms[k].scores().as_dict(list(dataset.classes))
        out[k] = {"mIoU": sc["mIoU"], "mAcc": sc["mAcc"], "aAcc": sc["aAcc"], "images": n,
                  "pixel_agreement_with_baseline": same[k] / max(1, pixels), "dataset": dataset.name}
    return out


def _report(s: InferenceSettings, rows: list[Row], loaded: dict[tuple, _Loaded], sources: Sources,
            exporter: Exporter, agreement: dict, accuracy: dict, device: str, threads: int, sizes: list[Size],
            peak_reset: bool) -> dict[str, Any]:
    base_of = {(r.size, r.batch): r for r in rows if r.baseline}
    out_rows = []
    for row in rows:
        d: dict[str, Any] = {
            "backend": row.backend, "precision": row.precision, "size": list(row.size), "batch": row.batch,
            "baseline": row.baseline, "status": row.status, "reason": row.reason, "source": row.source,
        }
        if row.status == "ok" and row.model_times and row.e2e_times:
            base = base_of[(row.size, row.batch)]
            item = loaded[row.key]  # type: ignore[index]
            d["timer"] = row.timer
            d["calls_per_run"] = row.calls_per_run
            d["model"] = latency_stats(row.model_times, row.batch)
            d["e2e"] = latency_stats(row.e2e_times, row.batch)
            d["memory"] = {"rss_load_mb": item.rss_load, "rss_load_peak_mb": item.rss_load_peak,
                           "rss_first_call_mb": row.rss_first,
                           "rss_peak_mb": row.rss_peak, "rss_call_mb": row.rss_call,
                           "device_peak_mb": row.device_peak}
            d["load_s"] = item.load_s
            d["cpu"] = _cpu_figures(row)
            describe = getattr(item.backend, "describe", None)
            d["backend_info"] = describe() if callable(describe) else None
            if base.status == "ok" and base.model_times and base.e2e_times:
                d["ratio"] = {
                    "model": ratios_to_baseline(d["model"], latency_stats(base.model_times, base.batch)),
                    "e2e": ratios_to_baseline(d["e2e"], latency_stats(base.e2e_times, base.batch)),
                    "rss_peak": _div(row.rss_peak, base.rss_peak),
                }
            d["agreement"] = agreement.get((row.key, row.size))
            d["accuracy"] = accuracy.get((row.key, row.size))
        elif row.status == "ok":
            d["status"], d["reason"] = "failed", "no timed runs"
        out_rows.append(d)
    notes = [
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
            "warmup": s.warmup,
            "iters": s.iters, "sizes": [list(x) for x in sizes], "batches": s.batches, "backends": s.backends,
            "precisions": s.precisions, "refinement": [3, 25] if s.refine else [1, 0],
            "calibration": exporter.calibration, "dataset": s.dataset, "limit": s.limit if s.dataset else None,
        },
        "model": {"dir": str(sources.model_dir), "random_weights": sources.random,
                  "onnx": [str(p) for p, _ in sources.onnx], "engines": [str(p) for p, _ in sources.engines]},
        "rows": out_rows,
        "notes": notes,
    }


def _cpu_figures(row: Row) -> dict[str, float | None]:
    """Over this row's timed calls: cores other processes kept busy, cores the hypervisor stole, cores this
    process used, and the share of its CPU time spent in the kernel."""
    import os

    c = row.cpu
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
        label = f"{r['backend']:11s} {r['precision']:4s} {r['size'][0]}x{r['size'][1]} b{r['batch']}"
        if r["status"] != "ok":
            lines.append(f"  {label}  {r['status']}: {r['reason']}")
            continue
        ratio = r.get("ratio") or {}
        sp_m = (ratio.get("model") or {}).get("speedup")
        sp_e = (ratio.get("e2e") or {}).get("speedup")
        line = (f"  {label}  model {r['model']['mean_ms']:9.1f} ms (x{sp_m:.2f})  e2e {r['e2e']['mean_ms']:9.1f} ms "
                f"(x{sp_e:.2f})  {r['e2e']['throughput_ips']:.2f} img/s")
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
    from .report import inference_markdown, plot_inference

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

        (out / "profile.md").write_text(profile_markdown(report["profiles"]))
        files["profile"] = str(out / "profile.md")
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(inference_markdown(report))
    return files


def parse_sizes(text: str) -> list[Size]:
    from ifseg_deploy.runtime.input_spec import SpecError, parse_size

    sizes: list[Size] = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            size = parse_size(part)
        except SpecError as e:
            raise BenchUsageError(str(e)) from None
        if size not in sizes:
            sizes.append(size)
    if not sizes:
        raise BenchUsageError("no size given")
    return sizes


__all__: Sequence[str] = ["InferenceSettings", "BenchUsageError", "run_inference", "write_outputs", "summary_lines",
                          "parse_sizes", "skip_reason", "BACKENDS", "PRECISIONS"]
