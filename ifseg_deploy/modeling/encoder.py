"""OFA encoder over [image tokens ; text tokens] with TUPE absolute and bucketed relative position biases."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..presets import OFAConfig
from .bias_cache import BiasCache, caching_allowed
from .layers import EncoderLayer, LayerNorm
from .position import (
    anchored,
    bias_anchor,
    block_diagonal,
    gather_rows,
    grid_relative_index,
    relative_bias_on_grid,
    resize_grid,
    token_bucket_index,
)
from .precision import full_precision
from .resnet import ResNetStages

PAD_ID = 1


class EncoderOutput(NamedTuple):
    out: Tensor  # (B, N + Lt, d) after the final LayerNorm; image positions first
    pos: Tensor  # (1, N + Lt, d) LayerNorm'd position embeddings, reused by the decoder's cross bias
    padding_mask: Tensor | None  # (B, N + Lt), True at padded text positions; None when nothing is padded
    grid: tuple[int, int]


class PositionBiases(NamedTuple):
    pos: Tensor  # (1, N + Lt, d) LayerNorm'd position embeddings (the decoder's cross bias reads them)
    layers: list[Tensor]  # per layer (1, H, N + Lt, N + Lt): absolute + relative bias


def absolute_bias(pos_q: nn.Linear, pos_k: nn.Linear, q_pos: Tensor, k_pos: Tensor, heads: int,
                  scaling: float) -> Tensor:
    """TUPE-style (1, H, Lq, Lk) bias: per-head (W_q p_i * s) . (W_k p_j)."""
    q = pos_q(q_pos).unflatten(-1, (heads, -1)).transpose(1, 2) * scaling
    k = pos_k(k_pos).unflatten(-1, (heads, -1)).transpose(1, 2)
    return q @ k.transpose(-1, -2)


class OFAEncoder(nn.Module):
    #: Trace one graph for every grid size (dynamic-shape export): position tables and relative biases always go
    #: through their resize (the identity at the pre-training size) and the image-position rule is a tensor
    #: ``where``. Same values either way; set on the export copy of the model, never globally.
    shape_agnostic: bool = False
    #: Build the position biases from their small tables on every call instead of letting a graph runtime fold
    #: them into constants (set on the export copy; see :func:`.position.anchored`).
    runtime_biases: bool = False

    def __init__(self, cfg: OFAConfig) -> None:
        super().__init__()
        d, heads, eps = cfg.d_model, cfg.heads, cfg.layer_norm_eps
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_rows, d, padding_idx=PAD_ID)
        self.embed_images = ResNetStages(cfg.resnet_layers, cfg.resnet_width)
        self.image_proj = nn.Linear(cfg.resnet_channels, d)
        self.type_embedding = nn.Embedding(2, d)
        self.layernorm_embedding = LayerNorm(d, eps=eps)
        self.patch_layernorm_embedding = LayerNorm(d, eps=eps)
        self.embed_positions = nn.Embedding(cfg.max_source_positions + 2, d)
        self.embed_image_positions = nn.Embedding(cfg.image_bucket_size**2 + 1, d)
        self.pos_ln = LayerNorm(d, eps=eps)
        self.image_pos_ln = LayerNorm(d, eps=eps)
        self.pos_q_linear = nn.Linear(d, d)
        self.pos_k_linear = nn.Linear(d, d)
        self.pos_scaling = float(cfg.head_dim * cfg.attn_scale_factor) ** -0.5
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.encoder_layers, device="cpu").tolist()
        self.layers = nn.ModuleList(
            EncoderLayer(d, cfg.ffn_dim, heads, scale_factor=cfg.attn_scale_factor, dropout=cfg.dropout,
                         attention_dropout=cfg.attention_dropout, drop_path=r, eps=eps)
            for r in rates
        )
        self.layer_norm = LayerNorm(d, eps=eps)
        self.token_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(2 * cfg.token_bucket_size - 1, heads) for _ in range(cfg.encoder_layers)
        )
        self.image_rel_pos_table_list = nn.ModuleList(
            nn.Embedding((2 * cfg.image_bucket_size - 1) ** 2 + 3, heads) for _ in range(cfg.encoder_layers)
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.bias_cache = BiasCache()

    # -- embeddings -------------------------------------------------------------------------------------------
    def embed_patches(self, projected: Tensor) -> Tensor:
        """(B, N, d) projected image tokens (or a word map) -> + type 1 -> patch LayerNorm -> dropout."""
        return self.dropout(self.patch_layernorm_embedding(projected + self.type_embedding.weight[1]))

    def embed_text(self, src_tokens: Tensor) -> Tensor:
        return self.dropout(self.layernorm_embedding(self.embed_tokens(src_tokens) + self.type_embedding.weight[0]))

    def image_positions(self, grid: tuple[int, int], anchor: Tensor | None = None) -> Tensor:
        """(h*w, d) image position embeddings before their LayerNorm.

        Grids of at most the pre-training cell count look rows up directly (id = bucket*r + c + 1, as the
        official code does); larger grids bilinearly resize the pre-training block. Grids wider or taller than
        the bucket would alias rows under a direct lookup, so they are resized too.
        """
        h, w = grid
        g, b = self.cfg.orig_patch_grid, self.cfg.image_bucket_size
        table = anchored(self.embed_image_positions.weight, anchor)
        if self.shape_agnostic:
            return self._image_positions_in_graph(grid, table)
        if h * w <= g * g and h <= b and w <= b:
            ids = (torch.arange(h, device=table.device)[:, None] * b + torch.arange(w, device=table.device) + 1)
            return table[ids.flatten()]
        ids = torch.arange(g, device=table.device)[:, None] * b + torch.arange(g, device=table.device) + 1
        block = table[ids].permute(2, 0, 1)  # (d, g, g)
        return resize_grid(block, (h, w)).flatten(1).transpose(0, 1)

    def _image_positions_in_graph(self, grid: tuple[int, int], table: Tensor) -> Tensor:
        """:meth:`image_positions` with the lookup-or-resize choice made by a tensor ``where`` (same values).

        For dynamic-shape export, where ``h`` and ``w`` are symbolic: both paths are computed (the lookup ids
        clamped into the table so that they stay valid when the resize wins) and the official rule picks one.
        """
        h, w = grid
        g, b = self.cfg.orig_patch_grid, self.cfg.image_bucket_size
        dev = table.device
        rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
        ids = (rows[:, None] * b + cols + 1).clamp(max=table.shape[0] - 1)
        direct = table[ids.flatten()]
        block_ids = torch.arange(g, device=dev)[:, None] * b + torch.arange(g, device=dev) + 1
        resized = resize_grid(table[block_ids].permute(2, 0, 1), (h, w), always_resize=True).flatten(1).transpose(0, 1)
        # h and w as graph values (not Python ints), so the condition is evaluated per input at run time.
        h_t, w_t = rows.max() + 1, cols.max() + 1
        lookup = (h_t * w_t <= g * g) & (h_t <= b) & (w_t <= b)
        return torch.where(lookup, direct, resized)

    # -- biases -----------------------------------------------------------------------------------------------
    def image_rel_bias(self, idx: int, grid: tuple[int, int], anchor: Tensor | None = None) -> Tensor:
        """(H, N, N) 2-D relative bias, computed on the pre-training grid and resized to ``grid``."""
        table = anchored(self.image_rel_pos_table_list[idx].weight, anchor)
        return relative_bias_on_grid(table, self.cfg.orig_patch_grid, grid, self.cfg.image_bucket_size,
                                     always_resize=self.shape_agnostic)

    def text_rel_bias(self, idx: int, length: int, device: torch.device, anchor: Tensor | None = None) -> Tensor:
        index = token_bucket_index(length, self.cfg.token_bucket_size, self.cfg.max_source_positions, device)
        return anchored(self.token_rel_pos_table_list[idx].weight, anchor)[index].permute(2, 0, 1)

    def position_biases(self, grid: tuple[int, int], lt: int, dtype: torch.dtype, device: torch.device,
                        anchor: Tensor | None = None) -> PositionBiases:
        """The positions and per-layer attention biases for a grid and a text length; built once per shape at
        inference (see :mod:`.bias_cache`), every call otherwise (training: the tables receive gradients).
        ``anchor``: see :func:`.position.anchored` (an export that computes its biases per call)."""
        with full_precision(device):
            if anchor is not None or not caching_allowed(self):
                return self._position_biases(grid, lt, dtype, device, anchor)
            key = (tuple(grid), lt, dtype, str(device))
            return self.bias_cache.get(key, self.parameters(),
                                       lambda: self._position_biases(grid, lt, dtype, device))

    def _position_biases(self, grid: tuple[int, int], lt: int, dtype: torch.dtype, device: torch.device,
                         anchor: Tensor | None = None) -> PositionBiases:
        text_pos = self.pos_ln(anchored(self.embed_positions.weight[:lt], anchor))
        pos = torch.cat([self.image_pos_ln(self.image_positions(grid, anchor)), text_pos], dim=0).unsqueeze(0)
        abs_bias = absolute_bias(self.pos_q_linear, self.pos_k_linear, pos, pos, self.cfg.heads, self.pos_scaling)
        g = self.cfg.orig_patch_grid
        if anchor is not None and tuple(grid) == (g, g) and not self.shape_agnostic:
            # Per-call biases on the pre-training grid: one gather per layer from [image offsets; text buckets; 0]
            # with a shared constant index, instead of a chain of flips, unfolds and copies of (H, L, L) tensors.
            index = self._rel_index(lt, device)
            zero = anchor.new_zeros(1, self.cfg.heads)
            layers = [(abs_bias + gather_rows(torch.cat([anchored(img.weight, anchor), anchored(txt.weight, anchor),
                                                         zero]), index)).to(dtype)
                      for img, txt in zip(self.image_rel_pos_table_list, self.token_rel_pos_table_list)]
            return PositionBiases(pos, layers)
        # Relative biases touch only the image x image and text x text blocks; assembled by concatenation (an
        # in-place slice assignment exports as Transpose/ScatterND copies of the whole (H, L, L) bias per layer).
        layers = [(abs_bias + block_diagonal(self.image_rel_bias(i, grid, anchor),
                                             self.text_rel_bias(i, lt, device, anchor))).to(dtype)
                  for i in range(len(self.layers))]
        return PositionBiases(pos, layers)

    def _rel_index(self, lt: int, device: torch.device) -> Tensor:
        """(N + Lt, N + Lt) rows of ``cat([image table, text table, zero row])`` that the pre-training grid's
        relative bias reads: the image block's 2-D offsets, the text block's buckets, the zero row elsewhere."""
        g, b = self.cfg.orig_patch_grid, self.cfg.image_bucket_size
        n, n_img = g * g, self.image_rel_pos_table_list[0].num_embeddings
        n_txt = self.token_rel_pos_table_list[0].num_embeddings
        index = torch.full((n + lt, n + lt), n_img + n_txt, dtype=torch.long, device=device)
        index[:n, :n] = grid_relative_index(g, g, b, device)
        index[n:, n:] = n_img + token_bucket_index(lt, self.cfg.token_bucket_size, self.cfg.max_source_positions,
                                                   device)
        return index

    def _load_from_state_dict(self, *args, **kwargs):  # noqa: ANN002, ANN003 - torch signature
        self.bias_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, patches: Tensor, grid: tuple[int, int], src_tokens: Tensor,
                check_padding: bool = True) -> EncoderOutput:
        """patches: (B, h*w, d) already through :meth:`embed_patches`; src_tokens: (B, Lt).

        ``check_padding=False`` skips looking for ``<pad>`` in the text (a host sync on a GPU) when the caller
        knows there is none, as with the single IFSeg prompt.
        """
        n, lt = patches.shape[1], src_tokens.shape[1]
        if n != grid[0] * grid[1]:
            raise ValueError(f"{n} image tokens do not form a {grid[0]}x{grid[1]} grid")
        x = torch.cat([patches, self.embed_text(src_tokens)], dim=1)
        padding_mask = None
        text_pad = src_tokens.eq(PAD_ID)
        if check_padding and bool(text_pad.any()):
            padding_mask = torch.cat([text_pad.new_zeros(src_tokens.shape[0], n), text_pad], dim=1)
            x = x * (~padding_mask).unsqueeze(-1).to(x.dtype)

        anchor = bias_anchor(patches) if self.runtime_biases else None
        biases = self.position_biases(grid, lt, x.dtype, x.device, anchor)
        for layer, bias in zip(self.layers, biases.layers):
            x = layer(x, bias, padding_mask)
        return EncoderOutput(self.layer_norm(x), biases.pos, padding_mask, grid)

