"""Benchmark harness, installed as ``ifseg_deploy.bench``.

This is where the code behind ``ifseg-deploy bench`` will live: latency, throughput and memory of the
PyTorch, ONNX Runtime and TensorRT backends, reported with the device and precision they were measured on,
together with the recorded results.

So far: ``kernel_wordmap`` (``python -m ifseg_deploy.bench.kernel_wordmap``), the fused word-map kernel against
its PyTorch reference, ``torch.compile`` of it and IFSeg's EmbeddingBag path.
"""
