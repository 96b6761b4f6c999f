"""Exported graphs with the vocabulary as input (issue 13, item 3): ``export --open-vocabulary``, its metadata
(bounds, stored tokenizer), ONNX Runtime's ``set_categories`` with new names, the refusals, and the TensorRT
engine (skipped without TensorRT)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers.export import CATEGORIES

from ifseg_deploy.cli import cli
from ifseg_deploy.errors import CategoryError
from ifseg_deploy.modeling.segofa import mean_token_embeddings, pad_name_tokens
from ifseg_deploy.runtime.segmenter import Segmenter

pytest.importorskip("onnxruntime")

#: new names (none of the model's), of 3, 1, 4 and 2 tokens in the tiny BPE: padded rows of different lengths
NEW = ["frisbee", "tree", "concrete wall", "sand"]
#: bounds of the fixture export; the model's own prompt is 31 tokens (23 without names)
BOUNDS = {"max_names": 6, "max_name_tokens": 5, "max_prompt_tokens": 34}
SIZES = {"short_side": 64, "max_long_side": 128}


@pytest.fixture(scope="module")
def open_model_dir(export_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export tests' model, recorded as adapted with ``--vocabulary`` (the graph's math does not depend on
    how the weights were trained)."""
    model = shutil.copytree(export_model_dir, tmp_path_factory.mktemp("open-model") / "model")
    conf = json.loads((model / "config.json").read_text())
    conf["metadata"]["vocabulary"] = {"mode": "open", "names": CATEGORIES + NEW, "subset_size": [2, 6]}
    (model / "config.json").write_text(json.dumps(conf))
    return model


@pytest.fixture(scope="module")
def open_export(open_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(dynamic 32x32 .. 128x128, batch up to 2, open-vocabulary .onnx made by the CLI with small bounds; what
    the CLI printed)."""
    out = tmp_path_factory.mktemp("open-export") / "open.onnx"
    args = ["export", "--model", str(open_model_dir), "--open-vocabulary", "--dynamic", "--min-size", "32x32",
            "--opt-size", "64x96", "--max-size", "128x128", "--max-batch", "2", "--out", str(out)]
    for key, value in BOUNDS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return out, result.output


def _images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (48 + 16 * i, 80, 3), dtype=np.uint8) for i in range(n)]


def _agreement(a: np.ndarray, b: np.ndarray, reference: np.ndarray, gap: float = 1e-4) -> float:
    """Label agreement of two (M, h, w) probability maps over the cells where ``reference``'s two best classes
    are more than ``gap`` apart (near-ties may flip on float rounding alone)."""
    top2 = np.sort(reference, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > gap
    assert clear.mean() > 0.9  # the check below is about most cells, not a few
    return float((a.argmax(0) == b.argmax(0))[clear].mean())


def test_the_class_head_is_the_masked_mean_of_each_names_token_rows():
    """The one definition the torch model and the exported graph share, against a per-name mean."""
    table = torch.randn(50, 8)
    names = [[3], [5, 7, 9], [11, 2]]
    ids, lengths = pad_name_tokens(names, pad_to=4)
    assert ids.shape == (3, 4) and lengths.tolist() == [1, 3, 2]
    want = torch.stack([table[torch.tensor(t)].mean(0) for t in names])
    torch.testing.assert_close(mean_token_embeddings(table, ids, lengths), want)


def test_the_file_records_its_bounds_and_tokenizer(open_export):
    import onnxruntime as ort

    from ifseg_deploy.runtime.model_info import read_info
    from ifseg_deploy.tokenizer import OFATokenizer

    path, printed = open_export
    info = read_info(path)
    assert info.open_vocabulary and info.categories == CATEGORIES
    b = info.vocabulary
    assert (b.max_names, b.max_name_tokens, b.max_prompt_tokens) == (6, 5, 34)
    assert (b.min_prompt_tokens, b.opt_names, b.opt_name_tokens, b.opt_prompt_tokens) == (24, 5, 2, 31)
    assert "open vocabulary: up to 6 names of up to 5 tokens, prompt up to 34 tokens" in printed
    tok = OFATokenizer.from_dict(info.tokenizer)
    assert [len(t) for t in tok.name_tokens(NEW)] == [3, 1, 4, 2]
    shapes = {i.name: i.shape for i in ort.InferenceSession(str(path)).get_inputs()}
    assert shapes["prompt_ids"][0] == 1 and all(isinstance(d, str) for d in shapes["prompt_ids"][1:])
    assert all(isinstance(d, str) for d in shapes["name_ids"] + shapes["name_lengths"])
    assert shapes["name_ids"][0] == shapes["name_lengths"][0]  # one M
    # the trt profile of ONNX Runtime's TensorRT provider covers every dynamic input
    lo, opt, hi = (",".join(f"{n}:{'x'.join(map(str, s[i]))}" for n, s in info.profile_shapes().items())
                   for i in range(3))
    assert hi == "pixels:2x3x128x128,prompt_ids:1x34,name_ids:6x5,name_lengths:6"
    assert lo == "pixels:1x3x32x32,prompt_ids:1x24,name_ids:1x1,name_lengths:1"


def test_for_its_own_vocabulary_the_open_graph_gives_the_fixed_graphs_labels(open_export, fixed_export):
    """fp32, ONNX Runtime: the open-vocabulary file fed the model's own names against the fixed export."""
    open_seg = Segmenter.from_pretrained(open_export[0], backend="onnxruntime")
    fixed_seg = Segmenter.from_pretrained(fixed_export[0], backend="onnxruntime")
    assert open_seg.backend.can_set_categories and not fixed_seg.backend.can_set_categories
    assert open_seg.class_names == fixed_seg.class_names == CATEGORIES
    pixels = np.stack([fixed_seg.preprocess(image) for image in _images(2)])  # the fixed file's 64 x 96
    a, b = open_seg.backend.probs(pixels), fixed_seg.backend.probs(pixels)
    for i in range(len(pixels)):
        assert _agreement(a[i], b[i], b[i]) >= 0.999
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_new_names_on_onnxruntime_match_the_torch_backend(open_export, open_model_dir):
    """The file alone (no model directory) tokenizes new names; its probabilities equal the torch backend's
    after the same set_categories, at several input sizes and in a batch."""
    ort_seg = Segmenter.from_pretrained(open_export[0], backend="onnxruntime", **SIZES)
    torch_seg = Segmenter.from_pretrained(open_model_dir, **SIZES)
    for seg in (ort_seg, torch_seg):
        seg.set_categories(NEW)
    images = _images()
    got, want = ort_seg(images, return_probs=True), torch_seg(images, return_probs=True)
    for a, b in zip(got, want):
        assert a.class_names == b.class_names == NEW and a.probs.shape[0] == len(NEW)
        assert _agreement(a.probs, b.probs, b.probs) >= 0.999
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)
    # back to a subset of the old names, in another order: the same as torch again
    for seg in (ort_seg, torch_seg):
        seg.set_categories(["sky", "tree", "person"])
    a, b = ort_seg(images[0], return_probs=True), torch_seg(images[0], return_probs=True)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-4)


def test_fp16_of_an_open_vocabulary_file_is_gated_on_its_own_names_and_takes_new_ones(open_export, tmp_path):
    """The FP16 conversion keeps the vocabulary inputs; its gate feeds the file's own names (without them the
    gate cannot run the graph), and the FP16 file segments new names like the fp32 one."""
    out = tmp_path / "open.fp16.onnx"
    res = CliRunner().invoke(cli, ["export", "--model", str(open_export[0]), "--precision", "fp16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "labels: 100.000%" in res.output or "labels: 99." in res.output
    fp16, fp32 = (Segmenter.from_pretrained(p, backend="onnxruntime", **SIZES) for p in (out, open_export[0]))
    for seg in (fp16, fp32):
        seg.set_categories(NEW)
    images = _images()
    for a, b in zip(fp16(images, return_probs=True), fp32(images, return_probs=True)):
        assert a.class_names == NEW and _agreement(a.probs, b.probs, b.probs) >= 0.99


@pytest.mark.parametrize("names, message", [
    (["floor", "wall", "person", "sky", "road", "tree", "sand"], "7 category names, but .* takes at most 6"),
    (["tree", "cable pallet snow"], r"'cable pallet snow' \(6 tokens\) is longer than the 5 tokens per name"),
    (["cable pallet", "concrete wall", "frisbee"], "prompt for these 3 names is 35 tokens long, but .* at most 34 "
                                                  r".*the first 2 names fit"),
    (["tree", "жжж"], "tokenizes only to <unk>"),
    (["tree", "Tree"], "duplicate"),
])
def test_what_the_bounds_refuse(open_export, names, message):
    seg = Segmenter.from_pretrained(open_export[0], backend="onnxruntime", categories=["sky", "tree"], **SIZES)
    image = _images(1)[0]
    before = seg(image, return_probs=True).probs
    with pytest.raises(CategoryError, match=message):
        seg.set_categories(names)
    assert seg.class_names == ["sky", "tree"]  # nothing changed
    np.testing.assert_array_equal(seg(image, return_probs=True).probs, before)


def test_cli_segment_with_new_names_and_a_refusal(open_export, tmp_path):
    from PIL import Image

    Image.fromarray(_images(1)[0]).save(tmp_path / "a.png")
    common = ["segment", str(tmp_path / "a.png"), "-m", str(open_export[0]), "--backend", "onnxruntime",
              "--short-side", "64", "--max-long-side", "128"]
    ok = CliRunner().invoke(cli, [*common, "-o", str(tmp_path / "out"), "--categories", "sand, tree"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "out" / "classes.txt").read_text() == "sand\ntree\n"
    seven = "floor, wall, person, sky, road, tree, sand"
    bad = CliRunner().invoke(cli, [*common, "-o", str(tmp_path / "bad"), "--categories", seven])
    assert bad.exit_code == 2 and "takes at most 6" in bad.output and "Traceback" not in bad.output, bad.output
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("extra, message", [
    (["--precision", "int8", "--calib-images", "."], "int8 of an open-vocabulary graph is not supported"),
    (["--precision", "int8-dynamic"], "int8-dynamic of an open-vocabulary graph is not supported"),
    (["--max-names", "3"], "do not fit the bounds: 5 names > --max-names 3"),
    (["--max-prompt-tokens", "23"], "leaves no room for a name"),
])
def test_export_refusals(open_model_dir, tmp_path, extra, message):
    out = tmp_path / "x.onnx"
    result = CliRunner().invoke(cli, ["export", "--model", str(open_model_dir), "--open-vocabulary", *extra,
                                      "--out", str(out)])
    assert result.exit_code == 2 and re.search(message, " ".join(result.output.split())), result.output
    assert "Traceback" not in result.output and not out.exists() and list(tmp_path.iterdir()) == []


def test_a_per_vocabulary_model_and_stray_bounds_are_refused(export_model_dir, tmp_path):
    out = tmp_path / "x.onnx"
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "--model", str(export_model_dir), "--open-vocabulary", "--out", str(out)])
    assert result.exit_code == 2 and "adapted per vocabulary" in result.output and "--vocabulary" in result.output
    result = runner.invoke(cli, ["export", "--model", str(export_model_dir), "--max-names", "4", "--out", str(out)])
    assert result.exit_code == 2 and "go with --open-vocabulary" in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_the_stored_tokenizer_round_trips_the_real_vocabulary(real_bpe_dir):
    from ifseg_deploy.tokenizer import OFATokenizer, TokenizerError

    tok = OFATokenizer.from_dir(real_bpe_dir)
    back = OFATokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    names = ["chest of drawers", "traffic light", "person", "skyscraper", "Ärmelkanal"]
    assert back.prompt_ids(names) == tok.prompt_ids(names) and back.num_embeddings == tok.num_embeddings
    # every merge of the real files is stored, in order (names above use only a few of the 50k)
    lines = (real_bpe_dir / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    assert tok.to_dict()["merges"] == [m for m in lines[1:] if m.strip()] and lines[0].startswith("#version")
    with pytest.raises(TokenizerError, match="the stored tokenizer: not a stored OFA tokenizer"):
        OFATokenizer.from_dict({"vocab": {"a": 1}})


def test_tensorrt_engine_takes_new_names_within_its_profile(open_export, tmp_path):
    """On a machine with TensorRT and a GPU: the engine's profile covers M, T and Lt, and set_categories with
    new names gives ONNX Runtime's labels, with no rebuild."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here")
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed here")
    from ifseg_deploy.export.pipeline import export_model

    engine = tmp_path / "open.engine"
    export_model(open_export[0], engine, format="tensorrt", precision="fp32", engine_cache=tmp_path / "cache",
                 echo=lambda _: None)
    trt_seg = Segmenter.from_pretrained(engine, backend="tensorrt", **SIZES)
    ort_seg = Segmenter.from_pretrained(open_export[0], backend="onnxruntime", **SIZES)
    for names in (NEW, ["sky", "sand"], CATEGORIES + ["tree"]):
        for seg in (trt_seg, ort_seg):
            seg.set_categories(names)
        for image in _images():
            a, b = trt_seg(image, return_probs=True), ort_seg(image, return_probs=True)
            assert _agreement(a.probs, b.probs, b.probs) >= 0.999
    with pytest.raises(CategoryError, match="takes at most 6"):
        trt_seg.set_categories(CATEGORIES + NEW)
