"""MobileSAM (``vit_t``), HQ-SAM (``hq_vit_b/l/h``) and Light HQ-SAM (``hq_vit_tiny``): same numbers as the
official code on identical random weights, and the official checkpoint layouts load unchanged.

Oracles (`oracle_family`): ``segment-anything-hq`` 0.3 for HQ-SAM and Light HQ-SAM (its own model and
predictor); for MobileSAM, the official SAM 1.0 model and predictor around that package's TinyViT (MobileSAM's
code is SAM's with TinyViT). Every tensor of the state dict is randomised (BatchNorm statistics, TinyViT's
attention biases, rel-pos tables, tokens), then loaded into both; segany loads it through its strict loader, which
drops exactly TinyViT's unused classifier keys. The official MobileSAM / Light HQ-SAM builders set eval mode
before loading, and TinyViT caches its attention biases when eval mode is set: the oracle calls ``.eval()`` again
after loading so that both sides use the loaded biases (segany always does; `test_official_bias_cache_*`).

What runs:
* ``vit_t``, ``hq_vit_tiny``, ``hq_vit_b``: the full architectures at 1024 px, each on one non-square image whose
  sides are not multiples of 16, through ``SamPredictor`` vs the official predictor: image embedding (and HQ's
  early features), one point (multimask), fg+bg points, a box, box+point, a mask prompt from the previous
  logits, batched boxes through ``predict_torch``; HQ models also with ``hq_token_only=True``.
* ``hq_vit_l``, ``hq_vit_h``: every key and shape of the full architecture against the official model (built
  on the meta device) and a strict load of a file with that layout; the forward cases above on a depth-reduced
  variant (3 blocks, global attention in blocks 1 and 2 so the early features are not the last block's, 256 px
  input) with the real widths (1024 / 1280, 16 heads) and the real decoder.
* The automatic generator: HQ-SAM's grid decoding against the official HQ-SAM generator (small HQ config), and
  ``vit_t`` against the official generator around the MobileSAM oracle.

Bar: binary masks identical, low-res and image-size logits and IoU predictions within 1e-4. Each family's worst
logit difference is printed (``pytest -s``). One test per family runs all its cases, so that under
``pytest -n 2`` each encoder runs once.
"""

from __future__ import annotations

import ast
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")
pytest.importorskip("timm")  # segment_anything_hq's TinyViT imports it
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import segment_anything_hq  # noqa: F401

from oracle_family import build_official, family_twins, load_official, random_state_dict  # noqa: E402
from paths import REFERENCE  # noqa: E402

from segany import SamAutomaticMaskGenerator, SamPredictor  # noqa: E402
from segany.build import CONFIGS, HQ_VIT_H, HQ_VIT_L, TINY, SamConfig, build_sam, sam_model_registry  # noqa: E402
from segany.checkpoint import (  # noqa: E402
    CheckpointError,
    check_state_dict,
    convert,
    drop_unused_keys,
    infer_kind,
    load_state_dict,
    load_weights_into,
    read_config,
    save_safetensors,
)
from segany.modeling.tiny_vit import TinyAttention, TinyViT  # noqa: E402

LOGIT_TOL = 1e-4

# depth-reduced HQ-SAM L / H: real widths and decoder, 3 blocks (early features from block 1), 256 px input
SHALLOW = dict(encoder_depth=3, encoder_global_attn_indexes=(1, 2), image_size=256, window_size=7)
FAMILIES: dict[str, tuple[SamConfig, tuple[int, int]]] = {
    "vit_t": (CONFIGS["vit_t"], (301, 217)),
    "hq_vit_tiny": (CONFIGS["hq_vit_tiny"], (150, 397)),
    "hq_vit_b": (CONFIGS["hq_vit_b"], (333, 250)),
    "hq_vit_l_shallow": (replace(HQ_VIT_L, **SHALLOW), (203, 121)),
    "hq_vit_h_shallow": (replace(HQ_VIT_H, **SHALLOW), (97, 311)),
}


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(xx / 17.0) + np.cos(yy / 23.0)) * 60 + 128
    return np.clip(base[..., None] + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _official_predictor(config: SamConfig, model: torch.nn.Module):
    if config.hq_token:
        from segment_anything_hq import SamPredictor as Official
    else:
        from segment_anything import SamPredictor as Official
    return Official(model)


class _Worst:
    """Compares segany's (masks, iou, logits) with the official ones and keeps the largest difference."""

    def __init__(self) -> None:
        self.diff = 0.0

    def close(self, a, b, what: str) -> None:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        assert a.shape == b.shape, f"{what}: shape {a.shape} vs official {b.shape}"
        d = float(np.abs(a - b).max()) if a.size else 0.0
        self.diff = max(self.diff, d)
        assert d <= LOGIT_TOL, f"{what}: max abs difference {d:.3g}"

    def same(self, ours, theirs, what: str) -> None:
        """(masks, iou, low-res logits) from predict/predict_torch; masks boolean, or logits (return_logits),
        whose binary masks (> 0, the mask threshold) must then be identical too."""
        (m_a, iou_a, low_a), (m_b, iou_b, low_b) = ours, theirs
        assert m_a.shape == m_b.shape, f"{what}: masks {m_a.shape} vs official {m_b.shape}"
        if m_a.dtype != bool:
            self.close(m_a, m_b, f"{what} (image-size logits)")
            m_a, m_b = m_a > 0, m_b > 0
        assert np.array_equal(m_a, m_b), f"{what}: {(m_a != m_b).sum()} mask pixels differ"
        self.close(iou_a, iou_b, f"{what} (IoU)")
        self.close(low_a, low_b, f"{what} (low-res logits)")


def _prompt_cases(h: int, w: int) -> dict[str, dict]:
    box = np.array([w * 0.1, h * 0.2, w * 0.8, h * 0.9])
    return {
        "one point": dict(point_coords=np.array([[w * 0.4, h * 0.5]]), point_labels=np.array([1])),
        "fg+bg points": dict(
            point_coords=np.array([[w * 0.3, h * 0.3], [w * 0.7, h * 0.6], [w * 0.5, h * 0.8]]),
            point_labels=np.array([1, 0, 1]),
            multimask_output=False,
        ),
        "box": dict(box=box, multimask_output=False),
        "box+point": dict(
            box=box,
            point_coords=np.array([[w * 0.5, h * 0.5]]),
            point_labels=np.array([0]),
            multimask_output=False,
        ),
    }


@pytest.mark.parametrize("family", list(FAMILIES))
def test_same_numbers_as_official(family: str) -> None:
    """Every prompt case with image-size logits (their > 0 masks identical); the boolean path once; HQ models
    again with hq_token_only=True for a point, a box and batched boxes."""
    config, (h, w) = FAMILIES[family]
    ours, theirs, _ = family_twins(config, seed=3)
    image = _image(h, w, seed=5)
    p, q = SamPredictor(ours), _official_predictor(config, theirs)
    p.set_image(image)
    q.set_image(image)
    worst = _Worst()
    worst.close(p.get_image_embedding(), q.get_image_embedding(), "image embedding")
    assert p.input_size == q.input_size and p.original_size == q.original_size
    hq_options = [False]
    if config.hq_token:
        assert p.interm_features is not None
        worst.close(p.interm_features, q.interm_features[0], "early features")
        hq_options = [False, True]

    cases = _prompt_cases(h, w)
    one = cases["one point"]
    worst.same(p.predict(**one), q.predict(**one), "one point (boolean masks)")
    for hq_only in hq_options:
        extra = {"hq_token_only": True} if hq_only else {}
        tag = " hq_token_only" if hq_only else ""
        for name, kw in cases.items():
            if hq_only and name not in ("one point", "box"):
                continue
            logits = p.predict(**kw, **extra, return_logits=True)
            worst.same(logits, q.predict(**kw, **extra, return_logits=True), name + tag)
            if config.hq_token:  # HQ-SAM returns one mask, also for multimask output (official behaviour)
                assert logits[0].shape == (1, h, w)

        if not hq_only:  # a mask prompt: the previous best low-res logits, plus a background point
            _, iou, low = q.predict(**one)
            prev = low[np.argmax(iou)][None]
            kw2 = dict(
                point_coords=np.array([[5.0, 7.0], *one["point_coords"]]), point_labels=np.array([0, 1])
            )
            worst.same(
                p.predict(**kw2, mask_input=prev, multimask_output=False, return_logits=True),
                q.predict(**kw2, mask_input=prev, multimask_output=False, return_logits=True),
                "mask prompt",
            )

        # batched boxes through predict_torch (and the same through predict's K×4 boxes)
        boxes = torch.tensor([[0, 0, w / 2, h / 2], [w / 4, h / 4, w - 1, h - 1], [10, 20, 30, 40.0]])
        a = p.predict_torch(None, None, p.transform.apply_boxes_torch(boxes, (h, w)), **extra)
        b = q.predict_torch(None, None, boxes=q.transform.apply_boxes_torch(boxes, (h, w)), **extra)
        worst.same(tuple(t.numpy() for t in a), tuple(t.numpy() for t in b), "batched boxes" + tag)
        masks, _, _ = p.predict(box=boxes.numpy(), **extra)
        assert np.array_equal(masks, a[0].numpy())

    print(f"\n{family}: worst abs difference vs official {worst.diff:.3g}")


# ------------------------------------------------------------------------------------------- checkpoint layouts
def _reference(name: str) -> dict[str, tuple[int, ...]]:
    lines = (REFERENCE / "family" / f"{name}_keys_shapes.txt").read_text().strip().splitlines()
    return {k: tuple(ast.literal_eval(s)) for k, s in (line.split("\t") for line in lines)}


HEAD_KEYS = {f"image_encoder.{k}" for k in TinyViT.UNUSED_CHECKPOINT_KEYS}


@pytest.mark.parametrize(
    "kind, reference",
    [("vit_t", "mobile_sam_vit_t"), ("hq_vit_b", "sam_hq_vit_b"), ("hq_vit_tiny", "sam_hq_vit_tiny")],
)
def test_keys_and_shapes_match_the_reference_lists(kind: str, reference: str) -> None:
    """segany's state_dict is the official one less exactly TinyViT's classifier (``head.*``, ``norm_head.*``)."""
    with torch.device("meta"):
        model = build_sam(CONFIGS[kind])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref = _reference(reference)
    extra = HEAD_KEYS if CONFIGS[kind].encoder_type == "tiny_vit" else set()
    assert set(ref) - set(ours) == extra
    assert ours == {k: s for k, s in ref.items() if k not in extra}


@pytest.mark.parametrize("kind", ["vit_t", "hq_vit_b", "hq_vit_l", "hq_vit_h", "hq_vit_tiny"])
def test_full_architecture_matches_official_and_loads(tmp_path, kind: str) -> None:
    """Full-size keys and shapes equal the official model's (built on the meta device), and a file with that
    layout (stride-0 zeros) passes the strict loader."""
    config = CONFIGS[kind]
    # the official TinyViT cannot be built on the meta device (it reads its drop-path rates with .item())
    with torch.device("cpu" if config.encoder_type == "tiny_vit" else "meta"):
        off = build_official(config)
    with torch.device("meta"):
        model = build_sam(config)
    theirs = {k: (tuple(v.shape), v.dtype) for k, v in off.state_dict().items()}
    ours = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    extra = HEAD_KEYS if config.encoder_type == "tiny_vit" else set()
    assert set(theirs) - set(ours) == extra
    assert ours == {k: s for k, s in theirs.items() if k not in extra}
    path = tmp_path / "official_layout.pth"
    torch.save({k: torch.zeros((), dtype=d).expand(s) for k, (s, d) in theirs.items()}, path)
    sd = load_state_dict(path)
    assert infer_kind(sd) == kind
    check_state_dict(model, drop_unused_keys(model, sd))  # the strict loader's checks (the model is on meta)


def test_checkpoint_files_load_unchanged(tmp_path) -> None:
    """MobileSAM's layout as a raw .pt, wrapped under "model", as .safetensors, and through `convert` builds the
    same model; anything beyond the classifier keys is still refused."""
    config = CONFIGS["vit_t"]
    sd = random_state_dict(build_official(config), seed=1)
    assert HEAD_KEYS <= set(sd) and any(k.endswith("num_batches_tracked") for k in sd)
    raw, wrapped, st = (
        tmp_path / "mobile_sam.pt",
        tmp_path / "wrapped.pth",
        tmp_path / "mobile_sam.safetensors",
    )
    torch.save(sd, raw)
    torch.save({"model": sd, "epoch": 3}, wrapped)
    save_safetensors(st, sd)
    expected = {k: v for k, v in sd.items() if k not in HEAD_KEYS}
    for path in (raw, wrapped, st):
        got = sam_model_registry["vit_t"](checkpoint=path).state_dict()
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], v) for k, v in expected.items()), path

    converted = tmp_path / "converted.safetensors"
    assert convert(raw, converted) == config  # kind inferred from the TinyViT stem
    assert read_config(converted) == config
    assert set(load_state_dict(converted)) == set(expected)

    bad = dict(sd, **{"image_encoder.head.extra": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected"):
        load_weights_into(build_sam(config), bad)
    hq = build_sam(CONFIGS["hq_vit_tiny"])
    with pytest.raises(CheckpointError, match="missing"):  # MobileSAM weights lack the HQ token
        load_weights_into(hq, sd)


def test_official_bias_cache_ignores_loaded_biases_until_eval() -> None:
    """The documented trap: TinyViT's attention caches its biases when eval mode is set, so weights loaded after
    ``.eval()`` (as the official builders do) are ignored until eval mode is set again; segany uses them at once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from segment_anything_hq.modeling.tiny_vit_sam import Attention

    off = Attention(32, 16, num_heads=2, attn_ratio=1, resolution=(7, 7))
    off.eval()  # (its train() returns None)
    ours = TinyAttention(32, num_heads=2, window_size=7).eval()
    sd = random_state_dict(off, seed=2)
    off.load_state_dict(sd)
    ours.load_state_dict(sd)
    x = torch.randn(3, 49, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stale = (off(x) - ours(x)).abs().max().item()
        off.eval()  # refreshes the cache from the loaded biases
        assert torch.equal(off(x), ours(x))
    assert stale > 1e-2


# --------------------------------------------------------------------------------------------- the generator
LOW = {  # random weights: low thresholds so that a few dozen masks reach each stage (as test_automatic)
    "points_per_side": 6,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 0.97,
    "crop_nms_thresh": 0.97,
}


def _generator_pair(config: SamConfig, seed: int, logit_gain: float = 30.0):
    """(segany, official) with the same random weights, mask logits scaled up so thresholds mean something."""
    off = build_official(config)
    sd = random_state_dict(off, seed)
    for name in list(sd):
        if ".layers.2." in name and ("output_hypernetworks_mlps" in name or "hf_mlp" in name):
            sd[name] = sd[name] * logit_gain
    load_official(off, sd)
    ours = build_sam(config)
    load_weights_into(ours, sd)
    return ours, off


def _assert_same_records(ours: list[dict], ref: list[dict]) -> None:
    assert len(ours) == len(ref) > 0
    key = lambda r: (tuple(r["point_coords"][0]), r["predicted_iou"])  # noqa: E731
    for o, r in zip(sorted(ours, key=key), sorted(ref, key=key), strict=True):
        np.testing.assert_allclose(o["point_coords"], r["point_coords"], atol=1e-6)
        assert abs(o["predicted_iou"] - r["predicted_iou"]) <= LOGIT_TOL
        assert abs(o["stability_score"] - r["stability_score"]) <= LOGIT_TOL
        inter = np.logical_and(o["segmentation"], r["segmentation"]).sum()
        union = np.logical_or(o["segmentation"], r["segmentation"]).sum()
        assert inter / max(union, 1) >= 0.99


def test_hq_generator_same_masks_as_official() -> None:
    """The grid decoder's HQ path (one mask per point: SAM's best + the HQ token's) against the official HQ-SAM
    generator, on a small HQ config; with hq_token_only it equals the model's own decoder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from segment_anything_hq import SamAutomaticMaskGenerator as OfficialGenerator

    config = replace(TINY, hq_token=True)
    ours, off = _generator_pair(config, seed=4)
    image = _image(150, 220, seed=6)
    mine = SamAutomaticMaskGenerator(ours, **LOW).generate(image)
    theirs = OfficialGenerator(off, **LOW).generate(image)
    _assert_same_records(mine, theirs)
    assert len(mine) <= LOW["points_per_side"] ** 2  # one mask per point at most

    from segany.automatic import _GridDecoder

    p = SamPredictor(ours)
    p.set_image(image)
    assert p.features is not None and p.input_size is not None
    pts = torch.tensor([[30.0, 40.0], [100.0, 20.0], [200.0, 130.0]])
    coords = p.transform.apply_coords_torch(pts, image.shape[:2])
    for hq_only in (False, True):
        grid = _GridDecoder(ours, p.features, p.input_size, p.interm_features, hq_only)
        low, iou = grid(coords)
        ref = p.predict_torch(coords[:, None], torch.ones(3, 1, dtype=torch.int), hq_token_only=hq_only)
        torch.testing.assert_close(iou, ref[1], atol=LOGIT_TOL, rtol=0)
        rows, cols = grid.low_rows, grid.low_cols
        # same math summed in another order, on logits scaled x30: relative tolerance too, as test_automatic
        torch.testing.assert_close(
            low[..., :rows, :cols], ref[2][..., :rows, :cols], atol=LOGIT_TOL, rtol=1e-5
        )
    records = SamAutomaticMaskGenerator(ours, **LOW, hq_token_only=True).generate(image)
    assert records and all(r["segmentation"].shape == image.shape[:2] for r in records)
    with pytest.raises(ValueError, match="HQ-SAM"):
        SamAutomaticMaskGenerator(build_sam(TINY), hq_token_only=True)


def test_mobile_sam_generator_same_masks_as_official() -> None:
    """``vit_t`` (full TinyViT at 1024 px) in the generator against the official generator around MobileSAM."""
    from segment_anything import SamAutomaticMaskGenerator as OfficialGenerator

    ours, off = _generator_pair(CONFIGS["vit_t"], seed=7)
    image = _image(180, 131, seed=8)
    settings = dict(LOW, points_per_side=4)
    _assert_same_records(
        SamAutomaticMaskGenerator(ours, **settings).generate(image),
        OfficialGenerator(off, **settings).generate(image),
    )


# ------------------------------------------------------------------------------------- predictor plumbing
def test_hq_embedding_round_trip_accelerated_encoder_and_plain_refusal(tmp_path) -> None:
    """An HQ model's saved embedding carries its early features (a reloaded one decodes the same), bf16
    acceleration keeps them, and a plain model refuses hq_token_only."""
    from segany.acceleration import accelerate
    from segany.predictor import ImageEmbedding

    model = build_sam(replace(TINY, hq_token=True))
    load_weights_into(model, random_state_dict(model, seed=9))
    p = SamPredictor(model)
    image = _image(90, 130, seed=1)
    kw = dict(point_coords=np.array([[40.0, 50.0]]), point_labels=np.array([1]), return_logits=True)
    p.set_image(image)
    ref = p.predict(**kw)
    path = tmp_path / "hq.safetensors"
    p.get_embedding().save(path)
    q = SamPredictor(model)
    q.set_embedding(ImageEmbedding.load(path), image)
    assert q.interm_features is not None and torch.equal(q.interm_features, p.interm_features)
    for a, b in zip(q.predict(**kw), ref, strict=True):  # a saved (contiguous) copy: float rounding only
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    (batched,) = p.embed_images([image])
    assert batched.interm_features is not None
    torch.testing.assert_close(batched.interm_features, p.interm_features, atol=1e-5, rtol=0)

    fast = SamPredictor(accelerate(model, "bf16"))
    fast.set_image(image)
    assert fast.interm_features is not None and fast.interm_features.dtype == torch.float32
    np.testing.assert_allclose(fast.predict(**kw)[2], ref[2], atol=0.5)  # bf16: loose

    plain = SamPredictor(build_sam(TINY))
    plain.set_image(image)
    with pytest.raises(ValueError, match="HQ-SAM"):
        plain.predict(point_coords=np.array([[40.0, 50.0]]), point_labels=np.array([1]), hq_token_only=True)


# ----------------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("kind", ["vit_t", "hq_vit_b", "hq_vit_l", "hq_vit_h", "hq_vit_tiny"])
def test_every_name_is_a_cli_model_that_needs_a_checkpoint(kind: str) -> None:
    from segany.build import OFFICIAL_CHECKPOINTS, check_kind, load_model

    check_kind(kind)
    with pytest.raises(ValueError, match=OFFICIAL_CHECKPOINTS[kind].replace(".", r"\.")):
        load_model(kind)


def test_cli_segments_with_an_official_layout_checkpoint(tmp_path) -> None:
    """``segany segment --model hq_vit_tiny --checkpoint sam_hq_vit_tiny.pth`` end to end (random weights in
    the official layout, classifier keys included)."""
    import json

    import cv2

    from segany.cli import main

    config = CONFIGS["hq_vit_tiny"]
    ckpt = tmp_path / "sam_hq_vit_tiny.pth"
    torch.save(random_state_dict(build_official(config), seed=11), ckpt)
    img = tmp_path / "img.png"
    cv2.imwrite(str(img), _image(120, 170, seed=3))
    out = tmp_path / "out"
    args = ["segment", str(img), "--point", "60,50", "--model", "hq_vit_tiny", "--checkpoint", str(ckpt)]
    assert main([*args, "--out", str(out)]) == 0
    assert len(json.loads((out / "masks.json").read_text())["masks"]) == 1  # HQ-SAM: one mask
    # --hq-token-only: the HQ token's mask alone, as SamPredictor gives it
    assert main([*args, "--hq-token-only", "--out", str(tmp_path / "hq_only")]) == 0
    from segany.images import load_image

    predictor = SamPredictor(sam_model_registry["hq_vit_tiny"](checkpoint=ckpt))
    predictor.set_image(load_image(img))
    for flag, out_dir in ((True, "hq_only"), (False, "out")):
        mask = predictor.predict(np.array([[60, 50]]), np.array([1]), hq_token_only=flag)[0][0]
        assert np.array_equal(
            cv2.imread(str(tmp_path / out_dir / "mask_0.png"), cv2.IMREAD_GRAYSCALE) > 0, mask
        )


def test_cli_family_options_are_refused_for_other_families(tmp_path, capsys) -> None:
    """Family flags on the wrong family, and an unknown name for the annotation server: exit 2 with the reason."""
    import cv2

    from segany.cli import main

    ckpt = tmp_path / "mobile_sam.pt"
    torch.save(build_sam(CONFIGS["vit_t"]).state_dict(), ckpt)
    img = tmp_path / "img.png"
    cv2.imwrite(str(img), _image(40, 50, seed=3))
    model = ["--model", "vit_t", "--checkpoint", str(ckpt)]
    assert (
        main(["segment", str(img), "--point", "5,5", *model, "--hq-token-only", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "--hq-token-only needs an HQ-SAM model" in capsys.readouterr().err
    for flag, why in (("--hq-token-only", "needs an HQ-SAM model"), ("--use-m2m", "is a SAM 2 option")):
        assert main(["auto", str(img), *model, flag, "--out", str(tmp_path / "a")]) == 2
        assert why in capsys.readouterr().err
    # every family is served (HQ-SAM and SAM 2 decoded by the server: tests/test_engine_server_decode.py); an
    # unknown name is refused before anything starts
    assert main(["annotate", str(tmp_path), "--dev", "--model", "hq_vit_nope"]) == 2
    assert "unknown model kind 'hq_vit_nope'" in capsys.readouterr().out


def test_onnx_export_refuses_hq_decoders() -> None:
    """SAM's exported decoder graph has no HQ-features input: an HQ model is refused there (it would be exported
    as plain SAM), and exported by `segany.onnx_export_hq` instead (tests/test_onnx_hq.py)."""
    from segany.onnx_export import SamDecoderOnnx

    with pytest.raises(ValueError, match="export_hq_decoder"):
        SamDecoderOnnx(build_sam(replace(TINY, hq_token=True)))
    SamDecoderOnnx(build_sam(TINY))
