"""Export SAM's prompt encoder + mask decoder + mask postprocessing to ONNX, for decoding in a browser.

The image encoder is not exported: the annotation server computes the image embedding once per image with
PyTorch, and the browser (onnxruntime-web) runs only this light graph on every click, as in the paper's data
engine.

Two deliberate differences from the official export script:

* Mask postprocessing (upsample to the model input size, crop away the padding, resize to the original image
  size) takes every size from the ``orig_im_size`` input at run time. The official graph slices with ends that
  the legacy tracer freezes to the export-time dummy size, which gives wrong full-size masks for any other
  aspect ratio. Here the crop is a gather of ``arange(h_in)`` rows and the final resize takes its output size
  from the shapes of ``arange(H)``/``arange(W)``, which the tracer records as dynamic ops; the tests compare
  the graph with the torch path on several aspect ratios.
* All four mask tokens are returned (token 0 is the single-mask output, tokens 1-3 the three ambiguous masks),
  so the page can cycle through the ambiguous masks without another decode.

Inputs (float32): ``image_embeddings`` 1xCxhxw, ``point_coords`` 1xNx2 (x, y in the model input frame, i.e.
after ``ResizeLongestSide.apply_coords``), ``point_labels`` 1xN (1 fg, 0 bg, 2/3 box corners, -1 padding; the
caller appends one (0, 0)/-1 padding point when there is no box, as the prompt encoder does), ``mask_input``
1x1x(4h)x(4w), ``has_mask_input`` [1], ``orig_im_size`` [2] = (H, W).
Outputs: ``masks`` 1x4xHxW logits (threshold at 0), ``iou_predictions`` 1x4, ``low_res_masks`` 1x4x(4h)x(4w).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

INPUT_NAMES = [
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
]
OUTPUT_NAMES = ["masks", "iou_predictions", "low_res_masks"]
DEFAULT_OPSET = 17


class SamDecoderOnnx(nn.Module):
    """Prompt encoder + mask decoder + postprocessing of a SAM model, written without data-dependent control flow.

    ``sam`` is any module with ``prompt_encoder`` and ``mask_decoder`` attributes laid out like the official
    ``Sam`` (segany's or segment_anything's); weights are shared, not copied.
    """

    # Typed loosely: the official and segany's modules have the same attributes but no shared base class.
    prompt_encoder: Any
    mask_decoder: Any

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        if getattr(sam.mask_decoder, "hq", False):
            raise ValueError(
                "ONNX export of an HQ-SAM decoder is not supported (its HQ token needs the encoder's early "
                "features, which the exported graph does not take); use SamPredictor, or a plain SAM model"
            )
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        size = self.prompt_encoder.input_image_size
        if size[0] != size[1]:
            raise ValueError(f"only square model inputs are supported, got {size}")
        self.img_size = int(size[0])

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        coords = (coords + 0.5) / self.img_size  # pixel centres, normalised to [0, 1]
        coords = 2 * coords - 1
        coords = coords @ pe.pe_layer.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        emb = torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)
        lab = labels.unsqueeze(-1)
        # Label-masked sums instead of boolean indexing: the same arithmetic for any N, no control flow.
        emb = emb * (lab != -1).to(emb.dtype)
        emb = emb + pe.not_a_point_embed.weight * (lab == -1).to(emb.dtype)
        for i in range(pe.num_point_embeddings):
            emb = emb + pe.point_embeddings[i].weight * (lab == i).to(emb.dtype)
        return emb

    def _embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        downscaled = pe.mask_downscaling(mask_input)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has_mask_input * downscaled + (1 - has_mask_input) * no_mask

    def _taps(
        self, n_out: torch.Tensor, n_crop: torch.Tensor, n_low: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Indices into the low-res axis and weights giving, for each output pixel along one axis, the value of
        ``upsample(low, img_size)[:n_crop]`` resized to ``n_out`` (both bilinear, align_corners=False).

        Each step is F.interpolate's rule: sample at ``(dst + 0.5) * in/out - 0.5``, clamped at 0, upper
        neighbour clamped to the last index. Composing two 2-tap steps gives 4 taps into the low-res axis.
        """
        # A tensor end makes the tracer record a dynamic Range op (a Python int would be frozen into the graph).
        dst = torch.arange(n_out.to(torch.int64), dtype=torch.float32)  # type: ignore[call-overload]
        src = torch.minimum(torch.clamp((dst + 0.5) * (n_crop / n_out) - 0.5, min=0.0), n_crop - 1)
        j0 = torch.floor(src)
        a = src - j0
        j1 = torch.minimum(j0 + 1, n_crop - 1)
        taps = []
        for j, w in ((j0, 1 - a), (j1, a)):
            t = torch.clamp((j + 0.5) * (n_low / self.img_size) - 0.5, min=0.0)
            k0 = torch.floor(t)
            b = t - k0
            k1 = torch.clamp(k0 + 1, max=n_low - 1)
            taps += [(k0.to(torch.int64), w * (1 - b)), (k1.to(torch.int64), w * b)]
        return taps

    def _postprocess(self, low_res: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """``Sam.postprocess_masks`` with the crop and output sizes computed in the graph from ``orig_im_size``."""
        s = self.img_size
        up = F.interpolate(low_res, size=(s, s), mode="bilinear", align_corners=False)
        h, w = orig_im_size[0], orig_im_size[1]
        scale = s / torch.maximum(h, w)
        h_in = torch.floor(h * scale + 0.5).to(torch.int64)
        w_in = torch.floor(w * scale + 0.5).to(torch.int64)
        # Tensor ends make the tracer record dynamic Range ops (Python ints would be frozen into the graph).
        crop = up.index_select(2, torch.arange(h_in)).index_select(3, torch.arange(w_in))  # type: ignore[call-overload]
        ys = torch.arange(h.to(torch.int64))  # type: ignore[call-overload]
        xs = torch.arange(w.to(torch.int64))  # type: ignore[call-overload]
        return F.interpolate(crop, size=(ys.shape[0], xs.shape[0]), mode="bilinear", align_corners=False)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_mask(mask_input, has_mask_input)
        low_res, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )[:2]
        masks = self._postprocess(low_res, orig_im_size)
        return masks, iou, low_res


def dummy_inputs(sam: nn.Module, num_points: int = 3) -> dict[str, torch.Tensor]:
    """Example inputs of the right shapes (used for tracing and smoke runs)."""
    pe: Any = sam.prompt_encoder
    h, w = pe.image_embedding_size
    size = int(pe.input_image_size[0])
    gen = torch.Generator().manual_seed(0)
    return {
        "image_embeddings": torch.randn(1, pe.embed_dim, h, w, generator=gen),
        "point_coords": torch.randint(0, size, (1, num_points, 2), generator=gen).float(),
        "point_labels": torch.randint(0, 4, (1, num_points), generator=gen).float(),
        "mask_input": torch.zeros(1, 1, 4 * h, 4 * w),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([1500.0, 2250.0]),
    }


def export_decoder(
    sam: nn.Module, out: str | Path, *, opset: int = DEFAULT_OPSET, quantize: bool = False
) -> dict[str, Any]:
    """Write the decoder graph to ``out`` (and, with ``quantize``, an int8 version in its place).

    Returns a small description (paths, sizes, input/output names) that the CLI prints and the server caches.
    ``quantize`` applies onnxruntime's dynamic QUInt8 weight quantisation (about half the download and faster
    MatMuls in wasm); the fp32 file is kept next to it as ``<out>.fp32.onnx``.
    """
    if opset < 16:
        raise ValueError("opset must be >= 16 (GridSample)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = SamDecoderOnnx(sam).eval()
    pe = model.prompt_encoder
    inputs = dummy_inputs(sam)
    fp32_path = out.with_suffix(".fp32.onnx") if quantize else out
    tmp = fp32_path.with_name(fp32_path.name + ".tmp")
    with torch.no_grad():
        torch.onnx.export(
            model,
            tuple(inputs.values()),
            str(tmp),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_axes={
                "point_coords": {1: "num_points"},
                "point_labels": {1: "num_points"},
                "masks": {2: "height", 3: "width"},
            },
            opset_version=opset,
            do_constant_folding=True,
            export_params=True,
            dynamo=False,  # the dynamo exporter cannot trace the grid built from orig_im_size
        )
    tmp.replace(fp32_path)
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        qtmp = out.with_name(out.name + ".tmp")
        quantize_dynamic(
            str(fp32_path), str(qtmp), per_channel=False, reduce_range=False, weight_type=QuantType.QUInt8
        )
        qtmp.replace(out)
    return {
        "path": str(out),
        "bytes": out.stat().st_size,
        "quantized": quantize,
        "opset": opset,
        "inputs": INPUT_NAMES,
        "outputs": OUTPUT_NAMES,
        "image_size": int(pe.input_image_size[0]),
        "embedding_shape": [1, int(pe.embed_dim), *map(int, pe.image_embedding_size)],
    }
