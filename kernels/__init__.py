"""Custom GPU kernels, installed as ``ifseg_deploy.kernels``.

This is where the fused word-map kernel will live (category grid -> nearest resize -> class-embedding row
gather -> + image type embedding -> patch LayerNorm, forward and backward in one pass), written in Triton
first and in CUDA C++ where it pays. Each kernel comes with a plain PyTorch reference implementation of the
same function and a dispatch that picks the kernel where it can run and the reference elsewhere; tests hold
the kernels to their references (on CPU through ``TRITON_INTERPRET=1``).

Nothing is implemented here yet.
"""
