"""The engine cache: a folder of TensorRT engines named by the :class:`EngineKey` that makes each one valid, plus
TensorRT timing caches. The file format (plan + sidecar, and its checks) is :mod:`ifseg_deploy.runtime.engine_file`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ifseg_deploy.runtime.engine_file import EngineFileError, EngineKey, read_engine, sidecar_path, write_engine

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    env = os.environ.get("IFSEG_DEPLOY_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ifseg-deploy"
    return base / "engines"


class EngineCache:
    """A folder of engines named by :meth:`EngineKey.file_name`, plus TensorRT timing caches."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def path_for(self, key: EngineKey) -> Path:
        return self.root / key.file_name()

    def timing_cache_path(self, tensorrt_version: str, compute_capability: str, gpu_name: str) -> Path:
        gpu = "".join(c if c.isalnum() else "-" for c in gpu_name).strip("-").lower()
        return self.root / f"timing.trt{tensorrt_version}.sm{compute_capability.replace('.', '')}.{gpu}.cache"

    def load(self, key: EngineKey) -> tuple[bytes, dict[str, Any]] | None:
        """The cached plan for ``key``, or None (absent; a corrupt or mismatching entry is removed and logged)."""
        path = self.path_for(key)
        if not path.exists() and not sidecar_path(path).exists():
            return None
        try:
            return read_engine(path, expected=key)
        except EngineFileError as e:
            log.warning("engine cache: %s; removing the entry and rebuilding", e)
            self.remove(key)
            return None

    def store(self, key: EngineKey, plan: bytes, metadata: dict[str, str] | None = None) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return write_engine(self.path_for(key), plan, key, metadata)

    def remove(self, key: EngineKey) -> None:
        for p in (self.path_for(key), sidecar_path(self.path_for(key))):
            if p.exists():
                p.unlink()
