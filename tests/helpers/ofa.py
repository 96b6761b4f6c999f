"""Tiny random OFA checkpoints in the official layouts, written by the tests themselves.

Same key names and shapes as the real ``ofa_*.pt`` files (and as the Hugging Face OFA weights), at small
dimensions. Every float is random and non-trivial (LayerNorm weights 1 + 0.1 N, BN variance in [0.5, 1.5], relative
tables N(0, 0.5), per-head scales 1 + 0.2 N), so a wrong formula cannot hide behind ones and zeros.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ifseg_deploy.checkpoints.hf_keys import fairseq_to_hf_names
from ifseg_deploy.modeling.init import TEST_PROFILE, random_init_
from ifseg_deploy.modeling.position import grid_relative_index, token_bucket_index
from ifseg_deploy.modeling.segofa import SegOFA
from ifseg_deploy.presets import OFAConfig

#: The categories of the session's tiny adapted models (conftest fixtures ``tiny_model_dir``, ``tiny_model_dir_32``).
TINY_CATEGORIES = ["floor", "wall", "person", "sky"]
TINY = dict(d_model=32, ffn_dim=64, heads=4, encoder_layers=2, decoder_layers=2, resnet_type="resnet50")


def tiny_config(vocab_rows: int, **overrides) -> OFAConfig:
    return OFAConfig("custom", vocab_rows=vocab_rows, **{**TINY, **overrides})


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Fill every float parameter and buffer with non-trivial random values (in place)."""
    random_init_(model, seed, TEST_PROFILE)


def _official_image_bucket(bucket: int) -> torch.Tensor:
    n = (2 * bucket - 1) ** 2 + 3
    idx = torch.empty(bucket * bucket + 1, bucket * bucket + 1, dtype=torch.long)
    idx[1:, 1:] = grid_relative_index(bucket, bucket, bucket)
    idx[0, :], idx[:, 0], idx[0, 0] = n - 3, n - 2, n - 1
    return idx


def ofa_state_dict(cfg: OFAConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the layout of the official pre-trained ``ofa_*.pt`` (no IFSeg seg parameters)."""
    model = SegOFA(cfg, num_classes=3)
    randomize_(model, seed)
    state = {k: v.clone() for k, v in model.state_dict().items()
             if not k.startswith("decoder.seg_") and not k.startswith("decoder.embed_seg") and k != "src_tokens"}
    g = torch.Generator().manual_seed(seed + 1)
    d, h, b = cfg.d_model, cfg.heads, cfg.image_bucket_size
    emb = state["encoder.embed_tokens.weight"]
    state["decoder.embed_tokens.weight"] = emb
    state["decoder.output_projection.weight"] = emb
    extra = {
        "decoder.embed_positions.weight": (cfg.max_source_positions + 2, d),
        "decoder.embed_image_positions.weight": (b * b + 1, d),
    }
    for ln in ("pos_ln", "image_pos_ln", "code_layernorm_embedding"):
        extra[f"decoder.{ln}.weight"] = (d,)
        extra[f"decoder.{ln}.bias"] = (d,)
    for i in range(cfg.decoder_layers):
        extra[f"decoder.token_rel_pos_table_list.{i}.weight"] = (2 * cfg.token_bucket_size - 1, h)
        extra[f"decoder.image_rel_pos_table_list.{i}.weight"] = ((2 * b - 1) ** 2 + 3, h)
    for k, shape in extra.items():
        state[k] = torch.randn(shape, generator=g) * 0.1
    for k in [k for k in state if k.endswith("running_mean")]:
        state[k.replace("running_mean", "num_batches_tracked")] = torch.tensor(1000)
    for side in ("encoder", "decoder"):
        state[f"{side}.version"] = torch.tensor([3.0])
        state[f"{side}.token_rp_bucket"] = token_bucket_index(cfg.max_source_positions, cfg.token_bucket_size)
        state[f"{side}.image_rp_bucket"] = _official_image_bucket(b)
    state["decoder.image_position_idx"] = torch.arange(cfg.max_source_positions + 2)
    return state


def write_fairseq_checkpoint(path: Path, cfg: OFAConfig, seed: int = 0, state: dict | None = None) -> Path:
    """``torch.save`` a checkpoint the way fairseq does: the state dict under "model" plus training metadata."""
    state = ofa_state_dict(cfg, seed) if state is None else state
    torch.save({
        "args": argparse.Namespace(arch=f"ofa_{cfg.name}", encoder_layers=cfg.encoder_layers, lr=[1e-4]),
        "cfg": None,
        "model": state,
        "optimizer_history": [{"criterion_name": "AdjustLabelSmoothedCrossEntropyCriterion",
                               "optimizer_name": "FairseqAdam", "lr_scheduler_state": {"best": 1.5},
                               "num_updates": 1000}],
        "extra_state": {"epoch": 3, "train_iterator": {"epoch": 3, "iterations_in_epoch": 0}},
    }, path)
    return path


def write_hf_checkpoint(directory: Path, cfg: OFAConfig, seed: int = 0, safetensors: bool = True) -> Path:
    """A Hugging Face OFA directory (config.json + weights) holding the same weights as the fairseq fixture."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    state = fairseq_to_hf_names(ofa_state_dict(cfg, seed))
    config = {
        "model_type": "ofa", "architectures": ["OFAModel"], "d_model": cfg.d_model,
        "encoder_layers": cfg.encoder_layers, "decoder_layers": cfg.decoder_layers,
        "encoder_attention_heads": cfg.heads, "decoder_attention_heads": cfg.heads,
        "encoder_ffn_dim": cfg.ffn_dim, "decoder_ffn_dim": cfg.ffn_dim, "resnet_type": cfg.resnet_type,
        "vocab_size": cfg.vocab_rows, "normformer": True, "attn_scale_factor": cfg.attn_scale_factor,
        "image_bucket_size": cfg.image_bucket_size, "token_bucket_size": cfg.token_bucket_size,
        "max_position_embeddings": cfg.max_source_positions, "add_type_embedding": True,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    if safetensors:
        from safetensors.torch import save_file

        # safetensors refuses aliased tensors; the real Hub files store each name once as well.
        save_file({k: v.contiguous().clone() for k, v in state.items()}, str(directory / "model.safetensors"))
    else:
        torch.save(state, directory / "pytorch_model.bin")
    return directory


def write_tiny_model_dir(root: Path, categories: list[str], seed: int = 0, **preprocessing) -> Path:
    """A tiny random adapted-model directory under ``root`` (fairseq fixture checkpoint + tiny BPE), through
    the real loading and saving code. ``preprocessing`` overrides entries such as ``short_side``."""
    from ifseg_deploy.model_dir import AdaptedModel
    from ifseg_deploy.tokenizer import OFATokenizer

    from .bpe import write_tiny_bpe

    bpe = root / "BPE"
    write_tiny_bpe(bpe, layout="fairseq")
    ckpt = write_fairseq_checkpoint(root / "ofa.pt", tiny_config(OFATokenizer.from_dir(bpe).num_embeddings), seed)
    adapted = AdaptedModel.unadapted_from_ofa(ckpt, categories, bpe_dir=bpe)
    adapted.preprocessing = adapted.preprocessing.replace(**preprocessing)
    return adapted.save_pretrained(root / "model")
