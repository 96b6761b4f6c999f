"""Reading images: files of every common kind, PIL images, numpy arrays, EXIF orientation, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ifseg_deploy.runtime.images import ImageLoadError, find_images, load_image


def _rgb(h=30, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_gray_rgba_palette_files(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert np.array_equal(load_image(tmp_path / "a.png"), rgb)
    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = load_image(str(tmp_path / "g.png"))
    assert out.shape == (30, 40, 3) and all(np.array_equal(out[..., c], gray) for c in range(3))
    rgba = np.dstack([rgb, np.full((30, 40), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "t.png")
    assert np.array_equal(load_image(tmp_path / "t.png"), rgb)  # alpha dropped, colours kept
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.gif")
    assert load_image(tmp_path / "p.gif").shape == (30, 40, 3)
    Image.fromarray(gray > 128).save(tmp_path / "b.png")  # 1-bit
    assert set(np.unique(load_image(tmp_path / "b.png"))) <= {0, 255}


def test_16bit_and_cmyk(tmp_path):
    g16 = (np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out = load_image(tmp_path / "g16.png")
    assert np.array_equal(out[..., 0], (g16 >> 8).astype(np.uint8))  # the high byte, not clipped to 255
    assert out[..., 0].max() > 200 and len(np.unique(out)) > 100
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red in CMYK
    red = load_image(tmp_path / "cmyk.jpg")
    assert red.shape == (30, 40, 3)
    assert red[..., 0].mean() > 200 and red[..., 1].mean() < 60 and red[..., 2].mean() < 60


def test_exif_orientation_is_applied_or_ignored_on_request(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = (255, 0, 0)  # stored: left half red, right half blue
    img[:, 20:] = (0, 0, 255)
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    pil.save(tmp_path / "r.jpg", exif=exif, quality=95)
    shown = load_image(tmp_path / "r.jpg")
    assert shown.shape == (40, 20, 3)  # portrait as displayed
    assert shown[:20, :, 0].mean() > 200 and shown[20:, :, 2].mean() > 200  # left side went to the top
    assert load_image(tmp_path / "r.jpg", exif=False).shape == (20, 40, 3)
    with Image.open(tmp_path / "r.jpg") as opened:  # PIL images carry their EXIF too
        assert load_image(opened).shape == (40, 20, 3)


def test_arrays():
    rgb = _rgb()
    assert np.array_equal(load_image(rgb), rgb)
    assert load_image(rgb[..., 0]).shape == (30, 40, 3)
    assert load_image(rgb[..., :1]).shape == (30, 40, 3)
    assert np.array_equal(load_image(np.dstack([rgb, rgb[..., :1]])), rgb)
    assert load_image(rgb.astype(np.uint16) << 8).tolist() == rgb.tolist()
    with pytest.raises(ImageLoadError, match="float"):
        load_image(rgb / 255.0)
    with pytest.raises(ImageLoadError, match="channel-first"):
        load_image(rgb.transpose(2, 0, 1))
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageLoadError, match="path, a PIL image"):
        load_image(12)


def test_unreadable_files_raise_clear_errors(tmp_path, monkeypatch):
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageLoadError, match="text.png.*not an image"):
        load_image(tmp_path / "text.png")
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    # beyond PIL's decompression-bomb limit: a clear error, not a crash or a memory blow-up
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(tmp_path / "full.jpg")


def test_find_images(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ["d/b.jpg", "d/a.PNG", "d/notes.txt", "d/sub/c.png", "d/.hidden.png"]:
        (tmp_path / name).write_bytes(b"x")
    found = find_images([tmp_path / "d", tmp_path / "x.txt"])
    assert [p.name for p, _ in found] == ["a.PNG", "b.jpg", "x.txt"]  # a named file is kept, to be reported
    assert [p.name for p, _ in find_images([tmp_path / "d"], recursive=True)] == ["a.PNG", "b.jpg", "c.png"]
