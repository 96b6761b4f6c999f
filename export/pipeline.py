"""The export stage as one call: adapted model (or .onnx) -> ONNX fp32 / INT8 Q/DQ ONNX / TensorRT engine.

``ifseg-deploy export`` is a thin layer over :func:`export_model`. Every product is checked before it is
published at ``out`` (written atomically, so a failed export leaves nothing there):

* fp32 ONNX: ONNX Runtime against PyTorch, label agreement >= ``agreement_threshold`` (99.9 %);
* INT8 ONNX: ONNX Runtime INT8 against fp32, agreement >= ``reduced_agreement_threshold`` and, with a labelled
  set, an mIoU drop of at most ``max_miou_drop``;
* TensorRT engine: the engine against the ONNX file it was built from, with the threshold of its precision.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ifseg_deploy.artifacts import guess_kind
from ifseg_deploy.errors import UsageError

from .metadata import ModelInfo
from .parity import FP32_AGREEMENT, REDUCED_AGREEMENT, ParityReport
from .spec import InputSpec

FORMATS = ("onnx", "tensorrt")
Echo = Callable[[str], None]


class ExportUsageError(UsageError):
    """An impossible combination of options (the message says what to do instead)."""


@dataclass
class ExportSummary:
    path: Path
    format: str
    precision: str
    info: ModelInfo
    reports: list[ParityReport] = field(default_factory=list)


def default_precision(fmt: str) -> str:
    return "fp16" if fmt == "tensorrt" else "fp32"


def export_model(model: str | Path, out: str | Path, *, format: str = "onnx", precision: str | None = None,
                 input_spec: InputSpec | None = None, refine: bool = True, labels: bool = False, opset: int = 18,
                 calib_images: str | Path | None = None, calib_method: str = "entropy", calib_max: int = 500,
                 calib_min: int = 4, agreement_threshold: float = FP32_AGREEMENT,
                 reduced_agreement_threshold: float = REDUCED_AGREEMENT, max_miou_drop: float | None = 0.01,
                 eval_dataset: str | None = None, eval_root: str | Path | None = None,
                 eval_limit: int | None = None, workspace_bytes: int = 1 << 30,
                 engine_cache: str | Path | None = None, device: str | None = None, overwrite: bool = False,
                 echo: Echo = print) -> ExportSummary:
    """Export ``model`` (an adapted-model directory, or an exported fp32/INT8 .onnx file) to ``out``.

    ``format`` "onnx" writes an .onnx file (precision fp32 or int8); "tensorrt" builds an engine on this
    machine's GPU (fp32, fp16 or int8) and writes ``out`` plus its ``.json`` sidecar. ``input_spec``: fixed or
    dynamic shapes (default: fixed 512 x 683, a 640 x 480 camera after the runtime's resize); ignored when
    ``model`` is already an .onnx file, which carries its own. INT8 calibration skips unreadable images (with a
    warning naming each) and needs ``min(calib_min, calib_max)`` readable ones; ``eval_dataset`` (a name of
    :data:`ifseg_deploy.evaluation.registry.DATASETS`) adds the mIoU gate ``max_miou_drop``.
    """
    if format not in FORMATS:
        raise ExportUsageError(f"format must be one of {FORMATS}, got {format!r}")
    precision = precision or default_precision(format)
    if precision not in ("fp32", "fp16", "int8"):
        raise ExportUsageError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    if format == "onnx" and precision == "fp16":
        raise ExportUsageError("fp16 is a TensorRT build setting: export --format tensorrt --precision fp16 (the "
                               "engine keeps LayerNorm/Softmax/Pow in fp32), or run the fp32 .onnx with "
                               "onnxruntime's TensorRT provider and fp16=True")
    if precision == "int8" and calib_images is None and not _is_int8_onnx(model):
        raise ExportUsageError("int8 needs --calib-images DIR: a folder of unlabeled, representative photos "
                               "(hundreds; modelopt advises >= 500 for ViT/CNN models)")
    if calib_min < 1 or calib_max < 1:
        raise ExportUsageError(f"calib_min and calib_max must be >= 1, got {calib_min} and {calib_max}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    calib_min = min(calib_min, calib_max)
    dataset = None
    if precision == "int8" and calib_images is not None and not _is_int8_onnx(model):
        # Checked before any export work: a folder with too few images fails in a second, not after minutes.
        from .inputs import CalibrationError, list_images

        n_files = len(list_images(calib_images, calib_max))
        if n_files < calib_min:
            raise CalibrationError(f"{calib_images} holds {n_files} image file(s), fewer than the {calib_min} "
                                   "calibration images required (--calib-min)")
        if eval_dataset is not None:
            from ifseg_deploy.evaluation.registry import get_dataset

            dataset = get_dataset(eval_dataset, eval_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent))
    try:
        return _export(Path(model), out, work, format, precision, input_spec, refine, labels, opset, calib_images,
                       calib_method, calib_max, calib_min, agreement_threshold, reduced_agreement_threshold,
                       max_miou_drop, dataset, eval_limit, workspace_bytes, engine_cache, device, overwrite, echo)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _is_int8_onnx(model: str | Path) -> bool:
    p = Path(model)
    if p.suffix.lower() != ".onnx" or not p.is_file():
        return False
    from .ort_backend import OrtBackend

    return OrtBackend._read_info(p).precision == "int8"


def _export(model: Path, out: Path, work: Path, fmt: str, precision: str, spec: InputSpec | None, refine: bool,
            labels: bool, opset: int, calib_images: Any, calib_method: str, calib_max: int, calib_min: int,
            agree: float, reduced_agree: float, max_miou_drop: float | None, dataset: Any, eval_limit: int | None,
            workspace: int, engine_cache: Any, device: str | None, overwrite: bool,
            echo: Echo) -> ExportSummary:
    from .onnx_export import _commit, export_onnx
    from .ort_backend import OrtBackend

    reports: list[ParityReport] = []
    # 1. the fp32 (or given) ONNX
    if model.is_dir():
        from ifseg_deploy.pretrained import AdaptedModel

        adapted = AdaptedModel.from_pretrained(model)
        if spec is None:
            spec = InputSpec.fixed((512, 683))
            echo("input size: fixed 512x683 (default; choose with --input-size HxW or --dynamic)")
        publish_fp32 = fmt == "onnx" and precision == "fp32"
        onnx_path = out if publish_fp32 else work / "model.fp32.onnx"
        result = export_onnx(adapted, onnx_path, spec, refine=refine, labels=labels, opset=opset,
                             min_agreement=agree, overwrite=overwrite, echo=echo)
        if result.parity is not None:
            reports.append(result.parity)
        if publish_fp32:
            return ExportSummary(out, fmt, precision, result.info, reports)
    elif model.suffix.lower() == ".onnx" and model.is_file():
        onnx_path = model
        if spec is not None:
            echo(f"note: {model} is already exported; its own input shapes are used, not the ones given")
    elif guess_kind(model) == "engine":
        raise ExportUsageError(f"{model} is a TensorRT engine, the end product of export; export takes an "
                               "adapted-model directory or an .onnx file")
    else:
        raise ExportUsageError(f"{model} is neither an adapted-model directory nor an .onnx file")
    info = OrtBackend._read_info(onnx_path)

    # 2. INT8 Q/DQ
    if precision == "int8" and info.precision != "int8":
        onnx_path, info, report = _quantize(onnx_path, info, work, calib_images, calib_method, calib_max,
                                            calib_min, reduced_agree, max_miou_drop, dataset, eval_limit, echo)
        reports.append(report)
        if fmt == "onnx":
            _commit(onnx_path, out)
            echo(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
            return ExportSummary(out, fmt, precision, info, reports)
    elif fmt == "onnx":
        raise ExportUsageError(f"{model} is already a {info.precision} ONNX file; nothing to export to "
                               f"{precision} ONNX")

    # 3. TensorRT engine
    return _engine(onnx_path, info, out, precision, agree if precision == "fp32" else reduced_agree, workspace,
                   engine_cache, device, reports, echo)


def _quantize(fp32_path: Path, info: ModelInfo, work: Path, calib_images: Any, method: str, calib_max: int,
              calib_min: int, min_agreement: float, max_miou_drop: float | None, dataset: Any,
              eval_limit: int | None, echo: Echo) -> tuple[Path, ModelInfo, ParityReport]:
    from .inputs import calibration_batch, list_images, parity_inputs
    from .int8 import check_int8, quantize_int8

    if dataset is not None:  # a model for other classes is refused before the calibration, not after
        from ifseg_deploy.evaluation.evaluate import match_classes

        match_classes(info.categories, dataset.classes, getattr(dataset, "aliases", None),
                      getattr(dataset, "name", "the dataset"))
    files = list_images(calib_images, calib_max)
    echo(f"calibrating INT8 ({method}) on {len(files)} image(s) from {calib_images} at "
         f"{info.input.opt_size[0]}x{info.input.opt_size[1]} on onnxruntime CPU ...")
    batch = calibration_batch(files, info.preprocessing, info.input, min_images=calib_min, warn=echo)
    q = quantize_int8(fp32_path, work / "model.int8.onnx", batch, method=method,
                      calibration_source=f"{len(batch)} image(s) from {Path(calib_images).name}")
    echo(f"quantized {q.quantized_nodes} tensors (Q/DQ); LayerNorm, Softmax and the other precision-sensitive ops "
         "left unquantized")
    inputs, data = parity_inputs(info.input, info.preprocessing, 8, seed=1)
    report = check_int8(fp32_path, q.path, inputs, data=data, min_agreement=min_agreement,
                        max_miou_drop=max_miou_drop, eval_dataset=dataset, eval_limit=eval_limit, echo=echo)
    return q.path, q.info, report


def _engine(onnx_path: Path, info: ModelInfo, out: Path, precision: str, min_agreement: float, workspace: int,
            cache_dir: Any, device: str | None, reports: list[ParityReport], echo: Echo) -> ExportSummary:
    from .engine_cache import EngineCache, sidecar_path, write_engine
    from .inputs import parity_inputs
    from .parity import check, compare, ort_probs
    from .trt_backend import TensorRTBackend, _device_index
    from .trt_build import BuildOptions, build_or_load

    index = _device_index(device)
    options = BuildOptions(precision, workspace)
    cache = EngineCache(cache_dir)
    plan, key, _ = build_or_load(onnx_path, info, options, cache, index, echo=echo)
    info.precision = precision
    backend = TensorRTBackend(plan, info, index, out)
    try:
        inputs, data = parity_inputs(info.input, info.preprocessing, 4)
        report = compare(backend.probs, ort_probs(str(onnx_path)), inputs, f"TensorRT {precision}",
                         "onnxruntime (CPU)", data)
        echo(report.format())
        check(report, min_agreement)
        reports.append(report)
    finally:
        backend.close()
    write_engine(out, plan, key, info.to_props())  # plan and sidecar staged, then renamed: see write_engine
    echo(f"wrote {out} and {sidecar_path(out).name} ({len(plan) / 2**20:.1f} MiB); engine cache: {cache.root}")
    return ExportSummary(out, "tensorrt", precision, info, reports)
