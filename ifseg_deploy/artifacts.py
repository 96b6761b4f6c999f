"""Model files and folders handed to ifseg-deploy: what kind each one is, and a named error when it is
damaged, incomplete, or of another kind than the command needs.

Three kinds: an adapted-model directory (``config.json`` + ``model.safetensors`` + tokenizer files), an exported
``.onnx`` file, and a TensorRT engine (``model.engine`` with its ``model.engine.json`` sidecar). The loaders of
each kind call :func:`check_artifact` first and :func:`incomplete` when their parser fails, so that a truncated
download or a file given to the wrong backend gets a message naming the file and its size, never a parser's
stack trace.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ArtifactError

#: kind -> what the messages call it
KIND_NAMES = {"model": "adapted-model directory", "onnx": "ONNX file", "engine": "TensorRT engine"}
#: kind -> the backend that opens it
BACKEND_OF = {"model": "torch", "onnx": "onnxruntime", "engine": "tensorrt"}
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
MODEL_CONFIG = "config.json"
ENGINE_SIDECAR_SUFFIX = ".json"



def size_text(path: str | Path) -> str:
    """``"1,234 bytes"`` (or ``"size unknown"`` where the file cannot be stat'ed)."""
    try:
        return f"{Path(path).stat().st_size:,} bytes"
    except OSError:
        return "size unknown"


def guess_kind(path: str | Path) -> str | None:
    """The kind ``path`` looks like by its name and layout, without parsing it: "model" (a folder with
    ``config.json``), "engine" (an engine suffix, or a ``.json`` sidecar beside it), "onnx", or None."""
    p = Path(path)
    if p.is_dir():
        return "model" if (p / MODEL_CONFIG).is_file() else None
    suffix = p.suffix.lower()
    if suffix in ENGINE_SUFFIXES or p.with_name(p.name + ENGINE_SIDECAR_SUFFIX).is_file():
        return "engine"
    if suffix == ".onnx":
        return "onnx"
    return None


def incomplete_message(path: str | Path, kind: str, why: str, what_to_do: str | None = None) -> str:
    """"PATH (SIZE) is not a complete KIND: WHY; WHAT TO DO". A folder's own size says nothing: for a model
    directory, ``why`` names the damaged file inside it and its size."""
    size = "" if Path(path).is_dir() else f" ({size_text(path)})"
    return f"{path}{size} is not a complete {KIND_NAMES[kind]}: {why}; {what_to_do or _REMAKE[kind]}"


def incomplete(path: str | Path, kind: str, why: str, what_to_do: str | None = None) -> ArtifactError:
    """The error for a ``kind`` that exists but cannot be parsed (see :func:`incomplete_message`)."""
    return ArtifactError(incomplete_message(path, kind, why, what_to_do))


_REMAKE = {
    "model": "the copy or the run that wrote it did not finish; copy it again or re-create it with "
             "`ifseg-deploy adapt`",
    "onnx": "the download or copy did not finish, or it is another kind of file; copy it again or re-export it "
            "with `ifseg-deploy export`",
    "engine": "the copy or build did not finish; rebuild it on this device with `ifseg-deploy export --format "
              "tensorrt --model model.onnx --out ...`",
}


def check_artifact(path: str | Path, kind: str) -> Path:
    """Refuse ``path`` before parsing unless it can be a ``kind``: it exists, is a folder ("model") or a non-empty
    file (the others), and does not look like another kind. Returns it as a Path.

    Raises FileNotFoundError for a missing path and :class:`ArtifactError` otherwise.
    """
    if kind not in KIND_NAMES:
        raise ValueError(f"unknown artifact kind {kind!r}; one of {', '.join(KIND_NAMES)}")
    p = Path(path)
    name = KIND_NAMES[kind]
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such {name}")
    found = guess_kind(p)
    if found is not None and found != kind:
        raise ArtifactError(f"{p} is {_a(KIND_NAMES[found])}, not {_a(name)}; open it with backend "
                            f"'{BACKEND_OF[found]}' (--backend {BACKEND_OF[found]})")
    if kind == "model":
        if not p.is_dir():
            raise ArtifactError(f"{p} is a file ({size_text(p)}), not an adapted-model directory; create one with "
                                "`ifseg-deploy adapt`")
        return p
    if p.is_dir():
        raise ArtifactError(f"{p} is a folder, not {_a(name)}")
    if p.stat().st_size == 0:
        raise incomplete(p, kind, "the file is empty")
    return p


def _a(noun: str) -> str:
    return ("an " if noun[0].lower() in "aeiou" else "a ") + noun
