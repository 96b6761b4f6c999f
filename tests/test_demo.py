"""The embedded demo end to end (reduced mode): image-free adaptation transfers to unseen scenes, and the
exported ONNX and INT8 models keep the accuracy. The demo run is the session fixture ``demo_report``
(conftest.py), shared with the INT8 mIoU-gate tests."""

from __future__ import annotations

import json

import pytest

from ifseg_deploy.demo import DemoSettings, run_demo
from ifseg_deploy.model_dir import AdaptedModel

pytest.importorskip("onnxruntime", reason="the demo exports ONNX: needs the [onnx] extra")
pytest.importorskip("modelopt", reason="the demo quantizes to INT8: needs the [int8] extra")


def test_image_free_adaptation_transfers_to_unseen_scenes(demo_report):
    _, report = demo_report
    r = report["results"]
    k = len(report["categories"])
    assert k >= 6
    assert r["unadapted (torch)"]["mIoU"] <= 1.5 / k
    assert r["adapted (torch)"]["mIoU"] >= 0.5


def test_exported_models_keep_the_accuracy(demo_report):
    _, report = demo_report
    r = report["results"]
    torch_miou = r["adapted (torch)"]["mIoU"]
    assert abs(r["adapted (ONNX Runtime fp32)"]["mIoU"] - torch_miou) <= 0.02
    assert abs(r["adapted (ONNX Runtime INT8)"]["mIoU"] - torch_miou) <= 0.05


def test_demo_writes_its_report_pictures_and_a_loadable_model(demo_report):
    out, report = demo_report
    assert json.loads((out / "report.json").read_text())["results"] == report["results"]
    md = (out / "report.md").read_text()
    assert "| adapted (torch) |" in md
    for row in report["pictures"]:
        for rel in row.values():
            assert (out / rel).is_file(), rel
    model = AdaptedModel.from_pretrained(out / "model")
    assert model.categories == report["categories"]
    assert model.preprocessing.short_side == report["settings"]["scene_size"]
    assert (out / "model.onnx").is_file() and (out / "model.int8.onnx").is_file()


def test_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_demo(tmp_path, DemoSettings.quick(), cache_dir=tmp_path / "c", echo=lambda _: None)
    assert (tmp_path / "keep.txt").read_text() == "mine"
