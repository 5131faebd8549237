"""SAM 2 in `SamAutomaticMaskGenerator` against the official ``SAM2AutomaticMaskGenerator`` (``sam2==1.1.0``).

Random weights shared through `oracle_sam2` (every state-dict tensor randomised; the hypernetworks' last layers
scaled up so that the logits cross the thresholds and the filters keep some masks and drop others). Records are
compared whole, in order: RLE counts, boxes, areas, predicted IoUs, stability scores, points and crop boxes.

* ``sam2.1_hiera_tiny`` at its real size (1024² input), a 97×141 image, 4² grid, lowered filters.
* A depth-reduced Hiera-T at a 256² input (the official predictor told its feature sizes), for the options:
  crop layers with their edge filter and cross-crop NMS, ``use_m2m``, ``multimask_output=False``, every filter
  off, and ``min_mask_region_area``. For the last, the official predictor needs SAM 2's CUDA connected-components
  kernel (without it, it warns and skips the clean-up); the test gives it an OpenCV stand-in with the kernel's
  contract (8-connectivity, each pixel labelled with its component's area).

Reached: identical records (every float bit-identical) on every case, on CPU.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from oracle_sam2 import build_official, official_config_file, random_state_dict
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from test_sam2_parity import _image

from segany import SamAutomaticMaskGenerator
from segany.build import TINY, build_sam
from segany.build_sam2 import SAM2_CONFIGS, build_sam2

NAME = "sam2.1_hiera_tiny"
SMALL_INPUT = 256
LOGIT_GAIN = 30.0


def _twins(seed: int, image_size: int | None = None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(segany, official) with the same random weights; ``image_size`` given: a depth-reduced trunk at that
    input size."""
    if image_size is None:
        theirs = build_official(NAME)
        config = SAM2_CONFIGS[NAME]
    else:
        from sam2.build_sam import build_sam2 as official_build

        overrides = [
            f"++model.image_size={image_size}",
            "++model.image_encoder.trunk.stages=[1,1,2,1]",
            "++model.image_encoder.trunk.global_att_blocks=[3]",
        ]
        theirs = official_build(
            official_config_file(NAME), None, device="cpu", hydra_overrides_extra=overrides
        )
        config = replace(
            SAM2_CONFIGS[NAME], image_size=image_size, stages=(1, 1, 2, 1), global_att_blocks=(3,)
        )
    sd = random_state_dict(theirs, seed)
    for key in sd:
        if key.startswith("sam_mask_decoder.output_hypernetworks_mlps.") and ".layers.2." in key:
            sd[key] = sd[key] * LOGIT_GAIN
    theirs.load_state_dict(sd)
    ours = build_sam2(config)
    ours.load_state_dict(sd)
    return ours, theirs


def _official(model: torch.nn.Module, **kw) -> SAM2AutomaticMaskGenerator:
    gen = SAM2AutomaticMaskGenerator(model, output_mode="uncompressed_rle", **kw)
    s = model.image_size
    if s != 1024:  # the official predictor hard-codes the feature sizes of a 1024² input
        gen.predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return gen


def _assert_identical(ours: list[dict], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == b[key], (key, str(a[key])[:200], str(b[key])[:200])


def test_full_size_tiny_same_records_as_official() -> None:
    ours, theirs = _twins(seed=3)
    image = _image(97, 141, seed=2)
    kw = dict(points_per_side=4, pred_iou_thresh=0.6, stability_score_thresh=0.97, box_nms_thresh=0.999)
    mine = SamAutomaticMaskGenerator(ours, output_mode="uncompressed_rle", **kw)
    records = mine.generate(image)
    _assert_identical(records, _official(theirs, **kw).generate(image))
    fc = mine.filter_counts  # some masks fail each filter
    assert fc["candidates"] > fc["passed_iou"] > fc["passed_stability"] > 0


@pytest.fixture(scope="module")
def small():
    return _twins(seed=5, image_size=SMALL_INPUT)


OFF = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0, crop_nms_thresh=1.0)


@pytest.mark.parametrize(
    "settings",
    [
        dict(points_per_side=5, **OFF),
        dict(points_per_side=4, crop_n_layers=1, pred_iou_thresh=0.6, stability_score_thresh=0.96),
        dict(points_per_side=4, crop_n_layers=1, crop_n_points_downscale_factor=2, **OFF),
        dict(
            points_per_side=4,
            use_m2m=True,
            pred_iou_thresh=0.5,
            stability_score_thresh=0.0,
            box_nms_thresh=1.0,
        ),
        dict(points_per_side=4, multimask_output=False, points_per_batch=5, **OFF),
    ],
    ids=["filters_off", "crops_and_filters", "crops_downscaled", "m2m", "single_mask"],
)
def test_options_same_records_as_official(small, settings) -> None:
    ours, theirs = small
    image = _image(83, 121, seed=4)
    _assert_identical(
        SamAutomaticMaskGenerator(ours, output_mode="uncompressed_rle", **settings).generate(image),
        _official(theirs, **settings).generate(image),
    )


def _connected_components_stand_in(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM 2's CUDA kernel's contract on the CPU: N×1×H×W binary masks → (labels, each pixel's component area),
    8-connectivity, 0 on the background."""
    import cv2

    labels = torch.zeros(mask.shape, dtype=torch.int32)
    areas = torch.zeros(mask.shape, dtype=torch.int32)
    for i, m in enumerate(mask[:, 0].to(torch.uint8).numpy()):
        _, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA].copy()
        area[0] = 0
        labels[i, 0] = torch.from_numpy(lab.astype(np.int32))
        areas[i, 0] = torch.from_numpy(area[lab].astype(np.int32))
    return labels, areas


def test_min_mask_region_area_as_official_with_its_kernel(small, monkeypatch) -> None:
    import sam2.utils.misc

    ours, theirs = small
    image = _image(83, 121, seed=4)
    settings = dict(points_per_side=4, min_mask_region_area=40, **OFF)
    plain = SamAutomaticMaskGenerator(
        ours, output_mode="uncompressed_rle", **{**settings, "min_mask_region_area": 0}
    )
    cleaned = SamAutomaticMaskGenerator(ours, output_mode="uncompressed_rle", **settings).generate(image)
    assert [r["segmentation"] for r in cleaned] != [r["segmentation"] for r in plain.generate(image)]
    monkeypatch.setattr(sam2.utils.misc, "get_connected_components", _connected_components_stand_in)
    _assert_identical(cleaned, _official(theirs, **settings).generate(image))


def test_sam2_defaults_and_options() -> None:
    torch.manual_seed(0)
    model = build_sam2(
        replace(SAM2_CONFIGS[NAME], image_size=SMALL_INPUT, stages=(1, 1, 2, 1), global_att_blocks=(3,))
    )
    g = SamAutomaticMaskGenerator(model, points_per_side=2)
    assert (g.pred_iou_thresh, g.stability_score_thresh) == (
        0.8,
        0.95,
    )  # SAM2AutomaticMaskGenerator's defaults
    assert (g.multimask_output, g.use_m2m, g.mask_threshold) == (True, False, 0.0)
    for kw in (dict(use_m2m=True), dict(multimask_output=False)):
        with pytest.raises(ValueError, match="SAM 2 generator options"):
            SamAutomaticMaskGenerator(build_sam(TINY), points_per_side=2, **kw)
    with pytest.raises(ValueError, match="hq_token_only"):
        SamAutomaticMaskGenerator(model, points_per_side=2, hq_token_only=True)
