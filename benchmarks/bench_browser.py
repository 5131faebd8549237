"""Where a click's time goes in the annotation page, and segany's page decoder against the official export.

Everything runs in one headless Chromium (Playwright driving /usr/bin/chromium), timed with the browser's own
clocks (``performance.now()`` in the page and in the decoder's worker):

1. **The page, default model.** The real server (`segany annotate --model default`, the shipped weights) on a
   photo at DAVIS's size (854x480); clicks on the page, one at a time (Esc between), then corrective clicks (a
   second point, with the first mask fed back). Per click: feeds in (message to the worker + tensors), graph
   run, outputs out (read + posted back), upsampling + thresholding of the shown mask, drawing, click -> mask on
   screen (from the input event's timestamp to the frame after the one that drew the mask) and main-thread
   stalls (long tasks the browser reports during clicks).
2. **ViT-B-size decoders side by side**, on a harness page served with the annotation server's static files
   and security headers (cross-origin isolated, so wasm threads work). One random ViT-B SAM; its decoder
   exported twice with the same weights:
   * the official export: ``segment_anything.utils.onnx.SamOnnxModel(return_single_mask=True)`` as the official
     script exports it (opset 17, dynamic point count), float32 and int8 (``quantize_dynamic``, QUInt8 weights,
     per_channel=False, reduce_range=False: the official notebook's call; this onnxruntime has no
     ``optimize_model`` argument), each with 1 and 2 wasm threads: the best of the four is the reference;
   * segany's page decoder (``export_page_decoder``: per-image + per-click graphs) in its worker, as the page
     runs it (float32, the page's thread count), timed to the binary mask at the image's size; the official
     graph is timed to its logits only (its thresholding is not counted).
   The same clicks (model frame) on the same random embedding for both. Also the previous page decoder (one
   graph with full-size masks, main thread, onnxruntime-web's default threads) for the "before" figure.

    python benchmarks/bench_browser.py                 # ~2-4 min; prints the tables
    python benchmarks/bench_browser.py --clicks 40 --json out.json

Run it on an otherwise idle machine: other jobs on the cores make every figure an upper bound (the load average
is printed before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from engine_harness import CHROMIUM, CHROMIUM_ARGS, PASSWORD, Server, free_port  # noqa: E402

HARNESS_JS = r"""
import * as ort from "/static/vendor/ort/ort.wasm.min.mjs";
import { PageDecoder } from "/static/decode.js";

ort.env.wasm.wasmPaths = "/static/vendor/ort/";
const get = async (url) => (await fetch(url)).arrayBuffer();

async function official(cfg, emb) {
  if (cfg.threads) ort.env.wasm.numThreads = cfg.threads;
  const session = await ort.InferenceSession.create(new Uint8Array(await get(cfg.url)),
    { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  const embT = new ort.Tensor("float32", emb, cfg.shape);
  const s = cfg.lowSize;
  const zeros = new Float32Array(s * s);
  const res = [];
  for (let i = 0; i < cfg.clicks.length + cfg.warm; i++) {
    const [x, y] = cfg.clicks[Math.max(0, i - cfg.warm)];
    const t0 = performance.now();
    const feeds = {
      image_embeddings: embT,
      point_coords: new ort.Tensor("float32", new Float32Array([x, y, 0, 0]), [1, 2, 2]),
      point_labels: new ort.Tensor("float32", new Float32Array([1, -1]), [1, 2]),
      mask_input: new ort.Tensor("float32", zeros, [1, 1, s, s]),
      has_mask_input: new ort.Tensor("float32", new Float32Array([0]), [1]),
      orig_im_size: new ort.Tensor("float32", new Float32Array([cfg.height, cfg.width]), [2]),
    };
    const t1 = performance.now();
    const out = await session.run(feeds);
    const t2 = performance.now();
    let up = 0;
    if (cfg.threshold) { // the previous page: threshold the chosen full-size plane in JS
      const m = out.masks.data; const n = cfg.height * cfg.width; const k = out.masks.dims[1] > 1 ? 1 : 0;
      const bin = new Uint8Array(n);
      for (let j = 0; j < n; j++) bin[j] = m[k * n + j] > 0 ? 1 : 0;
      up = performance.now() - t2;
    }
    if (i >= cfg.warm) res.push({ feedsIn: t1 - t0, run: t2 - t1, upsample: up, total: performance.now() - t0 });
  }
  return { results: res, threads: ort.env.wasm.numThreads, isolated: self.crossOriginIsolated };
}

async function segany(cfg, emb) {
  const [clickBytes, imageBytes, upscaleBytes] = await Promise.all([get(cfg.clickUrl), get(cfg.imageUrl), get(cfg.upscaleUrl)]);
  const dec = await PageDecoder.create({ clickBytes, imageBytes, upscaleBytes, imageSize: cfg.imageSize, numThreads: cfg.threads,
    optimized: true }); // export_page_decoder saves optimised graphs
  const t0 = performance.now();
  const img = await dec.setImage("bench", { data: emb, shape: cfg.shape }, cfg.height, cfg.width);
  const perImage = performance.now() - t0;
  const res = []; const corrective = []; const padding = [];
  // Between clicks the worker upscales the previous click's padding rows (after its mask is shown); a person
  // never clicks within those few ms, so each click here waits for the worker to be idle, as a person would.
  const click = async (points, mask, single) => {
    const idle = await dec.idle();
    if (idle.lastComplete) padding.push(idle.lastComplete);
    return dec.decode(points, mask, single);
  };
  for (let i = 0; i < cfg.clicks.length + cfg.warm; i++) {
    const [x, y] = cfg.clicks[Math.max(0, i - cfg.warm)];
    const r = await click([[x, y, 1], [0, 0, -1]], null, true);
    if (i >= cfg.warm) res.push(r.timings);
    if (i >= cfg.warm && corrective.length < cfg.corrective) { // a second point, the first mask fed back
      const [x2, y2] = cfg.clicks[(i + 3) % cfg.clicks.length];
      const r2 = await click([[x, y, 1], [x2, y2, 0], [0, 0, -1]], r.lowRes(r.order[0]), false);
      corrective.push(r2.timings);
    }
  }
  return { results: res, corrective, padding, perImage, imageMs: img.imageMs, info: dec.info };
}

window.benchRun = async (cfg) => {
  const emb = new Float32Array(await get(cfg.embUrl));
  return cfg.kind === "segany" ? segany(cfg, emb) : official(cfg, emb);
};
document.body.dataset.ready = "1";
"""

HARNESS_HTML = """<!doctype html><html><head><meta charset="utf-8"><title>segany decode bench</title>
<script type="module" src="/bench/harness.js"></script></head><body></body></html>"""

STAGES = [
    ("feeds in", "feedsIn"),
    ("graph run", "run"),
    ("outputs out", "outputsOut"),
    ("upsample + threshold", "upsample"),
    ("drawing", "draw"),
]


def med(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def p90(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.quantiles(values, n=10)[-1] if len(values) >= 2 else float("nan")


def bench_image(path: Path, size: tuple[int, int] = (854, 480)) -> None:
    """A photo at DAVIS's frame size: examples/dog_cat.jpg scaled and centre-cropped."""
    from PIL import Image

    im = Image.open(ROOT / "examples" / "dog_cat.jpg").convert("RGB")
    w, h = size
    s = max(w / im.width, h / im.height)
    im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BICUBIC)
    left, top = (im.width - w) // 2, (im.height - h) // 2
    im.crop((left, top, left + w, top + h)).save(path)


def export_vit_b(out: Path) -> dict[str, Any]:
    """One random ViT-B SAM; the official export (fp32, int8) and segany's page decoder with its weights."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from segment_anything import sam_model_registry as official_registry
    from segment_anything.utils.onnx import SamOnnxModel

    from segany.build import sam_model_registry
    from segany.onnx_export import export_decoder, export_page_decoder

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    official = official_registry["vit_b"]().eval()
    model = SamOnnxModel(official, return_single_mask=True)
    emb_hw = official.prompt_encoder.image_embedding_size
    dummy = {
        "image_embeddings": torch.randn(1, 256, *emb_hw),
        "point_coords": torch.randint(0, 1024, (1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(0, 4, (1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, 4 * emb_hw[0], 4 * emb_hw[1]),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
    }
    with torch.no_grad():
        torch.onnx.export(
            model, tuple(dummy.values()), str(out / "official.onnx"), export_params=True, opset_version=17,
            do_constant_folding=True, input_names=list(dummy),
            output_names=["masks", "iou_predictions", "low_res_masks"],
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}, dynamo=False,
        )  # fmt: skip
    quantize_dynamic(
        str(out / "official.onnx"), str(out / "official.int8.onnx"),
        per_channel=False, reduce_range=False, weight_type=QuantType.QUInt8,
    )  # fmt: skip
    sam = sam_model_registry["vit_b"]().eval()
    sam.load_state_dict(official.state_dict())
    export_page_decoder(sam, out / "segany_vit_b.onnx")
    export_page_decoder(sam, out / "segany_vit_b_int8.onnx", quantize=True)
    export_decoder(sam, out / "previous_vit_b.onnx")  # the page's decoder before issue 14 (one graph)
    torch.manual_seed(1)
    emb = torch.randn(1, 256, *emb_hw).numpy().astype("<f4")
    emb.tofile(out / "vit_b_embedding.f32")
    return {"shape": [1, 256, *emb_hw], "low": 4 * emb_hw[0], "image_size": 1024}


def int8_agreement(image_path: Path, folder: Path, n: int = 12) -> dict[str, Any]:
    """The shipped model's page decoder, float32 and int8 (onnxruntime, CPU), against SamPredictor: single clicks
    on the photo, masks compared at the image's size."""
    import onnxruntime as ort
    import torch
    from PIL import Image

    from segany.build import sam_model_registry
    from segany.onnx_export import PAGE_IMAGE_OUTPUTS, export_page_decoder, page_graph_path
    from segany.predictor import SamPredictor

    sam = sam_model_registry["default"]().eval()
    image = np.asarray(Image.open(image_path).convert("RGB"))
    pred = SamPredictor(sam)
    pred.set_image(image)
    h, w = sam.prompt_encoder.image_embedding_size
    rng = np.random.default_rng(2)
    clicks = rng.uniform(0.1, 0.9, (n, 2)) * [image.shape[1], image.shape[0]]
    out: dict[str, Any] = {}
    for name, quantize in (("float32", False), ("int8", True)):
        path = folder / f"default_{name}.onnx"
        export_page_decoder(sam, path, quantize=quantize)
        sess = [
            ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
            for f in (page_graph_path(path, "image"), path)
        ]
        per_image = dict(
            zip(
                PAGE_IMAGE_OUTPUTS,
                sess[0].run(None, {"image_embeddings": pred.get_image_embedding().numpy()}),
                strict=True,
            )
        )
        diffs, ious = [], []
        for x, y in clicks:
            masks, scores, _ = pred.predict(np.array([[x, y]]), np.array([1]), multimask_output=True)
            k = int(np.argmax(scores))
            mx, my = pred.transform.apply_coords(np.array([[x, y]]), image.shape[:2])[0]
            feeds = {**per_image, "point_coords": np.array([[[mx, my], [0, 0]]], np.float32),
                     "point_labels": np.array([[1, -1]], np.float32), "mask_input": np.zeros((1, 1, 4 * h, 4 * w), np.float32),
                     "has_mask_input": np.zeros(1, np.float32), "upscale_rows": np.array([h], np.float32)}  # fmt: skip
            low = sess[1].run(None, feeds)[0][:, 1 + k : 2 + k]
            got = (
                sam.postprocess_masks(torch.from_numpy(low), pred.input_size, image.shape[:2])[0, 0].numpy()
                > 0
            )
            diffs.append(int((got != masks[k]).sum()))
            union = np.logical_or(got, masks[k]).sum()
            ious.append(float(np.logical_and(got, masks[k]).sum() / union) if union else 1.0)
        out[name] = {
            "identical": sum(d == 0 for d in diffs),
            "n": n,
            "max_pixels": max(diffs),
            "min_iou": min(ious),
        }
    return out


class HarnessServer:
    """The annotation server's static files and security headers (COOP/COEP: cross-origin isolated), plus /bench."""

    def __init__(self, bench_dir: Path) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Mount
        from starlette.staticfiles import StaticFiles

        from segany.engine.app import WEB_DIR
        from segany.engine.security import SecurityHeadersMiddleware

        app = Starlette(
            routes=[
                Mount("/static", StaticFiles(directory=WEB_DIR)),
                Mount("/bench", StaticFiles(directory=bench_dir)),
            ]
        )
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(
            SecurityHeadersMiddleware(app), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def page_clicks(srv: Server, browser, n: int, n_corrective: int) -> dict[str, Any]:
    """The real page: n single clicks (Esc between) and n_corrective two-click prompts."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(600_000)
    t0 = time.perf_counter()
    page.goto(srv.base + "/")
    page.fill("#login-user", "admin")
    page.fill("#login-password", PASSWORD)
    page.click("#login-form button")
    page.wait_for_selector("body[data-ready]")
    ready_s = time.perf_counter() - t0

    def click(fx: float, fy: float) -> None:
        k = page.evaluate("window.seganyStats.decodeMs.length")
        box = page.locator("#overlay").bounding_box()
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        deadline = time.monotonic() + 120
        while page.evaluate("window.seganyStats.decodeMs.length") == k:
            if time.monotonic() > deadline:
                raise TimeoutError("no decode after a click")
            time.sleep(0.005)
        # let the frame with the mask be presented before the next click
        deadline = time.monotonic() + 10
        while page.evaluate("(window.seganyStats.stages.at(-1) || {}).screen === undefined"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)

    rng = np.random.default_rng(0)
    pts = rng.uniform(0.1, 0.9, size=(n + n_corrective, 2))
    for fx, fy in pts[:n]:
        page.keyboard.press("Escape")
        click(fx, fy)
    single = page.evaluate("window.seganyStats.stages")
    for i in range(n_corrective):
        page.keyboard.press("Escape")
        fx, fy = pts[n + i]
        click(fx, fy)
        click(min(0.95, fx + 0.08), fy)
    stages = page.evaluate("window.seganyStats.stages")
    longtasks = page.evaluate("window.seganyStats.longTasks")
    info = page.evaluate("({isolated: self.crossOriginIsolated, cores: navigator.hardwareConcurrency})")
    page.close()
    corrective = stages[len(single) :][1::2]
    stalls = []
    for st in stages:  # long tasks that started between a click's input and its frame
        if st.get("screen") is None:
            continue
        start = st["screen"] - (st.get("clickToScreen") or st["total"])
        stalls.append(sum(t["ms"] for t in longtasks if start <= t["start"] <= st["screen"]))
    return {"single": single, "corrective": corrective, "stalls": stalls, "ready_s": ready_s, **info}


def harness_run(base: str, browser, cfg: dict[str, Any]) -> dict[str, Any]:
    page = browser.new_page()
    page.set_default_timeout(600_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/bench/index.html")
    page.wait_for_selector("body[data-ready]", state="attached", timeout=60_000)
    try:
        return page.evaluate("(cfg) => window.benchRun(cfg)", cfg)
    except Exception as err:
        raise RuntimeError(f"{cfg['kind']}: {err} {errors}") from err
    finally:
        page.close()


def split_table(rows: list[tuple[str, list[dict]]], stalls: list[float] | None = None) -> None:
    head = f"{'':28s}" + "".join(f"{name:>22s}" for name, _ in rows)
    print(head)
    for label, key in [
        *STAGES,
        ("decode total (to mask)", "total"),
        ("click -> mask on screen", "clickToScreen"),
    ]:
        cells = []
        for _, res in rows:
            if key == "feedsIn":
                vals = [r.get("feedsIn", 0) + r.get("postToWorker", 0) for r in res]
            else:
                vals = [r.get(key) for r in res if r.get(key) is not None]
            cells.append(f"{med(vals):8.1f} (p90 {p90(vals):6.1f})" if vals else f"{'-':>20s}")
        print(f"{label:28s}" + "".join(f"{c:>22s}" for c in cells))
    if stalls is not None:
        print(
            f"{'main-thread stalls (>50 ms)':28s}{med(stalls):8.1f} ms median, {max(stalls, default=0):.1f} ms max"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clicks", type=int, default=30, help="single clicks on the page (default 30)")
    ap.add_argument("--corrective", type=int, default=8, help="two-click prompts on the page (default 8)")
    ap.add_argument(
        "--vit-clicks", type=int, default=15, help="clicks per ViT-B decoder setting (default 15)"
    )
    ap.add_argument(
        "--threads", default="1,2", help="wasm threads tried for the official export (default 1,2)"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = ap.parse_args()
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    from playwright.sync_api import sync_playwright

    report: dict[str, Any] = {"load_before": load0}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        bench = tmp / "bench"
        bench.mkdir()
        (bench / "harness.js").write_text(HARNESS_JS)
        (bench / "index.html").write_text(HARNESS_HTML)
        (tmp / "images").mkdir()
        bench_image(tmp / "images" / "photo.png")
        height, width = 480, 854
        print(
            "exporting the ViT-B-size decoders (official fp32 + int8, segany's page decoder) ...", flush=True
        )
        t = time.perf_counter()
        vit = export_vit_b(bench)
        print(f"  {time.perf_counter() - t:.0f} s")
        print("the default model's page decoder, float32 and int8, against SamPredictor ...", flush=True)
        report["agreement"] = agreement = int8_agreement(tmp / "images" / "photo.png", bench)
        data = tmp / "data"
        print("starting the annotation server (default model) ...", flush=True)
        srv = Server(tmp / "images", data, f"sqlite:///{data}/db.sqlite", extra=["--model", "default"])
        harness = HarnessServer(bench)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                print("the page, default model ...", flush=True)
                page = page_clicks(srv, browser, args.clicks, args.corrective)
                report["page"] = page
                rng = np.random.default_rng(1)
                s = vit["image_size"]
                clicks = [
                    [float(x), float(y)]
                    for x, y in rng.uniform(0.05, 0.95, (args.vit_clicks, 2)) * [s, s * height / width]
                ]
                common = {"embUrl": "/bench/vit_b_embedding.f32", "shape": vit["shape"], "lowSize": vit["low"],
                          "height": height, "width": width, "clicks": clicks, "warm": 3}  # fmt: skip
                runs: dict[str, Any] = {}
                for threads in [int(x) for x in args.threads.split(",")]:
                    for q in ("", ".int8"):
                        name = f"official{q or ' fp32'} {threads}t"
                        print(f"ViT-B: {name} ...", flush=True)
                        runs[name] = harness_run(harness.base, browser, {**common, "kind": "official", "url": f"/bench/official{q}.onnx", "threads": threads})  # fmt: skip
                print(
                    "ViT-B: previous page decoder (one graph, full-size masks, main thread) ...", flush=True
                )
                runs["previous page"] = harness_run(harness.base, browser, {**common, "kind": "official", "url": "/bench/previous_vit_b.onnx", "threads": 0, "threshold": True})  # fmt: skip
                for name, stem, threads in [
                    ("segany", "segany_vit_b", 0),  # the page's setting: min(4, hardwareConcurrency) threads
                    ("segany 1t", "segany_vit_b", 1),
                    ("segany int8 (opt-in --quantize)", "segany_vit_b_int8", 0),
                ]:
                    print(f"ViT-B: {name} ...", flush=True)
                    urls = {"clickUrl": f"/bench/{stem}.onnx", "imageUrl": f"/bench/{stem}.image.onnx",
                            "upscaleUrl": f"/bench/{stem}.upscale.onnx"}  # fmt: skip
                    runs[name] = harness_run(harness.base, browser, {**common, **urls, "kind": "segany", "imageSize": s, "threads": threads, "corrective": 5})  # fmt: skip
                report["vit_b"] = runs
                browser.close()
        finally:
            harness.stop()
            srv.stop()
    load1 = os.getloadavg()
    report["load_after"] = load1

    print()
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} (figures are upper bounds if not ~0)")
    print(f"Chromium: cross-origin isolated={page['isolated']}, hardwareConcurrency={page['cores']}; "
          f"decoder worker threads={runs['segany']['info']['threads']}")  # fmt: skip
    print(f"\n== The page, shipped default model, {width}x{height} photo: ms per click, median (p90) ==")
    print(f"(first page ready {page['ready_s']:.1f} s after login; {len(page['single'])} single clicks, "
          f"{len(page['corrective'])} corrective clicks)")  # fmt: skip
    split_table([("single click", page["single"]), ("corrective click", page["corrective"])], page["stalls"])

    print(
        f"\n== ViT-B-size decoder, same weights, same {args.vit_clicks} clicks, {width}x{height}: ms per click =="
    )
    print(f"{'':34s}{'median':>9s}{'p90':>9s}  {'graph run':>9s}")
    for name, r in runs.items():
        tot = [x["total"] for x in r["results"]]
        run = [x["run"] for x in r["results"]]
        extra = f"  threads={r.get('threads', r.get('info', {}).get('threads'))}"
        print(f"{name:34s}{med(tot):9.1f}{p90(tot):9.1f}  {med(run):9.1f}{extra}")
    best_name = min(
        (n for n in runs if n.startswith("official")),
        key=lambda n: med([x["total"] for x in runs[n]["results"]]),
    )
    best = med([x["total"] for x in runs[best_name]["results"]])
    ours = med([x["total"] for x in runs["segany"]["results"]])
    print(f"\nsegany page decoder (to the binary mask) {ours:.1f} ms vs official at its best ({best_name}, to logits) "
          f"{best:.1f} ms: {best / ours:.2f}x faster")  # fmt: skip
    print(f"segany per-image graph (once per image): {runs['segany']['imageMs']:.1f} ms; corrective click (mask input) "
          f"median {med([x['total'] for x in runs['segany']['corrective']]):.1f} ms; padding rows after each mask "
          f"(off the click's path) median {med(runs['segany']['padding']):.1f} ms")  # fmt: skip
    q = med([x["total"] for x in runs["segany int8 (opt-in --quantize)"]["results"]])
    print(f"segany int8 (opt-in, masks not guaranteed equal to SamPredictor's): {q:.1f} ms, {best / q:.2f}x")
    print("segany ViT-B stage split:")
    split_table([("ViT-B single", runs["segany"]["results"])])
    for name, a in agreement.items():
        print(f"default model, page decoder {name} vs SamPredictor, {a['n']} single clicks: {a['identical']} masks "
              f"identical, at most {a['max_pixels']} pixels differ (min IoU {a['min_iou']:.5f})")  # fmt: skip
    dm = med([x["total"] for x in page["single"]])
    cs = med([x.get("clickToScreen") for x in page["single"]])
    print(
        f"\ndefault model in the page: decode {dm:.1f} ms median per click, click -> mask on screen {cs:.1f} ms"
    )
    print(f"total benchmark time {time.perf_counter() - t_start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
