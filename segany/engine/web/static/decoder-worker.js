// segany decoder worker: onnxruntime-web (wasm, SIMD, threads when the page is cross-origin isolated) runs the
// per-image graph once per image and the per-click graph per click, off the page's main thread. See decode.js.
import * as ort from "./vendor/ort/ort.wasm.min.mjs";
import { maskOrder, upsampleMask } from "./decode.js";

ort.env.wasm.wasmPaths = new URL("./vendor/ort/", import.meta.url).href;

const now = () => performance.timeOrigin + performance.now();
const OPTIONS = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
let click = null; let image = null; let imageSize = 0;
let current = null; // { feeds: the per-image tensors, plan, noMask }

async function init(m) {
  // Threads need SharedArrayBuffer (cross-origin isolation); each thread is one more wasm worker.
  const threads = self.crossOriginIsolated ? (m.numThreads || Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.simd = true;
  imageSize = m.imageSize;
  [click, image] = await Promise.all([
    ort.InferenceSession.create(new Uint8Array(m.clickBytes), OPTIONS),
    ort.InferenceSession.create(new Uint8Array(m.imageBytes), OPTIONS),
  ]);
  return { threads, crossOriginIsolated: self.crossOriginIsolated };
}

function run(m) {
  const t = { received: now() };
  const n = m.labels.length;
  const feeds = {
    ...current.feeds,
    point_coords: new ort.Tensor("float32", m.coords, [1, n, 2]),
    point_labels: new ort.Tensor("float32", m.labels, [1, n]),
    mask_input: m.mask ? new ort.Tensor("float32", m.mask, current.maskDims) : current.noMask,
    has_mask_input: m.mask ? current.hasMask : current.hasNoMask,
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
  };
  const imageMs = now() - t0;
  // One click with this image's tensors, so that the first real click is as fast as the others.
  const c = imageSize / 2;
  await run({ coords: new Float32Array([c, c, 0, 0]), labels: new Float32Array([1, -1]), mask: null });
  return { imageMs, warmMs: now() - t0 - imageMs };
}

async function decode(m) {
  const { out, t } = await run(m);
  const iou = out.iou_predictions.data;
  let low = out.low_res_masks.data;
  if (low.byteOffset !== 0 || low.buffer.byteLength !== low.byteLength) low = low.slice(); // own buffer, to transfer
  const order = maskOrder(iou, m.single);
  const u0 = now();
  const mask = upsampleMask(low, order[0], current.plan);
  t.upsample = now() - u0;
  return { reply: { iou, low, order, mask, timings: t }, transfer: [low.buffer, mask.buffer] };
}

const handlers = { init, image: setImage, decode };
let queue = Promise.resolve();
self.onmessage = (ev) => {
  const m = ev.data;
  queue = queue.then(async () => {
    try {
      const r = await handlers[m.type](m);
      if (r && r.reply) self.postMessage({ id: m.id, ...r.reply }, r.transfer);
      else self.postMessage({ id: m.id, ...r });
    } catch (e) {
      self.postMessage({ id: m.id, error: String((e && e.message) || e) });
    }
  });
};
