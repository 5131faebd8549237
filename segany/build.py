"""Builders per model size and the `sam_model_registry` (same keys and call style as the official one).

Size-specific numbers live only here, in `SamConfig` presets. A config is a plain dataclass so that
checkpoints can carry it (segany's own checkpoints embed it as JSON metadata).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from segany.build_sam2 import CHECKPOINT_FILES as SAM2_CHECKPOINT_FILES
from segany.build_sam2 import SAM2_BUILDERS
from segany.modeling import (
    ConvImageEncoder,
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TinyViT,
    TwoWayTransformer,
)
from segany.modeling.sam2 import Sam2

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "segany_default.safetensors"


@dataclass(frozen=True)
class SamConfig:
    """Every architecture number of a SAM model. The defaults are ViT-B's."""

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    encoder_mlp_ratio: float = 4.0
    window_size: int = 14
    image_size: int = 1024
    patch_size: int = 16
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    drop_path_rate: float = field(default=0.0, compare=False)
    # "vit" (SAM's encoder, the fields above), "conv" (`ConvImageEncoder`: dims, depths, detail_chans below) or
    # "tiny_vit" (`TinyViT`, MobileSAM's: four stages of dims, depths, stage_heads, window_sizes below); the
    # last two have stride 16 (patch_size 16)
    encoder_type: str = "vit"
    encoder_dims: tuple[int, ...] = (48, 96, 192)
    encoder_depths: tuple[int, ...] = (2, 2, 4)
    encoder_detail_chans: int = 8
    encoder_stage_heads: tuple[int, ...] = (2, 4, 5, 10)
    encoder_window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    # HQ-SAM: the mask decoder's extra output token fed by the encoder's early features (vit and tiny_vit)
    hq_token: bool = False

    def __post_init__(self) -> None:
        if self.encoder_type not in ("vit", "conv", "tiny_vit"):
            raise ValueError(f"encoder_type must be 'vit', 'conv' or 'tiny_vit', got {self.encoder_type!r}")
        if self.encoder_type != "vit" and self.patch_size != 16:
            raise ValueError(f"the {self.encoder_type} encoder has stride 16: patch_size must be 16")
        if self.encoder_type == "tiny_vit" and not (
            len(self.encoder_dims)
            == len(self.encoder_depths)
            == len(self.encoder_stage_heads)
            == len(self.encoder_window_sizes)
            == 4
        ):
            raise ValueError("tiny_vit needs four encoder_dims, depths, stage_heads and window_sizes")
        if self.hq_token and self.encoder_type == "conv":
            raise ValueError("hq_token needs a vit or tiny_vit encoder (early features)")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}"
            )
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError("encoder_num_heads must divide encoder_embed_dim")
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            raise ValueError(f"global attention indexes {bad} outside 0..{self.encoder_depth - 1}")

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown SamConfig fields: {sorted(unknown)}")
        clean: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**clean)

    @classmethod
    def from_json(cls, text: str) -> SamConfig:
        return cls.from_dict(json.loads(text))


VIT_B = SamConfig()
VIT_L = SamConfig(
    encoder_embed_dim=1024,
    encoder_depth=24,
    encoder_num_heads=16,
    encoder_global_attn_indexes=(5, 11, 17, 23),
)
VIT_H = SamConfig(
    encoder_embed_dim=1280,
    encoder_depth=32,
    encoder_num_heads=16,
    encoder_global_attn_indexes=(7, 15, 23, 31),
)
# For tests: every code path of the real model (windows with padding, global blocks, rel-pos, full prompt
# encoder) at a cost of milliseconds. 256 px input → 16×16 embedding, windows of 7 (16 pads to 21).
TINY = SamConfig(
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    window_size=7,
    image_size=256,
    patch_size=16,
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)
# For tests: TINY's prompt encoder and decoder behind a small convolutional encoder (the default model's kind).
TINY_CONV = replace(
    TINY, encoder_type="conv", encoder_dims=(8, 16, 32), encoder_depths=(1, 1, 1), encoder_detail_chans=2
)
# MobileSAM: TinyViT-5M encoder, SAM's prompt encoder and mask decoder.
VIT_T = SamConfig(
    encoder_type="tiny_vit",
    encoder_dims=(64, 128, 160, 320),
    encoder_depths=(2, 2, 6, 2),
    encoder_stage_heads=(2, 4, 5, 10),
    encoder_window_sizes=(7, 7, 14, 7),
)
# HQ-SAM (ViT-B/L/H) and Light HQ-SAM (TinyViT): SAM plus the HQ output token.
HQ_VIT_B = replace(VIT_B, hq_token=True)
HQ_VIT_L = replace(VIT_L, hq_token=True)
HQ_VIT_H = replace(VIT_H, hq_token=True)
HQ_VIT_TINY = replace(VIT_T, hq_token=True)


def build_image_encoder(c: SamConfig) -> ImageEncoderViT | ConvImageEncoder | TinyViT:
    if c.encoder_type == "tiny_vit":
        return TinyViT(
            img_size=c.image_size,
            embed_dims=c.encoder_dims,
            depths=c.encoder_depths,
            num_heads=c.encoder_stage_heads,
            window_sizes=c.encoder_window_sizes,
            mlp_ratio=c.encoder_mlp_ratio,
            out_chans=c.prompt_embed_dim,
            drop_path_rate=c.drop_path_rate,
        )
    if c.encoder_type == "conv":
        return ConvImageEncoder(
            img_size=c.image_size,
            dims=c.encoder_dims,
            depths=c.encoder_depths,
            out_chans=c.prompt_embed_dim,
            detail_chans=c.encoder_detail_chans,
            drop_path_rate=c.drop_path_rate,
        )
    return ImageEncoderViT(
        img_size=c.image_size,
        patch_size=c.patch_size,
        embed_dim=c.encoder_embed_dim,
        depth=c.encoder_depth,
        num_heads=c.encoder_num_heads,
        mlp_ratio=c.encoder_mlp_ratio,
        out_chans=c.prompt_embed_dim,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),  # type: ignore[arg-type]
        use_rel_pos=True,
        rel_pos_zero_init=True,
        window_size=c.window_size,
        global_attn_indexes=c.encoder_global_attn_indexes,
        drop_path_rate=c.drop_path_rate,
    )


def build_sam(config: SamConfig, checkpoint: str | Path | None = None) -> Sam:
    """Build a SAM model from a config; load weights strictly if a checkpoint is given."""
    c = config
    grid = c.embedding_size
    encoder = build_image_encoder(c)
    hq_vit_dim = None
    if c.hq_token:
        assert not isinstance(encoder, ConvImageEncoder)  # refused by SamConfig
        hq_vit_dim = encoder.interm_dim
    model = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=c.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(c.image_size, c.image_size),
            mask_in_chans=c.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=c.decoder_depth,
                embedding_dim=c.prompt_embed_dim,
                mlp_dim=c.decoder_mlp_dim,
                num_heads=c.decoder_num_heads,
            ),
            transformer_dim=c.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=c.iou_head_hidden_dim,
            hq_vit_dim=hq_vit_dim,
        ),
        pixel_mean=c.pixel_mean,
        pixel_std=c.pixel_std,
    )
    model.eval()
    if checkpoint is not None:
        from segany.checkpoint import load_state_dict, load_weights_into

        load_weights_into(model, load_state_dict(checkpoint), checkpoint)
    return model


def build_sam_vit_b(checkpoint: str | Path | None = None) -> Sam:
    return build_sam(VIT_B, checkpoint)


def build_sam_vit_l(checkpoint: str | Path | None = None) -> Sam:
    return build_sam(VIT_L, checkpoint)


def build_sam_vit_h(checkpoint: str | Path | None = None) -> Sam:
    return build_sam(VIT_H, checkpoint)


def build_sam_tiny(checkpoint: str | Path | None = None) -> Sam:
    return build_sam(TINY, checkpoint)


def build_sam_vit_t(checkpoint: str | Path | None = None) -> Sam:
    """MobileSAM (official file ``mobile_sam.pt``; its unused TinyViT classifier keys are dropped)."""
    return build_sam(VIT_T, checkpoint)


def build_sam_hq_vit_b(checkpoint: str | Path | None = None) -> Sam:
    """HQ-SAM ViT-B (``sam_hq_vit_b.pth``)."""
    return build_sam(HQ_VIT_B, checkpoint)


def build_sam_hq_vit_l(checkpoint: str | Path | None = None) -> Sam:
    """HQ-SAM ViT-L (``sam_hq_vit_l.pth``)."""
    return build_sam(HQ_VIT_L, checkpoint)


def build_sam_hq_vit_h(checkpoint: str | Path | None = None) -> Sam:
    """HQ-SAM ViT-H (``sam_hq_vit_h.pth``)."""
    return build_sam(HQ_VIT_H, checkpoint)


def build_sam_hq_vit_tiny(checkpoint: str | Path | None = None) -> Sam:
    """Light HQ-SAM: TinyViT encoder and HQ decoder (``sam_hq_vit_tiny.pth``)."""
    return build_sam(HQ_VIT_TINY, checkpoint)


def build_sam_from_checkpoint(checkpoint: str | Path) -> Sam:
    """Build the architecture a segany checkpoint describes in its own metadata, then load it."""
    from segany.checkpoint import read_config, read_generator_defaults

    config = read_config(checkpoint)
    if config is None:
        raise ValueError(
            f"{checkpoint} carries no segany config; name its size instead (vit_b, vit_l, vit_h)"
        )
    sam = build_sam(config, checkpoint)
    sam.generator_defaults = read_generator_defaults(checkpoint)
    return sam


def build_sam_default(checkpoint: str | Path | None = None) -> Sam:
    """segany's own small model, trained here and shipped in the package (see MODEL.md)."""
    path = Path(checkpoint) if checkpoint is not None else DEFAULT_WEIGHTS
    if not path.exists():
        raise FileNotFoundError(
            f"segany's default weights are missing at {path}; pass --checkpoint with an official checkpoint "
            "and --model vit_b/vit_l/vit_h"
        )
    # No post-process by default: every surface (predictor, CLI, generator, the page's in-browser decoder)
    # shows the network's own mask for a prompt. The graph-cut refinement stays available on request
    # (`SamPredictor(sam, refiner=True)`, `--refine on`); it costs far more than a click's 50 ms budget.
    return build_sam_from_checkpoint(path)


sam_model_registry: dict[str, Callable[..., Sam | Sam2]] = {
    "default": build_sam_default,
    "vit_b": build_sam_vit_b,
    "vit_l": build_sam_vit_l,
    "vit_h": build_sam_vit_h,
    "tiny": build_sam_tiny,
    "vit_t": build_sam_vit_t,
    "hq_vit_b": build_sam_hq_vit_b,
    "hq_vit_l": build_sam_hq_vit_l,
    "hq_vit_h": build_sam_hq_vit_h,
    "hq_vit_tiny": build_sam_hq_vit_tiny,
    **SAM2_BUILDERS,  # sam2.1_hiera_{tiny,small,base_plus,large}, sam2_hiera_*: segany.build_sam2
}

CONFIGS: dict[str, SamConfig] = {
    "vit_b": VIT_B,
    "vit_l": VIT_L,
    "vit_h": VIT_H,
    "tiny": TINY,
    "vit_t": VIT_T,
    "hq_vit_b": HQ_VIT_B,
    "hq_vit_l": HQ_VIT_L,
    "hq_vit_h": HQ_VIT_H,
    "hq_vit_tiny": HQ_VIT_TINY,
}

# The released weights of each kind that needs a checkpoint (none can be downloaded here).
OFFICIAL_CHECKPOINTS: dict[str, str] = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_t": "mobile_sam.pt",
    "hq_vit_b": "sam_hq_vit_b.pth",
    "hq_vit_l": "sam_hq_vit_l.pth",
    "hq_vit_h": "sam_hq_vit_h.pth",
    "hq_vit_tiny": "sam_hq_vit_tiny.pth",
    **SAM2_CHECKPOINT_FILES,
}


def check_kind(kind: str) -> None:
    """Raise ValueError naming the choices if `kind` is not in the registry (one message for every entry point)."""
    if kind not in sam_model_registry:
        raise ValueError(
            f"unknown model kind {kind!r}; choose one of {', '.join(sorted(sam_model_registry))}"
        )


def load_model(
    kind: str = "default", checkpoint: str | Path | None = None, device: str = "cpu"
) -> Sam | Sam2:
    """Registry lookup with a clear error for an unknown kind; the model is put on `device` in eval mode."""
    check_kind(kind)
    if kind in OFFICIAL_CHECKPOINTS and checkpoint is None:
        raise ValueError(
            f"--model {kind} needs --checkpoint (the official {OFFICIAL_CHECKPOINTS[kind]}, or its .safetensors "
            "conversion; official weights cannot be downloaded here)"
        )
    return sam_model_registry[kind](checkpoint=checkpoint).to(device).eval()
