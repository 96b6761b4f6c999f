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
from torch import Tensor, nn

from ..presets import OFAConfig
from .attention import MultiheadAttention
from .decoder import SurrogateDecoder
from .encoder import PAD_ID, EncoderOutput, OFAEncoder
from .position import max_text_tokens
from .precision import full_precision

BOS_ID = 0
#: The logit of a padded class: finite, so bilinear upsampling (weights of 0 included) keeps it, and exp() of it
#: is 0 next to any real logit.
MASKED_LOGIT = -1e4


def pad_name_tokens(name_tokens: Sequence[Sequence[int]], pad_to: int = 0, pad_id: int = PAD_ID,
                    device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """(M, T) int64 ids of each name, right-padded with ``pad_id`` to T = max(longest name, ``pad_to``), and
    (M,) int64 lengths."""
    lengths = [len(t) for t in name_tokens]
    ids = torch.full((len(lengths), max([pad_to, *lengths])), pad_id, dtype=torch.long)
    for i, toks in enumerate(name_tokens):
        ids[i, :len(toks)] = torch.tensor(list(toks), dtype=torch.long)
    return ids.to(device), torch.tensor(lengths, dtype=torch.long, device=device)


def mean_token_embeddings(table: Tensor, ids: Tensor, lengths: Tensor) -> Tensor:
    """The class head of IFSeg: (M, d) fp32 rows, row c the mean of ``table``'s rows for the first
    ``lengths[c]`` ids of ``ids[c]`` ((M, T) padded name ids). Plain gathers and sums, so that an ONNX graph
    taking the names as input computes the table exactly as the PyTorch model does."""
    rows = table.float()[ids]  # (M, T, d)
    keep = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0) < lengths.unsqueeze(1)  # (M, T)
    total = (rows * keep.unsqueeze(-1).to(rows.dtype)).sum(dim=1)
    return total / lengths.unsqueeze(1).to(rows.dtype)


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

    def clear_bias_caches(self) -> None:
        """Forget the cached position biases (see :mod:`.bias_cache`): called whenever they may go stale."""
        self.encoder.bias_cache.clear()
        self.decoder.bias_cache.clear()

    def train(self, mode: bool = True) -> SegOFA:
        self.clear_bias_caches()
        return super().train(mode)

    def set_shape_agnostic(self, enabled: bool = True) -> SegOFA:
        """Trace-friendly mode for a dynamic-shape export (see :attr:`OFAEncoder.shape_agnostic`)."""
        self.encoder.shape_agnostic = self.decoder.shape_agnostic = enabled
        return self

    def prepare_for_export(self, shape_agnostic: bool = False, runtime_biases: bool = True) -> SegOFA:
        """Configure this model (a copy that only the exporter uses) for ONNX: attention as the explicit formula
        (ONNX has no fused attention op; the explicit graph keeps the fp32 softmax visible to the precision rules of
        the FP16/INT8 stages), position biases computed per call from their tables (``runtime_biases``; see
        :func:`.position.anchored`), and the shape-agnostic mode for a dynamic-shape export."""
        for module in self.modules():
            if isinstance(module, MultiheadAttention):
                module.use_sdpa = False
        self.encoder.runtime_biases = self.decoder.runtime_biases = runtime_biases
        return self.set_shape_agnostic(shape_agnostic)

    @property
    def num_classes(self) -> int:
        return self.decoder.seg_embed_tokens.num_embeddings

    # -- categories -------------------------------------------------------------------------------------------
    def class_embeddings(self, name_tokens: Sequence[Sequence[int]]) -> Tensor:
        """(M, d): row c is the mean of the token embeddings of name c, accumulated in fp32
        (:func:`mean_token_embeddings` on the names' padded ids: the same op the open-vocabulary export runs)."""
        table = self.encoder.embed_tokens.weight
        if not name_tokens or any(len(t) == 0 for t in name_tokens):
            raise ValueError("every category name needs at least one token")
        ids, lengths = pad_name_tokens(name_tokens, device=table.device)
        return mean_token_embeddings(table, ids, lengths).to(table.dtype)

    def set_prompt(self, src_tokens: Sequence[int], name_tokens: Sequence[Sequence[int]]) -> None:
        """Install the encoder prompt ids and rebuild the class table (and head) from the names' tokens."""
        self.clear_bias_caches()
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
        """(B, 3, H, W) normalised images -> raw ResNet features (B, 1024, ceil(H/16), ceil(W/16)). The ResNet
        stays fp32 under autocast: in bf16 it moved 2.7% of the trained demo model's labels, the transformer 0.3%."""
        with full_precision(images.device):
            return self.encoder.embed_images(images)

    def project_features(self, features: Tensor) -> Tensor:
        """(B, C, h, w) ResNet features -> (B, h, w, d) projected image tokens (what a word map replaces)."""
        return self.encoder.image_proj(features.permute(0, 2, 3, 1))

    def run_tokens(self, tokens: Tensor, src_tokens: Tensor | None = None, *, embedded: bool = False,
                   check_padding: bool = True, class_table: Tensor | None = None,
                   class_mask: Tensor | None = None) -> SegOFAOutput:
        """Shared trunk. ``tokens`` (B, h, w, d) are projected image tokens or a word map; with
        ``embedded=True`` they already went through the type embedding and the patch LayerNorm (the fused
        word-map kernel produces them that way) and only the embedding dropout is left to apply.

        ``class_table`` (B, M, d) gives each sample its own classes (with ``src_tokens`` (B, Lt) naming them,
        padded with ``<pad>``); ``class_mask`` (B, M) is False at padded classes, whose logits become
        :data:`MASKED_LOGIT`."""
        b, h, w, d = tokens.shape
        flat = tokens.reshape(b, h * w, d)
        patches = self.encoder.dropout(flat) if embedded else self.encoder.embed_patches(flat)
        enc = self.encoder(patches, (h, w), self._src(src_tokens, b), check_padding)
        bos = self.encoder.embed_tokens.weight[BOS_ID]
        features = self.decoder(enc, bos)
        seq = self.decoder.class_logits(features, class_table)
        if class_mask is not None:
            seq = seq.masked_fill(~class_mask.unsqueeze(1), MASKED_LOGIT)
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
