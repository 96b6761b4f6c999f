"""Open-vocabulary adaptation measured on the synthetic world (issue 13, item 5).

One model is adapted with ``vocabulary=`` on 12 of the 16 concepts' names; 4 names are never seen in
adaptation. For several test vocabularies of 3-8 names it reports mIoU on held-out 16-concept scenes, where the
pixels of concepts outside the test vocabulary are ignored (the COCO-15 protocol), for:

* the open-vocabulary model, its prompt and class table rebuilt for the test vocabulary;
* a per-vocabulary model adapted on exactly that vocabulary (the paper's recipe, same steps);
* the unadapted world model with that vocabulary's class table.

Scores are the raw logits' argmax (no kNN refinement), bilinearly upsampled to the scene.

    python -m ifseg_deploy.bench.open_vocabulary --out /tmp/ov_bench            # prints a Markdown table
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

SEEN_COUNT = 12


def _config(steps: int, scene: int, vocabulary: list[str] | None = None, vocab_max: int = 8):
    from ifseg_deploy.adapt import AdaptConfig

    grid = scene // 16
    return AdaptConfig(steps=steps, batch_size=8, lr=1e-3, wordmap_size=grid, grid_max=grid, target_size=scene,
                       log_every=50, checkpoint_every=max(50, steps), vocabulary=vocabulary, vocab_min=2,
                       vocab_max=vocab_max)


def test_vocabularies(seen: list[str], unseen: list[str], seed: int = 0) -> list[tuple[str, list[str]]]:
    """(kind, names): three vocabularies of seen names in new combinations, three that include unseen names."""
    rng = random.Random(seed)
    out = [("seen", rng.sample(seen, k)) for k in (3, 5, 8)]
    for k_seen, k_new in ((2, 1), (3, 2), (4, 4)):
        names = rng.sample(seen, k_seen) + rng.sample(unseen, k_new)
        rng.shuffle(names)
        out.append(("with unseen", names))
    return out


def miou(model, names: list[str], scenes) -> float:  # noqa: ANN001 - a SegOFA and (image, mask) pairs
    """mIoU over ``names`` of the 16-concept ``scenes``; pixels of other concepts are ignored."""
    import torch
    import torch.nn.functional as F

    from ifseg_deploy.evaluation.metrics import ConfusionMatrix
    from ifseg_deploy.synthetic import ALL_CATEGORIES, to_model_input

    lut = np.full(len(ALL_CATEGORIES), 255, dtype=np.int64)
    for i, n in enumerate(names):
        lut[ALL_CATEGORIES.index(n)] = i
    conf = ConfusionMatrix(len(names))
    model.eval()
    for image, mask in scenes:
        with torch.no_grad():
            logits = model(to_model_input(image[None]))
        up = F.interpolate(logits.float(), size=mask.shape, mode="bilinear", align_corners=False)
        conf.update(lut[mask], up.argmax(1)[0].numpy())
    mat = conf.mat.astype(np.float64)
    inter = np.diag(mat)
    union = mat.sum(0) + mat.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean())


def run(out: Path, open_steps: int, steps: int, scenes: int, scene: int, world_steps: int | None,
        seed: int = 0, checkpoint: Path | None = None) -> dict:
    """The table's figures; ``checkpoint``: a 16-concept world model already built (else built, or loaded from
    ``out/world-cache``)."""
    from ifseg_deploy.adapt import adapt
    from ifseg_deploy.model_dir import AdaptedModel
    from ifseg_deploy.synthetic import ALL_CATEGORIES, SyntheticScenes, WorldRecipe, build_or_load_world_model

    t0 = time.perf_counter()
    recipe = WorldRecipe.open_vocabulary(seed, **({} if world_steps is None else dict(
        steps=world_steps, pool_scenes=64, pool_size=160)))
    ckpt = checkpoint or build_or_load_world_model(out / "world-cache", recipe=recipe, progress=False)
    seen, unseen = list(ALL_CATEGORIES[:SEEN_COUNT]), list(ALL_CATEGORIES[SEEN_COUNT:])
    pre = {"short_side": scene}
    open_dir = out / "open"
    adapt(ckpt, seen[:8], open_dir, _config(open_steps, scene, seen), overwrite=True, progress=False,
          preprocessing=pre)
    test_scenes = list(SyntheticScenes(scenes, (scene, scene), categories=ALL_CATEGORIES))
    rows = []
    for i, (kind, names) in enumerate(test_vocabularies(seen, unseen, seed)):
        per_dir = out / f"per-vocabulary-{i}"
        adapt(ckpt, names, per_dir, _config(steps, scene), overwrite=True, progress=False, preprocessing=pre)
        rows.append({
            "kind": kind, "names": names, "unseen": [n for n in names if n in unseen],
            "open": miou(AdaptedModel.from_pretrained(open_dir, categories=names).model, names, test_scenes),
            "per_vocabulary": miou(AdaptedModel.from_pretrained(per_dir).model, names, test_scenes),
            "unadapted": miou(AdaptedModel.unadapted_from_ofa(ckpt, names).model, names, test_scenes),
        })
    return {"seen": seen, "unseen": unseen, "open_steps": open_steps, "per_vocabulary_steps": steps,
            "scenes": scenes, "scene_size": scene, "world_recipe": None if checkpoint else recipe.to_dict(),
            "rows": rows,
            "seconds": time.perf_counter() - t0}


def markdown(report: dict) -> str:
    lines = ["| test vocabulary | kind | open-vocabulary model | per-vocabulary model | unadapted |",
             "|---|---|---|---|---|"]
    for r in report["rows"]:
        names = ", ".join(f"**{n}**" if n in r["unseen"] else n for n in r["names"])
        lines.append(f"| {names} | {r['kind']} | {100 * r['open']:.1f} | {100 * r['per_vocabulary']:.1f} | "
                     f"{100 * r['unadapted']:.1f} |")
    for kind in ("seen", "with unseen"):
        rs = [r for r in report["rows"] if r["kind"] == kind]
        means = [100 * np.mean([r[k] for r in rs]) for k in ("open", "per_vocabulary", "unadapted")]
        lines.append(f"| *mean* | {kind} | {means[0]:.1f} | {means[1]:.1f} | {means[2]:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="Folder for the world model cache and adapted models.")
    p.add_argument("--open-steps", type=int, default=600, help="Steps of the open-vocabulary adaptation.")
    p.add_argument("--steps", type=int, default=200, help="Steps of each per-vocabulary adaptation.")
    p.add_argument("--scenes", type=int, default=24, help="Held-out test scenes.")
    p.add_argument("--scene-size", type=int, default=256)
    p.add_argument("--world-steps", type=int, default=None,
                   help="Training steps of the world model (default: the full recipe; 60 = the tests' reduced one).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the model is tiny: 1 is fastest).")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    report = run(a.out, a.open_steps, a.steps, a.scenes, a.scene_size, a.world_steps, a.seed)
    (a.out / "open_vocabulary.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"({report['seconds']:.0f} s; report in {a.out / 'open_vocabulary.json'})")


if __name__ == "__main__":
    main()
