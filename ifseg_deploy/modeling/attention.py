"""OFA multi-head attention: additive position bias, fp32 softmax and NormFormer's per-head output scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultiheadAttention(nn.Module):
    """Attention whose scores are ``(q * (head_dim * scale_factor)^-0.5) k^T + bias + mask``.

    The per-head scale ``c_attn`` multiplies each head's output before ``out_proj`` (``--scale-heads``).
    Parameter names match fairseq's so official checkpoints load by name.
    """

    #: Use ``F.scaled_dot_product_attention`` (fused kernels; the same function within float rounding, and the bias
    #: still receives gradients). False runs the explicit formula below, the reference the tests hold SDPA to.
    use_sdpa: bool = True

    def __init__(self, d_model: int, heads: int, scale_factor: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = d_model // heads
        self.scaling = float(self.head_dim * scale_factor) ** -0.5
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.c_attn = nn.Parameter(torch.ones(heads))
        self.dropout = dropout

    def _split(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, bias: Tensor | None = None,
                key_padding_mask: Tensor | None = None) -> Tensor:
        """query (B, Lq, d), key = value (B, Lk, d); bias broadcastable to (B, H, Lq, Lk), already holding any
        causal mask; key_padding_mask (B, Lk) True where padded."""
        if self.use_sdpa:
            return self._sdpa(query, key, bias, key_padding_mask)
        q = self._split(self.q_proj(query) * self.scaling)
        k = self._split(self.k_proj(key))
        v = self._split(self.v_proj(key))
        scores = q @ k.transpose(-1, -2)
        if bias is not None:
            scores = scores + bias
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        # fp32 softmax as fairseq's utils.softmax: fp16 scores with a large bias would otherwise saturate.
        probs = F.softmax(scores.float(), dim=-1).type_as(scores)
        probs = F.dropout(probs, self.dropout, self.training)
        out = (probs @ v) * self.c_attn.view(1, -1, 1, 1).to(probs.dtype)
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def _sdpa(self, query: Tensor, key: Tensor, bias: Tensor | None, key_padding_mask: Tensor | None) -> Tensor:
        q = self._split(self.q_proj(query))
        k = self._split(self.k_proj(key))
        v = self._split(self.v_proj(key))
        mask = bias
        if key_padding_mask is not None:
            pad = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device)
            pad = pad.masked_fill(key_padding_mask, float("-inf"))[:, None, None, :]
            mask = pad if mask is None else mask + pad
        if mask is not None:
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out * self.c_attn.view(1, -1, 1, 1).to(out.dtype)
        return self.out_proj(out.transpose(1, 2).flatten(2))
