"""Export HQ-SAM's prompt encoder + mask decoder (+ mask postprocessing) to ONNX (`segany export-onnx` with an
``hq_vit_*`` model).

HQ-SAM's decoder reads one more image-side tensor than SAM's: its HQ token's mask is the product of the token's
MLP output with high-quality features, the upscaled SAM features refined by ``embedding_maskfeature`` plus
`MaskDecoder.hq_features` of the image (the upsampled embedding plus the upsampled early encoder features).
That last term depends on the image only, so the graph takes it as an input (``hq_features``, computed once
per image by `hq_image_inputs`, as `SamPredictor` caches it) rather than the early features themselves: it is
smaller (C/8×4h×4w against h×w×C') and spares every click two transposed-convolution stacks. The prompt side and
the postprocessing are SAM's (`SamDecoderOnnx`).

Inputs (float32): ``image_embeddings`` 1×C×h×w (`SamPredictor.features`), ``hq_features`` 1×C/8×4h×4w
(`hq_image_inputs`), then SAM's: ``point_coords`` 1×N×2 (model input frame), ``point_labels`` 1×N (1 fg, 0 bg,
2/3 box corners, -1 padding; one (0, 0)/-1 padding point when there is no box), ``mask_input`` 1×1×4h×4w,
``has_mask_input`` [1], ``orig_im_size`` [2] = (H, W).

Outputs: ``masks`` 1×2×H×W logits (threshold at 0), ``iou_predictions`` 1×2, ``low_res_masks`` 1×2×4h×4w. HQ-SAM
returns one mask per prompt; channel 0 is `SamPredictor`'s with ``multimask_output=False`` (SAM's single-mask
token plus the HQ token's mask, token 0's IoU) and channel 1 its mask with ``multimask_output=True`` (the
best-scored of SAM's three multimask tokens plus the HQ token's mask, with that best IoU). With
``hq_token_only`` (an export option, off by default as in the official code) both are the HQ token's mask
alone, with those two IoU predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from segany.onnx_export import DEFAULT_OPSET, SamDecoderOnnx, dummy_inputs, graph_description, write_graph

HQ_INPUT_NAMES = [
    "image_embeddings",
    "hq_features",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
]
HQ_OUTPUT_NAMES = ["masks", "iou_predictions", "low_res_masks"]


class HqDecoderOnnx(SamDecoderOnnx):
    """HQ-SAM's prompt encoder + mask decoder + postprocessing, without data-dependent control flow; weights are
    shared. ``hq_token_only`` is fixed at export (see the module docstring for the two output channels)."""

    takes_hq_features = True

    def __init__(self, sam: nn.Module, *, hq_token_only: bool = False) -> None:
        if not getattr(sam.mask_decoder, "hq", False):
            raise ValueError(
                "HqDecoderOnnx needs an HQ-SAM model (hq_vit_*); export others with export_decoder"
            )
        super().__init__(sam)
        self.hq_token_only = hq_token_only

    def forward(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        hq_features: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_mask(mask_input, has_mask_input)
        logits, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            hq_features=hq_features,
        )
        n = self.mask_decoder.num_mask_tokens
        hq_mask = logits[:, n : n + 1]
        # multimask: the best-scored of SAM's tokens 1..n-1 (MaskDecoder.forward's torch.max; a gather here)
        best_iou, best = torch.max(iou[:, 1:n], dim=1, keepdim=True)
        index = best[:, :, None, None].expand(-1, -1, logits.shape[2], logits.shape[3])
        multi = torch.gather(logits[:, 1:n], 1, index)
        if self.hq_token_only:
            low_res = torch.cat([hq_mask, hq_mask], dim=1)
        else:
            low_res = torch.cat([logits[:, :1] + hq_mask, multi + hq_mask], dim=1)
        iou_out = torch.cat([iou[:, :1], best_iou], dim=1)
        return self._postprocess(low_res, orig_im_size), iou_out, low_res


@torch.no_grad()
def hq_image_inputs(
    features: torch.Tensor, interm_features: torch.Tensor, sam: nn.Module
) -> dict[str, torch.Tensor]:
    """The graph's two per-image inputs from `SamPredictor.features` / ``interm_features`` (the early
    features, 1×h×w×C'): the embedding and `MaskDecoder.hq_features` of it."""
    decoder: Any = sam.mask_decoder
    return {"image_embeddings": features, "hq_features": decoder.hq_features(features, interm_features)}


def hq_dummy_inputs(sam: nn.Module, num_points: int = 3) -> dict[str, torch.Tensor]:
    """Example inputs of the right shapes (used for tracing and smoke runs)."""
    pe: Any = sam.prompt_encoder
    h, w = pe.image_embedding_size
    c = int(pe.embed_dim)
    base = dummy_inputs(sam, num_points)
    hq = torch.randn(1, c // 8, 4 * h, 4 * w, generator=torch.Generator().manual_seed(1))
    return {"image_embeddings": base.pop("image_embeddings"), "hq_features": hq, **base}


def export_hq_decoder(
    sam: nn.Module,
    out: str | Path,
    *,
    hq_token_only: bool = False,
    opset: int = DEFAULT_OPSET,
    quantize: bool = False,
) -> dict[str, Any]:
    """Write HQ-SAM's decoder graph to ``out`` (with ``quantize``, dynamic int8 weights in its place and the fp32
    graph kept as ``<out>.fp32.onnx``); returns the description `segany export-onnx` prints."""
    if opset < 16:
        raise ValueError("opset must be >= 16 (GridSample)")
    model = HqDecoderOnnx(sam, hq_token_only=hq_token_only).eval()
    write_graph(
        model, hq_dummy_inputs(sam), out, HQ_INPUT_NAMES, HQ_OUTPUT_NAMES, opset=opset, quantize=quantize
    )
    pe: Any = sam.prompt_encoder
    h, w = map(int, pe.image_embedding_size)
    c = int(pe.embed_dim)
    return graph_description(sam, out, HQ_INPUT_NAMES, HQ_OUTPUT_NAMES, opset=opset, quantize=quantize) | {
        "hq_features_shape": [1, c // 8, 4 * h, 4 * w],
        "hq_token_only": hq_token_only,
    }
