"""INT8 by explicit quantization: Q/DQ ONNX from NVIDIA TensorRT Model Optimizer's ONNX PTQ.

TensorRT's implicit INT8 calibrators are deprecated since TensorRT 10.1; a Q/DQ graph says exactly which
tensors are INT8, runs on ONNX Runtime (so it can be checked here, on a CPU) and builds into a TensorRT engine
unchanged. Calibration uses a folder of unlabeled photos preprocessed as the runtime does (``inputs.py``).

What stays in floating point, and why (ViT PTQ reports: NVIDIA/TensorRT#4084, #2485, mmdeploy#337):

* LayerNormalization, Softmax, Pow, ReduceMean, ReduceL2, Sqrt, TopK: normalisation, attention probabilities
  and the kNN neighbour search lose most from 8-bit inputs; no Q/DQ pair may feed them (checked after
  quantization, and the export fails if one does).
* Add: the transformer's residual adds. Their input Q/DQ would be shared with the LayerNorm that reads the
  same residual tensor, and the decoder's causal mask (-inf) enters through an Add.
* Resize: the bilinear resizing of position tables and relative biases.
* The MatMul of the kNN refinement's cosine similarities (found structurally: it feeds the TopK), so that
  quantization cannot change which neighbours a cell averages over.

Convolutions, the transformer's linear layers, attention matmuls and the class head are quantized.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ifseg_deploy.errors import QualityError
from ifseg_deploy.runtime.model_info import INPUT_NAME, ModelInfo, read_metadata, write_metadata

from .parity import REDUCED_AGREEMENT, ParityReport, check, compare, ort_probs

log = logging.getLogger(__name__)

#: Ops whose inputs must never come from a DequantizeLinear.
PRECISION_SENSITIVE = ("LayerNormalization", "Softmax", "Pow", "ReduceMean", "ReduceL2", "Sqrt", "TopK")
#: Ops left out of quantization (their own inputs get no Q/DQ).
EXCLUDED_OP_TYPES = PRECISION_SENSITIVE + ("Add", "Resize")
CALIBRATION_METHODS = ("entropy", "max")


class QuantizationError(QualityError):
    """Quantization failed or produced a graph that breaks the precision rules."""


def producers(model: Any) -> dict[str, Any]:
    return {o: n for n in model.graph.node for o in n.output}


def dq_fed_sensitive_nodes(model: Any, op_types: Sequence[str] = PRECISION_SENSITIVE) -> list[str]:
    """Names of ``op_types`` nodes that take an input straight from a DequantizeLinear (should be empty)."""
    made_by = producers(model)
    bad = []
    for node in model.graph.node:
        if node.op_type in op_types:
            for name in node.input:
                src = made_by.get(name)
                if src is not None and src.op_type == "DequantizeLinear":
                    bad.append(f"{node.op_type} {node.name} <- {src.name}")
    return bad


def similarity_matmuls(model: Any, max_hops: int = 4) -> list[str]:
    """MatMul nodes within ``max_hops`` upstream of a TopK: the kNN refinement's cosine similarity."""
    made_by = producers(model)
    found: list[str] = []
    frontier = [n for n in model.graph.node if n.op_type == "TopK"]
    for _ in range(max_hops):
        nxt = []
        for node in frontier:
            for name in node.input[:1]:  # the scores, not k
                src = made_by.get(name)
                if src is None:
                    continue
                if src.op_type == "MatMul":
                    found.append(src.name)
                else:
                    nxt.append(src)
        frontier = nxt
    return sorted(set(found))


@dataclass
class QuantizeResult:
    path: Path
    info: ModelInfo
    images: int
    quantized_nodes: int
    report: ParityReport | None = None


def quantize_int8(fp32_onnx: str | Path, out: str | Path, calibration: np.ndarray, *, method: str = "entropy",
                  calibration_eps: Sequence[str] = ("cpu",), calibration_source: str = "") -> QuantizeResult:
    """Write the Q/DQ INT8 version of an exported fp32 model to ``out`` (a temporary path: the caller checks
    it before publishing). ``calibration``: (N, 3, H, W) normalised images at one accepted size."""
    import onnx
    from modelopt.onnx.quantization import quantize

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    fp32_onnx, out = Path(fp32_onnx), Path(out)
    src = onnx.load(str(fp32_onnx))
    info = read_metadata(src, str(fp32_onnx))
    if info.precision != "fp32":
        raise QuantizationError(f"{fp32_onnx} is already {info.precision}; quantize the fp32 export")
    n, _, h, w = calibration.shape
    if not info.input.accepts(h, w):
        raise QuantizationError(f"calibration images are {h}x{w}, outside what {fp32_onnx} accepts "
                                f"({info.input.describe()})")
    nodes_to_exclude = [re.escape(name) + "$" for name in similarity_matmuls(src)]
    with _quiet():
        quantize(
            str(fp32_onnx), quantize_mode="int8", calibration_data=np.ascontiguousarray(calibration, np.float32),
            calibration_method=method, calibration_shapes=f"{INPUT_NAME}:1x3x{h}x{w}",
            calibration_eps=list(calibration_eps), op_types_to_exclude=list(EXCLUDED_OP_TYPES),
            nodes_to_exclude=nodes_to_exclude or None,
            # The rest of the graph stays fp32 in the file: ONNX Runtime checks it as is, and TensorRT's FP16
            # flag (with the fp32 pins of fp16.py) picks fp16 where it is safe.
            high_precision_dtype="fp32", output_path=str(out), log_level="ERROR",
        )
    qmodel = onnx.load(str(out))
    bad = dq_fed_sensitive_nodes(qmodel)
    if bad:
        raise QuantizationError("quantization put Q/DQ in front of precision-sensitive ops: " + "; ".join(bad[:8]))
    n_q = sum(1 for node in qmodel.graph.node if node.op_type == "QuantizeLinear")
    if n_q == 0:
        raise QuantizationError("modelopt quantized nothing (no QuantizeLinear in the result)")
    info.precision = "int8"
    info.opset = next((o.version for o in qmodel.opset_import if o.domain in ("", "ai.onnx")), info.opset)
    info.extra = {**info.extra, "calibration": {"method": method, "images": int(n), "size": [h, w],
                                                "source": calibration_source, "tool": _modelopt_version(),
                                                "excluded_op_types": list(EXCLUDED_OP_TYPES)}}
    write_metadata(qmodel, info)
    onnx.checker.check_model(qmodel)
    out.write_bytes(qmodel.SerializeToString())
    return QuantizeResult(out, info, int(n), n_q)


def check_int8(fp32_onnx: str | Path, int8_onnx: str | Path, inputs: Sequence[np.ndarray], *, data: str = "",
               min_agreement: float = REDUCED_AGREEMENT, max_miou_drop: float | None = None,
               eval_dataset: Any = None, eval_limit: int | None = None,
               echo: Callable[[str], None] = log.info) -> ParityReport:
    """ONNX Runtime (CPU) INT8 against fp32: label agreement over ``inputs`` and, with a labelled
    ``eval_dataset``, the mIoU of both through the Segmenter; gated by ``min_agreement`` / ``max_miou_drop``."""
    report = compare(ort_probs(str(int8_onnx)), ort_probs(str(fp32_onnx)), inputs, "onnxruntime INT8 (CPU)",
                     "onnxruntime fp32 (CPU)", data)
    if eval_dataset is not None:
        report.miou = {"reference": _miou(fp32_onnx, eval_dataset, eval_limit),
                       "candidate": _miou(int8_onnx, eval_dataset, eval_limit)}
    echo(report.format())
    return check(report, min_agreement, max_miou_drop)


def _miou(path: str | Path, dataset: Any, limit: int | None) -> float | None:
    """mIoU of the exported model on ``dataset``; None where it is undefined (no labelled pixel to score)."""
    from ifseg_deploy.evaluation.evaluate import evaluate
    from ifseg_deploy.runtime.backends.onnxruntime import OrtBackend
    from ifseg_deploy.runtime.segmenter import Segmenter

    with Segmenter(OrtBackend.from_file(path, providers=["CPUExecutionProvider"])) as seg:
        value = evaluate(seg, dataset, limit=limit, progress=False)["mIoU"]
    return None if value is None or not math.isfinite(value) else float(value)


def _modelopt_version() -> str:
    try:
        from importlib.metadata import version

        return f"nvidia-modelopt {version('nvidia-modelopt')}"
    except Exception:  # noqa: BLE001 - informational only
        return "nvidia-modelopt"


@contextlib.contextmanager
def _quiet() -> Any:
    """modelopt and ORT's calibrator print progress bars and per-tensor logs; keep the console readable."""
    loggers = [logging.getLogger(n) for n in ("modelopt", "root", "onnxruntime")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, \
                contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

