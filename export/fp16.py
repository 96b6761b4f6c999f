"""Which layers a reduced-precision TensorRT engine keeps in fp32 (pure Python: testable without TensorRT).

FP16 engines of ViTs fail in a known way: LayerNorm's sum of squares and the attention softmax overflow or lose
their small terms, and the output collapses (NVIDIA/TensorRT#4723, #3893, #2564, #1262; microsoft/onnxruntime
#13639). The fix the TensorRT maintainers give (#1954) is to pin those layers to fp32 with precision
constraints; the rest of the network still runs in fp16 (or INT8 where the Q/DQ graph says so).

At opset >= 17 LayerNorm is one ``LayerNormalization`` node, which TensorRT imports as one normalization layer.
ReduceMean, Pow and Sqrt are in the list for graphs where it is decomposed, and the kNN refinement's neighbour
search (ReduceL2 normalisation, TopK) is pinned so that fp16 rounding cannot swap neighbours.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: ONNX op types kept in fp32.
FP32_OP_TYPES = ("LayerNormalization", "Softmax", "Pow", "ReduceMean", "ReduceL2", "Sqrt", "TopK")
#: TensorRT layer types (``trt.LayerType`` names) that only ever implement one of those ops.
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "TOPK")
#: (layer type, operation) pairs: ElementWise POW, Unary SQRT, Reduce AVG (a decomposed mean).
FP32_LAYER_OPS = (("ELEMENTWISE", "POW"), ("UNARY", "SQRT"), ("REDUCE", "AVG"))


def fp32_node_names(model: Any, op_types: Iterable[str] = FP32_OP_TYPES) -> set[str]:
    """Names of the ``onnx.ModelProto``'s nodes of ``op_types``."""
    kinds = set(op_types)
    return {n.name for n in model.graph.node if n.op_type in kinds and n.name}


def keep_fp32(layer_type: str, operation: str | None, layer_name: str, fp32_nodes: set[str]) -> bool:
    """Whether a TensorRT layer (type name, operation name or None, layer name) is pinned to fp32.

    By kind for the layers above; otherwise by name, because TensorRT's ONNX parser names a layer after the
    node it came from (a node that becomes several layers gives names that start with the node's name). The
    prefix match errs on the side of fp32: an extra pinned layer costs a little speed, a missed one accuracy.
    """
    if layer_type in FP32_LAYER_TYPES or (layer_type, operation) in FP32_LAYER_OPS:
        return True
    if layer_name in fp32_nodes:
        return True
    return any(layer_name.startswith(node + "_") or f"[{node}]" in layer_name for node in fp32_nodes)
