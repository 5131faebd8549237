"""The annotation page in a real browser (Debian's Chromium driven by Playwright) against a real server process.

A click decodes a mask in the browser (onnxruntime-web on the exported decoder), accept saves it, a reload shows
it; XSS payloads in labels and file names stay inert text under the enforcing CSP. The median decode time per
click is printed; ``SEGANY_BENCH_MODEL=vit_b`` measures it with the full-size decoder (the README figure).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import httpx
import pytest
from engine_harness import CHROMIUM, CHROMIUM_ARGS, PASSWORD, Server, chromium_available, make_images
from patience import PATIENCE_S

XSS = '"><img src=x onerror="window.__xss=1">'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    chromium_available()
    root = tmp_path_factory.mktemp("browser")
    images = make_images(root / "images", [(120, 200), (96, 160)])
    images[1].rename(images[1].with_name(f"{XSS}.png"))
    data = root / "data"
    srv = Server(root / "images", data, f"sqlite:///{data}/db.sqlite", extra=["--max-upload-mb", "0.5"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium_available()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _new_page(browser):
    """A page whose waits (Playwright's default: 30 s) allow for a loaded machine; see `patience`."""
    page = browser.new_page()
    page.set_default_timeout(PATIENCE_S * 1000)
    return page


def _wait_until(page, js: str, timeout_s: float = PATIENCE_S) -> None:
    """Poll ``js`` with page.evaluate: Playwright's wait_for_function evals in the page, which our CSP forbids."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(js):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {js}")
        time.sleep(0.05)


def _login(page, server: Server, image_id: int | None = None) -> None:
    page.goto(server.base + ("/" if image_id is None else f"/#image={image_id}"))
    page.fill("#login-user", "admin")
    page.fill("#login-password", PASSWORD)
    page.click("#login-form button")
    page.wait_for_selector("body[data-ready]")


def _click_image(page, fx: float, fy: float) -> None:
    """Click at a fraction of the displayed image and wait for that click's decode."""
    n = page.evaluate("window.seganyStats.decodeMs.length")
    box = page.locator("#overlay").bounding_box()
    page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    _wait_until(page, f"window.seganyStats.decodeMs.length > {n}")


def _click_accept_undo_reload(server: Server, browser) -> None:
    errors: list[str] = []
    page = _new_page(browser)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    ready_posts: list[int] = []  # the page releases the server's background prefetch once it can be clicked
    page.on("requestfinished", lambda r: ready_posts.append(r.response().status)
            if r.method == "POST" and r.url.endswith("/ready") else None)  # fmt: skip
    # The decoder's worker (and its wasm runtime) starts with the page, before anyone has logged in.
    page.goto(server.base + "/")
    page.wait_for_selector("#login-form")
    deadline = time.monotonic() + PATIENCE_S
    while not any(w.url.split("?")[0].endswith("/static/decoder-worker.js") for w in page.workers):
        assert time.monotonic() < deadline, [w.url for w in page.workers]
        page.wait_for_timeout(20)
    _login(page, server)
    deadline = time.monotonic() + PATIENCE_S
    while not ready_posts:
        assert time.monotonic() < deadline, "the page never told the server it was ready"
        page.wait_for_timeout(20)
    assert ready_posts == [204]
    # The CSP is enforcing (not report-only) and the page still works under it.
    resp = page.request.get(server.base + "/")
    assert "script-src 'self' 'wasm-unsafe-eval'" in resp.headers["content-security-policy"]
    assert "content-security-policy-report-only" not in resp.headers

    # The load timeline (bench_page_ready.py prints it): every milestone follows the ones it waits for.
    load = page.evaluate("window.seganyStats.load")
    chains = [
        [
            "script",
            "model",
            "graphs",
            "sessionsStart",
            "sessionsDone",
            "decoder",
            "imageSet",
            "warm",
            "ready",
        ],
        ["workerLoaded", "runtimeReady", "sessionsStart"],
        ["shown", "embedding", "imageSet"],
    ]
    for chain in chains:
        times = [load[k] for k in chain]  # page and worker clocks: 1 ms for their origins' rounding
        in_order = all(a <= b + 1.0 for a, b in zip(times, times[1:], strict=False))
        assert in_order, dict(zip(chain, times, strict=True))

    _click_image(page, 0.5, 0.5)  # centre of the bright rectangle
    assert page.evaluate("window.seganyStats.decodeMs[0]") > 0
    page.fill("#label", XSS)
    page.click("#cycle")  # cycle to the next ambiguous mask before accepting
    page.click("#accept")
    page.wait_for_selector("#masks li")
    assert page.locator("#masks li .label").first.text_content() == XSS

    # Undo deletes the saved mask, redo restores it, both through versioned PATCHes.
    page.click("#undo")
    _wait_until(page, "document.querySelectorAll('#masks li').length === 0")
    page.click("#redo")
    _wait_until(page, "document.querySelectorAll('#masks li').length === 1")

    page.reload()
    page.wait_for_selector("body[data-ready]")
    page.wait_for_selector("#masks li")
    assert page.locator("#masks li").count() == 1
    assert page.locator("#masks li .label").first.text_content() == XSS
    assert page.evaluate("window.__xss") is None
    assert page.locator("#masks img").count() == 0
    assert not [e for e in errors if "Content Security Policy" in e], errors

    page.close()


def _box_background_point_cycle_and_keys(server: Server, browser) -> None:
    page = _new_page(browser)
    _login(page, server, image_id=_image_id(server, "img0.png"))
    box = page.locator("#overlay").bounding_box()
    n = page.evaluate("window.seganyStats.decodeMs.length")
    page.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + 0.2 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.8 * box["width"], box["y"] + 0.8 * box["height"], steps=5)
    page.mouse.up()
    _wait_until(page, f"window.seganyStats.decodeMs.length > {n}")
    assert page.locator("#mask-index").text_content() == "1/3"  # a box alone: the three ambiguous masks
    page.keyboard.down("Shift")
    _click_image(page, 0.1, 0.1)  # background point
    page.keyboard.up("Shift")
    assert page.locator("#mask-index").text_content() == "1/4"  # box + point: single-mask output first
    page.keyboard.press("c")
    assert page.locator("#mask-index").text_content() == "2/4"
    page.keyboard.press("7")
    assert page.input_value("#rating") == "7"
    page.keyboard.press("a")
    _wait_until(page, "document.querySelectorAll('#masks li').length >= 1")
    with server.client() as c:
        saved = c.get(f"/api/images/{_image_id(server, 'img0.png')}/annotations").json()[-1]
    assert saved["quality"] == 7 and saved["source"] == "person" and saved["seconds"] > 0
    assert sorted(p["label"] for p in saved["prompts"]) == [0, 2, 3]
    page.close()


def _under_cursor(page, sx: float, sy: float, w: int = 200, h: int = 120) -> tuple[float, float]:
    """The image pixel the displayed (w x h) image shows at screen point (sx, sy), from the image element's box."""
    b = page.locator("#image").bounding_box()
    return (sx - b["x"]) / b["width"] * w, (sy - b["y"]) / b["height"] * h


def _zoom_pan_click_maps_to_image_pixel(server: Server, browser) -> None:
    """Fit to the window at load; wheel zoom keeps the pixel under the cursor; Space+drag and the middle button pan
    without adding prompts; a click at any zoom/pan saves the image pixel it was on, and its mark and the mask
    canvas stay over the image."""
    image_id = _image_id(server, "img0.png")  # 120 x 200
    page = _new_page(browser)
    page.set_viewport_size({"width": 1100, "height": 700})
    _login(page, server, image_id=image_id)
    stage = page.locator("#stage").bounding_box()
    img = page.locator("#image").bounding_box()
    assert page.evaluate("window.seganyView.fit") is True
    # Fit: the 200 x 120 image fills the stage's width or height (scaled up from natural size) and is centred.
    assert abs(img["width"] - stage["width"]) < 1.5 or abs(img["height"] - stage["height"]) < 1.5
    assert img["width"] > 200 * 1.5
    assert abs((img["x"] - stage["x"]) * 2 + img["width"] - stage["width"]) < 2

    # Wheel zoom around the cursor: the image pixel under it stays there.
    cx, cy = img["x"] + 0.7 * img["width"], img["y"] + 0.4 * img["height"]
    before = _under_cursor(page, cx, cy)
    page.mouse.move(cx, cy)
    for _ in range(3):
        page.mouse.wheel(0, -240)
    _wait_until(page, "window.seganyView.s > 1.5 * %f" % (img["width"] / 200))
    after = _under_cursor(page, cx, cy)
    assert abs(after[0] - before[0]) < 0.5 and abs(after[1] - before[1]) < 0.5, (before, after)
    s = page.evaluate("window.seganyView.s")

    # Pan with Space+drag, then with the middle button: the view moves by the drag, no prompt is added.
    n = page.evaluate("window.seganyStats.decodeMs.length")
    tx0 = page.evaluate("window.seganyView.tx")
    page.keyboard.down(" ")
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx - 120, cy - 40, steps=4)
    page.mouse.up()
    page.keyboard.up(" ")
    page.mouse.move(cx - 120, cy - 40)
    page.mouse.down(button="middle")
    page.mouse.move(cx - 150, cy - 40, steps=3)
    page.mouse.up(button="middle")
    assert abs(page.evaluate("window.seganyView.tx") - (tx0 - 150)) < 1
    assert page.evaluate("window.seganyStats.decodeMs.length") == n
    assert page.locator("#mask-index").text_content() == "–"

    # The mask canvas is laid over the image at this zoom, and a click lands on the pixel it shows.
    ov, img = page.locator("#overlay").bounding_box(), page.locator("#image").bounding_box()
    assert all(abs(ov[k] - img[k]) < 0.5 for k in ("x", "y", "width", "height")), (ov, img)
    target = (120.5, 55.5)  # inside the bright rectangle (x 50..150, y 30..90)
    sx, sy = img["x"] + target[0] / 200 * img["width"], img["y"] + target[1] / 120 * img["height"]
    assert stage["x"] < sx < stage["x"] + stage["width"] and stage["y"] < sy < stage["y"] + stage["height"]
    page.mouse.click(sx, sy)
    _wait_until(page, f"window.seganyStats.decodeMs.length > {n}")
    # The prompt's mark is drawn where the click was (green), at screen resolution.
    rgb = page.evaluate(
        """([x, y]) => { const c = document.getElementById('marks'); const r = c.getBoundingClientRect();
        const d = window.devicePixelRatio || 1;
        return Array.from(c.getContext('2d').getImageData(Math.round((x - r.left) * d), Math.round((y - r.top) * d), 1, 1).data); }""",
        [sx, sy],
    )
    assert rgb[1] > 150 and rgb[0] < 60 and rgb[3] == 255, rgb
    page.keyboard.press("a")
    _wait_until(page, "document.querySelectorAll('#masks li').length >= 1")
    with server.client() as c:
        saved = c.get(f"/api/images/{image_id}/annotations").json()[-1]
    (p,) = saved["prompts"]
    assert abs(p["x"] - target[0]) <= 1 / s and abs(p["y"] - target[1]) <= 1 / s, (p, target, s)

    page.keyboard.press("f")  # back to fit
    assert page.evaluate("window.seganyView.fit") is True
    page.close()


def _done_opens_the_next_image(server: Server, browser) -> None:
    """The "Done" key (n) marks the image done and opens the next one in the project's order; p goes back."""
    with server.client() as c:
        images = c.get("/api/projects/1/images").json()
    first, second = images[0]["id"], images[1]["id"]
    page = _new_page(browser)
    _login(page, server, image_id=first)
    page.keyboard.press("n")
    _wait_until(page, f"document.body.dataset.ready === '{second}'")
    assert page.locator("#image-name").text_content() == images[1]["file_name"]
    _wait_until(page, "document.getElementById('progress').textContent.includes('1 done')")
    with server.client() as c:
        assert c.get(f"/api/images/{first}").json()["done"] is True
    page.keyboard.press("p")
    _wait_until(page, f"document.body.dataset.ready === '{first}'")
    assert len(page.evaluate("window.seganyStats.openMs")) == 3
    page.close()


def _image_id(server: Server, name: str) -> int:
    with server.client() as c:
        return next(im["id"] for im in c.get("/api/projects/1/images").json() if im["file_name"] == name)


def _xss_file_name_rendered_as_text(server: Server, browser) -> None:
    with server.client() as c:
        image_id = next(
            im["id"] for im in c.get("/api/projects/1/images").json() if im["file_name"] == f"{XSS}.png"
        )
    page = _new_page(browser)
    _login(page, server, image_id=image_id)
    assert page.locator("#image-name").text_content() == f"{XSS}.png"
    assert page.evaluate("window.__xss") is None
    page.close()


def _upload_caps_and_xss_name(server: Server, browser, tmp_path: Path) -> None:
    page = _new_page(browser)
    _login(page, server, image_id=_image_id(server, "img0.png"))
    page.set_input_files(
        "#upload", files=[{"name": "big.png", "mimeType": "image/png", "buffer": os.urandom(600_000)}]
    )
    _wait_until(page, "document.getElementById('status').textContent.startsWith('upload refused')")
    assert "Too Large" in page.text_content("#status")
    name = "<img src=x onerror=window.__xss=1>.png"  # (Chromium percent-encodes '"' in multipart names)
    png = make_images(tmp_path, [(40, 60)])[0].read_bytes()
    page.set_input_files("#upload", files=[{"name": name, "mimeType": "image/png", "buffer": png}])
    _wait_until(page, f"document.getElementById('image-name').textContent === {json.dumps(name)}")
    _wait_until(page, "document.getElementById('status').textContent === 'ready'")
    assert page.evaluate("window.__xss") is None
    page.close()


def _decode_times(page, srv: Server, n: int) -> list[float]:
    _login(page, srv)
    for i in range(3):  # warm-up
        _click_image(page, 0.3 + 0.1 * i, 0.5)
    page.evaluate("window.seganyStats.decodeMs = []")
    for i in range(n):
        page.keyboard.press("Escape")
        _click_image(page, 0.2 + 0.6 * (i / n), 0.3 + 0.4 * ((i * 7 % n) / n))
    assert page.locator("#decode-ms").text_content() != "–"
    return page.evaluate("window.seganyStats.decodeMs")


def _report(label: str, page, times: list[float]) -> None:
    isolated = page.evaluate("self.crossOriginIsolated")
    print(
        f"\nin-browser decode ({label}, 1 click + padding, cross-origin isolated={isolated}): "
        f"median {statistics.median(times):.1f} ms, p90 {statistics.quantiles(times, n=10)[-1]:.1f} ms "
        f"over {len(times)} clicks"
    )


def test_annotation_page_in_chromium(server: Server, browser, tmp_path: Path) -> None:
    """One end-to-end session (one server, one browser: each start costs seconds on a small CI machine)."""
    _click_accept_undo_reload(server, browser)
    _box_background_point_cycle_and_keys(server, browser)
    _xss_file_name_rendered_as_text(server, browser)
    _zoom_pan_click_maps_to_image_pixel(server, browser)
    _upload_caps_and_xss_name(server, browser, tmp_path)
    _done_opens_the_next_image(server, browser)
    page = _new_page(browser)
    times = _decode_times(page, server, 10)
    _report("tiny model", page, times)
    assert len(times) == 10 and statistics.median(times) > 0
    page.close()


@pytest.mark.skipif(
    not os.environ.get("SEGANY_BENCH_MODEL"), reason="benchmark: set SEGANY_BENCH_MODEL=vit_b"
)
def test_decode_time_full_size_decoder(browser, tmp_path: Path) -> None:
    """The README figure: the full-size decoder (identical for vit_b/l/h); the ViT encoder is slow on CPU."""
    kind = os.environ["SEGANY_BENCH_MODEL"]
    quantize = os.environ.get("SEGANY_BENCH_QUANTIZE") == "1"
    make_images(tmp_path / "images", [(1024, 1024)])
    data = tmp_path / "data"
    extra = ["--model", kind] + (["--quantize"] if quantize else [])
    srv = Server(tmp_path / "images", data, f"sqlite:///{data}/db.sqlite", extra=extra)
    page = _new_page(browser)
    try:
        with srv.client() as c:  # embed (and export) before the page asks
            c.timeout = httpx.Timeout(900.0)
            assert c.get("/api/images/1/embedding").status_code == 200
            assert c.get("/api/model/decoder.onnx").status_code == 200
        n = int(os.environ.get("SEGANY_BENCH_CLICKS", "30"))
        times = _decode_times(page, srv, n)
        _report(f"{kind}{' int8' if quantize else ''}", page, times)
        assert len(times) == n
    finally:
        page.close()
        srv.stop()
