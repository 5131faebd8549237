"""Builds the official `segment_anything` model (the test oracle) for any SamConfig and gives both
implementations the same random weights — every parameter randomised, including the rel-pos tables, which
are zero at init and would otherwise hide relative-position bugs."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from segany.build import SamConfig, build_sam
from segany.modeling import Sam


def official_vit(c: SamConfig, modeling: Any) -> nn.Module:
    """The official ViT image encoder of ``c`` from ``modeling`` (``segment_anything.modeling`` or a package with
    the same classes, such as ``segment_anything_hq.modeling``)."""
    return modeling.ImageEncoderViT(
        depth=c.encoder_depth,
        embed_dim=c.encoder_embed_dim,
        img_size=c.image_size,
        mlp_ratio=c.encoder_mlp_ratio,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=c.encoder_num_heads,
        patch_size=c.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=c.encoder_global_attn_indexes,
        window_size=c.window_size,
        out_chans=c.prompt_embed_dim,
    )


def official_decoder_args(c: SamConfig, modeling: Any) -> dict[str, Any]:
    """The official mask decoder's constructor arguments for ``c`` (its two-way transformer from ``modeling``)."""
    return dict(
        num_multimask_outputs=3,
        transformer=modeling.TwoWayTransformer(
            depth=c.decoder_depth,
            embedding_dim=c.prompt_embed_dim,
            mlp_dim=c.decoder_mlp_dim,
            num_heads=c.decoder_num_heads,
        ),
        transformer_dim=c.prompt_embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=c.iou_head_hidden_dim,
    )


def assemble_official(
    c: SamConfig, modeling: Any, image_encoder: nn.Module, make_decoder: Callable[[], nn.Module]
) -> nn.Module:
    """The official ``Sam`` of ``modeling`` around the given encoder, with ``c``'s prompt encoder, the decoder
    ``make_decoder`` builds and ``c``'s pixel statistics, in eval mode (as the official builders leave it).

    The modules are built in the official builders' order (encoder, prompt encoder, decoder), so that tests that
    keep some of the default initialisation draw the same random numbers."""
    grid = c.image_size // c.patch_size
    model = modeling.Sam(
        image_encoder=image_encoder,
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=c.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(c.image_size, c.image_size),
            mask_in_chans=c.mask_in_chans,
        ),
        mask_decoder=make_decoder(),
        pixel_mean=list(c.pixel_mean),
        pixel_std=list(c.pixel_std),
    )
    return model.eval()


def build_official(config: SamConfig) -> nn.Module:
    import segment_anything.modeling as modeling

    c = config
    encoder = official_vit(c, modeling)
    return assemble_official(
        c, modeling, encoder, lambda: modeling.MaskDecoder(**official_decoder_args(c, modeling))
    )


def randomize_(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Give every parameter and persistent buffer a random value scaled like a trained network's."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, t in model.state_dict().items():
        if name.endswith(
            ("norm1.weight", "norm2.weight", "norm3.weight", "norm4.weight", "norm_final_attn.weight")
        ) or (
            t.ndim == 1
            and "weight" in name
            and ("neck" in name or "output_upscaling" in name or "mask_downscaling" in name)
        ):
            v = 1.0 + 0.1 * torch.randn(t.shape, generator=g)
        elif t.ndim >= 2 and "rel_pos" not in name and "embed" not in name:
            fan_in = t[0].numel() if t.ndim > 1 else t.numel()
            v = torch.randn(t.shape, generator=g) / fan_in**0.5
        else:
            v = 0.2 * torch.randn(t.shape, generator=g)
        sd[name] = v.to(t.dtype)
    model.load_state_dict(sd)
    return sd


def twin_models(config: SamConfig, seed: int = 0) -> tuple[Sam, nn.Module]:
    """(segany model, official model) with identical random weights."""
    ours = build_sam(config)
    sd = randomize_(ours, seed)
    theirs = build_official(config)
    theirs.load_state_dict(sd)
    return ours, theirs


def amg_twin_models(config: SamConfig, seed: int, logit_gain: float = 30.0) -> tuple[nn.Module, Sam]:
    """(official, segany) with identical random weights perturbed around the default init, and hypernetwork
    outputs scaled so random models give logits large enough for the automatic generator's thresholds."""
    torch.manual_seed(seed)
    off = build_official(config)
    g = torch.Generator().manual_seed(seed)
    sd = off.state_dict()
    for v in sd.values():
        if v.is_floating_point():
            scale = max(float(v.std()) if v.numel() > 1 else 0.0, 0.05)
            v.add_(torch.randn(v.shape, generator=g) * scale * 0.5)
    # Random hypernetworks give logits of about +-0.1; scale them so thresholds and stability mean something.
    for i in range(4):
        for name in ("weight", "bias"):
            sd[f"mask_decoder.output_hypernetworks_mlps.{i}.layers.2.{name}"] *= logit_gain
    off.load_state_dict(sd)
    ours = build_sam(config)
    ours.load_state_dict(sd)
    return off, ours
