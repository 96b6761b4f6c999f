"""Load tensors from PyTorch pickles without ever executing pickled code.

``torch.load(weights_only=True)`` only rebuilds tensors and plain containers. fairseq checkpoints also hold an
``argparse.Namespace`` (the training arguments) in old files; that class has no side effects on unpickling, so it
is the one extra type allowed. Anything else (a class that would run code, an OmegaConf object) is refused with
a message that says how to re-save the weights alone.
"""

from __future__ import annotations

import argparse
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..artifacts import size_text
from .errors import CheckpointError

_SAFE_EXTRA_GLOBALS = [argparse.Namespace]


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish")
    try:
        with torch.serialization.safe_globals(_SAFE_EXTRA_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" in text or "Unsupported global" in text:
            detail = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln or "global" in ln), "")
            raise CheckpointError(
                f"refused to load {path}: it contains pickled Python objects beyond tensors and plain "
                f"containers, which could run code when loaded ({detail or 'unsupported global'}). "
                "If you trust the file, re-save only its weights, e.g. "
                "torch.save({'model': torch.load(p, weights_only=False)['model']}, 'clean.pt')"
            ) from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({text.splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path} is truncated or corrupt ({first}); download it again "
            f"({path.stat().st_size / 2**20:.1f} MiB on disk)"
        ) from None


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file into CPU tensors, turning format errors into :class:`CheckpointError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({size_text(path)}; {e})") from None
