"""OFA's English text tokenizer (GPT-2 byte-level BPE re-indexed by fairseq's dictionary) for IFSeg prompts.

Two on-disk layouts are read:

* fairseq / official OFA: ``encoder.json`` (piece -> GPT-2 id), ``vocab.bpe`` (merges) and ``dict.txt``
  (line i holds a GPT-2 id; its fairseq id is i + 4 after ``<s> <pad> </s> <unk>``);
* Hugging Face OFA: ``vocab.json`` (piece -> fairseq id directly, ``<mask>`` included) and ``merges.txt``.

The fairseq embedding table then continues with ``<mask>``, ``num_codes`` ``<code_i>`` and ``num_bins``
``<bin_i>`` symbols. BPE itself is done by the ``tokenizers`` library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers

from .tokenizer_files import (
    FAIRSEQ_FILES,
    HF_FILES,
    SPECIALS,
    TokenizerError,
    read_fairseq_dict,
    read_json_vocab,
    read_merges,
    require_files,
)

__all__ = [
    "DEFAULT_PROMPT",
    "UNKNOWN_NAME",
    "OFATokenizer",
    "PromptTooLongError",
    "TokenizerError",
    "clean_names",
    "name_key",
    "parse_categories",
]

DEFAULT_PROMPT = "what is the segmentation map of the image? object:"
UNKNOWN_NAME = "unknown"

CONFIG_FILE = "tokenizer_config.json"
_MASK = "<mask>"
_EXTRA_SYMBOL = re.compile(r"<(code|bin)_\d+>")



class PromptTooLongError(TokenizerError):
    """The IFSeg prompt for a category list has more tokens than the encoder has text positions.

    ``tokens``: the prompt's length; ``limit``: the encoder's text positions; ``fit``: how many names (the
    list's first ones) would fit."""

    def __init__(self, message: str, tokens: int, limit: int, fit: int) -> None:
        super().__init__(message)
        self.tokens, self.limit, self.fit = tokens, limit, fit


def name_key(name: str) -> str:
    """How two category names are compared: whitespace collapsed, case folded."""
    return " ".join(name.split()).casefold()


def clean_names(names: Iterable[str]) -> list[str]:
    """Stripped names; refuses an empty list, blank or letterless names and duplicates."""
    if isinstance(names, str):
        raise TokenizerError(f"expected a list of category names, got the string {names!r}")
    cleaned: list[str] = []
    first: dict[str, str] = {}
    for i, raw in enumerate(names):
        if not isinstance(raw, str):
            raise TokenizerError(f"category name #{i} is not a string: {raw!r}")
        name = raw.strip()
        if not name:
            raise TokenizerError(f"category name #{i} is empty ({raw!r})")
        # Punctuation-only names do tokenize, but into nothing that describes a class.
        if not any(ch.isalnum() for ch in name):
            raise TokenizerError(f"category name {name!r} has no letter or digit")
        key = name_key(name)
        if key in first:
            raise TokenizerError(f"duplicate category name {name!r} (same as {first[key]!r}, ignoring case)")
        first[key] = name
        cleaned.append(name)
    if not cleaned:
        raise TokenizerError("the category list is empty")
    return cleaned


def parse_categories(text: str) -> list[str]:
    """Split comma- and/or newline-separated category names; blank and ``#`` comment lines are skipped."""
    names: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        items = [item.strip() for item in line.split(",")]
        if items[-1] == "":  # a trailing comma is common in hand-written lists
            items.pop()
        if "" in items:
            raise TokenizerError(f"line {n}: empty category name in {line!r}")
        names.extend(items)
    return clean_names(names)


class OFATokenizer:
    """Word-wise GPT-2 byte-level BPE giving fairseq ids of OFA's English vocabulary."""

    bos_id = 0
    pad_id = 1
    eos_id = 2
    unk_id = 3

    def __init__(
        self,
        pieces: dict[str, int],
        merges: Sequence[tuple[str, str]],
        num_text_symbols: int,
        num_codes: int = 8192,
        num_bins: int = 1000,
    ) -> None:
        """``pieces``: byte-level BPE piece -> fairseq id; pieces that merges produce but that are absent map
        to ``<unk>``. ``num_text_symbols``: fairseq ids below ``<mask>`` (specials included)."""
        for label, value in (("num_codes", num_codes), ("num_bins", num_bins)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TokenizerError(f"{label} must be a non-negative integer, got {value!r}")
        bad = {p: i for p, i in pieces.items() if not len(SPECIALS) <= i < num_text_symbols}
        if bad:
            raise TokenizerError(f"piece ids outside [4, {num_text_symbols}): {dict(list(bad.items())[:5])}")
        self._piece_ids = dict(pieces)
        self._merges = list(merges)
        self.num_text_symbols = num_text_symbols
        self.num_codes = num_codes
        self.num_bins = num_bins

        # tokenizers' BPE refuses merges whose parts or result are out of vocabulary, and drops characters it
        # does not know; a private vocabulary holding all of them keeps GPT-2 semantics (unknown -> <unk>).
        model_vocab: dict[str, int] = {}
        to_fairseq: list[int] = []

        def add(piece: str) -> None:
            if piece not in model_vocab:
                model_vocab[piece] = len(to_fairseq)
                to_fairseq.append(self._piece_ids.get(piece, self.unk_id))

        for piece in sorted(self._piece_ids, key=self._piece_ids.__getitem__):
            add(piece)
        for piece in sorted(pre_tokenizers.ByteLevel.alphabet()):
            add(piece)
        for left, right in self._merges:
            add(left)
            add(right)
            add(left + right)
        tok = Tokenizer(models.BPE(model_vocab, self._merges))
        # GPT-2 pre-tokenizer regex splits " image?" into " image", "?"; the leading space is added per word.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        self._tok = tok
        self._to_fairseq = to_fairseq

    # ---- loading / saving -------------------------------------------------------------------------------

    @classmethod
    def from_bpe_dir(cls, path: str | Path, num_codes: int = 8192, num_bins: int = 1000) -> OFATokenizer:
        """Official OFA layout: ``encoder.json`` + ``vocab.bpe`` + ``dict.txt``."""
        path = Path(path)
        require_files(path, FAIRSEQ_FILES)
        encoder = read_json_vocab(path / "encoder.json")
        merges = read_merges(path / "vocab.bpe")
        symbols = read_fairseq_dict(path / "dict.txt")
        # OFA's dict.txt also holds non-numeric symbols (madeupword0000...): they take ids but match no piece.
        fairseq_of_gpt2 = {int(s): i + len(SPECIALS) for i, s in enumerate(symbols) if s.isdigit()}
        pieces = {p: fairseq_of_gpt2[g] for p, g in encoder.items() if g in fairseq_of_gpt2}
        return cls(pieces, merges, len(SPECIALS) + len(symbols), num_codes, num_bins)

    @classmethod
    def from_hf_dir(cls, path: str | Path, num_codes: int = 8192, num_bins: int = 1000) -> OFATokenizer:
        """Hugging Face OFA layout: ``vocab.json`` (fairseq ids) + ``merges.txt``."""
        path = Path(path)
        require_files(path, HF_FILES)
        vocab_path = path / "vocab.json"
        return cls._from_hf_vocab(read_json_vocab(vocab_path), read_merges(path / "merges.txt"), num_codes,
                                  num_bins, str(vocab_path))

    @classmethod
    def _from_hf_vocab(cls, vocab: dict[str, int], merges: list[tuple[str, str]], num_codes: int, num_bins: int,
                       vocab_path: str) -> OFATokenizer:
        vocab = {p: i for p, i in vocab.items() if not _EXTRA_SYMBOL.fullmatch(p)}
        for want, special in enumerate(SPECIALS):
            if vocab.get(special) != want:
                raise TokenizerError(
                    f"{vocab_path}: {special} has id {vocab.get(special)}, expected {want}: "
                    "not an OFA/BART vocabulary with fairseq ids"
                )
        num_text = vocab[_MASK] if _MASK in vocab else max(vocab.values()) + 1
        pieces = {p: i for p, i in vocab.items() if p not in SPECIALS and p != _MASK}
        beyond = [p for p, i in pieces.items() if i >= num_text]
        if beyond:
            raise TokenizerError(f"{vocab_path}: pieces with ids after {_MASK} ({num_text}): {beyond[:5]}")
        return cls(pieces, merges, num_text, num_codes, num_bins)

    @classmethod
    def from_dir(
        cls, path: str | Path, num_codes: int | None = None, num_bins: int | None = None
    ) -> OFATokenizer:
        """Either layout (fairseq preferred when both are complete). ``num_codes``/``num_bins`` default to
        ``tokenizer_config.json`` (written by :meth:`save`) and then to the real OFA's 8192/1000."""
        path = Path(path)
        config: dict = {}
        if (path / CONFIG_FILE).is_file():
            try:
                config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise TokenizerError(f"{path / CONFIG_FILE}: cannot read it as JSON ({e})") from e
            if not isinstance(config, dict):
                raise TokenizerError(f"{path / CONFIG_FILE}: expected a JSON object")
        kw = {
            "num_codes": num_codes if num_codes is not None else config.get("num_codes", 8192),
            "num_bins": num_bins if num_bins is not None else config.get("num_bins", 1000),
        }
        if all((path / n).is_file() for n in FAIRSEQ_FILES):
            return cls.from_bpe_dir(path, **kw)
        if all((path / n).is_file() for n in HF_FILES):
            return cls.from_hf_dir(path, **kw)
        # Name the missing files of the layout the directory most resembles.
        n_hf = sum((path / n).is_file() for n in HF_FILES)
        n_fs = sum((path / n).is_file() for n in FAIRSEQ_FILES)
        require_files(path, HF_FILES if n_hf > n_fs else FAIRSEQ_FILES)
        raise AssertionError("unreachable")

    def save(self, out_dir: str | Path) -> list[str]:
        """Write vocab.json + merges.txt (Hugging Face layout, fairseq ids) + tokenizer_config.json.

        Returns the file names; :meth:`from_dir` on ``out_dir`` gives the same ids."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        vocab = self.to_dict()["vocab"]
        (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
        merges = "".join(f"{a} {b}\n" for a, b in self._merges)
        (out / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
        config = {"tokenizer": "ifseg_deploy.OFATokenizer", "num_codes": self.num_codes}
        config["num_bins"] = self.num_bins
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return ["vocab.json", "merges.txt", CONFIG_FILE]

    def to_dict(self) -> dict:
        """The files of :meth:`save` as one JSON-able object (``vocab``, ``merges``, ``num_codes``, ``num_bins``):
        what an open-vocabulary export stores in its metadata, so the file alone can tokenize new names."""
        vocab = {s: i for i, s in enumerate(SPECIALS)}
        vocab.update(sorted(self._piece_ids.items(), key=lambda kv: (kv[1], kv[0])))
        vocab[_MASK] = self.num_text_symbols
        return {"tokenizer": "ifseg_deploy.OFATokenizer", "vocab": vocab,
                "merges": [f"{a} {b}" for a, b in self._merges], "num_codes": self.num_codes, "num_bins": self.num_bins}

    @classmethod
    def from_dict(cls, data: dict, source: str = "the stored tokenizer") -> OFATokenizer:
        """Inverse of :meth:`to_dict`; :class:`TokenizerError` naming ``source`` when it is malformed."""
        try:
            vocab, merge_lines = data["vocab"], data["merges"]
            if not isinstance(vocab, dict) or not all(isinstance(k, str) and type(v) is int for k, v in vocab.items()):
                raise ValueError("vocab is not a mapping of pieces to ids")
            merges = []
            for line in merge_lines:
                left, right = str(line).split(" ")
                merges.append((left, right))
            return cls._from_hf_vocab(vocab, merges, int(data["num_codes"]), int(data["num_bins"]), source)
        except TokenizerError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise TokenizerError(f"{source}: not a stored OFA tokenizer ({type(e).__name__}: {e})") from None

    # ---- vocabulary layout ------------------------------------------------------------------------------

    @property
    def mask_id(self) -> int:
        return self.num_text_symbols

    @property
    def code_offset(self) -> int:
        """Id of ``<code_0>``."""
        return self.num_text_symbols + 1

    @property
    def bin_offset(self) -> int:
        """Id of ``<bin_0>``."""
        return self.code_offset + self.num_codes

    @property
    def num_embeddings(self) -> int:
        """Rows of OFA's token embedding table: text symbols, ``<mask>``, codes and bins."""
        return self.bin_offset + self.num_bins

    # ---- encoding ---------------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[list[int]]:
        if not isinstance(text, str):
            raise TokenizerError(f"expected a string, got {text!r}")
        words = [" " + w for w in text.strip().split()]
        return [e.ids for e in self._tok.encode_batch(words, add_special_tokens=False)] if words else []

    def pieces(self, text: str) -> list[str]:
        """Byte-level BPE pieces of ``text`` (``Ġ`` marks the leading space), for inspection."""
        return [self._tok.id_to_token(i) for ids in self._encode(text) for i in ids]

    def encode_words(self, text: str) -> list[int]:
        """OFA encoding: each whitespace-separated word gets a leading space and its own BPE; fairseq ids."""
        return [self._to_fairseq[i] for ids in self._encode(text) for i in ids]

    def name_tokens(self, names: Sequence[str]) -> list[list[int]]:
        """Fairseq ids of each category name (its class-table row is the mean of their embeddings)."""
        out = []
        for name in clean_names(names):
            ids = self.encode_words(name)
            if all(i == self.unk_id for i in ids):
                raise TokenizerError(f"category name {name!r} tokenizes only to <unk> with this vocabulary")
            out.append(ids)
        return out

    def prompt_ids(self, names: Sequence[str], prompt: str = DEFAULT_PROMPT) -> list[int]:
        """IFSeg encoder input: ``<s>`` prompt, the names (no separators), ``unknown``, ``</s>``."""
        ids = [self.bos_id, *self.encode_words(prompt)]
        for tokens in self.name_tokens(names):
            ids.extend(tokens)
        return [*ids, *self.encode_words(UNKNOWN_NAME), self.eos_id]

    def prompt_overhead(self, prompt: str = DEFAULT_PROMPT) -> int:
        """Tokens of :meth:`prompt_ids` besides the names: ``<s>``, the prompt, ``unknown``, ``</s>``."""
        return 2 + len(self.encode_words(prompt)) + len(self.encode_words(UNKNOWN_NAME))

    def check_prompt_length(self, names: Sequence[str], limit: int, prompt: str = DEFAULT_PROMPT) -> int:
        """The length of :meth:`prompt_ids` for ``names``; :class:`PromptTooLongError` when it exceeds ``limit``
        (the encoder's text positions). Needs only the tokenizer, so callers check before loading weights."""
        prompt_len = len(self.encode_words(prompt))
        fixed = self.prompt_overhead(prompt)
        lengths = [len(t) for t in self.name_tokens(names)]
        total = fixed + sum(lengths)
        if total <= limit:
            return total
        fit, used = 0, fixed
        while fit < len(lengths) and used + lengths[fit] <= limit:
            used += lengths[fit]
            fit += 1
        raise PromptTooLongError(
            f"the prompt for these {len(lengths)} category names is {total} tokens long (<s>, the prompt's "
            f"{prompt_len} tokens, the names' {total - fixed}, "
            f"'{UNKNOWN_NAME}' and </s>), but the encoder has {limit} text positions: the first {fit} names "
            f"fit. Adapt one model per part of the list, or shorten the names.",
            total, limit, fit)

    def __repr__(self) -> str:
        return (
            f"OFATokenizer(pieces={len(self._piece_ids)}, merges={len(self._merges)}, "
            f"text_symbols={self.num_text_symbols}, codes={self.num_codes}, bins={self.num_bins})"
        )
