"""Two-way transformer of the mask decoder: prompt tokens and image tokens attend to each other.

SAM 2's decoder runs the same transformer with two differences, both options here: its token MLPs are stored as
``mlp.layers.0/1`` (``token_mlp="layers"``; SAM's are ``mlp.lin1/lin2``, the same math), and its attention is
computed by ``scaled_dot_product_attention`` (``sdpa=True``), whose rounding differs from SAM's explicit softmax
by ~1e-7: each model is computed with its own reference's arithmetic.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from segany.modeling.common import MLP, MLPBlock


class TwoWayTransformer(nn.Module):
    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        token_mlp: Literal["lin", "layers"] = "lin",
        sdpa: bool = False,
    ) -> None:
        """
        Arguments:
          token_mlp: checkpoint layout of the token MLPs: "lin" (SAM: ``lin1/lin2``) or "layers" (SAM 2:
            ``layers.0/1``, ReLU only).
          sdpa: attention through ``scaled_dot_product_attention`` (SAM 2's arithmetic) instead of SAM's
            explicit softmax.
        """
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
                token_mlp=token_mlp,
                sdpa=sdpa,
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate, sdpa=sdpa
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Arguments:
          image_embedding: B×C×h×w; image_pe: B×C×h×w (or 1×C×h×w); point_embedding: B×N×C.
        Returns:
          (processed tokens B×N×C, processed image tokens B×hw×C).
        """
        keys = image_embedding.flatten(2).permute(0, 2, 1)  # B x hw x C
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token→image cross-attention, token MLP, image→token cross-attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
        token_mlp: Literal["lin", "layers"] = "lin",
        sdpa: bool = False,
    ) -> None:
        super().__init__()
        rate = attention_downsample_rate
        self.self_attn = Attention(embedding_dim, num_heads, sdpa=sdpa)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=rate, sdpa=sdpa)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp: nn.Module
        if token_mlp == "lin":
            self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        elif token_mlp == "layers" and activation is nn.ReLU:
            self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2)
        else:
            raise ValueError(
                f"token_mlp must be 'lin', or 'layers' with ReLU, got {token_mlp!r} with {activation}"
            )
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate=rate, sdpa=sdpa)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            # the first layer sees the raw prompt tokens: no residual, no extra positional term
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class Attention(nn.Module):
    """Multi-head attention whose internal width may be downscaled (`downsample_rate`) to save compute."""

    def __init__(
        self, embedding_dim: int, num_heads: int, downsample_rate: int = 1, sdpa: bool = False
    ) -> None:
        super().__init__()
        self.sdpa = sdpa
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)  # B x heads x N x c

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._split(self.q_proj(q))
        k = self._split(self.k_proj(k))
        v = self._split(self.v_proj(v))
        if self.sdpa:  # SAM 2's arithmetic
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            # explicit softmax(q kᵀ / √c) v: the same operations as SAM's reference, so results are bit-identical
            attn = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            out = torch.softmax(attn, dim=-1) @ v
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))
