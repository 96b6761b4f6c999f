"""SegOFA: the OFA encoder plus the surrogate decoder and tied class head, with IFSeg's three entry points.

* :meth:`SegOFA.forward` — image -> class logits (B, M, h, w) at 1/16 resolution;
* :meth:`SegOFA.forward_wordmap` — word-map embeddings -> class logits (the image-free training path: the word
  map replaces the *projected* image tokens and shares everything after them);
* :meth:`SegOFA.image_features` — the raw ResNet stage-3 features that the kNN refinement uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..presets import OFAConfig
from .decoder import SurrogateDecoder
from .encoder import EncoderOutput, OFAEncoder
from .position import max_text_tokens

BOS_ID = 0


class SegOFAOutput(NamedTuple):
    logits: Tensor  # (B, M, h, w)
    sequence_logits: Tensor  # (B, 1 + h*w, M): one row per decoder position, the last one is dropped above
    encoder: EncoderOutput
    decoder_features: Tensor  # (B, 1 + h*w, d)


class SegOFA(nn.Module):
    """IFSeg's segmentation model. Frozen parts (token table, ResNet, ``image_proj``, class table) have
    ``requires_grad=False``; everything else is what image-free adaptation trains."""

    def __init__(self, cfg: OFAConfig, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = OFAEncoder(cfg)
        self.decoder = SurrogateDecoder(cfg, num_classes)
        # The encoder input ids: <s> prompt names " unknown" </s>. Saved with the model so an adapted model is
        # self-contained; set by :meth:`set_prompt`.
        self.register_buffer("src_tokens", torch.zeros(0, dtype=torch.long))
        for module in (self.encoder.embed_tokens, self.encoder.embed_images, self.encoder.image_proj,
                       self.decoder.seg_embed_tokens):
            module.requires_grad_(False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 - torch signature
        # The prompt length is data, not architecture: take the saved one instead of failing on its shape.
        saved = state_dict.get(prefix + "src_tokens")
        if saved is not None:
            self.src_tokens = torch.empty_like(saved, device=self.src_tokens.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_shape_agnostic(self, enabled: bool = True) -> SegOFA:
        """Trace-friendly mode for a dynamic-shape export (see :attr:`OFAEncoder.shape_agnostic`)."""
        self.encoder.shape_agnostic = self.decoder.shape_agnostic = enabled
        return self

    @property
    def num_classes(self) -> int:
        return self.decoder.seg_embed_tokens.num_embeddings

    # -- categories -------------------------------------------------------------------------------------------
    def class_embeddings(self, name_tokens: Sequence[Sequence[int]]) -> Tensor:
        """(M, d): row c is the mean of the token embeddings of name c, accumulated in fp32."""
        table = self.encoder.embed_tokens.weight
        if not name_tokens or any(len(t) == 0 for t in name_tokens):
            raise ValueError("every category name needs at least one token")
        flat = torch.tensor([t for toks in name_tokens for t in toks], dtype=torch.long, device=table.device)
        offsets = torch.tensor([0, *torch.tensor([len(t) for t in name_tokens]).cumsum(0)[:-1].tolist()],
                               dtype=torch.long, device=table.device)
        rows = F.embedding_bag(flat, table.float(), offsets, mode="mean")
        return rows.to(table.dtype)

    def set_prompt(self, src_tokens: Sequence[int], name_tokens: Sequence[Sequence[int]]) -> None:
        """Install the encoder prompt ids and rebuild the class table (and head) from the names' tokens."""
        limit = max_text_tokens(self.cfg.max_source_positions)
        if len(src_tokens) > limit:  # the loaders refuse this earlier, with the number of names that fit
            raise ValueError(f"the prompt has {len(src_tokens)} tokens, the encoder {limit} text positions")
        rows = self.class_embeddings(name_tokens)
        table = self.decoder.seg_embed_tokens
        if rows.shape[0] != table.num_embeddings:
            table = nn.Embedding(rows.shape[0], rows.shape[1], device=rows.device, dtype=rows.dtype)
            table.requires_grad_(False)
            self.decoder.seg_embed_tokens = table
        with torch.no_grad():
            table.weight.copy_(rows)
        self.src_tokens = torch.tensor(list(src_tokens), dtype=torch.long, device=rows.device)

    def _src(self, src_tokens: Tensor | None, batch: int) -> Tensor:
        src = self.src_tokens if src_tokens is None else src_tokens
        if src.numel() == 0:
            raise ValueError("no prompt set: call set_prompt() or pass src_tokens")
        if src.dim() == 1:
            src = src.unsqueeze(0)
        return src.expand(batch, -1) if src.shape[0] == 1 else src

    # -- entry points -----------------------------------------------------------------------------------------
    def image_features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> raw ResNet features (B, 1024, ceil(H/16), ceil(W/16))."""
        return self.encoder.embed_images(images)

    def project_features(self, features: Tensor) -> Tensor:
        """(B, C, h, w) ResNet features -> (B, h, w, d) projected image tokens (what a word map replaces)."""
        return self.encoder.image_proj(features.permute(0, 2, 3, 1))

    def run_tokens(self, tokens: Tensor, src_tokens: Tensor | None = None, *, embedded: bool = False,
                   check_padding: bool = True) -> SegOFAOutput:
        """Shared trunk. ``tokens`` (B, h, w, d) are projected image tokens or a word map; with
        ``embedded=True`` they already went through the type embedding and the patch LayerNorm (the fused
        word-map kernel produces them that way) and only the embedding dropout is left to apply."""
        b, h, w, d = tokens.shape
        flat = tokens.reshape(b, h * w, d)
        patches = self.encoder.dropout(flat) if embedded else self.encoder.embed_patches(flat)
        enc = self.encoder(patches, (h, w), self._src(src_tokens, b), check_padding)
        bos = self.encoder.embed_tokens.weight[BOS_ID]
        features = self.decoder(enc, bos)
        seq = self.decoder.class_logits(features)
        logits = seq[:, :-1].float().transpose(1, 2).reshape(b, -1, h, w)
        return SegOFAOutput(logits, seq, enc, features)

    def forward(self, images: Tensor, src_tokens: Tensor | None = None) -> Tensor:
        """(B, 3, H, W) images normalised with mean = std = 0.5 -> fp32 class logits (B, M, H/16, W/16)."""
        return self.run_tokens(self.project_features(self.image_features(images)), src_tokens).logits

    def forward_wordmap(self, wordmap: Tensor, src_tokens: Tensor | None = None, *,
                        embedded: bool = False) -> Tensor:
        """(B, h, w, d) word-map embeddings (class-table rows per cell) -> fp32 class logits (B, M, h, w)."""
        return self.run_tokens(wordmap, src_tokens, embedded=embedded).logits


def parameter_count(cfg: OFAConfig) -> int:
    """Parameters of the SegOFA model built from ``cfg``, without the class table (built on the meta device:
    no memory is used)."""
    with torch.device("meta"):
        model = SegOFA(cfg, num_classes=1)
    return sum(p.numel() for p in model.parameters()) - cfg.d_model
