"""`ifseg-deploy eval` end to end on the folder layout with a tiny random model: the JSON equals a direct
computation from the predicted label maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers.ofa import TINY_CATEGORIES as CATS
from PIL import Image

from ifseg_deploy.cli import cli
from ifseg_deploy.runtime.images import load_image
from ifseg_deploy.runtime.segmenter import Segmenter


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalset")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    # the dataset lists the classes in another order than the model: predictions are mapped by name
    (root / "classes.txt").write_text("sky\nfloor\nperson\nwall\n")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(20, 25), (19, 31), (32, 24)]):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img[: h // 2] //= 4  # some structure, so that a random model predicts more than one class
        Image.fromarray(img).save(root / "images" / f"img{i}.png")
        mask = rng.integers(0, 4, (h, w)).astype(np.uint8)
        mask[rng.random((h, w)) < 0.15] = 255
        Image.fromarray(mask).save(root / "masks" / f"img{i}.png")
    return root


def _direct(tiny_model_dir, folder, n, **options):
    """mIoU etc. straight from the label maps, without the confusion matrix."""
    seg = Segmenter.from_pretrained(tiny_model_dir, **options)
    classes = (folder / "classes.txt").read_text().split()
    to_dataset = np.array([classes.index(c) for c in CATS])
    gts, preds = [], []
    for i in range(n):
        image = load_image(folder / "images" / f"img{i}.png")
        gts.append(np.asarray(Image.open(folder / "masks" / f"img{i}.png")).ravel().astype(int))
        preds.append(to_dataset[seg(image).labels].ravel())
    gt, pred = np.concatenate(gts), np.concatenate(preds)
    valid = gt != 255
    ious, accs = {}, {}
    for c in range(4):
        inter = np.sum((gt == c) & (pred == c) & valid)
        union = np.sum(((gt == c) | (pred == c)) & valid)
        label = np.sum((gt == c) & valid)
        ious[classes[c]] = inter / union if union else None
        accs[classes[c]] = inter / label if label else None
    return {"mIoU": np.mean([v for v in ious.values() if v is not None]),
            "mAcc": np.mean([v for v in accs.values() if v is not None]),
            "aAcc": np.mean(gt[valid] == pred[valid]), "iou": ious, "pred_pixels": np.bincount(pred[valid])}


@pytest.mark.parametrize("limit, options", [(None, ["--short-side", "40"]), (2, ["--no-refine", "--short-side", "32"])])
def test_eval_json_equals_direct_computation(tiny_model_dir, folder, tmp_path, limit, options):
    out = tmp_path / "results.json"
    args = ["eval", "--model", str(tiny_model_dir), "--dataset", "folder", "--root", str(folder), "--out", str(out),
            "--no-progress", *options]
    if limit:
        args += ["--limit", str(limit)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    n = limit or 3
    kw = {"refine": False, "short_side": 32} if limit else {"short_side": 40}
    direct = _direct(tiny_model_dir, folder, n, **kw)
    assert report["dataset"]["images"] == n and report["dataset"]["images_available"] == 3
    assert report["mIoU"] == pytest.approx(direct["mIoU"], abs=1e-12)
    assert report["mAcc"] == pytest.approx(direct["mAcc"], abs=1e-12)
    assert report["aAcc"] == pytest.approx(direct["aAcc"], abs=1e-12)
    for row in report["per_class"]:
        expected = direct["iou"][row["name"]]
        assert row["iou"] == (pytest.approx(expected, abs=1e-12) if expected is not None else None)
    assert report["model"]["refinement"] == ({"k": 1, "iterations": 0} if limit else {"k": 3, "iterations": 25})
    assert report["model"]["preprocessing"]["short_side"] == kw["short_side"]
    assert "mIoU" in result.output and "sky" in result.output and "wrote" in result.output


def test_eval_refuses_a_model_for_other_classes(tiny_model_dir, tmp_path):
    # a COCO-Stuff folder in the official layout; the tiny model knows 4 categories, not the 15 unseen ones
    (tmp_path / "images" / "val2017").mkdir(parents=True)
    (tmp_path / "annotations" / "val2017").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "val2017" / "1.jpg")
    Image.fromarray(np.full((8, 8), 24, np.uint8)).save(tmp_path / "annotations" / "val2017" / "1.png")
    result = CliRunner().invoke(cli, ["eval", "-m", str(tiny_model_dir), "-d", "coco-stuff-15", "--root",
                                      str(tmp_path)])
    assert result.exit_code == 1
    assert "do not match the 15 classes of coco-stuff-15" in result.output
    assert "missing from the model: 'frisbee'" in result.output
    result = CliRunner().invoke(cli, ["eval", "-m", str(tiny_model_dir), "-d", "pascal", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "unknown dataset" in result.output
    result = CliRunner().invoke(cli, ["eval", "-m", str(tiny_model_dir), "-d", "ade20k", "--root", str(tmp_path)])
    assert result.exit_code == 1 and "ADE20K images" in result.output
