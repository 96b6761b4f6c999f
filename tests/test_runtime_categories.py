"""Categories chosen at run time (issue 13, item 2): subsets of any model on any backend, any names on an
open-vocabulary model, and the refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers.ofa import TINY_CATEGORIES as CATS

from ifseg_deploy.cli import cli
from ifseg_deploy.errors import CategoryError
from ifseg_deploy.model_dir import AdaptedModel
from ifseg_deploy.preprocessing import upsample_argmax
from ifseg_deploy.runtime.backends.torch import TorchBackend
from ifseg_deploy.runtime.segmenter import Segmenter

SUBSET = ["sky", "floor", "person"]  # another order than the model's: floor, wall, person, sky


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)


class OutsideSubset(TorchBackend):
    """The torch backend, but taking a subset the way an exported engine does (outside the engine)."""

    can_set_categories = False


def _restricted(probs: torch.Tensor, names: list[str]) -> torch.Tensor:
    """softmax over the subset of the full model's logits, computed from its probabilities (log p = logits
    up to a per-cell constant)."""
    idx = [CATS.index(n) for n in names]
    return torch.log(probs[idx]).softmax(dim=0)


def test_a_subset_equals_the_full_model_restricted_to_it(tiny_model_dir_32):
    image = _image()
    full = Segmenter.from_pretrained(tiny_model_dir_32, refine=False)(image, return_probs=True)
    seg = Segmenter.from_pretrained(tiny_model_dir_32, refine=False, categories=SUBSET)
    sub = seg(image, return_probs=True)
    assert sub.class_names == SUBSET and sub.probs.shape[0] == len(SUBSET)
    expected = _restricted(torch.from_numpy(full.probs), SUBSET)
    torch.testing.assert_close(torch.from_numpy(sub.probs), expected, atol=1e-5, rtol=1e-4)
    assert np.array_equal(sub.labels, upsample_argmax(expected, image.shape[:2]))
    # on the 1/16 grid: the argmax of the full model's probabilities over the subset
    assert np.array_equal(sub.probs.argmax(0), full.probs[[CATS.index(n) for n in SUBSET]].argmax(0))
    # the whole list in the model's order is the model itself
    seg.set_categories(CATS)
    torch.testing.assert_close(torch.from_numpy(seg(image, return_probs=True).probs), torch.from_numpy(full.probs))


def test_engines_that_cannot_change_categories_get_the_same_subset(tiny_model_dir_32):
    """The Segmenter's own restriction (what ONNX Runtime and TensorRT files get) equals the torch backend's
    logit mask when the model has no refinement."""
    adapted = AdaptedModel.from_pretrained(tiny_model_dir_32)
    inside = Segmenter(TorchBackend(adapted, "cpu", (1, 0)))
    outside = Segmenter(OutsideSubset(AdaptedModel.from_pretrained(tiny_model_dir_32), "cpu", (1, 0)))
    for seg in (inside, outside):
        seg.set_categories("person, sky")
    image = _image(1)
    a, b = inside(image, return_probs=True), outside(image, return_probs=True)
    assert a.class_names == b.class_names == ["person", "sky"]
    torch.testing.assert_close(torch.from_numpy(b.probs), torch.from_numpy(a.probs), atol=1e-5, rtol=1e-4)
    assert np.array_equal(a.labels, b.labels)
    outside.set_categories(["wall"])  # a new subset replaces the previous one, taken from the file's own list
    assert outside(image).class_names == ["wall"] and not outside(image).labels.any()


@pytest.mark.parametrize("names, message", [
    ([], "empty"),
    (["floor", "Floor"], "duplicate"),
    (["floor", "  "], "empty"),
    (["floor", "--"], "no letter"),
    (["floor", "tree"], "adapt with `--vocabulary`"),
])
def test_bad_lists_are_refused_with_the_reason(tiny_model_dir_32, names, message):
    seg = Segmenter.from_pretrained(tiny_model_dir_32)
    with pytest.raises(CategoryError, match=message if message != "empty" else "empty|no category"):
        seg.set_categories(names)
    assert seg.class_names == CATS  # nothing changed
    seg.set_categories(["wall"])
    with pytest.raises(CategoryError, match="'tree' is not among this model's 4 categories"):
        seg.set_categories(["tree", "wall"])
    assert seg.class_names == ["wall"]


def test_an_open_vocabulary_model_takes_any_names(tiny_model_dir_32, tmp_path):
    model = shutil.copytree(tiny_model_dir_32, tmp_path / "open")
    conf = json.loads((model / "config.json").read_text())
    conf["metadata"]["vocabulary"] = {"mode": "open", "names": CATS + ["tree", "grass"]}
    (model / "config.json").write_text(json.dumps(conf))
    names = ["tree", "person", "water"]
    seg = Segmenter.from_pretrained(model, refine=False, categories=names)
    image = _image(2)
    got = seg(image, return_probs=True)
    # the same as a model loaded with those names' prompt and class table
    ref = Segmenter(TorchBackend(AdaptedModel.from_pretrained(model, categories=names), "cpu", (1, 0)))
    want = ref(image, return_probs=True)
    assert got.class_names == names
    torch.testing.assert_close(torch.from_numpy(got.probs), torch.from_numpy(want.probs))
    with pytest.raises(CategoryError, match="tokenizes only to <unk>"):
        seg.set_categories(["tree", "жжж"])


def test_cli_categories(tiny_model_dir_32, tmp_path):
    from PIL import Image

    Image.fromarray(_image()).save(tmp_path / "a.png")
    out = tmp_path / "out"
    ok = CliRunner().invoke(cli, ["segment", str(tmp_path / "a.png"), "-m", str(tiny_model_dir_32), "-o", str(out),
                                  "--categories", "sky, floor"])
    assert ok.exit_code == 0, ok.output
    assert (out / "classes.txt").read_text() == "sky\nfloor\n"
    for given, message in (("sky, banana", "adapt with `--vocabulary`"), ("sky, sky", "duplicate")):
        bad = CliRunner().invoke(cli, ["segment", str(tmp_path / "a.png"), "-m", str(tiny_model_dir_32),
                                       "-o", str(tmp_path / "bad"), "--categories", given])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output, bad.output
        assert not (tmp_path / "bad").exists()


def test_an_exported_file_takes_a_subset_and_refuses_new_names(dynamic_export):
    """ONNX Runtime: the Segmenter keeps the chosen classes of the file's probabilities, renormalised."""
    from helpers.export import CATEGORIES

    full = Segmenter.from_pretrained(dynamic_export, backend="onnxruntime")
    names = [CATEGORIES[-1], CATEGORIES[0]]
    sub = Segmenter.from_pretrained(dynamic_export, backend="onnxruntime", categories=names)
    image = _image(3)
    a, b = full(image, return_probs=True), sub(image, return_probs=True)
    idx = [CATEGORIES.index(n) for n in names]
    want = a.probs[idx] / a.probs[idx].sum(0, keepdims=True)
    assert b.class_names == names
    np.testing.assert_allclose(b.probs, want, rtol=1e-5, atol=1e-6)
    assert np.array_equal(b.labels, upsample_argmax(torch.from_numpy(want), image.shape[:2]))
    with pytest.raises(CategoryError, match="adapt with `--vocabulary`"):
        sub.set_categories([*names, "giraffe"])
