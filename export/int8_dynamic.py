"""INT8 for ONNX Runtime on a CPU: ONNX Runtime's dynamic quantization of the transformer's weights.

The Q/DQ INT8 of :mod:`.int8` is laid out for TensorRT; ONNX Runtime's CPU provider runs it no faster than fp32.
Dynamic quantization stores the MatMul/Gemm weights as int8 (per tensor) and quantizes each activation on the
fly, so the products run on ONNX Runtime's integer kernels (VNNI/AMX) and no calibration set is needed. The
ResNet's convolutions are stored as int8 too, per output channel, but computed in float (a DequantizeLinear in
front of each Conv): computed in int8 (ConvInteger, per-tensor activations) they moved label agreement with
fp32 on the trained synthetic-world model from 98.9% to 95.3%, while in fp32 they kept a 105 MiB share of an
OFA-Base file that the rest brings down to 115 MiB. The kNN refinement's similarity product (whose top-k picks
neighbours) stays float. TensorRT does not run this format (MatMulInteger, DynamicQuantizeLinear).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ifseg_deploy.runtime.model_info import ModelInfo, read_info, read_metadata, write_metadata
from ifseg_deploy.runtime.registry import DYNAMIC_INT8

from .int8 import QuantizationError, similarity_matmuls

QUANTIZED_OP_TYPES = ("MatMul", "Gemm")


@dataclass
class DynamicQuantizeResult:
    path: Path
    info: ModelInfo
    quantized_nodes: int
    conv_weights: int = 0


def quantize_dynamic_int8(fp32_onnx: str | Path, out: str | Path, int8_convs: bool = True) -> DynamicQuantizeResult:
    """Write the dynamic-INT8 version of an exported fp32 model to ``out`` (a temporary path: the caller checks
    it before publishing); ``int8_convs``: store the convolution weights as int8 too (the export falls back to
    float ones when the accuracy gate refuses them)."""
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
    convs = store_conv_weights_int8(model) if int8_convs else 0
    if n == 0:
        raise QuantizationError("dynamic quantization quantized nothing (no MatMulInteger in the result)")
    info = read_metadata(model, str(out))
    info.precision = DYNAMIC_INT8
    info.extra = {**info.extra, "quantization": {"tool": "onnxruntime.quantization.quantize_dynamic",
                                                 "op_types": list(QUANTIZED_OP_TYPES), "weights": "int8 per tensor",
                                                 "conv_weights": ("int8 per output channel, computed in float"
                                                                  if convs else "float"),
                                                 "excluded_nodes": list(exclude)}}
    write_metadata(model, info)
    onnx.checker.check_model(model)
    out.write_bytes(model.SerializeToString())
    return DynamicQuantizeResult(out, info, n, convs)


def store_conv_weights_int8(model: Any) -> int:
    """Store every Conv weight initializer as symmetric int8 per output channel behind a DequantizeLinear (axis 0),
    in place; returns how many. Weight-only: the convolution itself still runs on float inputs."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.quant_utils import quantize_data

    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    new_nodes, count = [], 0
    for node in model.graph.node:
        w = inits.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if w is not None and w.data_type == TensorProto.FLOAT and len(w.dims) == 4 and users[w.name] == 1:
            weight = numpy_helper.to_array(w)
            q = np.empty(weight.shape, dtype=np.int8)
            scales = np.empty(weight.shape[0], dtype=np.float32)
            for c in range(weight.shape[0]):
                _, scale, q[c] = quantize_data(weight[c], TensorProto.INT8, symmetric=True)
                scales[c] = scale
            model.graph.initializer.remove(w)
            model.graph.initializer.extend([numpy_helper.from_array(q, w.name + "_int8"),
                                            numpy_helper.from_array(scales, w.name + "_scale"),
                                            numpy_helper.from_array(np.zeros(len(scales), np.int8), w.name + "_zero")])
            stored = [w.name + "_int8", w.name + "_scale", w.name + "_zero"]
            new_nodes.append(helper.make_node("DequantizeLinear", stored, [w.name], name=w.name + "_dequantize",
                                              axis=0))
            count += 1
        new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return count
