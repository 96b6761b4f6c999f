"""``ifseg-deploy demo``: the whole pipeline on the synthetic world, in minutes on a CPU.

1. build (or load from the cache) the tiny OFA-architecture vision-language model of the world;
2. adapt it to the world's category names through the real ``adapt`` code path — no image is ever seen;
3. export the adapted model to ONNX (fp32) and to Q/DQ INT8 calibrated on unlabeled scenes;
4. segment held-out scenes with every variant and measure mIoU (unadapted, adapted in PyTorch, ONNX, INT8);
5. write overlays and a Markdown report with the pictures.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write_bytes, atomic_write_text

Echo = Callable[[str], None]


@dataclass(frozen=True)
class DemoSettings:
    """What a demo run does; ``quick()`` is the reduced mode CI runs."""

    scene_size: int = 256  # scenes are made at this size; the model sees a 16 x 16 grid
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    eval_scenes: int = 32
    calib_scenes: int = 32
    showcase: int = 4
    world_steps: int | None = None  # None: the full world-model recipe

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(steps=200, eval_scenes=12, calib_scenes=8, showcase=2, world_steps=60)


def _world_recipe(settings: DemoSettings):
    from .synthetic.tiny_vlm import WorldRecipe

    if settings.world_steps is None:
        return WorldRecipe()
    return WorldRecipe(steps=settings.world_steps, pool_scenes=64, pool_size=160)


def prepare_out(out: str | Path, overwrite: bool) -> Path:
    """The demo's folder, created; refused when it holds something and ``overwrite`` is not set."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty (pass --overwrite to replace the demo)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_demo(out: str | Path, settings: DemoSettings | None = None, *, cache_dir: str | Path | None = None,
             overwrite: bool = False, progress: bool = True, echo: Echo = print) -> dict:
    """Run the demo into ``out`` and return the report (also written as ``report.json`` and ``report.md``)."""
    import torch

    from .synthetic import build_or_load_world_model
    from .synthetic.world import SyntheticScenes

    s = settings or DemoSettings()
    out = prepare_out(out, overwrite)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    echo("[1/5] world model: build or load from the cache")
    checkpoint = build_or_load_world_model(cache_dir, recipe=_world_recipe(s), progress=progress)
    timings["world_model_s"] = time.perf_counter() - t0
    categories = list(SyntheticScenes(1).class_names)

    echo(f"[2/5] adapting to {len(categories)} category names ({', '.join(categories)}), {s.steps} steps, "
         "no images")
    t = time.perf_counter()
    model_dir = _adapt(checkpoint, categories, out / "model", s, progress)
    timings["adapt_s"] = time.perf_counter() - t

    echo("[3/5] exporting ONNX fp32 and INT8 (calibrated on unlabeled scenes)")
    t = time.perf_counter()
    onnx_fp32, onnx_int8 = _export(model_dir, out, s, echo)
    timings["export_s"] = time.perf_counter() - t

    echo(f"[4/5] measuring mIoU on {s.eval_scenes} held-out scenes")
    t = time.perf_counter()
    segmenters = _segmenters(checkpoint, categories, model_dir, onnx_fp32, onnx_int8, s)
    try:
        results = _measure(segmenters, s, echo)
        timings["evaluate_s"] = time.perf_counter() - t
        echo("[5/5] overlays and report")
        pictures = _pictures(out, segmenters, categories, s)
    finally:
        for seg in segmenters.values():
            seg.close()

    timings["total_s"] = time.perf_counter() - t0
    report = {
        "categories": categories, "settings": s.__dict__, "world_checkpoint": str(checkpoint),
        "model_dir": str(model_dir), "onnx_fp32": str(onnx_fp32), "onnx_int8": str(onnx_int8),
        "chance_bound": 1.5 / len(categories), "results": results, "timings": timings, "pictures": pictures,
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "report.md", render_markdown(report))
    echo(f"wrote {out / 'report.md'} ({timings['total_s']:.0f} s)")
    return report


def _adapt(checkpoint: Path, categories: list[str], model_dir: Path, s: DemoSettings, progress: bool) -> Path:
    """Adapt through the real ``adapt`` code path, at the scenes' size (no image is seen)."""
    from .adapt import AdaptConfig, adapt

    grid = s.scene_size // 16
    cfg = AdaptConfig(steps=s.steps, batch_size=s.batch_size, lr=s.lr, wordmap_size=grid, grid_max=grid,
                      target_size=s.scene_size, log_every=20, checkpoint_every=max(50, s.steps // 4))
    adapt(checkpoint, categories, model_dir, cfg, overwrite=True, progress=progress,
          preprocessing={"short_side": s.scene_size})
    return model_dir


def _segmenters(checkpoint: Path, categories: list[str], model_dir: Path, onnx_fp32: Path, onnx_int8: Path,
                s: DemoSettings) -> dict:
    """The four variants the report compares, by name."""
    from .model_dir import AdaptedModel
    from .runtime.segmenter import Segmenter

    unadapted = AdaptedModel.unadapted_from_ofa(checkpoint, categories)
    unadapted.preprocessing = unadapted.preprocessing.replace(short_side=s.scene_size)
    return {
        "unadapted (torch)": Segmenter.from_model(unadapted),
        "adapted (torch)": Segmenter.from_pretrained(model_dir),
        "adapted (ONNX Runtime fp32)": Segmenter.from_pretrained(onnx_fp32, backend="onnxruntime"),
        "adapted (ONNX Runtime INT8)": Segmenter.from_pretrained(onnx_int8, backend="onnxruntime"),
    }


def _measure(segmenters: dict, s: DemoSettings, echo: Echo) -> dict:
    """mIoU / mAcc / aAcc of each variant on held-out scenes."""
    from .evaluation.evaluate import evaluate
    from .synthetic.dataset import SyntheticDataset

    dataset = SyntheticDataset(s.eval_scenes, s.scene_size)
    results = {}
    for name, seg in segmenters.items():
        report = evaluate(seg, dataset, progress=False)
        results[name] = {"mIoU": report["mIoU"], "mAcc": report["mAcc"], "aAcc": report["aAcc"],
                         "seconds": report["seconds"], "refinement": report["model"]["refinement"]}
        echo(f"  {name:30s} mIoU {report['mIoU']:.3f}")
    return results


def _pictures(out: Path, segmenters: dict, categories: list[str], s: DemoSettings) -> list[dict]:
    """Overlays of unseen scenes: truth, unadapted, adapted and INT8; the adapted model's label PNG."""
    from PIL import Image

    from .runtime.visualize import label_image, overlay, png_bytes
    from .synthetic.world import SyntheticScenes

    pictures = []
    showcase = SyntheticScenes(s.showcase, (s.scene_size, s.scene_size), start=s.eval_scenes)  # unseen too
    (out / "pictures").mkdir(exist_ok=True)
    for i, (image, mask) in enumerate(showcase):
        row = {"scene": f"pictures/scene{i}.png", "truth": f"pictures/scene{i}_truth.png"}
        atomic_write_bytes(out / row["scene"], png_bytes(Image.fromarray(image)))
        atomic_write_bytes(out / row["truth"], png_bytes(overlay(image, mask, categories)))
        for key, name in (("unadapted", "unadapted (torch)"), ("adapted", "adapted (torch)"),
                          ("int8", "adapted (ONNX Runtime INT8)")):
            labels = segmenters[name](image).labels
            row[key] = f"pictures/scene{i}_{key}.png"
            atomic_write_bytes(out / row[key], png_bytes(overlay(image, labels, categories)))
        atomic_write_bytes(out / f"pictures/scene{i}_labels.png",
                           png_bytes(label_image(segmenters["adapted (torch)"](image).labels, len(categories))))
        pictures.append(row)
    return pictures


def _export(model_dir: Path, out: Path, s: DemoSettings, echo: Echo) -> tuple[Path, Path]:
    from PIL import Image

    from .export.pipeline import export_model
    from .runtime.input_spec import InputSpec
    from .synthetic.world import SyntheticScenes

    calib = out / "calibration_images"  # unlabeled: only the pictures are written
    calib.mkdir(exist_ok=True)
    for i, (image, _) in enumerate(SyntheticScenes(s.calib_scenes, (s.scene_size, s.scene_size), split="validation")):
        Image.fromarray(image).save(calib / f"calib{i:03d}.png")
    spec = InputSpec.fixed((s.scene_size, s.scene_size))
    fp32 = out / "model.onnx"
    int8 = out / "model.int8.onnx"
    quiet: Echo = lambda msg: echo(f"  {msg}")  # noqa: E731
    export_model(model_dir, fp32, format="onnx", precision="fp32", input_spec=spec, overwrite=True, echo=quiet)
    # The world model is tiny (d_model 64): INT8 costs it more label agreement than a real OFA; the report
    # states the mIoU each variant reaches rather than gating on agreement here.
    export_model(fp32, int8, format="onnx", precision="int8", calib_images=calib, overwrite=True,
                 reduced_agreement_threshold=0.8, max_miou_drop=None, echo=quiet)
    return fp32, int8


def render_markdown(report: dict) -> str:
    """The human-readable report: what was run, the mIoU table, and the pictures."""
    cats = ", ".join(report["categories"])
    lines = [
        "# ifseg-deploy demo: image-free segmentation on the synthetic world", "",
        f"Categories: {cats}. The model was adapted from these names alone: no image, no mask.", "",
        f"mIoU on {report['settings']['eval_scenes']} held-out {report['settings']['scene_size']} px scenes "
        f"(chance bound used by the tests: 1.5/K = {report['chance_bound']:.3f}):", "",
        "| model | mIoU | mAcc | aAcc | seconds |", "|---|---|---|---|---|",
    ]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['mIoU']:.3f} | {r['mAcc']:.3f} | {r['aAcc']:.3f} | {r['seconds']:.1f} |")
    t = report["timings"]
    lines += ["", f"Times: world model {t['world_model_s']:.0f} s, adaptation {t['adapt_s']:.0f} s, export "
                  f"{t['export_s']:.0f} s, evaluation {t['evaluate_s']:.0f} s, total {t['total_s']:.0f} s "
                  f"({report['torch_threads']} torch thread(s)).", "",
              "| scene | ground truth | unadapted | adapted (torch) | adapted (INT8) |", "|---|---|---|---|---|"]
    for p in report["pictures"]:
        cells = [f"![]({p[k]})" for k in ("scene", "truth", "unadapted", "adapted", "int8")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Files: `model/` (adapted model directory), `model.onnx`, `model.int8.onnx`, `report.json`."]
    return "\n".join(lines) + "\n"
