"""A small convolutional image encoder with SAM's contract, for models trained from scratch on little data.

SAM's ViT needs SA-1B-scale data (or MAE pretraining) before it localises anything; a ConvNeXt-style network has
the locality prior built in and learns from a few hundred images on a CPU. It keeps the ViT encoder's contract —
normalised ``[B, 3, S, S]`` in, ``[B, C, S/16, S/16]`` out, an ``img_size`` attribute — so the prompt encoder,
mask decoder, predictor, automatic generator and browser decoder work unchanged.

Detail path: the decoder rebuilds masks at stride 4 with two 2×2 stride-2 transposed convolutions, so every
stride-4 output pixel is a function of its one stride-16 embedding cell. Stride-4 and stride-8 features are
therefore folded into the embedding with pixel-unshuffle (sub-cell position → channels), which lets the decoder
put that detail back exactly where it came from instead of guessing boundaries inside a 16-pixel cell.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segany.modeling.common import LayerNorm2d, drop_path


class ConvNeXtBlock(nn.Module):
    """Depthwise 7×7 conv → LayerNorm → MLP (×4) → residual; the MLP runs channels-last as two linears."""

    def __init__(self, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + drop_path(y, self.drop_path, self.training)


class ConvImageEncoder(nn.Module):
    """Three ConvNeXt stages at strides 4, 8 and 16, a detail path from strides 4 and 8, and SAM's neck.

    Arguments:
      img_size: square input side (a multiple of 16).
      dims: channels of the three stages.
      depths: blocks per stage.
      out_chans: embedding channels (the prompt encoder's ``embed_dim``).
      detail_chans: channels per stride-4 pixel folded into the embedding (stride 8 gets twice as many).
      drop_path_rate: stochastic depth, rising linearly over the blocks.
    """

    def __init__(
        self,
        img_size: int = 512,
        dims: tuple[int, ...] = (48, 96, 192),
        depths: tuple[int, ...] = (2, 2, 4),
        out_chans: int = 128,
        detail_chans: int = 8,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(dims) != 3 or len(depths) != 3:
            raise ValueError("the convolutional encoder has exactly 3 stages (strides 4, 8, 16)")
        if img_size % 16:
            raise ValueError(f"img_size {img_size} must be a multiple of 16")
        self.img_size = img_size
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0]))
        self.downsample = nn.ModuleList(
            nn.Sequential(LayerNorm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2))
            for i in range(2)
        )
        self.stages = nn.ModuleList()
        start = 0
        for dim, depth in zip(dims, depths, strict=True):
            self.stages.append(nn.Sequential(*(ConvNeXtBlock(dim, rates[start + j]) for j in range(depth))))
            start += depth
        self.detail4 = nn.Conv2d(dims[0], detail_chans, 1)
        self.detail8 = nn.Conv2d(dims[1], 2 * detail_chans, 1)
        fused = dims[2] + 16 * detail_chans + 4 * 2 * detail_chans
        self.neck = nn.Sequential(
            nn.Conv2d(fused, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s4 = self.stages[0](self.stem(x))
        s8 = self.stages[1](self.downsample[0](s4))
        s16 = self.stages[2](self.downsample[1](s8))
        detail = [F.pixel_unshuffle(self.detail4(s4), 4), F.pixel_unshuffle(self.detail8(s8), 2)]
        return self.neck(torch.cat([s16, *detail], dim=1))
