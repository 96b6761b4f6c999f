"""Built-in name lists for open-vocabulary adaptation (``adapt --vocabulary``), and reading one from a file."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..tokenizer import TokenizerError, name_key, parse_categories
from .classnames import ADE20K_150, COCO_STUFF_171


def _union(*lists: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for names in lists:
        for n in names:
            if name_key(n) not in seen:
                seen.add(name_key(n))
                out.append(n)
    return out


#: name -> the list (ADE20K's 150 classes, COCO-Stuff's 171, and both without repeats).
BUILTIN_VOCABULARIES: dict[str, list[str]] = {
    "ade150": list(ADE20K_150),
    "coco171": list(COCO_STUFF_171),
    "ade150+coco171": _union(ADE20K_150, COCO_STUFF_171),
}


def load_vocabulary(spec: str | Path) -> list[str]:
    """A built-in list by name (:data:`BUILTIN_VOCABULARIES`) or a file of names (comma- or newline-separated,
    ``#`` comments); :class:`~ifseg_deploy.errors.InputError` for anything else or a bad list."""
    if str(spec) in BUILTIN_VOCABULARIES:
        return list(BUILTIN_VOCABULARIES[str(spec)])
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"vocabulary {str(spec)!r} is neither a file nor one of the built-in lists "
                         f"({', '.join(BUILTIN_VOCABULARIES)})")
    try:
        return parse_categories(path.read_text(encoding="utf-8"))
    except (TokenizerError, UnicodeDecodeError) as e:
        raise InputError(f"vocabulary file {path}: {e}") from None
