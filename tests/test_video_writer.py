"""The overlay video writer (runtime/video_writer.py): complete after a clean close, Ctrl-C or an error in the
block; playable so far after a kill, and recoverable into the final file."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ifseg_deploy.synthetic.world import make_scene

cv2 = pytest.importorskip("cv2")

from ifseg_deploy.runtime.video_writer import (  # noqa: E402 - after the skip
    VideoEncoderError,
    VideoOutputError,
    VideoWriter,
    partial_path,
    raw_copy_supported,
    recover_partial,
)

H, W = 96, 128
STRATEGIES = ["copy", "dual"] if raw_copy_supported() else ["dual"]


def pan(n: int, h: int = H, w: int = W, step: int = 3, seed: int = 3) -> list[np.ndarray]:
    scene, _ = make_scene(seed, size=(h, w + step * n))
    return [np.ascontiguousarray(scene[:, step * i: step * i + w]) for i in range(n)]


def read_back(path: Path) -> tuple[list[np.ndarray], float, float]:
    """(RGB frames, fps, header frame count) as OpenCV's FFmpeg backend reads them."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    assert cap.isOpened(), f"{path} does not open"
    fps, count = cap.get(cv2.CAP_PROP_FPS), cap.get(cv2.CAP_PROP_FRAME_COUNT)
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return out, fps, count


def assert_same_frames(got: list[np.ndarray], written: list[np.ndarray]) -> None:
    """Each frame read back is the frame written at its place: close to it (lossy codec), and clearly
    closer than to the frame written 5 places later (the pan moves 15 px)."""
    for i, g in enumerate(got):
        err = np.abs(g.astype(int) - written[i]).mean()
        other = np.abs(g.astype(int) - written[(i + 5) % len(written)]).mean()
        assert err < 12 and err < other / 2, (i, err, other)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return pan(24)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".avi"])
def test_clean_close_gives_the_final_file_with_every_frame(tmp_path, frames, strategy, ext):
    path = tmp_path / f"clip_overlay{ext}"
    with VideoWriter(path, 12, strategy=strategy) as w:
        for f in frames:
            w.write(f)
        assert w.partial.exists() and not path.exists()
    got, fps, count = read_back(path)
    assert (len(got), fps, count) == (len(frames), 12, len(frames))
    assert got[0].shape == (H, W, 3)
    assert_same_frames(got, frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no partial, no temporary file left


def test_mp4_has_its_index_and_the_mp4v_codec(tmp_path, frames):
    path = tmp_path / "v.mp4"
    with VideoWriter(path, 10) as w:
        for f in frames[:5]:
            w.write(f)
    data = path.read_bytes()
    assert data[4:8] == b"ftyp" and b"moov" in data and b"mp4v" in data


def test_existing_video_is_replaced_only_when_the_new_one_is_complete(tmp_path, frames):
    path = tmp_path / "v.mp4"
    path.write_bytes(b"the old video")
    w = VideoWriter(path, 10)
    for f in frames[:6]:
        w.write(f)
    assert path.read_bytes() == b"the old video"
    assert w.close() == path
    assert len(read_back(path)[0]) == 6


def test_no_frame_leaves_no_file(tmp_path):
    path = tmp_path / "v.mp4"
    with VideoWriter(path, 10, size=(H, W)) as w:
        pass
    assert w.close() is None and list(tmp_path.iterdir()) == []


def test_bad_frames_and_names_are_refused(tmp_path, frames):
    with pytest.raises(VideoOutputError, match="ends in one of"):
        VideoWriter(tmp_path / "v.gif", 10)
    with pytest.raises(VideoOutputError, match="fps"):
        VideoWriter(tmp_path / "v.mp4", 0)
    with VideoWriter(tmp_path / "v.mp4", 10) as w:
        w.write(frames[0])
        with pytest.raises(VideoOutputError, match="frame 1 is 64x96, the video is 128x96"):
            w.write(np.zeros((96, 64, 3), np.uint8))
        with pytest.raises(VideoOutputError, match="uint8 RGB"):
            w.write(frames[0].astype(np.float32))
    assert len(read_back(tmp_path / "v.mp4")[0]) == 1


def test_error_in_the_block_still_finishes_the_video(tmp_path, frames):
    path = tmp_path / "v.mp4"
    with pytest.raises(RuntimeError, match="source broke"), VideoWriter(path, 10) as w:
        for f in frames[:7]:
            w.write(f)
        raise RuntimeError("source broke")
    got, _, _ = read_back(path)
    assert len(got) == 7 and not partial_path(path).exists()


def test_partial_file_from_an_interrupted_run_is_not_overwritten(tmp_path, frames):
    path = tmp_path / "v.mp4"
    partial_path(path).write_bytes(b"an interrupted recording")
    with pytest.raises(VideoOutputError, match="interrupted run.*recover_partial"):
        VideoWriter(path, 10)
    assert partial_path(path).read_bytes() == b"an interrupted recording"
    with VideoWriter(path, 10, overwrite=True) as w:
        w.write(frames[0])
    assert path.exists() and not partial_path(path).exists()


def test_copy_strategy_needs_raw_support():
    if raw_copy_supported():
        pytest.skip("this OpenCV copies packets")
    with pytest.raises(VideoEncoderError, match="4.9"):
        VideoWriter("v.mp4", 10, strategy="copy")


# --- the process stops: Ctrl-C and kill ----------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from ifseg_deploy.runtime.video_writer import VideoWriter
    from ifseg_deploy.synthetic.world import make_scene

    path, n, strategy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    scene, _ = make_scene(4, size=(240, 320 + 2 * n))
    with VideoWriter(path, 25, strategy=strategy) as w:
        for i in range(n):
            w.write(np.ascontiguousarray(scene[:, 2 * i: 2 * i + 320]))
        print(w.frames_written, flush=True)
        time.sleep(60)
""")


def child_frames(n: int) -> list[np.ndarray]:
    return pan(n, h=240, w=320, step=2, seed=4)


def run_child_until_written(path: Path, n: int, strategy: str, sig: int) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(n), strategy],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == str(n), proc.stderr.read()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ctrl_c_finishes_the_video_with_every_frame(tmp_path, strategy):
    n = 40
    path = tmp_path / "clip_overlay.mp4"
    done = run_child_until_written(path, n, strategy, signal.SIGINT)
    assert "KeyboardInterrupt" in done.stderr
    got, _, count = read_back(path)
    assert len(got) == n and count == n and got[0].shape == (240, 320, 3)
    assert_same_frames(got, child_frames(n))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_kill_leaves_a_playable_partial_file_that_recovers_into_the_mp4(tmp_path, strategy):
    n = 200  # about 1.2 MB of video: FFmpeg's unwritten buffer (at most 256 KiB) is a small part of it
    path = tmp_path / "clip_overlay.mp4"
    done = run_child_until_written(path, n, strategy, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    partial = partial_path(path)
    assert not path.exists() and partial.exists()
    temps = [p for p in tmp_path.iterdir() if p.name.startswith(".clip_overlay.tmp-")]
    assert len(temps) == (1 if strategy == "dual" else 0)  # the unfinished (unplayable) MP4 of "dual"
    written = child_frames(n)
    got, _, _ = read_back(partial)
    assert n // 2 <= len(got) <= n and got[0].shape == (240, 320, 3)
    frame_bytes = partial.stat().st_size / len(got)
    assert (n - len(got)) * frame_bytes <= 256 * 1024 + 3 * frame_bytes  # lost: FFmpeg's unwritten buffer only
    assert_same_frames(got[:-1], written)  # the last frame read may be the one the kill cut
    final, m = recover_partial(partial, reencode=strategy == "dual")
    assert final == path and m == len(got) - 1
    recovered, fps, count = read_back(path)
    assert len(recovered) == m and count == m and fps == 25
    assert_same_frames(recovered, written)
    if strategy == "copy":  # packets copied: the very frames of the partial file
        assert all(np.array_equal(a, b) for a, b in zip(recovered, got))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # partial and stale temporary removed


def test_recover_refuses_what_is_not_a_recording(tmp_path):
    with pytest.raises(VideoOutputError, match="no such file"):
        recover_partial(tmp_path / "x.partial.avi")
    bad = tmp_path / "x.partial.avi"
    bad.write_bytes(b"nothing here")
    with pytest.raises(VideoOutputError, match="nothing to recover"):
        recover_partial(bad)
    assert bad.exists() and [p.name for p in tmp_path.iterdir()] == ["x.partial.avi"]
