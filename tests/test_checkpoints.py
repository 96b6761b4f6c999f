"""Loading the checkpoints users have, refusing the ones that would fail them, and the adapted-model format."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.bpe import write_tiny_bpe
from helpers.ofa import ofa_state_dict, tiny_config, write_fairseq_checkpoint, write_hf_checkpoint

from ifseg_deploy.checkpoints.errors import CheckpointError
from ifseg_deploy.checkpoints.loader import load_ofa
from ifseg_deploy.checkpoints.ofa_keys import check_arch, infer_config
from ifseg_deploy.model_dir import AdaptedModel
from ifseg_deploy.modeling.segofa import SegOFA
from ifseg_deploy.presets import PRESETS
from ifseg_deploy.tokenizer import OFATokenizer

CATS = ["floor", "wall", "person", "concrete wall"]


@pytest.fixture(scope="module")
def fairseq_ckpt(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fairseq")
    bpe = root / "BPE"
    write_tiny_bpe(bpe, layout="fairseq")
    rows = OFATokenizer.from_dir(bpe).num_embeddings
    return write_fairseq_checkpoint(root / "ofa_tiny_random.pt", tiny_config(rows), seed=7), bpe


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, fairseq_ckpt) -> Path:
    d = tmp_path_factory.mktemp("hf") / "ofa-random"
    write_tiny_bpe(d, layout="hf")
    rows = OFATokenizer.from_dir(d).num_embeddings
    return write_hf_checkpoint(d, tiny_config(rows), seed=7)


def _image(seed=0, h=96, w=64):
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_fairseq_checkpoint_loads_with_every_key_explained(fairseq_ckpt):
    ckpt, bpe = fairseq_ckpt
    model, tok, report = load_ofa(ckpt, CATS, bpe_dir=bpe)
    assert report.unexpected == []
    assert sorted({re.sub(r"(\.\d+)?\.(weight|bias)$", "", k) for k in report.initialised}) == [
        "decoder.embed_seg_positions", "decoder.seg_pos_ln", "decoder.seg_rel_pos_table_list"]
    assert any("num_batches_tracked" in k for k in report.ignored)
    assert model.num_classes == len(CATS)
    assert model.src_tokens.tolist() == tok.prompt_ids(CATS)
    # new seg tables start N(0, 0.02), not zero
    std = model.decoder.embed_seg_positions.weight.std().item()
    assert 0.015 < std < 0.025
    assert "initialised" in report.summary()


def test_bpe_dir_found_next_to_checkpoint(fairseq_ckpt, tmp_path):
    ckpt, bpe = fairseq_ckpt
    model, _, _ = load_ofa(ckpt, CATS)  # BPE/ beside the file
    assert model.num_classes == 4
    lonely = tmp_path / "ofa.pt"
    shutil.copy(ckpt, lonely)
    with pytest.raises(CheckpointError, match="--bpe-dir"):
        load_ofa(lonely, CATS)


@pytest.mark.parametrize("safetensors", [True, False])
def test_hf_and_fairseq_give_the_same_logits(fairseq_ckpt, hf_dir, tmp_path, safetensors):
    ckpt, bpe = fairseq_ckpt
    directory = hf_dir
    if not safetensors:
        directory = tmp_path / "hf-bin"
        write_tiny_bpe(directory, layout="hf")
        write_hf_checkpoint(directory, tiny_config(OFATokenizer.from_dir(directory).num_embeddings), seed=7,
                            safetensors=False)
    a, _, _ = load_ofa(ckpt, CATS, bpe_dir=bpe)
    b, _, report = load_ofa(directory, CATS)
    assert report.unexpected == [] and report.layout == "huggingface"
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(_image()), b.eval()(_image()), rtol=0, atol=0)


def test_hf_renames_cover_every_layer_module(hf_dir):
    from safetensors.torch import load_file

    keys = load_file(str(hf_dir / "model.safetensors")).keys()
    assert any(".self_attn_mid_layer_norm." in k for k in keys)
    assert any(".cross_attn_mid_layer_norm." in k for k in keys)
    assert any(".cross_attn.c_attn" in k for k in keys)
    assert not any(".attn_ln." in k or ".encoder_attn." in k for k in keys)


def test_size_is_inferred_and_checked():
    for name, preset in PRESETS.items():
        with torch.device("meta"):
            state = SegOFA(preset, num_classes=2).state_dict()
        found = infer_config(state, f"ofa_{name}.pt")
        assert found.name == name
        assert check_arch(found, name, "x") is found
    with torch.device("meta"):
        base = infer_config(SegOFA(PRESETS["base"], num_classes=2).state_dict(), "ofa_base.pt")
    with pytest.raises(CheckpointError, match=r"ofa_base\.pt is ofa_base-sized.*'large'"):
        check_arch(base, "large", "ofa_base.pt")


def test_wrong_arch_for_tiny_fixture(fairseq_ckpt):
    ckpt, bpe = fairseq_ckpt
    with pytest.raises(CheckpointError, match="non-standard size.*'base'"):
        load_ofa(ckpt, CATS, bpe_dir=bpe, arch="base")


def test_pickle_that_would_run_code_is_refused(tmp_path, fairseq_ckpt):
    _, bpe = fairseq_ckpt
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": {"encoder.embed_tokens.weight": torch.zeros(3, 2)}, "x": Payload()}, evil)
    with pytest.raises(CheckpointError, match="refused to load .*evil.pt"):
        load_ofa(evil, CATS, bpe_dir=bpe)
    assert not marker.exists()


def test_truncated_and_corrupt_files(tmp_path, fairseq_ckpt):
    ckpt, bpe = fairseq_ckpt
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pt is truncated or corrupt"):
        load_ofa(cut, CATS, bpe_dir=bpe)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt is empty"):
        load_ofa(empty, CATS, bpe_dir=bpe)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_ofa(garbage, CATS, bpe_dir=bpe)
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(CheckpointError, match="not a fairseq checkpoint"):
        load_ofa(plain, CATS, bpe_dir=bpe)
    with pytest.raises(CheckpointError, match="not found"):
        load_ofa(tmp_path / "missing.pt", CATS, bpe_dir=bpe)


def test_corrupt_hf_weights(tmp_path, hf_dir):
    d = tmp_path / "hf"
    shutil.copytree(hf_dir, d)
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt"):
        load_ofa(d, CATS)


def test_missing_tensor_is_named(tmp_path, fairseq_ckpt):
    ckpt, bpe = fairseq_ckpt
    state = torch.load(ckpt, weights_only=False)["model"]
    del state["encoder.layers.1.fc2.weight"]
    path = write_fairseq_checkpoint(tmp_path / "holey.pt", tiny_config(1), state=state)
    with pytest.raises(CheckpointError, match=r"lacks 1 tensor.*encoder\.layers\.1\.fc2\.weight"):
        load_ofa(path, CATS, bpe_dir=bpe)


def test_chinese_checkpoint_is_refused_with_the_english_one_named(tmp_path, real_bpe_dir):
    # OFA-CN: 4 + 21128 BERT pieces + <mask> + 8192 codes + 1000 bins = 30325 token rows
    path = write_fairseq_checkpoint(tmp_path / "ofa_cn_base.pt", tiny_config(30325), seed=1)
    with pytest.raises(CheckpointError, match=r"30325 rows.*59457.*Chinese.*ofa_base\.pt"):
        load_ofa(path, CATS, bpe_dir=real_bpe_dir)


def test_chinese_vocabulary_dirs_are_refused(tmp_path, hf_dir):
    cn = tmp_path / "ofa-cn"
    shutil.copytree(hf_dir, cn)
    (cn / "vocab.json").unlink()
    (cn / "merges.txt").unlink()
    (cn / "vocab.txt").write_text("[PAD]\n[UNK]\n的\n")
    with pytest.raises(CheckpointError, match="Chinese"):
        load_ofa(cn, CATS)


@pytest.mark.parametrize("cats, match", [
    ([], "empty|no categor|at least one"),
    (["floor", "Floor "], "uplicate"),
    (["floor", "  "], "empty|blank"),
    (["floor", "?!"], r"\?!"),
])
def test_bad_category_lists(fairseq_ckpt, cats, match):
    ckpt, bpe = fairseq_ckpt
    with pytest.raises(CheckpointError, match=match):
        load_ofa(ckpt, cats, bpe_dir=bpe)


def test_golden_checkpoint_end_to_end_through_the_loader(golden_dir, golden_checkpoint, real_bpe_dir, tmp_path):
    """The official tiny checkpoint, its small dictionary and the real BPE: ids and logits match the official."""
    meta = json.loads((golden_dir / "meta.json").read_text())
    symbols = meta["dictionary_symbols"]
    pieces = [s for s in symbols[4:] if s.isdigit()]
    bpe = tmp_path / "bpe"
    bpe.mkdir()
    for f in ("encoder.json", "vocab.bpe"):
        shutil.copy(real_bpe_dir / f, bpe / f)
    (bpe / "dict.txt").write_text("".join(f"{p} 1\n" for p in pieces))
    n_codes = sum(s.startswith("<code_") for s in symbols)
    n_bins = sum(s.startswith("<bin_") for s in symbols)
    (bpe / "tokenizer_config.json").write_text(json.dumps({"num_codes": n_codes, "num_bins": n_bins}))
    model, _, report = load_ofa(golden_checkpoint, meta["categories"], bpe_dir=bpe)
    inputs, outputs = np.load(golden_dir / "inputs.npz"), np.load(golden_dir / "outputs.npz")
    assert model.src_tokens.tolist() == inputs["src_tokens"].ravel().tolist()
    assert report.unexpected == [] and report.initialised == []
    x = torch.from_numpy(inputs["img_512x512_uint8_hwc"]).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
    with torch.no_grad():
        logits = model.eval()(x[None])
    np.testing.assert_allclose(logits.numpy(), outputs["real_512x512.logits_bmhw"], atol=1e-4, rtol=1e-4)


# -- the adapted-model directory -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapted(fairseq_ckpt) -> AdaptedModel:
    ckpt, bpe = fairseq_ckpt
    return AdaptedModel.unadapted_from_ofa(ckpt, CATS, bpe_dir=bpe)


def test_save_load_round_trip_is_bit_exact(adapted, tmp_path):
    out = adapted.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "merges.txt", "model.safetensors",
                                                     "tokenizer_config.json", "vocab.json"]
    conf = json.loads((out / "config.json").read_text())
    assert conf["categories"] == CATS and conf["architecture"]["d_model"] == 32
    assert {"format_version", "package_version", "prompt", "preprocessing"} <= conf.keys()
    loaded = AdaptedModel.from_pretrained(out)
    a, b = adapted.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert loaded.tokenizer.prompt_ids(CATS) == adapted.tokenizer.prompt_ids(CATS)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(_image(3)), adapted.model.eval()(_image(3)), rtol=0, atol=0)


def test_write_killed_half_way_leaves_nothing_loadable(adapted, tmp_path, monkeypatch):
    target = tmp_path / "model"

    def boom(self, out_dir):
        raise KeyboardInterrupt  # what Ctrl-C mid-write looks like

    monkeypatch.setattr(type(adapted.tokenizer), "save", boom)
    with pytest.raises(KeyboardInterrupt):
        adapted.save_pretrained(target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # the staging folder is cleaned up too


def test_existing_directory_is_kept_unless_overwrite(adapted, tmp_path, monkeypatch):
    target = adapted.save_pretrained(tmp_path / "model")
    before = (target / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        adapted.save_pretrained(target)

    def boom(self, out_dir):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(adapted.tokenizer), "save", boom)
    with pytest.raises(RuntimeError):
        adapted.save_pretrained(target, overwrite=True)
    assert (target / "model.safetensors").read_bytes() == before  # a failed overwrite loses nothing
    monkeypatch.undo()
    adapted.save_pretrained(target, overwrite=True)
    assert AdaptedModel.from_pretrained(target).categories == CATS


def test_from_pretrained_refuses_bad_directories(adapted, tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        AdaptedModel.from_pretrained(tmp_path)
    good = adapted.save_pretrained(tmp_path / "m")
    (good / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt"):
        AdaptedModel.from_pretrained(good)
    (good / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is corrupt"):
        AdaptedModel.from_pretrained(good)


def test_fixture_state_has_official_keys():
    state = ofa_state_dict(tiny_config(500))
    for key in ("encoder.token_rp_bucket", "decoder.image_position_idx", "decoder.output_projection.weight",
                "decoder.code_layernorm_embedding.weight", "encoder.embed_images.bn1.num_batches_tracked"):
        assert key in state
    assert not any(k.startswith("decoder.seg_") for k in state)
