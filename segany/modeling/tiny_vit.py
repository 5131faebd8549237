"""TinyViT image encoder (MobileSAM's, and Light HQ-SAM's): a convolutional stem and MBConv stage, then three
stages of windowed attention with a learned relative-position bias per head, joined by conv patch merging, and
SAM's neck down to the prompt embedding width.

Layout follows the official MobileSAM checkpoint (parameter names and shapes), so its weights load unchanged;
its unused ImageNet classifier (``head.*``, ``norm_head.*``) is not part of this module and is dropped by the
loader (`UNUSED_CHECKPOINT_KEYS`). Tokens travel between blocks as B×L×C with the grid size passed alongside,
and every reshape/permute keeps the reference's memory layout, so results are bit-identical to it.

Attention biases: the reference caches ``attention_biases[:, idx]`` when the module is put in eval mode, so
weights loaded *after* ``.eval()`` are ignored until eval mode is set again. Here the table is gathered from the
current parameter on every call: the loaded biases are always the ones used.

Input 1024×1024 → stride 4 (patch embedding, MBConv stage) → 8 → 16 → 16 (the last merge keeps the size) →
B×256×64×64, like SAM's ViT. `forward_with_interm` also returns the second stage's output (stride 16,
``embed_dims[2]`` channels, B×h×w×C): HQ-SAM's early features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segany.modeling.common import LayerNorm2d, drop_path
from segany.modeling.image_encoder import window_partition, window_unpartition


class ConvBN(nn.Module):
    """Convolution without bias followed by BatchNorm (names ``c`` and ``bn``, as in the checkpoints)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))


class ConvPatchEmbed(nn.Module):
    """Two 3×3 stride-2 ConvBN layers with GELU between: B×3×S×S → B×C×S/4×S/4."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, 3, 2, 1),
            nn.GELU(),
            ConvBN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block (1×1 expand, 3×3 depthwise, 1×1 project) on B×C×H×W; GELU after the sum."""

    def __init__(self, dim: int, expand_ratio: float, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = ConvBN(hidden, dim, bn_weight_init=0.0)
        self.act1, self.act2, self.act3 = nn.GELU(), nn.GELU(), nn.GELU()
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.act3(drop_path(y, self.drop_path, self.training) + x)


class PatchMerging(nn.Module):
    """1×1 conv, 3×3 depthwise conv with ``stride``, 1×1 conv (GELU between): → B×L'×out_dim tokens."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        """x: B×C×H×W, or B×L×C tokens on the ``hw`` grid → (B×L'×out_dim, new grid size)."""
        if x.ndim == 3:
            x = x.view(x.shape[0], hw[0], hw[1], -1).permute(0, 3, 1, 2)  # a strided view, as the reference
        x = self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))
        new_hw = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), new_hw


class TinyMlp(nn.Module):
    """LayerNorm → Linear → GELU → Linear (the norm lives inside the MLP, as in the checkpoints)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


def attention_bias_index(window_size: int) -> torch.Tensor:
    """N×N (N = ws²) index into a per-head table of ws² biases, one per absolute offset (|dy|, |dx|) between
    two positions of a window: index = |dy|·ws + |dx| (the order in which the reference numbers the offsets)."""
    r = torch.arange(window_size)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    y, x = yy.reshape(-1), xx.reshape(-1)
    return (y[:, None] - y[None, :]).abs() * window_size + (x[:, None] - x[None, :]).abs()


class TinyAttention(nn.Module):
    """Pre-norm multi-head attention over windows of tokens, with a learned bias per head and offset."""

    attention_bias_idxs: torch.Tensor

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)  # per head: [q | k | v]
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer("attention_bias_idxs", attention_bias_index(window_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B·windows)×N×C → same shape."""
        B, N, C = x.shape
        x = self.norm(x)
        d = self.head_dim
        # B x N x heads x 3d -> three B x heads x N x d
        q, k, v = (t.permute(0, 2, 1, 3) for t in self.qkv(x).view(B, N, self.num_heads, -1).split(d, dim=3))
        bias = self.attention_biases[:, self.attention_bias_idxs]  # heads x N x N, from the current weights
        attn = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class TinyViTBlock(nn.Module):
    """Windowed attention (zero-padding bottom/right) → residual → 3×3 depthwise ConvBN → MLP residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = TinyAttention(dim, num_heads, window_size)
        self.mlp = TinyMlp(dim, int(dim * mlp_ratio))
        pad = local_conv_size // 2
        self.local_conv = ConvBN(dim, dim, local_conv_size, 1, pad, groups=dim)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """x: B×L×C tokens on the ``hw`` grid → same shape."""
        H, W = hw
        B, L, C = x.shape
        ws = self.window_size
        shortcut = x
        if H == ws and W == ws:
            x = self.attn(x)
        else:
            windows, pad_hw = window_partition(x.view(B, H, W, C), ws)
            x = self.attn(windows.view(-1, ws * ws, C))
            x = window_unpartition(x.view(-1, ws, ws, C), ws, pad_hw, (H, W)).reshape(B, L, C)
        x = shortcut + drop_path(x, self.drop_path, self.training)
        x = self.local_conv(x.transpose(1, 2).reshape(B, C, H, W)).view(B, C, L).transpose(1, 2)
        return x + drop_path(self.mlp(x), self.drop_path, self.training)


class ConvStage(nn.Module):
    """The first stage: MBConv blocks on B×C×H×W, then patch merging into tokens."""

    def __init__(
        self, dim: int, depth: int, expand_ratio: float, drop_paths: list[float], downsample: PatchMerging
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio, p) for p in drop_paths[:depth])
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x, (x.shape[2], x.shape[3]))


class AttentionStage(nn.Module):
    """TinyViT blocks on B×L×C tokens, then (except in the last stage) patch merging."""

    def __init__(self, blocks: list[TinyViTBlock], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        for blk in self.blocks:
            x = blk(x, hw)
        if self.downsample is not None:
            x, hw = self.downsample(x, hw)
        return x, hw


class TinyViT(nn.Module):
    # keys of the official checkpoints (under ``image_encoder.``) that belong to TinyViT's ImageNet classifier,
    # which SAM never runs: a strict loader accepts exactly these and drops them
    UNUSED_CHECKPOINT_KEYS = ("head.weight", "head.bias", "norm_head.weight", "norm_head.bias")

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
        drop_path_rate: float = 0.0,
    ) -> None:
        """
        Arguments:
          img_size: side of the (square, padded) input image; the output grid is img_size // 16.
          embed_dims, depths: channels and blocks of the four stages (stage 0 is convolutional).
          num_heads, window_sizes: attention heads and window side per stage (stage 0's are unused).
          mlp_ratio: MLP width of the attention blocks; mbconv_expand_ratio: the MBConv blocks'.
          local_conv_size: kernel of the depthwise conv between attention and MLP.
          out_chans: embedding channels (the prompt encoder's ``embed_dim``).
          drop_path_rate: stochastic depth, rising linearly over all blocks (training only).
        """
        super().__init__()
        n = len(embed_dims)
        if n != 4 or not len(depths) == len(num_heads) == len(window_sizes) == n:
            raise ValueError("TinyViT has four stages: give four embed_dims, depths, num_heads, window_sizes")
        if img_size % 16:
            raise ValueError(f"img_size {img_size} must be a multiple of 16")
        self.img_size = img_size
        self.interm_dim = embed_dims[2]  # channels of `forward_with_interm`'s early features
        total = sum(depths)
        # stochastic depth per block, rising linearly (plain floats, so the meta device can build it too)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(depths[:i]) for i in range(n)]
        self.patch_embed = ConvPatchEmbed(in_chans, embed_dims[0])
        # every merge halves the grid except the last, so the output stride is 16 (4 · 2 · 2)
        merges = [PatchMerging(embed_dims[i], embed_dims[i + 1], 2 if i < n - 2 else 1) for i in range(n - 1)]
        self.layers = nn.ModuleList(
            [ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, rates[: depths[0]], merges[0])]
        )
        for i in range(1, n):
            blocks = [
                TinyViTBlock(
                    embed_dims[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    local_conv_size,
                    rates[starts[i] + j],
                )
                for j in range(depths[i])
            ]
            self.layers.append(AttentionStage(blocks, merges[i] if i < n - 1 else None))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B×3×S×S normalised, padded image → B×out_chans×(S/16)×(S/16)."""
        return self.forward_with_interm(x)[0]

    def forward_with_interm(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding B×out_chans×h×w, early features B×h×w×embed_dims[2]: the second stage's merged output)."""
        x, hw = self.layers[0](self.patch_embed(x))
        x, hw = self.layers[1](x, hw)
        B = x.shape[0]
        early = x.view(B, hw[0], hw[1], -1)
        for layer in self.layers[2:]:
            x, hw = layer(x, hw)
        # B x L x C tokens -> B x C x h x w (a strided view, as the reference feeds its neck)
        return self.neck(x.view(B, hw[0], hw[1], -1).permute(0, 3, 1, 2)), early
