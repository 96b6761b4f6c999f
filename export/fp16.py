"""FP16: an ONNX file whose types say what runs in fp16 and what stays fp32 (for TensorRT's strongly typed build).

FP16 engines of ViTs fail in a known way: LayerNorm's sum of squares and the attention softmax overflow or lose
their small terms, and the output collapses (NVIDIA/TensorRT#4723, #3893, #2564, #1262; microsoft/onnxruntime
#13639). Layer precision constraints were the old fix; they were reported to overflow in TensorRT 10.0, and
TensorRT now recommends strongly typed networks, whose types come from the graph. So the choice is made here, in
the ONNX file, with TensorRT Model Optimizer's ONNX AutoCast, and the file itself is checked on ONNX Runtime:

* fp32, through explicit Cast nodes: ``LayerNormalization``, ``Softmax``, ``Pow``, ``ReduceMean``, ``ReduceL2``,
  ``Sqrt``, ``TopK`` (normalisation, attention probabilities, decomposed norms), and the kNN refinement from the
  raw features on: their normalisation, the cosine-similarity product (found structurally, as for INT8: the
  MatMul that feeds the TopK), the top-k and the 25 averaging rounds after it, so that fp16 rounding can neither
  swap neighbours nor accumulate over the rounds (the PyTorch precision option keeps the same parts in fp32);
* fp16: everything else, weights stored fp16 (the file is about half the fp32 one): convolutions, the linear
  layers, the attention products, residual adds;
* the graph's input (pixels) and outputs stay fp32 / int64, so the runtime feeds and reads it as before.

The pins of the older weakly typed build (:func:`keep_fp32`) are still what an INT8 (Q/DQ) engine uses.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ifseg_deploy.errors import BackendError, QualityError
from ifseg_deploy.runtime.model_info import ModelInfo, read_metadata, write_metadata

from .parity import ParityReport, check, compare, ort_probs

#: ONNX op types kept in fp32.
FP32_OP_TYPES = ("LayerNormalization", "Softmax", "Pow", "ReduceMean", "ReduceL2", "Sqrt", "TopK")
#: TensorRT layer types (``trt.LayerType`` names) that only ever implement one of those ops.
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "TOPK")
#: (layer type, operation) pairs: ElementWise POW, Unary SQRT, Reduce AVG (a decomposed mean).
FP32_LAYER_OPS = (("ELEMENTWISE", "POW"), ("UNARY", "SQRT"), ("REDUCE", "AVG"))
#: label agreement of the fp16 file with the fp32 one, required before it is written (issue 12: >= 99%)
FP16_AGREEMENT = 0.99
#: changes whenever the conversion recipe does: part of the TensorRT engine key of engines built from fp32 files
RECIPE_VERSION = 1
#: ops that do the arithmetic; the file is only an fp16 model when they run on fp16 tensors
COMPUTE_OP_TYPES = ("MatMul", "Gemm", "Conv", "Einsum")
_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT / FLOAT16


class Fp16Error(QualityError):
    """The FP16 conversion failed or produced something that is not an fp16 model."""


class Fp16MissingError(BackendError):
    """The FP16 conversion's library (TensorRT Model Optimizer) is not installed."""


def fp32_node_names(model: Any, op_types: Iterable[str] = FP32_OP_TYPES) -> set[str]:
    """Names of the ``onnx.ModelProto``'s nodes of ``op_types``."""
    kinds = set(op_types)
    return {n.name for n in model.graph.node if n.op_type in kinds and n.name}


def keep_fp32(layer_type: str, operation: str | None, layer_name: str, fp32_nodes: set[str]) -> bool:
    """Whether a TensorRT layer (type name, operation name or None, layer name) of a weakly typed (INT8) build is
    pinned to fp32.

    By kind for the layers above; otherwise by name, because TensorRT's ONNX parser names a layer after the
    node it came from (a node that becomes several layers gives names that start with the node's name). The
    prefix match errs on the side of fp32: an extra pinned layer costs a little speed, a missed one accuracy.
    """
    if layer_type in FP32_LAYER_TYPES or (layer_type, operation) in FP32_LAYER_OPS:
        return True
    if layer_name in fp32_nodes:
        return True
    return any(layer_name.startswith(node + "_") or f"[{node}]" in layer_name for node in fp32_nodes)


def refinement_nodes(model: Any) -> list[str]:
    """Names of the kNN refinement's nodes: from the raw features' normalisation to the outputs.

    Upstream of each TopK's scores: the float path back to the tensor a ReduceL2 normalises (the cosine
    similarity, the normalisation, the lifted diagonal); integer branches (shapes) and the feature tensor's own
    producer are not followed, so the ResNet is never reached. Downstream: everything the TopK feeds (the
    averaging rounds and the outputs). A graph exported without refinement has no TopK and gets nothing here.
    """
    import onnx

    typed = onnx.shape_inference.infer_shapes(model)
    dtype = _dtypes(typed)
    nodes = list(typed.graph.node)
    made_by = {o: n for n in nodes for o in n.output}
    used_by: dict[str, list[Any]] = {}
    for n in nodes:
        for name in n.input:
            used_by.setdefault(name, []).append(n)
    features = {n.input[0] for n in nodes if n.op_type == "ReduceL2"}
    topks = [n for n in nodes if n.op_type == "TopK"]
    found: set[str] = set()

    stack = [t.input[0] for t in topks]
    while stack:  # upstream along float tensors, stopping at the features
        tensor = stack.pop()
        src = made_by.get(tensor)
        if tensor in features or src is None or src.name in found or dtype.get(tensor) != _FLOAT:
            continue
        found.add(src.name)
        stack.extend(src.input)
    queue = list(topks)
    while queue:  # downstream of the top-k
        node = queue.pop()
        if node.name in found and node.op_type != "TopK":
            continue
        found.add(node.name)
        queue.extend(c for o in node.output for c in used_by.get(o, []))
    return sorted(found)


def _dtypes(model: Any) -> dict[str, int]:
    """Tensor name -> ONNX element type, from the (type-inferred) graph and its initializers."""
    dtype = {v.name: v.type.tensor_type.elem_type for v in
             [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    dtype.update({i.name: i.data_type for i in model.graph.initializer})
    return dtype


def compute_dtypes(model: Any) -> dict[str, dict[str, int]]:
    """For each of :data:`COMPUTE_OP_TYPES`: how many nodes take fp16 and how many fp32 data (first input)."""
    dtype = _dtypes(model)
    counts: dict[str, dict[str, int]] = {}
    for n in model.graph.node:
        if n.op_type in COMPUTE_OP_TYPES:
            kind = {_FLOAT16: "fp16", _FLOAT: "fp32"}.get(dtype.get(n.input[0], 0), "other")
            row = counts.setdefault(n.op_type, {"fp16": 0, "fp32": 0, "other": 0})
            row[kind] += 1
    return counts


@dataclass
class Fp16Result:
    path: Path
    info: ModelInfo
    fp16_nodes: int
    fp32_nodes: int
    compute: dict[str, dict[str, int]]
    report: ParityReport | None = None


def convert_fp16(fp32_onnx: str | Path, out: str | Path, *,
                 op_types: Sequence[str] = FP32_OP_TYPES) -> Fp16Result:
    """Write the FP16 version of an exported fp32 model to ``out`` (a temporary path: the caller checks it before
    publishing it). ``op_types`` stay fp32, and so does the refinement (:func:`refinement_nodes`)."""
    import onnx

    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as e:
        raise Fp16MissingError(f"the FP16 conversion needs nvidia-modelopt[onnx] ({e.name} is missing): pip "
                               "install 'ifseg-deploy[int8]'") from None
    fp32_onnx, out = Path(fp32_onnx), Path(out)
    src = onnx.load(str(fp32_onnx), load_external_data=False)
    info = read_metadata(src, str(fp32_onnx))
    if info.precision != "fp32":
        raise Fp16Error(f"{fp32_onnx} is already {info.precision}; convert the fp32 export")
    keep = refinement_nodes(src)
    with _quiet():
        # data_max=inf: no reference run on random data choosing more fp32 nodes; what stays fp32 follows from
        # the graph alone (the same file every time), and the agreement check judges it. Initializers beyond
        # fp16's range (a -inf-like mask) still keep their node in fp32 (AutoCast's init_max default).
        model = convert_to_mixed_precision(str(fp32_onnx), "fp16", op_types_to_exclude=list(op_types),
                                           nodes_to_exclude=[re.escape(n) + "$" for n in keep] or None,
                                           keep_io_types=True, data_max=np.inf)
    compute = compute_dtypes(model)
    if not any(row["fp16"] for row in compute.values()):
        raise Fp16Error(f"AutoCast left every MatMul/Gemm/Conv in fp32 ({compute}): not an fp16 model")
    dtype = _dtypes(model)
    writes = [{dtype.get(o) for o in n.output} for n in model.graph.node if n.op_type != "Cast"]
    n16, n32 = sum(_FLOAT16 in w for w in writes), sum(_FLOAT in w for w in writes)
    info.precision = "fp16"
    info.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), info.opset)
    info.extra = {**info.extra, "fp16": {"tool": _tool(), "recipe": RECIPE_VERSION, "fp32_op_types": list(op_types),
                                         "fp32_refinement_nodes": len(keep), "io": "fp32"}}
    write_metadata(model, info)
    onnx.checker.check_model(model)
    out.write_bytes(model.SerializeToString())
    return Fp16Result(out, info, n16, n32, compute)


def check_fp16(fp32_onnx: str | Path, fp16_onnx: str | Path, inputs: Sequence[np.ndarray], *, data: str = "",
               min_agreement: float = FP16_AGREEMENT,
               echo: Callable[[str], None] = print) -> ParityReport:
    """ONNX Runtime (CPU) fp16 file against the fp32 one: label agreement over ``inputs``, gated. A file ONNX
    Runtime cannot run is not published either (:class:`Fp16Error`): it could not be checked."""
    from ifseg_deploy.runtime.model_info import read_info
    from ifseg_deploy.runtime.open_vocabulary import VocabularyFeeds

    info = read_info(fp32_onnx)
    # an open-vocabulary file is checked on its own names (the vocabulary inputs only change the class table)
    feeds = VocabularyFeeds.from_info(info, str(fp32_onnx))(info.categories) if info.open_vocabulary else None
    try:
        report = compare(ort_probs(str(fp16_onnx), feeds=feeds), ort_probs(str(fp32_onnx), feeds=feeds), inputs,
                         "onnxruntime fp16 (CPU)", "onnxruntime fp32 (CPU)", data)
    except Exception as e:
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        raise Fp16Error(f"ONNX Runtime (CPU) cannot run the FP16 file, so it cannot be checked: "
                        f"{str(e).strip()[:500]}") from None
    echo(report.format())
    return check(report, min_agreement)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """AutoCast logs every node it skips at INFO on its own loggers (levels set, so the parent's do not count)."""
    from .int8 import _quiet as quiet_modelopt

    loggers = [logging.getLogger(n) for n in ("modelopt.onnx", "modelopt.onnx.autocast")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with quiet_modelopt():
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _tool() -> str:
    try:
        from importlib.metadata import version

        return f"nvidia-modelopt {version('nvidia-modelopt')} (modelopt.onnx.autocast)"
    except Exception:  # noqa: BLE001 - informational only
        return "nvidia-modelopt (modelopt.onnx.autocast)"
