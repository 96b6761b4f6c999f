"""Frame sources (runtime/sources.py): files, folders, iterables, streams, cameras, pipelines, and their errors.

Videos are made here from synthetic scenes with a slow pan (so that frames differ), small and short.
Network tests use servers on the loopback address only.
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers.stream import write_video
from PIL import Image

from ifseg_deploy.errors import IfsegError, InputError
from ifseg_deploy.synthetic.world import make_scene

cv2 = pytest.importorskip("cv2")

from ifseg_deploy.runtime.sources import (  # noqa: E402 - after the skip
    CameraSource,
    DamagedVideoError,
    GStreamerSource,
    GStreamerUnavailableError,
    ImageFolderSource,
    IterableSource,
    SourceError,
    SourceOpenError,
    StreamEndedError,
    StreamSource,
    VideoFileSource,
    gstreamer_support,
    open_source,
)

H, W, N, FPS = 96, 128, 30, 10.0


def pan_frames(n: int = N, h: int = H, w: int = W, seed: int = 3) -> list[np.ndarray]:
    scene, _ = make_scene(seed, size=(h, w + 3 * n))
    return [np.ascontiguousarray(scene[:, 3 * i: 3 * i + w]) for i in range(n)]


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return pan_frames()


@pytest.fixture(scope="module")
def videos(frames, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    return {ext: write_video(d / f"clip{ext}", frames, fps=FPS, fourcc=fourcc)
            for ext, fourcc in ((".avi", "mp4v"), (".mp4", "mp4v"), (".mkv", "MJPG"))}


def read_all(source) -> list:
    with source:
        return list(source)


def truncated(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize("ext", [".avi", ".mp4", ".mkv"])
def test_video_file_gives_every_frame_in_rgb_with_times(videos, frames, ext):
    src = open_source(videos[ext])
    assert isinstance(src, VideoFileSource) and not src.live
    assert (src.frame_count, src.fps, src.size) == (N, FPS, (H, W))
    got = read_all(src)
    assert [f.index for f in got] == list(range(N))
    assert [f.timestamp for f in got] == pytest.approx([i / FPS for i in range(N)], abs=1e-3)
    for f, ref in zip(got, frames):
        assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8
        err = np.abs(f.image.astype(int) - ref).mean()
        swapped = np.abs(f.image[..., ::-1].astype(int) - ref).mean()
        assert err < 12 and err < swapped / 2, (err, swapped)  # lossy codec, but RGB (not BGR) order


@pytest.mark.parametrize("ext", [".avi", ".mkv"])
def test_truncated_video_gives_the_good_frames_then_a_named_error(videos, tmp_path, ext):
    complete = read_all(open_source(videos[ext]))
    cut = truncated(videos[ext], tmp_path / f"cut{ext}", 0.6)
    got = []
    with pytest.raises(DamagedVideoError) as info:
        for frame in open_source(cut):
            got.append(frame)
    assert 0 < len(got) < N
    for a, b in zip(got, complete):
        assert np.array_equal(a.image, b.image)
    msg = str(info.value)
    assert str(cut) in msg and f"after frame {len(got)}" in msg and f"announces {N} frames" in msg


def test_complete_video_ends_without_error_and_mp4_cut_short_is_named(videos, tmp_path):
    assert len(read_all(open_source(videos[".avi"]))) == N  # no DamagedVideoError at a clean end
    cut = truncated(videos[".mp4"], tmp_path / "cut.mp4", 0.6)
    with pytest.raises(DamagedVideoError, match="no index.*moov"):
        open_source(cut)


def test_not_a_video_and_unknown_codec_are_refused_quickly(videos, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    data = videos[".avi"].read_bytes()
    assert data.count(b"FMP4") + data.count(b"mp4v") > 0
    unknown = tmp_path / "unknown_codec.avi"  # a valid AVI whose codec tag no decoder knows
    unknown.write_bytes(data.replace(b"FMP4", b"QQQQ").replace(b"mp4v", b"QQQQ"))
    for path in (junk, unknown):
        t = time.monotonic()
        with pytest.raises(SourceOpenError, match="cannot be read as a video.*codec") as info:
            open_source(path)
        assert time.monotonic() - t < 5
        assert not isinstance(info.value, DamagedVideoError)


def test_missing_paths_and_bad_specs(tmp_path):
    with pytest.raises(SourceOpenError, match="no such file or folder"):
        open_source(tmp_path / "nope.mp4")
    with pytest.raises(SourceOpenError, match="unsupported URL scheme ftp"):
        open_source("ftp://127.0.0.1/x.mp4")
    with pytest.raises(SourceOpenError, match="wrap a single image"):
        open_source(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SourceOpenError):
        open_source(True)
    with pytest.raises(SourceOpenError, match="cannot read frames from a float"):
        open_source(1.5)
    with pytest.raises(SourceOpenError, match="matches no image files"):
        open_source(str(tmp_path / "*.png"))
    assert issubclass(SourceOpenError, InputError) and issubclass(SourceError, IfsegError)


def test_options_that_do_not_apply_are_refused(videos):
    with pytest.raises(SourceError, match="fps= does not apply to a video file"):
        open_source(videos[".avi"], fps=5)
    with pytest.raises(SourceError, match="size= does not apply"):
        open_source([np.zeros((4, 4, 3), np.uint8)], size=(4, 4))
    with pytest.raises(SourceError, match="fps must be"):
        open_source([np.zeros((4, 4, 3), np.uint8)], fps=0)


def test_a_source_is_read_once(videos):
    src = open_source(videos[".avi"])
    assert len(list(src)) == N
    with pytest.raises(SourceError, match="iterated once"):
        iter(src)
    src.close()
    closed = open_source(videos[".avi"])
    closed.close()
    with pytest.raises(SourceError, match="closed"):
        iter(closed)


# --- cameras -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [97, "97", "/dev/video97"])
def test_camera_that_does_not_exist_is_a_named_error_fast(spec):
    t = time.monotonic()
    with pytest.raises(SourceOpenError, match="97"):
        open_source(spec)
    assert time.monotonic() - t < 5


def test_negative_camera_index_is_refused():
    with pytest.raises(SourceOpenError, match="0 or more"):
        CameraSource(-1)


# --- network streams -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port on loopback that accepts connections and never says anything."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conns.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()
    for c in conns:
        c.close()


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_refused_url_is_a_named_error_fast(scheme):
    url = f"{scheme}://127.0.0.1:{free_port()}/x"
    t = time.monotonic()
    with pytest.raises(SourceOpenError, match="refused"):
        open_source(url, open_timeout=3)
    assert time.monotonic() - t < 3


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_url_that_never_answers_fails_after_the_open_timeout(silent_server, scheme):
    url = f"{scheme}://user:secret@127.0.0.1:{silent_server}/x"
    t = time.monotonic()
    with pytest.raises(SourceOpenError, match="no answer within 1 s") as info:
        open_source(url, open_timeout=1, read_timeout=1)
    assert 0.8 < time.monotonic() - t < 5  # FFmpeg's own default would wait 30 s
    assert "secret" not in str(info.value) and "user:***@" in str(info.value)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.payload``: with a length (a file) or as an endless-looking live stream (no length)."""

    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        data, live = self.server.payload, self.path.endswith(".ts")
        self.send_response(200)
        if not live:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for i in range(0, len(data), 8192):
            self.wfile.write(data[i: i + 8192])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[socketserver.TCPServer]:
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_http_video_file_reads_like_a_file(http_server, videos):
    http_server.payload = videos[".avi"].read_bytes()
    src = open_source(f"http://127.0.0.1:{http_server.server_address[1]}/clip.avi", open_timeout=3)
    assert isinstance(src, StreamSource) and not src.live and src.frame_count == N
    got = read_all(src)
    assert len(got) == N and got[-1].timestamp == pytest.approx((N - 1) / FPS, abs=1e-3)


def test_live_http_stream_reports_fps_and_size_then_ends_with_a_named_error(http_server, frames, tmp_path):
    ts = write_video(tmp_path / "live.ts", frames, fps=FPS)
    http_server.payload = ts.read_bytes()
    url = f"http://127.0.0.1:{http_server.server_address[1]}/live.ts"
    src = open_source(url, open_timeout=3, read_timeout=2)
    assert src.live and src.frame_count is None and src.fps == FPS and src.size == (H, W)
    got = []
    with pytest.raises(StreamEndedError, match=rf"stopped delivering frames after {N} frames"):
        for f in src:
            got.append(f)
    assert [f.index for f in got] == list(range(N))
    times = [f.timestamp for f in got]
    assert times == sorted(times) and times[0] >= 0  # monotonic clock since open
    src.close()


# --- GStreamer -----------------------------------------------------------------------------------------------

CSI = ("nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! "
       "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1")


def test_pipeline_without_gstreamer_is_refused_with_the_reason():
    available, line = gstreamer_support()
    if available:
        pytest.skip("this OpenCV has GStreamer")
    t = time.monotonic()
    with pytest.raises(GStreamerUnavailableError, match="built without GStreamer") as info:
        open_source(CSI)
    assert time.monotonic() - t < 2
    assert "GStreamer: NO" in str(info.value) and "JetPack" in str(info.value)


def test_pipeline_must_end_in_appsink():
    with pytest.raises(SourceOpenError, match="must end in appsink"):
        open_source("videotestsrc ! videoconvert ! autovideosink")


def test_gstreamer_pipeline_where_available():
    if not gstreamer_support()[0]:
        pytest.skip("this OpenCV was built without GStreamer")
    src = open_source("videotestsrc num-buffers=5 ! video/x-raw,width=64,height=48 ! videoconvert ! "
                      "video/x-raw,format=BGR ! appsink", read_timeout=3)
    assert isinstance(src, GStreamerSource) and src.live and src.size == (48, 64)
    with pytest.raises(StreamEndedError):
        list(src)


# --- image folders and iterables -----------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path, frames) -> Path:
    d = tmp_path / "seq"
    d.mkdir()
    for i in (10, 2, 1):  # natural order: 1, 2, 10 (plain sorting would give 1, 10, 2)
        Image.fromarray(frames[i]).save(d / f"frame_{i}.png")
    (d / "frame_5.png").write_bytes(b"not a png")
    (d / "notes.txt").write_text("ignored")
    return d


def test_image_folder_in_natural_order_skips_unreadable_files(folder, frames):
    src = open_source(folder, fps=5)
    assert isinstance(src, ImageFolderSource) and src.frame_count == 4 and not src.live
    with pytest.warns(UserWarning, match="frame_5.png"):
        got = read_all(src)
    assert [f.path.name for f in got] == ["frame_1.png", "frame_2.png", "frame_10.png"]
    assert [f.index for f in got] == [0, 1, 2] and [f.timestamp for f in got] == [0.0, 0.2, 0.4]
    assert all(np.array_equal(f.image, frames[int(f.path.stem.split("_")[1])]) for f in got)
    assert [p.name for p, _ in src.skipped] == ["frame_5.png"] and src.size == (H, W)


def test_glob_and_single_image(folder):
    got = read_all(open_source(str(folder / "frame_1*.png")))
    assert [f.path.name for f in got] == ["frame_1.png", "frame_10.png"] and got[0].timestamp is None
    single = open_source(folder / "frame_2.png")
    assert single.frame_count == 1 and len(read_all(single)) == 1


def test_empty_or_unreadable_folder(tmp_path):
    with pytest.raises(SourceOpenError, match="no image files"):
        open_source(tmp_path)
    (tmp_path / "a.png").write_bytes(b"broken")
    with pytest.warns(UserWarning), pytest.raises(SourceError, match="none of the 1 image files"):
        read_all(open_source(tmp_path))


def test_iterables_of_arrays_and_pil_images(frames):
    items = [frames[0], Image.fromarray(frames[1]), frames[2][..., :1].copy()]
    src = open_source(items, fps=4)
    assert isinstance(src, IterableSource) and src.frame_count == 3
    got = read_all(src)
    assert [f.timestamp for f in got] == [0.0, 0.25, 0.5]
    assert np.array_equal(got[1].image, frames[1]) and got[2].image.shape == (H, W, 3)
    gen = open_source(f for f in frames[:4])
    assert gen.frame_count is None and [f.index for f in read_all(gen)] == [0, 1, 2, 3]
    stack = open_source(np.stack(frames[:5]))
    assert stack.frame_count == 5 and np.array_equal(read_all(stack)[4].image, frames[4])


def test_bad_item_in_an_iterable_names_its_index(frames):
    src = open_source([frames[0], np.zeros((3, 8, 8), np.float32)])
    with pytest.raises(SourceError, match="frame 1"):
        read_all(src)
