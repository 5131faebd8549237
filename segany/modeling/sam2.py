"""SAM 2 / SAM 2.1 in image mode, with the interface of segany's `Sam`.

Composes the image encoder (Hiera trunk + FPN neck), SAM's prompt encoder with SAM 2's box convention, and SAM 2's
mask decoder, and owns SAM 2's pre- and post-processing: the image stretched to a 1024² square (no padding),
ImageNet mean/std on [0, 1] pixels, masks resized from the low-res logits straight to the image size, low-res
logits returned clamped to ±32.

`encode_image` gives what SAM 2's image predictor computes once per image: the stride-16 embedding with the
learned "no memory" token added (``no_mem_embed``), and the stride-4/8 features already projected by the
decoder's ``conv_s0``/``conv_s1``, packed into one tensor (`pack_high_res`). `SamPredictor` and the embedding
files carry that pair as they carry HQ-SAM's early features.

Parameter names are the checkpoints' (``image_encoder.trunk``, ``image_encoder.neck``, ``sam_prompt_encoder``,
``sam_mask_decoder``, ``no_mem_embed``); the video-memory weights of the files are kept as unused buffers
(`sam2_memory`). ``prompt_encoder`` and ``mask_decoder`` name the same modules as SAM's attributes do.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segany.modeling.fpn_neck import FpnNeck
from segany.modeling.hiera import Hiera
from segany.modeling.prompt_encoder import PromptEncoder
from segany.modeling.sam2_decoder import Sam2MaskDecoder, pack_high_res
from segany.modeling.sam2_memory import attach_stored_weights

# ImageNet statistics on [0, 1] pixels
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


class Sam2ImageEncoder(nn.Module):
    """Hiera trunk + FPN neck; `forward` returns the neck's levels at strides 4, 8 and 16.

    ``scalp`` coarsest levels are dropped from the output (SAM 2: 1, the stride-32 level, which still feeds the
    top-down path).
    """

    def __init__(self, trunk: Hiera, neck: FpnNeck, scalp: int = 1, img_size: int = 1024) -> None:
        super().__init__()
        if trunk.channel_list != neck.backbone_channel_list:
            raise ValueError(f"trunk channels {trunk.channel_list} != neck's {neck.backbone_channel_list}")
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.neck(self.trunk(x))
        return features[: len(features) - self.scalp]


class Sam2(nn.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"
    # the image is stretched to a square (`segany.transforms.ResizeSquare`), not resized by its longest side
    resize_mode: str = "square"
    # SamPredictor returns the low-res logits clamped to this magnitude (SAM 2's image predictor does)
    low_res_logit_limit: float = 32.0
    mask_refiner: Any = None
    # SAM 2's automatic mask generator's own filter defaults
    generator_defaults: dict[str, float] = {"pred_iou_thresh": 0.8, "stability_score_thresh": 0.95}  # noqa: RUF012
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(
        self,
        image_encoder: Sam2ImageEncoder,
        prompt_encoder: PromptEncoder,
        mask_decoder: Sam2MaskDecoder,
        video_memory: dict[str, tuple[int, ...]] | None = None,
        pixel_mean: tuple[float, ...] = PIXEL_MEAN,
        pixel_std: tuple[float, ...] = PIXEL_STD,
    ) -> None:
        """
        Arguments:
          video_memory: key → shape of the checkpoint's video-memory weights, kept as zero buffers
            (`sam2_memory.video_memory_layout`); None keeps none.
        """
        super().__init__()
        if not prompt_encoder.boxes_as_points:
            raise ValueError("SAM 2's prompt encoder takes boxes as points (boxes_as_points=True)")
        self.image_encoder = image_encoder
        self.sam_prompt_encoder = prompt_encoder
        self.sam_mask_decoder = mask_decoder
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, mask_decoder.transformer_dim))
        attach_stored_weights(self, video_memory or {})
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def prompt_encoder(self) -> PromptEncoder:
        return self.sam_prompt_encoder

    @property
    def mask_decoder(self) -> Sam2MaskDecoder:
        return self.sam_mask_decoder

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def image_size(self) -> int:
        return self.image_encoder.img_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a [0, 1] image already resized to image_size² (`ResizeSquare`); C×S×S or B×C×S×S."""
        return (x - self.pixel_mean) / self.pixel_std

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed B×3×S×S images → (embeddings B×C×S/16×S/16 with ``no_mem_embed`` added,
        high-resolution features after ``conv_s0``/``conv_s1``, packed B×(C/2 + C/4)×S/8×S/8)."""
        s4, s8, s16 = self.image_encoder(images)
        dec = self.sam_mask_decoder
        high_res = pack_high_res(dec.conv_s0(s4), dec.conv_s1(s8))
        B, C, H, W = s16.shape
        # added in the reference's token-major layout (HW x B x C), and viewed back: same values and strides
        embedding = (s16.flatten(2).permute(2, 0, 1) + self.no_mem_embed).permute(1, 2, 0).view(B, C, H, W)
        return embedding, high_res

    def embedding_weights(self) -> dict[str, torch.Tensor]:
        """The weights besides the image encoder's that `encode_image`'s output depends on (for hashing)."""
        dec = self.sam_mask_decoder
        convs = {
            f"sam_mask_decoder.{n}.{k}": v
            for n in ("conv_s0", "conv_s1")
            for k, v in getattr(dec, n).state_dict().items()
        }
        return {"no_mem_embed": self.no_mem_embed.detach(), **convs}

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Low-res logits B×K×h×w → logits at the original image size (bilinear, align_corners=False): the
        model input is the whole image stretched, so there is no padding to crop (``input_size`` is unused)."""
        return F.interpolate(masks.float(), tuple(original_size), mode="bilinear", align_corners=False)
