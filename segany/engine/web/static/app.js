// segany annotation page: decodes masks in the browser with onnxruntime-web on the exported SAM decoder.
// The server computes each image's embedding once; every click here only runs the light decoder.
// All user-supplied text (labels, file names) is written with textContent, never parsed as HTML.
import * as ort from "./vendor/ort/ort.wasm.min.mjs";

ort.env.wasm.wasmPaths = "/static/vendor/ort/";

const $ = (id) => document.getElementById(id);
const PALETTE = [[230, 25, 75], [60, 180, 75], [255, 225, 25], [245, 130, 48], [145, 30, 180], [70, 240, 240],
  [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128]];

const state = {
  csrf: null, project: null, images: [], index: 0, image: null, model: null, session: null,
  embedding: null, prompts: [], promptRedo: [], box: null, drag: null,
  result: null, order: [], choice: 0, startedAt: null,
  annotations: [], selected: null, undo: [], redo: [], busy: false,
};
// Read by tests and shown in the header: every decode's wall time in ms.
window.seganyStats = { decodeMs: [] };

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
  try {
    const me = await (await api("GET", "/api/me")).json();
    state.csrf = me.csrf_token;
    await openTool();
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

async function openTool() {
  $("login").hidden = true;
  $("tool").hidden = false;
  const projects = await (await api("GET", "/api/projects")).json();
  if (!projects.length) { setStatus("no project"); return; }
  state.project = projects[0];
  $("project-name").textContent = state.project.name;
  $("export-coco").href = `/api/projects/${state.project.id}/export?format=coco`;
  $("export-sa1b").href = `/api/projects/${state.project.id}/export?format=sa1b`;
  setStatus("loading decoder…");
  state.model = await (await api("GET", "/api/model")).json();
  const bytes = await (await api("GET", state.model.decoder_url)).arrayBuffer();
  state.session = await ort.InferenceSession.create(new Uint8Array(bytes), { executionProviders: ["wasm"] });
  await refreshImages();
  const params = new URLSearchParams(location.hash.slice(1));
  const wanted = Number(params.get("image"));
  const i = state.images.findIndex((im) => im.id === wanted);
  await openImage(i >= 0 ? i : Math.max(0, state.images.findIndex((im) => !im.done)));
}

async function refreshImages() {
  state.images = await (await api("GET", `/api/projects/${state.project.id}/images`)).json();
  const done = state.images.filter((im) => im.done).length;
  $("progress").textContent = `image ${state.index + 1} of ${state.images.length} · ${done} done`;
}

// ---- images and embeddings ----------------------------------------------------------------------------------

async function openImage(i) {
  if (!state.images.length) { setStatus("no images"); return; }
  state.index = Math.min(Math.max(i, 0), state.images.length - 1);
  state.image = state.images[state.index];
  history.replaceState(null, "", `#image=${state.image.id}`);
  $("image-name").textContent = state.image.file_name;
  clearPrompt();
  state.undo = []; state.redo = []; state.selected = null;
  state.embedding = null;
  setStatus("loading image…");
  const img = $("image");
  await new Promise((resolve, reject) => {
    img.onload = resolve; img.onerror = () => reject(new Error("image failed to load"));
    img.src = `/api/images/${state.image.id}/file`;
  });
  sizeOverlay();
  await loadAnnotations();
  await refreshImages();
  setStatus("computing embedding…");
  const r = await api("GET", `/api/images/${state.image.id}/embedding`);
  const shape = r.headers.get("X-Embedding-Shape").split(",").map(Number);
  state.embedding = new ort.Tensor("float32", new Float32Array(await r.arrayBuffer()), shape);
  document.body.dataset.ready = String(state.image.id);
  setStatus("ready");
}

function sizeOverlay() {
  const img = $("image"); const cv = $("overlay");
  cv.width = state.image.width; cv.height = state.image.height;
  cv.style.width = `${img.clientWidth}px`; cv.style.height = `${img.clientHeight}px`;
  draw();
}
window.addEventListener("resize", () => { if (state.image) sizeOverlay(); });

async function loadAnnotations() {
  state.annotations = await (await api("GET", `/api/images/${state.image.id}/annotations`)).json();
  for (const a of state.annotations) a.bitmap = decodeRle(a.rle);
  renderList();
  draw();
}

// ---- decoding ---------------------------------------------------------------------------------------------

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
  const n = pts.length;
  const coords = new Float32Array(n * 2); const labels = new Float32Array(n);
  pts.forEach(([x, y, l], k) => { coords[2 * k] = x; coords[2 * k + 1] = y; labels[k] = l; });
  const [, , eh, ew] = state.embedding.dims;
  const feeds = {
    image_embeddings: state.embedding,
    point_coords: new ort.Tensor("float32", coords, [1, n, 2]),
    point_labels: new ort.Tensor("float32", labels, [1, n]),
    mask_input: new ort.Tensor("float32", state.maskInput || new Float32Array(16 * eh * ew), [1, 1, 4 * eh, 4 * ew]),
    has_mask_input: new ort.Tensor("float32", new Float32Array([state.maskInput ? 1 : 0]), [1]),
    orig_im_size: new ort.Tensor("float32", new Float32Array([state.image.height, state.image.width]), [2]),
  };
  const t0 = performance.now();
  const out = await state.session.run(feeds);
  const ms = performance.now() - t0;
  window.seganyStats.decodeMs.push(ms);
  $("decode-ms").textContent = ms.toFixed(0);
  const iou = out.iou_predictions.data;
  const ambiguous = [1, 2, 3].sort((a, b) => iou[b] - iou[a]);
  // One click (or a box alone) is ambiguous: offer the three multimask outputs best first. More prompts pin
  // the object down: the single-mask output comes first, as in the official predictor.
  const single = state.prompts.length + (state.box ? 1 : 0) <= 1;
  state.order = single ? ambiguous : [0, ...ambiguous];
  state.result = { masks: out.masks.data, low: out.low_res_masks.data, iou, h: state.image.height, w: state.image.width };
  state.choice = 0;
  $("mask-index").textContent = `1/${state.order.length}`;
  draw();
}

function chosenLowRes() {
  const { low } = state.result;
  const n = low.length / 4;
  const k = state.order[state.choice];
  return low.slice(k * n, (k + 1) * n);
}

function currentMask() {
  if (!state.result) return null;
  const { masks, h, w } = state.result;
  const k = state.order[state.choice];
  const plane = masks.subarray(k * h * w, (k + 1) * h * w);
  const m = new Uint8Array(h * w);
  for (let i = 0; i < m.length; i++) m[i] = plane[i] > 0 ? 1 : 0;
  return m;
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

function draw() {
  const cv = $("overlay"); const ctx = cv.getContext("2d");
  if (!state.image) return;
  const { width: w, height: h } = state.image;
  ctx.clearRect(0, 0, w, h);
  const img = ctx.createImageData(w, h); const d = img.data;
  state.annotations.forEach((a, n) => {
    const [r, g, b] = PALETTE[n % PALETTE.length]; const alpha = a.id === state.selected ? 170 : 100;
    const m = a.bitmap;
    for (let i = 0; i < m.length; i++) if (m[i]) { d[4 * i] = r; d[4 * i + 1] = g; d[4 * i + 2] = b; d[4 * i + 3] = alpha; }
  });
  const cur = currentMask();
  if (cur) {
    for (let i = 0; i < cur.length; i++) if (cur[i]) { d[4 * i] = 0; d[4 * i + 1] = 114; d[4 * i + 2] = 189; d[4 * i + 3] = 150; }
  }
  ctx.putImageData(img, 0, 0);
  const rad = Math.max(3, Math.round(Math.max(w, h) / 150));
  for (const p of state.prompts) {
    ctx.beginPath(); ctx.arc(p.x, p.y, rad, 0, 2 * Math.PI);
    ctx.fillStyle = p.label === 1 ? "#00c853" : "#d50000"; ctx.fill();
    ctx.lineWidth = 1; ctx.strokeStyle = "#fff"; ctx.stroke();
  }
  const box = state.drag && state.drag.moved ? state.drag : state.box;
  if (box) {
    ctx.lineWidth = Math.max(1, rad / 2); ctx.strokeStyle = "#ffeb3b";
    ctx.strokeRect(Math.min(box.x0, box.x1), Math.min(box.y0, box.y1), Math.abs(box.x1 - box.x0), Math.abs(box.y1 - box.y0));
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

function toImage(ev) {
  const cv = $("overlay"); const r = cv.getBoundingClientRect();
  return {
    x: Math.min(Math.max(((ev.clientX - r.left) / r.width) * state.image.width, 0), state.image.width - 1),
    y: Math.min(Math.max(((ev.clientY - r.top) / r.height) * state.image.height, 0), state.image.height - 1),
  };
}

function clearPrompt() {
  state.prompts = []; state.promptRedo = []; state.box = null; state.result = null; state.order = [];
  state.startedAt = null; $("mask-index").textContent = "–";
  draw();
}

const overlay = $("overlay");
overlay.addEventListener("contextmenu", (ev) => ev.preventDefault());
overlay.addEventListener("mousedown", (ev) => {
  if (!state.embedding) return;
  const p = toImage(ev);
  state.drag = { x0: p.x, y0: p.y, x1: p.x, y1: p.y, moved: false, button: ev.button, shift: ev.shiftKey };
});
overlay.addEventListener("mousemove", (ev) => {
  if (!state.drag) return;
  const p = toImage(ev); const cv = overlay.getBoundingClientRect();
  state.drag.x1 = p.x; state.drag.y1 = p.y;
  const px = (Math.abs(p.x - state.drag.x0) + Math.abs(p.y - state.drag.y0)) * cv.width / state.image.width;
  if (px > 6) state.drag.moved = true;
  if (state.drag.moved) draw();
});
overlay.addEventListener("mouseup", async () => {
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
  draw();
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
    if (!state.prompts.length && !state.box) { state.result = null; draw(); } else { await decode(); }
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
  setStatus("pre-filling (automatic masks)…");
  try {
    const r = await (await api("POST", `/api/images/${state.image.id}/prefill`)).json();
    setStatus(`pre-fill added ${r.created} masks in ${r.seconds.toFixed(1)} s`);
    await loadAnnotations();
  } catch (e) { setStatus(`pre-fill failed: ${e.message}`); }
}

async function finishImage() {
  await api("PUT", `/api/images/${state.image.id}/status`, { done: true });
  await refreshImages();
  await openImage(state.index + 1);
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
$("done").addEventListener("click", finishImage);

document.addEventListener("keydown", (ev) => {
  if ($("tool").hidden || ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
  const key = ev.key.toLowerCase();
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
