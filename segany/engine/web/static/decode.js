// segany's decode path: the exported decoder runs in a Web Worker (decoder-worker.js), so the page never blocks.
//
// Per image, the worker runs the per-image graph once (the image tokens and the first two-way block's image-side
// projections); per click it runs only the per-click graph, which returns the IoU predictions and the four
// low-resolution logit planes for the rows the image's pixels read (4 x r x s; the rows under the resize padding
// are upscaled by a third graph after the mask is shown, so that a corrective click feeds back the whole plane). The mask shown and saved is the chosen plane upsampled exactly as
// SamPredictor does it (bilinear to the model's input size, crop the padding, bilinear to the image size,
// align_corners=False, threshold at 0), computed straight at the image's size: each output pixel is a weighted
// sum of at most 4 x 4 low-resolution logits, and where all of them have the same sign (most of the image) the
// sign is known without the sum. The first mask is upsampled in the worker, the others only when asked for.
//
// This module has no DOM code, so that the worker imports its upsampling too.

/** Per output index of one axis: 4 (low-res index, weight) pairs, composing PyTorch's two bilinear resizes. */
export function axisTaps(nOut, nCrop, lowSize, imgSize) {
  const f = Math.fround; // PyTorch computes source positions in float32
  const idx = new Int32Array(nOut * 4); const wt = new Float64Array(nOut * 4);
  const lo = new Int32Array(nOut); const hi = new Int32Array(nOut);
  const s2 = f(nCrop / nOut); const s1 = f(lowSize / imgSize);
  for (let o = 0; o < nOut; o++) {
    let src = f(f(s2 * f(o + 0.5)) - 0.5); if (src < 0) src = 0;
    const j0 = Math.floor(src); const j1 = j0 < nCrop - 1 ? j0 + 1 : j0; const a = f(src - j0);
    let n = 4 * o;
    for (const [j, wj] of [[j0, 1 - a], [j1, a]]) {
      let t = f(f(s1 * f(j + 0.5)) - 0.5); if (t < 0) t = 0;
      const k0 = Math.floor(t); const k1 = k0 < lowSize - 1 ? k0 + 1 : k0; const b = f(t - k0);
      idx[n] = k0; wt[n++] = wj * (1 - b);
      idx[n] = k1; wt[n++] = wj * b;
    }
    lo[o] = idx[4 * o]; hi[o] = Math.max(idx[4 * o + 1], idx[4 * o + 3]);
  }
  return { idx, wt, lo, hi, runs: spanRuns(lo, hi) };
}

/** Where runs of consecutive outputs that read the same low-res span [lo, hi] start (and, last, the number of
 * outputs): about imgSize / lowSize outputs a run when upsampling. `upsampleMask` settles a run at once when its
 * span's logits all have one sign. */
export function spanRuns(lo, hi) {
  const starts = [0];
  for (let o = 1; o < lo.length; o++) if (lo[o] !== lo[o - 1] || hi[o] !== hi[o - 1]) starts.push(o);
  starts.push(lo.length);
  return Int32Array.from(starts);
}

/** The upsampling plan of one image: ResizeLongestSide's input size, the taps of both axes, and the embedding
 * rows whose upscaled logits those taps read (`upRows`, of lowSize / 4). */
export function upsamplePlan(height, width, imgSize, lowSize) {
  const s = imgSize / Math.max(height, width);
  const hIn = Math.floor(height * s + 0.5); const wIn = Math.floor(width * s + 0.5);
  const rows = axisTaps(height, hIn, lowSize, imgSize); const cols = axisTaps(width, wIn, lowSize, imgSize);
  let last = 0; for (const k of rows.hi) last = Math.max(last, k); // (no spread: images may have 100k rows)
  const upRows = Math.ceil((last + 1) / 4);
  return { height, width, lowSize, rows, cols, upRows, lowRows: 4 * upRows };
}

/** Binary mask (Uint8Array, row-major height x width) of plane k of low-res logits 4 x plan.lowRows x s. */
export function upsampleMask(low, k, plan) {
  const { height: H, width: W, lowSize: s, rows, cols } = plan;
  const plane = k * plan.lowRows * s;
  const out = new Uint8Array(H * W);
  const c0 = cols.lo[0]; const c1 = cols.hi[W - 1] + 1; // low-res columns any output pixel reads
  const row = new Float64Array(s); const pos = new Int32Array(s + 1); const { runs } = cols;
  let prevY = -1;
  for (let y = 0; y < H; y++) {
    const r = 4 * y; const base = y * W;
    // Rows with the same taps (upsampling > 1x) reuse the previous row's result.
    if (prevY >= 0 && rows.idx[r] === rows.idx[4 * prevY] && rows.idx[r + 1] === rows.idx[4 * prevY + 1]
        && rows.idx[r + 2] === rows.idx[4 * prevY + 2] && rows.idx[r + 3] === rows.idx[4 * prevY + 3]
        && rows.wt[r] === rows.wt[4 * prevY] && rows.wt[r + 1] === rows.wt[4 * prevY + 1]
        && rows.wt[r + 2] === rows.wt[4 * prevY + 2] && rows.wt[r + 3] === rows.wt[4 * prevY + 3]) {
      out.copyWithin(base, base - W, base);
      prevY = y;
      continue;
    }
    prevY = y;
    const a0 = plane + rows.idx[r] * s; const a1 = plane + rows.idx[r + 1] * s;
    const a2 = plane + rows.idx[r + 2] * s; const a3 = plane + rows.idx[r + 3] * s;
    const w0 = rows.wt[r]; const w1 = rows.wt[r + 1]; const w2 = rows.wt[r + 2]; const w3 = rows.wt[r + 3];
    for (let c = c0; c < c1; c++) {
      const v = w0 * low[a0 + c] + w1 * low[a1 + c] + w2 * low[a2 + c] + w3 * low[a3 + c];
      row[c] = v; pos[c + 1] = pos[c] + (v > 0 ? 1 : 0);
    }
    if (pos[c1] === pos[c0]) continue; // nothing positive on this row
    if (pos[c1] - pos[c0] === c1 - c0) { out.fill(1, base, base + W); continue; }
    for (let r = 0; r + 1 < runs.length; r++) { // runs of pixels reading the same span of this row
      const xs = runs[r]; const xe = runs[r + 1];
      const lo = cols.lo[xs]; const hi = cols.hi[xs];
      const n = pos[hi + 1] - pos[lo];
      if (n === 0) continue; // non-negative mixes of values <= 0
      if (n === hi - lo + 1) { out.fill(1, base + xs, base + xe); continue; } // ... of values > 0
      for (let x = xs; x < xe; x++) {
        const q = 4 * x;
        const v = cols.wt[q] * row[cols.idx[q]] + cols.wt[q + 1] * row[cols.idx[q + 1]]
          + cols.wt[q + 2] * row[cols.idx[q + 2]] + cols.wt[q + 3] * row[cols.idx[q + 3]];
        if (v > 0) out[base + x] = 1;
      }
    }
  }
  return out;
}

/** The smallest rectangle [x0, y0, x1, y1) holding every set pixel of a height x width mask, or null. */
export function maskBox(mask, height, width) {
  const first = mask.indexOf(1);
  if (first < 0) return null;
  const y0 = Math.floor(first / width); const y1 = Math.floor(mask.lastIndexOf(1) / width) + 1;
  let x0 = width; let x1 = 0;
  for (let y = y0; y < y1; y++) {
    const row = mask.subarray(y * width, (y + 1) * width);
    const a = row.indexOf(1);
    if (a < 0) continue;
    if (a < x0) x0 = a;
    const b = row.lastIndexOf(1) + 1;
    if (b > x1) x1 = b;
  }
  return [x0, y0, x1, y1];
}

/** Which planes the page offers, best first: one prompt (or a box alone) is ambiguous, so the three multimask
 * outputs sorted by predicted IoU; more prompts pin the object down, so the single-mask output (plane 0) first,
 * as SamPredictor's multimask_output=False. */
export function maskOrder(iou, single) {
  const ambiguous = [1, 2, 3].sort((a, b) => iou[b] - iou[a]);
  return single ? ambiguous : [0, ...ambiguous];
}

const now = () => performance.timeOrigin + performance.now(); // comparable between the page and the worker

/** One decode's answer: the low-res logits and IoUs, the planes in display order, and binary masks on demand. */
class DecodeResult {
  constructor(msg, plan) {
    this.id = msg.resultId; this.low = msg.low; this.iou = msg.iou; this.order = msg.order;
    this.h = plan.height; this.w = plan.width;
    this.plan = plan;
    this.masks = new Map([[msg.order[0], msg.mask]]);
    this.timings = msg.timings;
  }

  /** Binary mask of plane k at the image's size (computed once). */
  mask(k) {
    if (!this.masks.has(k)) this.masks.set(k, upsampleMask(this.low, k, this.plan));
    return this.masks.get(k);
  }

  /** Plane k's whole low-res logits (s x s), the mask input of a corrective click: a reference to the copy
   * the worker keeps (it completes the padding rows after showing the mask); `decode` takes it as is. */
  lowRes(k) {
    return { resultId: this.id, plane: k };
  }
}

/** The page's decoder: a worker holding both graphs, the current image's tensors and its upsampling plan. */
export class PageDecoder {
  constructor(worker, info) {
    this.worker = worker; this.info = info;
    this.pending = new Map(); this.nextId = 1;
    this.image = null; // { key, plan, ready }
    worker.onmessage = (ev) => {
      const m = ev.data; const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.error) p.reject(new Error(m.error)); else p.resolve(m);
    };
    worker.onerror = (ev) => {
      for (const p of this.pending.values()) p.reject(new Error(ev.message || "decoder worker failed"));
      this.pending.clear();
    };
  }

  /** Starts the worker, whose wasm runtime starts at once (before any graph is here): call it as early as the
   * page can. `numThreads` (default: up to 4 when cross-origin isolated, else 1) is fixed from then on. */
  static start({ numThreads, workerUrl } = {}) {
    const url = new URL(workerUrl || new URL("./decoder-worker.js", import.meta.url));
    if (numThreads) url.searchParams.set("threads", String(numThreads));
    return new PageDecoder(new Worker(url, { type: "module", name: "segany-decoder" }), null);
  }

  /** Hands the started worker the exported graphs (ArrayBuffers, transferred) and waits for its sessions.
   * `optimized`: the graphs were saved by onnxruntime's optimiser (segany's export does), so the worker creates
   * their sessions with optimisation off. */
  async load({ clickBytes, imageBytes, upscaleBytes, imageSize, optimized = false }) {
    const graphs = [clickBytes, imageBytes, upscaleBytes];
    this.info = await this.call("init", { clickBytes, imageBytes, upscaleBytes, imageSize, optimized }, graphs);
    this.imageSize = imageSize;
    return this;
  }

  static async create({ clickBytes, imageBytes, upscaleBytes, imageSize, optimized, numThreads, workerUrl }) {
    return PageDecoder.start({ numThreads, workerUrl })
      .load({ clickBytes, imageBytes, upscaleBytes, imageSize, optimized });
  }

  /** Stops the worker (a page whose clicks the server decodes has no use for it). */
  close() {
    this.worker.terminate();
  }

  call(type, payload, transfer = []) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, type, sent: now(), ...payload }, transfer);
    });
  }

  /** Hand the worker a new image's embedding ({data: Float32Array, shape}); runs the per-image graph and one
   * warm-up click there. Decodes wait for it. `key` identifies the image (same key: nothing is redone). */
  setImage(key, embedding, height, width) {
    if (this.image && this.image.key === key) return this.image.ready;
    const lowSize = 4 * embedding.shape[2];
    const plan = upsamplePlan(height, width, this.imageSize, lowSize);
    const data = new Float32Array(embedding.data); // a copy: the page keeps its own
    const ready = this.call("image", { data, shape: embedding.shape, plan }, [data.buffer]);
    this.image = { key, plan, ready };
    ready.catch(() => {});
    return ready;
  }

  /** Decode one prompt: points [[x, y, label], ...] in the model's input frame (labels 1/0, box corners 2/3,
   * -1 padding), the mask input (a result's lowRes(k), or s x s logits) or null, `single` as maskOrder's. */
  async decode(points, maskInput, single) {
    if (!this.image) throw new Error("no image");
    const { plan } = this.image;
    await this.image.ready;
    const n = points.length;
    const coords = new Float32Array(2 * n); const labels = new Float32Array(n);
    points.forEach(([x, y, l], i) => { coords[2 * i] = x; coords[2 * i + 1] = y; labels[i] = l; });
    const ref = maskInput && maskInput.resultId !== undefined ? maskInput : null;
    const mask = maskInput && !ref ? new Float32Array(maskInput) : null;
    const transfer = [coords.buffer, labels.buffer, ...(mask ? [mask.buffer] : [])];
    const t0 = now();
    const msg = await this.call("decode", { coords, labels, mask, maskRef: ref, single }, transfer);
    const t1 = now();
    const t = msg.timings;
    t.postToWorker = t.received - t0; // message to the worker (structured clone, queueing)
    t.outputsOut = t1 - t.ranEnd - t.upsample; // outputs read and posted back
    t.total = t1 - t0;
    return new DecodeResult(msg, plan);
  }

  /** Resolves when the worker has nothing queued (a click's padding rows are upscaled after its mask is shown):
   * {lastComplete: ms that took}. */
  idle() {
    return this.call("idle", {});
  }

  /** One dummy click on the current image, so that the first real click finds everything compiled and sized:
   * the worker's own warm-up click (setImage) leaves the page's side of a decode and the mask upsampling cold. */
  async warmup() {
    if (!this.image) return;
    const s = this.imageSize;
    await this.decode([[s / 2, s / 2, 1], [0, 0, -1]], null, true);
  }
}

/** Records every pointer release's event time (the browser's own input timestamp), for click -> screen times. */
export function recordInputTimes(stats) {
  stats.lastInput = null;
  window.addEventListener("mouseup", (ev) => { stats.lastInput = ev.timeStamp; }, { capture: true });
  // Main-thread stalls: long tasks (> 50 ms) as the browser reports them.
  stats.longTasks = [];
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) stats.longTasks.push({ start: e.startTime, ms: e.duration });
    }).observe({ type: "longtask", buffered: true });
  } catch (_) { /* no longtask support */ }
}
