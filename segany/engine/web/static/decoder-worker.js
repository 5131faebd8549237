// segany decoder worker: onnxruntime-web (wasm, SIMD, threads when the page is cross-origin isolated) runs the
// per-image graph once per image and the per-click graph per click, off the page's main thread. See decode.js.
import * as ort from "./vendor/ort/ort.wasm.min.mjs";
import { maskOrder, upsampleMask } from "./decode.js";

ort.env.wasm.wasmPaths = new URL("./vendor/ort/", import.meta.url).href;

const now = () => performance.timeOrigin + performance.now();
const loadedAt = now(); // this module and onnxruntime-web's JS evaluated (the page's load timeline shows it)
const OPTIONS = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
// Graphs that onnxruntime's optimiser already rewrote (segany's export, `optimize_for_page`) skip it here: the
// same graph, created in about a third of the time.
const PREOPTIMIZED = { ...OPTIONS, graphOptimizationLevel: "disabled" };
let click = null; let image = null; let upscale = null; let imageSize = 0;
let current = null; // { feeds: the per-image tensors, plan, noMask, ... }
const results = new Map(); // the last few decodes' whole low-res logits (for mask inputs), by id
let nextResult = 1; let lastComplete = 0;

// The wasm runtime starts the moment this worker does, while the page is still asking for the decoder's
// graphs: onnxruntime-web only starts it with a first session, so that session is a 76-byte Identity graph.
// Threads need SharedArrayBuffer (cross-origin isolation); each thread is one more wasm worker. The page may
// ask for a number of threads in the worker's URL (?threads=N); they are fixed once the runtime has started.
const WARM_GRAPH = "CAgSBnNlZ2FueTo6ChAKAXgSAXkiCElkZW50aXR5EgR3YXJtWg8KAXgSCgoICAESBAoCCAFiDwoBeRIKCggIARIECgIIAUIECgAQEQ==";
const asked = Number(new URL(import.meta.url).searchParams.get("threads")) || 0;
const threads = self.crossOriginIsolated ? (asked || Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
ort.env.wasm.numThreads = threads;
ort.env.wasm.simd = true;
const runtime = ort.InferenceSession.create(Uint8Array.from(atob(WARM_GRAPH), (c) => c.charCodeAt(0)), OPTIONS)
  .then((warm) => { warm.release(); return now(); });
runtime.catch(() => {}); // reported by init

async function init(m) {
  imageSize = m.imageSize;
  const runtimeReady = await runtime;
  const t0 = now();
  const options = m.optimized ? PREOPTIMIZED : OPTIONS;
  [click, image, upscale] = await Promise.all([
    ort.InferenceSession.create(new Uint8Array(m.clickBytes), options),
    ort.InferenceSession.create(new Uint8Array(m.imageBytes), options),
    ort.InferenceSession.create(new Uint8Array(m.upscaleBytes), options),
  ]);
  const createdAt = now();
  const wasm = performance.getEntriesByType("resource").find((e) => e.name.endsWith(".wasm"));
  return { threads, crossOriginIsolated: self.crossOriginIsolated, loadedAt, runtimeReady,
    wasmFetched: wasm ? performance.timeOrigin + wasm.responseEnd : null, createStart: t0, createdAt };
}

function run(m) {
  const t = { received: now() };
  const n = m.labels.length;
  let mask = m.mask;
  if (m.maskRef) { // a previous result's plane: its whole s x s logits, completed after it was shown
    const r = results.get(m.maskRef.resultId);
    if (!r || !r.full) throw new Error("the mask input's decode is gone");
    const s2 = current.maskDims[2] * current.maskDims[3];
    mask = r.full.subarray(m.maskRef.plane * s2, (m.maskRef.plane + 1) * s2);
  }
  const feeds = {
    ...current.feeds,
    point_coords: new ort.Tensor("float32", m.coords, [1, n, 2]),
    point_labels: new ort.Tensor("float32", m.labels, [1, n]),
    mask_input: mask ? new ort.Tensor("float32", mask, current.maskDims) : current.noMask,
    has_mask_input: mask ? current.hasMask : current.hasNoMask,
    upscale_rows: current.upRows,
  };
  t.ranStart = now();
  t.feedsIn = t.ranStart - t.received;
  return click.run(feeds).then((out) => {
    t.ranEnd = now();
    t.run = t.ranEnd - t.ranStart;
    return { out, t };
  });
}

async function setImage(m) {
  const t0 = now();
  const out = await image.run({ image_embeddings: new ort.Tensor("float32", m.data, m.shape) });
  const s = 4 * m.shape[2];
  current = {
    feeds: { image_tokens: out.image_tokens, t2i_keys: out.t2i_keys, t2i_values: out.t2i_values,
      i2t_queries: out.i2t_queries },
    plan: m.plan,
    maskDims: [1, 1, s, s],
    noMask: new ort.Tensor("float32", new Float32Array(s * s), [1, 1, s, s]),
    hasMask: new ort.Tensor("float32", new Float32Array([1]), [1]),
    hasNoMask: new ort.Tensor("float32", new Float32Array([0]), [1]),
    upRows: new ort.Tensor("float32", new Float32Array([m.plan.upRows]), [1]),
  };
  results.clear();
  const imageMs = now() - t0;
  // One click with this image's tensors, so that the first real click is as fast as the others.
  const c = imageSize / 2;
  await run({ coords: new Float32Array([c, c, 0, 0]), labels: new Float32Array([1, -1]), mask: null });
  return { imageMs, warmMs: now() - t0 - imageMs };
}

async function decode(m) {
  const { out, t } = await run(m);
  const iou = out.iou_predictions.data;
  const shown = out.low_res_masks.data; // 4 x r x s: the rows the image's pixels read
  const order = maskOrder(iou, m.single);
  const u0 = now();
  const mask = upsampleMask(shown, order[0], current.plan);
  t.upsample = now() - u0;
  t.previousCompletion = lastComplete;
  const id = nextResult++;
  results.set(id, { shown, rest: out.rest_keys, hyper: out.hyper, full: null, dims: out.low_res_masks.dims });
  for (const k of results.keys()) if (k <= id - 4) results.delete(k);
  const low = shown.slice(); // the page's copy
  return { reply: { resultId: id, iou, low, order, mask, timings: t }, transfer: [low.buffer, mask.buffer],
    after: () => complete(id) };
}

// After a mask is shown: the padding rows' logits, so that the whole plane can be a mask input.
async function complete(id) {
  const r = results.get(id);
  if (!r || r.full) return;
  const t0 = now();
  const [, , rows, s] = r.dims; const total = current.maskDims[2];
  const full = new Float32Array(4 * total * s);
  let rest = null;
  if (r.rest.dims[0] > 0) rest = (await upscale.run({ rest_keys: r.rest, hyper: r.hyper })).low_res_masks.data;
  for (let k = 0; k < 4; k++) {
    full.set(r.shown.subarray(k * rows * s, (k + 1) * rows * s), k * total * s);
    if (rest) full.set(rest.subarray(k * (total - rows) * s, (k + 1) * (total - rows) * s), (k * total + rows) * s);
  }
  r.full = full; r.rest = null; r.hyper = null;
  lastComplete = now() - t0;
}

// Answered once everything queued before it (a previous click's padding rows included) is done.
const idle = async () => ({ lastComplete });

const handlers = { init, image: setImage, decode, idle };
let queue = Promise.resolve();
self.onmessage = (ev) => {
  const m = ev.data;
  queue = queue.then(async () => {
    try {
      const r = await handlers[m.type](m);
      if (r && r.reply) self.postMessage({ id: m.id, ...r.reply }, r.transfer);
      else self.postMessage({ id: m.id, ...r });
      if (r && r.after) await r.after(); // before the next message: a corrective click finds it done
    } catch (e) {
      self.postMessage({ id: m.id, error: String((e && e.message) || e) });
    }
  });
};
