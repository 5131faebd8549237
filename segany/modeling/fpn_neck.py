"""SAM 2's feature pyramid neck: 1×1 lateral convolutions to a common width, and a top-down path.

A modified FPN (Lin et al. 2017) without output convolutions: each trunk level is projected to ``d_model``
channels; on the levels in ``fpn_top_down_levels`` the next coarser level's result, upsampled ×2, is added.
SAM 2's released models add top-down features only to the two coarsest levels (strides 16 and 32) and pass the
stride-4 and stride-8 levels through their lateral convolution alone.

The sine position encodings SAM 2 attaches to every level are used only by its video memory; in image mode they
are not computed. Parameter names follow SAM 2's checkpoints (``image_encoder.neck.convs.{i}.conv``, the
lowest resolution first).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class FpnNeck(nn.Module):
    """Arguments:
    d_model: output channels of every level.
    backbone_channel_list: the trunk's channels per level, lowest resolution first.
    fpn_top_down_levels: levels (0 = highest resolution) that receive the top-down path; None = all.
    fpn_interp_model: upsampling mode of the top-down path ("nearest" in SAM 2, or "bilinear").
    fuse_type: "sum", or "avg" (the sum halved).
    """

    def __init__(
        self,
        d_model: int,
        backbone_channel_list: list[int] | tuple[int, ...],
        fpn_top_down_levels: list[int] | tuple[int, ...] | None = None,
        fpn_interp_model: str = "bilinear",
        fuse_type: str = "sum",
    ) -> None:
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"fuse_type must be 'sum' or 'avg', got {fuse_type!r}")
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(c, d_model, kernel_size=1)))
            for c in self.backbone_channel_list
        )
        levels = range(len(self.convs)) if fpn_top_down_levels is None else fpn_top_down_levels
        self.fpn_top_down_levels = list(levels)
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Trunk outputs, highest resolution first → ``d_model``-channel maps in the same order."""
        if len(xs) != len(self.convs):
            raise ValueError(f"expected {len(self.convs)} feature levels, got {len(xs)}")
        n = len(xs) - 1
        out: list[torch.Tensor] = list(xs)
        prev: torch.Tensor | None = None
        for i in range(n, -1, -1):  # coarsest level first
            lateral = self.convs[n - i](xs[i])
            if i in self.fpn_top_down_levels and prev is not None:
                top_down = F.interpolate(
                    prev.to(torch.float32),
                    scale_factor=2.0,
                    mode=self.fpn_interp_model,
                    align_corners=None if self.fpn_interp_model == "nearest" else False,
                    antialias=False,
                )
                prev = lateral + top_down
                if self.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out[i] = prev
        return out
