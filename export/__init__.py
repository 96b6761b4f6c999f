"""Deployment export, installed as ``ifseg_deploy.export``: adapted model -> checked ONNX / INT8 / TensorRT.

* :mod:`.onnx_export` - the inference graph to ONNX (fixed or dynamic shapes), onnxslim, ``onnx.checker``,
  metadata, and the fp32 parity gate against PyTorch;
* :mod:`.int8` - explicit-quantization INT8 (Q/DQ) with TensorRT Model Optimizer, checked on ONNX Runtime;
* :mod:`.fp16`, :mod:`.trt_build` - TensorRT engines with LayerNorm/Softmax/Pow kept in fp32;
* :mod:`.engine_cache` - engines keyed by ONNX hash, TensorRT version, GPU, precision and profile;
* :mod:`.ort_backend`, :mod:`.trt_backend` - the ``onnxruntime`` and ``tensorrt`` Segmenter backends;
* :mod:`.pipeline` - :func:`~.pipeline.export_model`, what ``ifseg-deploy export`` runs.

Submodules import onnx, onnxruntime, modelopt or TensorRT only when used.
"""
