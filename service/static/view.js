// What the page shows: the image with its mask on a canvas, the legend, the polygon layer, the model note.
import { $, state } from "./page_state.js";
import { resultImage } from "./api.js";
import { tilesText } from "./detail.js";

// The embedded model was trained on synthetic shapes only: say so before anyone uploads a photo.
export function showModelNote(info) {
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
export function renderClassList() {
  renderLegend({ classes: state.classes.map((c) => ({ class_id: c.id, class_name: c.name })) });
}

export function classColor(id) {
  const entry = state.classes.find((c) => c.id === id);
  return entry ? `rgb(${entry.color.join(",")})` : "#888";
}

// The colour mask of `file`'s result with the background (class 0's colour) made transparent, as the server's
// overlay leaves the background unblended. `detail`: the resolution query the result was segmented with.
export async function loadMask(file, resultId, signal, detail) {
  const blob = await resultImage(file, resultId, "color", null, signal, detail);
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
export function fitToViewer(canvas) {
  const box = document.querySelector(".viewer");
  const style = getComputedStyle(box);
  const room = box.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const scale = Math.min(room / canvas.width, (0.75 * window.innerHeight) / canvas.height);
  canvas.style.width = `${Math.floor(canvas.width * scale)}px`;
  canvas.style.height = `${Math.floor(canvas.height * scale)}px`;
}

export function render() {
  const canvas = $("canvas");
  if (!state.image) {
    // No picture (an upload the browser cannot decode, still on its way or refused): nothing of an older one.
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    return;
  }
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

// A class's share of the picture, to 0.1 %: a class that is there but rounds to 0.0 % reads "<0.1%", not absent.
export function percent(entry) {
  return entry.pixels > 0 && entry.fraction < 0.0005 ? "<0.1%" : `${(entry.fraction * 100).toFixed(1)}%`;
}

// The canvas's text alternative (it is an image to assistive technology): what it shows, and of which file.
export function describeCanvas(text) {
  $("canvas").setAttribute("aria-label", text);
}

// The text alternative of a result: the file and each class found with its share.
export function resultDescription(name, stats) {
  const found = stats.classes.map((entry) => `${entry.class_name} ${percent(entry)}`).join(", ");
  return `${name}, segmented: ${found || "no class found"}`;
}

// `tiles`: the tiles the result ran in (0: whole, at the model's input size), shown on the timing line.
export function renderLegend(stats, tiles = 0) {
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
      pct.textContent = percent(entry);
      pct.title = `${entry.pixels} pixels`;
    }
    li.append(swatch, name, pct);
    legend.append(li);
  }
  legend.dataset.kind = stats.width ? "result" : "classes";
  const t = stats.timing_ms || {};
  $("timing").textContent = stats.width ? `${stats.width}×${stats.height} · ` +
    Object.entries(t).map(([k, v]) => `${k} ${v.toFixed(1)} ms`).join(" · ") + (tiles ? ` · ${tilesText(tiles)}` : "")
    : "";
}

// Nothing of a result that is not the current upload's stays on screen: called when an upload starts and when it
// fails. The legend goes back to the plain class list (no percentages, no timing line), the polygons and the mask
// go, and the picture (if any) is drawn again bare.
export function clearResult() {
  Object.assign(state, { stats: null, mask: null, polygons: null, polygonsRead: null });
  renderClassList();
  renderPolygons();
  const stage = $("stage");
  stage.dataset.polygons = "";
  stage.dataset.resultId = "";
  render();
}

export function renderPolygons() {
  const svg = $("polygon-layer");
  const on = $("polygons").checked && state.polygons;
  svg.hidden = !on;
  svg.replaceChildren();
  if (!on) {
    svg.removeAttribute("viewBox");  // the size of a result that may no longer be shown
    return;
  }
  const { width, height } = state.stats;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const fill = $("fill-polygons").checked;
  for (const feature of state.polygons.features) {
    // Vertices lie on pixel edges (pixel (row r, column c) is the square [c, c+1] x [r, r+1]), which are the
    // viewBox's units: drawn as they are, a ring runs along the edges of its region's canvas pixels.
    const d = feature.geometry.coordinates
      .map((ring) => "M" + ring.map(([x, y]) => `${x},${y}`).join("L") + "Z").join(" ");
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
