"""Hugging Face OFA directories (``OFA-Sys/ofa-*``): read the weights and rename them to fairseq's names.

The HF port (OFA repository, branch ``feature/add_transformers``, ``modeling_ofa.py``) keeps fairseq's module
names except inside the layers: the NormFormer mid LayerNorms and the decoder's cross-attention are renamed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from .errors import CheckpointError
from .safe_load import load_safetensors, safe_torch_load

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# (HF pattern, fairseq replacement), applied in order; cross_attn's LayerNorm names go before cross_attn itself.
_HF_TO_FAIRSEQ = [
    (re.compile(r"^(encoder\.layers\.\d+)\.self_attn_mid_layer_norm\."), r"\1.attn_ln."),
    (re.compile(r"^(decoder\.layers\.\d+)\.self_attn_mid_layer_norm\."), r"\1.self_attn_ln."),
    (re.compile(r"^(decoder\.layers\.\d+)\.cross_attn_mid_layer_norm\."), r"\1.cross_attn_ln."),
    (re.compile(r"^(decoder\.layers\.\d+)\.cross_attn_layer_norm\."), r"\1.encoder_attn_layer_norm."),
    (re.compile(r"^(decoder\.layers\.\d+)\.cross_attn\."), r"\1.encoder_attn."),
    (re.compile(r"^((?:en|de)coder\.layers\.\d+)\.ffn_layer_norm\."), r"\1.ffn_layernorm."),
]
_FAIRSEQ_TO_HF = [
    (re.compile(r"^(encoder\.layers\.\d+)\.attn_ln\."), r"\1.self_attn_mid_layer_norm."),
    (re.compile(r"^(decoder\.layers\.\d+)\.self_attn_ln\."), r"\1.self_attn_mid_layer_norm."),
    (re.compile(r"^(decoder\.layers\.\d+)\.cross_attn_ln\."), r"\1.cross_attn_mid_layer_norm."),
    (re.compile(r"^(decoder\.layers\.\d+)\.encoder_attn_layer_norm\."), r"\1.cross_attn_layer_norm."),
    (re.compile(r"^(decoder\.layers\.\d+)\.encoder_attn\."), r"\1.cross_attn."),
    (re.compile(r"^((?:en|de)coder\.layers\.\d+)\.ffn_layernorm\."), r"\1.ffn_layer_norm."),
]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, repl in rules:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return key


# One tensor under three names in the port's state_dict(); HF's save_pretrained may keep only one of them.
TIED_TOKEN_TABLE = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")


def to_fairseq_names(state: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """HF key names -> fairseq key names (an optional ``model.`` prefix is stripped). When the token table was
    saved under one of its tied names only, the encoder's name (the one fairseq checkpoints always hold) gets it."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        bare = key[len("model."):] if key.startswith("model.") else key
        new = _rename(bare, _HF_TO_FAIRSEQ)
        if new in out:
            raise CheckpointError(f"{source}: two weights map to {new}")
        out[new] = value
    if TIED_TOKEN_TABLE[0] not in out:
        kept = next((k for k in TIED_TOKEN_TABLE[1:] if k in out), None)
        if kept is not None:
            out[TIED_TOKEN_TABLE[0]] = out[kept]
    return out


def fairseq_to_hf_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse renaming; the HF layout also has no fairseq ``version`` buffers."""
    return {_rename(k, _FAIRSEQ_TO_HF): v for k, v in state.items() if not k.endswith(".version")}


def read_hf_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json: not a Hugging Face OFA directory")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e})") from None
    if config.get("format") == "ifseg-deploy/adapted-model":
        raise CheckpointError(f"{directory} is an ifseg-deploy adapted-model directory, not an OFA checkpoint: give "
                              "it to segment, eval or export (or to adapt --checkpoint, to continue adapting it)")
    if config.get("model_type") != "ofa":
        raise CheckpointError(f"{path}: model_type is {config.get('model_type')!r}, expected 'ofa'")
    return config


def load_hf_state(directory: str | Path) -> dict[str, Tensor]:
    """Weights of an HF OFA directory (``model.safetensors`` preferred, else ``pytorch_model.bin``)."""
    directory = Path(directory)
    if (directory / "vocab.txt").is_file() and not (directory / "vocab.json").is_file():
        raise CheckpointError(
            f"{directory} holds the Chinese OFA (BERT vocab.txt): its vocabulary differs from the English one "
            "IFSeg needs (IFSeg on it gives mIoU near 0.0001). Use the English OFA-Sys/ofa-* weights."
        )
    config = read_hf_config(directory)
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            path = directory / name
            state = load_safetensors(path) if name.endswith(".safetensors") else safe_torch_load(path)
            break
    else:
        raise CheckpointError(f"{directory} has no weights: expected one of {', '.join(WEIGHT_FILES)}")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict")
    emb = next((state[p + k] for k in TIED_TOKEN_TABLE for p in ("", "model.") if p + k in state), None)
    if emb is not None and "d_model" in config and int(config["d_model"]) != emb.shape[1]:
        raise CheckpointError(f"{directory}: config.json says d_model {config['d_model']} but the weights have "
                              f"{emb.shape[1]}")
    return dict(state)
