// segany's server decode path, for the models whose decoder the page cannot run: HQ-SAM (its HQ token reads the
// encoder's early features) and SAM 2 (its decoder reads the stride-4/8 features, and it stretches the image to a
// square). Each click is one POST /api/images/{id}/decode, answered by SamPredictor on the image's cached
// features with its low-res logits and scores; the page upsamples, thresholds and draws them as it does the
// in-browser decoder's (decode.js), with the model's own geometry.
//
// Same interface as decode.js's PageDecoder: setImage, decode(points, maskInput, single), warmup; results have
// order, iou, timings, mask(k) and lowRes(k).
import { spanRuns, upsampleMask, upsamplePlan } from "./decode.js";

/** Per output index: one bilinear resize nIn -> nOut (align_corners=False, as PyTorch, positions in float32),
 * in upsampleMask's 4-tap layout (the last two taps have weight 0). */
export function resizeTaps(nOut, nIn) {
  const f = Math.fround;
  const idx = new Int32Array(nOut * 4); const wt = new Float64Array(nOut * 4);
  const lo = new Int32Array(nOut); const hi = new Int32Array(nOut);
  const s = f(nIn / nOut);
  for (let o = 0; o < nOut; o++) {
    let src = f(f(s * f(o + 0.5)) - 0.5); if (src < 0) src = 0;
    const j0 = Math.floor(src); const j1 = j0 < nIn - 1 ? j0 + 1 : j0; const a = f(src - j0);
    const n = 4 * o;
    idx[n] = j0; wt[n] = 1 - a; idx[n + 1] = j1; wt[n + 1] = a;
    idx[n + 2] = j0; wt[n + 2] = 0; idx[n + 3] = j1; wt[n + 3] = 0;
    lo[o] = j0; hi[o] = j1;
  }
  return { idx, wt, lo, hi, runs: spanRuns(lo, hi) };
}

/** How the low-res logits (s x s) become the image's mask: SAM's postprocess (to the input size, crop the
 * padding, to the image) or SAM 2's (straight to the image: the whole input is image). */
export function serverPlan(height, width, imageSize, lowSize, resizeMode) {
  if (resizeMode === "square") {
    return { height, width, lowSize, lowRows: lowSize, rows: resizeTaps(height, lowSize),
      cols: resizeTaps(width, lowSize) };
  }
  return { ...upsamplePlan(height, width, imageSize, lowSize), lowRows: lowSize }; // every row is sent
}

function fromBase64(text) {
  const bin = atob(text);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Float32Array(bytes.buffer); // little-endian, as every browser's typed arrays
}

function toBase64(values) {
  const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

/** One decode's answer: the server's low-res logits and scores, the masks best-scored first. */
class ServerDecodeResult {
  constructor(low, scores, shape, plan, timings) {
    this.low = low; this.iou = scores; this.plan = plan; this.timings = timings;
    this.planeSize = shape[1] * shape[2];
    this.order = [...scores.keys()].sort((a, b) => scores[b] - scores[a]);
    this.masks = new Map();
  }

  /** Binary mask of plane k at the image's size (computed once). */
  mask(k) {
    if (!this.masks.has(k)) this.masks.set(k, upsampleMask(this.low, k, this.plan));
    return this.masks.get(k);
  }

  /** Plane k's low-res logits (s x s), the mask input of a corrective click. */
  lowRes(k) {
    return this.low.slice(k * this.planeSize, (k + 1) * this.planeSize);
  }
}

export class ServerDecoder {
  /** `post(url, body)`: the page's authenticated JSON POST (returns the Response, throws on an error);
   * `info`: GET /api/model's answer (image_size, resize_mode, low_res_size). */
  constructor({ post, info }) {
    this.post = post; this.info = info; this.image = null;
  }

  /** The image clicks go to (`embedding.image`: the page's image record). The server keeps its features. */
  setImage(key, embedding, height, width) {
    if (this.image && this.image.key === key) return this.image.ready;
    const { image_size: imageSize, low_res_size: lowSize, resize_mode: mode } = this.info;
    const plan = serverPlan(height, width, imageSize, lowSize, mode);
    // The page's prompts arrive in SAM's input frame (long side = image_size): back to image pixels.
    const s = imageSize / Math.max(height, width);
    const scale = [Math.floor(width * s + 0.5) / width, Math.floor(height * s + 0.5) / height];
    this.image = { key, id: embedding.image.id, plan, scale, height, width, ready: Promise.resolve() };
    return this.image.ready;
  }

  /** Decode one prompt: points [[x, y, label], ...] as the page sends them (labels 1/0, box corners 2/3,
   * -1 padding), the mask input (a result's lowRes(k)) or null; `single` (one prompt: ambiguous) asks for the
   * multimask output, as maskOrder's. */
  async decode(points, maskInput, single) {
    if (!this.image) throw new Error("no image");
    const { id, plan, scale: [sx, sy] } = this.image;
    const body = { points: [], box: null, mask_input: null, multimask_output: Boolean(single) };
    const corners = [];
    for (const [x, y, l] of points) {
      if (l === 0 || l === 1) body.points.push({ x: x / sx, y: y / sy, label: l });
      else if (l === 2 || l === 3) corners[l - 2] = [x / sx, y / sy];
    }
    if (corners[0] && corners[1]) body.box = [...corners[0], ...corners[1]];
    if (maskInput) body.mask_input = toBase64(maskInput);
    const t0 = performance.now();
    const r = await (await this.post(`/api/images/${id}/decode`, body)).json();
    const t1 = performance.now();
    const low = fromBase64(r.low_res_logits);
    const result = new ServerDecodeResult(low, r.scores, r.shape, plan, { request: t1 - t0 });
    const u0 = performance.now();
    result.mask(result.order[0]);
    result.timings.upsample = performance.now() - u0;
    result.timings.total = performance.now() - t0;
    return result;
  }

  /** One click at the image's centre, so that the server has this image's predictor when the first click comes. */
  async warmup() {
    if (!this.image) return;
    const { height, width, scale: [sx, sy] } = this.image;
    await this.decode([[(width * sx) / 2, (height * sy) / 2, 1], [0, 0, -1]], null, true);
  }
}
