"""What the keys of official OFA / IFSeg checkpoints mean to SegOFA, and the architecture they imply."""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from ..presets import PRESETS, RESNET_LAYERS, OFAConfig
from .errors import CheckpointError

# Keys SegOFA does not use, each with the reason a user reading the load report sees.
IGNORED_KEYS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), why)
    for p, why in [
        (r"^(encoder|decoder)\.version$", "fairseq version marker"),
        (r"_rp_bucket$|^decoder\.image_position_idx$", "position index buffers (recomputed)"),
        (r"^decoder\.(bin_id_offset|seg_id_offset|region_prefix|window_size)$", "vocabulary offsets"),
        (r"\.num_batches_tracked$", "batch-norm counters (batch norm is frozen)"),
        (r"^decoder\.(embed_positions|embed_image_positions|pos_ln|image_pos_ln|code_layernorm_embedding)\.",
         "decoder text/image position modules the surrogate decoder does not use"),
        (r"^decoder\.(token|image)_rel_pos_table_list\.\d+\.weight$",
         "decoder text/image relative tables the surrogate decoder does not use"),
        (r"^decoder\.output_projection\.weight$", "OFA's text output head (IFSeg drops it)"),
        (r"^decoder\.seg_embed_tokens\.weight$", "class table (rebuilt from the category names)"),
    ]
]

# Names under which fairseq stores a tensor that SegOFA keeps once.
TIED_KEYS = {
    "decoder.embed_tokens.weight": "encoder.embed_tokens.weight",
    "encoder.embed_tokens_bag.weight": "encoder.embed_tokens.weight",
    "encoder.seg_embed_tokens.weight": "decoder.seg_embed_tokens.weight",
    "decoder.seg_projection.weight": "decoder.seg_embed_tokens.weight",
}

# Parameters IFSeg adds to OFA: absent from ofa_*.pt, initialised N(0, 0.02) (LayerNorm: 1, 0).
NEW_SEG_KEYS = re.compile(r"^decoder\.(embed_seg_positions|seg_pos_ln|seg_rel_pos_table_list\.\d+)\.")

REQUIRED_KEYS = (
    "encoder.embed_tokens.weight",
    "encoder.layers.0.fc1.weight",
    "encoder.layers.0.self_attn.q_proj.weight",
    "decoder.layers.0.fc1.weight",
    "encoder.embed_images.conv1.weight",
    "encoder.image_proj.weight",
    "encoder.embed_image_positions.weight",
    "encoder.embed_positions.weight",
    "encoder.token_rel_pos_table_list.0.weight",
)


def ignored_reason(key: str) -> str | None:
    for pattern, why in IGNORED_KEYS:
        if pattern.search(key):
            return why
    return None


def _count(state: Mapping[str, Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pat.match(k))}
    return max(found) + 1 if found else 0


def infer_config(state: Mapping[str, Tensor], source: str) -> OFAConfig:
    """The architecture a fairseq-named state dict holds, named after the preset it matches (or ``custom``)."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{source} does not look like an OFA checkpoint: no {', '.join(missing[:4])}")
    if "encoder.layers.0.self_attn.c_attn" not in state or "encoder.layers.0.attn_ln.weight" not in state:
        raise CheckpointError(f"{source}: the layers have no NormFormer scales (c_attn, attn_ln); IFSeg needs "
                              "the OFA pre-trained checkpoints (ofa_tiny.pt ... ofa_huge.pt)")
    rows, d = state["encoder.embed_tokens.weight"].shape
    blocks = tuple(_count(state, f"encoder.embed_images.layer{i}.") for i in (1, 2, 3))
    resnet = next((name for name, layers in RESNET_LAYERS.items() if layers == blocks), None)
    if resnet is None:
        raise CheckpointError(f"{source}: image backbone with {blocks} blocks per stage is not an OFA ResNet "
                              f"(expected one of {sorted(RESNET_LAYERS.values())})")
    seg_rows = state.get("decoder.embed_seg_positions.weight")
    fields = dict(
        d_model=int(d),
        ffn_dim=int(state["encoder.layers.0.fc1.weight"].shape[0]),
        heads=int(state["encoder.layers.0.self_attn.c_attn"].numel()),
        encoder_layers=_count(state, "encoder.layers."),
        decoder_layers=_count(state, "decoder.layers."),
        resnet_type=resnet,
    )
    width = int(state["encoder.embed_images.conv1.weight"].shape[0])
    fields["resnet_width"] = width
    name = next((p.name for p in PRESETS.values() if all(getattr(p, k) == v for k, v in fields.items())), "custom")
    return OFAConfig(
        name,
        **fields,
        vocab_rows=int(rows),
        token_bucket_size=(int(state["encoder.token_rel_pos_table_list.0.weight"].shape[0]) + 1) // 2,
        image_bucket_size=round((state["encoder.embed_image_positions.weight"].shape[0] - 1) ** 0.5),
        max_source_positions=int(state["encoder.embed_positions.weight"].shape[0]) - 2,
        seg_bucket_size=32 if seg_rows is None else round((seg_rows.shape[0] - 1) ** 0.5),
    )


ARCH_FIELDS = ("d_model", "ffn_dim", "heads", "encoder_layers", "decoder_layers", "resnet_type", "resnet_width")


def describe(cfg: OFAConfig) -> str:
    return (f"d_model {cfg.d_model}, {cfg.heads} heads, {cfg.encoder_layers}/{cfg.decoder_layers} layers, "
            f"{cfg.resnet_type}")


def check_arch(found: OFAConfig, arch: str | None, source: str) -> OFAConfig:
    """Refuse a checkpoint whose size differs from the one the user asked for."""
    if arch is None:
        return found
    if arch not in PRESETS:
        raise CheckpointError(f"unknown arch {arch!r}; choose one of {', '.join(PRESETS)}")
    want = PRESETS[arch]
    if any(getattr(want, k) != getattr(found, k) for k in ARCH_FIELDS):
        hint = f"ofa_{found.name}-sized" if found.name != "custom" else "of a non-standard size"
        raise CheckpointError(
            f"{source} is {hint} ({describe(found)}), but arch {arch!r} was asked for ({describe(want)}). "
            f"Pass the ofa_{arch}.pt checkpoint, or drop --arch to use the size the weights have."
        )
    return found
