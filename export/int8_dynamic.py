"""INT8 for ONNX Runtime on a CPU: ONNX Runtime's dynamic quantization of the transformer's weights.

The Q/DQ INT8 of :mod:`.int8` is laid out for TensorRT; ONNX Runtime's CPU provider runs it no faster than fp32.
Dynamic quantization stores the MatMul/Gemm weights as int8 (per tensor) and quantizes each activation on the
fly, so the products run on ONNX Runtime's integer kernels (VNNI/AMX) and no calibration set is needed. Left
in float, by measurement on the trained synthetic-world model: the ResNet's convolutions (with them quantized
too, label agreement with fp32 fell from 98.9% to 95.3%) and the kNN refinement's similarity product (whose
top-k picks neighbours). TensorRT does not run this format (MatMulInteger, DynamicQuantizeLinear).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ifseg_deploy.runtime.model_info import ModelInfo, read_info, read_metadata, write_metadata
from ifseg_deploy.runtime.registry import DYNAMIC_INT8

from .int8 import QuantizationError, similarity_matmuls

QUANTIZED_OP_TYPES = ("MatMul", "Gemm")


@dataclass
class DynamicQuantizeResult:
    path: Path
    info: ModelInfo
    quantized_nodes: int


def quantize_dynamic_int8(fp32_onnx: str | Path, out: str | Path) -> DynamicQuantizeResult:
    """Write the dynamic-INT8 version of an exported fp32 model to ``out`` (a temporary path: the caller checks
    it before publishing)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_onnx, out = Path(fp32_onnx), Path(out)
    info = read_info(fp32_onnx)
    if info.precision != "fp32":
        raise QuantizationError(f"{fp32_onnx} is already {info.precision}; quantize the fp32 export")
    exclude = similarity_matmuls(onnx.load(str(fp32_onnx), load_external_data=False))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to run its pre-processing first, printed for every model
    try:
        # MatMulConstBOnly: only products with a constant (weight) operand; activation x activation products
        # (attention) stay float.
        quantize_dynamic(str(fp32_onnx), str(out), op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                         weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                         extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    model = onnx.load(str(out))
    n = sum(1 for node in model.graph.node if node.op_type == "MatMulInteger")
    if n == 0:
        raise QuantizationError("dynamic quantization quantized nothing (no MatMulInteger in the result)")
    info = read_metadata(model, str(out))
    info.precision = DYNAMIC_INT8
    info.extra = {**info.extra, "quantization": {"tool": "onnxruntime.quantization.quantize_dynamic",
                                                 "op_types": list(QUANTIZED_OP_TYPES), "weights": "int8 per tensor",
                                                 "excluded_nodes": list(exclude)}}
    write_metadata(model, info)
    onnx.checker.check_model(model)
    out.write_bytes(model.SerializeToString())
    return DynamicQuantizeResult(out, info, n)
