"""Reading OFA's English BPE files (both layouts) for :class:`~ifseg_deploy.tokenizer.OFATokenizer`, with
errors that name the file and what is wrong with it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError

FAIRSEQ_FILES = ("encoder.json", "vocab.bpe", "dict.txt")
HF_FILES = ("vocab.json", "merges.txt")
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
_LAYOUTS = (
    "encoder.json + vocab.bpe + dict.txt (fairseq/official OFA layout) "
    "or vocab.json + merges.txt (Hugging Face OFA layout)"
)
_EXPECTED = f"expected the English OFA BPE files: {_LAYOUTS}"


class TokenizerError(InputError):
    """Bad tokenizer files or bad category names; the message names the file or the name."""


def read_json_vocab(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"{path}: cannot read it as JSON ({e})") from e
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and type(v) is int and v >= 0 for k, v in data.items()
    ):
        raise TokenizerError(f"{path}: expected a JSON object mapping BPE pieces to non-negative integer ids")
    if not data:
        raise TokenizerError(f"{path}: the vocabulary is empty")
    return data


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: cannot read it ({e})") from e


def read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for n, line in enumerate(_read_lines(path), 1):
        if (n == 1 and line.startswith("#version")) or not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise TokenizerError(f"{path}:{n}: expected a merge '<left> <right>', got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def read_fairseq_dict(path: Path) -> list[str]:
    """Symbols of a fairseq ``dict.txt`` in id order (first one is id 4), parsed as fairseq does."""
    symbols: list[str] = []
    seen = set(SPECIALS)
    for n, line in enumerate(_read_lines(path), 1):
        word, _, field = line.rstrip().rpartition(" ")
        overwrite = field == "#fairseq:overwrite"
        if overwrite:
            word, _, field = word.rpartition(" ")
        if not word or not field.isdigit():
            raise TokenizerError(f"{path}:{n}: expected '<symbol> <count>', got {line!r}")
        if word in seen:
            if overwrite:  # fairseq only updates the count: no new id
                continue
            raise TokenizerError(f"{path}:{n}: duplicate symbol {word!r}")
        seen.add(word)
        symbols.append(word)
    return symbols


def require_files(path: Path, names: Sequence[str]) -> None:
    if not path.is_dir():
        raise TokenizerError(f"{path}: not a directory; {_EXPECTED}")
    missing = [n for n in names if not (path / n).is_file()]
    if not missing:
        return
    if (path / "vocab.txt").is_file():
        raise TokenizerError(
            f"{path} holds vocab.txt, the Chinese OFA (BERT) vocabulary: IFSeg needs the English OFA "
            f"checkpoint and its BPE files ({_LAYOUTS}); "
            "the Chinese checkpoint gives ~0.0001 mIoU"
        )
    raise TokenizerError(f"{path} is missing {', '.join(missing)}; {_EXPECTED}")
