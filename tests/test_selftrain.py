"""Self-training (issue 15): pseudo-labels, the image data source, rounds, resume, labelled masks, bad input.

Everything runs on a tiny random model adapted for two steps, with 32-pixel images: seconds per test."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers.ofa import TINY_CATEGORIES
from PIL import Image

from ifseg_deploy.adapt import AdaptConfig, adapt
from ifseg_deploy.adapt.images import IGNORE, ImageCrops
from ifseg_deploy.adapt.loop import TrainingInterrupted
from ifseg_deploy.cli import cli
from ifseg_deploy.model_dir import AdaptedModel
from ifseg_deploy.preprocessing import upsample_argmax
from ifseg_deploy.selftraining.labels import class_thresholds, label_and_confidence, select
from ifseg_deploy.selftraining.run import SelfTrainConfig, selftrain


@pytest.fixture(scope="module")
def adapted(tiny_model_dir_32, tmp_path_factory) -> Path:
    """The 32-px tiny model, really adapted (two steps), as self-training's starting point."""
    out = tmp_path_factory.mktemp("st-adapted") / "model"
    cfg = AdaptConfig(steps=2, batch_size=2, wordmap_size=2, grid_max=2, target_size=32, log_every=1)
    adapt(tiny_model_dir_32, TINY_CATEGORIES, out, cfg, progress=False)
    return out


def _write_images(folder: Path, n: int, seed: int = 0, size=(40, 48)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"im{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = _write_images(tmp_path_factory.mktemp("st-images") / "images", 6)
    (folder / "broken.png").write_bytes(b"this is no PNG")
    return folder


def _masks(root: Path, classes: list[str], values: list[int], n: int = 2) -> Path:
    """A `folder` dataset: n images whose masks hold ``values`` in vertical bands and 255 in the last band."""
    _write_images(root / "images", n, seed=9)
    (root / "masks").mkdir()
    for i in range(n):
        bands = np.repeat(np.array([*values, IGNORE], dtype=np.uint8), -(-48 // (len(values) + 1)))[:48]
        Image.fromarray(np.tile(bands, (40, 1))).save(root / "masks" / f"im{i:02d}.png")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def fast(**kw) -> SelfTrainConfig:
    train = AdaptConfig(**{**dict(steps=3, batch_size=2, lr=1e-3, target_size=32, checkpoint_every=2, log_every=1,
                                  seed=4), **kw.pop("train", {})})
    return SelfTrainConfig(**{**dict(train=train, rounds=2, min_confidence=0.0, min_images=4), **kw})


def _state(path: Path) -> dict[str, torch.Tensor]:
    return AdaptedModel.from_pretrained(path).model.state_dict()


# -- pseudo-labels --------------------------------------------------------------------------------------------
def test_labels_are_the_segmenters_and_confidence_is_the_upsampled_maximum():
    probs = torch.softmax(torch.randn(4, 3, 5), dim=0)
    labels, conf = label_and_confidence(probs, (24, 37))
    assert np.array_equal(labels, upsample_argmax(probs, (24, 37)))
    up = torch.nn.functional.interpolate(probs[None], (24, 37), mode="bilinear", align_corners=False)[0]
    assert np.allclose(conf, up.max(0).values.numpy(), atol=1e-6)


def test_threshold_ignores_unsure_pixels_and_balance_keeps_hard_classes():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array([[0] * 60 + [1] * 40], dtype=np.uint8), 4, axis=0)
    conf = np.where(labels == 0, rng.uniform(0.8, 1.0, labels.shape), rng.uniform(0.2, 0.6, labels.shape))
    plain = select(labels, conf, class_thresholds([(labels, conf)], 2, 0.7, balance=False))
    assert (plain[labels == 0] == 0).all() and (plain[labels == 1] == IGNORE).all()  # class 1 wiped out
    balanced = select(labels, conf, class_thresholds([(labels, conf)], 2, 0.7, balance=True))
    assert (balanced[labels == 0] == 0).all()  # never stricter than the global threshold
    kept = (balanced[labels == 1] == 1).mean()
    assert 0.55 <= kept <= 0.65  # the global threshold keeps 60% of all pixels: class 1 keeps 60% of its own
    kept_conf = conf[(labels == 1) & (balanced == 1)]
    assert kept_conf.min() >= conf[(labels == 1) & (balanced == IGNORE)].max()  # its most confident ones


# -- the image data source ------------------------------------------------------------------------------------
def _crops(**kw) -> ImageCrops:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(3)]
    labels = [np.full((40, 60), IGNORE, dtype=np.uint8) for _ in range(3)]
    for i, lab in enumerate(labels):
        lab[30:34, 50:55] = i  # one small labelled patch per image
    crops = ImageCrops(16, seed=5, **kw)
    crops.set_data(images, labels)
    return crops


def test_crops_have_labels_and_the_stream_resumes_and_splits_over_ranks():
    crops = _crops()
    pixels, target = crops.sample(4)
    assert pixels.shape == (4, 3, 16, 16) and target.shape == (4, 16, 16) and target.dtype == torch.long
    assert ((target != IGNORE).flatten(1).any(1)).all()  # every crop holds a labelled pixel
    state = crops.state_dict()
    a = crops.sample(4)
    crops.load_state_dict(state)
    b = crops.sample(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    whole = _crops().sample(4)
    halves = [_crops(rank=r, world_size=2).sample(4) for r in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), whole[0])
    assert torch.equal(torch.cat([h[1] for h in halves]), whole[1])


# -- the run --------------------------------------------------------------------------------------------------
def test_cli_selftrains_in_rounds_skipping_unreadable_files(adapted, images, tmp_path):
    out = tmp_path / "st"
    r = CliRunner().invoke(cli, ["selftrain", "--model", str(adapted), "--images", str(images), "--out", str(out),
                                 "--steps", "2", "--rounds", "2", "--batch-size", "2", "--crop-size", "32",
                                 "--min-confidence", "0", "--min-images", "4", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "skipped broken.png" in r.output and "1 unreadable file(s) skipped" in r.output
    assert not (tmp_path / "st.partial").exists()
    meta = json.loads((out / "config.json").read_text())["metadata"]["selftraining"]
    assert [s["round"] for s in meta["rounds"]] == [1, 2] and meta["steps"] == 4
    assert meta["rounds"][0]["coverage"] == 1.0 and meta["skipped"] == ["broken.png"]
    assert meta["config"]["balance"] is True  # on by default: without it, easy classes crowd out the rest
    before, after = _state(adapted), _state(out)
    trained = {n for n, p in AdaptedModel.from_pretrained(adapted).model.named_parameters() if p.requires_grad}
    assert any(not torch.equal(before[k], after[k]) for k in trained)
    frozen = [k for k in before if k.startswith("encoder.embed_images")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # the ResNet stays frozen


def test_crash_and_ctrl_c_resume_to_the_same_weights(adapted, images, tmp_path):
    straight = selftrain(adapted, images, tmp_path / "a", fast(), progress=False)
    assert straight.steps_done == 6

    def crash(step: int, info: dict) -> None:
        if step == 5:  # in round 2, after its relabelling; the last checkpoint is step 4
            raise RuntimeError("simulated kill")

    with pytest.raises(RuntimeError, match="simulated kill"):
        selftrain(adapted, images, tmp_path / "b", fast(), progress=False, on_step=crash)
    assert (tmp_path / "b.partial" / "pseudo_labels_round2.npz").is_file() and not (tmp_path / "b").exists()
    selftrain(adapted, images, tmp_path / "b", fast(), progress=False, resume=True)

    def ctrl_c(step: int, info: dict) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="--resume"):
        selftrain(adapted, images, tmp_path / "c", fast(), progress=False, on_step=ctrl_c)
    selftrain(adapted, images, tmp_path / "c", fast(), progress=False, resume=True)
    a = _state(tmp_path / "a")
    for other in ("b", "c"):
        b = _state(tmp_path / other)
        assert all(torch.equal(a[k], b[k]) for k in a), other


def test_masks_train_where_no_pseudo_label_is_confident(adapted, images, tmp_path):
    """With --min-confidence 1 no pseudo-label survives: without masks the run is refused, with masks it trains
    on them alone. Their classes.txt may list the model's names in another order."""
    cfg = fast(min_confidence=1.0, rounds=1)
    with pytest.raises(ValueError, match="no pixel reaches --min-confidence"):
        selftrain(adapted, images, tmp_path / "x", cfg, progress=False)
    masks = _masks(tmp_path / "labelled", list(reversed(TINY_CATEGORIES)), [0, 3])
    result = selftrain(adapted, images, tmp_path / "y", cfg, masks=masks, progress=False)
    assert result.rounds[0]["coverage"] == 0.0 and result.steps_done == 3
    from ifseg_deploy.selftraining.inputs import read_masks

    (_, _, ids), *_ = read_masks(masks, TINY_CATEGORIES).items
    assert set(np.unique(ids).tolist()) == {TINY_CATEGORIES.index("sky"), TINY_CATEGORIES.index("floor"), IGNORE}


def test_video_frames(tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (48, 40))
    if not writer.isOpened():
        pytest.skip("OpenCV cannot write a test video here")
    for i in range(9):
        writer.write(np.full((40, 48, 3), 20 * i, dtype=np.uint8))
    writer.release()
    from ifseg_deploy.selftraining.inputs import read_images

    got = read_images(path, every=4)
    assert got.names == ["clip.avi#0", "clip.avi#4", "clip.avi#8"]
    assert got.arrays[0].shape == (40, 48, 3)


# -- refusals -------------------------------------------------------------------------------------------------
def _run(*args: str):
    return CliRunner().invoke(cli, ["selftrain", *args, "--steps", "1", "--batch-size", "2", "--crop-size", "32",
                                    "--quiet"])


def _assert_refused(r, *phrases: str) -> None:
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "\nError: " in "\n" + r.output
    for phrase in phrases:
        assert phrase in r.output, r.output


def test_refusals_write_nothing(adapted, images, tiny_model_dir_32, tmp_path):
    out = tmp_path / "o"
    base = ["--model", str(adapted), "--images", str(images), "--out", str(out), "--min-images", "4"]
    _assert_refused(_run(*base[:-1], "7"), "6 readable images", "1 unreadable", "--min-images 7")
    _assert_refused(_run("--model", str(tiny_model_dir_32), "--images", str(images), "--out", str(out)),
                    "never adapted")
    wrong_names = _masks(tmp_path / "m1", ["floor", "wall", "person", "tree"], [0])
    _assert_refused(_run(*base, "--masks", str(wrong_names)), "only in classes.txt ['tree']",
                    "only in the model ['sky']")
    too_high = _masks(tmp_path / "m2", TINY_CATEGORIES, [1, 7])
    _assert_refused(_run(*base, "--masks", str(too_high)), "[7]", "the model has 4 classes")
    assert not out.exists() and not (tmp_path / "o.partial").exists()
    newer = tmp_path / "newer"
    AdaptedModel.from_pretrained(adapted).save_pretrained(newer)
    conf = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps({**conf, "format_version": 99}))
    _assert_refused(_run("--model", str(newer), "--images", str(images), "--out", str(out)), "newer ifseg-deploy")
    out.mkdir()
    _assert_refused(_run(*base), "already exists", "--overwrite")
