"""SAM 2 / SAM 2.1 in image mode against the official code (PyPI ``sam2==1.1.0``, the oracle), on random weights.

Every tensor of the state dict is randomised with a seeded value of a sensible scale (`oracle_sam2`), and the
same dict is loaded into segany's model and the official one; segany's `SamPredictor` is compared with the
official `SAM2ImagePredictor` (SAM 2's default post-processing: dynamic multimask on).

Covered:

* ``sam2.1_hiera_tiny``, the whole released architecture at 1024²: image embedding and high-resolution
  features; on a 301×453 image (non-square, not a multiple of 16): one point (three masks), fg+bg points, a box
  (one and three masks), box + background point, a mask prompt from the previous call's logits with a new
  point, three boxes at once (numpy `predict` and `predict_torch`), image-sized logits, ``normalize_coords=False``,
  and the object-score option (no official equivalent in image mode: checked against the official decoder's
  object score).
* ``sam2.1_hiera_small``, ``_base_plus``, ``_large`` and ``sam2_hiera_tiny`` depth-reduced (one block per stage, two
  in stage 3, one of them global; the real widths, heads, windows and position tables), on a 517×1203 image
  (wider than the 1024² input, so the antialiased resize downsamples): one point, a box; on ``small`` the
  single-mask token is made unstable so that the dynamic-multimask fallback is taken (asserted).
* All 8 registry names: state_dict keys and shapes equal the official ones (``tests/reference``: the shared
  SAM 2.1 lists, and SAM 2 lists written from the official builder); official-format files (``{"model": sd}``
  .pt, a raw state dict, .safetensors) load through the registry and `load_model`; a SAM 2.1 file is refused
  for a SAM 2 name; a malformed video-memory weight is refused with its key named.

Bar: binary masks identical, logits (low-res and image-sized) and IoU predictions within 1e-4. Reached: 0.0 on
every case (bit-identical) on CPU.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from oracle_sam2 import random_state_dict, twin_sam2
from paths import REFERENCE
from sam2.sam2_image_predictor import SAM2ImagePredictor

from segany import SamPredictor
from segany.build import TINY, build_sam, load_model, sam_model_registry
from segany.build_sam2 import SAM2_CONFIGS, build_sam2
from segany.checkpoint import CheckpointError, check_state_dict, save_safetensors
from segany.modeling.sam2 import Sam2
from segany.modeling.sam2_decoder import NO_OBJ_SCORE, unpack_high_res

TOL = 1e-4
# worst absolute difference seen per comparison kind (printed with -s)
WORST: dict[str, float] = {}


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(xx / 17.0) + np.cos(yy / 23.0)) * 60 + 128
    return np.clip(base[..., None] + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _diff(kind: str, a, b) -> float:
    a, b = (torch.as_tensor(np.asarray(x, dtype=np.float32)) for x in (a, b))
    assert a.shape == b.shape, (a.shape, b.shape)
    d = float((a - b).abs().max()) if a.numel() else 0.0
    WORST[kind] = max(WORST.get(kind, 0.0), d)
    print(f"{kind}: max abs diff {d:.3g}")
    return d


def _compare(ours, theirs) -> None:
    masks_a, iou_a, low_a = (np.asarray(x) for x in ours)
    masks_b, iou_b, low_b = (np.asarray(x) for x in theirs)
    assert masks_a.shape == masks_b.shape
    assert np.array_equal(masks_a, masks_b), f"{(masks_a != masks_b).sum()} mask pixels differ"
    assert _diff("iou", iou_a, iou_b) < TOL
    assert _diff("low-res logits", low_a, low_b) < TOL


# ---------------------------------------------------------------------------------------------- hiera_tiny, full


@pytest.fixture(scope="module")
def tiny():
    ours, theirs, _ = twin_sam2("sam2.1_hiera_tiny", seed=0)
    image = _image(301, 453, seed=5)
    p, q = SamPredictor(ours), SAM2ImagePredictor(theirs)
    p.set_image(image)
    q.set_image(image)
    return p, q, image


def _prompts(h: int, w: int) -> dict[str, dict]:
    box = np.array([w * 0.1, h * 0.2, w * 0.8, h * 0.9])
    return {
        "one_point": dict(point_coords=np.array([[w * 0.4, h * 0.5]]), point_labels=np.array([1])),
        "fg_bg_points": dict(
            point_coords=np.array([[w * 0.3, h * 0.3], [w * 0.7, h * 0.6], [w * 0.5, h * 0.8]]),
            point_labels=np.array([1, 0, 1]),
            multimask_output=False,
        ),
        "box": dict(box=box, multimask_output=False),
        "box_multimask": dict(box=box),
        "box_point": dict(
            box=box,
            point_coords=np.array([[w * 0.5, h * 0.5]]),
            point_labels=np.array([0]),
            multimask_output=False,
        ),
        "border_points": dict(
            point_coords=np.array([[0, 0], [w - 1, h - 1], [w, h / 2]]), point_labels=np.array([1, 1, 0])
        ),
    }


def test_tiny_image_features(tiny):
    p, q, _ = tiny
    assert _diff("image embedding", p.get_image_embedding(), q.get_image_embedding()) < TOL
    s0, s1 = unpack_high_res(p.interm_features, p.model.mask_decoder.transformer_dim // 8)
    hr0, hr1 = q._features["high_res_feats"]
    assert _diff("high-res features", s0, hr0) < TOL
    assert _diff("high-res features", s1, hr1) < TOL
    assert p.input_size == (1024, 1024) and p.original_size == (301, 453)
    # the oracle is the released architecture (guards the depth override of the reduced variants)
    assert {k: tuple(v.shape) for k, v in q.model.state_dict().items()} == _reference("sam2.1_hiera_tiny")


@pytest.mark.parametrize("name", list(_prompts(1, 1)))
def test_tiny_predict(tiny, name):
    p, q, image = tiny
    kw = _prompts(*image.shape[:2])[name]
    _compare(p.predict(**kw), q.predict(**kw))


def test_tiny_image_sized_logits(tiny):
    p, q, image = tiny
    for name in ("one_point", "box_point"):
        kw = _prompts(*image.shape[:2])[name]
        assert (
            _diff(
                "image-sized logits",
                p.predict(**kw, return_logits=True)[0],
                q.predict(**kw, return_logits=True)[0],
            )
            < TOL
        )


def test_tiny_normalized_coords(tiny):
    p, q, image = tiny
    kw = dict(
        point_coords=np.array([[0.25, 0.5], [0.75, 0.25]]),
        point_labels=np.array([1, 0]),
        box=np.array([0.1, 0.1, 0.9, 0.8]),
        normalize_coords=False,
    )
    _compare(p.predict(**kw), q.predict(**kw))


def test_tiny_mask_prompt_from_previous_logits(tiny):
    p, q, image = tiny
    kw = _prompts(*image.shape[:2])["one_point"]
    _, iou, low = q.predict(**kw)
    prev = low[np.argmax(iou)][None]
    kw2 = dict(
        point_coords=np.array([[5.0, 7.0], *kw["point_coords"].tolist()]), point_labels=np.array([0, 1])
    )
    for multimask in (False, True):
        _compare(
            p.predict(**kw2, mask_input=prev, multimask_output=multimask),
            q.predict(**kw2, mask_input=prev, multimask_output=multimask),
        )


def test_tiny_batched_boxes(tiny):
    p, q, image = tiny
    h, w = image.shape[:2]
    boxes = np.array([[0, 0, w / 2, h / 2], [w / 4, h / 4, w - 1, h - 1], [10, 20, 30, 40.0]])
    ours = p.predict(box=boxes, multimask_output=False)
    assert ours[0].shape == (3, 1, h, w)
    _compare(ours, q.predict(box=boxes, multimask_output=False))
    # predict_torch with boxes already in the model frame, against the official _predict
    tb = p.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), (h, w))
    a = p.predict_torch(None, None, boxes=tb)
    b = q._predict(
        None,
        None,
        boxes=q._transforms.transform_boxes(torch.as_tensor(boxes, dtype=torch.float), True, (h, w)),
    )
    _compare(*[tuple(t.numpy() for t in r) for r in (a, b)])


def test_tiny_object_score(tiny):
    """``use_object_score``: prompts the official decoder scores absent get empty masks (-32 low-res logits).

    The object-score head's bias is shifted (in segany's model, for this test) by the official scores' median,
    so that some prompts are scored present and some absent.
    """
    p, q, image = tiny
    h, w = image.shape[:2]
    boxes = np.array(
        [[0, 0, w / 2, h / 2], [w / 4, h / 4, w - 1, h - 1], [10, 20, 30, 40.0], [w - 9, h - 9, w, h]]
    )
    tb = q._transforms.transform_boxes(torch.as_tensor(boxes, dtype=torch.float), True, (h, w))
    labels = torch.tensor([[2, 3]], dtype=torch.int).repeat(len(boxes), 1)
    m = q.model
    with torch.no_grad():  # the official decoder's object-score logits for these prompts
        sparse, dense = m.sam_prompt_encoder(points=(tb, labels), boxes=None, masks=None)
        *_, obj = m.sam_mask_decoder(
            image_embeddings=q._features["image_embed"],
            image_pe=m.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            repeat_image=True,
            high_res_features=q._features["high_res_feats"],
        )
    shift = obj[:, 0].median()
    present = (obj[:, 0] > shift).numpy()
    assert 0 < present.sum() < len(present)
    plain = p.predict(box=boxes)
    bias = p.model.mask_decoder.pred_obj_score_head.layers[2].bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias -= shift
    try:
        gated = p.predict(box=boxes, use_object_score=True)
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert np.array_equal(gated[2][present], plain[2][present]) and np.array_equal(gated[1], plain[1])
    assert (gated[2][~present] == -32.0).all() and not gated[0][~present].any()
    assert NO_OBJ_SCORE < -32.0
    sam = SamPredictor(build_sam(TINY))
    sam.set_image(_image(32, 48, seed=0))
    with pytest.raises(ValueError, match="SAM 2 models only"):
        sam.predict(point_coords=np.array([[5, 5]]), point_labels=np.array([1]), use_object_score=True)


# ------------------------------------------------------------------------------------------ depth-reduced sizes

REDUCED = dict(stages=(1, 1, 2, 1), global_att_blocks=(3,))


@pytest.mark.parametrize(
    "name", ["sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large", "sam2_hiera_tiny"]
)
def test_reduced_depth(name):
    ours, theirs, _ = twin_sam2(name, seed=7, **REDUCED)
    unstable = name == "sam2.1_hiera_small"
    if unstable:  # single-mask token with tiny logits: unstable, so the dynamic-multimask fallback is taken
        sd = theirs.state_dict()
        for k in ("weight", "bias"):
            sd[f"sam_mask_decoder.output_hypernetworks_mlps.0.layers.2.{k}"] *= 0.01
        theirs.load_state_dict(sd)
        ours.load_state_dict(sd)
    image = _image(517, 1203, seed=3)
    p, q = SamPredictor(ours), SAM2ImagePredictor(theirs)
    p.set_image(image)
    q.set_image(image)
    assert _diff("image embedding", p.get_image_embedding(), q.get_image_embedding()) < TOL
    h, w = image.shape[:2]
    point = dict(point_coords=np.array([[w * 0.6, h * 0.3]]), point_labels=np.array([1]))
    for kw in (point, dict(box=np.array([w * 0.2, h * 0.1, w * 0.7, h * 0.95]), multimask_output=False)):
        _compare(p.predict(**kw), q.predict(**kw))
    if unstable:
        single = p.predict(**point, multimask_output=False)
        assert not np.array_equal(
            single[2], p.predict(**point, multimask_output=False, dynamic_multimask=False)[2]
        )
        multi = p.predict(**point)
        best = int(np.argmax(multi[1]))
        assert np.array_equal(single[2][0], multi[2][best]) and single[1][0] == multi[1][best]
        _compare(single, q.predict(**point, multimask_output=False))


# ------------------------------------------------------------------------------------ checkpoint keys and files


def _reference(name: str) -> dict[str, tuple[int, ...]]:
    version, size = name.split("_hiera_")
    short = {"tiny": "t", "small": "s", "base_plus": "bp", "large": "l"}[size]
    out = {}
    for line in (REFERENCE / f"{version}_hiera_{short}_keys_shapes.txt").read_text().splitlines():
        key, shape = line.split("\t")
        out[key] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return out


@pytest.mark.parametrize("name", sorted(SAM2_CONFIGS))
def test_keys_and_shapes_match_official(name):
    with torch.device("meta"):
        model = sam_model_registry[name]()
    assert isinstance(model, Sam2)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == _reference(name)


def test_official_files_load(tmp_path: Path):
    ours21 = build_sam2(SAM2_CONFIGS["sam2.1_hiera_tiny"])
    sd = random_state_dict(ours21, seed=1)
    wrapped = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": sd}, wrapped)  # the official release format
    raw = tmp_path / "raw.pth"
    torch.save(sd, raw)
    st = tmp_path / "sam2.1_hiera_tiny.safetensors"
    save_safetensors(st, sd)
    for path in (wrapped, raw, st):
        model = sam_model_registry["sam2.1_hiera_tiny"](checkpoint=path)
        assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    model = load_model("sam2.1_hiera_tiny", wrapped)
    assert isinstance(model, Sam2) and not model.training
    with pytest.raises(ValueError, match="needs --checkpoint"):
        load_model("sam2_hiera_large")
    # a SAM 2.1 file is not a SAM 2 one: its two extra video-memory weights are named
    with pytest.raises(CheckpointError, match="no_obj_embed_spatial"):
        sam_model_registry["sam2_hiera_tiny"](checkpoint=wrapped)
    sd2 = {
        k: v
        for k, v in sd.items()
        if k not in ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight", "obj_ptr_tpos_proj.bias")
    }
    torch.save({"model": sd2}, tmp_path / "sam2_hiera_tiny.pt")
    sam_model_registry["sam2_hiera_tiny"](checkpoint=tmp_path / "sam2_hiera_tiny.pt")
    # `segany convert`: the kind inferred from the keys (2.1 vs 2 by the video-memory weights), the layout kept
    from segany.checkpoint import convert

    out = tmp_path / "converted.safetensors"
    assert convert(wrapped, out) == SAM2_CONFIGS["sam2.1_hiera_tiny"]
    model = sam_model_registry["sam2.1_hiera_tiny"](checkpoint=out)
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    assert convert(tmp_path / "sam2_hiera_tiny.pt", out) == SAM2_CONFIGS["sam2_hiera_tiny"]
    with pytest.raises(CheckpointError, match="no_obj_embed_spatial"):
        convert(wrapped, out, "sam2_hiera_tiny")


def test_malformed_video_memory_weight_is_named():
    model = build_sam2(SAM2_CONFIGS["sam2.1_hiera_tiny"])
    sd = dict(model.state_dict())
    key = "memory_attention.layers.2.cross_attn_image.k_proj.weight"
    sd[key] = torch.zeros(256, 32)  # (256, 64) in the official files
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        check_state_dict(model, sd)
    del sd[key]
    sd.pop("maskmem_tpos_enc")
    with pytest.raises(CheckpointError, match="maskmem_tpos_enc"):
        check_state_dict(model, sd)


def test_embeddings_batch_save_and_load(tmp_path: Path):
    """SAM 2's embedding (stride-16 map + packed high-res features) goes through `embed_images`, `save`/`load`
    and `set_embedding` like SAM's, and answers prompts identically (depth-reduced tiny trunk)."""
    from segany.predictor import ImageEmbedding

    model = build_sam2(replace(SAM2_CONFIGS["sam2.1_hiera_tiny"], stages=(1, 1, 1, 1), global_att_blocks=()))
    model.load_state_dict(random_state_dict(model, seed=2))
    p = SamPredictor(model)
    images = [_image(120, 90, 1), _image(64, 200, 2)]
    kw = dict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1]), box=np.array([5, 5, 60, 50]))
    for image, emb in zip(images, p.embed_images(images), strict=True):
        p.set_image(image)
        single = p.predict(**kw)
        assert _diff("batched embedding", emb.features, p.get_image_embedding()) < 1e-5
        assert emb.interm_features is not None and emb.interm_features.shape == (1, 192, 128, 128)
        path = tmp_path / "e.safetensors"
        p.get_embedding().save(path)
        p.reset_image()
        p.set_embedding(ImageEmbedding.load(path, image=image, model=model))
        again = p.predict(**kw)
        assert all(np.array_equal(a, b) for a, b in zip(again, single, strict=True))
