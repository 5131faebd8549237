"""The SAM wrapper: composes the three parts and owns the pixel normalisation, padding and mask
post-processing that turn an image into model input and low-res logits back into image-sized masks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segany.modeling.conv_encoder import ConvImageEncoder
from segany.modeling.image_encoder import ImageEncoderViT
from segany.modeling.mask_decoder import MaskDecoder
from segany.modeling.prompt_encoder import PromptEncoder
from segany.modeling.tiny_vit import TinyViT

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"
    # Post-processing `SamPredictor.predict` applies to its boolean masks by default (called as
    # ``refiner(rgb, logits, point_coords, point_labels, box)``); the default model's builder sets a graph cut.
    mask_refiner: Callable[..., Any] | None = None
    # The automatic generator's filter settings this model's authors recommend (e.g. ``pred_iou_thresh``), read
    # from its checkpoint's metadata; empty for official checkpoints (the generator's official defaults apply).
    generator_defaults: dict[str, float] = {}  # noqa: RUF012  (replaced per instance, never mutated)
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(
        self,
        image_encoder: ImageEncoderViT | ConvImageEncoder | TinyViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, ...] | list[float] = PIXEL_MEAN,
        pixel_std: tuple[float, ...] | list[float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        # not persistent: official checkpoints do not carry them
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def image_size(self) -> int:
        return self.image_encoder.img_size

    @property
    def is_hq(self) -> bool:
        """An HQ-SAM model: its decoder needs the encoder's early features (`encode_image`)."""
        return bool(getattr(self.mask_decoder, "hq", False))

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Preprocessed B×3×S×S images → (embeddings B×C×h×w, early features B×h×w×C' for an HQ-SAM decoder,
        else None)."""
        enc = self.image_encoder
        if not self.is_hq or isinstance(enc, ConvImageEncoder):  # (no HQ decoder has a conv encoder)
            return enc(images), None
        return enc.forward_with_interm(images)

    def forward(
        self, batched_input: list[dict[str, Any]], multimask_output: bool, hq_token_only: bool = False
    ) -> list[dict[str, torch.Tensor]]:
        """End-to-end prediction for a list of images, each with its own prompts (official semantics).

        Each dict: `image` 3×H×W already resized (long side = image_size), `original_size` (H, W), optional
        `point_coords` B×N×2, `point_labels` B×N, `boxes` B×4, `mask_inputs` B×1×4h×4w, all in the resized
        frame. ``hq_token_only``: HQ-SAM models only (see `MaskDecoder`). Unlike the reference this is not
        wrapped in no_grad, so it can be trained; wrap calls yourself.
        """
        images = torch.stack([self.preprocess(x["image"]) for x in batched_input], dim=0)
        embeddings, interms = self.encode_image(images)
        outputs = []
        for i, (record, emb) in enumerate(zip(batched_input, embeddings, strict=True)):
            points = None
            if "point_coords" in record:
                points = (record["point_coords"], record["point_labels"])
            sparse, dense = self.prompt_encoder(
                points=points, boxes=record.get("boxes"), masks=record.get("mask_inputs")
            )
            low_res, iou = self.mask_decoder(
                image_embeddings=emb.unsqueeze(0),
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
                hq_token_only=hq_token_only,
                interm_embeddings=None if interms is None else interms[i : i + 1],
            )
            masks = self.postprocess_masks(
                low_res, input_size=tuple(record["image"].shape[-2:]), original_size=record["original_size"]
            )
            outputs.append(
                {"masks": masks > self.mask_threshold, "iou_predictions": iou, "low_res_logits": low_res}
            )
        return outputs

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Low-res logits B×K×h×w → logits at the original image size: upsample to the padded input size,
        crop the padding, resize to the original (bilinear, align_corners=False, as the reference)."""
        s = self.image_size
        masks = F.interpolate(masks, (s, s), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a 0–255 C×H×W (or B×C×H×W) image and zero-pad it bottom/right to image_size."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        s = self.image_size
        return F.pad(x, (0, s - w, 0, s - h))
