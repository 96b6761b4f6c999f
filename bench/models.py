"""Random-weight models of any preset, for speed measurements without a checkpoint.

``random_adapted_model("base")`` builds a :class:`~ifseg_deploy.modeling.segofa.SegOFA` of the preset with
seeded random weights (scaled so that activations keep a sensible range: ResNet and embedding matrices
N(0, 1/fan_in), transformer matrices N(0, 4/fan_in), the token table N(0, 64/d), norm scales 1 + 0.1 N,
biases 0.1 N), installs the IFSeg prompt for the category names and wraps it in an
:class:`~ifseg_deploy.model_dir.AdaptedModel`. Its speed is that of the real model of the preset (same shapes,
same ops); its labels mean nothing. The transformer's larger weights keep its output different from cell to
cell (with N(0, 1/fan_in) a random OFA-Base predicts one class everywhere, and then a label agreement between
two engines would say nothing); the synthetic world's model uses the same scale for its untrained transformer.
The larger token table makes the class rows (means of name-token rows, the tied class head) long enough that
the softmax is peaked as a trained model's is (median top-1 probability about 0.3 instead of about 1/M), so
that INT8 rounding is not compared on near-ties only.

The prompt length matters for speed (the encoder runs over image tokens + prompt tokens), so the prompt is
tokenized with a real vocabulary: OFA's BPE files when ``bpe_dir`` is given (IFSeg's prompt with ADE20K's 150
names is 215 tokens), otherwise the synthetic world's small byte-level vocabulary (which spells unknown words
byte by byte: keep to the world's names there, or give the BPE files).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

#: Recorded in the model's metadata: a model written by another version of this recipe is rebuilt, not reused.
INIT_RECIPE = ("v3: resnet/embeddings N(0,1/fan_in), transformer N(0,4/fan_in), token table N(0,64/d), norms 1+0.1N, "
               "biases 0.1N")

#: Default categories: with the real OFA vocabulary, ADE20K's 150 names (IFSeg's Table 2 setting); with the
#: synthetic world's vocabulary, its eight concepts (which it tokenizes as whole words).
ADE20K = "ade20k"
WORLD = "world"


def default_categories(with_bpe: bool) -> list[str]:
    if with_bpe:
        from ifseg_deploy.evaluation.classnames import ADE20K_150

        return list(ADE20K_150)
    from ifseg_deploy.synthetic.world import DEFAULT_CATEGORIES

    return list(DEFAULT_CATEGORIES)


def random_adapted_model(preset: Any, categories: Sequence[str] | None = None, bpe_dir: str | Path | None = None,
                         seed: int = 0) -> Any:
    """An :class:`~ifseg_deploy.model_dir.AdaptedModel` of ``preset`` (a preset name or an
    :class:`~ifseg_deploy.presets.OFAConfig`) with random weights (see the module doc)."""
    from ifseg_deploy.model_dir import AdaptedModel
    from ifseg_deploy.modeling.init import SPEED_PROFILE, random_init_
    from ifseg_deploy.modeling.position import max_text_tokens
    from ifseg_deploy.modeling.segofa import SegOFA
    from ifseg_deploy.presets import get_preset
    from ifseg_deploy.tokenizer import OFATokenizer

    if bpe_dir is not None:
        tokenizer = OFATokenizer.from_bpe_dir(bpe_dir)
    else:
        from ifseg_deploy.synthetic.vocab import world_tokenizer

        tokenizer = world_tokenizer()
    names = [c.strip() for c in (categories or default_categories(bpe_dir is not None))]
    base = get_preset(preset) if isinstance(preset, str) else preset
    arch = base.replace(vocab_rows=tokenizer.num_embeddings)
    tokenizer.check_prompt_length(names, max_text_tokens(arch.max_source_positions))  # before building the model
    torch.manual_seed(seed)
    model = SegOFA(arch, num_classes=len(names))
    random_init_(model, seed, SPEED_PROFILE)
    model.set_prompt(tokenizer.prompt_ids(names), tokenizer.name_tokens(names))
    model.eval()
    meta = {"source_checkpoint": None, "random_weights": {"preset": base.name, "seed": seed,
                                                          "tokenizer": str(bpe_dir) if bpe_dir else "synthetic world",
                                                          "init": INIT_RECIPE},
            "note": "random weights, for speed measurements only (ifseg_deploy.bench.models)"}
    return AdaptedModel(model, tokenizer, names, metadata=meta)


def write_random_model(preset: Any, out_dir: str | Path, categories: Sequence[str] | None = None,
                       bpe_dir: str | Path | None = None, seed: int = 0, overwrite: bool = False) -> Path:
    """Write a random-weight model directory of ``preset`` (loadable by every stage, like an adapted model)."""
    return random_adapted_model(preset, categories, bpe_dir, seed).save_pretrained(out_dir, overwrite=overwrite)
