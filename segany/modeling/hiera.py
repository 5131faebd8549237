"""Hiera, SAM 2's image trunk: a hierarchical vision transformer with no convolutions after the stem.

Four stages at strides 4, 8, 16 and 32. A 7×7 stride-4 convolution embeds the image; every block is pre-norm
multi-head attention (windowed, or global in a few blocks) plus an MLP. The first block of stages 2–4 halves
the resolution by max-pooling its queries and its skip connection, and doubles the width and the heads. The
position embedding is a small background table resized bicubically to the grid, plus a per-window table tiled
over it (Bolya et al., "Window attention is bugged", 2023).

Parameter names and shapes are those of SAM 2's checkpoints (``image_encoder.trunk.*``). Attention runs through
``scaled_dot_product_attention`` and the tensors keep the reference's memory layouts (the stage outputs are
channels-first views of channels-last grids), so the features equal the official code's bit for bit on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segany.modeling.common import MLP, drop_path
from segany.modeling.image_encoder import window_partition, window_unpartition


def pool_grid(x: torch.Tensor, pool: nn.Module | None) -> torch.Tensor:
    """Apply a 2-D pooling to a B×H×W×C grid (identity without one)."""
    if pool is None:
        return x
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Overlapping patch embedding (7×7 convolution, stride 4, padding 3); output B×H×W×C."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 96, kernel: int = 7, stride: int = 4) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel, stride=stride, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Self-attention over a B×H×W×C grid whose queries (and so its output grid) may be max-pooled.

    ``dim`` → ``dim_out``: the projections widen the features at a stage change.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).unbind(2)  # each B x HW x heads x c
        if self.q_pool is not None:
            q = pool_grid(q.reshape(B, H, W, -1), self.q_pool)
            H, W = q.shape[1:3]
            q = q.reshape(B, H * W, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(B, H, W, -1))  # B x H' x W' x dim_out


class MultiScaleBlock(nn.Module):
    """Pre-norm block: (windowed) attention with optional query pooling, then a GELU MLP.

    At a stage change (``dim != dim_out``) the skip connection is the normalised input projected to ``dim_out``
    and pooled like the queries. With query pooling the windows shrink by the stride as well, so every output
    window still comes from one input window.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        q_stride: tuple[int, int] | None = None,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_pool=self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=F.gelu)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x  # B x H x W x C
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = pool_grid(self.proj(x), self.pool)
        window = self.window_size
        if window > 0:
            H, W = x.shape[1:3]
            x, pad_hw = window_partition(x, window)
        x = self.attn(x)
        if window > 0:
            if self.q_stride:  # the pooled queries made smaller windows on a smaller grid
                window //= self.q_stride[0]
                H, W = shortcut.shape[1:3]
                pad_hw = (H + (-H) % window, W + (-W) % window)
            x = window_unpartition(x, window, pad_hw, (H, W))
        x = shortcut + drop_path(x, self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class Hiera(nn.Module):
    """The Hiera trunk; `forward` returns the last block's output of each stage (strides 4, 8, 16, 32).

    Arguments:
      embed_dim, num_heads: width and heads of stage 1 (multiplied by ``dim_mul`` / ``head_mul`` per stage).
      stages: blocks per stage.
      q_pool: how many stage changes pool the queries (by ``q_stride``).
      window_spec: attention window side per stage. A stage's first block still uses the previous stage's
        window (it pools from that grid), as in the reference.
      global_att_blocks: blocks with global attention instead.
      window_pos_embed_bkg_spatial_size: side of the background position table.
      drop_path_rate: stochastic depth, rising linearly over the blocks (training only).
    """

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: tuple[int, ...] = (2, 3, 16, 3),
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_spec: tuple[int, ...] = (8, 4, 14, 7),
        global_att_blocks: tuple[int, ...] = (12, 16, 20),
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError(f"{len(stages)} stages but {len(window_spec)} window sizes")
        depth = sum(stages)
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        if not 0 <= q_pool < len(stages):
            raise ValueError(f"q_pool must be in 0..{len(stages) - 1}, got {q_pool}")
        pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.patch_embed = PatchEmbed(embed_dim=embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # (also under a meta device)
        self.blocks = nn.ModuleList()
        stage = 0
        dim, heads = embed_dim, num_heads
        for i in range(depth):
            window = 0 if i in global_att_blocks else window_spec[stage]  # chosen before a stage change
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out, heads = int(dim * dim_mul), int(heads * head_mul)
                stage += 1
            self.blocks.append(
                MultiScaleBlock(
                    dim,
                    dim_out,
                    heads,
                    drop_path=rates[i],
                    q_stride=q_stride if i in pool_blocks else None,
                    window_size=window,
                )
            )
            dim = dim_out
        # channels of the outputs, lowest resolution first (the FPN neck's order)
        dims = [b.dim_out for b in self.blocks if isinstance(b, MultiScaleBlock)]
        self.channel_list = [dims[i] for i in reversed(self.stage_ends)]

    def position_embedding(self, hw: tuple[int, int]) -> torch.Tensor:
        """1×H×W×C: the background table resized to the grid plus the window table tiled over it."""
        pos = F.interpolate(self.pos_embed, size=hw, mode="bicubic")
        win = self.pos_embed_window
        pos = pos + win.tile([p // w for p, w in zip(pos.shape, win.shape, strict=True)])
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """B×3×S×S normalised image → [B×C_i×S/s×S/s for s = 4, 8, 16, 32]."""
        x = self.patch_embed(x)  # B x H x W x C
        x = x + self.position_embedding((x.shape[1], x.shape[2]))
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))  # a channels-first view, as the reference
        return outputs
