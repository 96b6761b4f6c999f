"""``Segmenter.stream`` (runtime/stream.py): labels equal to the Segmenter's, batching, smoothing, the drop policy
of live sources, reader errors, and the reader thread's end.

Videos are written here from synthetic-world scenes with a slow pan (frames differ). The labels are checked
against the session's tiny 32-pixel model (no refinement); the stream's mechanics run on a colour backend
that takes microseconds (helpers/stream.py), so that the tests spend their time on what they test.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.ofa import TINY_CATEGORIES
from helpers.stream import ColourBackend, LiveFrames, SlowBackend, pan_frames, write_video

from ifseg_deploy.errors import InputError
from ifseg_deploy.preprocessing import upsample_argmax
from ifseg_deploy.runtime.segmenter import Segmenter
from ifseg_deploy.synthetic.world import make_scene

cv2 = pytest.importorskip("cv2")

from ifseg_deploy.runtime.sources import (  # noqa: E402 - after the skip
    DamagedVideoError,
    GStreamerUnavailableError,
    SourceError,
    SourceOpenError,
    gstreamer_support,
)

H, W, N, FPS = 64, 96, 12, 10.0


@pytest.fixture(scope="module")
def tiny(tiny_model_dir_32) -> Segmenter:
    return Segmenter.from_pretrained(tiny_model_dir_32, refine=False)


@pytest.fixture(scope="module")
def seg() -> Segmenter:
    return Segmenter(ColourBackend(TINY_CATEGORIES))


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("stream") / "pan.avi", pan_frames(N, H, W), FPS)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("model", ["tiny", "colour"])
def test_streamed_labels_equal_the_segmenter_on_each_frame(request, video, batch, model):
    seg = request.getfixturevalue("tiny" if model == "tiny" else "seg")
    with seg.stream(video, batch=batch) as stream:
        results = list(stream)
    assert [r.index for r in results] == list(range(N))
    assert [r.timestamp for r in results] == pytest.approx([i / FPS for i in range(N)], abs=1e-3)
    assert not np.array_equal(results[0].labels, results[-1].labels)  # the pan changes the labels
    for r in results:
        assert r.labels.shape == (H, W) and r.labels.dtype == np.int32
        assert np.array_equal(r.labels, seg(r.image).labels), r.index
        assert set(r.timings) == {"read", "preprocess", "infer", "postprocess"}
        assert all(v >= 0 for v in r.timings.values()) and r.latency >= r.timings["postprocess"]
    assert {r.batch_size for r in results} == ({1} if batch == 1 else {4})  # 12 frames: three full batches
    assert (stream.stats.frames_read, stream.stats.frames_segmented, stream.stats.frames_dropped) == (N, N, 0)
    assert not stream._thread.is_alive()


def test_batches_of_consecutive_frames_reach_the_backend(seg, video):
    slow = Segmenter(SlowBackend(seg.backend, 0.0))
    with slow.stream(video, batch=5) as stream:
        labels = [r.labels for r in stream]
    assert slow.backend.calls == [5, 5, 2]
    with seg.stream(video) as stream:
        assert all(np.array_equal(a, r.labels) for a, r in zip(labels, stream, strict=True))


def flips_per_pixel_per_frame(labels: list[np.ndarray]) -> float:
    return float(np.mean([np.mean(a != b) for a, b in zip(labels, labels[1:])]))


@pytest.fixture(scope="module")
def noisy_static_video(tmp_path_factory) -> Path:
    scene, _ = make_scene(7, size=(H, W))
    rng = np.random.default_rng(0)
    frames = [np.clip(scene + rng.normal(0, 40, scene.shape), 0, 255).astype(np.uint8) for _ in range(16)]
    return write_video(tmp_path_factory.mktemp("noisy") / "noisy.avi", frames, FPS)


def test_smoothing_reduces_flicker_and_zero_is_no_smoothing(seg, noisy_static_video):
    with seg.stream(noisy_static_video) as stream:
        raw = list(stream)
    with seg.stream(noisy_static_video, smooth=0.0) as stream:
        zero = list(stream)
    with seg.stream(noisy_static_video, smooth=0.8) as stream:
        smoothed = list(stream)
    for r, z in zip(raw, zero, strict=True):
        assert np.array_equal(r.labels, z.labels) and np.array_equal(r.labels, seg(r.image).labels)
    before = flips_per_pixel_per_frame([r.labels for r in raw])
    after = flips_per_pixel_per_frame([r.labels for r in smoothed])
    assert before > 0.02, before  # the noise makes labels flicker
    assert after < 0.5 * before, (before, after)
    # the average the docs state: p_t = 0.8 p_(t-1) + 0.2 q_t, from p_0 = q_0, on the model's grid
    ema = None
    for r in smoothed:
        q = seg(r.image, return_probs=True).probs
        ema = q if ema is None else 0.8 * ema + 0.2 * q
        expected = upsample_argmax(ema, (H, W))
        assert np.mean(expected != r.labels) < 1e-3, r.index  # float rounding may flip a near tie


def test_a_file_never_loses_a_frame_behind_a_slow_backend(seg, video):
    slow = Segmenter(SlowBackend(seg.backend, 0.05))
    with slow.stream(video, queue_size=1) as stream:
        got = [r.index for r in stream]
    assert got == list(range(N)) and stream.stats.frames_dropped == 0


def test_a_live_source_faster_than_the_backend_drops_the_oldest_frames(seg):
    frames = pan_frames(40, H, W)
    slow = Segmenter(SlowBackend(seg.backend, 0.08))
    with slow.stream(LiveFrames(frames, fps=200), queue_size=2) as stream:
        results = list(stream)
    got = [r.index for r in results]
    stats = stream.stats
    assert stats.frames_read == 40 and stats.frames_dropped > 10, stats
    assert stats.frames_segmented == len(got) == 40 - stats.frames_dropped
    assert got == sorted(set(got)) and got[-1] == 39  # in order, and the newest frame is kept
    for r in results:
        assert np.array_equal(r.image, frames[r.index])  # each result is the frame its index names
    # a live source told not to drop waits for the backend instead
    with slow.stream(LiveFrames(frames[:8], fps=200), queue_size=2, drop=False) as stream:
        assert [r.index for r in stream] == list(range(8)) and stream.stats.frames_dropped == 0


def test_truncated_video_gives_the_frames_before_the_damage_then_the_named_error(seg, tmp_path):
    frames = pan_frames(30, H, W)
    data = write_video(tmp_path / "full.avi", frames, FPS).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    got = []
    stream = seg.stream(cut, batch=4)
    with pytest.raises(DamagedVideoError, match=r"damaged or cut short after frame \d+") as info:
        for r in stream:
            got.append(r.index)
    assert 0 < len(got) < 30 and got == list(range(len(got)))
    assert len(got) % 4 != 0  # the error came in the middle of a batch: the frames before it still count
    assert f"after frame {len(got)}" in str(info.value)  # every frame read before the damage was segmented
    assert not stream._thread.is_alive() and stream.source._closed


def test_bad_item_of_an_iterable_surfaces_after_the_good_frames(seg):
    frames = pan_frames(3, H, W) + ["not an image"]
    stream = seg.stream(frames)
    got = []
    with pytest.raises(SourceError, match="frame 3"):
        for r in stream:
            got.append(r.index)
    assert got == [0, 1, 2] and not stream._thread.is_alive()


def test_leaving_early_joins_the_reader_and_closes_the_source(seg, video):
    with seg.stream(video, queue_size=1) as stream:
        for r in stream:
            if r.index == 1:
                break
    assert not stream._thread.is_alive() and stream.source._closed
    with pytest.raises(StopIteration):
        next(stream)
    # a reader inside a slow read (a camera between frames) is waited for too
    with seg.stream(LiveFrames(pan_frames(4, H, W), fps=3)) as stream:
        next(stream)
        assert stream._thread.is_alive()
    assert not stream._thread.is_alive()


def test_unopenable_sources_are_named_errors_in_bounded_time(seg, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    unknown = tmp_path / "unknown_codec.avi"
    data = write_video(tmp_path / "ok.avi", pan_frames(3, H, W), FPS).read_bytes()
    unknown.write_bytes(data.replace(b"FMP4", b"QQQQ").replace(b"mp4v", b"QQQQ"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    threads = threading.active_count()
    for spec in (97, "/dev/video97", f"rtsp://127.0.0.1:{port}/live", junk, unknown):
        t = time.monotonic()
        with pytest.raises(SourceOpenError):
            seg.stream(spec)
        assert time.monotonic() - t < 8, spec
    assert threading.active_count() == threads  # no reader thread left behind


@pytest.mark.skipif(gstreamer_support()[0], reason="this OpenCV has GStreamer")
def test_pipeline_without_gstreamer_is_a_named_error(seg):
    with pytest.raises(GStreamerUnavailableError, match="without GStreamer"):
        seg.stream("videotestsrc ! videoconvert ! appsink")


def test_bad_settings_are_refused(seg, video):
    for kwargs in ({"batch": 0}, {"batch": 1.5}, {"smooth": 1.0}, {"smooth": -0.1}, {"queue_size": 0}):
        with pytest.raises(InputError):
            seg.stream(video, **kwargs)
