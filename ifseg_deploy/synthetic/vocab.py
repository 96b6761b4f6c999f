"""The world model's tiny byte-level BPE vocabulary, built by hand (no trainer, so it never changes).

All 256 byte symbols are pieces (any text encodes without ``<unk>``), plus one merge chain per word of the
IFSeg prompt, ``unknown`` and the concept names. ``forest`` and ``carpet`` are deliberately two pieces
(" for" + "est", " car" + "pet") so that the mean-of-sub-words class embedding is exercised. Written in the
official OFA layout (``encoder.json``, ``vocab.bpe``, ``dict.txt``) that the real loader reads.

The vocabulary depends on the world's concepts: the prompt's words, ``unknown`` and the eight default names
always (so every world within the default concepts has exactly the vocabulary, ids and table size it always
had), then the names of the other concepts the world uses, in :data:`CONCEPTS` order (appended: earlier ids
never move).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from ..tokenizer import DEFAULT_PROMPT, UNKNOWN_NAME, OFATokenizer
from .world import CONCEPTS, DEFAULT_CATEGORIES

__all__ = ["NUM_BINS", "NUM_CODES", "WORD_PIECES", "world_tokenizer", "world_words", "write_bpe_files"]

# Few image codes and location bins: OFA's table layout, at a size that keeps the token table small.
NUM_CODES = 16
NUM_BINS = 10

SPACE = "\u0120"  # GPT-2's byte-level symbol for " "
# How each word must split (the first piece carries the leading space). Words not listed are one piece.
_SPLITS: dict[str, tuple[str, ...]] = {"forest": ("for", "est"), "carpet": ("car", "pet")}


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order (its ``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _base_words() -> list[str]:
    prompt_words = re.findall(r"[A-Za-z]+", DEFAULT_PROMPT)
    return list(dict.fromkeys([*prompt_words, UNKNOWN_NAME, *DEFAULT_CATEGORIES]))


def world_words(categories: Sequence[str] | None = None) -> tuple[str, ...]:
    """The words with their own pieces in the vocabulary of a world of ``categories`` (None: the default)."""
    base = _base_words()
    used = set(DEFAULT_CATEGORIES if categories is None else categories)
    if not used <= CONCEPTS.keys():
        raise ValueError(f"categories must be names from {list(CONCEPTS)}, got {categories}")
    return (*base, *(c for c in CONCEPTS if c in used and c not in base))


# Pieces of every word any world's vocabulary can hold (the first piece carries the leading space).
WORD_PIECES: dict[str, tuple[str, ...]] = {
    w: tuple((SPACE if i == 0 else "") + p for i, p in enumerate(_SPLITS.get(w, (w,))))
    for w in (*_base_words(), *CONCEPTS)
}


@lru_cache(maxsize=8)
def _vocabulary(words: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(pieces in id order, merges in rank order): bytes first, then each piece's left-to-right merge chain."""
    pieces = _byte_symbols()
    known = set(pieces)
    merges: list[tuple[str, str]] = []
    for word in words:
        for piece in WORD_PIECES[word]:
            for k in range(2, len(piece) + 1):
                if piece[:k] not in known:
                    merges.append((piece[:k - 1], piece[k - 1]))
                    pieces.append(piece[:k])
                    known.add(piece[:k])
    return tuple(pieces), tuple(merges)


def world_tokenizer(categories: Sequence[str] | None = None) -> OFATokenizer:
    """The vocabulary of a world of ``categories`` (None: the default eight) as an :class:`OFATokenizer`
    (fairseq id = piece index + 4); checks every word's split."""
    return _tokenizer(world_words(categories))


@lru_cache(maxsize=8)
def _tokenizer(words: tuple[str, ...]) -> OFATokenizer:
    pieces, merges = _vocabulary(words)
    tok = OFATokenizer({p: i + 4 for i, p in enumerate(pieces)}, merges, 4 + len(pieces), NUM_CODES, NUM_BINS)
    for word in words:
        got, want = tuple(tok.pieces(word)), WORD_PIECES[word]
        if got != want:  # a merge chain of one word stole pairs of another: the vocabulary would be wrong
            raise RuntimeError(f"world vocabulary splits {word!r} into {got}, expected {want}")
    return tok


def write_bpe_files(directory: str | Path, categories: Sequence[str] | None = None) -> list[str]:
    """Write ``encoder.json``, ``vocab.bpe``, ``dict.txt`` and ``tokenizer_config.json`` (num_codes/num_bins)
    of the vocabulary of a world of ``categories`` into ``directory``; ``OFATokenizer.from_dir`` on it equals
    :func:`world_tokenizer` of the same categories."""
    pieces, merges = _vocabulary(world_words(categories))
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoder.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}, ensure_ascii=False),
                                      encoding="utf-8")
    (out / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    # dict.txt: one "<encoder id> <count>" line per piece; the fairseq id is the line number + 4.
    (out / "dict.txt").write_text("".join(f"{i} 1\n" for i in range(len(pieces))), encoding="utf-8")
    config = {"tokenizer": "ifseg_deploy.synthetic", "num_codes": NUM_CODES, "num_bins": NUM_BINS}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return ["encoder.json", "vocab.bpe", "dict.txt", "tokenizer_config.json"]


def name_tokens(names: Sequence[str]) -> list[list[int]]:
    """Fairseq ids of each name in the vocabulary of the world of ``names``."""
    return world_tokenizer(names).name_tokens(names)
