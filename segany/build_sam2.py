"""Builders of SAM 2 and SAM 2.1 (image mode), one per released size, registered in `segany.build`.

The official checkpoint files (``sam2.1_hiera_tiny.pt`` …, ``sam2_hiera_tiny.pt`` …: the weights under
``"model"``), raw state dicts and ``.safetensors`` load unchanged through `segany.checkpoint`'s strict loader.
Size-specific numbers live only in the `Sam2Config` presets below (from SAM 2's released configs); the prompt
encoder, mask decoder and neck are the same for every size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from segany.modeling.fpn_neck import FpnNeck
from segany.modeling.hiera import Hiera
from segany.modeling.prompt_encoder import PromptEncoder
from segany.modeling.sam2 import Sam2, Sam2ImageEncoder
from segany.modeling.sam2_decoder import Sam2MaskDecoder
from segany.modeling.sam2_memory import video_memory_layout
from segany.modeling.transformer import TwoWayTransformer


@dataclass(frozen=True)
class Sam2Config:
    """The Hiera trunk's numbers (the rest of SAM 2 is the same for every size). Defaults: Hiera-B+."""

    embed_dim: int = 112
    num_heads: int = 2
    stages: tuple[int, ...] = (2, 3, 16, 3)
    global_att_blocks: tuple[int, ...] = (12, 16, 20)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
    # SAM 2.1 checkpoints carry two more video-memory weights (no_obj_embed_spatial, obj_ptr_tpos_proj)
    sam2_1: bool = True
    image_size: int = 1024
    d_model: int = 256
    drop_path_rate: float = 0.0


HIERA_T = Sam2Config(
    embed_dim=96,
    num_heads=1,
    stages=(1, 2, 7, 2),
    global_att_blocks=(5, 7, 9),
    window_pos_embed_bkg_spatial_size=(7, 7),
)
HIERA_S = replace(HIERA_T, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13))
HIERA_B_PLUS = Sam2Config()
HIERA_L = Sam2Config(
    embed_dim=144,
    num_heads=2,
    stages=(2, 6, 36, 4),
    global_att_blocks=(23, 33, 43),
    window_spec=(8, 4, 16, 8),
    window_pos_embed_bkg_spatial_size=(7, 7),
)

SIZES = {"tiny": HIERA_T, "small": HIERA_S, "base_plus": HIERA_B_PLUS, "large": HIERA_L}
# registry name → config; the official checkpoint of each is "{name}.pt"
SAM2_CONFIGS: dict[str, Sam2Config] = {
    **{f"sam2.1_hiera_{size}": c for size, c in SIZES.items()},
    **{f"sam2_hiera_{size}": replace(c, sam2_1=False) for size, c in SIZES.items()},
}
CHECKPOINT_FILES = {name: f"{name}.pt" for name in SAM2_CONFIGS}


def build_sam2(config: Sam2Config, checkpoint: str | Path | None = None) -> Sam2:
    """Build SAM 2 in image mode from a config; load weights strictly if a checkpoint is given."""
    c = config
    trunk = Hiera(
        embed_dim=c.embed_dim,
        num_heads=c.num_heads,
        stages=c.stages,
        global_att_blocks=c.global_att_blocks,
        window_spec=c.window_spec,
        window_pos_embed_bkg_spatial_size=c.window_pos_embed_bkg_spatial_size,
        drop_path_rate=c.drop_path_rate,
    )
    # top-down path into the stride-16 and stride-32 levels only; nearest-neighbour upsampling
    neck = FpnNeck(c.d_model, trunk.channel_list, fpn_top_down_levels=(2, 3), fpn_interp_model="nearest")
    grid = c.image_size // 16
    model = Sam2(
        image_encoder=Sam2ImageEncoder(trunk, neck, scalp=1, img_size=c.image_size),
        prompt_encoder=PromptEncoder(
            embed_dim=c.d_model,
            image_embedding_size=(grid, grid),
            input_image_size=(c.image_size, c.image_size),
            mask_in_chans=16,
            boxes_as_points=True,
        ),
        mask_decoder=Sam2MaskDecoder(
            transformer_dim=c.d_model,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=c.d_model, mlp_dim=2048, num_heads=8, token_mlp="layers", sdpa=True
            ),
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        video_memory=video_memory_layout(hidden_dim=c.d_model, sam2_1=c.sam2_1),
    )
    model.eval()
    if checkpoint is not None:
        from segany.checkpoint import load_state_dict, load_weights_into

        load_weights_into(model, load_state_dict(checkpoint), checkpoint)
    return model


def _builder(name: str) -> Callable[..., Sam2]:
    config = SAM2_CONFIGS[name]

    def build(checkpoint: str | Path | None = None) -> Sam2:
        return build_sam2(config, checkpoint)

    build.__name__ = "build_" + name.replace(".", "_")
    build.__doc__ = f"{name} in image mode (official weights: {CHECKPOINT_FILES[name]})."
    return build


# registry name → builder(checkpoint=None), as `segany.build.sam_model_registry`
SAM2_BUILDERS: dict[str, Callable[..., Sam2]] = {name: _builder(name) for name in SAM2_CONFIGS}
