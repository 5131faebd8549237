"""Bad input gets a clear exception (not an assert, so `python -O` behaves the same) and shapes follow the
official API."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segany import SamPredictor, sam_model_registry
from segany.predictor import PromptError


@pytest.fixture(scope="module")
def predictor():
    p = SamPredictor(sam_model_registry["tiny"]())
    rng = np.random.default_rng(0)
    p.set_image(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8))
    return p


def test_predict_before_set_image():
    p = SamPredictor(sam_model_registry["tiny"]())
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))
    with pytest.raises(RuntimeError):
        p.get_image_embedding()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(point_coords=np.array([1.0, 2.0]), point_labels=np.array([1])), "shape"),
        (dict(point_coords=np.array([[1.0, 2.0, 3.0]]), point_labels=np.array([1])), "shape"),
        (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1, 1])), "point_labels"),
        (dict(point_coords=np.array([[1.0, 2.0]])), "supplied together"),
        (dict(point_labels=np.array([1])), "supplied together"),
        (dict(point_coords=np.array([[np.nan, 2.0]]), point_labels=np.array([1])), "NaN"),
        (dict(point_coords=np.array([[np.inf, 2.0]]), point_labels=np.array([1])), "NaN"),
        (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([2])), "0 .background. or 1"),
        (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([-1])), "0 .background. or 1"),
        (dict(point_coords=np.array([[500.0, 2.0]]), point_labels=np.array([1])), "outside"),
        (dict(point_coords=np.array([[5.0, -40.0]]), point_labels=np.array([1])), "outside"),
        (dict(box=np.array([50, 10, 20, 40])), "x1 >= x0"),
        (dict(box=np.array([5, 50, 20, 40])), "y1 >= y0"),
        (dict(box=np.array([5, 5, 20])), "shape"),
        (dict(box=np.array([5, 5, 2000, 40])), "outside"),
        (dict(box=np.array([5, 5, np.nan, 40])), "NaN"),
        (dict(box=np.array([5, 5, 20, 40]), mask_input=np.zeros((1, 32, 32))), "mask_input"),
        (dict(box=np.array([5, 5, 20, 40]), mask_input=np.full((1, 64, 64), np.nan)), "NaN"),
        (dict(point_coords=[["a", "b"]], point_labels=[1]), "numeric"),
    ],
)
def test_bad_prompts(predictor, kwargs, match):
    with pytest.raises(PromptError, match=match):
        predictor.predict(**kwargs)


def test_border_points_are_fine(predictor):
    masks, iou, low = predictor.predict(
        point_coords=np.array([[0, 0], [200, 120]]), point_labels=np.array([1, 0])
    )
    assert (
        masks.shape == (3, 120, 200)
        and masks.dtype == bool
        and iou.shape == (3,)
        and low.shape == (3, 64, 64)
    )


def test_shapes_single_and_logits(predictor):
    m, iou, low = predictor.predict(
        box=np.array([10, 10, 100, 100]), multimask_output=False, return_logits=True
    )
    assert (
        m.shape == (1, 120, 200) and m.dtype == np.float32 and iou.shape == (1,) and low.shape == (1, 64, 64)
    )


@pytest.mark.parametrize(
    "image, exc",
    [
        (np.zeros((10, 10), np.uint8), ValueError),
        (np.zeros((10, 10, 4), np.uint8), ValueError),
        (np.zeros((10, 10, 3), np.float32), ValueError),
        (np.zeros((1, 3000, 3), np.uint8), ValueError),
        ([[1, 2, 3]], TypeError),
    ],
)
def test_bad_images(image, exc):
    p = SamPredictor(sam_model_registry["tiny"]())
    with pytest.raises(exc):
        p.set_image(image)


def test_bad_image_format():
    p = SamPredictor(sam_model_registry["tiny"]())
    with pytest.raises(ValueError, match="image_format"):
        p.set_image(np.zeros((8, 8, 3), np.uint8), image_format="HSV")


def test_validation_survives_python_O(tmp_path):
    """Checks are exceptions, so they hold under `python -O` (which strips asserts)."""
    code = (
        "import numpy as np\n"
        "from segany import SamPredictor, sam_model_registry\n"
        "p = SamPredictor(sam_model_registry['tiny']())\n"
        "p.set_image(np.zeros((50, 60, 3), np.uint8))\n"
        "try:\n"
        "    p.predict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([7]))\n"
        "except ValueError as e:\n"
        "    print('REFUSED', e)\n"
    )
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True)
    assert "REFUSED" in out.stdout


def test_segment_cli(tmp_path):
    from segany.cli import main

    img = tmp_path / "img.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (90, 140, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "out"
    rc = main(
        ["segment", str(img), "--point", "30,40", "--point", "100,50,0", "--model", "tiny", "--out", str(out)]
    )
    assert rc == 0
    meta = json.loads((out / "masks.json").read_text())
    assert len(meta["masks"]) == 3
    scores = [m["predicted_iou"] for m in meta["masks"]]
    assert scores == sorted(scores, reverse=True)
    from pycocotools import mask as mask_utils

    for rec in meta["masks"]:
        png = np.array(Image.open(out / rec["file"])) > 0
        rle = {"size": rec["segmentation"]["size"], "counts": rec["segmentation"]["counts"].encode()}
        assert np.array_equal(mask_utils.decode(rle).astype(bool), png)
        assert rec["area"] == int(png.sum())
    overlay = np.array(Image.open(out / "overlay.png"))
    assert overlay.shape == (90, 140, 3)
    # several boxes at once, and an embedding cache that is written then reused
    emb = tmp_path / "e.safetensors"
    ckpt = tmp_path / "tiny.safetensors"
    from segany.build import TINY
    from segany.checkpoint import save_safetensors

    save_safetensors(ckpt, sam_model_registry["tiny"]().state_dict(), TINY)
    args = ["segment", str(img), "--box", "5,5,60,60", "--box", "70,10,130,80", "--single", "--model", "tiny"]
    args += ["--checkpoint", str(ckpt)]
    assert main([*args, "--embedding", str(emb), "--out", str(tmp_path / "o2")]) == 0
    assert emb.exists()
    assert main([*args, "--embedding", str(emb), "--out", str(tmp_path / "o3")]) == 0
    a = json.loads((tmp_path / "o2" / "masks.json").read_text())["masks"]
    b = json.loads((tmp_path / "o3" / "masks.json").read_text())["masks"]
    assert len(a) == 2 and [r["segmentation"] for r in a] == [r["segmentation"] for r in b]
    assert meta["mask_refiner"] is None  # an official-style model is never refined unless asked
    # --refine on: a cached embedding is refined with the image's colours exactly like a fresh encode.
    assert main([*args, "--refine", "on", "--embedding", str(emb), "--out", str(tmp_path / "o4")]) == 0
    assert main([*args, "--refine", "on", "--out", str(tmp_path / "o5")]) == 0
    c, d = (json.loads((tmp_path / o / "masks.json").read_text()) for o in ("o4", "o5"))
    assert c["mask_refiner"].startswith("GraphCutRefiner(") and d["mask_refiner"] == c["mask_refiner"]
    assert [r["segmentation"] for r in c["masks"]] == [r["segmentation"] for r in d["masks"]]


def test_import_and_cli_help_do_not_load_torch():
    """`import segany` and `segany --help` stay fast: PyTorch (about 3 s to import here) loads on first use."""
    code = (
        "import sys, contextlib, io\n"
        "import segany\n"
        "from segany.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))\n"
        "from segany import SamPredictor\n"
        "print(SamPredictor.__module__, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "segany.predictor True"], out.stdout


def test_cli_rejects_bad_point(capsys):
    from segany.cli import main

    with pytest.raises(SystemExit):
        main(["segment", "x.png", "--point", "1,2,3,4", "--out", "o"])
    assert "--point" in capsys.readouterr().err


def test_shipped_default_model_loads_and_predicts():
    """The README's main job: the shipped weights build the architecture they describe and answer a click."""
    from segany.build import DEFAULT_WEIGHTS
    from segany.checkpoint import read_config

    config = read_config(DEFAULT_WEIGHTS)
    assert config is not None and DEFAULT_WEIGHTS.stat().st_size < 50 * 2**20
    model = sam_model_registry["default"]()
    assert model.image_encoder.img_size == config.image_size
    p = SamPredictor(model)
    p.set_image(np.full((60, 90, 3), 128, np.uint8))
    masks, iou, low = p.predict(point_coords=np.array([[45.0, 30.0]]), point_labels=np.array([1]))
    side = 4 * config.embedding_size
    assert masks.shape == (3, 60, 90) and iou.shape == (3,) and low.shape == (3, side, side)
    assert np.isfinite(iou).all() and np.isfinite(low).all()


# ---- a cached embedding is used only for its own image and model (issue 15, item 4) ----------------------------


def _two_images(h: int = 40, w: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return tuple(rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(2))  # type: ignore[return-value]


def test_embedding_of_another_image_of_the_same_size_is_refused(tmp_path):
    from segany.predictor import EmbeddingError, ImageEmbedding, image_sha256

    img1, img2 = _two_images()
    model = sam_model_registry["tiny"]()
    p = SamPredictor(model)
    p.set_image(img1)
    emb = p.get_embedding()
    assert emb.image_sha256 == image_sha256(img1) and emb.model_sha256 == p.weights_sha256
    path = tmp_path / "e.safetensors"
    emb.save(path)
    loaded = ImageEmbedding.load(path, image=img1, model=model)
    assert (loaded.image_sha256, loaded.model_sha256) == (emb.image_sha256, emb.model_sha256)
    other = SamPredictor(model)
    with pytest.raises(EmbeddingError, match="another image"):
        other.set_embedding(loaded, img2)
    assert not other.is_image_set  # refused before any state changed
    with pytest.raises(EmbeddingError, match="another image"):
        ImageEmbedding.load(path, image=img2)
    other.set_embedding(loaded, np.ascontiguousarray(img1[..., ::-1]), image_format="BGR")  # same pixels
    assert other.get_embedding().image_sha256 == emb.image_sha256
    other.set_embedding(loaded)  # without the image nothing can be compared; the hash is carried over
    assert other.get_embedding().image_sha256 == emb.image_sha256
    batch = p.embed_images([img1, img2], batch_size=2)
    assert [e.image_sha256 for e in batch] == [image_sha256(img1), image_sha256(img2)]


def test_embedding_of_a_model_that_differs_inside_the_encoder_is_refused():
    """The old fingerprint hashed only the first and last encoder weights; the weights hash covers them all."""
    import copy

    import torch

    from segany.predictor import EmbeddingError, ImageEmbedding, model_fingerprint

    model = sam_model_registry["tiny"]()
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        tuned.image_encoder.blocks[0].mlp.lin1.weight.add_(0.01)
    assert model_fingerprint(tuned) == model_fingerprint(model)
    p = SamPredictor(model)
    p.set_image(_two_images()[0])
    with pytest.raises(EmbeddingError, match="different model"):
        SamPredictor(tuned).set_embedding(p.get_embedding())
    with pytest.raises(EmbeddingError, match="different model"):
        p.get_embedding().check(model=tuned)
    decoder_only = copy.deepcopy(model)  # a retrained decoder keeps the embeddings valid
    with torch.no_grad():
        decoder_only.mask_decoder.iou_token.weight.add_(1.0)
    SamPredictor(decoder_only).set_embedding(p.get_embedding())
    assert isinstance(p.get_embedding(), ImageEmbedding)


def test_embedding_saved_by_an_older_segany_loads_with_a_warning(tmp_path):
    from segany.checkpoint import save_safetensors
    from segany.predictor import EmbeddingError, ImageEmbedding, UncheckedEmbeddingWarning

    img1, img2 = _two_images()
    model = sam_model_registry["tiny"]()
    p = SamPredictor(model)
    p.set_image(img1)
    emb = p.get_embedding()
    old = tmp_path / "old.safetensors"  # exactly the metadata segany wrote before the hashes
    meta = {
        "original_size": json.dumps(list(emb.original_size)),
        "input_size": json.dumps(list(emb.input_size)),
        "model_fingerprint": emb.model_fingerprint,
    }
    save_safetensors(old, {"features": emb.features}, metadata=meta)
    with pytest.warns(UncheckedEmbeddingWarning, match="cannot be checked"):
        loaded = ImageEmbedding.load(old)
    assert loaded.image_sha256 is None and loaded.model_sha256 is None
    SamPredictor(model).set_embedding(loaded, img2)  # the image cannot be checked
    with pytest.raises(EmbeddingError, match="different model"):  # the old fingerprint still is
        SamPredictor(sam_model_registry["tiny"]()).set_embedding(loaded)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(EmbeddingError, match="not a readable"):
        ImageEmbedding.load(tmp_path / "junk.safetensors")


def test_annotation_server_cache_is_keyed_by_the_default_weights(tmp_path, monkeypatch):
    """Without --checkpoint the server used the key "default-init0" for any default weights, so a new release of
    the shipped weights served embeddings of the old ones."""
    import segany.build
    from segany.engine.model import ModelService, ModelSpec

    keys = []
    for content in (b"weights one", b"weights two"):
        path = tmp_path / f"{len(keys)}.safetensors"
        path.write_bytes(content)
        monkeypatch.setattr(segany.build, "DEFAULT_WEIGHTS", path)
        keys.append(ModelSpec(kind="default").key)
    assert keys[0] != keys[1] and all(k.startswith("default-") for k in keys)
    # random weights: the seed and the hash of the weights it built
    key = ModelService(ModelSpec(kind="tiny", seed=3), tmp_path / "cache").key
    assert key.startswith("tiny-init3-") and len(key) == len("tiny-init3-") + 16
