"""The vocabulary inputs of an open-vocabulary export (``export --open-vocabulary``), and their bounds.

Such a graph takes, besides the pixels, the encoder prompt ``prompt_ids`` (1, Lt), the category names' padded
token ids ``name_ids`` (M, T) and their lengths ``name_lengths`` (M,); it builds the class head from them (the
mean token embedding of each name, :func:`~ifseg_deploy.modeling.segofa.mean_token_embeddings`). M, Lt and T
vary within the bounds stored in the file's metadata (they are a TensorRT engine's optimization profile), and
the tokenizer is stored there too, so an exported file alone turns a list of names into these inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ArtifactError, CategoryError
from ..tokenizer import OFATokenizer, PromptTooLongError, TokenizerError
from .input_spec import SpecError

PROMPT_IDS_NAME = "prompt_ids"
NAME_IDS_NAME = "name_ids"
NAME_LENGTHS_NAME = "name_lengths"
VOCABULARY_INPUTS = (PROMPT_IDS_NAME, NAME_IDS_NAME, NAME_LENGTHS_NAME)

#: Defaults of ``export --open-vocabulary``: open-vocabulary adaptation draws 2..32 names per sample; 8 tokens
#: hold the longest ADE-150 / COCO-171 names; 256 prompt tokens hold 32 names of up to 7 tokens after the prompt.
DEFAULT_MAX_NAMES = 32
DEFAULT_MAX_NAME_TOKENS = 8
DEFAULT_MAX_PROMPT_TOKENS = 256


@dataclass(frozen=True)
class VocabularyBounds:
    """What vocabularies an open-vocabulary graph (and its engine's profile) takes: M names of at most T tokens
    each, in a prompt of at most Lt tokens; ``opt_*`` are the sizes a TensorRT profile is tuned for."""

    max_names: int = DEFAULT_MAX_NAMES
    max_name_tokens: int = DEFAULT_MAX_NAME_TOKENS
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
    min_prompt_tokens: int = 1
    opt_names: int = 1
    opt_name_tokens: int = 1
    opt_prompt_tokens: int = 1

    def validate(self) -> VocabularyBounds:
        for what, lo, opt, hi in (("names", 1, self.opt_names, self.max_names),
                                  ("name tokens", 1, self.opt_name_tokens, self.max_name_tokens),
                                  ("prompt tokens", self.min_prompt_tokens, self.opt_prompt_tokens,
                                   self.max_prompt_tokens)):
            if not 1 <= lo <= opt <= hi:
                raise SpecError(f"vocabulary bounds: {what} need 1 <= min <= opt <= max, got {lo}, {opt}, {hi}")
        return self

    def shapes(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of one vocabulary input, e.g. for a TensorRT optimization profile."""
        if name == PROMPT_IDS_NAME:
            return (1, self.min_prompt_tokens), (1, self.opt_prompt_tokens), (1, self.max_prompt_tokens)
        if name == NAME_IDS_NAME:
            return (1, 1), (self.opt_names, self.opt_name_tokens), (self.max_names, self.max_name_tokens)
        if name == NAME_LENGTHS_NAME:
            return (1,), (self.opt_names,), (self.max_names,)
        raise KeyError(name)

    def describe(self) -> str:
        return (f"up to {self.max_names} names of up to {self.max_name_tokens} tokens, prompt up to "
                f"{self.max_prompt_tokens} tokens")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VocabularyBounds:
        return cls(**{k: int(d[k]) for k in cls.__dataclass_fields__ if k in d}).validate()


class VocabularyFeeds:
    """Category names -> the three vocabulary inputs, tokenized as the PyTorch backend does (the same prompt ids
    and name tokens), and refused with :class:`~ifseg_deploy.errors.CategoryError` outside ``bounds``."""

    def __init__(self, tokenizer: OFATokenizer, prompt: str, bounds: VocabularyBounds, source: str = "this file"):
        self.tokenizer, self.prompt, self.bounds, self.source = tokenizer, prompt, bounds, source

    @classmethod
    def from_info(cls, info: Any, source: str = "this file") -> VocabularyFeeds:
        """From an open-vocabulary export's :class:`~.model_info.ModelInfo` (bounds, prompt, stored tokenizer)."""
        try:
            tokenizer = OFATokenizer.from_dict(info.tokenizer or {}, f"{source}'s stored tokenizer")
        except TokenizerError as e:
            raise ArtifactError(f"{e}; re-export the file") from None
        return cls(tokenizer, info.prompt, info.vocabulary, source)

    def __call__(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The inputs for ``names`` (already checked by :func:`~.categories.check_names`); nothing is kept."""
        b, tok = self.bounds, self.tokenizer
        if len(names) > b.max_names:
            raise CategoryError(f"{len(names)} category names, but {self.source} takes at most {b.max_names} "
                                "(its exported bound); re-export with a larger --max-names")
        try:
            name_tokens = tok.name_tokens(names)
            long = [(n, len(t)) for n, t in zip(names, name_tokens) if len(t) > b.max_name_tokens]
            if long:
                text = ", ".join(f"{n!r} ({k} tokens)" for n, k in long)
                raise CategoryError(f"{text} {'is' if len(long) == 1 else 'are'} longer than the {b.max_name_tokens} "
                                    f"tokens per name {self.source} takes (its exported bound); shorten the "
                                    "name or re-export with a larger --max-name-tokens")
            tok.check_prompt_length(names, b.max_prompt_tokens, self.prompt)
            prompt = tok.prompt_ids(names, self.prompt)
        except PromptTooLongError as e:
            raise CategoryError(f"the prompt for these {len(names)} names is {e.tokens} tokens long, but "
                                f"{self.source} takes at most {b.max_prompt_tokens} (its exported bound; the first "
                                f"{e.fit} names fit); use fewer or shorter names, or re-export with a larger "
                                "--max-prompt-tokens") from None
        except TokenizerError as e:
            raise CategoryError(f"cannot segment these categories: {e}") from None
        width = max(len(t) for t in name_tokens)
        ids = np.full((len(names), width), tok.pad_id, dtype=np.int64)  # masked by the lengths
        for i, t in enumerate(name_tokens):
            ids[i, :len(t)] = t
        return {PROMPT_IDS_NAME: np.asarray([prompt], dtype=np.int64), NAME_IDS_NAME: ids,
                NAME_LENGTHS_NAME: np.asarray([len(t) for t in name_tokens], dtype=np.int64)}


class TakesVocabulary:
    """Mixin of the exported-file backends (ONNX Runtime, TensorRT): with an open-vocabulary file, ``categories``
    are whatever names were last set, and :attr:`vocabulary_feeds` the inputs that make the graph segment them;
    with a fixed graph, nothing changes (the Segmenter keeps subsets of the file's own names)."""

    categories: list[str]
    can_set_categories: bool
    #: the vocabulary inputs for the current categories; empty for a fixed-vocabulary graph
    vocabulary_feeds: dict[str, np.ndarray]

    def _init_vocabulary(self, info: Any, source: str) -> None:
        self.vocabulary_feeds = {}
        self._make_feeds: VocabularyFeeds | None = None
        if info.open_vocabulary:
            self._make_feeds = VocabularyFeeds.from_info(info, source)
            self.vocabulary_feeds = self._make_feeds(self.categories)
            self.can_set_categories = True

    def set_categories(self, names: list[str]) -> None:
        """An open-vocabulary file: segment ``names`` from now on (new input tensors, no rebuild);
        :class:`~ifseg_deploy.errors.CategoryError` for names its bounds or tokenizer refuse, and then nothing
        changes."""
        if self._make_feeds is None:
            super().set_categories(names)  # type: ignore[misc]
            return
        self.vocabulary_feeds = self._make_feeds(names)
        self.categories = list(names)
