"""Build the world model once and keep it in the user cache directory.

Layout: ``<root>/world/<key>/`` with ``ofa_world.pt``, the BPE files and ``world.json`` (the recipe, versions,
build time and the SHA-256 of every file). ``<root>`` is ``$IFSEG_DEPLOY_CACHE``, else
``$XDG_CACHE_HOME/ifseg-deploy``, else ``~/.cache/ifseg-deploy``. ``<key>`` hashes the recipe, the build format
and the package version. An entry is written atomically (staged, then renamed into place); one whose files do
not match their recorded hashes is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..atomic import atomic_directory
from .tiny_vlm import CHECKPOINT_NAME, WorldRecipe, build_world_checkpoint
from .world import DEFAULT_CATEGORIES

__all__ = ["MANIFEST_NAME", "build_or_load_world_model", "default_cache_root", "world_cache_entry"]

log = logging.getLogger(__name__)

MANIFEST_NAME = "world.json"


def default_cache_root() -> Path:
    if os.environ.get("IFSEG_DEPLOY_CACHE"):
        return Path(os.environ["IFSEG_DEPLOY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ifseg-deploy"


def world_cache_entry(recipe: WorldRecipe, cache_dir: str | Path | None = None) -> Path:
    """The directory where the model of ``recipe`` lives (whether or not it is built yet)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    return root / "world" / recipe.key()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_valid(entry: Path, key: str) -> bool:
    """True when the manifest names this key and every recorded file is present with its hash."""
    try:
        manifest = json.loads((entry / MANIFEST_NAME).read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("key") != key or CHECKPOINT_NAME not in files:
            return False
        return all(_sha256(entry / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def build_or_load_world_model(cache_dir: str | Path | None = None, seed: int = 0,
                              categories: Sequence[str] | None = None, progress: bool = True, *,
                              recipe: WorldRecipe | None = None, rebuild: bool = False) -> Path:
    """Path of the world model's OFA checkpoint (``.../ofa_world.pt``), built on first use (about a minute on
    2 CPU cores for the default recipe) and then loaded from the cache.

    Pass it to ``AdaptedModel.unadapted_from_ofa(path, categories)`` or ``adapt``: the BPE files sit next to it, as
    with an official ``ofa_base.pt``. ``recipe`` overrides ``seed``/``categories`` (e.g. a reduced build for
    tests); ``rebuild=True`` ignores a valid entry.
    """
    if recipe is None:
        recipe = WorldRecipe(seed=seed, categories=tuple(categories or DEFAULT_CATEGORIES))
    elif seed != 0 or categories is not None:
        raise ValueError("pass either a recipe or seed/categories, not both")
    entry = world_cache_entry(recipe, cache_dir)
    key = recipe.key()
    if not rebuild and _is_valid(entry, key):
        return entry / CHECKPOINT_NAME
    if entry.exists() and not rebuild:
        log.warning("world model cache entry %s is incomplete or corrupt: rebuilding it", entry)
    log.info("building the synthetic world model (recipe %s) into %s", key, entry)
    with atomic_directory(entry, overwrite=entry.exists()) as staging:
        info = build_world_checkpoint(staging, recipe, progress)
        info["files"] = {f.name: _sha256(f) for f in sorted(staging.iterdir()) if f.is_file()}
        info["versions"] = _versions()
        (staging / MANIFEST_NAME).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return entry / CHECKPOINT_NAME


def _versions() -> dict[str, str]:
    import numpy
    import torch

    from ..version import __version__

    return {"ifseg_deploy": __version__, "torch": torch.__version__, "numpy": numpy.__version__}
