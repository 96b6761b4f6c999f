"""SegOFA's surrogate decoder: a causal OFA decoder fed [BOS ; encoder outputs at the image positions].

There are no learned query tokens. Output position i sees BOS and the encoder outputs 0..i-1 through causal
self-attention and the whole encoder output through cross-attention; its final state scores the classes by a dot
product with the class table, whose rows are mean token embeddings of the category names (the tied head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..presets import OFAConfig
from .bias_cache import BiasCache, caching_allowed
from .encoder import EncoderOutput, absolute_bias
from .layers import DecoderLayer, LayerNorm
from .position import (
    anchored,
    bias_anchor,
    gather_rows,
    relative_bias_on_grid,
    resize_grid,
    seg_relative_index,
)
from .precision import full_precision


class SurrogateDecoder(nn.Module):
    #: See :attr:`OFAEncoder.shape_agnostic` and :attr:`OFAEncoder.runtime_biases`.
    shape_agnostic: bool = False
    runtime_biases: bool = False

    def __init__(self, cfg: OFAConfig, num_classes: int) -> None:
        super().__init__()
        d, heads, eps, s = cfg.d_model, cfg.heads, cfg.layer_norm_eps, cfg.seg_bucket_size
        self.cfg = cfg
        self.layernorm_embedding = LayerNorm(d, eps=eps)
        self.embed_seg_positions = nn.Embedding(s * s + 1, d)
        self.seg_pos_ln = LayerNorm(d, eps=eps)
        self.self_pos_q_linear = nn.Linear(d, d)
        self.self_pos_k_linear = nn.Linear(d, d)
        self.cross_pos_q_linear = nn.Linear(d, d)
        self.cross_pos_k_linear = nn.Linear(d, d)
        self.pos_scaling = float(cfg.head_dim * cfg.attn_scale_factor) ** -0.5
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.decoder_layers, device="cpu").tolist()
        self.layers = nn.ModuleList(
            DecoderLayer(d, cfg.ffn_dim, heads, scale_factor=cfg.attn_scale_factor, dropout=cfg.dropout,
                         attention_dropout=cfg.attention_dropout, drop_path=r, eps=eps)
            for r in rates
        )
        self.layer_norm = LayerNorm(d, eps=eps)
        self.seg_rel_pos_table_list = nn.ModuleList(
            nn.Embedding((2 * s - 1) ** 2 + 3, heads) for _ in range(cfg.decoder_layers)
        )
        # The class table; also the (tied) output projection.
        self.seg_embed_tokens = nn.Embedding(num_classes, d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.bias_cache = BiasCache()

    def seg_positions(self, grid: tuple[int, int], anchor: Tensor | None = None) -> Tensor:
        """(1 + h*w, d) decoder positions: BOS row 0, then the seg grid resized to ``grid``."""
        s = self.cfg.seg_bucket_size
        table = anchored(self.embed_seg_positions.weight, anchor)
        block = table[1:].reshape(s, s, -1).permute(2, 0, 1)
        cells = resize_grid(block, grid, always_resize=self.shape_agnostic).flatten(1).transpose(0, 1)
        return torch.cat([table[:1], cells], dim=0)

    def seg_rel_bias(self, idx: int, grid: tuple[int, int], anchor: Tensor | None = None) -> Tensor:
        """(H, T, T) relative bias; the grid block is resized, the BOS row and column are kept."""
        s = self.cfg.seg_bucket_size
        table = anchored(self.seg_rel_pos_table_list[idx].weight, anchor)
        if anchor is not None and tuple(grid) == (s, s) and not self.shape_agnostic:
            # Per-call bias on the seg grid: one gather with the official index instead of flips and unfolds.
            return gather_rows(table, seg_relative_index(s, table.device))
        n = (2 * s - 1) ** 2
        cells = relative_bias_on_grid(table, s, grid, s, always_resize=self.shape_agnostic)  # (H, N, N)
        heads, m = cells.shape[0], cells.shape[1]
        # BOS row, BOS column and BOS-BOS use the three rows after the offsets (official bucket order); they are
        # constant along the grid, so resizing them changes nothing.
        top = torch.cat([table[n + 2].view(heads, 1, 1), table[n].view(heads, 1, 1).expand(heads, 1, m)], dim=2)
        left = table[n + 1].view(heads, 1, 1).expand(heads, m, 1)
        return torch.cat([top, torch.cat([left, cells], dim=2)], dim=1)

    def position_biases(self, enc: EncoderOutput, dtype: torch.dtype) -> tuple[list[Tensor], Tensor]:
        """(per-layer self-attention biases with the causal mask, the cross-attention bias); built once per shape
        at inference (see :mod:`.bias_cache`). The cross bias reads the encoder's positions: an entry is reused only
        with the very position tensor it was built from (the encoder's own cache hands out the same one)."""
        with full_precision(enc.pos.device):
            if self.runtime_biases or not caching_allowed(self):
                anchor = bias_anchor(enc.out) if self.runtime_biases else None
                return self._position_biases(enc.grid, enc.pos, dtype, anchor)
            key = (tuple(enc.grid), enc.pos.shape[1], dtype, str(enc.pos.device))
            return self.bias_cache.get(key, self.parameters(),
                                       lambda: self._position_biases(enc.grid, enc.pos, dtype), anchor=enc.pos)

    def _position_biases(self, grid: tuple[int, int], enc_pos: Tensor, dtype: torch.dtype,
                         anchor: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        n = grid[0] * grid[1]
        tgt_pos = self.seg_pos_ln(self.seg_positions(grid, anchor)).unsqueeze(0)
        heads = self.cfg.heads
        self_abs = absolute_bias(self.self_pos_q_linear, self.self_pos_k_linear, tgt_pos, tgt_pos, heads,
                                 self.pos_scaling)
        cross = absolute_bias(self.cross_pos_q_linear, self.cross_pos_k_linear, tgt_pos, enc_pos, heads,
                              self.pos_scaling).to(dtype)
        causal = torch.full((n + 1, n + 1), float("-inf"), device=enc_pos.device).triu(1)
        layers = [(self_abs + self.seg_rel_bias(i, grid, anchor) + causal).to(dtype) for i in range(len(self.layers))]
        return layers, cross

    def _load_from_state_dict(self, *args, **kwargs):  # noqa: ANN002, ANN003 - torch signature
        self.bias_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, enc: EncoderOutput, bos_embedding: Tensor) -> Tensor:
        """Final-LN decoder states (B, 1 + h*w, d); the last position is the one the head drops."""
        n = enc.grid[0] * enc.grid[1]
        b = enc.out.shape[0]
        x = torch.cat([bos_embedding.expand(b, 1, -1).to(enc.out.dtype), enc.out[:, :n]], dim=1)
        x = self.dropout(self.layernorm_embedding(x))
        self_biases, cross_bias = self.position_biases(enc, x.dtype)
        for layer, self_bias in zip(self.layers, self_biases):
            x = layer(x, enc.out, self_bias, cross_bias, enc.padding_mask)
        return self.layer_norm(x)

    def class_logits(self, features: Tensor, table: Tensor | None = None) -> Tensor:
        """(B, T, d) -> (B, T, M): <h, e_c> with the class table, no bias, no temperature. ``table`` (B, M, d):
        one class table per sample instead of the model's (open-vocabulary adaptation). Always in fp32: the
        logits of similar names differ in the third digit, which is all bf16 keeps (and this product is tiny)."""
        with full_precision(features.device):
            if table is None:
                return F.linear(features.float(), self.seg_embed_tokens.weight.float())
            return torch.bmm(features.float(), table.float().transpose(1, 2))
