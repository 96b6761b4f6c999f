"""The export cache of a benchmark run: ONNX fp32, INT8 (Q/DQ) and ONNX Runtime's dynamic INT8 files per input
size and batch in ``OUT/exports``, made from the model directory on first use and reused by later runs while the
model and the settings are unchanged, and the synthetic-world scenes the INT8 export calibrates on by default."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ifseg_deploy.atomic import atomic_write_text

from .settings import DYNAMIC_INT8, Echo, InferenceSettings, Size
from .sources import Sources, model_digest


class Exporter:
    """ONNX fp32 / INT8 files for a size and batch, made from the model directory on first use and reused while
    the model and the settings are unchanged (a JSON sidecar records them)."""

    def __init__(self, s: InferenceSettings, sources: Sources, echo: Echo) -> None:
        self.s, self.sources, self.echo = s, sources, echo
        self.dir = Path(s.out) / "exports"
        self._digest: str | None = None
        self._done: dict[tuple, Path] = {}
        self.calibration: str | None = None

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = model_digest(self.sources.model_dir)
        return self._digest

    def _reuse(self, path: Path, record: dict[str, Any]) -> bool:
        side = path.with_suffix(".json")
        if not (path.is_file() and side.is_file()):
            return False
        try:
            return json.loads(side.read_text()) == record
        except (OSError, json.JSONDecodeError):
            return False

    def onnx(self, precision: str, size: Size, max_batch: int) -> Path:
        key = (precision, tuple(size), max_batch)
        if key not in self._done:
            self._done[key] = self._onnx(precision, size, max_batch)
        return self._done[key]

    def _onnx(self, precision: str, size: Size, max_batch: int) -> Path:
        from ifseg_deploy.export.pipeline import export_model
        from ifseg_deploy.runtime.input_spec import InputSpec

        self.dir.mkdir(parents=True, exist_ok=True)
        tag = f"{size[0]}x{size[1]}_b{max_batch}{'' if self.s.refine else '_norefine'}"
        path = self.dir / f"{precision}_{tag}.onnx"
        record: dict[str, Any] = {"source_sha256": self.digest, "precision": precision, "size": list(size),
                                  "max_batch": max_batch, "refine": self.s.refine}
        if precision == "int8":
            calib, n = self._calibration(size)
            record["calibration"] = {"images": calib, "max": self.s.calib_max, "count": n}
        if self._reuse(path, record):
            self.echo(f"reusing {path}")
            return path
        say: Echo = lambda m: self.echo(f"  {m}")  # noqa: E731
        t0 = time.perf_counter()
        if precision == "fp32":
            self.echo(f"exporting {path.name} (ONNX fp32, fixed {size[0]}x{size[1]}, batch 1..{max_batch})")
            # The benchmark measures agreement itself (and random weights give near-flat probabilities): no gate.
            export_model(self.sources.model_dir, path, format="onnx", precision="fp32",
                         input_spec=InputSpec.fixed(size, max_batch), refine=self.s.refine, agreement_threshold=0.0,
                         overwrite=True, echo=say)
        elif precision == DYNAMIC_INT8:
            fp32 = self.onnx("fp32", size, max_batch)
            self.echo(f"exporting {path.name} (the CPU INT8 format: onnxruntime dynamic INT8)")
            dynamic_int8(fp32, path)
        elif precision == "int8":
            fp32 = self.onnx("fp32", size, max_batch)
            self.echo(f"exporting {path.name} (INT8 Q/DQ, calibrated on {n} image(s) from {calib})")
            export_model(fp32, path, format="onnx", precision="int8", calib_images=calib,
                         calib_max=self.s.calib_max, reduced_agreement_threshold=0.0, max_miou_drop=None,
                         overwrite=True, echo=say)
        else:
            raise ValueError(precision)
        atomic_write_text(path.with_suffix(".json"), json.dumps(record, indent=2))
        self.echo(f"  ({time.perf_counter() - t0:.0f} s)")
        return path

    def _calibration(self, size: Size) -> tuple[str, int]:
        """``--calib-images``, or ``calib_max`` synthetic-world scenes (validation seeds) written as PNGs."""
        if self.s.calib_images:
            from ifseg_deploy.export.inputs import list_images

            n = len(list_images(self.s.calib_images, self.s.calib_max))
            self.calibration = f"{n} image(s) from {self.s.calib_images}"
            return str(self.s.calib_images), n
        from PIL import Image

        from ifseg_deploy.synthetic.world import SyntheticScenes

        folder = Path(self.s.out) / "calibration" / f"{size[0]}x{size[1]}"
        n = self.s.calib_max
        files = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if len(files) != n:
            folder.mkdir(parents=True, exist_ok=True)
            for f in files:
                f.unlink()
            for i, (image, _) in enumerate(SyntheticScenes(n, size, split="validation")):
                Image.fromarray(image).save(folder / f"scene{i:03d}.png")
        self.calibration = f"{n} synthetic-world scene(s) (validation seeds) at {size[0]}x{size[1]}"
        return str(folder), n


def dynamic_int8(fp32: Path, out: Path) -> None:
    """The export stage's dynamic INT8 (:mod:`ifseg_deploy.export.int8_dynamic`) of ``fp32``, written atomically."""
    from ifseg_deploy.export.int8_dynamic import quantize_dynamic_int8

    tmp = out.with_name(f".{out.name}.tmp")
    quantize_dynamic_int8(fp32, tmp)
    tmp.replace(out)
