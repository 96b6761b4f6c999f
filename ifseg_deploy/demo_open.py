"""``ifseg-deploy demo --open-vocabulary``: one model adapted once, segmenting two vocabularies at run time.

1. build (or load from the cache) the 16-concept world model (``WorldRecipe.open_vocabulary``);
2. adapt ONE model with ``AdaptConfig.vocabulary`` on 12 of the names (every sample draws its own subset);
   the other 4 names are never seen in adaptation. No image is seen;
3. export it with ``export --open-vocabulary`` (fp32 ONNX whose vocabulary is an input);
4. for each of two vocabularies (the second with held-out names), switch the same PyTorch and ONNX Runtime
   Segmenters to it with ``set_categories`` and measure mIoU on held-out 16-concept scenes, pixels of concepts
   outside the vocabulary ignored (the COCO-15 protocol), next to the unadapted model given that vocabulary;
5. write overlays per vocabulary and a Markdown report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write_bytes, atomic_write_text
from .demo import Echo, prepare_out

#: The names the model is adapted on (the first 12 concepts) and those it never sees in adaptation.
SEEN: tuple[str, ...] = ("sky", "grass", "water", "sand", "brick", "snow", "road", "forest", "wood", "dirt", "tile",
                         "carpet")
HELD_OUT: tuple[str, ...] = ("leaf", "rock", "metal", "lava")
#: The two run-time vocabularies: seen names in a new combination; then one that shares a name with the first and
#: holds three names never seen in adaptation.
VOCABULARIES: tuple[tuple[str, ...], ...] = (("water", "brick", "forest", "tile", "carpet"),
                                             ("sky", "water", "dirt", "leaf", "rock", "lava"))
TORCH, ONNX, UNADAPTED = "open-vocabulary (torch)", "open-vocabulary (ONNX Runtime fp32)", "unadapted (torch)"


@dataclass(frozen=True)
class OpenDemoSettings:
    """What an open-vocabulary demo run does; ``quick()`` is the reduced mode."""

    scene_size: int = 256
    steps: int = 400
    batch_size: int = 8
    lr: float = 1e-3
    vocab_max: int = 8  # names per training sample: 2..vocab_max
    eval_scenes: int = 32
    showcase: int = 4
    world_steps: int | None = None  # None: the full world-model recipe
    vocabularies: tuple[tuple[str, ...], ...] = VOCABULARIES

    @classmethod
    def quick(cls) -> OpenDemoSettings:
        return cls(steps=200, eval_scenes=12, showcase=2, world_steps=60)


def _world_recipe(s: OpenDemoSettings):
    from .synthetic.tiny_vlm import WorldRecipe

    reduced = {} if s.world_steps is None else {"steps": s.world_steps, "pool_scenes": 64, "pool_size": 160}
    return WorldRecipe.open_vocabulary(**reduced)


def run_open_vocabulary_demo(out: str | Path, settings: OpenDemoSettings | None = None, *,
                             cache_dir: str | Path | None = None, overwrite: bool = False, progress: bool = True,
                             echo: Echo = print) -> dict:
    """Run the open-vocabulary demo into ``out``; return the report (also ``report.json`` and ``report.md``)."""
    import torch

    from .synthetic import build_or_load_world_model

    s = settings or OpenDemoSettings()
    out = prepare_out(out, overwrite)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    echo("[1/5] 16-concept world model: build or load from the cache")
    checkpoint = build_or_load_world_model(cache_dir, recipe=_world_recipe(s), progress=progress)
    timings["world_model_s"] = time.perf_counter() - t0

    echo(f"[2/5] adapting ONE open-vocabulary model on {len(SEEN)} names ({', '.join(SEEN)}), {s.steps} steps, "
         f"2..{s.vocab_max} names per sample, no images; never seen: {', '.join(HELD_OUT)}")
    t = time.perf_counter()
    model_dir = _adapt(checkpoint, out / "model", s, progress)
    timings["adapt_s"] = time.perf_counter() - t

    echo("[3/5] exporting ONNX fp32 with the vocabulary as input (export --open-vocabulary)")
    t = time.perf_counter()
    onnx = _export(model_dir, out / "model.onnx", s, echo)
    timings["export_s"] = time.perf_counter() - t

    echo(f"[4/5] {len(s.vocabularies)} vocabularies, one model: mIoU on {s.eval_scenes} held-out 16-concept scenes, "
         "and overlays")
    t = time.perf_counter()
    vocabularies, pictures = _per_vocabulary(out, checkpoint, model_dir, onnx, s, echo)
    timings["evaluate_s"] = time.perf_counter() - t

    timings["total_s"] = time.perf_counter() - t0
    report = {
        "mode": "open-vocabulary", "adapted_on": list(SEEN), "held_out": list(HELD_OUT), "settings": _jsonable(s),
        "world_checkpoint": str(checkpoint), "model_dir": str(model_dir), "onnx_fp32": str(onnx),
        "vocabularies": vocabularies, "pictures": pictures, "timings": timings,
        "torch_threads": torch.get_num_threads(),
    }
    echo("[5/5] report")
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "report.md", render_markdown(report))
    echo(f"wrote {out / 'report.md'} ({timings['total_s']:.0f} s)")
    return report


def _jsonable(s: OpenDemoSettings) -> dict:
    d = dict(s.__dict__)
    d["vocabularies"] = [list(v) for v in s.vocabularies]
    return d


def _adapt(checkpoint: Path, model_dir: Path, s: OpenDemoSettings, progress: bool) -> Path:
    """Open-vocabulary adaptation through the real ``adapt`` code path, at the scenes' size. The model's own
    categories (its default vocabulary) are all the seen names: neither run-time vocabulary is the default."""
    from .adapt import AdaptConfig, adapt

    grid = s.scene_size // 16
    cfg = AdaptConfig(steps=s.steps, batch_size=s.batch_size, lr=s.lr, wordmap_size=grid, grid_max=grid,
                      target_size=s.scene_size, log_every=20, checkpoint_every=max(50, s.steps // 4),
                      vocabulary=list(SEEN), vocab_min=2, vocab_max=s.vocab_max)
    adapt(checkpoint, list(SEEN), model_dir, cfg, overwrite=True, progress=progress,
          preprocessing={"short_side": s.scene_size})
    return model_dir


def _export(model_dir: Path, onnx: Path, s: OpenDemoSettings, echo: Echo) -> Path:
    from .export.pipeline import export_model
    from .runtime.input_spec import InputSpec

    quiet: Echo = lambda msg: echo(f"  {msg}")  # noqa: E731
    export_model(model_dir, onnx, format="onnx", precision="fp32", open_vocabulary=True,
                 input_spec=InputSpec.fixed((s.scene_size, s.scene_size)), overwrite=True, echo=quiet)
    return onnx


def _per_vocabulary(out: Path, checkpoint: Path, model_dir: Path, onnx: Path, s: OpenDemoSettings,
                    echo: Echo) -> tuple[list[dict], list[dict]]:
    """Per vocabulary: switch the same two Segmenters to it, measure, draw. Returns (rows, picture rows)."""
    from .runtime.segmenter import Segmenter

    first = list(s.vocabularies[0])
    adapted = {TORCH: Segmenter.from_pretrained(model_dir, categories=first)}
    rows: list[dict] = []
    try:
        adapted[ONNX] = Segmenter.from_pretrained(onnx, backend="onnxruntime", categories=first)
        showcase = _showcase(out, s)
        for i, vocabulary in enumerate(s.vocabularies):
            names = list(vocabulary)
            switch_ms = {}
            if i > 0:
                for key, seg in adapted.items():
                    t = time.perf_counter()
                    seg.set_categories(names)
                    switch_ms[key] = 1000 * (time.perf_counter() - t)
            row = {"names": names, "held_out": [n for n in names if n in HELD_OUT],
                   "class_names": {key: seg.class_names for key, seg in adapted.items()},
                   "set_categories_ms": switch_ms, "chance_bound": 1.5 / len(names)}
            row["results"] = _measure(checkpoint, names, adapted, s, echo)
            _draw(out, i, adapted[TORCH], showcase, s)
            rows.append(row)
    finally:
        for seg in adapted.values():
            seg.close()
    return rows, showcase


def _measure(checkpoint: Path, names: list[str], adapted: dict, s: OpenDemoSettings, echo: Echo) -> dict:
    """mIoU / mAcc / aAcc on held-out 16-concept scenes, pixels of concepts outside ``names`` ignored."""
    from .evaluation.evaluate import evaluate
    from .model_dir import AdaptedModel
    from .runtime.segmenter import Segmenter
    from .synthetic.dataset import SyntheticDataset
    from .synthetic.world import ALL_CATEGORIES

    dataset = SyntheticDataset(s.eval_scenes, s.scene_size, categories=names, world=ALL_CATEGORIES)
    unadapted = AdaptedModel.unadapted_from_ofa(checkpoint, names)
    unadapted.preprocessing = unadapted.preprocessing.replace(short_side=s.scene_size)
    results = {}
    with Segmenter.from_model(unadapted) as baseline:
        for key, seg in ((UNADAPTED, baseline), *adapted.items()):
            report = evaluate(seg, dataset, progress=False)
            results[key] = {"mIoU": report["mIoU"], "mAcc": report["mAcc"], "aAcc": report["aAcc"],
                            "seconds": report["seconds"]}
            echo(f"  {', '.join(names):45s} {key:36s} mIoU {report['mIoU']:.3f}")
    return results


def _union(vocabularies: tuple[tuple[str, ...], ...]) -> list[str]:
    return list(dict.fromkeys(n for v in vocabularies for n in v))


def _showcase(out: Path, s: OpenDemoSettings) -> list[dict]:
    """Unseen scenes made of the vocabularies' concepts (so every region is named by at least one of them), with
    their ground truth; ``_draw`` adds each vocabulary's overlay."""
    from PIL import Image

    from .runtime.visualize import overlay, png_bytes
    from .synthetic.world import SyntheticScenes

    union = _union(s.vocabularies)
    (out / "pictures").mkdir(exist_ok=True)
    rows = []
    for i, (image, mask) in enumerate(SyntheticScenes(s.showcase, (s.scene_size, s.scene_size), categories=union,
                                                       start=s.eval_scenes)):
        row = {"scene": f"pictures/scene{i}.png", "truth": f"pictures/scene{i}_truth.png", "vocabularies": []}
        atomic_write_bytes(out / row["scene"], png_bytes(Image.fromarray(image)))
        atomic_write_bytes(out / row["truth"], png_bytes(overlay(image, mask, union)))
        rows.append(row)
    return rows


def _draw(out: Path, v: int, seg, showcase: list[dict], s: OpenDemoSettings) -> None:  # noqa: ANN001 - a Segmenter
    """The overlay and the label PNG (pixel value = index in the vocabulary) of vocabulary ``v`` on every scene;
    a concept has the same colour in every overlay and in the ground truth."""
    import numpy as np
    from PIL import Image

    from .runtime.visualize import label_image, overlay, palette, png_bytes

    union, names = _union(s.vocabularies), list(s.vocabularies[v])
    colours = palette(len(union))[[union.index(n) for n in names]]
    for i, row in enumerate(showcase):
        image = np.asarray(Image.open(out / row["scene"]).convert("RGB"))
        labels = seg(image).labels
        pic = {"overlay": f"pictures/scene{i}_vocabulary{v + 1}.png",
               "labels": f"pictures/scene{i}_vocabulary{v + 1}_labels.png"}
        atomic_write_bytes(out / pic["overlay"], png_bytes(overlay(image, labels, names, colours=colours)))
        atomic_write_bytes(out / pic["labels"], png_bytes(label_image(labels, len(names))))
        row["vocabularies"].append(pic)


def render_markdown(report: dict) -> str:
    """The human-readable report: the two vocabularies, their mIoU per variant, the switch cost, the pictures."""
    s, vocabularies = report["settings"], report["vocabularies"]

    def listed(names: list[str]) -> str:
        return ", ".join(f"**{n}**" if n in report["held_out"] else n for n in names)

    lines = [
        "# ifseg-deploy demo --open-vocabulary: one model, any list of names", "",
        f"One model was adapted once, from names alone (no image, no mask), on {len(report['adapted_on'])} names "
        f"({', '.join(report['adapted_on'])}), each training sample drawing its own 2..{s['vocab_max']} of them "
        f"({s['steps']} steps). Never seen in adaptation: {', '.join(report['held_out'])} (**bold** below).", "",
        "At run time the same PyTorch and ONNX Runtime Segmenters were switched from one vocabulary to the next "
        "with `set_categories`; nothing was re-adapted or re-exported.", "",
        f"mIoU on {s['eval_scenes']} held-out {s['scene_size']} px scenes of all 16 concepts; pixels of concepts "
        "outside the vocabulary are ignored (the COCO-15 protocol):", "",
        f"| vocabulary | names | {UNADAPTED} | {TORCH} | {ONNX} |", "|---|---|---|---|---|",
    ]
    for i, v in enumerate(vocabularies, 1):
        r = v["results"]
        lines.append(f"| {i} | {listed(v['names'])} | {r[UNADAPTED]['mIoU']:.3f} | {r[TORCH]['mIoU']:.3f} | "
                     f"{r[ONNX]['mIoU']:.3f} |")
    for i, v in enumerate(vocabularies, 1):
        if v["set_categories_ms"]:
            cost = ", ".join(f"{k} {ms:.1f} ms" for k, ms in v["set_categories_ms"].items())
            lines += ["", f"Switching to vocabulary {i} (`set_categories`): {cost}; no rebuild."]
    t = report["timings"]
    lines += ["", f"Times: world model {t['world_model_s']:.0f} s, adaptation {t['adapt_s']:.0f} s, export "
                  f"{t['export_s']:.0f} s, evaluation and pictures {t['evaluate_s']:.0f} s, total {t['total_s']:.0f} s "
                  f"({report['torch_threads']} torch thread(s)).", "",
              "Unseen scenes made of the vocabularies' concepts; each vocabulary's overlay is the PyTorch model's.", ""]
    lines.append("| scene | ground truth | " + " | ".join(f"vocabulary {i}" for i in range(1, len(vocabularies) + 1))
                 + " |")
    lines.append("|---|---|" + "---|" * len(vocabularies))
    for p in report["pictures"]:
        cells = [f"![]({p['scene']})", f"![]({p['truth']})", *(f"![]({v['overlay']})" for v in p["vocabularies"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Files: `model/` (the open-vocabulary model directory), `model.onnx` (`--open-vocabulary` "
                  "export), `pictures/` (overlays and label PNGs per vocabulary), `report.json`."]
    return "\n".join(lines) + "\n"
