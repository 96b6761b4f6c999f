"""Atomic writes: a file or directory appears complete under its final name, or not at all.

Everything is first written under a hidden temporary name in the target's folder (``.NAME.XXXX.tmp`` for a
file, ``.NAME.tmp-XXXX`` for a directory), fsynced, and renamed over the target in one step. A failure removes
the temporary; a hard kill (SIGKILL, power loss) can leave it behind, hidden and never under the target's name,
and an existing target keeps its old, complete content until the rename. (Replacing an existing *directory*
takes two renames, old aside then new in: a kill between those two leaves the old one in a hidden
``.NAME.old-XXXX/`` folder and none under the name.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse to open directories
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _open_temp(path: Path) -> tuple[int, Path]:
    """A new hidden file beside ``path`` (the one place a write starts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    return fd, Path(tmp)


@contextlib.contextmanager
def _staging(path: str | Path) -> Iterator[tuple[BinaryIO, Path]]:
    """A binary handle on a temporary file beside ``path`` and its name; fsynced when the block ends, removed
    if it raises."""
    fd, tmp = _open_temp(Path(path))
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def publish(staged: str | Path, path: str | Path) -> None:
    """Rename a complete ``staged`` file (beside ``path``) over ``path`` in one step, durably: the file is fsynced
    first (writers that produced it with plain writes need not have), the rename after."""
    try:
        with open(staged, "rb") as f:
            os.fsync(f.fileno())
        os.replace(staged, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        raise
    fsync_dir(Path(path).parent)


@contextlib.contextmanager
def _replacing(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file handle on a temporary file beside ``path``; on success it is fsynced and renamed over
    ``path``, on failure removed."""
    with _staging(path) as (f, tmp):
        yield f
    publish(tmp, path)


def write_staged(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a hidden temporary file beside ``path`` and fsync it; returns that file, to be renamed
    into place with :func:`publish` (for several files that should change together)."""
    with _staging(path) as (f, tmp):
        f.write(data)
    return tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    with _replacing(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """``torch.save`` through a temporary file beside ``path`` (no second in-memory copy of large states)."""
    import torch

    with _replacing(path) as f:
        torch.save(obj, f)


@contextlib.contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh staging directory; on success it replaces ``target`` in one rename.

    A failure or kill before the end leaves ``target`` as it was (a stale ``.name.tmp-*`` staging folder may
    remain after a hard kill; it is never loadable under the target name). An existing ``target`` is refused
    unless ``overwrite``, and then it is moved aside only once the new directory is complete.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite=True / --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        for f in staging.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(staging)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
