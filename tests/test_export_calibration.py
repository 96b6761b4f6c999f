"""INT8 calibration folders with unreadable files: they are skipped with a warning naming each, and too few
readable images fail with CalibrationError before anything is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers.export import FIXED, TINY_INT8_AGREEMENT

from ifseg_deploy.cli import cli
from ifseg_deploy.export.inputs import CalibrationError, calibration_batch, list_images
from ifseg_deploy.preprocessing import PreprocessConfig
from ifseg_deploy.runtime.input_spec import InputSpec

PREPROCESSING = PreprocessConfig(short_side=64, max_long_side=256)


def _folder(root: Path, good: int, photos: Path) -> tuple[Path, list[Path]]:
    """``good`` readable PNGs plus a zero-byte, a truncated and a text-as-jpg file."""
    root.mkdir()
    for f in sorted(photos.iterdir())[:good]:
        shutil.copy(f, root / f.name)
    png = next(photos.iterdir()).read_bytes()
    bad = [root / "empty.jpg", root / "truncated.png", root / "notes.jpg"]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(png[: len(png) // 3])
    bad[2].write_text("this is not a picture\n")
    return root, bad


def test_unreadable_files_are_skipped_with_a_warning_naming_each(tmp_path, calibration_dir):
    folder, bad = _folder(tmp_path / "calib", 4, calibration_dir)
    warnings: list[str] = []
    batch = calibration_batch(list_images(folder), PREPROCESSING, InputSpec.fixed(FIXED), min_images=4,
                              warn=warnings.append)
    assert batch.shape == (4, 3, *FIXED)
    assert len(warnings) == 3
    for path in bad:
        assert sum(str(path) in w for w in warnings) == 1, warnings


def test_too_few_readable_images_is_a_named_error(tmp_path, calibration_dir):
    folder, bad = _folder(tmp_path / "calib", 2, calibration_dir)
    with pytest.raises(CalibrationError, match="only 2 of the 5") as info:
        calibration_batch(list_images(folder), PREPROCESSING, InputSpec.fixed(FIXED), min_images=4)
    assert all(str(p) in str(info.value) for p in bad)


def _export(model: Path, calib: Path, out: Path, *extra: str):
    pytest.importorskip("modelopt.onnx.quantization")
    return CliRunner().invoke(cli, ["export", "--model", str(model), "--precision", "int8",
                                    "--calib-images", str(calib), "--calib-method", "max", "--out", str(out),
                                    "--reduced-agreement-threshold", str(TINY_INT8_AGREEMENT), *extra])


def test_cli_skips_unreadable_files_and_calibrates_on_the_rest(tmp_path, fixed_export, calibration_dir):
    folder, bad = _folder(tmp_path / "calib", 4, calibration_dir)
    out = tmp_path / "out" / "m.int8.onnx"
    res = _export(fixed_export[0], folder, out)
    assert res.exit_code == 0, res.output
    for path in bad:
        assert f"warning: skipping unreadable calibration image {path}" in res.output
    from ifseg_deploy.runtime.backends.onnxruntime import OrtBackend

    assert OrtBackend.from_file(out).info.extra["calibration"]["images"] == 4


@pytest.mark.parametrize("good, extra, message", [
    (2, [], "only 2 of the 5 calibration image(s) could be read, fewer than the 4 required"),
    (0, [], "holds 3 image file(s), fewer than the 4 calibration images required"),  # before any work
    (6, ["--calib-min", "7"], "only 6 of the 9 calibration image(s) could be read, fewer than the 7 required"),
])
def test_cli_too_few_readable_images_fails_and_writes_nothing(tmp_path, fixed_export, calibration_dir, good, extra,
                                                              message):
    folder, _ = _folder(tmp_path / "calib", good, calibration_dir)
    out = tmp_path / "out" / "m.int8.onnx"
    res = _export(fixed_export[0], folder, out, *extra)
    assert res.exit_code == 1, res.output
    assert message in res.output and "nothing was written" in res.output
    assert "Traceback" not in res.output
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
