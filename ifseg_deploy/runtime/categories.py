"""Choosing the categories a loaded model segments, at run time (``Segmenter.set_categories``).

Two cases. A model adapted per vocabulary (the paper's recipe) knows the names it was adapted to: it accepts
any subset of them, in any order, by dropping the other classes' logits before the softmax (exact: the argmax
over the subset of the full model's logits); a name outside its list is refused. A model adapted with
``--vocabulary`` (open vocabulary) takes any names: the torch backend rebuilds its prompt and class table.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import CategoryError
from ..tokenizer import TokenizerError, clean_names, name_key, parse_categories


def check_names(names: Sequence[str] | str) -> list[str]:
    """Stripped names, or :class:`CategoryError` for an empty list, blank or letterless names and duplicates.
    A string is read as a comma-separated list ("a, b, c")."""
    try:
        return parse_categories(names) if isinstance(names, str) else clean_names(names)
    except TokenizerError as e:
        raise CategoryError(f"bad category list: {e}") from None


def subset_index(names: Sequence[str], model_categories: Sequence[str]) -> list[int]:
    """The model's class id of each name (compared ignoring case and repeated spaces); :class:`CategoryError`
    naming the unknown names when some are not among ``model_categories``."""
    ids = {name_key(c): i for i, c in enumerate(model_categories)}
    unknown = [n for n in names if name_key(n) not in ids]
    if unknown:
        known = ", ".join(model_categories[:12]) + (", ..." if len(model_categories) > 12 else "")
        raise CategoryError(
            f"{', '.join(repr(n) for n in unknown)} {'is' if len(unknown) == 1 else 'are'} not among this model's "
            f"{len(model_categories)} categories ({known}). It was adapted per vocabulary: its class head knows "
            "only those names, so it can segment any subset of them but no new name. To segment any names, "
            "adapt with `--vocabulary`")
    return [ids[name_key(n)] for n in names]


def restrict_probs(probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, M, h, w) probabilities -> (B, len(index), h, w) over the chosen classes, renormalised per cell.

    softmax(logits[S]) = p[S] / sum(p[S]), so on probabilities straight from a softmax this equals masking the
    other classes' logits before it. After an in-graph kNN refinement it is the subset of the refined
    probabilities, renormalised (the argmax over the subset of the full model's refined output)."""
    sub = probs.index_select(1, index.to(probs.device))
    return sub / sub.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
