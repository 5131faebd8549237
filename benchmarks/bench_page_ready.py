"""Annotation page readiness: how soon after the server is up the first page can be clicked, and how soon the
next image can be, when its embedding was prefetched.

Drives Debian's Chromium (Playwright) against the real server (`segany annotate`, the shipped default model
unless ``--model``) on photos at DAVIS's frame size (``examples/dog_cat.jpg`` scaled, cropped and flipped into
distinct images), or on ``--images DIR``:

1. a first server computes the first image's embedding (the cache) and logs the browser in, then stops;
2. a second server starts (timed: process start to `/api/health`; the model is built and its decoder export read
   from the cache before it listens). The browser, already open and logged in, opens the page in a tab it has
   open (about:blank) the moment the server answers: **first page** = server up -> the page is ready to click
   (image, masks, embedding, decoder and its warm-up done);
3. once the server's background prefetch has written the next image's embedding, "Done" (`n`): **next image** =
   key press -> ready. Also printed: the first click's decode time next to the median of the following ones
   (the warm-up at load should make them alike), and one embedding computed on demand, for comparison.

    python benchmarks/bench_page_ready.py                  # default model, 6 images at 854x480, 3 rounds
    python benchmarks/bench_page_ready.py --model tiny --rounds 1
    python benchmarks/bench_page_ready.py --returning       # the browser has seen the page before the restart

Timings depend on the machine's load: the script prints the load average next to them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from engine_harness import CHROMIUM, CHROMIUM_ARGS, PASSWORD, Server  # noqa: E402


def make_photos(folder: Path, n: int) -> list[Path]:
    """``n`` distinct 854x480 JPEGs from examples/dog_cat.jpg (shifted crops, every other one mirrored)."""
    folder.mkdir(parents=True, exist_ok=True)
    src = ImageOps.exif_transpose(Image.open(ROOT / "examples" / "dog_cat.jpg")).convert("RGB")
    base = ImageOps.fit(src, (854 + 8 * n, 480), method=Image.Resampling.BICUBIC)
    paths = []
    for i in range(n):
        im = base.crop((8 * i, 0, 8 * i + 854, 480))
        if i % 2:
            im = ImageOps.mirror(im)
        p = folder / f"frame{i:03d}.jpg"
        im.save(p, quality=92)
        paths.append(p)
    return paths


def wait_until(page, js: str, timeout_s: float = 600.0, poll_s: float = 0.005) -> None:
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(js):
        if time.monotonic() > deadline:
            raise TimeoutError(js)
        time.sleep(poll_s)


def embedding_file(data_dir: Path, sha: str) -> Path | None:
    found = list((data_dir / "cache").glob(f"*/embeddings/{sha}.npy"))
    return found[0] if found else None


# The first page's milestones (app.js `mark`, ms since navigation), in the order they are printed.
MILESTONES = (
    ("script", "page script started"),
    ("model", "model info answered"),
    ("graphs", "decoder graphs fetched"),
    ("workerLoaded", "decoder worker + onnxruntime-web JS evaluated"),
    ("wasmFetched", "onnxruntime-web's wasm fetched"),
    ("runtimeReady", "wasm runtime started"),
    ("sessionsDone", "3 sessions created"),
    ("shown", "image shown, masks listed"),
    ("embedding", "embedding received"),
    ("imageSet", "per-image graph + warm-up click run"),
    ("warm", "page warm-up done"),
    ("ready", "ready"),
)


def wait_ready(page, image_id: int, timeout_s: float = 600.0) -> None:
    """Waits inside the page (Playwright's selector watch): a CDP round trip every few ms from here would take
    CPU from the page it times on a 2-core machine."""
    page.wait_for_selector(f"body[data-ready='{image_id}']", state="attached", timeout=timeout_s * 1000)


def one_round(
    browser, image_dir: Path, data_dir: Path, model: str, shas: list[str], returning: bool = False
) -> dict[str, float]:
    extra = ["--model", model]
    db = f"sqlite:///{data_dir}/db.sqlite"
    # 1. cache the first image's embedding, log the browser in (the session cookie outlives a server restart)
    srv = Server(image_dir, data_dir, db, extra=[*extra, "--prefetch", "0"])
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        with srv.client() as c:
            c.timeout = httpx.Timeout(900.0)
            c.get("/api/images/1/embedding").raise_for_status()
        r = context.request.post(srv.base + "/api/login", data={"username": "admin", "password": PASSWORD})
        assert r.ok, r.text()
        # A returning browser: the page once before the restart puts its files (the wasm runtime) in its cache.
        if returning:
            warm = context.new_page()
            warm.goto(srv.base + "/#image=1")
            wait_ready(warm, 1)
            warm.close()
    finally:
        srv.stop()
    for sha in shas[1:]:  # the other images are left to the prefetcher
        f = embedding_file(data_dir, sha)
        if f is not None:
            f.unlink()

    # 2. restart; first page as soon as the server answers, in a tab the annotator already has open (opening a
    # browser tab is not the server's or the page's time: about 0.1-0.2 s in Playwright here)
    page = context.new_page()
    page.set_default_timeout(600_000)
    t_start = time.monotonic()
    # Cookies are not per port; the browser's cache is, so a returning annotator meets the same port.
    srv2 = Server(image_dir, data_dir, db, extra=extra, port=srv.port if returning else None)
    t_up, t_up_wall = time.monotonic(), time.time()
    try:
        page.goto(srv2.base + "/#image=1")
        wait_ready(page, 1)
        # timed by the page's own clock (epoch ms): no polling delay
        origin, load = page.evaluate("[performance.timeOrigin, window.seganyStats.load]")
        first_page = (origin + load["ready"]) / 1000 - t_up_wall
        nav_ms = load["ready"]
        # clicks: the first one right after load, then more (Esc between)
        box = page.locator("#overlay").bounding_box()
        clicks = [(0.45, 0.55), (0.3, 0.5), (0.6, 0.4), (0.7, 0.6), (0.5, 0.3), (0.35, 0.7)]
        for fx, fy in clicks:
            n = page.evaluate("window.seganyStats.decodeMs.length")
            page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
            wait_until(page, f"window.seganyStats.decodeMs.length > {n}")
            page.keyboard.press("Escape")
        decode = page.evaluate("window.seganyStats.decodeMs")

        # 3. next image, once the prefetcher has written its embedding
        deadline = time.monotonic() + 600
        while embedding_file(data_dir, shas[1]) is None:
            assert time.monotonic() < deadline, "the next image was never prefetched"
            time.sleep(0.05)
        t0 = time.monotonic()
        page.keyboard.press("n")
        wait_ready(page, 2)
        next_image = time.monotonic() - t0
        open_ms = page.evaluate("window.seganyStats.openMs")
        # for comparison: an embedding computed on demand (the last image is past image 2's prefetch window)
        with srv2.client() as c:
            c.timeout = httpx.Timeout(900.0)
            t1 = time.monotonic()
            c.get(f"/api/images/{len(shas)}/embedding").raise_for_status()
            on_demand = time.monotonic() - t1
    finally:
        page.close()
        context.close()
        srv2.stop()
    split = {f"    {label} (s)": load[key] / 1000 for key, label in MILESTONES if key in load}
    return {
        "server start -> up (s)": t_up - t_start,
        "first page: server up -> ready (s)": first_page,
        "  of which the page's own load (navigation -> ready, s)": nav_ms / 1000,
        **split,
        "next image, prefetched: 'n' -> ready (s)": next_image,
        "  the page's own open time (s)": open_ms[-1] / 1000,
        "first click decode (ms)": decode[0],
        "later clicks decode, median (ms)": statistics.median(decode[1:]),
        "embedding on demand, for comparison (s)": on_demand,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="model kind (default: the shipped default model)")
    ap.add_argument(
        "--images", type=Path, default=None, help="a folder of images (default: made from examples/)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="server restarts measured (medians are printed)")
    ap.add_argument(
        "--returning",
        action="store_true",
        help="the browser opened the page before the restart (its HTTP cache holds the page's files); "
        "default: a browser that never saw the page",
    )
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ready-") as tmp, sync_playwright() as p:
        root = Path(tmp)
        if args.images is None:
            paths = make_photos(root / "images", 6)
            image_dir = root / "images"
        else:
            image_dir = args.images
            paths = sorted(q for q in image_dir.rglob("*") if q.suffix.lower() in {".jpg", ".jpeg", ".png"})
        shas = [hashlib.sha256(q.read_bytes()).hexdigest() for q in paths]
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for k in range(args.rounds):
                results.append(
                    one_round(browser, image_dir, root / f"data{k}", args.model, shas, args.returning)
                )
                print(f"round {k + 1}: " + ", ".join(f"{v:.2f}" for v in results[-1].values()), flush=True)
        finally:
            browser.close()
    load = os.getloadavg()
    who = "a returning browser (page files cached)" if args.returning else "a browser new to the page"
    print(f"\npage readiness, {who}: model {args.model}, {len(shas)} images "
          f"({'854x480 photos' if args.images is None else args.images}), {args.rounds} rounds, "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    heading = False
    for key in results[0]:
        values = [r[key] for r in results if key in r]
        if key.startswith("    ") and not heading:
            print("  the page's milestones, from navigation:")
            heading = True
        print(
            f"  {key}: median {statistics.median(values):.3g} (min {min(values):.3g}, max {max(values):.3g})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
