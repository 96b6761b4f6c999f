"""A tiny, deterministic OFA-style byte-level BPE vocabulary for tests (no real OFA files needed).

``write_tiny_bpe(dir)`` trains a small GPT-2-style byte-level BPE (256 byte symbols, 84 learnt merges, plus
"Ġ"+byte merges) on the IFSeg prompt and some category words with the ``tokenizers`` trainer, then writes it
in OFA's layouts:

* ``layout="fairseq"``: ``encoder.json`` (piece -> "GPT-2" id), ``vocab.bpe`` (``#version: 0.2`` + merges),
  ``dict.txt`` (``<gpt2 id> <count>`` lines; fairseq id = line + 4, then a ``madeupword0000`` line as in OFA);
* ``layout="hf"``: ``vocab.json`` (piece -> fairseq id, ``<s> <pad> </s> <unk>`` = 0..3, ``<mask>`` right
  after the text symbols) + ``merges.txt``, giving the same fairseq ids as the fairseq layout.

dict.txt deliberately leaves out many pieces (all unused single bytes and half the unused merges), so they map
to ``<unk>``; every piece of ``WORDS`` and of ``extra_words`` is present. ``UNK_WORD`` encodes only to missing
pieces. Ids are stable for a given ``tokenizers`` version (its trainer is deterministic).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

PROMPT = "what is the segmentation map of the image? object:"
CATEGORY_WORDS = (
    "giraffe frisbee concrete wall tree grass unknown floor sky road person cable pallet water sand brick "
    "snow forest"
).split()
WORDS = tuple(PROMPT.split()) + tuple(CATEGORY_WORDS)
UNK_WORD = "жжж"  # Cyrillic: its bytes occur in no other word
VOCAB_SIZE = 340


@lru_cache(maxsize=1)
def _train() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([" " + w for w in WORDS], trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # Glue the leading-space marker to any first byte, so that no word starts with a bare "Ġ" piece (which
    # UNK_WORD and unforeseen extra words would otherwise share).
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        if "Ġ" + ch not in vocab:
            vocab["Ġ" + ch] = len(vocab)
            merges.append(("Ġ", ch))
    return vocab, tuple(merges)


def _pieces(tok: Tokenizer, words: Iterable[str]) -> list[str]:
    return [p for w in words for p in tok.encode(" " + w, add_special_tokens=False).tokens]


def write_tiny_bpe(
    dir: str | Path,
    layout: str = "fairseq",
    extra_words: Iterable[str] = (),
    num_codes: int | None = None,
    num_bins: int | None = None,
) -> dict:
    """Write the tiny vocabulary into ``dir`` (created if needed) in ``layout`` ("fairseq" or "hf").

    ``extra_words``: more words (whitespace-split) whose pieces must be in dict.txt; they do not change the
    BPE itself, so the ids of the other pieces stay the same. ``num_codes``/``num_bins``: when given, also
    write ``tokenizer_config.json`` so that ``OFATokenizer.from_dir`` uses them (small OFA test models).

    Returns ``{"dir", "layout", "files", "num_text_symbols" (= <mask> id), "mask_id", "words", "unk_word",
    "bpe_vocab_size", "num_merges"}`` plus ``"num_embeddings"`` when both num_codes and num_bins are given.
    """
    if layout not in ("fairseq", "hf"):
        raise ValueError(f"layout must be 'fairseq' or 'hf', got {layout!r}")
    vocab, merges = _train()
    tok = Tokenizer(models.BPE(vocab, list(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)

    extra = [w for text in extra_words for w in text.split()]
    counts = Counter(_pieces(tok, WORDS)) + Counter(_pieces(tok, extra))
    unk_pieces = set(_pieces(tok, [UNK_WORD]))
    if unk_pieces & set(counts):
        raise ValueError(f"extra_words {extra} use pieces of UNK_WORD {UNK_WORD!r}")
    # Unused merges with an even id stay; unused single bytes and odd merges go, so they map to <unk>.
    kept = [p for p, i in vocab.items() if p in counts or (len(p) > 1 and i % 2 == 0 and p not in unk_pieces)]
    kept.sort(key=lambda p: (-counts.get(p, 0), vocab[p]))
    dict_lines = [f"{vocab[p]} {counts.get(p, 0)}" for p in kept] + ["madeupword0000 0"]
    num_text = 4 + len(dict_lines)

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    if layout == "fairseq":
        files = ["encoder.json", "vocab.bpe", "dict.txt"]
        (out / "encoder.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (out / "vocab.bpe").write_text(merges_text, encoding="utf-8")
        (out / "dict.txt").write_text("\n".join(dict_lines) + "\n", encoding="utf-8")
    else:
        files = ["vocab.json", "merges.txt"]
        hf = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
        hf.update({p: 4 + i for i, p in enumerate(kept)})
        hf["madeupword0000"] = 4 + len(kept)
        hf["<mask>"] = num_text
        (out / "vocab.json").write_text(json.dumps(hf, ensure_ascii=False), encoding="utf-8")
        (out / "merges.txt").write_text(merges_text, encoding="utf-8")

    info = {
        "dir": out,
        "layout": layout,
        "files": files,
        "num_text_symbols": num_text,
        "mask_id": num_text,
        "words": WORDS + tuple(extra),
        "unk_word": UNK_WORD,
        "bpe_vocab_size": len(vocab),
        "num_merges": len(merges),
    }
    if num_codes is not None or num_bins is not None:
        config = {k: v for k, v in (("num_codes", num_codes), ("num_bins", num_bins)) if v is not None}
        (out / "tokenizer_config.json").write_text(json.dumps(config) + "\n", encoding="utf-8")
        files.append("tokenizer_config.json")
        if num_codes is not None and num_bins is not None:
            info["num_embeddings"] = num_text + 1 + num_codes + num_bins
    return info
