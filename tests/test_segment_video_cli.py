"""`ifseg-deploy segment` on videos, cameras, URLs and pipelines: the overlay video, frames.jsonl, label PNGs,
the summary, the ways a run stops (end, --max-frames, a damaged file, Ctrl-C, SIGTERM, SIGKILL) and the
refusals. The model is the session's tiny 32-pixel one without refinement; videos are panned synthetic scenes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers.ofa import TINY_CATEGORIES as CATS
from helpers.stream import ColourBackend, SlowBackend, pan_frames, read_video, write_video
from PIL import Image

from ifseg_deploy.cli import cli
from ifseg_deploy.runtime.segmenter import Segmenter

cv2 = pytest.importorskip("cv2")

from ifseg_deploy.runtime.sources import gstreamer_support, open_source  # noqa: E402 - after the skip
from ifseg_deploy.runtime.video_writer import partial_path, recover_partial  # noqa: E402

H, W, N, FPS = 64, 96, 8, 10.0
STAGE_KEYS = {"read_ms", "preprocess_ms", "infer_ms", "postprocess_ms", "latency_ms"}


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("cli-video") / "pan.avi", pan_frames(N, H, W), FPS)


def segment(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["segment", *map(str, args)])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_video_gives_overlay_video_frames_jsonl_labels_and_summary(tiny_model_dir_32, video, tmp_path):
    out = tmp_path / "out"
    code, output = segment(video, "-m", tiny_model_dir_32, "-o", out, "--no-refine", "--save-labels", "--batch", 2)
    assert code == 0, output
    assert f"read {N} frames, segmented {N}, dropped 0" in output and "p99" in output
    overlay = read_video(out / "pan_overlay.mp4")
    assert len(overlay) == N
    assert {f.shape for f in overlay} == {overlay[0].shape}  # one size: the legend does not change it
    vh, vw = overlay[0].shape[:2]
    assert vh >= H and vw > W and vh % 2 == 0 and vw % 2 == 0
    seg = Segmenter.from_pretrained(tiny_model_dir_32, refine=False)
    decoded = read_video(video)
    records = jsonl(out / "frames.jsonl")
    assert [r["index"] for r in records] == list(range(N))
    assert [r["timestamp"] for r in records] == pytest.approx([i / FPS for i in range(N)], abs=1e-3)
    from ifseg_deploy.runtime.visualize import blend, palette

    for i, (frame, record) in enumerate(zip(decoded, records, strict=True)):
        labels = seg(frame).labels
        with Image.open(out / "labels" / f"pan_{i:06d}.png") as png:
            assert np.array_equal(np.asarray(png), labels), i
        assert STAGE_KEYS <= set(record) and record["batch"] == 2
        counts = np.bincount(labels.ravel(), minlength=len(CATS)) / labels.size
        assert record["areas"] == pytest.approx({c: counts[k] for k, c in enumerate(CATS) if counts[k] > 0},
                                                abs=1e-5)
        expected = blend(frame, labels, palette(len(CATS)))  # the overlay's picture, below the fps caption
        assert np.abs(overlay[i][H // 2:H, :W].astype(int) - expected[H // 2:]).mean() < 8, i
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["frames_read"], summary["frames_segmented"], summary["frames_dropped"]) == (N, N, 0)
    assert summary["latency_p50_ms"] > 0 and summary["mean_fps"] > 0 and summary["error"] is None
    assert (out / "classes.txt").read_text().splitlines() == CATS
    assert sorted(p.name for p in out.iterdir()) == ["classes.txt", "frames.jsonl", "labels", "pan_overlay.mp4",
                                                     "summary.json"]


def test_max_frames_and_options_that_do_not_fit(tiny_model_dir_32, video, tmp_path):
    out = tmp_path / "out"
    code, output = segment(video, "-m", tiny_model_dir_32, "-o", out, "--no-refine", "--max-frames", 3)
    assert code == 0 and "stopped by --max-frames 3" in output, output
    assert len(read_video(out / "pan_overlay.mp4")) == 3 and len(jsonl(out / "frames.jsonl")) == 3
    image = tmp_path / "a.png"
    Image.fromarray(pan_frames(1, H, W)[0]).save(image)
    for args in ([video, "--save-probs"], [video, image], ["--camera", "0", video], [image, "--max-frames", "2"],
                 [image, "--smooth", "0.5"], []):
        code, output = segment(*args, "-m", tiny_model_dir_32, "-o", tmp_path / "other")
        assert code == 2, (args, output)
    assert not (tmp_path / "other").exists()


def test_truncated_video_ends_with_a_clear_message_and_a_valid_video(tiny_model_dir_32, tmp_path):
    data = write_video(tmp_path / "full.avi", pan_frames(30, H, W), FPS).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    out = tmp_path / "out"
    code, output = segment(cut, "-m", tiny_model_dir_32, "-o", out, "--no-refine")
    assert code == 1 and "Error:" in output and "damaged or cut short after frame" in output, output
    k = int(output.split("damaged or cut short after frame ")[1].split(":")[0])
    assert 0 < k < 30
    assert len(read_video(out / "cut_overlay.mp4")) == k and len(jsonl(out / "frames.jsonl")) == k
    assert "cut short" in json.loads((out / "summary.json").read_text())["error"]
    assert not partial_path(out / "cut_overlay.mp4").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sources_that_cannot_be_opened_fail_fast_with_a_named_error(tiny_model_dir_32, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    cases = [(["--camera", "97"], "camera 97: cannot be opened"), ([f"rtsp://127.0.0.1:{free_port()}/live"],
             "cannot be opened"), ([junk], "cannot be read as a video")]
    if not gstreamer_support()[0]:
        cases.append((["videotestsrc ! videoconvert ! appsink"], "built without GStreamer"))
    for args, message in cases:
        t = time.monotonic()
        code, output = segment(*args, "-m", tiny_model_dir_32, "-o", tmp_path / "out")
        assert code == 1 and "Error: " in output and message in output, (args, output)
        assert time.monotonic() - t < 10, args
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_ctrl_c_finishes_the_video_with_the_frames_segmented(tmp_path, video):
    """Ctrl-C arrives as KeyboardInterrupt wherever the program is, here in the backend at its 4th call."""
    from ifseg_deploy.commands.segment_video import run_stream

    class Interrupted(SlowBackend):
        def probs(self, pixels):
            if len(self.calls) == 3:
                raise KeyboardInterrupt
            return super().probs(pixels)

    seg = Segmenter(Interrupted(ColourBackend(CATS), 0.0))
    out = tmp_path / "out"
    out.mkdir()
    try:
        code = run_stream(seg, open_source(video), "pan", out, alpha=0.5, save_labels=False, max_frames=None,
                          duration=None, batch=1, smooth=0.0)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped run_stream instead of ending the run")
    assert code == 0
    assert len(read_video(out / "pan_overlay.mp4")) == 3 and len(jsonl(out / "frames.jsonl")) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by"] == "Ctrl-C" and summary["frames_segmented"] == 3
    assert not partial_path(out / "pan_overlay.mp4").exists()


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """150 noisy 240x320 frames: about 40 KiB each in mp4v, so FFmpeg's 256 KiB buffer is a few frames."""
    rng = np.random.default_rng(1)
    frames = [np.clip(f + rng.normal(0, 25, f.shape), 0, 255).astype(np.uint8)
              for f in pan_frames(150, 240, 320, step=1)]
    return write_video(tmp_path_factory.mktemp("long") / "long.avi", frames, 25.0)


def run_until(model: Path, video: Path, out: Path, lines: int, sig: int) -> subprocess.CompletedProcess:
    """Run the CLI in a child; send ``sig`` once frames.jsonl has ``lines`` lines."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ifseg_deploy", "segment", str(video), "-m", str(model), "-o",
                             str(out), "--no-refine"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        deadline = time.monotonic() + 240
        log = out / "frames.jsonl"
        while not (log.exists() and len(log.read_text().splitlines()) >= lines):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.slow
def test_sigterm_stops_cleanly_with_a_finished_video(tiny_model_dir_32, long_video, tmp_path):
    out = tmp_path / "out"
    done = run_until(tiny_model_dir_32, long_video, out, 5, signal.SIGTERM)
    assert done.returncode == 0, done.stderr
    assert "stopped by signal 15" in done.stdout and "Traceback" not in done.stderr
    n = len(jsonl(out / "frames.jsonl"))
    assert 5 <= n < 150
    frames = read_video(out / "long_overlay.mp4")
    assert len(frames) == n and frames[0].shape[0] == 240 and frames[0].shape[1] > 320  # + the legend
    assert not partial_path(out / "long_overlay.mp4").exists()


@pytest.mark.slow
def test_a_kill_leaves_a_playable_partial_video_that_recovers(tiny_model_dir_32, long_video, tmp_path):
    out = tmp_path / "out"
    done = run_until(tiny_model_dir_32, long_video, out, 25, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    final, partial = out / "long_overlay.mp4", partial_path(out / "long_overlay.mp4")
    assert not final.exists() and partial.exists()
    n = len(jsonl(out / "frames.jsonl"))  # flushed per frame: every frame segmented before the kill
    playable = read_video(partial)
    assert 0 < len(playable) <= n and playable[0].shape[0] == 240
    path, m = recover_partial(partial)
    assert path == final and m == len(playable) - 1 and not partial.exists()
    recovered = read_video(final)
    assert len(recovered) == m and recovered[0].shape == playable[0].shape


@pytest.mark.parametrize("classes", [4, 150])
def test_every_overlay_frame_of_a_video_has_one_size(classes):
    """The writer refuses a frame of another size: the legend keeps its width and height whatever the labels."""
    from ifseg_deploy.runtime.visualize import palette, video_frame

    names = [f"class {'x' * (k % 7)}{k}" for k in range(classes)]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (67, 101, 3), dtype=np.uint8)
    maps = [np.zeros((67, 101), np.int32), np.full((67, 101), classes - 1, np.int32),
            rng.integers(0, classes, (67, 101)).astype(np.int32)]
    shapes = {video_frame(image, m, names, palette(classes), caption=c).shape
              for m in maps for c in ("1.0 fps", "123.4 fps")}
    assert len(shapes) == 1
    (h, w, _), = shapes
    assert h % 2 == 0 and w % 2 == 0 and h <= 68 and w > 101
