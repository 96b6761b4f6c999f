"""Model-size presets: one registry for every official OFA size.

The numbers come from the official architecture functions (``models/segofa/segofa.py:351-467``). Everything
that all sizes share (bucket sizes, attention scale factor, position-table sizes) lives in the dataclass
defaults, so a preset only states what differs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Bottleneck blocks per stage (stages 1-3 only: OFA stops at output stride 16). "resnet-mini" is not an OFA
# size: it keeps the block structure for small models that must train in minutes on a CPU.
RESNET_LAYERS = {"resnet50": (3, 4, 6), "resnet101": (3, 4, 23), "resnet152": (3, 8, 36), "resnet-mini": (1, 1, 1)}

# English OFA vocabulary: 50 265 BPE symbols (incl. specials and <mask>) + 8192 image codes + 1000 location bins.
OFA_ENGLISH_VOCAB_ROWS = 59457
# Text positions of every official OFA size (embed_positions has 2 more rows); limits the prompt's length.
OFA_MAX_SOURCE_POSITIONS = 1024


@dataclass(frozen=True)
class OFAConfig:
    """Architecture of an OFA/SegOFA model. Field names follow the official fairseq arguments."""

    name: str
    d_model: int
    ffn_dim: int
    heads: int
    encoder_layers: int
    decoder_layers: int
    resnet_type: str
    vocab_rows: int = OFA_ENGLISH_VOCAB_ROWS
    attn_scale_factor: float = 2.0
    token_bucket_size: int = 256
    image_bucket_size: int = 42
    max_source_positions: int = OFA_MAX_SOURCE_POSITIONS
    # patch_image_size // 16 with the IFSeg default of 512 px: the word-map grid and the seg position buckets.
    seg_bucket_size: int = 32
    # orig_patch_image_size // 16: the grid whose position tables are used unresized.
    orig_patch_grid: int = 32
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1
    attention_dropout: float = 0.0
    drop_path_rate: float = 0.1
    # Width of the first ResNet stage; stage-3 output channels are 16x this (1024 for every OFA size).
    resnet_width: int = 64
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def resnet_channels(self) -> int:
        return self.resnet_width * 16

    @property
    def resnet_layers(self) -> tuple[int, int, int]:
        return RESNET_LAYERS[self.resnet_type]

    def replace(self, **changes) -> OFAConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> OFAConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}")
        return cls(**d)


PRESETS: dict[str, OFAConfig] = {
    c.name: c
    for c in (
        OFAConfig("tiny", d_model=256, ffn_dim=1024, heads=4, encoder_layers=4, decoder_layers=4,
                  resnet_type="resnet50"),
        OFAConfig("medium", d_model=512, ffn_dim=2048, heads=8, encoder_layers=4, decoder_layers=4,
                  resnet_type="resnet101"),
        OFAConfig("base", d_model=768, ffn_dim=3072, heads=12, encoder_layers=6, decoder_layers=6,
                  resnet_type="resnet101"),
        OFAConfig("large", d_model=1024, ffn_dim=4096, heads=16, encoder_layers=12, decoder_layers=12,
                  resnet_type="resnet152"),
        OFAConfig("huge", d_model=1280, ffn_dim=5120, heads=16, encoder_layers=24, decoder_layers=12,
                  resnet_type="resnet152"),
    )
}


def get_preset(name: str) -> OFAConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model size {name!r}; choose one of {', '.join(PRESETS)}") from None
