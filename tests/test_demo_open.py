"""`demo --open-vocabulary` (issue 13, item 6) at a reduced size: one model adapted once with a vocabulary,
switched at run time between two lists of names (one with names never seen in adaptation) on PyTorch and on its
`--open-vocabulary` ONNX file, with the mIoU and the label maps of each.

The run reuses the session's reduced 16-concept world (``open_world_cache``) and adapts 30 steps at 128 px
(about 30 s on the shared 2-core machine, most of it the ONNX export): enough to check what the demo wires
together, not the quality the full demo reports."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ifseg_deploy.cli import cli
from ifseg_deploy.demo_open import HELD_OUT, ONNX, SEEN, TORCH, UNADAPTED, OpenDemoSettings, run_open_vocabulary_demo
from ifseg_deploy.model_dir import AdaptedModel
from ifseg_deploy.runtime.segmenter import Segmenter

pytest.importorskip("onnxruntime", reason="the demo exports ONNX: needs the [onnx] extra")

SETTINGS = OpenDemoSettings(scene_size=128, steps=120, eval_scenes=4, showcase=1, world_steps=60)


@pytest.fixture(scope="module")
def open_demo(open_world_cache, tmp_path_factory):
    """(out folder, report) of one reduced run."""
    out = tmp_path_factory.mktemp("open-demo") / "out"
    report = run_open_vocabulary_demo(out, SETTINGS, cache_dir=open_world_cache[1], progress=False,
                                      echo=lambda _: None)
    return out, report


def test_one_open_vocabulary_model_and_file_serve_both_vocabularies(open_demo, open_world_cache):
    out, report = open_demo
    assert report["world_checkpoint"] == str(open_world_cache[0])  # the session's model, found in the cache
    model = AdaptedModel.from_pretrained(out / "model")
    assert model.vocabulary["mode"] == "open"
    assert model.vocabulary["names"] == list(SEEN) and not set(HELD_OUT) & set(model.vocabulary["names"])
    first, second = report["vocabularies"]
    assert [first["names"], second["names"]] == [list(v) for v in SETTINGS.vocabularies]
    assert first["names"] != second["names"] and second["held_out"]  # the second names never-seen concepts
    for row in (first, second):
        # what each Segmenter said it segments, after the switch
        assert row["class_names"] == {TORCH: row["names"], ONNX: row["names"]}
        r = row["results"]
        assert set(r) == {UNADAPTED, TORCH, ONNX}
        assert all(0.0 <= r[k]["mIoU"] <= 1.0 for k in r)
        assert abs(r[ONNX]["mIoU"] - r[TORCH]["mIoU"]) <= 0.02  # the ONNX file switched vocabulary too
    assert set(second["set_categories_ms"]) == {TORCH, ONNX}
    # even 30 steps lift the seen vocabulary well above the unadapted model (0.17 against 0.01 here)
    assert first["results"][TORCH]["mIoU"] >= first["results"][UNADAPTED]["mIoU"] + 0.05


def test_each_vocabularys_label_maps_are_what_that_vocabulary_gives(open_demo):
    """The saved label maps of the switched Segmenter equal a fresh load with that vocabulary, and differ
    between the vocabularies."""
    out, report = open_demo
    for pic in report["pictures"]:
        image = np.asarray(Image.open(out / pic["scene"]).convert("RGB"))
        maps = []
        for row, drawn in zip(report["vocabularies"], pic["vocabularies"], strict=True):
            labels = np.asarray(Image.open(out / drawn["labels"]))
            assert labels.max() < len(row["names"])
            with Segmenter.from_pretrained(out / "model", categories=row["names"]) as fresh:
                np.testing.assert_array_equal(labels, fresh(image).labels)
            assert (out / drawn["overlay"]).is_file()
            maps.append(labels)
        assert not np.array_equal(maps[0], maps[1])


def test_the_report_names_both_vocabularies_with_their_miou(open_demo):
    out, report = open_demo
    assert json.loads((out / "report.json").read_text())["vocabularies"] == report["vocabularies"]
    md = (out / "report.md").read_text()
    for i, row in enumerate(report["vocabularies"], 1):
        names = ", ".join(f"**{n}**" if n in HELD_OUT else n for n in row["names"])
        r = row["results"]
        want = f"| {i} | {names} | {r[UNADAPTED]['mIoU']:.3f} | {r[TORCH]['mIoU']:.3f} | {r[ONNX]['mIoU']:.3f} |"
        assert want in md
    assert re.search(r"Switching to vocabulary 2 \(`set_categories`\): .*torch\) [\d.]+ ms", md)
    for p in report["pictures"]:
        for rel in (p["scene"], p["truth"], *(v["overlay"] for v in p["vocabularies"])):
            assert f"![]({rel})" in md and (out / rel).is_file()


def test_the_open_vocabulary_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["demo", "--open-vocabulary", "--quick", "--out", str(tmp_path),
                                      "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 1 and "--overwrite" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_scenes_of_the_whole_world_scored_on_a_vocabulary_ignore_the_other_concepts():
    """The COCO-15 protocol of the demo's mIoU: a concept outside the vocabulary is ignored, one in it is its
    index in the vocabulary."""
    from ifseg_deploy.synthetic.dataset import SyntheticDataset
    from ifseg_deploy.synthetic.world import ALL_CATEGORIES, SyntheticScenes

    names = ["lava", "sky", "tile"]
    data = SyntheticDataset(6, 64, categories=names, world=ALL_CATEGORIES)
    assert data.classes == names
    seen = set()
    for i, (_, concepts) in enumerate(SyntheticScenes(6, (64, 64), categories=ALL_CATEGORIES)):
        _, mask = data.load(i)
        for c in np.unique(concepts):
            name = ALL_CATEGORIES[c]
            want = names.index(name) if name in names else 255
            assert set(np.unique(mask[concepts == c])) == {want}
            seen.add(want)
    assert 255 in seen and len(seen) >= 3  # both kinds of pixels occurred
    with pytest.raises(ValueError, match="distinct concepts of the world"):
        SyntheticDataset(2, 64, categories=["lava", "banana"], world=ALL_CATEGORIES)
