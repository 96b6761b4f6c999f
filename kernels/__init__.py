"""Custom GPU kernels, installed as ``ifseg_deploy.kernels``.

* ``wordmap``: the fused word-map embedding (category grid -> nearest resize -> class-table row gather ->
  + image type embedding -> patch LayerNorm, forward and backward). ``wordmap_embed`` dispatches to the Triton
  kernel (``wordmap_triton``) on CUDA and to the PyTorch reference (``wordmap_reference``) elsewhere.
* ``seg_loss``: cross-entropy on bilinearly upsampled logits, in row chunks, so that the full-resolution logits
  are never materialised.

Importing this package does not import triton; the kernel module loads on first use.
"""

from .seg_loss import upsampled_cross_entropy, upsampled_cross_entropy_reference
from .wordmap import resolve_impl, triton_available, wordmap_embed
from .wordmap_reference import nearest_ids, nearest_targets, wordmap_embed_reference

__all__ = [
    "nearest_ids",
    "nearest_targets",
    "resolve_impl",
    "triton_available",
    "upsampled_cross_entropy",
    "upsampled_cross_entropy_reference",
    "wordmap_embed",
    "wordmap_embed_reference",
]
