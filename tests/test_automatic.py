"""SamAutomaticMaskGenerator: same masks as the official generator on identical random weights.

Both models are built from the same tiny config (official classes from ``segment_anything.modeling``) and get
the same state_dict with *every* parameter and buffer randomised (relative-position tables and the random
Fourier matrix included). Random weights give low predicted IoUs, unstable logits and masks that span most of
the image, so the thresholds are lowered (and the NMS thresholds raised, or everything collapses into one box)
until a few dozen masks survive each stage.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from segany.automatic import SA1B_PRESET, SamAutomaticMaskGenerator, _GridDecoder, _upsample
from segany.build import TINY
from segany.masks import decode_rle, rle_to_mask
from segany.predictor import SamPredictor

sa = pytest.importorskip("segment_anything")
from oracle import amg_twin_models  # noqa: E402


def smooth_image(seed: int, h: int = 200, w: int = 300) -> np.ndarray:
    """Low-frequency colour field: random encoders then give masks made of a few large regions."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.integers(0, 256, (1, 3, 4, 6)).astype(np.float32))
    big = torch.nn.functional.interpolate(small, (h, w), mode="bicubic", align_corners=False)
    return big[0].permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()


def to_mask(seg) -> np.ndarray:
    if isinstance(seg, np.ndarray):
        return seg
    if isinstance(seg["counts"], list):
        return rle_to_mask(seg)
    return decode_rle(seg)


def assert_same_masks(ours: list[dict], ref: list[dict]) -> None:
    assert len(ours) == len(ref)
    if not ref:
        return
    a = np.stack([to_mask(r["segmentation"]) for r in ours]).reshape(len(ours), -1).astype(np.float32)
    b = np.stack([to_mask(r["segmentation"]) for r in ref]).reshape(len(ref), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    rows, cols = linear_sum_assignment(-iou)
    assert iou[rows, cols].min() >= 0.99
    for i, j in zip(rows, cols, strict=True):
        o, r = ours[i], ref[j]
        assert abs(o["predicted_iou"] - r["predicted_iou"]) <= 1e-4
        s_o, s_r = o["stability_score"], r["stability_score"]
        assert (np.isnan(s_o) and np.isnan(s_r)) or abs(s_o - s_r) <= 1e-4
        np.testing.assert_allclose(o["point_coords"], r["point_coords"], atol=1e-6)
        assert list(o["crop_box"]) == list(r["crop_box"])
        if iou[i, j] == 1.0:
            assert o["area"] == r["area"] and list(o["bbox"]) == list(r["bbox"])


# Settings tuned so that random weights leave a few dozen masks and every stage removes some.
LOW = {
    "points_per_side": 8,
    "pred_iou_thresh": 0.12,
    "stability_score_thresh": 0.02,
    "stability_score_offset": 0.3,
    "box_nms_thresh": 0.97,
    "crop_nms_thresh": 0.97,
}


@pytest.fixture(scope="module")
def pair():
    return amg_twin_models(TINY, 0)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"crop_n_layers": 1, "crop_n_points_downscale_factor": 2, "output_mode": "uncompressed_rle"},
        {"min_mask_region_area": 20},
        {
            "crop_n_layers": 1,
            "crop_n_points_downscale_factor": 2,
            "min_mask_region_area": 20,
            "output_mode": "coco_rle",
        },
        {"output_mode": "coco_rle", "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
        {"box_nms_thresh": 1.0, "stability_score_thresh": 0.3},  # no NMS: every filter decision shows
    ],
    ids=[
        "plain",
        "crops+uncompressed",
        "small-regions",
        "crops+small-regions+coco",
        "no-filters+coco",
        "no-nms",
    ],
)
def test_same_masks_as_official(pair, settings):
    off, ours = pair
    kw = {**LOW, **settings}
    image = smooth_image(0)
    ref = sa.SamAutomaticMaskGenerator(off, **kw).generate(image)
    got = SamAutomaticMaskGenerator(ours, **kw).generate(image)
    assert len(ref) >= 3
    assert_same_masks(got, ref)
    assert set(got[0]) == set(ref[0])
    if kw.get("output_mode", "binary_mask") == "binary_mask":
        assert got[0]["segmentation"].dtype == bool and got[0]["segmentation"].shape == image.shape[:2]


def test_grid_decoder_matches_official_decoder(pair):
    off, ours = pair
    predictor = sa.SamPredictor(off)
    image = smooth_image(1, 120, 90)
    predictor.set_image(image)
    pts = np.array([[5.0, 7.0], [60.5, 33.0], [89.0, 119.0], [30.0, 100.0]])
    coords = torch.as_tensor(predictor.transform.apply_coords(pts, image.shape[:2]), dtype=torch.float32)
    ref_low, ref_iou = off.mask_decoder(
        image_embeddings=predictor.features,
        image_pe=off.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=off.prompt_encoder(
            points=(coords[:, None], torch.ones(4, 1, dtype=torch.int)), boxes=None, masks=None
        )[0],
        dense_prompt_embeddings=off.prompt_encoder(points=None, boxes=None, masks=None)[1],
        multimask_output=True,
    )
    with torch.no_grad():
        dec = _GridDecoder(ours, predictor.features, predictor.input_size)
        low, iou = dec(coords)
        r, c = dec.low_rows, dec.low_cols
        torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(low[..., :r, :c], ref_low[..., :r, :c].detach(), atol=1e-4, rtol=1e-4)
        # The partial x4 upsampling equals the official two-step postprocessing (bit for bit at 2 threads;
        # with 1 thread the interpolation kernel's vectorisation differs by float rounding).
        full = off.postprocess_masks(ref_low.detach(), predictor.input_size, predictor.original_size)
        part = _upsample(
            ref_low.detach().flatten(0, 1), off.image_encoder.img_size, predictor.input_size, (120, 90)
        )
        torch.testing.assert_close(part, full.flatten(0, 1), atol=1e-5, rtol=0)


def test_fast_mode_subset_of_exact(pair):
    _, ours = pair
    image = smooth_image(0)
    kw = {**LOW, "stability_score_thresh": 0.3}
    exact = SamAutomaticMaskGenerator(ours, **kw).generate(image)
    fast = SamAutomaticMaskGenerator(ours, **kw, fast=True).generate(image)
    assert len(exact) > 0 and len(fast) > 0
    # Every fast mask is an exact-path mask (fast only pre-screens; kept masks are computed exactly).
    exact_keys = {(tuple(r["point_coords"][0]), r["predicted_iou"]) for r in exact}
    assert all((tuple(r["point_coords"][0]), r["predicted_iou"]) in exact_keys for r in fast)


def test_sa1b_preset_and_area_filter(pair):
    _, ours = pair
    gen = SamAutomaticMaskGenerator.sa1b(
        ours, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    assert gen.crop_n_layers == 2 and gen.min_mask_region_area == 100 and gen.max_mask_area_fraction == 0.95
    assert [len(g) for g in gen.point_grids] == [16, 4, 1]
    assert SA1B_PRESET["crop_n_points_downscale_factor"] == 2
    image = smooth_image(0)
    limit = 0.05 * image.shape[0] * image.shape[1]
    unfiltered = SamAutomaticMaskGenerator(ours, **LOW).generate(image)
    filtered = SamAutomaticMaskGenerator(ours, **LOW, max_mask_area_fraction=0.05).generate(image)
    assert filtered and all(r["area"] < limit for r in filtered)
    assert any(r["area"] >= limit for r in unfiltered)


def test_constructor_validation(pair):
    _, ours = pair
    with pytest.raises(ValueError):
        SamAutomaticMaskGenerator(ours, points_per_side=None)
    with pytest.raises(ValueError):
        SamAutomaticMaskGenerator(ours, point_grids=[np.zeros((4, 2))])  # both set (points_per_side=32)
    with pytest.raises(ValueError):
        SamAutomaticMaskGenerator(ours, output_mode="png")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SamAutomaticMaskGenerator(ours, points_per_side=None, point_grids=[np.zeros((4, 2))], crop_n_layers=1)
    gen = SamAutomaticMaskGenerator(ours, points_per_side=4)
    with pytest.raises(ValueError):
        gen.generate(np.zeros((10, 10), dtype=np.uint8))


def test_no_masks_when_everything_is_filtered(pair):
    off, ours = pair
    kw = {**LOW, "points_per_side": 4, "pred_iou_thresh": 0.99}
    image = smooth_image(3, 64, 96)
    assert sa.SamAutomaticMaskGenerator(off, **kw).generate(image) == []
    assert SamAutomaticMaskGenerator(ours, **kw).generate(image) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(pair):
    _, ours = pair
    image = smooth_image(0)
    kw = {**LOW, "crop_n_layers": 1}
    cpu = SamAutomaticMaskGenerator(ours, **kw).generate(image)
    gpu = SamAutomaticMaskGenerator(ours.to("cuda"), **kw).generate(image)
    ours.to("cpu")
    assert_same_masks(gpu, cpu)


def test_generator_takes_the_models_own_filters_unless_given(tmp_path) -> None:
    from segany.automatic import SamAutomaticMaskGenerator
    from segany.build import build_sam_from_checkpoint, sam_model_registry
    from segany.checkpoint import (
        CheckpointError,
        read_generator_defaults,
        save_safetensors,
        write_generator_defaults,
    )

    torch.manual_seed(0)
    model = sam_model_registry["tiny"]()
    path = tmp_path / "m.safetensors"
    from segany.build import TINY

    save_safetensors(path, model.state_dict(), TINY)
    plain = build_sam_from_checkpoint(path)
    g = SamAutomaticMaskGenerator(plain, points_per_side=2)
    assert (g.pred_iou_thresh, g.stability_score_thresh) == (0.88, 0.95)  # official defaults
    write_generator_defaults(path, {"pred_iou_thresh": 0.6, "stability_score_thresh": 0.8})
    assert read_generator_defaults(path) == {"pred_iou_thresh": 0.6, "stability_score_thresh": 0.8}
    own = build_sam_from_checkpoint(path)
    assert torch.equal(own.mask_decoder.iou_token.weight, plain.mask_decoder.iou_token.weight)
    g = SamAutomaticMaskGenerator(own, points_per_side=2)
    assert (g.pred_iou_thresh, g.stability_score_thresh) == (0.6, 0.8)
    g = SamAutomaticMaskGenerator(own, points_per_side=2, pred_iou_thresh=0.9, stability_score_thresh=0.0)
    assert (g.pred_iou_thresh, g.stability_score_thresh) == (0.9, 0.0)  # the user's values win
    with pytest.raises(CheckpointError, match="malformed"):
        write_generator_defaults(path, {"box_nms_thresh": 0.5})


def test_explain_empty_names_the_filter_that_removed_everything() -> None:
    from segany.automatic import SamAutomaticMaskGenerator
    from segany.build import sam_model_registry

    torch.manual_seed(0)
    model = sam_model_registry["tiny"]().eval()
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    g = SamAutomaticMaskGenerator(model, points_per_side=3, pred_iou_thresh=9.0)
    assert g.generate(image) == []
    why = g.explain_empty()
    assert why.startswith("none of the 27 candidate masks had a predicted IoU above pred_iou_thresh 9")
    g = SamAutomaticMaskGenerator(model, points_per_side=3, pred_iou_thresh=-1.0, stability_score_thresh=1.5)
    assert g.generate(image) == []
    assert "none reached stability_score_thresh 1.5" in g.explain_empty()
    g = SamAutomaticMaskGenerator(model, points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert g.generate(image) and g.explain_empty() == ""  # masks were returned: nothing to explain


def test_a_precomputed_embedding_replaces_the_whole_image_encoder_run(pair):
    """`generate(image, embedding=...)` (the server's cached embedding) gives the same records without running
    the encoder on the whole image; smaller crops are still encoded; another image's embedding is refused."""
    _, ours = pair
    image = smooth_image(3)
    kw = {**LOW, "crop_n_layers": 1, "crop_n_points_downscale_factor": 2}
    ref = SamAutomaticMaskGenerator(ours, **kw).generate(image)
    predictor = SamPredictor(ours)
    predictor.set_image(image)
    embedding = predictor.get_embedding()
    seen: list[tuple[int, ...]] = []
    hook = ours.image_encoder.register_forward_pre_hook(lambda _m, a: seen.append(tuple(a[0].shape)))
    try:
        got = SamAutomaticMaskGenerator(ours, **kw).generate(image, embedding=embedding)
    finally:
        hook.remove()
    assert len(ref) >= 3
    assert_same_masks(got, ref)
    assert len(seen) == 4  # the four layer-1 crops only, not the whole image
    with pytest.raises(ValueError, match="embedding is of a"):
        SamAutomaticMaskGenerator(ours, **LOW).generate(smooth_image(3, h=150), embedding=embedding)
