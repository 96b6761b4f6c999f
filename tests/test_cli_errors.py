"""User errors on the command line: every command refuses bad paths, wrong kinds of files, options that do not go
together and a model adapted for other classes with ``Error: ...`` and a non-zero exit status, never a Python
traceback; ``--debug`` (or ``IFSEG_DEPLOY_DEBUG=1``) shows the traceback when someone wants it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ifseg_deploy.cli import cli


@pytest.fixture(scope="module")
def files(tmp_path_factory, fixed_export, export_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-errors")
    image = root / "photo.png"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(image)
    a_file = root / "notes.txt"
    a_file.write_text("a file where a folder is needed\n")
    empty = root / "empty"
    empty.mkdir()
    truncated = root / "cut.onnx"
    truncated.write_bytes(fixed_export[0].read_bytes()[:5000])
    return {"image": image, "file": a_file, "empty": empty, "model": export_model_dir, "onnx": fixed_export[0],
            "truncated": truncated, "root": root}


def cases(f: dict[str, Path]) -> dict[str, tuple[list[str], int, str]]:
    """name -> (arguments, exit status, what the message must say)."""
    m, img, out = str(f["model"]), str(f["image"]), str(f["root"] / "out")
    under_file = str(f["file"] / "sub")  # a path whose parent is a regular file
    return {
        # wrong kind of file
        "inspect an adapted model": (["inspect", m, "-c", "floor"], 1,
                                     "is an ifseg-deploy adapted-model directory, not an OFA checkpoint"),
        "segment an .onnx with torch": (["segment", img, "-m", str(f["onnx"]), "-o", out], 1,
                                        "is an ONNX file, not an adapted-model directory"),
        # bad paths
        "segment into a file's sub-folder": (["segment", img, "-m", m, "-o", under_file], 1,
                                             f"{under_file}: Not a directory"),
        "export into a file's sub-folder": (["export", "--model", m, "--out", under_file + "/m.onnx"], 1,
                                            "Not a directory"),
        "eval a folder without classes.txt": (["eval", "-m", m, "-d", "folder", "--root", str(f["empty"])], 1,
                                              "has no classes.txt"),
        # bad option values and combinations
        "adapt on an unknown device": (["adapt", "--checkpoint", m, "-c", "floor", "--out", out, "--steps", "1",
                                        "--device", "banana"], 1, "unknown device 'banana'"),
        "segment onnxruntime on an unknown device": (["segment", img, "-m", str(f["onnx"]), "--backend",
                                                      "onnxruntime", "--device", "banana", "-o", out], 1,
                                                     "unknown device 'banana' for the onnxruntime backend"),
        "segment refinement other than exported": (["segment", img, "-m", str(f["onnx"]), "--backend",
                                                    "onnxruntime", "--refine-k", "5", "-o", out], 1,
                                                   "re-export the model"),
        "bench kernel on an unknown device": (["bench", "--mode", "kernel", "--device", "banana", "--out", out], 2,
                                              "--device must be cpu, cuda, cuda:N or auto"),
        "bench an unknown preset": (["bench", "--preset", "gigantic", "--out", out], 2, "'gigantic' is not one of"),
        "bench --root without --dataset": (["bench", "--model", m, "--root", str(f["empty"]), "--out", out], 2,
                                           "--root goes with --dataset"),
        "export fixed and dynamic": (["export", "--model", m, "--input-size", "64x96", "--dynamic", "--out",
                                      out + ".onnx"], 2, "not both"),
        "demo with no steps": (["demo", "--steps", "0", "--out", out], 2, "must be >= 1"),
        # a model adapted for other classes than the dataset's
        "eval a model of other classes": (["eval", "-m", m, "-d", "synthetic", "--limit", "1"], 1,
                                          "do not match the 8 classes of synthetic"),
    }


CASE_NAMES = list(cases({k: Path("/x") for k in ("image", "file", "empty", "model", "onnx", "truncated", "root")}))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_user_errors_print_a_message_not_a_traceback(files, name):
    args, code, message = cases(files)[name]
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}: a traceback for the user"
    assert result.exit_code == code, result.output
    assert "Error" in result.output and message in result.output, result.output
    assert "Traceback" not in result.output


def test_debug_gives_the_original_exception(files):
    """With --debug or IFSEG_DEPLOY_DEBUG=1 the exception itself leaves the command (click then prints its
    traceback), also where a command had turned it into a message."""
    from ifseg_deploy.artifacts import ArtifactError
    from ifseg_deploy.checkpoints.errors import CheckpointError

    export = ["export", "--model", str(files["truncated"]), "--out", str(files["root"] / "x.onnx")]
    assert isinstance(CliRunner().invoke(cli, export).exception, SystemExit)
    assert isinstance(CliRunner().invoke(cli, ["--debug", *export]).exception, ArtifactError)
    assert isinstance(CliRunner().invoke(cli, export, env={"IFSEG_DEPLOY_DEBUG": "1"}).exception, ArtifactError)
    assert isinstance(CliRunner().invoke(cli, export, env={"IFSEG_DEPLOY_DEBUG": "0"}).exception, SystemExit)
    segment = ["segment", str(files["image"]), "-m", str(files["onnx"]), "-o", str(files["root"] / "o")]
    assert isinstance(CliRunner().invoke(cli, ["--debug", *segment]).exception, CheckpointError)


def test_console_output_with_and_without_debug(files):
    """The real program: a message on stderr, or with --debug the traceback."""
    args = [sys.executable, "-m", "ifseg_deploy", "export", "--model", str(files["truncated"]), "--out",
            str(files["root"] / "y.onnx")]
    plain = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 1
    assert plain.stderr.startswith(f"Error: {files['truncated']} (5,000 bytes) is not a complete ONNX file")
    assert "Traceback" not in plain.stdout + plain.stderr
    debug = subprocess.run([*args[:3], "--debug", *args[3:]], capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "ifseg_deploy.errors.ArtifactError: " in debug.stderr
