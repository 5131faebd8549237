"""Graph-cut refinement (segany.masks.graphcut) and its use by SamPredictor."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from segany.evaluate.clicks import mask_iou
from segany.masks.graphcut import GraphCutRefiner


def _scene(h: int = 120, w: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured red disk on a textured green/blue background, and its true mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - 60) ** 2 + (xx - 75) ** 2 < 35**2
    img = np.empty((h, w, 3), np.float64)
    img[...] = (40, 150, 110)
    img[disk] = (200, 40, 50)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), disk


def _logits_from(mask: np.ndarray, strength: float = 3.0) -> np.ndarray:
    return np.where(mask, strength, -strength).astype(np.float32)


def test_colours_complete_a_mask_the_network_got_half_right():
    img, disk = _scene()
    yy, xx = np.mgrid[: disk.shape[0], : disk.shape[1]]
    # The network missed the disk's right part and took a strip of background below it, unsure (|z| = 1). The
    # crop (the mask's box plus 25 %) still holds the whole disk: what lies beyond it stays background.
    network = (disk & (xx < 92)) | ((yy > 96) & (yy < 104) & (xx > 40) & (xx < 92))
    logits = _logits_from(network, 1.0)
    before = mask_iou(network, disk)
    out = GraphCutRefiner()(img, logits, np.array([[60.0, 60.0]]), np.array([1]))
    assert out.dtype == bool and out.shape == disk.shape
    assert before < 0.8
    assert mask_iou(out, disk) > 0.95, mask_iou(out, disk)


def test_clicks_are_hard_constraints():
    img, disk = _scene()
    logits = _logits_from(disk, 8.0)  # the network is sure of the disk
    ref = GraphCutRefiner(seed_radius=4)
    out = ref(img, logits, np.array([[75.0, 60.0], [20.0, 20.0]]), np.array([0, 1]))
    assert (
        not out[60, 75] and not out[58, 77]
    )  # negative click (and its disk) removed from a confident object
    assert out[20, 20] and out[22, 18]  # positive click (and its disk) added in the background
    # A label other than 0/1 (SAM's -1 padding) is no constraint at all.
    out = ref(img, logits, np.array([[75.0, 60.0]]), np.array([-1]))
    assert out[60, 75]


def test_nothing_to_refine_returns_the_network_mask():
    img, _ = _scene()
    empty = np.full(img.shape[:2], -5.0, np.float32)
    assert not GraphCutRefiner()(img, empty).any()
    assert not GraphCutRefiner()(img, empty, np.array([[10.0, 10.0]]), np.array([0])).any()
    # A mask too small to fit a colour model is returned as the network gave it.
    tiny = np.full(img.shape[:2], -5.0, np.float32)
    tiny[50:53, 50:53] = 5.0
    out = GraphCutRefiner(margin=0.0)(img, tiny)
    assert np.array_equal(out, tiny > 0)


def test_pixels_outside_the_crop_are_background():
    img, disk = _scene(h=200, w=300)
    logits = _logits_from(disk, 3.0)
    out = GraphCutRefiner(margin=0.1)(img, logits)
    assert not out[:, 150:].any() and not out[130:].any()
    assert mask_iou(out, disk) > 0.95


def test_large_crops_are_solved_at_a_reduced_scale():
    img, disk = _scene(h=240, w=320)
    img = np.ascontiguousarray(img)
    xx = np.mgrid[:240, :320][1]
    network = disk & (xx < 92)
    args = (img, _logits_from(network, 1.0), np.array([[60.0, 60.0]]), np.array([1]))
    small = GraphCutRefiner(max_pixels=4096)(*args)  # the crop is ~115x120 px: solved at ~0.55 scale
    full = GraphCutRefiner()(*args)
    assert small.shape == disk.shape
    assert mask_iou(small, disk) > 0.9 and mask_iou(small, full) > 0.9


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(network_weight=-1.0),
        dict(iterations=0),
        dict(colour_bins=10),
        dict(margin=-0.1),
        dict(max_pixels=10),
    ],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        GraphCutRefiner(**kwargs)


def test_bad_inputs_are_refused():
    img, disk = _scene()
    ref = GraphCutRefiner()
    with pytest.raises(ValueError, match="uint8"):
        ref(img.astype(np.float32), _logits_from(disk))
    with pytest.raises(ValueError, match="do not match the image"):
        ref(img, _logits_from(disk)[:-1])
    with pytest.raises(ValueError, match="do not match"):
        ref(img, _logits_from(disk), np.zeros((2, 2)), np.zeros(3))


# ------------------------------------------------------------------------------------------ predictor


def _tiny_predictor(refiner):
    from segany import SamPredictor
    from segany.build import build_sam_tiny

    torch.manual_seed(0)
    return SamPredictor(build_sam_tiny().eval(), refiner=refiner)


def test_predictor_refines_boolean_masks_only_when_asked():
    img, disk = _scene()
    plain = _tiny_predictor(False)
    refined = _tiny_predictor(True)
    assert plain.refiner is None and isinstance(refined.refiner, GraphCutRefiner)
    for p in (plain, refined):
        p.set_image(img)
    kw = dict(point_coords=np.array([[75, 60]]), point_labels=np.array([1]))
    logits_plain, s0, low0 = plain.predict(**kw, return_logits=True)
    logits_ref, s1, low1 = refined.predict(**kw, return_logits=True)
    np.testing.assert_array_equal(logits_plain, logits_ref)  # logits are the network's own
    np.testing.assert_array_equal(s0, s1)
    masks_plain, _, _ = plain.predict(**kw)
    masks_ref, _, _ = refined.predict(**kw)
    assert masks_ref.dtype == bool and masks_ref.shape == masks_plain.shape == (3, *disk.shape)
    expected = np.stack(
        [GraphCutRefiner()(img, lg, kw["point_coords"], kw["point_labels"]) for lg in logits_plain]
    )
    np.testing.assert_array_equal(masks_ref, expected)
    np.testing.assert_array_equal(masks_plain, logits_plain > 0)


def test_fed_back_logits_agree_with_the_refined_mask():
    """The low-res logits a refined call returns (the next call's mask_input) have the refined mask's sign in every
    cell the refined mask mostly covers or mostly leaves out, and the network's value where the two agree."""
    from segany.predictor import REFINED_LOGIT

    img, _ = _scene()
    plain, refined = _tiny_predictor(False), _tiny_predictor(True)
    for p in (plain, refined):
        p.set_image(img)
    kw = dict(point_coords=np.array([[75, 60]]), point_labels=np.array([1]))
    _, _, low_net = plain.predict(**kw)
    masks, _, low = refined.predict(**kw)
    assert low.shape == low_net.shape
    for k in range(3):
        # The refined mask in the low-res frame: resize to the model input, pad, area-average into cells.
        h, w = refined.input_size
        size = refined.model.image_encoder.img_size
        frac = np.zeros((size, size), np.float32)
        frac[:h, :w] = cv2.resize(masks[k].astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        cell = cv2.resize(frac, low.shape[-2:][::-1], interpolation=cv2.INTER_AREA) > 0.5
        assert np.all(low[k][cell] >= REFINED_LOGIT) and np.all(low[k][~cell] <= -REFINED_LOGIT)
        agree = (low_net[k] >= REFINED_LOGIT) == cell
        agree &= (low_net[k] <= -REFINED_LOGIT) == ~cell
        np.testing.assert_array_equal(low[k][agree], low_net[k][agree])
        assert cell.any() and (~cell).any()


def test_predictor_refines_each_box_with_its_own_prompt():
    img, _ = _scene()
    pred = _tiny_predictor(True)
    pred.set_image(img)
    boxes = np.array([[30, 20, 120, 100], [0, 0, 50, 40]])
    masks, scores, low = pred.predict(box=boxes, multimask_output=False)
    logits, _, _ = pred.predict(box=boxes, multimask_output=False, return_logits=True)
    assert masks.shape == (2, 1, *img.shape[:2]) and masks.dtype == bool
    for k in range(2):
        np.testing.assert_array_equal(masks[k, 0], GraphCutRefiner()(img, logits[k, 0], None, None, boxes[k]))


def test_refinement_is_opt_in_for_every_built_in_model():
    """One prompt, one mask everywhere: the page and the generator show the network's masks, so the predictor
    does too unless the graph cut is asked for."""
    from segany import SamPredictor, sam_model_registry
    from segany.build import build_sam_tiny

    assert SamPredictor(sam_model_registry["default"]()).refiner is None
    assert isinstance(SamPredictor(sam_model_registry["default"](), refiner=True).refiner, GraphCutRefiner)
    assert SamPredictor(build_sam_tiny()).refiner is None


def test_refinement_after_set_embedding_needs_the_matching_image():
    img, _ = _scene()
    pred = _tiny_predictor(True)
    pred.set_image(img)
    emb = pred.get_embedding()
    other = _tiny_predictor(True)
    other.set_embedding(emb)  # no image: masks are the network's, thresholded
    kw = dict(point_coords=np.array([[75, 60]]), point_labels=np.array([1]))
    logits, _, _ = other.predict(**kw, return_logits=True)
    np.testing.assert_array_equal(other.predict(**kw)[0], logits > 0)
    other.set_embedding(emb, img)
    np.testing.assert_array_equal(other.predict(**kw)[0], pred.predict(**kw)[0])
    before = other.predict(**kw)[0]
    with pytest.raises(ValueError, match="embedding was computed for"):
        other.set_embedding(emb, img[:-4])
    assert other.can_refine  # the refused call changed nothing
    np.testing.assert_array_equal(other.predict(**kw)[0], before)


def test_refine_option_of_the_cli():
    import argparse

    from segany.build import build_sam_tiny
    from segany.cli.model_args import add_refine_arg, predictor_from_args

    p = argparse.ArgumentParser()
    add_refine_arg(p)
    tiny, default = build_sam_tiny(), build_sam_tiny()
    default.mask_refiner = GraphCutRefiner(iterations=1)  # as the default model's builder does
    assert predictor_from_args(tiny, p.parse_args([])).refiner is None
    assert isinstance(predictor_from_args(tiny, p.parse_args(["--refine", "on"])).refiner, GraphCutRefiner)
    assert predictor_from_args(default, p.parse_args([])).refiner == GraphCutRefiner(iterations=1)
    assert predictor_from_args(default, p.parse_args(["--refine", "off"])).refiner is None
    with pytest.raises(SystemExit):
        p.parse_args(["--refine", "maybe"])


def test_instance_evaluation_refines_box_masks_when_the_predictor_does():
    from segany.evaluate.instances import masks_from_boxes

    img, _ = _scene()
    boxes = np.array([[30, 20, 120, 100], [0, 0, 50, 40]], np.float32)
    plain, refined = _tiny_predictor(False), _tiny_predictor(True)
    for p in (plain, refined):
        p.set_image(img)
    net = masks_from_boxes(plain, boxes)
    out = masks_from_boxes(refined, boxes)
    assert out.shape == net.shape == (2, *img.shape[:2])
    # Same network answer, then the graph cut with each box: recompute it from the network's logits.
    h, w = img.shape[:2]
    t = torch.as_tensor(boxes)
    tb = plain.transform.apply_boxes_torch(t, (h, w))
    _, iou, low = plain.predict_torch(None, None, boxes=tb, multimask_output=True)
    chosen = low[torch.arange(2), iou.argmax(1)][:, None]
    logits, _, _ = plain.predict_torch(
        None, None, boxes=tb, mask_input=chosen, multimask_output=False, return_logits=True
    )
    np.testing.assert_array_equal(net, logits[:, 0].numpy() > 0)
    for k in range(2):
        np.testing.assert_array_equal(
            out[k], GraphCutRefiner()(img, logits[k, 0].numpy(), None, None, boxes[k])
        )


def test_refine_masks_needs_a_refiner_and_the_pixels():
    img, _ = _scene()
    p = _tiny_predictor(False)
    p.set_image(img)
    with pytest.raises(RuntimeError, match="no refiner"):
        p.refine_masks(np.zeros((1, 1, *img.shape[:2]), np.float32))
    assert not p.can_refine
    p.refiner = GraphCutRefiner()
    assert p.can_refine  # the pixels were kept by set_image all along
    assert p.refine_masks(np.full((1, 1, *img.shape[:2]), -3.0, np.float32)).shape == (1, 1, *img.shape[:2])


def test_a_bgr_image_is_refined_with_its_rgb_colours():
    img, _ = _scene()
    kw = dict(point_coords=np.array([[75, 60]]), point_labels=np.array([1]))
    rgb_pred, bgr_pred = _tiny_predictor(True), _tiny_predictor(True)
    rgb_pred.set_image(img)
    bgr_pred.set_image(np.ascontiguousarray(img[..., ::-1]), image_format="BGR")
    np.testing.assert_array_equal(bgr_pred.predict(**kw)[0], rgb_pred.predict(**kw)[0])
    emb = rgb_pred.get_embedding()
    bgr_pred.set_embedding(emb, np.ascontiguousarray(img[..., ::-1]), image_format="BGR")
    np.testing.assert_array_equal(bgr_pred.predict(**kw)[0], rgb_pred.predict(**kw)[0])
