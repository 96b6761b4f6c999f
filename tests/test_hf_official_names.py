"""Hugging Face OFA directories named the way the official port names them, not the way this project renames.

The directory is built from ``../shared/hf_port_keys`` (the 423 ``[key, shape, dtype]`` entries of the official
port's ``OFAModel.state_dict()`` and its ``config.json``) with random values, so nothing in it comes from
``ifseg_deploy``'s own renaming (``fairseq_to_hf_names``). Its fairseq-layout twin holds the same values under
fairseq names taken from an independent source:

* ``PORT_TO_FAIRSEQ`` below: for the seven layer modules whose names differ, the fairseq module at the same place
  of the forward, read from the port's layer code (``OFAEncoderLayer``/``OFADecoderLayer`` in ``modeling_ofa.py``)
  and OFA's fairseq layers (e.g. the NormFormer LayerNorm applied to the self-attention output is the port's
  ``self_attn_mid_layer_norm``, fairseq's ``attn_ln`` in the encoder and ``self_attn_ln`` in the decoder);
* checked against the official IFSeg checkpoint (``../shared/segofa_golden``, written by the official fairseq
  code): the table must carry the port's names exactly onto that checkpoint's names and shapes.

Loading both must account for every key (used, tied or ignored with a reason) and give bit-identical models.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers.bpe import write_tiny_bpe

from ifseg_deploy.checkpoints.loader import load_ofa
from ifseg_deploy.checkpoints.ofa_keys import NEW_SEG_KEYS
from ifseg_deploy.tokenizer import OFATokenizer

CATS = ["floor", "wall", "person", "concrete wall"]
NUM_BINS = 10

# (side, port module) -> fairseq module, inside ``<side>.layers.<i>.``; every other name is the same in both.
PORT_TO_FAIRSEQ = {
    ("encoder", "self_attn_mid_layer_norm"): "attn_ln",
    ("encoder", "ffn_layer_norm"): "ffn_layernorm",
    ("decoder", "self_attn_mid_layer_norm"): "self_attn_ln",
    ("decoder", "cross_attn"): "encoder_attn",
    ("decoder", "cross_attn_layer_norm"): "encoder_attn_layer_norm",
    ("decoder", "cross_attn_mid_layer_norm"): "cross_attn_ln",
    ("decoder", "ffn_layer_norm"): "ffn_layernorm",
}
TOKEN_TABLE = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")


def fairseq_name(port_key: str) -> str:
    parts = port_key.split(".")
    if len(parts) > 3 and parts[1] == "layers":
        parts[3] = PORT_TO_FAIRSEQ.get((parts[0], parts[3]), parts[3])
    return ".".join(parts)


def _random(name: str, shape: list[int], dtype: str, g: torch.Generator) -> torch.Tensor:
    """Non-trivial values by role (as helpers.ofa.randomize_); the int64 index buffers, which the loader ignores
    and recomputes, get arbitrary indices."""
    leaf = name.rsplit(".", 1)[-1]
    if dtype == "int64":
        return torch.tensor(1000) if leaf == "num_batches_tracked" else torch.randint(0, 100, shape, generator=g)
    assert dtype == "float32", (name, dtype)
    if leaf == "running_var":
        return 0.5 + torch.rand(shape, generator=g)
    if "rel_pos_table" in name:
        return 0.5 * torch.randn(shape, generator=g)
    if leaf == "c_attn":
        return 1 + 0.2 * torch.randn(shape, generator=g)
    if len(shape) == 1:
        return (1 if leaf == "weight" else 0) + 0.1 * torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))


@pytest.fixture(scope="module")
def port_keys(hf_port_keys_dir: Path) -> list[tuple[str, list[int], str]]:
    entries = [tuple(e) for e in json.loads((hf_port_keys_dir / "state_dict_keys.json").read_text())]
    assert len(entries) == 423
    return entries


@pytest.fixture(scope="module")
def port_state(port_keys) -> dict[str, torch.Tensor]:
    """Random values under the official port's names; the tied token table holds one tensor under its 3 names."""
    g = torch.Generator().manual_seed(2023)
    state = {k: _random(k, shape, dtype, g) for k, shape, dtype in port_keys}
    for k in TOKEN_TABLE[1:]:
        state[k] = state[TOKEN_TABLE[0]]
    return state


def _tokenizer_files(directory: Path, layout: str, rows: int) -> None:
    """The tiny BPE, with as many <code_i> symbols as make the table ``rows`` long."""
    text = write_tiny_bpe(directory, layout=layout)["num_text_symbols"]
    write_tiny_bpe(directory, layout=layout, num_codes=rows - text - 1 - NUM_BINS, num_bins=NUM_BINS)
    assert OFATokenizer.from_dir(directory).num_embeddings == rows


def test_table_carries_the_port_names_onto_the_official_fairseq_names(port_keys, golden_checkpoint):
    official = {k: tuple(v.shape) for k, v in
                torch.load(golden_checkpoint, map_location="cpu", weights_only=True, mmap=True)["model"].items()}
    mapped = {fairseq_name(k): tuple(shape) for k, shape, _ in port_keys}
    assert len(mapped) == len(port_keys)
    # Keys one side has and the other has not, each for a documented reason: the port keeps the batch-norm
    # counters (the official SegOFA's frozen batch norm has none) and OFA's text head (IFSeg drops it); IFSeg
    # adds its seg tables, the EmbeddingBag alias, fairseq version markers and vocabulary offsets.
    port_only = {k for k in mapped if k.endswith(".num_batches_tracked")} | {"decoder.output_projection.weight"}
    ifseg_only = {k for k in official if k.endswith(".version") or NEW_SEG_KEYS.match(k) or ".seg_" in k
                  or k in ("encoder.embed_tokens_bag.weight", "decoder.seg_rp_bucket", "decoder.bin_id_offset",
                           "decoder.seg_id_offset", "decoder.region_prefix")}
    assert len(port_only) == 44 and set(mapped) - set(official) == port_only
    assert set(official) - set(mapped) == ifseg_only
    # decoder.image_position_idx: 1025 entries in the port, 1026 in fairseq; an ignored, recomputed index buffer
    assert {k for k in set(mapped) & set(official) if mapped[k] != official[k]} == {"decoder.image_position_idx"}


@pytest.fixture(scope="module")
def fairseq_twin(tmp_path_factory, port_state):
    """The same values under fairseq names (``PORT_TO_FAIRSEQ``), loaded through the fairseq path."""
    root = tmp_path_factory.mktemp("fairseq-twin")
    rows = port_state[TOKEN_TABLE[0]].shape[0]
    _tokenizer_files(root / "BPE", "fairseq", rows)
    torch.save({"model": {fairseq_name(k): v for k, v in port_state.items()}}, root / "ofa_port_values.pt")
    model, _, report = load_ofa(root / "ofa_port_values.pt", CATS)
    assert report.unexpected == []
    return model


VARIANTS = {
    # what state_dict() holds: every name, tied ones included, no prefix
    "state_dict": dict(prefix="", keep=TOKEN_TABLE, file="model.safetensors"),
    # Hub files: a "model." prefix and the token table under one of its names only
    "hub-encoder-table": dict(prefix="model.", keep=TOKEN_TABLE[:1], file="pytorch_model.bin"),
    "hub-decoder-table": dict(prefix="model.", keep=TOKEN_TABLE[1:2], file="model.safetensors"),
    "hub-output-projection": dict(prefix="model.", keep=TOKEN_TABLE[2:], file="pytorch_model.bin"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_official_port_directory_loads_every_key_and_equals_the_fairseq_load(
        variant, tmp_path, hf_port_keys_dir, port_state, fairseq_twin):
    v = VARIANTS[variant]
    state = {v["prefix"] + k: t for k, t in port_state.items() if k not in TOKEN_TABLE or k in v["keep"]}
    d = tmp_path / "ofa-port"
    config = json.loads((hf_port_keys_dir / "config.json").read_text())
    _tokenizer_files(d, "hf", config["vocab_size"])
    (d / "config.json").write_text(json.dumps(config))
    if v["file"].endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: t.clone() for k, t in state.items()}, str(d / v["file"]))  # no aliases in safetensors
    else:
        torch.save(state, d / v["file"])

    model, _, report = load_ofa(d, CATS)
    assert report.layout == "huggingface" and report.unexpected == []
    assert all(report.ignored.values())  # every ignored key has its reason
    expected = {fairseq_name(k[len(v["prefix"]):]) for k in state}
    if TOKEN_TABLE[0] not in v["keep"]:
        expected.add(TOKEN_TABLE[0])  # restored from the kept tied name
    accounted = [*report.used, *report.tied, *report.ignored]
    assert len(accounted) == len(set(accounted)) and set(accounted) == expected
    assert all(NEW_SEG_KEYS.match(k) for k in report.initialised)

    want = fairseq_twin.state_dict()
    got = model.state_dict()
    assert got.keys() == want.keys()
    differing = [k for k in want if not torch.equal(got[k], want[k])]
    assert differing == []
