"""``export --open-vocabulary``: a graph that takes the vocabulary as input.

The export-only wrapper :class:`OpenVocabularyGraph` runs what :class:`~ifseg_deploy.runtime.graph.InferenceGraph`
runs, except that the encoder prompt and the class head are inputs: the prompt ids (1, Lt), and the names' padded
token ids (M, T) with their lengths (M,), from which the graph gathers rows of its own token table and takes
their masked mean (:func:`~ifseg_deploy.modeling.segofa.mean_token_embeddings`, the definition the PyTorch
model's class table comes from). M, Lt and T are dynamic within :class:`VocabularyBounds`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ifseg_deploy.modeling.position import max_text_tokens
from ifseg_deploy.modeling.segofa import mean_token_embeddings
from ifseg_deploy.runtime.graph import InferenceGraph
from ifseg_deploy.runtime.input_spec import SpecError
from ifseg_deploy.runtime.open_vocabulary import (
    DEFAULT_MAX_NAME_TOKENS,
    DEFAULT_MAX_NAMES,
    DEFAULT_MAX_PROMPT_TOKENS,
    VocabularyBounds,
)


class OpenVocabularyGraph(InferenceGraph):
    """(pixels (B, 3, H, W), prompt_ids (1, Lt), name_ids (M, T), name_lengths (M,)) -> probabilities
    (B, M, h, w) (and labels); the parameter names are the ONNX input names. ``bounds`` and ``feeds`` (example
    vocabulary inputs) say how the exporter traces it."""

    bounds: VocabularyBounds | None = None
    feeds: dict[str, Any] | None = None

    def forward(self, pixels: Tensor, prompt_ids: Tensor, name_ids: Tensor,  # type: ignore[override]
                name_lengths: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        m = self.model
        features = m.image_features(pixels)
        table = mean_token_embeddings(m.encoder.embed_tokens.weight, name_ids, name_lengths)
        tables = table.unsqueeze(0).expand(pixels.shape[0], -1, -1)
        logits = m.run_tokens(m.project_features(features), prompt_ids, check_padding=False,
                              class_table=tables).logits
        return self.head(pixels, features, logits)


def vocabulary_bounds(adapted: Any, max_names: int | None = None, max_name_tokens: int | None = None,
                      max_prompt_tokens: int | None = None) -> VocabularyBounds:
    """The bounds of an open-vocabulary export of ``adapted``: the given maxima (defaults: 32 names, 8 tokens
    a name, min(256, the encoder's text positions) prompt tokens), tuned (``opt_*``) for the model's own
    categories, which must fit them (they are the file's default vocabulary)."""
    tok = adapted.tokenizer
    limit = max_text_tokens(adapted.model.cfg.max_source_positions)
    if max_prompt_tokens is not None and max_prompt_tokens > limit:
        raise SpecError(f"--max-prompt-tokens {max_prompt_tokens} is more than the encoder's {limit} text positions")
    hi_prompt = min(limit, DEFAULT_MAX_PROMPT_TOKENS) if max_prompt_tokens is None else max_prompt_tokens
    hi_names = DEFAULT_MAX_NAMES if max_names is None else max_names
    hi_tokens = DEFAULT_MAX_NAME_TOKENS if max_name_tokens is None else max_name_tokens
    fixed = tok.prompt_overhead(adapted.prompt)
    names = list(adapted.categories)
    lengths = [len(t) for t in tok.name_tokens(names)]
    prompt = len(tok.prompt_ids(names, adapted.prompt))
    if hi_prompt <= fixed:
        raise SpecError(f"--max-prompt-tokens {hi_prompt} leaves no room for a name: the prompt without names "
                         f"is {fixed} tokens")
    problems = [f"{len(names)} names > --max-names {hi_names}"] if len(names) > hi_names else []
    if max(lengths) > hi_tokens:
        problems.append(f"a name of {max(lengths)} tokens > --max-name-tokens {hi_tokens}")
    if prompt > hi_prompt:
        problems.append(f"a prompt of {prompt} tokens > --max-prompt-tokens {hi_prompt}")
    if problems:
        raise SpecError("the model's own categories (the exported file's default vocabulary) do not fit the "
                         f"bounds: {'; '.join(problems)}")
    return VocabularyBounds(hi_names, hi_tokens, hi_prompt, fixed + 1, len(names), max(lengths), prompt).validate()


def example_feeds(feeds: dict[str, Any]) -> dict[str, Any]:
    """``feeds`` (numpy vocabulary inputs) as tracing examples: torch.export fixes a dimension whose example is 1,
    so a single name is repeated and one-token names get a padding column (the lengths mask it)."""
    import numpy as np
    import torch

    from ifseg_deploy.runtime.open_vocabulary import NAME_IDS_NAME, NAME_LENGTHS_NAME

    ids, lengths = feeds[NAME_IDS_NAME], feeds[NAME_LENGTHS_NAME]
    if ids.shape[1] == 1:
        ids = np.concatenate([ids, np.ones_like(ids)], axis=1)  # <pad>
    if ids.shape[0] == 1:
        ids, lengths = np.repeat(ids, 2, axis=0), np.repeat(lengths, 2)
    out = {**feeds, NAME_IDS_NAME: ids, NAME_LENGTHS_NAME: lengths}
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
