"""The export stage as one call: adapted model (or .onnx) -> ONNX fp32 / INT8 Q/DQ ONNX / TensorRT engine.

``ifseg-deploy export`` is a thin layer over :func:`export_model`. Every product is checked before it is
published at ``out`` (written atomically, so a failed export leaves nothing there):

* fp32 ONNX: ONNX Runtime against PyTorch, label agreement >= ``agreement_threshold`` (99.9 %);
* fp16 ONNX: ONNX Runtime fp16 against fp32, agreement >= ``fp16_agreement_threshold`` (99 %);
* INT8 ONNX: ONNX Runtime INT8 against fp32, agreement >= ``reduced_agreement_threshold`` and, with a labelled
  set, an mIoU drop of at most ``max_miou_drop``;
* TensorRT engine: the engine against the ONNX file it was built from, with the threshold of its precision.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ifseg_deploy.artifacts import guess_kind
from ifseg_deploy.errors import UsageError
from ifseg_deploy.runtime.input_spec import DEFAULT_OPT, InputSpec, format_size
from ifseg_deploy.runtime.model_info import ModelInfo, read_info
from ifseg_deploy.runtime.registry import DYNAMIC_INT8, PRECISIONS

from .fp16 import FP16_AGREEMENT
from .onnx_export import DEFAULT_OPSET
from .parity import FP32_AGREEMENT, REDUCED_AGREEMENT, ParityError, ParityReport

FORMATS = ("onnx", "tensorrt")
Echo = Callable[[str], None]


class ExportUsageError(UsageError):
    """An impossible combination of options (the message says what to do instead)."""


@dataclass
class ExportOptions:
    """Everything :func:`export_model` can be told; the CLI's options map onto these fields one to one."""

    #: "onnx" writes an .onnx file (fp32 or int8); "tensorrt" builds an engine on this machine's GPU
    format: str = "onnx"
    #: fp32 / fp16 / int8; None: fp32 for onnx, fp16 for tensorrt
    precision: str | None = None
    #: fixed or dynamic input shapes; None: fixed 512 x 683 (a 640 x 480 camera after the runtime's resize).
    #: Ignored for an .onnx input, which carries its own.
    input_spec: InputSpec | None = None
    refine: bool = True
    labels: bool = False
    opset: int = DEFAULT_OPSET
    #: INT8: a folder of unlabeled photos; unreadable files are skipped (named), min(calib_min, calib_max) needed
    calib_images: str | Path | None = None
    calib_method: str = "entropy"
    calib_max: int = 500
    calib_min: int = 4
    agreement_threshold: float = FP32_AGREEMENT
    reduced_agreement_threshold: float = REDUCED_AGREEMENT
    #: fp16 (the ONNX file, and a TensorRT fp16 engine against it)
    fp16_agreement_threshold: float = FP16_AGREEMENT
    #: INT8 with ``eval_dataset``: the largest allowed mIoU loss (0.01 = 1 point)
    max_miou_drop: float | None = 0.01
    #: a name of :data:`ifseg_deploy.evaluation.registry.DATASETS`, for the INT8 mIoU gate
    eval_dataset: str | None = None
    eval_root: str | Path | None = None
    eval_limit: int | None = None
    workspace_bytes: int = 1 << 30
    engine_cache: str | Path | None = None
    device: str | None = None
    overwrite: bool = False
    #: the graph takes the vocabulary (prompt, names) as input, within these bounds (None: the defaults of
    #: :mod:`.open_vocabulary`); needs a model adapted with ``--vocabulary``. Ignored for an .onnx input.
    open_vocabulary: bool = False
    max_names: int | None = None
    max_name_tokens: int | None = None
    max_prompt_tokens: int | None = None

    def checked(self, model: str | Path) -> ExportOptions:
        """A copy with the defaults filled in; :class:`ExportUsageError` for combinations that cannot work."""
        if self.format not in FORMATS:
            raise ExportUsageError(f"format must be one of {FORMATS}, got {self.format!r}")
        precision = self.precision or ("fp16" if self.format == "tensorrt" else "fp32")
        if precision not in PRECISIONS:
            raise ExportUsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == DYNAMIC_INT8 and self.format != "onnx":
            raise ExportUsageError(f"{DYNAMIC_INT8} is ONNX Runtime's CPU format, which TensorRT does not run: "
                                   "export --format onnx --precision int8-dynamic, or build an engine from the "
                                   "Q/DQ export (--precision int8)")
        if precision == "int8" and self.calib_images is None and not _is_int8_onnx(model):
            raise ExportUsageError("int8 needs --calib-images DIR: a folder of unlabeled, representative photos "
                                   "(hundreds; modelopt advises >= 500 for ViT/CNN models)")
        if precision in ("int8", DYNAMIC_INT8) and (self.open_vocabulary or _is_open_vocabulary_onnx(model)):
            raise ExportUsageError(f"{precision} of an open-vocabulary graph is not supported: its calibration and "
                                   "accuracy gate feed pixels only, not the vocabulary inputs. Export it in fp32 "
                                   "(ONNX Runtime) or build a TensorRT fp16 engine from the fp32 file")
        bounds = (self.max_names, self.max_name_tokens, self.max_prompt_tokens)
        if not self.open_vocabulary and any(b is not None for b in bounds):
            raise ExportUsageError("--max-names/--max-name-tokens/--max-prompt-tokens go with --open-vocabulary")
        if any(b is not None and b < 1 for b in bounds):
            raise ExportUsageError(f"vocabulary bounds must be >= 1, got {bounds}")
        if self.calib_min < 1 or self.calib_max < 1:
            raise ExportUsageError(f"calib_min and calib_max must be >= 1, got {self.calib_min} and "
                                   f"{self.calib_max}")
        return dataclasses.replace(self, precision=precision, calib_min=min(self.calib_min, self.calib_max))


@dataclass
class ExportSummary:
    path: Path
    format: str
    precision: str
    info: ModelInfo
    reports: list[ParityReport] = field(default_factory=list)


def export_model(model: str | Path, out: str | Path, options: ExportOptions | None = None, *, echo: Echo = print,
                 **fields: Any) -> ExportSummary:
    """Export ``model`` (an adapted-model directory, or an exported fp32/INT8 .onnx file) to ``out``.

    ``options`` (:class:`ExportOptions`) say what to build; keyword ``fields`` override its fields (the earlier
    keyword-only signature, ``export_model(m, out, format="onnx", precision="int8", ...)``, keeps working).
    Every product is checked before it is published at ``out``; a failed export leaves nothing there.
    """
    unknown = set(fields) - {f.name for f in dataclasses.fields(ExportOptions)}
    if unknown:
        raise TypeError(f"export_model() got unexpected options {sorted(unknown)}")
    opts = dataclasses.replace(options or ExportOptions(), **fields).checked(model)
    out = Path(out)
    if out.exists() and not opts.overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    dataset = None
    if opts.precision == "int8" and opts.calib_images is not None and not _is_int8_onnx(model):
        # Checked before any export work: a folder with too few images fails in a second, not after minutes.
        from .inputs import CalibrationError, list_images

        n_files = len(list_images(opts.calib_images, opts.calib_max))
        if n_files < opts.calib_min:
            raise CalibrationError(f"{opts.calib_images} holds {n_files} image file(s), fewer than the "
                                   f"{opts.calib_min} calibration images required (--calib-min)")
    if opts.eval_dataset is not None and opts.precision in ("int8", DYNAMIC_INT8):
        from ifseg_deploy.evaluation.registry import get_dataset

        dataset = get_dataset(opts.eval_dataset, opts.eval_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=out.parent))
    try:
        return _export(Path(model), out, work, opts, dataset, echo)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _is_open_vocabulary_onnx(model: str | Path) -> bool:
    p = Path(model)
    return p.suffix.lower() == ".onnx" and p.is_file() and read_info(p).open_vocabulary


def _is_int8_onnx(model: str | Path) -> bool:
    p = Path(model)
    if p.suffix.lower() != ".onnx" or not p.is_file():
        return False
    return read_info(p).precision == "int8"


def _export(model: Path, out: Path, work: Path, opts: ExportOptions, dataset: Any, echo: Echo) -> ExportSummary:
    from ifseg_deploy.atomic import publish

    from .onnx_export import export_onnx

    reports: list[ParityReport] = []
    precision = str(opts.precision)
    # 1. the fp32 (or given) ONNX
    if model.is_dir():
        from ifseg_deploy.model_dir import AdaptedModel

        adapted = AdaptedModel.from_pretrained(model)
        vocabulary = _vocabulary_bounds(adapted, model, opts) if opts.open_vocabulary else None
        spec = opts.input_spec
        if spec is None:
            spec = InputSpec.fixed(DEFAULT_OPT)
            echo(f"input size: fixed {format_size(DEFAULT_OPT)} (default; choose with --input-size HxW or --dynamic)")
        publish_fp32 = opts.format == "onnx" and precision == "fp32"
        onnx_path = out if publish_fp32 else work / "model.fp32.onnx"
        result = export_onnx(adapted, onnx_path, spec, refine=opts.refine, labels=opts.labels, opset=opts.opset,
                             min_agreement=opts.agreement_threshold, overwrite=opts.overwrite, echo=echo,
                             vocabulary=vocabulary)
        if result.parity is not None:
            reports.append(result.parity)
        if publish_fp32:
            return ExportSummary(out, opts.format, precision, result.info, reports)
    elif model.suffix.lower() == ".onnx" and model.is_file():
        onnx_path = model
        if opts.open_vocabulary and not read_info(model).open_vocabulary:
            raise ExportUsageError(f"{model} is a fixed-vocabulary export; --open-vocabulary needs the adapted-model "
                                   "directory (the graph is traced anew)")
        if opts.input_spec is not None:
            echo(f"note: {model} is already exported; its own input shapes are used, not the ones given")
    elif guess_kind(model) == "engine":
        raise ExportUsageError(f"{model} is a TensorRT engine, the end product of export; export takes an "
                               "adapted-model directory or an .onnx file")
    else:
        raise ExportUsageError(f"{model} is neither an adapted-model directory nor an .onnx file")
    info = read_info(onnx_path)

    # 2. INT8 (Q/DQ, or ONNX Runtime's dynamic quantization) or FP16, each gated against the fp32 file
    if precision in ("int8", DYNAMIC_INT8) and info.precision == "fp32":
        onnx_path, info = _int8(onnx_path, info, work, opts, dataset, reports, echo)
    elif precision == "fp16" and info.precision == "fp32":
        # the types in the file (TensorRT builds it strongly typed), checked here on ONNX Runtime
        onnx_path, info = _fp16(onnx_path, info, work, opts, reports, echo)
    elif opts.format == "onnx":
        raise ExportUsageError(f"{model} is already a {info.precision} ONNX file; nothing to export to "
                               f"{precision} ONNX")
    if opts.format == "onnx":
        publish(onnx_path, out)
        echo(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
        return ExportSummary(out, opts.format, precision, info, reports)

    # 3. TensorRT engine
    return _engine(onnx_path, info, out, opts, reports, echo)


def _vocabulary_bounds(adapted: Any, model: Path, opts: ExportOptions) -> Any:
    """The open-vocabulary graph's bounds; a model adapted per vocabulary is refused (its class head and prompt
    were trained for its own names only: new names would be guesses, which its torch backend refuses too)."""
    from .open_vocabulary import vocabulary_bounds

    if not adapted.open_vocabulary:
        raise ExportUsageError(f"{model} was adapted per vocabulary (for its {len(adapted.categories)} names only), "
                               "so a graph taking any names would only guess at new ones; export it without "
                               "--open-vocabulary (a subset of its names still works at run time), or adapt with "
                               "`--vocabulary`")
    return vocabulary_bounds(adapted, opts.max_names, opts.max_name_tokens, opts.max_prompt_tokens)


def _int8(fp32_path: Path, info: ModelInfo, work: Path, opts: ExportOptions, dataset: Any,
          reports: list[ParityReport], echo: Echo) -> tuple[Path, ModelInfo]:
    precision = str(opts.precision)
    if dataset is not None:  # a model for other classes is refused before quantizing, not after
        from ifseg_deploy.evaluation.evaluate import match_classes

        match_classes(info.categories, dataset.classes, getattr(dataset, "aliases", None),
                      getattr(dataset, "name", "the dataset"))
    quantize = _quantize if precision == "int8" else _quantize_dynamic
    q_path, q_info = quantize(fp32_path, info, work, opts, echo)
    try:
        reports.append(_gate(fp32_path, q_path, info, opts, dataset, echo))
    except ParityError as e:
        if precision != DYNAMIC_INT8:
            raise
        # int8 convolution weights are the smaller file but cost the most accuracy; what ships is gated
        echo(f"with int8 convolution weights: {str(e).splitlines()[0]}; trying again with float convolution "
             "weights")
        q_path, q_info = _quantize_dynamic(fp32_path, info, work, opts, echo, int8_convs=False)
        reports.append(_gate(fp32_path, q_path, info, opts, dataset, echo))
    return q_path, q_info


def _quantize(fp32_path: Path, info: ModelInfo, work: Path, opts: ExportOptions,
              echo: Echo) -> tuple[Path, ModelInfo]:
    from .inputs import calibration_batch, list_images
    from .int8 import quantize_int8

    files = list_images(opts.calib_images, opts.calib_max)
    echo(f"calibrating INT8 ({opts.calib_method}) on {len(files)} image(s) from {opts.calib_images} at "
         f"{format_size(info.input.opt_size)} on onnxruntime CPU ...")
    batch = calibration_batch(files, info.preprocessing, info.input, min_images=opts.calib_min, warn=echo)
    q = quantize_int8(fp32_path, work / "model.int8.onnx", batch, method=opts.calib_method,
                      calibration_source=f"{len(batch)} image(s) from {Path(str(opts.calib_images)).name}")
    echo(f"quantized {q.quantized_nodes} tensors (Q/DQ); LayerNorm, Softmax and the other precision-sensitive ops "
         "left unquantized")
    return q.path, q.info


def _quantize_dynamic(fp32_path: Path, info: ModelInfo, work: Path, opts: ExportOptions,
                      echo: Echo, int8_convs: bool = True) -> tuple[Path, ModelInfo]:
    from .int8_dynamic import quantize_dynamic_int8

    q = quantize_dynamic_int8(fp32_path, work / "model.int8-dynamic.onnx", int8_convs=int8_convs)
    convs = (f"stored {q.conv_weights} ResNet convolution weights as int8 (computed in float)" if int8_convs
             else "kept the ResNet's convolution weights in float")
    echo(f"quantized {q.quantized_nodes} MatMul weights to int8 (activations per call) and {convs}; attention "
         "products and the refinement's similarity stay fp32")
    return q.path, q.info


def _fp16(fp32_path: Path, info: ModelInfo, work: Path, opts: ExportOptions, reports: list[ParityReport],
          echo: Echo) -> tuple[Path, ModelInfo]:
    from .fp16 import check_fp16, convert_fp16
    from .inputs import parity_inputs

    result = convert_fp16(fp32_path, work / "model.fp16.onnx")
    counts = ", ".join(f"{op} {row['fp16']}/{sum(row.values())}" for op, row in result.compute.items())
    echo(f"converted to fp16 ({counts} on fp16 tensors); LayerNorm, Softmax, Pow, ReduceMean/L2, Sqrt and the "
         f"kNN refinement stay fp32 through Cast nodes; {fp32_path.stat().st_size / 2**20:.1f} -> "
         f"{result.path.stat().st_size / 2**20:.1f} MiB")
    inputs, data = parity_inputs(info.input, info.preprocessing, 8, seed=1)
    reports.append(check_fp16(fp32_path, result.path, inputs, data=data,
                              min_agreement=opts.fp16_agreement_threshold, echo=echo))
    return result.path, result.info


def _gate(fp32_path: Path, int8_path: Path, info: ModelInfo, opts: ExportOptions, dataset: Any,
          echo: Echo) -> ParityReport:
    """Either INT8 file against its fp32 source: label agreement, and the mIoU drop on ``dataset`` when given."""
    from .inputs import parity_inputs
    from .int8 import check_int8

    inputs, data = parity_inputs(info.input, info.preprocessing, 8, seed=1)
    return check_int8(fp32_path, int8_path, inputs, data=data, min_agreement=opts.reduced_agreement_threshold,
                      max_miou_drop=opts.max_miou_drop, eval_dataset=dataset, eval_limit=opts.eval_limit, echo=echo)


def _engine(onnx_path: Path, info: ModelInfo, out: Path, opts: ExportOptions, reports: list[ParityReport],
            echo: Echo) -> ExportSummary:
    from ifseg_deploy.devices import cuda_index
    from ifseg_deploy.runtime.backends.tensorrt import TensorRTBackend
    from ifseg_deploy.runtime.engine_file import sidecar_path, write_engine

    from .engine_cache import EngineCache
    from .inputs import parity_inputs
    from .parity import check, compare, ort_probs
    from .trt_build import BuildOptions, build_or_load

    precision = str(opts.precision)
    min_agreement = {"fp32": opts.agreement_threshold,
                     "fp16": opts.fp16_agreement_threshold}.get(precision, opts.reduced_agreement_threshold)
    index = cuda_index(opts.device)
    cache = EngineCache(opts.engine_cache)
    plan, key, _ = build_or_load(onnx_path, info, BuildOptions(precision, opts.workspace_bytes), cache, index,
                                 echo=echo)
    info.precision = precision
    backend = TensorRTBackend(plan, info, index, out)
    try:
        inputs, data = parity_inputs(info.input, info.preprocessing, 4)
        # an open-vocabulary engine runs its default vocabulary (the file's categories): the ONNX gets the same
        reference = ort_probs(str(onnx_path), feeds=backend.vocabulary_feeds)
        report = compare(backend.probs, reference, inputs, f"TensorRT {precision}", "onnxruntime (CPU)", data)
        echo(report.format())
        check(report, min_agreement)
        reports.append(report)
    finally:
        backend.close()
    write_engine(out, plan, key, info.to_props())  # plan and sidecar staged, then renamed: see write_engine
    echo(f"wrote {out} and {sidecar_path(out).name} ({len(plan) / 2**20:.1f} MiB); engine cache: {cache.root}")
    return ExportSummary(out, "tensorrt", precision, info, reports)
