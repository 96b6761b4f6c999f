"""`ifseg-deploy segment` on a mix of good and broken files, with a tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from helpers.ofa import TINY_CATEGORIES as CATS
from PIL import Image

from ifseg_deploy.cli import cli


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(_rgb(30, 40)).save(d / "good.jpg")
    Image.fromarray(_rgb(64, 64, 1)).save(d / "full.jpg", quality=90)
    data = (d / "full.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(_rgb(21, 17, 2)[..., 0]).save(d / "gray.png")
    Image.fromarray(np.dstack([_rgb(20, 25, 3), np.full((20, 25), 128, np.uint8)])).save(d / "rgba.png")
    Image.fromarray((np.arange(18 * 33).reshape(18, 33) * 100).astype(np.uint16)).save(d / "deep16.png")
    Image.new("CMYK", (26, 19), (10, 200, 30, 5)).save(d / "cmyk.jpg")
    rot = Image.fromarray(_rgb(24, 40, 4))
    exif = rot.getexif()
    exif[0x0112] = 6
    rot.save(d / "rotated.jpg", exif=exif)
    (d / "notes.png").write_text("this is not a PNG")
    (d / "readme.txt").write_text("ignored: not an image suffix")
    return d


EXPECTED = {"good": (30, 40), "full": (64, 64), "gray": (21, 17), "rgba": (20, 25), "deep16": (18, 33),
            "cmyk": (19, 26), "rotated": (40, 24)}


def test_segment_mixed_folder(tiny_model_dir_32, images, tmp_path):
    out = tmp_path / "out"
    missing = tmp_path / "missing.jpg"
    result = CliRunner().invoke(cli, ["segment", str(images), str(missing), "--model", str(tiny_model_dir_32),
                                      "--out", str(out), "--save-probs", "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "segmented 7 of 10 image(s)" in result.output
    assert "3 failed" in result.output
    for bad in ("truncated.jpg", "notes.png", "missing.jpg"):
        assert bad in result.output
    assert (out / "classes.txt").read_text().splitlines() == CATS
    for stem, (h, w) in EXPECTED.items():
        with Image.open(out / "labels" / f"{stem}.png") as lab:
            assert lab.mode == "P" and lab.size == (w, h), stem
            ids = np.asarray(lab)
            assert ids.max() < len(CATS)
        with Image.open(out / "overlays" / f"{stem}.png") as ov:
            assert ov.mode == "RGB" and ov.size[1] >= h and ov.size[0] > w  # legend panel on the right
            assert np.array_equal(np.asarray(ov)[:h, :w].shape[:2], (h, w))
        probs = np.load(out / "probs" / f"{stem}.npy")
        assert probs.shape[0] == len(CATS) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-4)
    assert not (out / "labels" / "truncated.png").exists() and not (out / "labels" / "readme.png").exists()
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".")]
    assert leftovers == []  # atomic writes leave no temporary files


def test_segment_labels_equal_the_python_api(tiny_model_dir_32, images, tmp_path):
    from ifseg_deploy.runtime.segmenter import Segmenter

    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["segment", str(images / "good.jpg"), str(images / "rotated.jpg"),
                                      "-m", str(tiny_model_dir_32), "-o", str(out), "--no-refine"])
    assert result.exit_code == 0, result.output
    seg = Segmenter.from_pretrained(tiny_model_dir_32, refine=False)
    for name in ("good", "rotated"):
        expected = seg(str(images / f"{name}.jpg")).labels
        assert np.array_equal(np.asarray(Image.open(out / "labels" / f"{name}.png")), expected)
    assert not (out / "probs").exists()


def test_segment_name_clashes_and_errors(tiny_model_dir_32, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    Image.fromarray(_rgb(10, 10)).save(a / "x.png")
    Image.fromarray(_rgb(10, 10)).save(b / "x.png")
    Image.fromarray(_rgb(10, 10)).save(a / "x.jpg")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["segment", str(a / "x.png"), str(b / "x.png"), str(a / "x.jpg"),
                                      "-m", str(tiny_model_dir_32), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["x_jpg.png", "x_png.png", "x_png_2.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["segment", str(empty), "-m", str(tiny_model_dir_32), "-o", str(out)])
    assert result.exit_code == 1 and "no images found" in result.output
    result = CliRunner().invoke(cli, ["segment", str(a), "-m", str(tmp_path), "-o", str(out)])
    assert result.exit_code == 1 and "not an adapted-model directory" in result.output
    result = CliRunner().invoke(cli, ["segment", str(a), "-m", str(tiny_model_dir_32), "-o", str(out),
                                      "--backend", "tensorrt"])
    # a model directory is no engine: refused before TensorRT is even needed, naming the file and the right backend
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert str(tiny_model_dir_32) in result.output and "--backend torch" in result.output, result.output


def test_precision_and_compile_reach_the_torch_backend(tiny_model_dir_32):
    from ifseg_deploy.commands.options import load_segmenter

    with load_segmenter(str(tiny_model_dir_32), "torch", "cpu", False, None, None, None, None,
                        precision="bf16") as seg:
        assert seg.backend.describe()["precision"] == "bf16"
    with load_segmenter(str(tiny_model_dir_32), "torch", "cpu", False, None, None, None, None) as seg:
        assert seg.backend.describe()["precision"] == "fp32"


@pytest.mark.parametrize("args, message, code", [
    (["--precision", "bf16", "--backend", "onnxruntime"], "an exported file has its precision built in", 2),
    (["--compile", "--backend", "onnxruntime"], "an exported file has its precision built in", 2),
    (["--precision", "fp16"], "fp16 needs a CUDA device", 1),
    (["--precision", "int8"], "'int8' is not one of", 2),
])
def test_precision_refusals(tiny_model_dir_32, images, tmp_path, args, message, code):
    result = CliRunner().invoke(cli, ["segment", str(images), "-m", str(tiny_model_dir_32), "-o",
                                      str(tmp_path / "out"), *args])
    assert result.exit_code == code and message in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "out" / "labels").exists()
