"""Fully automatic mask generation (data-engine stage 3): a drop-in `SamAutomaticMaskGenerator`.

Same constructor, defaults, records and masks as `segment_anything.SamAutomaticMaskGenerator` (the tests check
counts, one-to-one IoU and scores against it on random weights), arranged to do far less work:

* **Shared decoder work.** Every grid prompt of a crop attends to the same image embedding, so the first
  two-way block's image-side projections are computed once per crop, and the remaining attention projections
  are folded into the (7-token) prompt side (``_GridDecoder``); the output upscaling skips image rows that only
  cover the resize padding. Same math as the official decoder, summed in a different order (~1e-6).
* **Low resolution until a mask survives.** The predicted IoU comes from the transformer's IoU token, before
  any mask exists: prompts whose three masks all fail the IoU filter are never upscaled, and only surviving
  masks are upsampled to full resolution, where the first (x4) resize computes only the unpadded rows
  (bit-identical to the official two-step resize). Stability, boxes and the crop-edge filter run batched.
* **No per-mask Python work before NMS.** Candidates are kept as packed bits (1/8 of a bool mask, the
  official keeps RLE lists); NMS is torchvision's, on boxes; masks are unpacked a few at a time and RLE-encoded
  vectorised for the final masks only; no deep copies, no float64 on the device.

Fixes of official 1.0 bugs: NMS categories are created on the boxes' device (1.0 creates them on the CPU) and
prompt coordinates reach the model as float32 (1.0 sends float64, which fails on Apple MPS).

SAM 2 models (``sam2*_hiera_*``) take the path of ``SAM2AutomaticMaskGenerator`` instead of the grid decoder: each
batch of points through SAM 2's decoder (with its high-resolution features), SAM 2's filter defaults and options
(``multimask_output``, ``use_m2m``) and its low-resolution clean-up for ``min_mask_region_area``; the records are
bit-identical to the official ones (``tests/test_sam2_generator.py``). The IoU filter still runs before any mask
is upsampled.

``fast=True`` (opt-in) also pre-screens the stability score on the low-resolution logits, with a margin, before
upsampling; kept masks are still exact, but a few borderline masks can be lost (see ``benchmarks``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F

from segany.masks.boxes import box_xyxy_to_xywh, boxes_near_crop_edge, masks_to_boxes, nms
from segany.masks.grid import build_all_layer_point_grids, generate_crop_boxes
from segany.masks.quality import fill_small_components, remove_small_regions, stability_score
from segany.masks.rle import counts_to_coco_string, masks_to_rle_counts
from segany.modeling import Sam
from segany.modeling.common import LayerNorm2d
from segany.modeling.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer
from segany.predictor import ImageEmbedding, SamPredictor

__all__ = ["SA1B_PRESET", "OutputMode", "SamAutomaticMaskGenerator"]

OutputMode = Literal["binary_mask", "uncompressed_rle", "coco_rle"]
_OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")

# The automatic stage that built SA-1B (paper App. B): a 32x32 grid on the full image plus 2x2 and 4x4
# windows with 16x16 and 8x8 grids, predicted IoU 0.88, stability 0.95, NMS 0.7 within and across crops,
# holes/islands below 100 px cleaned, masks covering >= 95% of the image dropped.
SA1B_PRESET: dict[str, Any] = {
    "points_per_side": 32,
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95,
    "stability_score_offset": 1.0,
    "box_nms_thresh": 0.7,
    "crop_n_layers": 2,
    "crop_nms_thresh": 0.7,
    "crop_n_points_downscale_factor": 2,
    "min_mask_region_area": 100,
    "max_mask_area_fraction": 0.95,
}

# fast mode: low-res stability must reach (threshold - margin) for a mask to be upsampled and checked exactly
_FAST_STABILITY_MARGIN = 0.05


class GeneratorOptionError(ValueError):
    """A generator option that cannot work (out of range, or for another model family): the user's to fix."""


@dataclass
class _Store:
    """Packed-bit masks that share one frame: rows of ceil(h*w/8) uint8, placed at (x0, y0) in the image."""

    bits: np.ndarray
    x0: int
    y0: int
    h: int
    w: int


@dataclass
class _MaskSet:
    """Candidate masks as parallel columns (row i = one mask); the pixels stay packed until output."""

    stores: list[_Store]
    store_of: torch.Tensor  # N int64: index into `stores`
    row_of: torch.Tensor  # N int64: row within stores[store_of].bits
    crop_of: torch.Tensor  # N int64: index of the crop box the mask came from
    boxes: torch.Tensor  # N x 4 int64 XYXY, image frame
    iou: torch.Tensor  # N float32
    stability: torch.Tensor  # N float32
    points: torch.Tensor  # N x 2 float64 (x, y), image frame

    def select(self, keep: torch.Tensor) -> _MaskSet:
        keep = keep.cpu()
        return _MaskSet(
            self.stores,
            self.store_of[keep],
            self.row_of[keep],
            self.crop_of[keep],
            self.boxes[keep],
            self.iou[keep],
            self.stability[keep],
            self.points[keep],
        )

    def mask(self, i: int, image_size: tuple[int, int]) -> np.ndarray:
        """Mask i as an H x W bool array in the image frame."""
        st = self.stores[int(self.store_of[i])]
        out = np.zeros(image_size, dtype=bool)
        bits = np.unpackbits(st.bits[int(self.row_of[i])], count=st.h * st.w).view(bool)
        out[st.y0 : st.y0 + st.h, st.x0 : st.x0 + st.w] = bits.reshape(st.h, st.w)
        return out

    def __len__(self) -> int:
        return int(self.iou.shape[0])


OFFICIAL_PRED_IOU = 0.88  # the official generator's defaults, chosen for ViT-H
OFFICIAL_STABILITY = 0.95


class SamAutomaticMaskGenerator:
    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: OutputMode = "binary_mask",
        *,
        max_mask_area_fraction: float | None = None,
        fast: bool = False,
        hq_token_only: bool = False,
        mask_threshold: float | None = None,
        multimask_output: bool = True,
        use_m2m: bool = False,
    ) -> None:
        """Generate masks for a whole image from a grid of point prompts (defaults chosen for ViT-H).

        With a SAM 2 model (``sam2*_hiera_*``) this is ``SAM2AutomaticMaskGenerator``: its filter defaults
        (predicted IoU 0.8, stability 0.95, the model's ``generator_defaults``), every grid point decoded on its
        own through SAM 2's decoder, and ``min_mask_region_area`` applied as SAM 2 does it (small holes and specks
        of the low-res logits, before upsampling; no full-resolution pass).

        Arguments (official):
          model: the SAM model.
          points_per_side: grid side n (n*n points on the full image); exclusive with `point_grids`.
          points_per_batch: prompts decoded per call (memory knob; results do not depend on it).
          pred_iou_thresh: keep masks whose predicted IoU is > this (off if <= 0). None: the model's own
            recommendation (``model.generator_defaults``, stored in its checkpoint and chosen on its validation
            split), else the official 0.88.
          stability_score_thresh: keep masks whose stability score is >= this (off if <= 0). None: the model's
            own, else the official 0.95.
          stability_score_offset: logit shift used by the stability score.
          box_nms_thresh: box-IoU NMS threshold within a crop.
          crop_n_layers: extra crop layers; layer i has (2**i)**2 crops.
          crop_nms_thresh: box-IoU NMS threshold across crops (smaller crops win).
          crop_overlap_ratio: overlap of layer-1 crops as a fraction of the short side (less in deeper layers).
          crop_n_points_downscale_factor: layer i uses points_per_side / factor**i points per side.
          point_grids: explicit normalised [0, 1] (x, y) grids, one per layer.
          min_mask_region_area: if > 0, fill holes and drop islands smaller than this (OpenCV), then NMS again.
          output_mode: "binary_mask" (H x W bool array), "uncompressed_rle" or "coco_rle".
        segany extras (keyword-only):
          max_mask_area_fraction: drop masks covering at least this fraction of the image (SA-1B: 0.95).
          fast: screen stability at low resolution first (faster; may lose a few borderline masks).
          hq_token_only: HQ-SAM models: use the HQ token's mask alone (official default False: SAM's best mask
            plus the HQ token's). An HQ model gives one mask per point, as the official HQ-SAM generator.
          mask_threshold: logit threshold of the masks and of the stability score; None: the model's (0.0).
        SAM 2's generator options (SAM 2 models only, official defaults):
          multimask_output: three masks per point (True) or one, with SAM 2's dynamic fallback.
          use_m2m: decode every mask once more with its own low-res logits as the mask prompt.
        """
        if (points_per_side is None) == (point_grids is None):
            raise GeneratorOptionError("Exactly one of points_per_side or point_grids must be provided.")
        if output_mode not in _OUTPUT_MODES:
            raise GeneratorOptionError(
                f"Unknown output_mode {output_mode!r}; expected one of {_OUTPUT_MODES}"
            )
        if points_per_batch < 1:
            raise GeneratorOptionError(f"points_per_batch must be >= 1, got {points_per_batch}")
        if crop_n_layers < 0:
            raise GeneratorOptionError(f"crop_n_layers must be >= 0, got {crop_n_layers}")
        from segany.modeling.sam2 import Sam2

        self.is_sam2 = isinstance(model, Sam2)
        if hq_token_only and not getattr(model, "is_hq", False):
            raise GeneratorOptionError("hq_token_only needs an HQ-SAM model (hq_vit_*)")
        if (use_m2m or not multimask_output) and not self.is_sam2:
            raise GeneratorOptionError(
                "use_m2m and multimask_output=False are SAM 2 generator options (sam2*_hiera_* models)"
            )
        if max_mask_area_fraction is not None and not 0 < max_mask_area_fraction <= 1:
            raise GeneratorOptionError(
                f"max_mask_area_fraction must be in (0, 1], got {max_mask_area_fraction}"
            )
        if points_per_side is not None:
            if points_per_side < 1 or crop_n_points_downscale_factor < 1:
                raise GeneratorOptionError("points_per_side and crop_n_points_downscale_factor must be >= 1")
            grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            assert point_grids is not None
            grids = [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in point_grids]
        if len(grids) < crop_n_layers + 1:
            raise GeneratorOptionError(
                f"point_grids has {len(grids)} grids; crop_n_layers={crop_n_layers} needs one per layer"
            )
        if output_mode == "coco_rle":
            import pycocotools  # noqa: F401  (fail at construction like the official class; we encode ourselves)
        if min_mask_region_area > 0:
            import cv2  # noqa: F401

        self.point_grids = grids
        self.predictor = SamPredictor(model)
        self._embedding: ImageEmbedding | None = None  # set by `generate` for the whole-image crop
        self.points_per_batch = points_per_batch
        own = getattr(model, "generator_defaults", {}) or {}
        self.pred_iou_thresh = float(
            pred_iou_thresh if pred_iou_thresh is not None else own.get("pred_iou_thresh", OFFICIAL_PRED_IOU)
        )
        self.stability_score_thresh = float(
            stability_score_thresh
            if stability_score_thresh is not None
            else own.get("stability_score_thresh", OFFICIAL_STABILITY)
        )
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode: OutputMode = output_mode
        self.max_mask_area_fraction = max_mask_area_fraction
        self.fast = fast
        self.hq_token_only = hq_token_only
        self.mask_threshold = float(model.mask_threshold if mask_threshold is None else mask_threshold)
        self.multimask_output = multimask_output
        self.use_m2m = use_m2m
        # seconds spent per stage in the last `generate` call (encoder, decoder, filter+nms, rle)
        self.timings: dict[str, float] = {}
        # what the last `generate` call's filters did (`explain_empty` turns it into a sentence)
        self.filter_counts: dict[str, float] = {}

    def explain_empty(self) -> str:
        """Why the last `generate` call returned no mask, in one sentence naming the filter and the setting to
        change (empty string if it returned masks or was never called)."""
        fc = self.filter_counts
        if fc.get("returned"):
            return ""
        if not fc or not fc["candidates"]:
            return "no prompt was decoded (empty point grid?)" if fc else ""
        n = int(fc["candidates"])
        if not fc["passed_iou"]:
            return (
                f"none of the {n} candidate masks had a predicted IoU above pred_iou_thresh "
                f"{self.pred_iou_thresh:g} (highest: {fc['max_predicted_iou']:.3f}); lower --pred-iou-thresh"
            )
        if not fc["passed_stability"]:
            return (
                f"{int(fc['passed_iou'])} of {n} candidate masks passed pred_iou_thresh {self.pred_iou_thresh:g}, "
                f"none reached stability_score_thresh {self.stability_score_thresh:g} "
                f"(highest: {fc['max_stability']:.3f}); lower --stability-score-thresh"
            )
        return (
            f"{int(fc['passed_stability'])} masks passed the IoU and stability filters but all were dropped "
            "at the crop edges, by max_mask_area_fraction or by min_mask_region_area"
        )

    @classmethod
    def sa1b(cls, model: Sam, **overrides: Any) -> SamAutomaticMaskGenerator:
        """The settings that produced SA-1B (`SA1B_PRESET`), optionally overridden."""
        return cls(model, **{**SA1B_PRESET, **overrides})

    # ------------------------------------------------------------------------------------------------ generate
    @torch.inference_mode()
    def generate(self, image: np.ndarray, embedding: ImageEmbedding | None = None) -> list[dict[str, Any]]:
        """Masks for an ``H x W x 3`` uint8 RGB image.

        ``embedding``: this image's `ImageEmbedding` from this model (e.g. a cached one), used for the whole-image
        crop instead of running the encoder again (smaller crops are still encoded); the same masks result.

        Returns:
          One record per mask: ``segmentation`` (H x W bool array, or an RLE dict per `output_mode`), ``area``
          (int), ``bbox`` (XYWH, inclusive max as the official), ``predicted_iou``, ``point_coords``
          (``[[x, y]]`` image pixels), ``stability_score``, ``crop_box`` (XYWH).
        """
        if (
            not isinstance(image, np.ndarray)
            or image.ndim != 3
            or image.shape[2] != 3
            or image.dtype != np.uint8
        ):
            raise ValueError("image must be an H x W x 3 uint8 numpy array")
        if embedding is not None and tuple(embedding.original_size) != image.shape[:2]:
            raise ValueError(
                f"the embedding is of a {tuple(embedding.original_size)} image, not of this "
                f"{image.shape[:2]} one"
            )
        self._embedding = embedding
        self.timings = {"encoder": 0.0, "decoder": 0.0, "filter_nms": 0.0, "rle": 0.0}
        self.filter_counts = {
            "candidates": 0,
            "passed_iou": 0,
            "passed_stability": 0,
            "max_predicted_iou": 0.0,
            "max_stability": 0.0,
        }
        data, crop_boxes = self._generate_masks(image)
        image_size = (image.shape[0], image.shape[1])
        with _Timer(self.timings, "filter_nms"):
            # SAM 2 cleans small regions at low resolution instead (`_sam2_upsample`)
            if self.min_mask_region_area > 0 and len(data) and not self.is_sam2:
                data = self._postprocess_small_regions(
                    data,
                    image_size,
                    self.min_mask_region_area,
                    max(self.box_nms_thresh, self.crop_nms_thresh),
                )
        with _Timer(self.timings, "rle"):
            records = self._records(data, image_size, crop_boxes)
        self.filter_counts["returned"] = len(records)
        return records

    # ------------------------------------------------------------------------------------------------ stages
    def _generate_masks(self, image: np.ndarray) -> tuple[_MaskSet, list[list[int]]]:
        h, w = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes((h, w), self.crop_n_layers, self.crop_overlap_ratio)
        sets = [
            self._process_crop(image, crop_box, layer, i)
            for i, (crop_box, layer) in enumerate(zip(crop_boxes, layer_idxs, strict=True))
        ]
        data = _concat(sets)
        if len(crop_boxes) > 1 and len(data):
            with _Timer(self.timings, "filter_nms"):
                crop_xyxy = torch.tensor(crop_boxes, dtype=torch.int64)[data.crop_of]
                area = (crop_xyxy[:, 2] - crop_xyxy[:, 0]) * (crop_xyxy[:, 3] - crop_xyxy[:, 1])
                data = data.select(nms(data.boxes, 1 / area, self.crop_nms_thresh))  # smaller crops win
        return data, crop_boxes

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int, crop_index: int) -> _MaskSet:
        x0, y0, x1, y1 = crop_box
        im_h, im_w = image.shape[:2]
        crop = image[y0:y1, x0:x1, :]
        h, w = crop.shape[:2]
        with _Timer(self.timings, "encoder"):
            whole = (x0, y0, x1, y1) == (0, 0, im_w, im_h)
            if whole and self._embedding is not None:
                self.predictor.set_embedding(self._embedding)
            else:
                self.predictor.set_image(crop)
        input_size = self.predictor.input_size
        assert input_size is not None
        # the points in the crop frame, for the records: float64 (SAM), float32 (SAM 2's generator rounds them)
        points = self.point_grids[layer] * np.array([[w, h]], dtype=np.float64)
        if self.is_sam2:
            points = points.astype(np.float32)
        if self.is_sam2:
            candidates = self._sam2_candidates(points, (h, w))
            valid_lowres: Callable[[torch.Tensor], torch.Tensor] = _identity
            upsample = self._sam2_upsample
        else:
            decoder, candidates = self._sam_candidates(points, (h, w))
            valid_lowres = decoder.valid_lowres
            img_size = self.predictor.model.image_encoder.img_size

            def upsample(low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
                return _upsample(low, img_size, input_size, size)

        mask_thr = self.mask_threshold
        fc = self.filter_counts
        boxes_l, iou_l, stab_l, pidx_l, packed_l = [], [], [], [], []
        for low, iou, pidx in candidates:
            with _Timer(self.timings, "filter_nms"):
                if self.fast and self.stability_score_thresh > 0.0 and len(low):
                    rough = stability_score(valid_lowres(low), mask_thr, self.stability_score_offset)
                    keep = rough >= self.stability_score_thresh - _FAST_STABILITY_MARGIN
                    low, iou, pidx = low[keep], iou[keep], pidx[keep]
                # Upsample in chunks so full-resolution logits never take more than ~256 MB at once.
                chunk = max(1, (64 << 20) // max(1, h * w))
                for c0 in range(0, len(low), chunk):
                    logits = upsample(low[c0 : c0 + chunk], (h, w))
                    stab = stability_score(logits, mask_thr, self.stability_score_offset)
                    ciou, cpidx = iou[c0 : c0 + chunk], pidx[c0 : c0 + chunk]
                    if len(stab):
                        fc["max_stability"] = max(fc["max_stability"], float(stab.max()))
                    if self.stability_score_thresh > 0.0:
                        keep = stab >= self.stability_score_thresh
                        logits, stab, ciou, cpidx = logits[keep], stab[keep], ciou[keep], cpidx[keep]
                    fc["passed_stability"] += len(stab)
                    masks = logits > mask_thr
                    del logits
                    boxes = masks_to_boxes(masks)
                    keep = ~boxes_near_crop_edge(boxes, crop_box, [0, 0, im_w, im_h])
                    if self.max_mask_area_fraction is not None:
                        areas = masks.sum(dim=(-2, -1))
                        keep &= areas < self.max_mask_area_fraction * (im_h * im_w)
                    if not bool(keep.any()):
                        continue
                    masks = masks[keep]
                    boxes_l.append(boxes[keep].cpu())
                    iou_l.append(ciou[keep].cpu())
                    stab_l.append(stab[keep].cpu())
                    pidx_l.append(cpidx[keep].cpu())
                    packed_l.append(np.packbits(masks.reshape(len(masks), -1).cpu().numpy(), axis=1))
        self.predictor.reset_image()

        with _Timer(self.timings, "filter_nms"):
            n_bytes = (h * w + 7) // 8
            packed = np.concatenate(packed_l) if packed_l else np.zeros((0, n_bytes), dtype=np.uint8)
            boxes = torch.cat(boxes_l) if boxes_l else torch.zeros(0, 4, dtype=torch.int64)
            ious = torch.cat(iou_l) if iou_l else torch.zeros(0)
            stabs = torch.cat(stab_l) if stab_l else torch.zeros(0)
            pidx = torch.cat(pidx_l) if pidx_l else torch.zeros(0, dtype=torch.int64)
            keep = nms(boxes, ious, self.box_nms_thresh)  # duplicates within the crop
            offset = torch.tensor([x0, y0, x0, y0], dtype=torch.int64)
            grid = torch.from_numpy(points)  # offset in the grid's dtype, as the official generators add it
            pts = (grid[pidx[keep]] + torch.tensor([x0, y0], dtype=grid.dtype)).to(torch.float64)
            return _MaskSet(
                stores=[_Store(packed[keep.numpy()], x0, y0, h, w)],
                store_of=torch.zeros(len(keep), dtype=torch.int64),
                row_of=torch.arange(len(keep)),
                crop_of=torch.full((len(keep),), crop_index, dtype=torch.int64),
                boxes=boxes[keep] + offset,
                iou=ious[keep],
                stability=stabs[keep],
                points=pts.reshape(-1, 2),
            )

    def _sam_candidates(
        self, points: np.ndarray, size: tuple[int, int]
    ) -> tuple[_GridDecoder, Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """SAM / MobileSAM / HQ-SAM: the grid decoder of the image set on the predictor, and per batch of points
        the low-res logits (K x s x s), predicted IoUs and point indices of the masks that pass the IoU filter."""
        features, input_size = self.predictor.features, self.predictor.input_size
        assert features is not None and input_size is not None
        # the model gets float32 points (official 1.0 sends float64, which fails on Apple MPS)
        coords = torch.as_tensor(self.predictor.transform.apply_coords(points, size), dtype=torch.float32)
        coords = coords.to(features.device)
        with _Timer(self.timings, "decoder"):
            decoder = _GridDecoder(
                self.predictor.model, features, input_size, self.predictor.interm_features, self.hq_token_only
            )

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            for start in range(0, len(points), self.points_per_batch):
                with _Timer(self.timings, "decoder"):
                    queries, keys = decoder.transformer_tokens(coords[start : start + self.points_per_batch])
                    iou = decoder.iou(queries)  # B x 3
                    n_pts = iou.shape[0]
                    pidx = torch.arange(start, start + n_pts, device=iou.device)[:, None].expand(
                        -1, iou.shape[1]
                    )
                    # The IoU filter needs no mask: upscale only prompts with at least one mask above it.
                    keep = self._iou_keep(iou)
                    any_kept = keep.any(dim=1)
                    low = decoder.masks(queries[any_kept], keys[any_kept])
                    del queries, keys
                with _Timer(self.timings, "filter_nms"):
                    keep = keep[any_kept].flatten()  # point-major, as the official order
                    yield (
                        low.flatten(0, 1)[keep],
                        iou[any_kept].flatten()[keep],
                        pidx[any_kept].flatten()[keep],
                    )

        return decoder, batches()

    def _iou_keep(self, iou: torch.Tensor) -> torch.Tensor:
        """The predicted-IoU filter (everything when it is off), counted for `explain_empty`."""
        keep = (
            iou > self.pred_iou_thresh
            if self.pred_iou_thresh > 0.0
            else torch.ones_like(iou, dtype=torch.bool)
        )
        fc = self.filter_counts
        fc["candidates"] += iou.numel()
        fc["passed_iou"] += int(keep.sum())
        if iou.numel():
            fc["max_predicted_iou"] = max(fc["max_predicted_iou"], float(iou.max()))
        return keep

    def _sam2_candidates(
        self, points: np.ndarray, size: tuple[int, int]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """SAM 2, as ``SAM2AutomaticMaskGenerator``: per batch of points, the low-res logits (K x s x s, not
        clamped), predicted IoUs and point indices of the masks that pass the IoU filter.

        Each point is decoded on its own as SAM 2's image predictor does (multimask by default; with ``use_m2m``
        every mask is decoded again with its point and its clamped low-res logits as the mask prompt, single-mask
        with SAM 2's dynamic fallback, before the IoU filter). ``points`` are float32, as the official generator
        rounds them, and are mapped to the model frame in float32 as it does.
        """
        device = self.predictor.device
        h, w = size
        side = self.predictor.model.image_size
        limit = float(getattr(self.predictor.model, "low_res_logit_limit", 32.0))
        for start in range(0, len(points), self.points_per_batch):
            with _Timer(self.timings, "decoder"):
                pts = torch.as_tensor(points[start : start + self.points_per_batch], device=device)
                coords = pts.clone()
                coords[:, 0] = coords[:, 0] / w
                coords[:, 1] = coords[:, 1] / h
                coords = coords * side
                low, iou = self._sam2_decode(coords, None, self.multimask_output)
                k = low.shape[1]
                pidx = torch.arange(start, start + len(pts), device=device).repeat_interleave(k)
                low, iou = low.flatten(0, 1), iou.flatten(0, 1)
                if self.use_m2m:
                    prompts = torch.clamp(low, -limit, limit)[:, None]
                    again = coords.repeat_interleave(k, dim=0)
                    refined = [
                        self._sam2_decode(
                            again[i : i + self.points_per_batch],
                            prompts[i : i + self.points_per_batch],
                            False,
                        )
                        for i in range(0, len(again), self.points_per_batch)
                    ]
                    low = torch.cat([r[0] for r in refined])[:, 0]
                    iou = torch.cat([r[1] for r in refined])[:, 0]
                keep = self._iou_keep(iou)
            yield low[keep], iou[keep], pidx[keep]

    def _sam2_decode(
        self, coords: torch.Tensor, mask_input: torch.Tensor | None, multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One foreground point per prompt (B x 2, model frame) -> (low-res logits B x K x s x s, IoU B x K)."""
        model = self.predictor.model
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int, device=coords.device)
        sparse, dense = model.prompt_encoder(
            points=(coords[:, None, :], labels), boxes=None, masks=mask_input
        )
        return model.mask_decoder(
            image_embeddings=self.predictor.features,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            interm_embeddings=self.predictor.interm_features,
        )

    def _sam2_upsample(self, low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """K x s x s low-res logits -> K x H x W, as SAM 2's predictor: small holes and specks removed at low
        resolution first when ``min_mask_region_area`` > 0 (`fill_small_components`), then one bilinear resize."""
        if self.min_mask_region_area > 0 and len(low):
            low = fill_small_components(low, self.mask_threshold, self.min_mask_region_area)
        return F.interpolate(low[:, None].float(), size, mode="bilinear", align_corners=False)[:, 0]

    def _postprocess_small_regions(
        self, data: _MaskSet, image_size: tuple[int, int], min_area: int, nms_thresh: float
    ) -> _MaskSet:
        """Fill small holes, drop small islands, then NMS again preferring masks that needed no change."""
        n = len(data)
        unchanged = np.empty(n, dtype=np.float32)
        new_boxes = torch.empty(n, 4, dtype=torch.int64)
        cleaned: dict[int, np.ndarray] = {}  # packed bits of the masks that changed
        for i in range(n):
            m = data.mask(i, image_size)
            m1, changed_holes = remove_small_regions(m, min_area, "holes")
            m2, changed_islands = remove_small_regions(m1, min_area, "islands")
            changed = changed_holes or changed_islands
            unchanged[i] = float(not changed)
            new_boxes[i] = masks_to_boxes(torch.from_numpy(m2))
            if changed:
                cleaned[i] = np.packbits(m2.reshape(-1))
        keep = nms(new_boxes, torch.from_numpy(unchanged), nms_thresh)
        # Masks that changed move to a new full-image store; their boxes are the recomputed ones.
        changed_rows = sorted(cleaned)
        store_of, row_of = data.store_of.clone(), data.row_of.clone()
        stores = list(data.stores)
        if changed_rows:
            bits = np.stack([cleaned[i] for i in changed_rows])
            stores.append(_Store(bits, 0, 0, image_size[0], image_size[1]))
            idx = torch.tensor(changed_rows, dtype=torch.int64)
            store_of[idx] = len(stores) - 1
            row_of[idx] = torch.arange(len(changed_rows))
        is_changed = torch.from_numpy(unchanged == 0.0)
        boxes = torch.where(is_changed[:, None], new_boxes, data.boxes)
        out = _MaskSet(stores, store_of, row_of, data.crop_of, boxes, data.iou, data.stability, data.points)
        return out.select(keep)

    def _records(
        self, data: _MaskSet, image_size: tuple[int, int], crop_boxes: Sequence[Sequence[int]]
    ) -> list[dict[str, Any]]:
        n = len(data)
        im_h, im_w = image_size
        segs: list[Any] = []
        areas: list[int] = []
        for s0 in range(0, n, 32):  # unpack a few masks at a time: memory stays at the packed size
            chunk = np.stack([data.mask(i, image_size) for i in range(s0, min(n, s0 + 32))])
            areas.extend(chunk.reshape(len(chunk), -1).sum(axis=1).tolist())
            if self.output_mode == "binary_mask":
                segs.extend(chunk)
                continue
            for c in masks_to_rle_counts(torch.from_numpy(chunk)):
                if self.output_mode == "uncompressed_rle":
                    segs.append({"size": [im_h, im_w], "counts": c.tolist()})
                else:
                    segs.append({"size": [im_h, im_w], "counts": counts_to_coco_string(c).decode("ascii")})
        bbox = box_xyxy_to_xywh(data.boxes).tolist()
        crop_xywh = box_xyxy_to_xywh(torch.tensor(crop_boxes, dtype=torch.int64)).tolist()
        ious = data.iou.tolist()
        stabs = data.stability.tolist()
        points = data.points.tolist()
        crop_of = data.crop_of.tolist()
        return [
            {
                "segmentation": segs[i],
                "area": int(areas[i]),
                "bbox": bbox[i],
                "predicted_iou": ious[i],
                "point_coords": [points[i]],
                "stability_score": stabs[i],
                "crop_box": crop_xywh[crop_of[i]],
            }
            for i in range(n)
        ]


def _concat(sets: Sequence[_MaskSet]) -> _MaskSet:
    """Concatenate sets, renumbering their stores."""
    stores: list[_Store] = []
    store_of = []
    for st in sets:
        store_of.append(st.store_of + len(stores))
        stores.extend(st.stores)
    return _MaskSet(
        stores=stores,
        store_of=torch.cat(store_of),
        row_of=torch.cat([s.row_of for s in sets]),
        crop_of=torch.cat([s.crop_of for s in sets]),
        boxes=torch.cat([s.boxes for s in sets]),
        iou=torch.cat([s.iou for s in sets]),
        stability=torch.cat([s.stability for s in sets]),
        points=torch.cat([s.points for s in sets]),
    )


def _upsample(
    low: torch.Tensor, img_size: int, input_size: tuple[int, int], out_size: tuple[int, int]
) -> torch.Tensor:
    """Low-res logits ``K x s x s`` -> ``K x H x W`` logits, equal to ``Sam.postprocess_masks``.

    The x4 resize to the padded input frame is computed only for the rows/columns that survive the crop to
    ``input_size`` (plus one source row/column of margin, so every kept pixel sees the same neighbours and the
    same scale ``s / img_size``): the padding rows are never materialised.
    """
    s = low.shape[-1]
    scale = img_size // s
    rows = min(s, math.ceil(input_size[0] / scale) + 1)
    cols = min(s, math.ceil(input_size[1] / scale) + 1)
    x = low[:, None, :rows, :cols]
    x = F.interpolate(x, (rows * scale, cols * scale), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, out_size, mode="bilinear", align_corners=False)[:, 0]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class _Timer:
    """Adds the wall time of a ``with`` block to ``timings[key]``."""

    def __init__(self, timings: dict[str, float], key: str) -> None:
        self.timings, self.key = timings, key

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.key] = self.timings.get(self.key, 0.0) + time.perf_counter() - self._t0


class _GridDecoder:
    """The mask decoder for many single-point prompts on one image, without repeating shared work.

    Equivalent to ``MaskDecoder(image_embeddings, image_pe, sparse, dense, multimask_output=True)`` for prompts
    of one foreground point each and no mask input. Savings (per prompt, ViT-B/L/H decoder, 64x64 embedding):

    * block 0: the image tokens are the same for every prompt, so the token->image keys/values and the
      image->token queries are projected once per image;
    * attention with per-prompt image tokens x: ``softmax((q Wk)(x)^T)`` needs ``q Wk`` (7 tokens) instead of
      ``x Wk`` (4096 tokens) -- the key bias adds a per-row constant that softmax ignores -- and the value and
      output projections are applied to the 7-token side (``(A x) Wv``, ``A (v Wo)``);
    * the final token->image attention runs for the IoU and mask tokens only (not the prompt tokens);
    * output upscaling is computed only for embedding rows/columns whose pixels survive the padding crop, as
      channels-last convolutions with one fused LayerNorm.

    HQ-SAM decoders (``interm`` given): the HQ token rides along; each prompt gives one mask, SAM's best-scored
    multimask output plus the HQ token's (or the HQ token's alone with ``hq_token_only``), scored by the best
    IoU prediction, as ``MaskDecoder(..., multimask_output=True)``. Its features are computed once per crop; one
    more embedding row/column is kept, so that the 3x3 convolutions of the HQ path see no crop edge.
    """

    def __init__(
        self,
        model: Sam,
        features: torch.Tensor,
        input_size: tuple[int, int],
        interm: torch.Tensor | None = None,
        hq_token_only: bool = False,
    ) -> None:
        dec = model.mask_decoder
        self.model = model
        self.dec = dec
        self.transformer = t = cast(TwoWayTransformer, dec.transformer)
        self.blocks = [cast(TwoWayAttentionBlock, b) for b in t.layers]
        pe_enc = model.prompt_encoder
        _, c, h, w = features.shape
        self.hw = (h, w)
        dense = pe_enc.no_mask_embed.weight.reshape(1, -1, 1, 1)
        self.keys0 = (features + dense).flatten(2).transpose(1, 2)[0]  # N x C, same for every prompt
        self.key_pe = pe_enc.get_dense_pe().flatten(2).transpose(1, 2)[0]  # N x C
        blk = self.blocks[0]
        k_in = self.keys0 + self.key_pe
        n_heads = blk.cross_attn_token_to_image.num_heads
        self.k0t = (
            _heads(blk.cross_attn_token_to_image.k_proj(k_in), n_heads).transpose(1, 2).contiguous()
        )  # H x d x N
        self.v0 = _heads(blk.cross_attn_token_to_image.v_proj(self.keys0), n_heads).contiguous()  # H x N x d
        n_heads = blk.cross_attn_image_to_token.num_heads
        self.q0t = (
            _heads(blk.cross_attn_image_to_token.q_proj(k_in), n_heads).transpose(1, 2).contiguous()
        )  # H x d x N
        # rows/cols of the embedding whose x16 pixels reach the unpadded input (+1 for the resize margin)
        img_size = model.image_encoder.img_size
        low_side = 4 * h  # low-res logits side
        scale = img_size // low_side
        self.low_rows = min(low_side, math.ceil(input_size[0] / scale) + 1)
        self.low_cols = min(4 * w, math.ceil(input_size[1] / scale) + 1)
        self.emb_rows = math.ceil(self.low_rows / 4)
        self.emb_cols = math.ceil(self.low_cols / 4)
        self.hq_token_only = hq_token_only
        self.hq_features: torch.Tensor | None = None  # 1 x C/8 x 4h x 4w
        if dec.hq:
            if interm is None:
                raise ValueError("an HQ-SAM decoder needs the encoder's early features")
            self.hq_features = dec.hq_features(features, interm)
            self.emb_rows, self.emb_cols = min(h, self.emb_rows + 1), min(w, self.emb_cols + 1)
        self.valid_low = (
            max(1, round(input_size[0] / scale)),
            max(1, round(input_size[1] / scale)),
        )

    def valid_lowres(self, low: torch.Tensor) -> torch.Tensor:
        """The part of ``K x s x s`` low-res logits that covers the image (not the padding)."""
        return low[:, : self.valid_low[0], : self.valid_low[1]]

    def __call__(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """coords: B x 2 float32 points in the model input frame -> (B x 3 x s x s logits, B x 3 IoU)."""
        queries, keys = self.transformer_tokens(coords)
        return self.masks(queries, keys), self.iou(queries)

    def iou(self, queries: torch.Tensor) -> torch.Tensor:
        """B x 3 predicted IoUs of the multimask outputs (HQ: B x 1, the best), from the output tokens."""
        iou = self.dec.iou_prediction_head(queries[:, 0, :])[:, 1:]
        return iou.max(dim=1, keepdim=True).values if self.hq_features is not None else iou

    def transformer_tokens(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two-way transformer for B point prompts: (IoU + mask tokens B x 5 x C, image tokens B x N x C)."""
        dec, t = self.dec, self.transformer
        b = coords.shape[0]
        labels = torch.ones(b, 1, dtype=torch.int, device=coords.device)
        sparse, _ = self.model.prompt_encoder(points=(coords[:, None, :], labels), boxes=None, masks=None)
        hq_token = [dec.hf_token.weight] if self.hq_features is not None else []
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight, *hq_token], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)  # B x T x C
        query_pe = tokens

        # block 0: shared image tokens
        blk = self.blocks[0]
        queries = tokens
        if blk.skip_first_layer_pe:
            queries = blk.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + blk.self_attn(q, q, queries)
        queries = blk.norm1(queries)
        attn = blk.cross_attn_token_to_image
        n_heads = attn.num_heads
        q = _heads(attn.q_proj(queries + query_pe), n_heads)  # B x H x T x d
        n_tok, d = q.shape[2:]
        # Fold the prompts into the token axis: H x (B*T) x d against the shared H x N x d keys and values
        # (a broadcast B x H matmul would copy the shared keys once per prompt).
        q = q.permute(1, 0, 2, 3).reshape(n_heads, b * n_tok, d) / math.sqrt(d)
        a = torch.softmax(q @ self.k0t, dim=-1)  # H x (B*T) x N
        av = (a @ self.v0).reshape(n_heads, b, n_tok, d).permute(1, 2, 0, 3).reshape(b, n_tok, n_heads * d)
        queries = blk.norm2(queries + attn.out_proj(av))
        queries = blk.norm3(queries + blk.mlp(queries))
        attn = blk.cross_attn_image_to_token
        kt = _heads(attn.k_proj(queries + query_pe), n_heads)  # B x H x T x d
        kt = kt.permute(1, 0, 2, 3).reshape(n_heads, b * n_tok, d) / math.sqrt(d)
        scores = kt @ self.q0t  # H x (B*T) x N: shared image queries against every prompt's tokens
        scores = scores.reshape(n_heads, b, n_tok, -1).transpose(0, 1)  # B x H x T x N (strided view)
        a = torch.softmax(scores, dim=2).reshape(b, n_heads * n_tok, -1)  # softmax over tokens
        keys = blk.norm4(
            torch.baddbmm(self.keys0.expand(b, -1, -1), a.transpose(1, 2), _value_out(attn, queries))
        )

        for blk in self.blocks[1:]:
            q = queries + query_pe
            queries = blk.norm1(queries + blk.self_attn(q, q, queries))
            kp = keys + self.key_pe
            queries = blk.norm2(
                queries + _token_to_image(blk.cross_attn_token_to_image, queries + query_pe, kp, keys)
            )
            queries = blk.norm3(queries + blk.mlp(queries))
            keys = blk.norm4(
                _image_to_token(blk.cross_attn_image_to_token, kp, queries + query_pe, queries, residual=keys)
            )

        # Only the IoU and mask tokens are read after the final attention, and each query attends on its own,
        # so the prompt tokens are dropped before it.
        n_out = 1 + dec.num_mask_tokens + (self.hq_features is not None)
        queries, query_pe = queries[:, :n_out], query_pe[:, :n_out]
        kp = keys + self.key_pe
        queries = t.norm_final_attn(
            queries + _token_to_image(t.final_attn_token_to_image, queries + query_pe, kp, keys)
        )

        return queries, keys

    def masks(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """B x 3 x s x s multimask low-res logits (HQ: B x 1 x s x s); pixels that only cover the resize
        padding are left at 0."""
        dec = self.dec
        b = queries.shape[0]
        h, w = self.hw
        c = keys.shape[-1]
        # B x C x r x c view of the kept rows/columns (channels-last strides, no copy)
        src = keys.view(b, h, w, c)[:, : self.emb_rows, : self.emb_cols].permute(0, 3, 1, 2)
        # output_upscaling = [ConvT, LayerNorm2d, act, ConvT, act]; the convolutions keep channels-last
        # layout, so the channel LayerNorm runs as one fused layer_norm over the contiguous last dim.
        conv1, norm_module, act1, conv2, act2 = dec.output_upscaling
        norm = cast(LayerNorm2d, norm_module)
        x = conv1(src)
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), norm.weight, norm.bias, norm.eps)
        x = act2(conv2(act1(x.permute(0, 3, 1, 2))))  # B x C/8 x 4r x 4c
        n_multi = dec.num_mask_tokens - 1
        hyper = torch.stack(
            [dec.output_hypernetworks_mlps[i](queries[:, i + 1, :]) for i in range(1, dec.num_mask_tokens)],
            dim=1,
        )  # B x 3 x C/8
        _, c8, uh, uw = x.shape
        if self.hq_features is not None:
            part = self._hq_masks(queries, x, hyper)
            n_multi = 1
        else:
            part = (x.permute(0, 2, 3, 1).reshape(b, uh * uw, c8) @ hyper.transpose(1, 2)).transpose(1, 2)
        part = part.reshape(b, n_multi, uh, uw)
        low = part.new_zeros(b, n_multi, 4 * h, 4 * w)
        low[:, :, :uh, :uw] = part
        return low

    def _hq_masks(self, queries: torch.Tensor, x: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """B x 1 x (uh*uw) HQ-SAM logits from the upscaled features x (B x C/8 x uh x uw) and the multimask
        hypernetwork outputs (B x 3 x C/8)."""
        dec = self.dec
        assert self.hq_features is not None
        b, c8, uh, uw = x.shape
        x_hq = dec.embedding_maskfeature(x) + self.hq_features[:, :, :uh, :uw]
        hyper_hq = dec.hf_mlp(queries[:, 1 + dec.num_mask_tokens, :])[:, :, None]  # B x C/8 x 1
        out = (x_hq.permute(0, 2, 3, 1).reshape(b, uh * uw, c8) @ hyper_hq).transpose(1, 2)
        if self.hq_token_only:
            return out
        _, best = torch.max(dec.iou_prediction_head(queries[:, 0, :])[:, 1:], dim=1)
        sam = x.permute(0, 2, 3, 1).reshape(b, uh * uw, c8) @ hyper[torch.arange(b), best][:, :, None]
        return sam.transpose(1, 2) + out


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """... x N x (H*d) -> ... x H x N x d."""
    *lead, n, c = x.shape
    return x.reshape(*lead, n, n_heads, c // n_heads).transpose(-3, -2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """B x H x N x d -> B x N x (H*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _value_out(attn: Attention, v_in: torch.Tensor) -> torch.Tensor:
    """Tokens' values pushed through the output projection, per head: B x (H*T) x C (bias folded in once)."""
    n_heads = attn.num_heads
    v = _heads(attn.v_proj(v_in), n_heads)  # B x H x T x d
    w_o = attn.out_proj.weight  # C x (H*d)
    c, hd = w_o.shape
    w_o = w_o.reshape(c, n_heads, hd // n_heads).permute(1, 2, 0)  # H x d x C
    vo = v @ w_o  # B x H x T x C
    # Each head's softmax weights sum to 1, so adding bias / H to every head's values adds the bias once.
    vo = vo + attn.out_proj.bias / n_heads
    return vo.flatten(1, 2)


def _token_to_image(
    attn: Attention, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor
) -> torch.Tensor:
    """``attn(q_in, k_in, v_in)`` for few query tokens (B x T x C) over many image tokens (B x N x C), folded."""
    n_heads = attn.num_heads
    b, t, _ = q_in.shape
    q = _heads(attn.q_proj(q_in), n_heads)  # B x H x T x d
    d = q.shape[-1]
    w_k = attn.k_proj.weight  # (H*d) x C
    qk = (q @ w_k.reshape(n_heads, d, -1)) / math.sqrt(d)  # B x H x T x C; k bias: per-row constant, dropped
    scores = qk.flatten(1, 2) @ k_in.transpose(1, 2)  # B x (H*T) x N
    a = torch.softmax(scores, dim=-1)
    av = (a @ v_in).reshape(b, n_heads, t, -1)  # B x H x T x C
    w_v = attn.v_proj.weight.reshape(n_heads, d, -1)  # H x d x C
    v = av @ w_v.transpose(1, 2) + attn.v_proj.bias.reshape(n_heads, 1, d)  # B x H x T x d
    return attn.out_proj(_merge(v))


def _image_to_token(
    attn: Attention, q_img: torch.Tensor, k_tok: torch.Tensor, v_tok: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """``residual + attn(q_img, k_tok, v_tok)`` for many image queries (B x N x C) and few tokens, folded.

    ``residual`` is updated in place (the caller's image tokens, which it replaces by the result).
    """
    n_heads = attn.num_heads
    b = q_img.shape[0]
    k = _heads(attn.k_proj(k_tok), n_heads)  # B x H x T x d
    d, t = k.shape[-1], k.shape[-2]
    w_q = attn.q_proj.weight.reshape(n_heads, d, -1)  # H x d x C
    kq = ((k @ w_q) / math.sqrt(d)).flatten(1, 2)  # B x (H*T) x C
    kb = (k @ attn.q_proj.bias.reshape(n_heads, d, 1)) / math.sqrt(d)  # B x H x T x 1: varies over tokens
    scores = torch.baddbmm(kb.reshape(b, n_heads * t, 1), kq, q_img.transpose(1, 2))  # B x (H*T) x N
    a = torch.softmax(scores.reshape(b, n_heads, t, -1), dim=2).reshape(b, n_heads * t, -1)
    return residual.baddbmm_(a.transpose(1, 2), _value_out(attn, v_tok))  # residual is not read again
