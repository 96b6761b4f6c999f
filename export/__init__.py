"""Deployment export, installed as ``ifseg_deploy.export``.

This is where the export stage will live: ONNX export of the adapted model (image in, labels out, with the
prompt and class embeddings baked in as constants), FP16 conversion that keeps normalisation in FP32,
explicit-quantization INT8 (Q/DQ ONNX from TensorRT Model Optimizer's ONNX PTQ, calibrated on unlabeled
images), TensorRT engine build, and the engine cache keyed by ONNX hash, TensorRT version, GPU and compute
capability, precision and shape profile.

Nothing is implemented here yet.
"""
