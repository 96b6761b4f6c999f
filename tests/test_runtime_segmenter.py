"""The Segmenter API on any Backend: geometry, batching, EXIF, odd sizes; and the PyTorch backend."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.ofa import TINY_CATEGORIES as CATS
from PIL import Image

from ifseg_deploy.preprocessing import PreprocessConfig, grid_size, normalize, resize_image, resized_size
from ifseg_deploy.runtime import registry
from ifseg_deploy.runtime.backend import Backend, require_refinement
from ifseg_deploy.runtime.backends.torch import TorchBackend
from ifseg_deploy.runtime.graph import InferenceGraph
from ifseg_deploy.runtime.images import ImageLoadError
from ifseg_deploy.runtime.segmenter import BackendUnavailableError, SegmentationResult, Segmenter


class ColourBackend(Backend):
    """A transparent stand-in model: class c = colour channel c (red, green, blue), averaged per 16x16 cell.
    It lets the tests see where pixels end up, which a random network cannot."""

    name = "colour"

    def __init__(self, fixed=None):
        self.categories = ["red", "green", "blue"]
        self.preprocessing = PreprocessConfig()
        self.fixed_input_size = fixed
        self.calls: list[tuple[int, ...]] = []

    def probs(self, pixels):
        self.calls.append(tuple(pixels.shape))
        x = torch.from_numpy(pixels)
        pooled = F.adaptive_avg_pool2d(x, grid_size(*x.shape[-2:]))
        return (pooled * 20).softmax(dim=1).numpy()


class RandomBackend(ColourBackend):
    def probs(self, pixels):  # random, but a function of each image alone
        self.calls.append(tuple(pixels.shape))
        out = []
        for x in pixels:
            g = torch.Generator().manual_seed(int(np.abs(x).sum() * 1000) % 100003 + x.shape[-1])
            out.append(torch.rand(3, *grid_size(*x.shape[-2:]), generator=g).softmax(0))
        return torch.stack(out).numpy()


def _halves(h, w, axis):
    img = np.zeros((h, w, 3), np.uint8)
    if axis == 0:
        img[: h // 2, :, 0] = 255
        img[h // 2:, :, 2] = 255
    else:
        img[:, : w // 2, 0] = 255
        img[:, w // 2:, 2] = 255
    return img


def test_labels_at_original_size_and_probs_on_the_model_grid():
    backend = ColourBackend()
    seg = Segmenter(backend)
    r = seg(_halves(480, 640, axis=1), return_probs=True)
    assert isinstance(r, SegmentationResult)
    assert r.labels.shape == (480, 640) and r.size == (480, 640)
    assert r.input_size == (512, 683)  # the paper's 640x480 -> 683x512
    assert backend.calls == [(1, 3, 512, 683)]
    assert r.probs.shape == (3, 32, 43) and r.probs.dtype == np.float32
    assert r.class_names == ["red", "green", "blue"]
    assert (r.labels[:, :300] == 0).all() and (r.labels[:, 340:] == 2).all()
    assert set(r.areas()) == {"red", "blue"} and r.mask("red").sum() == (r.labels == 0).sum()
    with pytest.raises(KeyError):
        r.mask("cat")


def test_labels_are_upsampled_probabilities_argmax():
    backend = RandomBackend()
    seg = Segmenter(backend)
    img = np.zeros((37, 101, 3), np.uint8)
    r = seg(img, return_probs=True)
    h, w = resized_size(37, 101)
    x = normalize(resize_image(img, (h, w)))
    probs = torch.from_numpy(backend.probs(x[None]))
    ref = F.interpolate(probs, size=(37, 101), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
    assert np.array_equal(r.labels, ref)
    np.testing.assert_array_equal(r.probs, probs[0].numpy())


def test_batches_same_sizes_and_keeps_order():
    backend = RandomBackend()
    seg = Segmenter(backend, batch_size=2)
    a, b, c = np.zeros((30, 40, 3), np.uint8), np.full((30, 40, 3), 9, np.uint8), np.zeros((50, 20, 3), np.uint8)
    results = seg([a, c, b, a])
    assert [r.size for r in results] == [(30, 40), (50, 20), (30, 40), (30, 40)]
    shapes = sorted(backend.calls)
    assert shapes == sorted([(2, 3, 512, 683), (1, 3, 512, 683), (1, 3, 1280, 512)])
    single = [Segmenter(RandomBackend())(x) for x in (a, c, b, a)]
    for r, s in zip(results, single):
        assert np.array_equal(r.labels, s.labels)


def test_exif_orientation_reaches_the_labels(tmp_path):
    stored = _halves(24, 40, axis=1)  # left red, right blue
    pil = Image.fromarray(stored)
    exif = pil.getexif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: red on top
    pil.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    r = Segmenter(ColourBackend(), short_side=64)(str(tmp_path / "rot.jpg"))
    assert r.size == (40, 24) and r.source == str(tmp_path / "rot.jpg")
    assert (r.labels[:16] == 0).all() and (r.labels[24:] == 2).all()
    assert Segmenter(ColourBackend(), short_side=64, exif=False)(str(tmp_path / "rot.jpg")).size == (24, 40)


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (15, 15), (1, 3000), (3000, 2), (7, 20000)])
def test_tiny_and_extreme_images_give_full_size_labels(shape):
    img = np.full((*shape, 3), 200, np.uint8)
    img[..., 1] = 0
    img[..., 2] = 0
    backend = ColourBackend()
    r = Segmenter(backend)(img)
    assert r.labels.shape == shape and (r.labels == 0).all()
    h, w = backend.calls[0][-2:]
    assert min(h, w) >= 1 and max(h, w) <= 2048


def test_very_large_image_is_handled_in_blocks():
    img = _halves(3000, 4000, axis=0)
    backend = ColourBackend()
    r = Segmenter(backend)(img)
    assert backend.calls == [(1, 3, 512, 683)]
    assert r.labels.shape == (3000, 4000)
    assert (r.labels[:1400] == 0).all() and (r.labels[1600:] == 2).all()


def test_fixed_size_backend_gets_its_size():
    backend = ColourBackend(fixed=(64, 96))
    r = Segmenter(backend)(_halves(300, 200, axis=0))
    assert backend.calls == [(1, 3, 64, 96)] and r.size == (300, 200)
    assert (r.labels[:120] == 0).all() and (r.labels[180:] == 2).all()


def test_bad_inputs_and_backends():
    seg = Segmenter(ColourBackend())
    with pytest.raises(ImageLoadError):
        seg(np.zeros((3, 10, 10), np.float32))
    with pytest.raises(TypeError):
        Segmenter(object())

    class Broken(ColourBackend):
        def probs(self, pixels):
            return np.zeros((1, 3, 2, 2), np.float32)

    with pytest.raises(RuntimeError, match="shape"):
        Segmenter(Broken())(np.zeros((64, 64, 3), np.uint8))


def test_export_backends_load_lazily_with_clear_errors(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.BACKENDS, "onnxruntime", "ifseg_deploy.export.no_such_module_xyz:Ort")
    with pytest.raises(BackendUnavailableError, match="onnxruntime backend is not available"):
        Segmenter.from_pretrained(tmp_path, backend="onnxruntime")
    with pytest.raises(ValueError, match="unknown backend"):
        Segmenter.from_pretrained(tmp_path, backend="openvino")

    # an exported backend: options reach from_file, and refinement settings are checked against the file's
    seen = {}

    class FakeExported(ColourBackend):
        name = "fake-ort"
        refinement = (3, 25)

        @classmethod
        def from_file(cls, path, *, device=None, refinement=None, **options):
            seen.update(path=path, device=device, **options)
            require_refinement(path, cls.refinement, refinement)
            return cls()

    module = types.ModuleType("fake_ort_backend")
    module.FakeExported = FakeExported
    monkeypatch.setitem(sys.modules, "fake_ort_backend", module)
    monkeypatch.setitem(registry.BACKENDS, "onnxruntime", "fake_ort_backend:FakeExported")
    seg = Segmenter.from_pretrained("m.onnx", backend="onnxruntime", device="cuda", providers=["CPU"])
    assert seen == {"path": "m.onnx", "device": "cuda", "providers": ["CPU"]}
    assert seg(np.zeros((20, 20, 3), np.uint8)).size == (20, 20)
    Segmenter.from_pretrained("m.onnx", backend="onnxruntime", refine_k=3)  # what the file has: fine
    with pytest.raises(ValueError, match="re-export"):
        Segmenter.from_pretrained("m.onnx", backend="onnxruntime", refine=False)


# -- the PyTorch backend on a tiny random model ------------------------------------------------------------------


def test_torch_backend_runs_the_inference_graph(tiny_model_dir):
    seg = Segmenter.from_pretrained(tiny_model_dir, short_side=48)
    assert isinstance(seg.backend, TorchBackend) and seg.refinement == (3, 25)
    assert seg.class_names == CATS
    img = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    r = seg(img, return_probs=True)
    size = resized_size(40, 70, 48)
    x = torch.from_numpy(normalize(resize_image(img, size)))[None]
    model = seg.backend.adapted.model
    with torch.no_grad():
        ref = InferenceGraph(model, 3, 25)(x)[0]
        raw = model(x)[0].softmax(0)
    assert r.probs.shape == (4, *grid_size(*size))
    np.testing.assert_allclose(r.probs, ref.numpy(), rtol=1e-5, atol=1e-6)
    up = F.interpolate(ref[None], size=(40, 70), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
    assert (r.labels == up).mean() > 0.999
    off = Segmenter.from_model(seg.backend.adapted, refine=False, short_side=48)
    assert off.refinement == (1, 0)
    np.testing.assert_allclose(off(img, return_probs=True).probs, raw.numpy(), rtol=1e-5, atol=1e-6)
    assert Segmenter.from_model(seg.backend.adapted, refine_k=1).refinement == (1, 0)
    # the model dir's preprocessing (short side 512, long side 2048) is the default; options override it
    assert Segmenter.from_model(seg.backend.adapted).preprocessing.short_side == 512
    assert seg.preprocessing.short_side == 48 and seg.preprocessing.max_long_side == 2048
    assert seg.input_size(480, 640) == (48, 64) and seg.grid_size(480, 640) == (3, 4)

    # same-sized images run as one batch and give what they give alone
    imgs = [img, img[::-1].copy(), img[:, :30].copy()]
    batch = seg(imgs, return_probs=True)
    for one_img, r in zip(imgs, batch):
        np.testing.assert_allclose(r.probs, seg(one_img, return_probs=True).probs, rtol=1e-4, atol=1e-5)


def test_torch_backend_device_errors(tiny_model_dir):
    with pytest.raises(ValueError, match="device"):
        Segmenter.from_pretrained(tiny_model_dir, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            Segmenter.from_pretrained(tiny_model_dir, device="cuda")
