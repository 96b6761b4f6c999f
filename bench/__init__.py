"""Benchmark harness, installed as ``ifseg_deploy.bench``: the code behind ``ifseg-deploy bench``.

* inference (``--mode inference``): latency (mean / p50 / p90 / p99), throughput, peak host and device memory,
  label agreement and mIoU of the PyTorch, ONNX Runtime and TensorRT backends per precision, size and batch,
  model-only and end-to-end, with PyTorch eager fp32 measured interleaved in the same run as the baseline.
  :mod:`.run` runs it from :mod:`.settings`: :mod:`.sources` (the model files), :mod:`.artifacts` (the export
  cache), :mod:`.variants` (the rows and their backends), :mod:`.timing` (the interleaved rounds),
  :mod:`.quality` (agreement, mIoU) and :mod:`.report` (JSON, files, summary; :mod:`.render`: Markdown and PNG);
* :mod:`.adapt_throughput` - adaptation samples/s and the share of the step spent making the artificial data
  (``ifseg-deploy bench --mode adapt``, or ``python -m ifseg_deploy.bench.adapt_throughput``);
* :mod:`.kernel_wordmap` - the fused word-map kernel against its PyTorch reference, ``torch.compile`` of it and
  IFSeg's EmbeddingBag path (``--mode kernel``, or ``python -m ifseg_deploy.bench.kernel_wordmap``);
* :mod:`.models` - random-weight models of any preset, for speed without a checkpoint;
* :mod:`.stats`, :mod:`.system`, :mod:`.profile` - statistics and ratios, memory / CPU / machine probes, operator
  profiles.

Recorded results, with the commands that produced them, are in ``bench/README.md``.
"""
