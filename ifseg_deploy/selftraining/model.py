"""The model self-training starts from, and the Segmenter that labels each round."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ArtifactError, InputError
from ..model_dir import AdaptedModel
from ..runtime.registry import load_backend
from ..runtime.segmenter import Segmenter


def load_adapted(path: str | Path) -> AdaptedModel:
    """An adapted (or already self-trained) model directory; a clear refusal for anything else, including a
    model directory that was never adapted (``inspect --save`` writes those)."""
    adapted = AdaptedModel.from_pretrained(path)  # refuses other formats and newer format versions, by name
    meta = adapted.metadata
    if "adaptation" not in meta and "selftraining" not in meta:
        raise ArtifactError(f"{path} holds a model that was never adapted (no adaptation record in its config.json;"
                            " `inspect --save` writes such directories): run `ifseg-deploy adapt` first, "
                            "self-training starts from an adapted model")
    return adapted


def segmenter_for_round(r: int, current: AdaptedModel, backend: str, label_model: str | Path | None,
                        device: torch.device, short_side: int | None) -> Segmenter:
    """Round 1 labels with ``backend`` (an exported file of the model when it is not torch); later rounds with
    the improved model in PyTorch, which is the only place it exists until it is exported."""
    if r == 0 and backend != "torch":
        engine = load_backend(backend, label_model)
        if list(engine.categories) != list(current.categories):
            engine.close()
            raise InputError(f"--label-model {label_model} is for the categories {list(engine.categories)}, the "
                             f"model for {list(current.categories)}; export this model and label with that file")
        return Segmenter(engine, short_side=short_side)
    return Segmenter.from_model(current, device, short_side=short_side)
