"""Benchmark harness, installed as ``ifseg_deploy.bench``.

This is where the code behind ``ifseg-deploy bench`` will live: latency, throughput and memory of the
PyTorch, ONNX Runtime and TensorRT backends, reported with the device and precision they were measured on,
together with the recorded results.

Nothing is implemented here yet.
"""
