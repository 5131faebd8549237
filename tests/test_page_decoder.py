"""The annotation page's decode path: the split ONNX export (per-image + per-click graphs) and the page itself.

* The two graphs (onnxruntime) give the PyTorch decoder's low-res logits and IoU predictions (max difference
  ~1e-6 on the tiny and default models: the same math summed in another order; asserted < 1e-4), for points,
  boxes, mask inputs and any number of points; upsampled the predictor's way they give SamPredictor's masks.
* The page in Chromium (Playwright, as tests/test_engine_browser.py) with the shipped default model: the mask on
  the screen after a click, and after a corrective click (the first mask fed back, as the page does), is the mask
  SamPredictor gives for the same prompts; the saved mask too. The page upsamples the low-res logits itself (in
  float64, composing PyTorch's two float32 bilinear resizes), so a pixel whose logit is within ~1e-6 of 0 could
  in principle flip; the test requires IoU >= 0.999 and reports the count (0 on these images).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from segany.build import sam_model_registry
from segany.onnx_export import (
    PAGE_CLICK_INPUTS,
    PAGE_CLICK_OUTPUTS,
    PAGE_IMAGE_INPUTS,
    PAGE_IMAGE_OUTPUTS,
    PAGE_UPSCALE_INPUTS,
    PAGE_UPSCALE_OUTPUTS,
    export_page_decoder,
    page_graph_path,
    page_upscale_rows,
)
from segany.predictor import SamPredictor

TOL = 1e-4
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


def _sessions(sam, path: Path, *, optimize: bool = True):
    """(per-image, per-click, upscaling) onnxruntime sessions of the page's export, made as the page makes them:
    the saved graphs are already optimised, so onnxruntime's optimiser is off."""
    export_page_decoder(sam, path, optimize=optimize)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return tuple(
        ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
        for f in (page_graph_path(path, "image"), path, page_graph_path(path, "upscale"))
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    sam = sam_model_registry["tiny"]().eval()
    return sam, *_sessions(sam, tmp_path_factory.mktemp("page") / "decoder.onnx")


def _page_feeds(
    per_image,
    points: list[tuple[float, float, float]],
    mask: np.ndarray | None,
    s: int,
    rows: int | None = None,
):
    feeds = dict(zip(PAGE_IMAGE_OUTPUTS, per_image, strict=True))
    feeds["point_coords"] = np.array([[[x, y] for x, y, _ in points]], np.float32)
    feeds["point_labels"] = np.array([[lab for _, _, lab in points]], np.float32)
    feeds["mask_input"] = np.zeros((1, 1, s, s), np.float32) if mask is None else mask.reshape(1, 1, s, s)
    feeds["has_mask_input"] = np.array([0.0 if mask is None else 1.0], np.float32)
    feeds["upscale_rows"] = np.array([s // 4 if rows is None else rows], np.float32)
    return feeds


PROMPTS = {
    "one_point": ([(60.0, 90.0, 1.0)], None),
    "three_points": ([(60.0, 90.0, 1.0), (200.0, 30.0, 0.0), (10.0, 250.0, 1.0)], None),
    "box": ([], (40.0, 50.0, 180.0, 160.0)),
    "box_and_point": ([(100.0, 100.0, 0.0)], (40.0, 50.0, 180.0, 160.0)),
    "mask_input": ([(60.0, 90.0, 1.0), (120.0, 30.0, 0.0)], None),
    "many_points": ([(float(7 * i % 250), float(13 * i % 250), float(i % 2)) for i in range(12)], None),
}


@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_split_graphs_match_torch_decoder(tiny, prompt: str) -> None:
    sam, img_sess, click_sess, _ = tiny
    pe = sam.prompt_encoder
    h, w = pe.image_embedding_size
    gen = torch.Generator().manual_seed(len(prompt))
    emb = torch.randn(1, pe.embed_dim, h, w, generator=gen)
    pts, box = PROMPTS[prompt]
    mask = torch.randn(1, 1, 4 * h, 4 * w, generator=gen) if prompt == "mask_input" else None
    with torch.no_grad():
        points = None
        if pts:
            points = (torch.tensor([[p[:2] for p in pts]]), torch.tensor([[p[2] for p in pts]]))
        boxes = None if box is None else torch.tensor([box])
        sparse, dense = pe(points=points, boxes=boxes, masks=mask)
        low, iou = sam.mask_decoder.predict_masks(emb, pe.get_dense_pe(), sparse, dense)[:2]
    # the page's prompt: points, then the box corners (labels 2, 3) or one padding point
    page_pts = list(pts) + ([(box[0], box[1], 2.0), (box[2], box[3], 3.0)] if box else [(0.0, 0.0, -1.0)])
    per_image = img_sess.run(None, {"image_embeddings": emb.numpy()})
    out = click_sess.run(
        None, _page_feeds(per_image, page_pts, None if mask is None else mask.numpy(), 4 * h)
    )
    assert out[0].shape == (1, 4, 4 * h, 4 * w) and out[1].shape == (1, 4) and out[2].shape[0] == 0
    assert np.abs(out[0] - low.numpy()).max() < TOL
    assert np.abs(out[1] - iou.numpy()).max() < TOL


@pytest.mark.parametrize("rows", [0, 1, 9, 15])
def test_rows_shown_first_then_the_padding_rows(tiny, rows: int) -> None:
    """The click graph upscales the first `rows` embedding rows; the upscaling graph, from its rest_keys and
    hyper outputs, gives the others: together, the whole low-res planes."""
    sam, img_sess, click_sess, up_sess = tiny
    pe = sam.prompt_encoder
    h, w = pe.image_embedding_size
    emb = np.random.default_rng(rows).standard_normal((1, pe.embed_dim, h, w)).astype(np.float32)
    per_image = img_sess.run(None, {"image_embeddings": emb})
    pts = [(60.0, 90.0, 1.0), (0.0, 0.0, -1.0)]
    full = click_sess.run(None, _page_feeds(per_image, pts, None, 4 * h))[0]
    shown, _, rest, hyper = click_sess.run(None, _page_feeds(per_image, pts, None, 4 * h, rows))
    assert shown.shape == (1, 4, 4 * rows, 4 * w) and rest.shape == ((h - rows) * w, pe.embed_dim)
    (padding,) = up_sess.run(None, {"rest_keys": rest, "hyper": hyper})
    assert np.abs(np.concatenate([shown, padding], axis=2) - full).max() < 1e-6


def test_upscale_rows_cover_the_image() -> None:
    # 854x480 at 1024 (ViT-B): the resized image has 576 of 1024 rows = 144 low-res rows, +1 margin -> 37 of 64
    assert page_upscale_rows(480, 854, 1024, 64) == 37
    assert page_upscale_rows(854, 480, 1024, 64) == 64 and page_upscale_rows(100, 100, 512, 32) == 32


def test_graph_names_and_dynamic_points(tiny) -> None:
    _, img_sess, click_sess, up_sess = tiny
    assert [i.name for i in img_sess.get_inputs()] == PAGE_IMAGE_INPUTS
    assert [o.name for o in img_sess.get_outputs()] == PAGE_IMAGE_OUTPUTS
    assert [i.name for i in click_sess.get_inputs()] == PAGE_CLICK_INPUTS
    assert [o.name for o in click_sess.get_outputs()] == PAGE_CLICK_OUTPUTS
    assert [i.name for i in up_sess.get_inputs()] == PAGE_UPSCALE_INPUTS
    assert [o.name for o in up_sess.get_outputs()] == PAGE_UPSCALE_OUTPUTS
    shapes = {i.name: i.shape for i in click_sess.get_inputs()}
    assert shapes["point_coords"][1] == "num_points" and shapes["point_labels"][1] == "num_points"


def _image(size: tuple[int, int] = (480, 854)) -> np.ndarray:
    """examples/dog_cat.jpg at (H, W): a real photo, so that the masks have real boundaries."""
    from PIL import Image

    im = (
        Image.open(ROOT / "examples" / "dog_cat.jpg")
        .convert("RGB")
        .resize(size[::-1], Image.Resampling.BICUBIC)
    )
    return np.asarray(im)


@pytest.fixture(scope="module")
def default_model():
    return sam_model_registry["default"]().eval()


def test_saved_graphs_are_optimised_and_compute_the_raw_graphs_numbers(tiny, tmp_path: Path) -> None:
    """The page loads the graphs with onnxruntime's optimiser off: they must already hold its fusions (else every
    click runs unfused LayerNorms and MatMuls) and give exactly what the raw export gives when optimised."""
    import onnx

    sam = tiny[0]
    opt = _sessions(sam, tmp_path / "opt.onnx")
    raw = _sessions(sam, tmp_path / "raw.onnx", optimize=False)

    def ops(path: Path) -> set[str]:
        return {n.op_type for n in onnx.load(str(path)).graph.node}

    assert {"SimplifiedLayerNormalization", "FusedMatMul"} <= ops(tmp_path / "opt.onnx")
    assert "FusedMatMul" not in ops(tmp_path / "raw.onnx")
    up_ops = ops(page_graph_path(tmp_path / "opt.onnx", "upscale"))
    assert "BiasGelu" in up_ops and "Erf" not in up_ops, up_ops
    emb = torch.randn(
        1, *sam.prompt_encoder.get_dense_pe().shape[1:], generator=torch.Generator().manual_seed(3)
    )
    s = int(sam.prompt_encoder.mask_input_size[0])
    points = [(20.0, 30.0, 1.0), (40.0, 11.0, 0.0), (0.0, 0.0, -1.0)]
    got = [
        click.run(None, _page_feeds(img.run(None, {"image_embeddings": emb.numpy()}), points, None, s))
        for img, click, _ in (opt, raw)
    ]
    for a, b in zip(*got, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_default_model_graphs_give_predictor_masks(default_model, tmp_path: Path) -> None:
    """The shipped model: graph logits upsampled as SamPredictor does give its masks, click after click."""
    sam = default_model
    img_sess, click_sess, _ = _sessions(sam, tmp_path / "decoder.onnx")
    image = _image()
    pred = SamPredictor(sam)
    pred.set_image(image)
    per_image = img_sess.run(None, {"image_embeddings": pred.get_image_embedding().numpy()})
    s = 4 * sam.prompt_encoder.image_embedding_size[0]
    clicks = [(300.0, 260.0, 1.0), (620.0, 200.0, 0.0), (450.0, 400.0, 1.0)]
    prev = None
    for n in range(1, len(clicks) + 1):
        pts = np.array([c[:2] for c in clicks[:n]])
        labels = np.array([c[2] for c in clicks[:n]])
        multi = n == 1
        masks, scores, low = pred.predict(pts, labels, mask_input=prev, multimask_output=multi)
        k = int(np.argmax(scores)) if multi else 0
        model_pts = pred.transform.apply_coords(pts, image.shape[:2])
        page_pts = [(x, y, lab) for (x, y), lab in zip(model_pts.tolist(), labels.tolist(), strict=True)]
        out = click_sess.run(None, _page_feeds(per_image, [*page_pts, (0.0, 0.0, -1.0)], prev, s))
        plane = 1 + k if multi else 0
        assert np.abs(out[0][0, plane] - low[k]).max() < TOL
        logits = sam.postprocess_masks(
            torch.from_numpy(out[0][:, plane : plane + 1]), pred.input_size, image.shape[:2]
        )
        assert np.array_equal(logits[0, 0].numpy() > 0, masks[k])
        prev = low[k][None]


# ---- the page in Chromium ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory):
    from engine_harness import Server, chromium_available
    from PIL import Image

    chromium_available()
    root = tmp_path_factory.mktemp("page_decoder")
    (root / "images").mkdir()
    Image.fromarray(_image()).save(root / "images" / "photo.png")
    # A phone-style JPEG stored sideways with an EXIF orientation tag (6: turn 90 degrees clockwise to view): the
    # browser shows it upright, the server's embedding reads it upright (`segany.images`), the masks must agree.
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = Image.fromarray(_image((320, 480))).transpose(Image.Transpose.ROTATE_90)
    sideways.save(root / "images" / "rotated.jpg", exif=exif.tobytes(), quality=95)
    data = root / "data"
    srv = Server(root / "images", data, f"sqlite:///{data}/db.sqlite", extra=["--model", "default"])
    srv.test_images = root / "images"  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def _screen_mask(page, layer: str = "overlay") -> np.ndarray:
    """A mask layer of the page (image resolution) as a boolean mask, every painted pixel: ``overlay`` holds the
    mask being made, ``saved`` the accepted ones."""
    h, w, alpha = page.evaluate(
        """(layer) => { const cv = document.getElementById(layer);
        const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
        const a = new Array(cv.width * cv.height); for (let i = 0; i < a.length; i++) a[i] = d[4 * i + 3];
        return [cv.height, cv.width, a]; }""",
        layer,
    )
    return np.array(alpha, np.uint8).reshape(h, w) > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _login(page, base: str) -> None:
    from engine_harness import PASSWORD

    page.goto(base + "/")
    page.fill("#login-user", "admin")
    page.fill("#login-password", PASSWORD)
    page.click("#login-form button")
    page.wait_for_selector("body[data-ready]")


def test_page_shows_the_predictor_mask(page_server, default_model) -> None:
    from engine_harness import CHROMIUM, CHROMIUM_ARGS
    from patience import PATIENCE_S
    from playwright.sync_api import sync_playwright

    from segany.masks.rle import coco_rle_to_counts, rle_counts_to_mask

    image = _image()
    pred = SamPredictor(default_model)
    pred.set_image(image)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.set_default_timeout(PATIENCE_S * 1000)
        _login(page, page_server.base)
        assert page.evaluate("self.crossOriginIsolated")

        def click(fx: float, fy: float, shift: bool = False) -> None:
            n = page.evaluate("window.seganyStats.decodeMs.length")
            box = page.locator("#overlay").bounding_box()
            assert box is not None
            if shift:
                page.keyboard.down("Shift")
            page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
            if shift:
                page.keyboard.up("Shift")
            deadline = time.monotonic() + PATIENCE_S
            while page.evaluate("window.seganyStats.decodeMs.length") == n:
                assert time.monotonic() < deadline, "no decode after the click"
                time.sleep(0.02)

        # One click (ambiguous: the best of the three multimask outputs), then a corrective background click.
        click(0.35, 0.55)
        first = _screen_mask(page)
        click(0.72, 0.4, shift=True)
        second = _screen_mask(page)
        page.click("#accept")
        page.wait_for_selector("#masks li")
        with page_server.client() as c:
            saved = c.get("/api/images/1/annotations").json()[-1]
        # accepted: the mask moves from the layer being made to the saved masks' layer
        assert not _screen_mask(page).any()
        on_saved_layer = _screen_mask(page, "saved")
        browser.close()

    prompts = [q for q in saved["prompts"] if q["label"] in (0, 1)]
    assert [q["label"] for q in prompts] == [1, 0]
    pts = np.array([[q["x"], q["y"]] for q in prompts])
    masks, scores, low = pred.predict(pts[:1], np.array([1]), multimask_output=True)
    k = int(np.argmax(scores))
    masks2, _, _ = pred.predict(pts, np.array([1, 0]), mask_input=low[k][None], multimask_output=False)
    assert first.shape == masks[k].shape
    for got, want in ((first, masks[k]), (second, masks2[0])):
        print(f"page vs SamPredictor: {np.sum(got != want)} of {want.size} pixels differ, area {want.sum()}")
        assert want.sum() > 100, "the predictor's mask is empty: a weak check"
        assert _iou(got, want) >= 0.999, f"IoU {_iou(got, want):.5f}, {np.sum(got != want)} pixels differ"
    h, w = saved["rle"]["size"]
    saved_mask = rle_counts_to_mask(coco_rle_to_counts(saved["rle"]), h, w)
    assert _iou(saved_mask, masks2[0]) >= 0.999
    assert np.array_equal(on_saved_layer, saved_mask)


def test_exif_rotated_photo_upright_and_predictor_mask(page_server, default_model) -> None:
    """An EXIF-rotated JPEG: the page shows it upright (480 x 320, not 320 x 480) and the mask on screen after a
    click is `SamPredictor`'s on the image as `segany.images.load_image` reads it (EXIF applied)."""
    from engine_harness import CHROMIUM, CHROMIUM_ARGS
    from patience import PATIENCE_S
    from playwright.sync_api import sync_playwright

    from segany.images import load_image

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.set_default_timeout(PATIENCE_S * 1000)
        _login(page, page_server.base)
        with page_server.client() as c:
            images = c.get("/api/projects/1/images").json()
        rotated = next(im for im in images if im["file_name"].endswith("rotated.jpg"))
        page.goto(f"{page_server.base}/#image={rotated['id']}")
        page.reload()
        page.wait_for_selector(f"body[data-ready='{rotated['id']}']")
        natural = page.evaluate("(() => { const i = document.getElementById('image'); "
                                "return [i.naturalWidth, i.naturalHeight]; })()")  # fmt: skip
        assert natural == [480, 320], f"the browser shows the photo as {natural[0]} x {natural[1]}"
        box = page.locator("#overlay").bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + 0.7 * box["width"], box["y"] + 0.4 * box["height"])
        deadline = time.monotonic() + PATIENCE_S
        while not page.evaluate("window.seganyStats.decodeMs.length"):
            assert time.monotonic() < deadline, "no decode after the click"
            time.sleep(0.02)
        got = _screen_mask(page)
        page.click("#accept")
        page.wait_for_selector("#masks li")
        with page_server.client() as c:
            saved = c.get(f"/api/images/{rotated['id']}/annotations").json()[-1]
        browser.close()

    image = load_image(page_server.test_images / "rotated.jpg")
    assert image.shape == (320, 480, 3)
    pred = SamPredictor(default_model)
    pred.set_image(image)
    q = saved["prompts"][0]
    masks, scores, _ = pred.predict(np.array([[q["x"], q["y"]]]), np.array([1]), multimask_output=True)
    want = masks[int(np.argmax(scores))]
    assert got.shape == want.shape
    assert want.sum() > 100, "the predictor's mask is empty: a weak check"
    assert _iou(got, want) >= 0.999, f"IoU {_iou(got, want):.5f}, {np.sum(got != want)} pixels differ"
