"""Measure self-training on the synthetic world (issue 15): mIoU on unseen test scenes of

1. the demo's adapted model (``ifseg-deploy demo --quick --out DEMO`` writes it to ``DEMO/model``);
2. that model self-trained on N unlabeled validation-split scenes, for each N of ``--unlabeled``;
3. the largest N plus ``--labelled`` validation scenes with their masks (other seeds than the unlabeled ones).

``python -m ifseg_deploy.bench.selftrain_synthetic --model DEMO/model --out OUT`` writes the scenes, the models,
``results.json`` and prints a Markdown table. Sizes are small so that the whole run fits minutes on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np


def write_scenes(folder: Path, n: int, size: int, start: int, masks: bool = False,
                 classes: list[str] | None = None) -> Path:
    """``n`` validation-split scenes from ``start`` as PNGs (with masks and classes.txt: the `folder` layout)."""
    from PIL import Image

    from ..synthetic.world import SyntheticScenes

    images = folder / "images" if masks else folder
    images.mkdir(parents=True, exist_ok=True)
    if masks:
        (folder / "masks").mkdir(exist_ok=True)
        (folder / "classes.txt").write_text("\n".join(classes or []) + "\n")
    for i, (image, mask) in enumerate(SyntheticScenes(n, (size, size), split="validation", start=start)):
        Image.fromarray(image).save(images / f"scene{start + i:05d}.png")
        if masks:
            Image.fromarray(mask.astype(np.uint8)).save(folder / "masks" / f"scene{start + i:05d}.png")
    return folder


def miou(model_dir: Path, scenes: int, size: int) -> float:
    from ..evaluation.evaluate import evaluate
    from ..runtime.segmenter import Segmenter
    from ..synthetic.dataset import SyntheticDataset

    with Segmenter.from_pretrained(model_dir) as seg:
        return float(evaluate(seg, SyntheticDataset(scenes, size), progress=False)["mIoU"])


def main(argv: list[str] | None = None) -> dict:
    from ..adapt.config import AdaptConfig
    from ..model_dir import AdaptedModel
    from ..selftraining.run import SelfTrainConfig, selftrain

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="the demo's adapted model directory")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--unlabeled", default="64,256", help="comma-separated N")
    p.add_argument("--labelled", type=int, default=8)
    p.add_argument("--eval-scenes", type=int, default=32)
    p.add_argument("--size", type=int, default=256, help="scene size (the demo's model labels at 256)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=256, help="training crop (the scenes' and the evaluation's size)")
    p.add_argument("--lr", type=float, default=1e-4, help="a tenth of the demo's adaptation rate")
    p.add_argument("--min-confidence", type=float, default=0.5)
    p.add_argument("--balance", action=argparse.BooleanOptionalAction, default=True,
                   help="per-class thresholds (selftrain --balance)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--oracle", action="store_true",
                   help="add a diagnostic row: the smallest N's scenes with their true masks instead of pseudo-labels "
                        "(what perfect labels of the same images give)")
    a = p.parse_args(argv)
    ns = [int(n) for n in a.unlabeled.split(",")]
    categories = AdaptedModel.from_pretrained(a.model).categories
    labelled = write_scenes(a.out / "labelled", a.labelled, a.size, start=max(ns), masks=True, classes=categories)
    train = AdaptConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, target_size=a.crop, log_every=10,
                        checkpoint_every=max(a.steps, 1))
    cfg = SelfTrainConfig(train=train, rounds=a.rounds, min_confidence=a.min_confidence, balance=a.balance,
                          min_images=1)
    t0 = time.perf_counter()
    rows = [{"model": "adapted (demo)", "mIoU": miou(a.model, a.eval_scenes, a.size)}]
    for n, masks in [(n, None) for n in ns] + ([(max(ns), labelled)] if a.labelled else []):
        name = f"self-trained, N={n}" + (f" + {a.labelled} labelled" if masks else "")
        images = write_scenes(a.out / f"unlabeled{n}", n, a.size, start=0)
        t = time.perf_counter()
        out = a.out / ("model_" + name.replace(" ", "").replace(",", "_").replace("+", "_"))
        result = selftrain(a.model, images, out, cfg, masks=masks, overwrite=True, progress=False)
        rows.append({"model": name, "mIoU": miou(out, a.eval_scenes, a.size),
                     "coverage": result.rounds[-1]["coverage"], "seconds": time.perf_counter() - t})
        (a.out / "results.partial.json").write_text(json.dumps(rows, indent=2) + "\n")  # each row as it comes
    if a.oracle:
        n = min(ns)
        truth = write_scenes(a.out / f"oracle{n}", n, a.size, start=0, masks=True, classes=categories)
        oracle_cfg = dataclasses.replace(cfg, min_confidence=1.0)  # no pseudo-label survives: the masks alone
        out = a.out / f"model_oracle{n}"
        t = time.perf_counter()
        selftrain(a.model, truth / "images", out, oracle_cfg, masks=truth, overwrite=True, progress=False)
        rows.append({"model": f"diagnostic: the N={n} scenes with their true masks", "mIoU": miou(out, a.eval_scenes,
                     a.size), "coverage": 1.0, "seconds": time.perf_counter() - t})
    report = {"settings": vars(a) | {"model": str(a.model), "out": str(a.out)}, "rows": rows,
              "total_s": time.perf_counter() - t0}
    (a.out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print("| model | mIoU | pseudo-label coverage | seconds |\n|---|---|---|---|")
    for r in rows:
        cover = f"{r['coverage']:.0%}" if "coverage" in r else "-"
        print(f"| {r['model']} | {r['mIoU']:.3f} | {cover} | {r.get('seconds', 0):.0f} |")
    return report


if __name__ == "__main__":
    main()
