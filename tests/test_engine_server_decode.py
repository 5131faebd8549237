"""The annotation server's own decoder (``POST /api/images/{id}/decode``), which the page uses for HQ-SAM and SAM 2:
the same low-res logits and scores as `SamPredictor` on the same image and prompt (points, a box, a mask input,
single and multimask), clear 4xx answers to bad prompts, and `segany annotate` starting with those families.

Small random-weight models: SAM's test config with the HQ token, and SAM 2.1's Hiera-T trunk with one block per
stage at a 256 px input (as `tests/test_sam2_parity.py` reduces it).
"""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_harness import PASSWORD, make_images
from fastapi.testclient import TestClient
from PIL import Image

from segany.build import TINY, build_sam
from segany.build_sam2 import SAM2_CONFIGS, build_sam2
from segany.engine import EngineSettings, create_app
from segany.engine import model as engine_model
from segany.engine.model import ModelSpec
from segany.predictor import SamPredictor

BASE = "https://testserver"
SIZES = [(120, 200), (160, 96)]  # non-square, not multiples of 16


def _model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "hq":
        return build_sam(replace(TINY, hq_token=True)).eval()
    if family == "sam2":
        config = replace(
            SAM2_CONFIGS["sam2.1_hiera_tiny"], stages=(1, 1, 1, 1), global_att_blocks=(), image_size=256
        )
        return build_sam2(config).eval()
    return build_sam(TINY).eval()


def _serve(
    tmp_path: Path, family: str, image: np.ndarray | None = None
) -> tuple[TestClient, torch.nn.Module]:
    make_images(tmp_path / "images", SIZES)
    if image is not None:  # instead of the first
        Image.fromarray(image).save(tmp_path / "images" / "img0.png")
    settings = EngineSettings(image_dir=tmp_path / "images", data_dir=tmp_path / "data",
                              db_url=f"sqlite:///{tmp_path}/db.sqlite", admin_password=PASSWORD,
                              model=ModelSpec(kind="tiny"), prefetch_ahead=0)  # fmt: skip
    app = create_app(settings)
    sam = _model(family)
    app.state.model._sam = sam  # the service's model, before anything asks for it (its cache key hashes it)
    client = TestClient(app, base_url=BASE)
    r = client.post("/api/login", json={"username": "admin", "password": PASSWORD})
    assert r.status_code == 200
    client.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return client, sam


@pytest.fixture(scope="module", params=["hq", "sam2"])
def served(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    client, sam = _serve(tmp, request.param)
    with client:
        yield request.param, client, sam, tmp


def _logits(r) -> tuple[np.ndarray, np.ndarray]:
    assert r.status_code == 200, r.text
    body = r.json()
    low = np.frombuffer(base64.b64decode(body["low_res_logits"]), dtype="<f4").reshape(body["shape"])
    return low, np.array(body["scores"], np.float32)


def _predictor(sam, tmp: Path, index: int) -> SamPredictor:
    p = SamPredictor(sam)
    with torch.inference_mode():
        p.set_image(np.array(Image.open(tmp / "images" / f"img{index}.png").convert("RGB")))
    return p


def test_model_info_says_server_and_there_is_no_browser_decoder(served) -> None:
    family, client, sam, _ = served
    info = client.get("/api/model").json()
    assert info["decode"] == "server" and info["decoder_url"] is None
    assert info["resize_mode"] == ("square" if family == "sam2" else "longest_side")
    assert info["low_res_size"] == sam.prompt_encoder.mask_input_size[0]
    r = client.get("/api/model/decoder.onnx")
    assert r.status_code == 404 and "decoded on the server" in r.json()["detail"]
    assert client.get("/api/model/decoder.image.onnx").status_code == 404


def test_embedding_without_its_bytes_is_computed_and_cached(served) -> None:
    """``GET .../embedding?data=false`` (what a page that decodes on the server asks): 204, the shape header, and
    the embedding cached, so the next full request reads the same file."""
    import hashlib

    _, client, _, tmp = served
    app_model = client.app.state.model
    sha = hashlib.sha256((tmp / "images" / "img1.png").read_bytes()).hexdigest()
    r = client.get("/api/images/2/embedding?data=false")
    assert app_model._cached(sha)  # embedding and the server decoder's features
    assert r.status_code == 204 and r.content == b""
    shape = [int(v) for v in r.headers["X-Embedding-Shape"].split(",")]
    assert shape == app_model.info()["embedding_shape"]
    full = client.get("/api/images/2/embedding")
    assert full.status_code == 200 and len(full.content) == 4 * int(np.prod(shape))


@pytest.mark.parametrize("index", [1, 2])
def test_decode_equals_sam_predictor(served, index: int) -> None:
    _, client, sam, tmp = served
    h, w = SIZES[index - 1]
    predictor = _predictor(sam, tmp, index - 1)
    cases = {
        "one point": ({"points": [{"x": w / 2, "y": h / 2, "label": 1}]}, {"point_coords": [[w / 2, h / 2]],
                                                                           "point_labels": [1]}),
        "fg+bg": ({"points": [{"x": w / 2, "y": h / 2, "label": 1}, {"x": 5.5, "y": 7.25, "label": 0}],
                   "multimask_output": False},
                  {"point_coords": [[w / 2, h / 2], [5.5, 7.25]], "point_labels": [1, 0], "multimask_output": False}),
        "box": ({"box": [w / 4, h / 4, 3 * w / 4, 3 * h / 4]}, {"box": [w / 4, h / 4, 3 * w / 4, 3 * h / 4]}),
        "box+point": ({"box": [10, 12, w - 10, h - 3], "points": [{"x": 30, "y": 40, "label": 0}],
                       "multimask_output": False},
                      {"box": [10, 12, w - 10, h - 3], "point_coords": [[30, 40]], "point_labels": [0],
                       "multimask_output": False}),
    }  # fmt: skip
    for name, (body, kw) in cases.items():
        low, scores = _logits(client.post(f"/api/images/{index}/decode", json=body))
        kw = {k: np.array(v) if k != "multimask_output" else v for k, v in kw.items()}
        _, ref_scores, ref_low = predictor.predict(**kw)
        assert low.shape == ref_low.shape, name
        np.testing.assert_allclose(low, ref_low, rtol=0, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-6, err_msg=name)
    # a corrective click: the best plane of the last answer fed back as the mask input
    prev = low[int(np.argmax(scores))]
    body = {"points": [{"x": w / 2, "y": h / 2, "label": 1}, {"x": w - 4, "y": h - 4, "label": 0}],
            "mask_input": base64.b64encode(prev.astype("<f4").tobytes()).decode(), "multimask_output": False}  # fmt: skip
    low, scores = _logits(client.post(f"/api/images/{index}/decode", json=body))
    _, ref_scores, ref_low = predictor.predict(
        np.array([[w / 2, h / 2], [w - 4, h - 4]]),
        np.array([1, 0]),
        mask_input=prev[None],
        multimask_output=False,
    )
    np.testing.assert_allclose(low, ref_low, rtol=0, atol=1e-5)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-6)


def test_bad_prompts_get_4xx_with_a_reason(served) -> None:
    _, client, sam, _ = served
    s = sam.prompt_encoder.mask_input_size[0]
    h, w = SIZES[0]
    url = "/api/images/1/decode"
    cases = [
        ({}, "at least one point or a box"),
        ({"points": [{"x": w + 50, "y": 3, "label": 1}]}, "outside"),
        ({"box": [50, 10, 20, 40]}, "x1 >= x0"),
        ({"box": [0, 0, 10, h + 40]}, "outside"),
        ({"points": [{"x": 3, "y": 3, "label": 1}], "mask_input": "!!not base64"}, "base64"),
        ({"points": [{"x": 3, "y": 3, "label": 1}], "mask_input": base64.b64encode(b"\0" * 16).decode()},
         f"{s}x{s} float32"),
        ({"points": [{"x": 3, "y": 3, "label": 1}],
          "mask_input": base64.b64encode(np.full((s, s), np.nan, "<f4").tobytes()).decode()}, "NaN"),
    ]  # fmt: skip
    for body, why in cases:
        r = client.post(url, json=body)
        assert r.status_code == 422, (body, r.text)
        assert why in r.json()["detail"], (why, r.json())
    for body in (
        {"points": [{"x": 3, "y": 3, "label": 2}]},
        {"points": [{"x": 3, "label": 1}]},
        {"box": [1, 2, 3]},
    ):
        assert client.post(url, json=body).status_code == 422, body
    assert client.post("/api/images/99/decode", json={"box": [0, 0, 5, 5]}).status_code == 404


def test_predictors_stay_correct_beyond_the_cache(served, monkeypatch) -> None:
    """Alternating images with room for one predictor: each answer is still its own image's."""
    _, client, sam, tmp = served
    monkeypatch.setattr(engine_model, "PREDICTOR_CACHE", 1)
    for index in (1, 2, 1, 2):
        h, w = SIZES[index - 1]
        low, _ = _logits(client.post(f"/api/images/{index}/decode", json={"box": [2, 3, w - 5, h - 2]}))
        ref = _predictor(sam, tmp, index - 1).predict(box=np.array([2, 3, w - 5, h - 2]))[2]
        np.testing.assert_allclose(low, ref, rtol=0, atol=1e-5)
    assert len(client.app.state.model._predictors) == 1


def test_the_embedding_route_still_answers(served) -> None:
    _, client, sam, _ = served
    r = client.get("/api/images/1/embedding")
    assert r.status_code == 200
    shape = [int(v) for v in r.headers["X-Embedding-Shape"].split(",")]
    assert len(r.content) == 4 * int(np.prod(shape)) and shape[1] == sam.prompt_encoder.embed_dim


def test_a_browser_decoded_model_answers_too(tmp_path: Path) -> None:
    """SAM's test model: the page decodes its clicks itself, and the route gives SamPredictor's numbers too."""
    client, sam = _serve(tmp_path, "sam")
    with client:
        assert client.get("/api/model").json()["decode"] == "browser"
        h, w = SIZES[0]
        low, scores = _logits(
            client.post("/api/images/1/decode", json={"points": [{"x": 40, "y": 50, "label": 1}]})
        )
        _, ref_scores, ref_low = _predictor(sam, tmp_path, 0).predict(np.array([[40, 50]]), np.array([1]))
        np.testing.assert_allclose(low, ref_low, rtol=0, atol=1e-5)
        np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hq_vit_tiny", "sam2.1_hiera_tiny"])
def test_annotate_serves_the_family(tmp_path: Path, kind: str) -> None:
    """`segany annotate --model KIND --checkpoint FILE` starts (no browser decoder is exported) and its decode
    route gives SamPredictor's numbers for the registry's model from that file."""
    from engine_harness import Server

    from segany.build import CONFIGS, sam_model_registry

    torch.manual_seed(1)
    built = build_sam(CONFIGS[kind]) if kind in CONFIGS else build_sam2(SAM2_CONFIGS[kind])
    ckpt = tmp_path / "weights.pt"
    torch.save(built.state_dict(), ckpt)
    make_images(tmp_path / "images", [(60, 90)])
    server = Server(tmp_path / "images", tmp_path / "data", f"sqlite:///{tmp_path}/db.sqlite",
                    extra=["--model", kind, "--checkpoint", str(ckpt), "--prefetch", "0"])  # fmt: skip
    try:
        with server.client() as c:
            info = c.get("/api/model").json()
            assert info["decode"] == "server" and info["model_key"].startswith(kind)
            body = {"points": [{"x": 45, "y": 30, "label": 1}]}
            low, scores = _logits(c.post("/api/images/1/decode", json=body))
    finally:
        server.stop()
    assert not list((tmp_path / "data").rglob("*.onnx"))
    predictor = _predictor(sam_model_registry[kind](checkpoint=ckpt).eval(), tmp_path, 0)
    _, ref_scores, ref_low = predictor.predict(np.array([[45, 30]]), np.array([1]))
    np.testing.assert_allclose(low, ref_low, rtol=0, atol=1e-4)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["sam2", "hq"])
def test_page_draws_the_predictor_mask_in_chromium(tmp_path: Path, family: str) -> None:
    """The page on a SAM 2 (and an HQ-SAM) server: a click, then a corrective background click (the first answer's plane fed back
    as the mask input), each drawn as SamPredictor's mask for the prompts the page saved."""
    import threading
    import time

    import httpx
    import uvicorn
    from engine_harness import CHROMIUM, CHROMIUM_ARGS, chromium_available, free_port
    from patience import PATIENCE_S
    from playwright.sync_api import sync_playwright

    chromium_available()
    rng = np.random.default_rng(0)
    image = np.repeat(np.repeat(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8), 10, 0), 10, 1)  # 120 x 200
    client, sam = _serve(tmp_path, family, image)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(client.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            if httpx.get(base + "/api/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server not up"
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.set_default_timeout(PATIENCE_S * 1000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            asked: list[str] = []
            page.on("request", lambda r: asked.append(r.url) if "/embedding" in r.url else None)
            page.goto(base + "/#image=1")
            page.fill("#login-user", "admin")
            page.fill("#login-password", PASSWORD)
            page.click("#login-form button")
            page.wait_for_selector("body[data-ready]")

            def click(fx: float, fy: float, shift: bool = False) -> np.ndarray:
                n = page.evaluate("window.seganyStats.decodeMs.length")
                box = page.locator("#overlay").bounding_box()
                assert box is not None
                if shift:
                    page.keyboard.down("Shift")
                page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
                if shift:
                    page.keyboard.up("Shift")
                while page.evaluate("window.seganyStats.decodeMs.length") == n:
                    assert time.monotonic() < deadline + PATIENCE_S, "no decode after the click"
                    time.sleep(0.02)
                h, w, alpha = page.evaluate(
                    """() => { const cv = document.getElementById('overlay');
                    const d = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
                    const a = new Array(cv.width * cv.height); for (let i = 0; i < a.length; i++) a[i] = d[4 * i + 3];
                    return [cv.height, cv.width, a]; }"""
                )
                return np.array(alpha, np.uint8).reshape(h, w) > 0

            first = click(0.35, 0.55)
            second = click(0.72, 0.4, shift=True)
            page.click("#accept")
            page.wait_for_selector("#masks li")
            saved = page.evaluate(
                "fetch('/api/images/1/annotations', {credentials: 'same-origin'}).then((r) => r.json())"
            )[-1]
            browser.close()
        assert not errors, errors
        # the server decodes: the page has the embedding computed but never downloads its bytes
        assert asked and all(u.endswith("/embedding?data=false") for u in asked), asked
    finally:
        server.should_exit = True
        thread.join(30)
    predictor = _predictor(sam, tmp_path, 0)
    prompts = [q for q in saved["prompts"] if q["label"] in (0, 1)]
    assert [q["label"] for q in prompts] == [1, 0]
    pts = np.array([[q["x"], q["y"]] for q in prompts])
    masks, scores, low = predictor.predict(pts[:1], np.array([1]), multimask_output=True)
    k = int(np.argmax(scores))
    masks2, _, _ = predictor.predict(pts, np.array([1, 0]), mask_input=low[k][None], multimask_output=False)
    for got, want in ((first, masks[k]), (second, masks2[0])):
        assert got.shape == want.shape
        print(f"page vs SamPredictor: {np.sum(got != want)} of {want.size} pixels differ, area {want.sum()}")
        assert 0 < want.sum() < want.size, "the predictor's mask is empty or full: a weak check"
        assert np.sum(got != want) <= 2, f"{np.sum(got != want)} of {want.size} pixels differ"


def test_prefill_works_for_the_family(served) -> None:
    """Stage 2 on a server-decoded model: the automatic generator's masks are saved (whatever random weights keep)."""
    _, client, _, _ = served
    r = client.post("/api/images/2/prefill")
    assert r.status_code == 200, r.text
    assert r.json()["created"] == len(r.json()["annotations"])
