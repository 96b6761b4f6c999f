"""Writes cut part-way leave every artifact whole: label PNGs, the exported .onnx, an engine with its sidecar, an
adapted-model directory.

Each write runs in a child process (``helpers/interrupted_write.py``) whose files may not grow past a few kilobytes, so
it is cut in the middle of its bytes whatever code writes them: either the write fails (a full disk) and the
error handling runs, or the kernel kills the process right there and nothing runs after it. One more test sends
SIGKILL from outside in the middle of a 64 MiB write. Afterwards the file under the target's name must be the
old one, intact, or the complete new one; anything else may only be a hidden temporary (``.NAME...``), and
after a failure (not a kill) nothing may be left over at all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.ofa import TINY_CATEGORIES
from PIL import Image

HARNESS = Path(__file__).parent / "helpers" / "interrupted_write.py"
LIMIT = 4096  # bytes any file of the child may hold; every artifact below is larger
EFBIG_TEXT = os.strerror(27)  # "File too large" (errno.EFBIG)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file-size limits")


def run_child(scenario: str, mode: str, limit: int = LIMIT, **args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # an import must not be the write that is cut
    return subprocess.run([sys.executable, str(HARNESS), scenario, mode, str(limit), json.dumps(args)],
                          capture_output=True, text=True, timeout=300, env=env,
                          cwd=Path(__file__).parent)


def check_outcome(proc: subprocess.CompletedProcess, mode: str, folder: Path, limit: int = LIMIT) -> None:
    """The child was really cut in the middle of the artifact's bytes: killed there (``kill``), or it hit the
    full-disk error there (``fail``) and cleaned up after itself."""
    assert "writing" in proc.stdout, proc.stderr[-3000:]
    if mode == "kill":
        assert proc.returncode == -signal.SIGXFSZ, (proc.returncode, proc.stderr[-3000:])
        # what was being written when the kernel stopped the process: a hidden file (or a file in a hidden
        # staging folder) of at most the limit (safetensors sizes its file first: it is cut at 0 bytes)
        cut = [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size <= limit
               and any(part.startswith(".") for part in p.relative_to(folder).parts)]
        assert cut, sorted(str(p) for p in folder.rglob("*"))
    else:
        assert EFBIG_TEXT in proc.stdout + proc.stderr, proc.stderr[-3000:]
        assert [p.name for p in folder.rglob(".*")] == [], "a failed write left temporary files behind"


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# -- label PNGs (`segment`) ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fail", "kill"])
def test_segment_label_png_cut_midway_keeps_the_previous_one(tiny_model_dir_32, tmp_path, mode):
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    labels = out / "labels"
    labels.mkdir(parents=True)
    old = b"\x89PNG previous run's label map " * 200  # 6 KB; only its bytes matter
    (labels / "photo.png").write_bytes(old)
    # 64 bytes: classes.txt (22 bytes) is written whole, the label PNG (a few hundred bytes) is cut
    proc = run_child("segment-labels", mode, limit=64, image=str(image), model=str(tiny_model_dir_32), out=str(out))
    check_outcome(proc, mode, labels, limit=64)
    assert (labels / "photo.png").read_bytes() == old
    assert visible(labels) == ["photo.png"]


# -- the exported .onnx file ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["fail", "kill"])
def test_onnx_publication_writes_no_bytes_under_the_target_name(tmp_path, mode):
    """The export writes and checks the .onnx in a hidden work folder, then publishes it. Publication must be a
    rename: under the size limit, a copy would be cut and leave a partial .onnx at --out."""
    out = tmp_path / "model.onnx"
    old, new = b"old onnx " * 1000, os.urandom(64 * LIMIT)
    out.write_bytes(old)
    work = tmp_path / ".model.onnx.work-1"
    work.mkdir()
    (work / "model.onnx").write_bytes(new)
    proc = run_child("onnx-commit", mode, staged=str(work / "model.onnx"), out=str(out))
    assert proc.returncode == 0 and "finished" in proc.stdout, proc.stderr[-3000:]
    assert out.read_bytes() == new
    assert visible(tmp_path) == ["model.onnx"]


# -- a TensorRT engine and its sidecar -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["fail", "kill"])
def test_engine_and_sidecar_cut_midway_keep_the_previous_pair(tmp_path, mode):
    from ifseg_deploy.runtime.engine_file import EngineEnvironment, EngineKey, read_engine, write_engine

    path = tmp_path / "model.engine"
    old_key = EngineKey.create("ab" * 32, "10.3.0", "Orin", "8.7", "fp16", [[1, 3, 64, 96]] * 3)
    old_plan = os.urandom(3 * LIMIT)
    write_engine(path, old_plan, old_key)
    proc = run_child("engine", mode, path=str(path), plan_bytes=16 * LIMIT)
    check_outcome(proc, mode, tmp_path)
    plan, record = read_engine(path, environment=EngineEnvironment("10.3.0", "Orin", "8.7"))
    assert plan == old_plan and record["key"] == old_key  # the old pair, still loadable
    assert visible(tmp_path) == ["model.engine", "model.engine.json"]


# -- an adapted-model directory ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fail", "kill"])
def test_model_directory_cut_midway_keeps_the_previous_one(tiny_model_dir_32, tmp_path, mode):
    import shutil

    from ifseg_deploy.model_dir import AdaptedModel

    target = tmp_path / "my_model"
    shutil.copytree(tiny_model_dir_32, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    source = AdaptedModel.from_pretrained(tiny_model_dir_32)
    source.categories = ["road", "tree", "car", "grass"]
    new_dir = source.save_pretrained(tmp_path / "incoming" / "m")
    proc = run_child("model-dir", mode, source=str(new_dir), target=str(target))
    check_outcome(proc, mode, tmp_path)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert AdaptedModel.from_pretrained(target).categories == TINY_CATEGORIES
    assert visible(tmp_path) == ["incoming", "my_model"]


# -- SIGKILL from outside, in the middle of a large write ----------------------------------------------------------
def test_sigkill_in_the_middle_of_a_large_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "big.bin"
    old = b"old content\n" * 1000
    target.write_bytes(old)
    total = 64 * 2**20
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    child = subprocess.Popen([sys.executable, str(HARNESS), "large-file", "fail", "0",
                              json.dumps({"path": str(target), "nbytes": total})],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "writing", child.stderr.read()
        seen, deadline = None, time.monotonic() + 60
        while seen is None and time.monotonic() < deadline and child.poll() is None:
            for p in tmp_path.iterdir():
                try:
                    size = p.stat().st_size
                except FileNotFoundError:  # renamed meanwhile
                    continue
                if (p.name != target.name or size != len(old)) and 0 < size < total:
                    seen = (p.name, size)  # bytes are arriving: kill now
                    child.send_signal(signal.SIGKILL)
                    break
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert seen is not None, "the write finished before it could be interrupted"
    assert child.returncode == -signal.SIGKILL
    assert target.read_bytes() == old  # not a partial new file under the target's name
    assert visible(tmp_path) == ["big.bin"]
