// segany annotation page: decodes masks in the browser with onnxruntime-web on the exported SAM decoder.
// The server computes each image's embedding once; every click here only runs the light decoder.
// All user-supplied text (labels, file names) is written with textContent, never parsed as HTML.
import { PageDecoder, maskBox, recordInputTimes } from "./decode.js";

const $ = (id) => document.getElementById(id);
const PALETTE = [[230, 25, 75], [60, 180, 75], [255, 225, 25], [245, 130, 48], [145, 30, 180], [70, 240, 240],
  [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128]];

const state = {
  csrf: null, project: null, images: [], index: 0, image: null, model: null, session: null,
  embedding: null, prompts: [], promptRedo: [], box: null, drag: null,
  result: null, order: [], choice: 0, startedAt: null,
  annotations: [], selected: null, undo: [], redo: [], busy: false,
  decoderReady: null, earlyDecoder: null, warmed: false, openSeq: 0, pan: null, space: false,
};
// Read by tests and benchmarks: every decode's wall time in ms (the last one is shown in the header), and per
// opened image the ms from asking for it to ready (image, masks, embedding and decoder in place).
// `load`: the first page's milestones, ms since navigation (benchmarks/bench_page_ready.py prints the split).
window.seganyStats = { decodeMs: [], openMs: [], load: {} };
const mark = (name) => { if (!(name in window.seganyStats.load)) window.seganyStats.load[name] = performance.now(); };
// The view: image pixel (x, y) is drawn at stage pixel (tx + s x, ty + s y). `fit` follows the window's size.
const view = { s: 1, tx: 0, ty: 0, fit: true };
window.seganyView = view;

async function api(method, url, body) {
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin" });
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail; } catch (_) { /* not JSON */ }
    const err = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    err.status = r.status;
    throw err;
  }
  return r.status === 204 ? null : r;
}

function setStatus(text) { $("status").textContent = text; }

// ---- login ------------------------------------------------------------------------------------------------

async function start() {
  mark("script");
  // The decoder's worker and its wasm runtime start now, while the session, the model info and the graphs are
  // asked for (a page whose clicks the server decodes stops it again).
  state.earlyDecoder = PageDecoder.start();
  // Asked for with the session check, so that the decoder starts loading as soon as both answer.
  const model = api("GET", "/api/model").then((r) => r.json());
  model.catch(() => {}); // without a session this is a 401: the session check reports it
  try {
    const me = await (await api("GET", "/api/me")).json();
    state.csrf = me.csrf_token;
    await openTool(model);
  } catch (e) {
    if (e.status === 401) { showLogin(); } else { setStatus(e.message); }
  }
}

function showLogin() {
  $("tool").hidden = true;
  $("login").hidden = false;
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  let r;
  try {
    r = await api("POST", "/api/login", { username: $("login-user").value, password: $("login-password").value });
  } catch (e) {
    $("login-error").textContent = e.message;
    return;
  }
  state.csrf = (await r.json()).csrf_token;
  try {
    await openTool();
  } catch (e) {
    setStatus(e.message); // e.g. 503: the model could not be loaded (the server log says why)
  }
});

$("logout").addEventListener("click", async () => {
  await api("POST", "/api/logout");
  location.reload();
});

async function openTool(modelInfo = null) {
  $("login").hidden = true;
  $("tool").hidden = false;
  const model = modelInfo || api("GET", "/api/model").then((r) => r.json());
  // The decoder loads while the projects, the first image and its embedding do; openImage waits for it.
  state.decoderReady = model.then((m) => { mark("model"); state.model = m; return loadDecoder(); });
  state.decoderReady.catch(() => {}); // reported by openImage
  const projects = await (await api("GET", "/api/projects")).json();
  if (!projects.length) { setStatus("no project"); return; }
  state.project = projects[0];
  $("project-name").textContent = state.project.name;
  $("export-coco").href = `/api/projects/${state.project.id}/export?format=coco`;
  $("export-sa1b").href = `/api/projects/${state.project.id}/export?format=sa1b`;
  state.model = await model;
  await refreshImages();
  const params = new URLSearchParams(location.hash.slice(1));
  const wanted = Number(params.get("image"));
  const i = state.images.findIndex((im) => im.id === wanted);
  await openImage(i >= 0 ? i : Math.max(0, state.images.findIndex((im) => !im.done)), true);
}

// Loads the exported decoder (per-click and per-image graphs) into its worker (decode.js), or, for models the
// page cannot decode (HQ-SAM, SAM 2: model info decode "server"), the session that posts clicks to the server.
async function loadDecoder() {
  recordInputTimes(window.seganyStats);
  const started = state.earlyDecoder; state.earlyDecoder = null;
  if (state.model.decode === "server") {
    if (started) started.close();
    const { ServerDecoder } = await import("./server-decode.js");
    state.session = new ServerDecoder({ post: (url, body) => api("POST", url, body), info: state.model });
    return;
  }
  const get = async (url) => (await api("GET", url)).arrayBuffer();
  const part = (name) => state.model.decoder_url.replace(/\.onnx$/, `.${name}.onnx`);
  const [clickBytes, imageBytes, upscaleBytes] = await Promise.all([
    get(state.model.decoder_url), get(part("image")), get(part("upscale")),
  ]);
  mark("graphs");
  state.session = await (started || PageDecoder.start()).load({ clickBytes, imageBytes, upscaleBytes,
    imageSize: state.model.image_size, optimized: state.model.decoder_optimized });
  mark("decoder");
  // The worker's milestones (epoch ms) on the page's clock; one it could not see (no resource timing) is left out.
  const at = (t) => (t == null ? undefined : t - performance.timeOrigin); const { info } = state.session;
  Object.assign(window.seganyStats.load, { workerLoaded: at(info.loadedAt), wasmFetched: at(info.wasmFetched),
    runtimeReady: at(info.runtimeReady), sessionsStart: at(info.createStart), sessionsDone: at(info.createdAt) });
}

async function refreshImages() {
  state.images = await (await api("GET", `/api/projects/${state.project.id}/images`)).json();
  showProgress();
}

function showProgress() {
  const done = state.images.filter((im) => im.done).length;
  $("progress").textContent = `image ${state.index + 1} of ${state.images.length} · ${done} done`;
}

// ---- images and embeddings ----------------------------------------------------------------------------------

async function openImage(i, listFresh = false) {
  if (!state.images.length) { setStatus("no images"); return; }
  const seq = ++state.openSeq; // a newer openImage (n pressed twice) wins
  const t0 = performance.now();
  state.index = Math.min(Math.max(i, 0), state.images.length - 1);
  state.image = state.images[state.index];
  const image = state.image;
  history.replaceState(null, "", `#image=${image.id}`);
  $("image-name").textContent = image.file_name;
  delete document.body.dataset.ready;
  clearPrompt();
  state.undo = []; state.redo = []; state.selected = null;
  state.embedding = null;
  sizeOverlay();
  fitView();
  setStatus("loading image…");
  // The image, its masks, its embedding (cached or prefetched by the server) and the list load in parallel.
  // A page whose clicks the server decodes (HQ-SAM, SAM 2) only needs the embedding computed, not its bytes.
  const bytes = state.model.decode !== "server";
  const embedding = api("GET", `/api/images/${image.id}/embedding${bytes ? "" : "?data=false"}`).then(async (r) => (
    bytes ? { shape: r.headers.get("X-Embedding-Shape").split(",").map(Number), data: new Float32Array(await r.arrayBuffer()) }
      : { shape: state.model.embedding_shape, data: null } // 204: computed, no body
  ));
  embedding.catch(() => {}); // awaited below
  const img = $("image");
  const shown = new Promise((resolve, reject) => {
    img.onload = resolve; img.onerror = () => reject(new Error("image failed to load"));
    img.src = `/api/images/${image.id}/file`;
  });
  if (listFresh) showProgress();
  await Promise.all([shown, loadAnnotations(), listFresh ? null : refreshImages()]);
  mark("shown");
  if (seq !== state.openSeq) return;
  setStatus("computing embedding…");
  const emb = await embedding;
  mark("embedding");
  if (seq !== state.openSeq) return;
  state.embedding = embeddingTensor(emb.data, emb.shape);
  setStatus("loading decoder…");
  try {
    await state.decoderReady;
  } catch (e) {
    setStatus(`decoder failed to load: ${e.message}`);
    return;
  }
  if (!state.warmed) { state.warmed = true; await warmUp(); }
  mark("warm");
  if (seq !== state.openSeq) return;
  window.seganyStats.openMs.push(performance.now() - t0);
  document.body.dataset.ready = String(image.id);
  mark("ready");
  setStatus("ready");
  // The server holds its background embeddings (the next images) until now: they would slow this load.
  api("POST", `/api/images/${image.id}/ready`).catch(() => {});
}

function sizeOverlay() {
  const img = $("image"); const saved = $("saved"); const cv = $("overlay");
  const { width: w, height: h } = state.image;
  saved.width = w; saved.height = h; cv.width = w; cv.height = h; shownBox = null;
  for (const el of [img, saved, cv]) { el.style.width = `${w}px`; el.style.height = `${h}px`; }
  draw();
}

// ---- zoom and pan -------------------------------------------------------------------------------------------
// The image and the mask canvas sit in #view at image resolution and move together under one CSS transform;
// prompts are drawn on #marks at screen resolution through the same view. toImage() is the one conversion from
// a pointer position to image coordinates.

function stageRect() {
  const st = $("stage"); const r = st.getBoundingClientRect();
  return { left: r.left + st.clientLeft, top: r.top + st.clientTop, width: st.clientWidth, height: st.clientHeight };
}

function toImage(ev, clamp = true) {
  const r = stageRect();
  const x = (ev.clientX - r.left - view.tx) / view.s; const y = (ev.clientY - r.top - view.ty) / view.s;
  if (!clamp) return { x, y };
  return { x: Math.min(Math.max(x, 0), state.image.width - 1), y: Math.min(Math.max(y, 0), state.image.height - 1) };
}

function applyView() {
  $("view").style.transform = `translate(${view.tx}px, ${view.ty}px) scale(${view.s})`;
  $("zoom").textContent = `${Math.round(view.s * 100)}%`;
  drawMarks();
}

function fitView() {
  if (!state.image) return;
  const r = stageRect(); const { width: w, height: h } = state.image;
  view.s = Math.min(r.width / w, r.height / h) || 1;
  view.tx = (r.width - w * view.s) / 2; view.ty = (r.height - h * view.s) / 2;
  view.fit = true;
  applyView();
}

function zoomAt(factor, px, py) {
  // Zoom by `factor` keeping stage pixel (px, py) over the same image pixel.
  const r = stageRect(); const { width: w, height: h } = state.image;
  const fit = Math.min(r.width / w, r.height / h) || 1;
  const s = Math.min(Math.max(view.s * factor, fit / 4), Math.max(32, fit));
  view.tx = px - ((px - view.tx) / view.s) * s; view.ty = py - ((py - view.ty) / view.s) * s;
  view.s = s; view.fit = false;
  applyView();
}

window.addEventListener("resize", () => { if (!state.image) return; if (view.fit) fitView(); else applyView(); });

async function loadAnnotations() {
  state.annotations = await (await api("GET", `/api/images/${state.image.id}/annotations`)).json();
  for (const a of state.annotations) {
    a.bitmap = decodeRle(a.rle);
    a.box = maskBox(a.bitmap, state.image.height, state.image.width);
  }
  renderList();
  draw();
}

// ---- decoding ---------------------------------------------------------------------------------------------

// The embedding as the decoder takes it; the decoder's worker starts on this image's per-image work at once.
function embeddingTensor(data, shape) {
  const emb = { data, shape, dims: shape, image: state.image };
  state.decoderReady.then(() => state.session.setImage(emb, emb, emb.image.height, emb.image.width))
    .then(() => mark("imageSet")).catch(() => {});
  return emb;
}

// One decode before the first click (per page load), so that the first click is as fast as the others: the
// decode path's own warmup() when it has one, else a dummy click at the image centre, kept off the record.
async function warmUp() {
  try {
    if (typeof warmup === "function") { await warmup(); return; } // eslint-disable-line no-undef
    if (state.session && typeof state.session.warmup === "function") { await state.session.warmup(); return; }
    const saved = { prompts: state.prompts, box: state.box, maskInput: state.maskInput };
    const n = window.seganyStats.decodeMs.length;
    state.prompts = [{ x: state.image.width / 2, y: state.image.height / 2, label: 1 }];
    state.box = null; state.maskInput = null;
    try { await decodeOnce(); } finally {
      Object.assign(state, saved);
      window.seganyStats.decodeMs.length = n;
      state.result = null; state.order = []; $("decode-ms").textContent = "–"; $("mask-index").textContent = "–";
      draw();
    }
  } catch (e) {
    console.warn("decoder warm-up failed", e);
  }
}

function modelScale() {
  // Mirrors ResizeLongestSide: the long side becomes image_size, the short side is rounded.
  const { width: w, height: h } = state.image;
  const s = state.model.image_size / Math.max(h, w);
  return [Math.floor(w * s + 0.5) / w, Math.floor(h * s + 0.5) / h];
}

// One decode at a time: a click that arrives during a decode schedules one more run with the latest prompts.
let decoding = null;
let decodeAgain = false;

async function decode() {
  if (decoding) { decodeAgain = true; return decoding; }
  decoding = (async () => {
    do {
      decodeAgain = false;
      await decodeOnce();
    } while (decodeAgain);
  })();
  try { await decoding; } finally { decoding = null; }
}

async function decodeOnce() {
  if (!state.session || !state.embedding || (!state.prompts.length && !state.box)) return;
  const [sx, sy] = modelScale();
  const pts = state.prompts.map((p) => [p.x * sx, p.y * sy, p.label]);
  if (state.box) {
    pts.push([state.box.x0 * sx, state.box.y0 * sy, 2], [state.box.x1 * sx, state.box.y1 * sy, 3]);
  } else {
    pts.push([0, 0, -1]); // padding point, as the prompt encoder adds when there is no box
  }
  // One click (or a box alone) is ambiguous: the three multimask outputs best first. More prompts pin the
  // object down: the single-mask output comes first, as in the official predictor.
  const single = state.prompts.length + (state.box ? 1 : 0) <= 1;
  const emb = state.embedding;
  state.session.setImage(emb, emb, emb.image.height, emb.image.width); // no-op unless the image changed
  const stats = window.seganyStats; const input = stats.lastInput; stats.lastInput = null;
  const result = await state.session.decode(pts, state.maskInput, single);
  if (state.embedding !== emb) return; // another image opened meanwhile
  state.result = result;
  state.order = result.order;
  state.choice = 0;
  $("mask-index").textContent = `1/${state.order.length}`;
  const d0 = performance.now();
  drawCurrent();
  const t = result.timings;
  t.draw = performance.now() - d0;
  stats.decodeMs.push(t.total);
  $("decode-ms").textContent = t.total.toFixed(0);
  // Click -> mask on screen: from the input event to the frame after the one that drew the mask.
  (stats.stages ||= []).push(t);
  requestAnimationFrame(() => setTimeout(() => {
    t.screen = performance.now();
    t.clickToScreen = input === null ? null : t.screen - input;
  }, 0));
}

function chosenLowRes() {
  return state.result.lowRes(state.order[state.choice]);
}

function currentMask() {
  if (!state.result) return null;
  return state.result.mask(state.order[state.choice]);
}

// ---- RLE (COCO, column-major) -------------------------------------------------------------------------------

function encodeRle(m, h, w) {
  const counts = []; let cur = 0; let run = 0;
  for (let x = 0; x < w; x++) {
    for (let y = 0; y < h; y++) {
      const v = m[y * w + x];
      if (v !== cur) { counts.push(run); run = 0; cur = v; }
      run++;
    }
  }
  counts.push(run);
  return { size: [h, w], counts };
}

function decodeRle(rle) {
  // Compressed COCO counts string -> row-major Uint8Array.
  const [h, w] = rle.size; const s = rle.counts; const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0; let k = 0; let more = 1;
    while (more) {
      const c = s.charCodeAt(p) - 48; x |= (c & 0x1f) << (5 * k); more = c & 0x20; p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  const m = new Uint8Array(h * w); let idx = 0; let v = 0;
  for (const c of counts) {
    for (let j = 0; j < c; j++) { const col = Math.floor(idx / h); const row = idx % h; if (v) m[row * w + col] = 1; idx++; }
    v = 1 - v;
  }
  return m;
}

// ---- drawing ------------------------------------------------------------------------------------------------

// Two image-resolution layers: #saved holds the accepted masks (redrawn when they or the selection change),
// #overlay the mask being made (redrawn per click, only over its own and the previous mask's rectangles), so a
// click's drawing costs the mask's area, not the image's times the number of saved masks.
function draw() {
  drawSaved();
  drawCurrent();
}

// RGBA as one little-endian 32-bit pixel (every browser's typed arrays are little-endian).
const rgba = (r, g, b, a) => ((a << 24) | (b << 16) | (g << 8) | r) >>> 0;

/** Paints the set pixels of `mask` (height x width, row-major) inside `box` [x0, y0, x1, y1) onto `ctx`, over
 * what is there (`over`) or over a transparent rectangle. */
function paintMask(ctx, mask, box, width, color, over) {
  const [x0, y0, x1, y1] = box; const bw = x1 - x0; const bh = y1 - y0;
  const img = over ? ctx.getImageData(x0, y0, bw, bh) : ctx.createImageData(bw, bh);
  const px = new Uint32Array(img.data.buffer);
  for (let y = 0; y < bh; y++) {
    const src = (y0 + y) * width + x0; const dst = y * bw;
    for (let x = 0; x < bw; x++) if (mask[src + x]) px[dst + x] = color;
  }
  ctx.putImageData(img, x0, y0);
}

function drawSaved() {
  const ctx = $("saved").getContext("2d");
  if (!state.image) return;
  const { width: w, height: h } = state.image;
  ctx.clearRect(0, 0, w, h);
  state.annotations.forEach((a, n) => {
    if (!a.box) return;
    const [r, g, b] = PALETTE[n % PALETTE.length];
    paintMask(ctx, a.bitmap, a.box, w, rgba(r, g, b, a.id === state.selected ? 170 : 100), true);
  });
}

let shownBox = null; // the rectangle #overlay has painted, cleared before the next mask is drawn

function drawCurrent() {
  const ctx = $("overlay").getContext("2d");
  if (shownBox) { const [x0, y0, x1, y1] = shownBox; ctx.clearRect(x0, y0, x1 - x0, y1 - y0); shownBox = null; }
  if (!state.image) return;
  const cur = currentMask();
  const { width: w, height: h } = state.image;
  const box = cur && maskBox(cur, h, w);
  if (box) { paintMask(ctx, cur, box, w, rgba(0, 114, 189, 150), false); shownBox = box; }
  drawMarks();
}

// Prompts and the box, at screen resolution: the same size at every zoom, placed through the view.
function drawMarks() {
  const cv = $("marks"); const r = stageRect(); const dpr = window.devicePixelRatio || 1;
  if (cv.width !== Math.round(r.width * dpr) || cv.height !== Math.round(r.height * dpr)) {
    cv.width = Math.round(r.width * dpr); cv.height = Math.round(r.height * dpr);
    cv.style.width = `${r.width}px`; cv.style.height = `${r.height}px`;
  }
  const ctx = cv.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, r.width, r.height);
  if (!state.image) return;
  const sx = (x) => view.tx + x * view.s; const sy = (y) => view.ty + y * view.s;
  for (const p of state.prompts) {
    ctx.beginPath(); ctx.arc(sx(p.x), sy(p.y), 5, 0, 2 * Math.PI);
    ctx.fillStyle = p.label === 1 ? "#00c853" : "#d50000"; ctx.fill();
    ctx.lineWidth = 1.5; ctx.strokeStyle = "#fff"; ctx.stroke();
  }
  const box = state.drag && state.drag.moved ? state.drag : state.box;
  if (box) {
    ctx.lineWidth = 2; ctx.strokeStyle = "#ffeb3b";
    ctx.strokeRect(sx(Math.min(box.x0, box.x1)), sy(Math.min(box.y0, box.y1)),
      Math.abs(box.x1 - box.x0) * view.s, Math.abs(box.y1 - box.y0) * view.s);
  }
}

function renderList() {
  const ol = $("masks");
  ol.replaceChildren();
  state.annotations.forEach((a) => {
    const li = document.createElement("li");
    li.dataset.id = String(a.id);
    if (a.id === state.selected) li.className = "selected";
    const label = document.createElement("span"); label.className = "label";
    label.textContent = a.label || "(no label)";
    const meta = document.createElement("div"); meta.className = "meta";
    meta.textContent = `${a.source}${a.created_by ? " " + a.created_by : ""} · ${a.seconds.toFixed(1)} s · area ${a.area}`;
    const rating = document.createElement("select");
    rating.setAttribute("aria-label", "quality");
    for (const v of ["", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]) {
      const o = document.createElement("option"); o.value = v; o.textContent = v || "–"; rating.append(o);
    }
    rating.value = a.quality ? String(a.quality) : "";
    rating.addEventListener("change", () => rate(a, rating.value ? Number(rating.value) : null));
    const del = document.createElement("button"); del.textContent = "Delete";
    del.addEventListener("click", (ev) => { ev.stopPropagation(); remove(a); });
    li.addEventListener("click", () => { state.selected = a.id; renderList(); draw(); });
    li.append(label, " ", rating, " ", del, meta);
    ol.append(li);
  });
}

// ---- prompts ------------------------------------------------------------------------------------------------

function clearPrompt() {
  state.prompts = []; state.promptRedo = []; state.box = null; state.result = null; state.order = [];
  state.startedAt = null; $("mask-index").textContent = "–";
  drawCurrent();
}

// Mouse: click = point, drag = box; wheel = zoom at the cursor; middle button, or Space/Alt + drag = pan.
const stage = $("stage");
stage.addEventListener("contextmenu", (ev) => ev.preventDefault());
stage.addEventListener("wheel", (ev) => {
  if (!state.image) return;
  ev.preventDefault();
  const r = stageRect();
  const dy = ev.deltaMode === 1 ? ev.deltaY * 33 : ev.deltaMode === 2 ? ev.deltaY * r.height : ev.deltaY;
  zoomAt(Math.exp(-dy * 0.0015), ev.clientX - r.left, ev.clientY - r.top);
}, { passive: false });
stage.addEventListener("mousedown", (ev) => {
  if (!state.image) return;
  if (ev.button === 1 || state.space || ev.altKey) {
    ev.preventDefault(); // no middle-button autoscroll
    state.pan = { x: ev.clientX, y: ev.clientY, tx: view.tx, ty: view.ty };
    stage.classList.add("panning");
    return;
  }
  if (!state.embedding || ev.button > 2) return;
  const q = toImage(ev, false);
  if (q.x < 0 || q.y < 0 || q.x >= state.image.width || q.y >= state.image.height) return; // outside the image
  state.drag = { x0: q.x, y0: q.y, x1: q.x, y1: q.y, moved: false, button: ev.button, shift: ev.shiftKey };
});
window.addEventListener("mousemove", (ev) => {
  if (state.pan) {
    view.tx = state.pan.tx + ev.clientX - state.pan.x; view.ty = state.pan.ty + ev.clientY - state.pan.y;
    view.fit = false;
    applyView();
    return;
  }
  if (!state.drag) return;
  const p = toImage(ev);
  state.drag.x1 = p.x; state.drag.y1 = p.y;
  const px = (Math.abs(p.x - state.drag.x0) + Math.abs(p.y - state.drag.y0)) * view.s; // screen pixels
  if (px > 6) state.drag.moved = true;
  if (state.drag.moved) drawMarks();
});
window.addEventListener("mouseup", async () => {
  if (state.pan) { state.pan = null; stage.classList.remove("panning"); return; }
  const d = state.drag; state.drag = null;
  if (!d) return;
  if (state.startedAt === null) state.startedAt = performance.now();
  if (d.moved) {
    state.box = { x0: Math.min(d.x0, d.x1), y0: Math.min(d.y0, d.y1), x1: Math.max(d.x0, d.x1), y1: Math.max(d.y0, d.y1) };
  } else {
    // A corrective click also feeds the chosen mask's low-res logits back, as SAM's interactive protocol does.
    state.maskInput = state.result ? chosenLowRes() : null;
    state.prompts.push({ x: d.x0, y: d.y0, label: d.button === 2 || d.shift ? 0 : 1 });
    state.promptRedo = [];
  }
  await decode();
  state.maskInput = null;
});

function cycle() {
  if (!state.order.length) return;
  state.choice = (state.choice + 1) % state.order.length;
  $("mask-index").textContent = `${state.choice + 1}/${state.order.length}`;
  drawCurrent();
}

// ---- saving, undo/redo ------------------------------------------------------------------------------------------

function newKey() {
  const b = new Uint8Array(16); crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

async function accept() {
  const m = currentMask();
  if (!m || state.busy) return;
  state.busy = true;
  try {
    const k = state.order[state.choice];
    const prompts = state.prompts.map((p) => ({ x: p.x, y: p.y, label: p.label }));
    if (state.box) prompts.push({ x: state.box.x0, y: state.box.y0, label: 2 }, { x: state.box.x1, y: state.box.y1, label: 3 });
    const body = {
      rle: encodeRle(m, state.image.height, state.image.width),
      label: $("label").value,
      source: "person",
      seconds: state.startedAt === null ? 0 : (performance.now() - state.startedAt) / 1000,
      quality: $("rating").value ? Number($("rating").value) : null,
      predicted_iou: state.result.iou[k],
      prompts,
      idempotency_key: newKey(),
    };
    const a = await (await api("POST", `/api/images/${state.image.id}/annotations`, body)).json();
    state.undo.push({ id: a.id }); state.redo = [];
    clearPrompt();
    $("rating").value = "";
    await loadAnnotations();
    setStatus(`saved mask ${a.id}`);
  } catch (e) {
    setStatus(`save failed: ${e.message}`);
  } finally {
    state.busy = false;
  }
}

async function setDeleted(id, deleted) {
  // Reads the current version first: a stale version gets 409 and is reported, never overwritten.
  const a = await (await api("GET", `/api/annotations/${id}`)).json();
  await api("PATCH", `/api/annotations/${id}`, { version: a.version, deleted });
}

async function undo() {
  if (state.prompts.length || state.box) {
    if (state.box) { state.box = null; } else { state.promptRedo.push(state.prompts.pop()); }
    if (!state.prompts.length && !state.box) { state.result = null; drawCurrent(); } else { await decode(); }
    return;
  }
  const op = state.undo.pop();
  if (!op) return;
  try {
    await setDeleted(op.id, !op.deleted);
    state.redo.push(op);
    await loadAnnotations();
  } catch (e) { setStatus(`undo failed: ${e.message}`); }
}

async function redo() {
  if (state.promptRedo.length) { state.prompts.push(state.promptRedo.pop()); await decode(); return; }
  const op = state.redo.pop();
  if (!op) return;
  try {
    await setDeleted(op.id, Boolean(op.deleted));
    state.undo.push(op);
    await loadAnnotations();
  } catch (e) { setStatus(`redo failed: ${e.message}`); }
}

async function remove(a) {
  try {
    await api("DELETE", `/api/annotations/${a.id}?version=${a.version}`);
    state.undo.push({ id: a.id, deleted: true }); state.redo = [];
    if (state.selected === a.id) state.selected = null;
    await loadAnnotations();
  } catch (e) {
    setStatus(e.status === 409 ? "changed by someone else: reloaded" : `delete failed: ${e.message}`);
    await loadAnnotations();
  }
}

async function rate(a, quality) {
  try {
    await api("PATCH", `/api/annotations/${a.id}`, { version: a.version, quality });
    setStatus(`rated mask ${a.id}`);
  } catch (e) {
    setStatus(e.status === 409 ? "changed by someone else: reloaded" : `rating failed: ${e.message}`);
  }
  await loadAnnotations();
}

async function prefill() {
  // The server runs the automatic generator; its progress (grid points decoded) is polled while the POST runs.
  const image = state.image; const bar = $("prefill-progress");
  setStatus("pre-filling: encoding the image…");
  bar.value = 0; bar.max = 1; bar.hidden = false; $("prefill").disabled = true;
  let running = true;
  const poll = (async () => {
    while (running) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      if (!running) break;
      try {
        const p = await (await api("GET", `/api/images/${image.id}/prefill/progress`)).json();
        if (running && p.running && p.total) {
          bar.max = p.total; bar.value = p.done;
          setStatus(p.done ? `pre-filling: ${p.done}/${p.total} points` : "pre-filling: encoding the image…");
        }
      } catch (_) { /* the POST reports errors */ }
    }
  })();
  try {
    const r = await (await api("POST", `/api/images/${image.id}/prefill`)).json();
    running = false;
    setStatus(`pre-fill added ${r.created} masks in ${r.seconds.toFixed(1)} s`);
    if (state.image === image) await loadAnnotations();
  } catch (e) {
    running = false;
    setStatus(`pre-fill failed: ${e.message}`);
  } finally {
    running = false; await poll; bar.hidden = true; $("prefill").disabled = false;
  }
}

async function finishImage() {
  // Marked done while the next image opens (its embedding was prefetched by the server).
  const done = api("PUT", `/api/images/${state.image.id}/status`, { done: true });
  done.catch((e) => setStatus(`could not mark the image done: ${e.message}`));
  await openImage(state.index + 1);
  try { await done; await refreshImages(); } catch (_) { /* reported above */ }
}

$("upload").addEventListener("change", async () => {
  const file = $("upload").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  setStatus("uploading…");
  try {
    const r = await fetch(`/api/projects/${state.project.id}/images`, {
      method: "POST", body: form, headers: { "X-CSRF-Token": state.csrf || "" }, credentials: "same-origin",
    });
    if (!r.ok) {
      let detail = r.statusText;
      try { detail = (await r.json()).detail; } catch (_) { /* not JSON */ }
      throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    const im = await r.json();
    await refreshImages();
    await openImage(state.images.findIndex((x) => x.id === im.id));
  } catch (e) {
    setStatus(`upload refused: ${e.message}`);
  } finally {
    $("upload").value = "";
  }
});

$("accept").addEventListener("click", accept);
$("cycle").addEventListener("click", cycle);
$("clear").addEventListener("click", clearPrompt);
$("undo").addEventListener("click", undo);
$("redo").addEventListener("click", redo);
$("prefill").addEventListener("click", prefill);
$("prev").addEventListener("click", () => openImage(state.index - 1));
$("fit").addEventListener("click", fitView);
$("done").addEventListener("click", finishImage);

document.addEventListener("keyup", (ev) => {
  if (ev.key === " ") { state.space = false; stage.classList.remove("pan-ready"); }
});
window.addEventListener("blur", () => { state.space = false; stage.classList.remove("pan-ready"); });

document.addEventListener("keydown", (ev) => {
  if ($("tool").hidden || ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
  const key = ev.key.toLowerCase();
  if (key === " ") { ev.preventDefault(); state.space = true; stage.classList.add("pan-ready"); return; }
  if (!ev.ctrlKey && !ev.metaKey && !ev.altKey && state.image) {
    const r = stageRect();
    if (key === "f") { fitView(); return; }
    if (key === "+" || key === "=") { zoomAt(1.25, r.width / 2, r.height / 2); return; }
    if (key === "-") { zoomAt(0.8, r.width / 2, r.height / 2); return; }
  }
  if ((ev.ctrlKey || ev.metaKey) && key === "z") { ev.preventDefault(); (ev.shiftKey ? redo : undo)(); return; }
  if ((ev.ctrlKey || ev.metaKey) && key === "y") { ev.preventDefault(); redo(); return; }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (key === "a" || key === "enter") { ev.preventDefault(); accept(); }
  else if (key === "c" || key === "tab") { ev.preventDefault(); cycle(); }
  else if (key === "escape") clearPrompt();
  else if (key === "n") finishImage();
  else if (key === "p") openImage(state.index - 1);
  else if (/^[0-9]$/.test(key)) $("rating").value = key === "0" ? "10" : key;
  else if ((key === "delete" || key === "backspace") && state.selected !== null) {
    const a = state.annotations.find((x) => x.id === state.selected);
    if (a) remove(a);
  }
});

start();
