"""Official MobileSAM, HQ-SAM and Light HQ-SAM models (the test oracles) for a segany `SamConfig`, and random
weights shared by both implementations.

* HQ-SAM and Light HQ-SAM: ``segment_anything_hq`` 0.3 (its ViT returns the early features, its decoder is
  ``MaskDecoderHQ``, its predictor takes ``hq_token_only``).
* MobileSAM: the official SAM 1.0 model and predictor (``segment_anything``) around the TinyViT of
  ``segment_anything_hq``, whose forward returns the embedding alone, as MobileSAM's own TinyViT does.

TinyViT's attention biases: the official builders call ``.eval()`` before loading weights, and TinyViT caches
``attention_biases[:, idx]`` when eval mode is set, so the official model would keep using the biases it was
built with. `load_official` calls ``.eval()`` again after loading, so the oracle uses the loaded biases, as
segany always does.
"""

from __future__ import annotations

import warnings

import torch
from oracle import assemble_official, official_decoder_args, official_vit
from torch import nn

from segany.build import SamConfig, build_sam
from segany.checkpoint import load_weights_into
from segany.modeling import Sam


def _official_tiny_vit(c: SamConfig, embedding_only: bool) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's deprecation and registry-overwrite warnings on import
        from segment_anything_hq.modeling import TinyViT

    cls: type[nn.Module] = TinyViT
    if embedding_only:

        class MobileTinyViT(TinyViT):  # type: ignore[misc, valid-type]
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return super().forward(x)[0]

        cls = MobileTinyViT
    return cls(
        img_size=c.image_size,
        in_chans=3,
        num_classes=1000,  # the official builders keep the ImageNet classifier (unused)
        embed_dims=list(c.encoder_dims),
        depths=list(c.encoder_depths),
        num_heads=list(c.encoder_stage_heads),
        window_sizes=list(c.encoder_window_sizes),
        mlp_ratio=c.encoder_mlp_ratio,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


def build_official(config: SamConfig) -> nn.Module:
    """The official model of a vit / tiny_vit config, plain (MobileSAM / SAM) or with the HQ token; eval mode."""
    c = config
    if c.hq_token:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import segment_anything_hq.modeling as modeling
    else:
        import segment_anything.modeling as modeling
    if c.encoder_type == "tiny_vit":
        encoder = _official_tiny_vit(c, embedding_only=not c.hq_token)
        vit_dim = c.encoder_dims[2]
    else:
        encoder = official_vit(c, modeling)
        vit_dim = c.encoder_embed_dim

    def decoder() -> nn.Module:
        args = official_decoder_args(c, modeling)
        return modeling.MaskDecoderHQ(**args, vit_dim=vit_dim) if c.hq_token else modeling.MaskDecoder(**args)

    # eval mode before the weights are loaded, as the official builders do
    return assemble_official(c, modeling, encoder, decoder)


def random_state_dict(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.state_dict()`` filled with seeded random values of a trained network's scale:
    norm scales around 1, BatchNorm running variances in [0.5, 1.5], weights ~ 1/sqrt(fan-in), tokens and
    position tables ~0.2, TinyViT attention biases ~0.5 (large enough to move the logits), integer counters
    random too."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            v = torch.randint(0, 1000, t.shape, generator=g)
        elif name.endswith("running_var"):
            v = 0.5 + torch.rand(t.shape, generator=g)
        elif t.ndim == 1 and name.endswith("weight"):  # LayerNorm / LayerNorm2d / BatchNorm scales
            v = 1.0 + 0.1 * torch.randn(t.shape, generator=g)
        elif name.endswith("attention_biases"):
            v = 0.5 * torch.randn(t.shape, generator=g)
        elif t.ndim >= 2 and "rel_pos" not in name and "embed" not in name and "token" not in name:
            v = torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5
        else:
            v = 0.2 * torch.randn(t.shape, generator=g)
        out[name] = v.to(t.dtype)
    return out


def load_official(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load strictly, then set eval mode again so that TinyViT refreshes its cached attention biases from the
    loaded weights (the official builders set it before loading)."""
    model.load_state_dict(state_dict, strict=True)
    model.eval()


def family_twins(config: SamConfig, seed: int = 0) -> tuple[Sam, nn.Module, dict[str, torch.Tensor]]:
    """(segany model, official model, the official state_dict both loaded): identical random weights. segany
    loads through its strict loader, which drops exactly TinyViT's unused classifier keys."""
    theirs = build_official(config)
    sd = random_state_dict(theirs, seed)
    load_official(theirs, sd)
    ours = build_sam(config)
    load_weights_into(ours, sd)
    return ours.eval(), theirs, sd
