// The web page of the segmentation service: plain browser JavaScript, no build step.
// One upload asks for `stats` (legend + result id); the colour mask is then fetched by id and blended here on
// a canvas, so the opacity slider is instant. Polygons are asked for only when their toggle is switched on.
// The download list and its file names come from the service's table of output kinds (`GET /outputs`).
"use strict";

const KEY_STORAGE = "segment.apiKey";
const POLYGON_QUERY = "&tolerance=1";
// Short notes beside a download link; kinds without one get none (the table's description is the tooltip).
const DOWNLOAD_NOTES = { labels: "class ids" };
const $ = (id) => document.getElementById(id);
const state = {
  classes: [],        // [{id, name, color}] from /classes
  outputs: null,      // [{name, description, json, encodings: [{format, media_type, suffix}]}] from /outputs
  outputsRead: null,  // the pending or finished read of /outputs
  file: null,         // the File being shown
  image: null,        // ImageBitmap of the upload (EXIF orientation applied by the browser)
  mask: null,         // canvas: class colours, background transparent
  stats: null,        // the stats answer (has `id`, `classes`, `width`, `height`)
  polygons: null,     // the polygons answer, once asked for
  run: 0,             // increments per upload, so a slow older answer never overwrites a newer one
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) {
    let code = `http_${response.status}`, message = response.statusText;
    try {
      const body = await response.json();
      if (body && body.error) ({ code, message } = body.error);
    } catch (_) { /* not JSON: keep the status line */ }
    throw new ApiError(response.status, code, message);
  }
  return response;
}

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function showError(err) {
  setStatus(err instanceof ApiError ? `Error ${err.status} ${err.message}` : `Error: ${err.message}`, true);
  if (err instanceof ApiError && err.code === "unauthorized") $("api-key").focus();
}

async function loadClasses() {
  try {
    const info = await (await api("/classes")).json();
    state.classes = info.classes;
    $("model").textContent = `model ${info.model} · ${info.arch} · ${info.precision} · ${info.classes.length} classes`;
    showModelNote(info);
    if (!state.stats) renderClassList();
  } catch (err) {
    $("model").textContent = "model info unavailable";
    showError(err);
  }
}

// The output kinds, read once (one read shared by every caller); read again only if it failed, e.g. before the
// API key was entered.
async function loadOutputs() {
  state.outputsRead ||= api("/outputs").then((r) => r.json()).then(
    (body) => { state.outputs = body.outputs; },
    (err) => {
      state.outputsRead = null;
      if (err.status !== 401) showError(err);  // a missing key is already reported by loadClasses
    });
  await state.outputsRead;
  renderDownloads();
}

// What a download of `kind` is written as: JSON kinds as answered (their default encoding), image kinds as the
// PNG that `GET /results/{id}/{name}.png` renders again. An image kind without a PNG encoding is not offered.
function downloadEncoding(kind) {
  return kind.json ? kind.encodings[0] : kind.encodings.find((e) => e.media_type === "image/png");
}

function renderDownloads() {
  const list = $("downloads");
  list.dataset.state = state.outputs ? "ready" : "unavailable";
  if (!state.outputs) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = "download list unavailable";
    list.replaceChildren(li);
    return;
  }
  list.replaceChildren(...state.outputs.filter(downloadEncoding).map((kind) => {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = "#";
    a.dataset.output = kind.name;
    a.textContent = `${kind.name}${downloadEncoding(kind).suffix}`;
    a.title = kind.description;
    a.classList.toggle("disabled", !state.stats);
    li.append(a);
    if (DOWNLOAD_NOTES[kind.name]) {
      const note = document.createElement("span");
      note.className = "muted";
      note.textContent = DOWNLOAD_NOTES[kind.name];
      li.append(" ", note);
    }
    return li;
  }));
}

function enableDownloads(on) {
  document.querySelectorAll("#downloads a").forEach((a) => a.classList.toggle("disabled", !on));
}

// The embedded model was trained on synthetic shapes only: say so before anyone uploads a photo.
function showModelNote(info) {
  const note = $("model-note");
  const synthetic = /^synthetic/i.test(info.source || "");
  note.hidden = !synthetic;
  if (synthetic) {
    const names = info.classes.filter((c) => c.id !== 0).map((c) => c.name).join(", ");
    note.textContent = `Demo model: trained on synthetic shapes (${names}), not on photographs. ` +
      "Serve a VOC model to segment real photos.";
  }
}

// Before an upload the legend lists every class the model knows, without percentages.
function renderClassList() {
  renderLegend({ classes: state.classes.map((c) => ({ class_id: c.id, class_name: c.name })) });
}

function classColor(id) {
  const entry = state.classes.find((c) => c.id === id);
  return entry ? `rgb(${entry.color.join(",")})` : "#888";
}

async function segment(output, query = "") {
  const file = state.file;
  const response = await api(`/segment?output=${output}${query}`, {
    method: "POST",
    headers: { "Content-Type": file.type || "application/octet-stream" },
    body: file,
  });
  return response.json();
}

// The colour mask with the background (class 0's colour) made transparent, as the server's overlay leaves the
// background unblended.
async function loadMask(resultId) {
  const blob = await (await api(`/results/${resultId}/color.png`)).blob();
  const bitmap = await createImageBitmap(blob);
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const bg = (state.classes.find((c) => c.id === 0) || { color: [0, 0, 0] }).color;
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] === bg[0] && d[i + 1] === bg[1] && d[i + 2] === bg[2]) d[i + 3] = 0;
  }
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

// Display size: as large as the viewer allows (small images are scaled up too), aspect ratio kept. The SVG
// polygon layer covers the canvas box, so it follows.
function fitToViewer(canvas) {
  const box = document.querySelector(".viewer");
  const style = getComputedStyle(box);
  const room = box.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const scale = Math.min(room / canvas.width, (0.75 * window.innerHeight) / canvas.height);
  canvas.style.width = `${Math.floor(canvas.width * scale)}px`;
  canvas.style.height = `${Math.floor(canvas.height * scale)}px`;
}

function render() {
  const canvas = $("canvas");
  if (!state.image) return;
  canvas.width = state.image.width;
  canvas.height = state.image.height;
  fitToViewer(canvas);
  const ctx = canvas.getContext("2d");
  const view = $("view").value;
  const alpha = Number($("alpha").value) / 100;
  ctx.globalAlpha = 1;
  if (view === "color" && state.mask) {
    ctx.fillStyle = classColor(0);
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(state.mask, 0, 0, canvas.width, canvas.height);
    return;
  }
  ctx.drawImage(state.image, 0, 0);
  if (view === "overlay" && state.mask) {
    ctx.globalAlpha = alpha;
    ctx.drawImage(state.mask, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
  }
}

function renderLegend(stats) {
  const legend = $("legend");
  legend.replaceChildren();
  for (const entry of stats.classes) {
    const li = document.createElement("li");
    li.dataset.classId = entry.class_id;
    li.dataset.className = entry.class_name;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = classColor(entry.class_id);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = entry.class_name;
    const pct = document.createElement("span");
    pct.className = "pct";
    if (entry.fraction !== undefined) {
      pct.textContent = `${(entry.fraction * 100).toFixed(1)}%`;
      pct.title = `${entry.pixels} pixels`;
    }
    li.append(swatch, name, pct);
    legend.append(li);
  }
  legend.dataset.kind = stats.width ? "result" : "classes";
  const t = stats.timing_ms || {};
  $("timing").textContent = stats.width ? `${stats.width}×${stats.height} · ` +
    Object.entries(t).map(([k, v]) => `${k} ${v.toFixed(1)} ms`).join(" · ") : "";
}

function renderPolygons() {
  const svg = $("polygon-layer");
  const on = $("polygons").checked && state.polygons;
  svg.hidden = !on;
  svg.replaceChildren();
  if (!on) return;
  const { width, height } = state.stats;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const fill = $("fill-polygons").checked;
  for (const feature of state.polygons.features) {
    // Vertices are pixel centres; +0.5 puts them on the centres of the canvas pixels.
    const d = feature.geometry.coordinates
      .map((ring) => "M" + ring.map(([x, y]) => `${x + 0.5},${y + 0.5}`).join("L") + "Z").join(" ");
    const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("d", d);
    const color = classColor(feature.properties.class_id);
    path.setAttribute("stroke", color);
    path.setAttribute("fill", fill ? color : "none");
    path.setAttribute("fill-opacity", fill ? "0.35" : "0");
    path.dataset.classId = feature.properties.class_id;
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `${feature.properties.class_name}: ${feature.properties.area} px`;
    path.append(title);
    svg.append(path);
  }
}

async function togglePolygons() {
  // "fill polygons" only means something while polygons are shown: off and greyed out otherwise.
  const fill = $("fill-polygons");
  if (fill.disabled === $("polygons").checked) fill.checked = $("polygons").checked;
  fill.disabled = !$("polygons").checked;
  if ($("polygons").checked && state.stats && !state.polygons) {
    const run = state.run;
    setStatus("Tracing polygons…");
    try {
      const polygons = await segment("polygons", POLYGON_QUERY);
      if (run !== state.run) return;
      state.polygons = polygons;
      setStatus(`${polygons.features.length} polygons.`);
    } catch (err) {
      showError(err);
      return;
    }
  }
  renderPolygons();
  $("stage").dataset.polygons = $("polygons").checked && state.polygons ? state.polygons.features.length : "";
}

async function handleFile(file) {
  if (!file) return;
  const run = ++state.run;
  Object.assign(state, { file, stats: null, mask: null, polygons: null });
  enableDownloads(false);
  $("stage").dataset.state = "busy";
  setStatus(`Segmenting ${file.name}…`);
  try {
    if (!state.classes.length) await loadClasses();
    await loadOutputs();
    state.image = await createImageBitmap(file, { imageOrientation: "from-image" });
    render();
    const stats = await segment("stats");
    const mask = await loadMask(stats.id);
    if (run !== state.run) return;
    Object.assign(state, { stats, mask });
    render();
    renderLegend(stats);
    enableDownloads(true);
    $("stage").dataset.state = "ready";
    $("stage").dataset.resultId = stats.id;
    setStatus(`${file.name}: ${stats.classes_present.join(", ") || "nothing"} found.`);
    await togglePolygons();
  } catch (err) {
    if (run !== state.run) return;
    $("stage").dataset.state = state.image ? "error" : "empty";
    showError(err);
  }
}

// The JSON answer of an output kind for the current upload: stats and polygons as the page already holds them,
// any other JSON kind asked for now.
async function jsonAnswer(name) {
  if (name === "stats") return state.stats;
  if (name === "polygons") return state.polygons || (state.polygons = await segment("polygons", POLYGON_QUERY));
  return segment(name);
}

async function download(event) {
  const a = event.target.closest("a[data-output]");
  if (!a) return;
  event.preventDefault();
  const kind = (state.outputs || []).find((k) => k.name === a.dataset.output);
  if (!state.stats || !kind) return;
  const encoding = downloadEncoding(kind);
  const base = (state.file.name || "image").replace(/\.[^.]+$/, "");
  try {
    const blob = kind.json
      ? new Blob([JSON.stringify(await jsonAnswer(kind.name), null, 1)], { type: encoding.media_type })
      : await (await api(`/results/${state.stats.id}/${kind.name}.png`)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${base}-${kind.name}${encoding.suffix}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (err) {
    showError(err);
  }
}

function setUp() {
  const key = $("api-key");
  key.value = localStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("change", () => {
    localStorage.setItem(KEY_STORAGE, key.value.trim());
    loadOutputs();
    loadClasses().then(() => { if (state.file && !state.stats) handleFile(state.file); });
  });
  $("file").addEventListener("change", (e) => handleFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => handleFile(e.dataTransfer.files[0]));
  $("alpha").addEventListener("input", () => {
    $("alpha-value").textContent = `${$("alpha").value}%`;
    render();
  });
  $("view").addEventListener("change", render);
  window.addEventListener("resize", () => { if (state.image) fitToViewer($("canvas")); });
  $("polygons").addEventListener("change", togglePolygons);
  $("fill-polygons").addEventListener("change", renderPolygons);
  $("downloads").addEventListener("click", download);
  loadClasses();
  loadOutputs();
}

document.addEventListener("DOMContentLoaded", setUp);
