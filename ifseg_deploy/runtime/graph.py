"""The inference graph shared by the PyTorch backend and ONNX export: normalised image in, probabilities out.

The prompt ids and the class table are constants of the graph (as the category names are fixed at adaptation),
so the exported model needs nothing but pixels. ``class_index`` (set by the torch backend's ``set_categories``)
keeps a subset of the classes; an export leaves it None. ``export --open-vocabulary`` traces a subclass whose
prompt and names are inputs instead (``ifseg_deploy.export.open_vocabulary.OpenVocabularyGraph``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling.segofa import SegOFA
from ..refine import knn_refine


class InferenceGraph(nn.Module):
    """(B, 3, H, W) pixels normalised with mean = std = 0.5 -> class probabilities (B, M, ceil(H/16), ceil(W/16)).

    With ``refine_k`` > 1 the paper's kNN refinement runs on the raw ResNet features; ``labels_at_input=True``
    adds the bilinear upsampling to (H, W) and the argmax, returning int64 labels (B, H, W) as a second output.
    The ONNX exporter wraps a copy of the model prepared with :meth:`SegOFA.prepare_for_export`.
    """

    def __init__(self, model: SegOFA, refine_k: int = 3, refine_iters: int = 25,
                 labels_at_input: bool = False) -> None:
        super().__init__()
        self.model = model
        self.refine_k = refine_k
        self.refine_iters = refine_iters
        self.labels_at_input = labels_at_input
        #: None, or the class ids to keep (in this order): the others' logits are dropped before the softmax, so
        #: the probabilities are those of the model restricted to a subset of its categories.
        self.class_index: Tensor | None = None

    def forward(self, pixels: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        features = self.model.image_features(pixels)
        logits = self.model.run_tokens(self.model.project_features(features), check_padding=False).logits
        if self.class_index is not None:
            logits = logits.index_select(1, self.class_index)
        return self.head(pixels, features, logits)

    def head(self, pixels: Tensor, features: Tensor, logits: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Class logits -> softmax, the optional refinement on the ResNet ``features``, the optional labels."""
        probs = logits.float().softmax(dim=1)
        if self.refine_k > 1 and self.refine_iters > 0:
            probs = knn_refine(probs, features, self.refine_k, self.refine_iters)
        if not self.labels_at_input:
            return probs
        up = F.interpolate(probs, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        return probs, up.argmax(dim=1)
