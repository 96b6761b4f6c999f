"""The model files a benchmark compares: the adapted-model directory (the PyTorch baseline) and the .onnx /
.engine files given with ``--model``, or a random-weight model of ``--preset`` written to ``OUT/model``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .settings import BenchUsageError, Echo, InferenceSettings, Size


@dataclass
class Sources:
    model_dir: Path
    onnx: list[tuple[Path, Any]] = field(default_factory=list)  # (path, ModelInfo)
    engines: list[tuple[Path, str]] = field(default_factory=list)  # (path, precision)
    random: dict[str, Any] | None = None  # the random-weight model's recipe, for --preset

    def given_onnx(self, precision: str, size: Size) -> Path | None:
        """A given .onnx of that precision accepting the size (a fixed-batch file runs larger batches in pieces)."""
        for path, info in self.onnx:
            if info.precision == precision and info.input.accepts(size[0], size[1], 1):
                return path
        return None

    def given_engine(self, precision: str) -> Path | None:
        for path, engine_precision in self.engines:
            if engine_precision == precision:
                return path
        return None

    def default_sizes(self, adapted: Any) -> list[Size]:
        """The given .onnx files' fixed sizes, else the model's short side squared."""
        fixed: list[Size] = []
        for _, info in self.onnx:
            f = info.input.fixed_size
            if f is not None and tuple(f) not in fixed:
                fixed.append(tuple(f))  # type: ignore[arg-type]
        if fixed:
            return fixed
        side = int((adapted.preprocessing or {}).get("short_side", 512))
        return [(side, side)]


def resolve_sources(s: InferenceSettings, echo: Echo) -> Sources:
    """The adapted-model directory (baseline) and the exported files among ``--model``, or a random model of
    ``--preset`` written to ``OUT/model``."""
    if s.preset and s.models:
        raise BenchUsageError("give either --preset (a random-weight model) or --model, not both")
    if not s.preset and not s.models:
        raise BenchUsageError("give --model (an adapted-model directory, plus any .onnx / .engine exported from "
                              "it) or --preset NAME (a random-weight model of that size)")
    if s.preset:
        model_dir, info = _random_model(s, Path(s.out) / "model", echo)
        return Sources(model_dir, random=info)
    sources = _given_files(s.models)
    from ifseg_deploy.model_dir import AdaptedModel

    categories = AdaptedModel.from_pretrained(sources.model_dir).categories
    for f, info in sources.onnx:
        if list(info.categories) != list(categories):
            raise BenchUsageError(f"{f} has other categories than {sources.model_dir}: it was exported from "
                                  "another model")
    return sources


def _given_files(models: list[str]) -> Sources:
    from ifseg_deploy.runtime.engine_file import read_sidecar
    from ifseg_deploy.runtime.model_info import read_info

    dirs: list[Path] = []
    onnx_files: list[tuple[Path, Any]] = []
    engines: list[tuple[Path, str]] = []

    def add_dir(d: Path) -> None:
        if dirs and dirs[0].resolve() != d.resolve():
            raise BenchUsageError(f"two adapted-model directories given ({dirs[0]}, {d}); the benchmark compares "
                                  "the backends of one model")
        dirs.append(d)

    for m in models:
        p = Path(m)
        if p.is_dir() and (p / "config.json").is_file():
            add_dir(p)
        elif p.is_dir() and (p / "model" / "config.json").is_file():
            # an `ifseg-deploy demo` output: model/, model.onnx, model.int8.onnx
            add_dir(p / "model")
            onnx_files += [(f, read_info(f)) for f in sorted(p.glob("*.onnx"))]
        elif p.is_file() and p.suffix.lower() == ".onnx":
            onnx_files.append((p, read_info(p)))
        elif p.is_file() and p.suffix.lower() in (".engine", ".plan"):
            engines.append((p, str(read_sidecar(p)["key"].precision)))
        else:
            raise BenchUsageError(f"{m}: not an adapted-model directory, a demo output folder, an .onnx or an "
                                  ".engine file")
    if not dirs:
        raise BenchUsageError("the PyTorch eager fp32 baseline needs the adapted-model directory the files were "
                              "exported from: add it with --model DIR")
    return Sources(dirs[0], onnx_files, engines)


def _random_model(s: InferenceSettings, model_dir: Path, echo: Echo) -> tuple[Path, dict[str, Any]]:
    """Write (or reuse) the random-weight model of the preset."""
    from .models import INIT_RECIPE, default_categories, write_random_model

    categories = list(s.categories or default_categories(s.bpe_dir is not None))
    want = {"preset": s.preset, "seed": s.seed, "tokenizer": str(s.bpe_dir) if s.bpe_dir else "synthetic world",
            "init": INIT_RECIPE}
    cfg = model_dir / "config.json"
    if cfg.is_file():
        conf = json.loads(cfg.read_text())
        if conf.get("metadata", {}).get("random_weights") == want and conf.get("categories") == categories:
            echo(f"random-weight {s.preset} model: reusing {model_dir}")
            return model_dir, {**want, "categories": len(categories)}
    echo(f"random-weight {s.preset} model ({len(categories)} categories, seed {s.seed}) -> {model_dir}")
    write_random_model(s.preset, model_dir, categories, s.bpe_dir, s.seed, overwrite=True)  # type: ignore[arg-type]
    return model_dir, {**want, "categories": len(categories)}


def model_digest(model_dir: Path) -> str:
    """SHA-256 of the model directory's config and weights: what ties an export to its source."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        with open(model_dir / name, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()
