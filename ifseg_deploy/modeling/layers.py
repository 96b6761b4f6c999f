"""Pre-LN NormFormer transformer layers of OFA (encoder and decoder)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiheadAttention


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` computed in fp32 whatever the input dtype: under bf16/fp16 autocast the NormFormer norms
    read low-precision linear outputs, and a half-precision variance is the known transformer overflow. Same
    parameters and names, and a no-op change for fp32 inputs (nothing extra is traced)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class DropPath(nn.Module):
    """Stochastic depth with a per-sample mask (identity in eval mode or at rate 0)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x / keep * mask


class _NormFormerBlock(nn.Module):
    """What both layer kinds share: the FFN (fc1 -> fp32 erf GELU -> ffn_layernorm -> fc2) with its pre-LN,
    dropout and drop path. Parameters sit on the layer itself so fairseq names load unchanged."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, drop_path: float, eps: float) -> None:
        super().__init__()
        self.final_layer_norm = LayerNorm(d_model, eps=eps)
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.ffn_layernorm = LayerNorm(ffn_dim, eps=eps)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.dropout = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def residual(self, x: Tensor, h: Tensor) -> Tensor:
        return x + self.drop_path(self.dropout(h))

    def feed_forward(self, x: Tensor) -> Tensor:
        h = self.fc1(self.final_layer_norm(x))
        h = F.gelu(h.float()).type_as(h)
        return self.residual(x, self.fc2(self.ffn_layernorm(h)))


class EncoderLayer(_NormFormerBlock):
    """x + DropPath(Dropout(attn_ln(MHA(LN(x))))), then the same around the NormFormer FFN."""

    def __init__(self, d_model: int, ffn_dim: int, heads: int, *, scale_factor: float, dropout: float,
                 attention_dropout: float, drop_path: float, eps: float) -> None:
        super().__init__(d_model, ffn_dim, dropout, drop_path, eps)
        self.self_attn = MultiheadAttention(d_model, heads, scale_factor, attention_dropout)
        self.self_attn_layer_norm = LayerNorm(d_model, eps=eps)
        self.attn_ln = LayerNorm(d_model, eps=eps)

    def forward(self, x: Tensor, bias: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        h = self.self_attn_layer_norm(x)
        x = self.residual(x, self.attn_ln(self.self_attn(h, h, bias, key_padding_mask)))
        return self.feed_forward(x)


class DecoderLayer(_NormFormerBlock):
    """Causal self-attention, cross-attention to the encoder, FFN; each pre-LN with a NormFormer mid LN."""

    def __init__(self, d_model: int, ffn_dim: int, heads: int, *, scale_factor: float, dropout: float,
                 attention_dropout: float, drop_path: float, eps: float) -> None:
        super().__init__(d_model, ffn_dim, dropout, drop_path, eps)
        self.self_attn = MultiheadAttention(d_model, heads, scale_factor, attention_dropout)
        self.self_attn_layer_norm = LayerNorm(d_model, eps=eps)
        self.self_attn_ln = LayerNorm(d_model, eps=eps)
        self.encoder_attn = MultiheadAttention(d_model, heads, scale_factor, attention_dropout)
        self.encoder_attn_layer_norm = LayerNorm(d_model, eps=eps)
        self.cross_attn_ln = LayerNorm(d_model, eps=eps)

    def forward(self, x: Tensor, memory: Tensor, self_bias: Tensor, cross_bias: Tensor,
                memory_padding_mask: Tensor | None = None) -> Tensor:
        h = self.self_attn_layer_norm(x)
        x = self.residual(x, self.self_attn_ln(self.self_attn(h, h, self_bias)))
        h = self.encoder_attn_layer_norm(x)
        x = self.residual(x, self.cross_attn_ln(self.encoder_attn(h, memory, cross_bias, memory_padding_mask)))
        return self.feed_forward(x)
