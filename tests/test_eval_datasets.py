"""Dataset readers on small folders in the official layouts, label shifts included; class-name matching."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ifseg_deploy.evaluation.classnames import ADE20K_150, COCO_STUFF_15_UNSEEN, COCO_STUFF_171
from ifseg_deploy.evaluation.datasets import DatasetError, coco_raw_to_train_ids
from ifseg_deploy.evaluation.evaluate import ClassMismatchError, match_classes
from ifseg_deploy.evaluation.registry import DATASETS, get_dataset


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_registry_lists_the_datasets():
    assert {"ade20k", "coco-stuff-171", "coco-stuff-15", "folder"} <= set(DATASETS)
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("nope", None)


def test_class_lists():
    assert len(ADE20K_150) == 150 == len(set(ADE20K_150))
    assert len(COCO_STUFF_171) == 171 == len(set(COCO_STUFF_171))
    assert ADE20K_150[0] == "wall" and ADE20K_150[-1] == "flag"
    assert set(COCO_STUFF_15_UNSEEN) <= set(COCO_STUFF_171) and len(COCO_STUFF_15_UNSEEN) == 15


# -- ADE20K ----------------------------------------------------------------------------------------------------
def _ade(tmp_path, raw):
    base = tmp_path / "ADEChallengeData2016"
    _write(base / "images" / "validation" / "ADE_val_00000001.jpg", _img(*raw.shape))
    _write(base / "annotations" / "validation" / "ADE_val_00000001.png", raw.astype(np.uint8))
    _write(base / "images" / "training" / "ADE_train_00000001.jpg", _img(4, 4))  # another split: not read
    return base


def test_ade20k_reduces_labels_by_one_and_ignores_zero(tmp_path):
    raw = np.array([[0, 1, 2], [150, 5, 0]])
    base = _ade(tmp_path, raw)
    for root in (tmp_path, base):  # the parent or the folder itself
        ds = get_dataset("ade20k", root)
        assert len(ds) == 1 and ds.item_name(0) == "ADE_val_00000001" and ds.classes == ADE20K_150
        image, mask = ds.load(0)
        assert image.shape == (2, 3, 3)
        assert mask.tolist() == [[255, 0, 1], [149, 4, 255]]
    assert ADE20K_150[4] == "tree"  # raw 5 = tree in objectInfo150


def test_ade20k_refuses_converted_or_foreign_masks(tmp_path):
    _ade(tmp_path, np.array([[151, 1]]))
    with pytest.raises(DatasetError, match=r"unexpected mask values \[151\]"):
        get_dataset("ade20k", tmp_path).load(0)
    with pytest.raises(DatasetError, match="not found"):
        get_dataset("ade20k", tmp_path / "ADEChallengeData2016" / "images")


def test_missing_mask_is_reported(tmp_path):
    base = _ade(tmp_path, np.array([[1]]))
    _write(base / "images" / "validation" / "ADE_val_00000002.jpg", _img(2, 2))
    with pytest.raises(DatasetError, match="1 of 2 ADE20K images have no mask.*ADE_val_00000002.jpg"):
        get_dataset("ade20k", tmp_path)


# -- COCO-Stuff ------------------------------------------------------------------------------------------------
def test_coco_raw_id_table():
    lut = coco_raw_to_train_ids()
    # 0-based stuffthingmaps ids: 0 person, 12 stop sign (COCO id 13; id 12 is unused), 24 giraffe,
    # 91 banner (first stuff class, COCO 92), 148 road (COCO 149), 181 wood (COCO 182); 255 unlabeled
    assert [COCO_STUFF_171[lut[r]] for r in (0, 12, 24, 91, 148, 181)] == [
        "person", "stop sign", "giraffe", "banner", "road", "wood"]
    for unused in (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90, 255, 182, 200):
        assert lut[unused] == 255
    assert sorted(set(lut.tolist()) - {255}) == list(range(171))


def _coco(tmp_path, raw, converted=None):
    _write(tmp_path / "images" / "val2017" / "000000000139.jpg", _img(*raw.shape))
    _write(tmp_path / "annotations" / "val2017" / "000000000139.png", raw.astype(np.uint8))
    if converted is not None:
        _write(tmp_path / "images" / "val2017" / "000000000285.jpg", _img(*converted.shape))
        _write(tmp_path / "annotations" / "val2017" / "000000000285_labelTrainIds.png", converted.astype(np.uint8))


def test_coco_stuff_171_raw_and_converted_masks(tmp_path):
    raw = np.array([[0, 11, 12], [91, 181, 255]])
    _coco(tmp_path, raw, converted=np.array([[0, 170, 255]]))
    ds = get_dataset("coco-stuff-171", tmp_path)
    assert len(ds) == 2 and ds.classes == COCO_STUFF_171
    _, mask = ds.load(0)
    assert mask.tolist() == [[0, 255, 11], [80, 170, 255]]
    _, mask = ds.load(1)
    assert mask.tolist() == [[0, 170, 255]]


def test_coco_stuff_other_mask_folders(tmp_path):
    _write(tmp_path / "images" / "val2017" / "1.jpg", _img(2, 2))
    _write(tmp_path / "stuffthingmaps_trainval2017" / "val2017" / "1.png", np.full((2, 2), 24, np.uint8))
    assert get_dataset("coco-stuff-171", tmp_path).load(0)[1].tolist() == [[23, 23], [23, 23]]


def test_coco_stuff_converted_mask_out_of_range(tmp_path):
    _coco(tmp_path, np.array([[0]]), converted=np.array([[171]]))
    with pytest.raises(DatasetError, match="unexpected mask values"):
        get_dataset("coco-stuff-171", tmp_path).load(1)


def test_coco_stuff_15_keeps_only_the_unseen_classes(tmp_path):
    # giraffe (raw 24), road (raw 148), clouds (COCO 106 -> raw 105), person (raw 0), unlabeled
    raw = np.array([[24, 148, 105], [0, 255, 33]])  # raw 33 = frisbee (COCO 34)
    _coco(tmp_path, raw)
    ds = get_dataset("coco-stuff-15", tmp_path)
    assert ds.classes == COCO_STUFF_15_UNSEEN
    _, mask = ds.load(0)
    idx = COCO_STUFF_15_UNSEEN.index
    assert mask.tolist() == [[idx("giraffe"), idx("road"), idx("clouds")], [255, 255, idx("frisbee")]]


# -- folder ----------------------------------------------------------------------------------------------------
def _folder(tmp_path, classes="# my classes\nfloor\n\nwall\nperson\n"):
    (tmp_path / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "classes.txt").write_text(classes)
    _write(tmp_path / "images" / "a.jpg", _img(3, 2))
    _write(tmp_path / "masks" / "a.png", np.array([[0, 1], [2, 255], [1, 1]], np.uint8))


def test_folder_layout(tmp_path):
    _folder(tmp_path)
    ds = get_dataset("folder", tmp_path)
    assert ds.classes == ["floor", "wall", "person"]
    image, mask = ds.load(0)
    assert image.shape == (3, 2, 3) and mask.tolist() == [[0, 1], [2, 255], [1, 1]]


def test_folder_errors(tmp_path):
    _folder(tmp_path, classes="floor\nwall\n")
    with pytest.raises(DatasetError, match=r"unexpected mask values \[2\]"):
        get_dataset("folder", tmp_path).load(0)
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(DatasetError, match="classes.txt"):
        get_dataset("folder", tmp_path)
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    _write(tmp_path / "masks" / "a.png", _img(3, 2))
    with pytest.raises(DatasetError, match="mode RGB"):
        get_dataset("folder", tmp_path).load(0)
    _write(tmp_path / "masks" / "a.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(DatasetError, match=r"is 2x3 but its mask .* is 5x5"):
        get_dataset("folder", tmp_path).load(0)
    with pytest.raises(DatasetError, match="needs --root"):
        get_dataset("folder", None)


def test_folder_exif_rotated_image_is_matched_to_its_mask(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\n")
    pil = Image.fromarray(_img(20, 40))
    exif = pil.getexif()
    exif[0x0112] = 6
    (tmp_path / "images").mkdir()
    pil.save(tmp_path / "images" / "r.jpg", exif=exif)
    pil.save(tmp_path / "images" / "s.jpg", exif=exif)
    _write(tmp_path / "masks" / "r.png", np.zeros((40, 20), np.uint8))  # drawn on the displayed (rotated) image
    _write(tmp_path / "masks" / "s.png", np.zeros((20, 40), np.uint8))  # drawn on the stored pixels
    ds = get_dataset("folder", tmp_path)
    assert ds.load(0)[0].shape == (40, 20, 3)
    assert ds.load(1)[0].shape == (20, 40, 3)


# -- class matching --------------------------------------------------------------------------------------------
def test_match_classes_by_name_with_aliases():
    ds = ["floor", "wall", "concrete wall"]
    assert match_classes(["wall", "Floor ", "concrete  wall"], ds).tolist() == [1, 0, 2]
    coco15 = list(COCO_STUFF_15_UNSEEN)
    mmseg_spelling = ["wall-concrete" if n == "concrete wall" else n for n in reversed(coco15)]
    aliases = {"concrete wall": ["wall-concrete"]}
    mapping = match_classes(mmseg_spelling, coco15, aliases)
    assert [coco15[j] for j in mapping] == list(reversed(coco15))
    with pytest.raises(ClassMismatchError, match=r"not in the dataset: 'sky'.*missing from the model: 'floor'"):
        match_classes(["wall", "sky", "concrete wall"], ds, dataset_name="x")
    with pytest.raises(ClassMismatchError, match="4 categories do not match the 3"):
        match_classes(["wall", "floor", "concrete wall", "sky"], ds)
