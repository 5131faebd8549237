"""The official SAM 2 code (PyPI ``sam2==1.1.0``, a repackaging of facebookresearch/sam2) as a test oracle:
its own builder and released configs, optionally with a shallower trunk, and random weights shared with segany.

Every tensor of the state dict gets a seeded random value scaled like a trained network's: parameters and
persistent buffers alike (the video-memory weights, the positional-encoding frequencies, the position tables
and tokens that are zero at init).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from segany.build_sam2 import SAM2_CONFIGS, Sam2Config, build_sam2
from segany.modeling.sam2 import Sam2

_CONFIG_FILES = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}


def official_config_file(name: str) -> str:
    """Registry name (``sam2.1_hiera_tiny``) → the official package's config path."""
    version, size = name.split("_hiera_")
    return f"configs/{version}/{version}_hiera_{_CONFIG_FILES[size]}.yaml"


def build_official(name: str, stages: tuple[int, ...] | None = None, global_att_blocks: tuple[int, ...] = ()):
    """The official image-mode model of a registry name (CPU, eval, SAM 2's default post-processing), with
    the trunk's ``stages`` / ``global_att_blocks`` overridden for a depth-reduced variant."""
    from sam2.build_sam import build_sam2 as official_build

    overrides = []
    if stages is not None:
        overrides = [
            f"++model.image_encoder.trunk.stages=[{','.join(map(str, stages))}]",
            f"++model.image_encoder.trunk.global_att_blocks=[{','.join(map(str, global_att_blocks))}]",
        ]
    return official_build(official_config_file(name), None, device="cpu", hydra_overrides_extra=overrides)


def random_state_dict(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A random value for every tensor of ``model.state_dict()``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in model.state_dict().items():
        if t.ndim == 1 and name.endswith("weight"):  # LayerNorm / LayerNorm2d scales
            v = 1.0 + 0.1 * torch.randn(t.shape, generator=g)
        elif "gaussian_matrix" in name:  # random Fourier frequencies: N(0, 1) as at init
            v = torch.randn(t.shape, generator=g)
        elif t.ndim >= 2 and "embed" not in name and "tpos" not in name:  # weights: 1/sqrt(fan_in)
            v = torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5
        else:  # biases, position tables, learned tokens
            v = 0.2 * torch.randn(t.shape, generator=g)
        out[name] = v.to(t.dtype)
    return out


def twin_sam2(
    name: str,
    seed: int = 0,
    stages: tuple[int, ...] | None = None,
    global_att_blocks: tuple[int, ...] = (),
) -> tuple[Sam2, nn.Module, Sam2Config]:
    """(segany model, official model, segany config) with identical random weights."""
    config = SAM2_CONFIGS[name]
    if stages is not None:
        config = replace(config, stages=stages, global_att_blocks=global_att_blocks)
    theirs = build_official(name, stages, global_att_blocks)
    sd = random_state_dict(theirs, seed)
    theirs.load_state_dict(sd)
    ours = build_sam2(config)
    ours.load_state_dict(sd)
    return ours, theirs, config
