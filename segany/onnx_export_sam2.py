"""Export SAM 2's prompt encoder + mask decoder + mask resize to ONNX (`segany export-onnx` with a SAM 2 model).

SAM 2's decoder reads more of the image than SAM's: besides the stride-16 embedding it adds the encoder's stride-8
and stride-4 features (already projected by ``conv_s1`` / ``conv_s0``) inside its output upscaling, so the graph
takes them as two more inputs. The prompt side is SAM's (`SamDecoderOnnx`'s point and mask embedding), with SAM 2's
conventions: a box is two points labelled 2 and 3, and the prompt encoder always appends one padding point.

Inputs (float32): ``image_embeddings`` 1×C×h×w (`SamPredictor.features`: the stride-16 features with SAM 2's
no-memory token added), ``high_res_feats_0`` 1×C/8×4h×4w and ``high_res_feats_1`` 1×C/4×2h×2w
(`sam2_image_inputs` unpacks them from `SamPredictor.interm_features`), ``point_coords`` 1×N×2 (x, y in the
model's square input frame, i.e. after ``ResizeSquare.apply_coords``), ``point_labels`` 1×N (1 fg, 0 bg, 2/3 box
corners, -1 padding; the caller appends one (0, 0)/-1 padding point to every prompt, box or not, as SAM 2's
prompt encoder does), ``mask_input`` 1×1×4h×4w, ``has_mask_input`` [1], ``orig_im_size`` [2] = (H, W).

Outputs: ``masks`` 1×4×H×W logits (threshold at 0; the low-res logits resized straight to the image, as SAM 2),
``iou_predictions`` 1×4, ``low_res_masks`` 1×4×4h×4w clamped to ±32 (as SAM 2's predictor returns them, for
feeding back as ``mask_input``), ``object_score_logits`` 1×1. Token 0 is the single-mask output and tokens 1-3 the
three ambiguous masks; SAM 2's dynamic single-mask fallback (token 0 when it is stable, else the best of 1-3) and
the object score are left to the caller, which has every token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from segany.modeling.sam2 import Sam2
from segany.modeling.sam2_decoder import unpack_high_res
from segany.onnx_export import DEFAULT_OPSET, SamDecoderOnnx, graph_description, write_graph

SAM2_INPUT_NAMES = [
    "image_embeddings",
    "high_res_feats_0",
    "high_res_feats_1",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
]
SAM2_OUTPUT_NAMES = ["masks", "iou_predictions", "low_res_masks", "object_score_logits"]


class Sam2DecoderOnnx(SamDecoderOnnx):
    """SAM 2's prompt encoder + mask decoder + resize, without data-dependent control flow; weights are shared."""

    def __init__(self, sam: Sam2) -> None:
        super().__init__(sam)
        self.logit_limit = float(sam.low_res_logit_limit)

    def forward(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_mask(mask_input, has_mask_input)
        low_res, iou, obj = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            high_res_features=(high_res_feats_0, high_res_feats_1),
        )
        # The output size comes from the shapes of arange(H), arange(W): the tracer records them as dynamic ops.
        ys = torch.arange(orig_im_size[0].to(torch.int64))  # type: ignore[call-overload]
        xs = torch.arange(orig_im_size[1].to(torch.int64))  # type: ignore[call-overload]
        masks = F.interpolate(low_res, size=(ys.shape[0], xs.shape[0]), mode="bilinear", align_corners=False)
        low_res = torch.clamp(low_res, -self.logit_limit, self.logit_limit)
        return masks, iou, low_res, obj


def sam2_image_inputs(
    features: torch.Tensor, interm_features: torch.Tensor, sam: Sam2
) -> dict[str, torch.Tensor]:
    """The graph's three per-image inputs from `SamPredictor.features` / ``interm_features`` (packed)."""
    s0, s1 = unpack_high_res(interm_features, sam.mask_decoder.transformer_dim // 8)
    return {"image_embeddings": features, "high_res_feats_0": s0, "high_res_feats_1": s1}


def sam2_dummy_inputs(sam: Sam2, num_points: int = 3) -> dict[str, torch.Tensor]:
    """Example inputs of the right shapes (used for tracing and smoke runs)."""
    pe: Any = sam.prompt_encoder
    h, w = pe.image_embedding_size
    c = int(pe.embed_dim)
    size = int(pe.input_image_size[0])
    gen = torch.Generator().manual_seed(0)
    return {
        "image_embeddings": torch.randn(1, c, h, w, generator=gen),
        "high_res_feats_0": torch.randn(1, c // 8, 4 * h, 4 * w, generator=gen),
        "high_res_feats_1": torch.randn(1, c // 4, 2 * h, 2 * w, generator=gen),
        "point_coords": torch.randint(0, size, (1, num_points, 2), generator=gen).float(),
        "point_labels": torch.randint(0, 4, (1, num_points), generator=gen).float(),
        "mask_input": torch.zeros(1, 1, 4 * h, 4 * w),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([1500.0, 2250.0]),
    }


def export_sam2_decoder(
    sam: Sam2, out: str | Path, *, opset: int = DEFAULT_OPSET, quantize: bool = False
) -> dict[str, Any]:
    """Write SAM 2's decoder graph to ``out`` (with ``quantize``, dynamic int8 weights in its place and the fp32
    graph kept as ``<out>.fp32.onnx``); returns the description `segany export-onnx` prints."""
    if opset < 16:
        raise ValueError("opset must be >= 16")
    model = Sam2DecoderOnnx(sam).eval()
    write_graph(
        model,
        sam2_dummy_inputs(sam),
        out,
        SAM2_INPUT_NAMES,
        SAM2_OUTPUT_NAMES,
        opset=opset,
        quantize=quantize,
    )
    pe: Any = sam.prompt_encoder
    h, w = map(int, pe.image_embedding_size)
    c = int(pe.embed_dim)
    return graph_description(
        sam, out, SAM2_INPUT_NAMES, SAM2_OUTPUT_NAMES, opset=opset, quantize=quantize
    ) | {
        "high_res_shapes": [[1, c // 8, 4 * h, 4 * w], [1, c // 4, 2 * h, 2 * w]],
    }
