// The download list, built from the service's table of output kinds (`GET /outputs`), and the downloads.
import { $, state } from "./page_state.js";
import { api, resultImage, segment, showError } from "./api.js";
import { readPolygons } from "./polygons.js";

// Short notes beside a download link; kinds without one get none (the table's description is the tooltip).
const DOWNLOAD_NOTES = { labels: "class ids" };

// The output kinds, read once (one read shared by every caller); read again only if it failed, e.g. before the
// API key was entered.
export async function loadOutputs() {
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
export function downloadEncoding(kind) {
  return kind.json ? kind.encodings[0] : kind.encodings.find((e) => e.media_type === "image/png");
}

export function renderDownloads() {
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
    setEnabled(a, Boolean(state.stats));
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

// A link that cannot download yet is greyed out, and out of the Tab order and announced as disabled, so that a
// keyboard or screen-reader user does not land on links that do nothing.
function setEnabled(a, on) {
  a.classList.toggle("disabled", !on);
  a.tabIndex = on ? 0 : -1;
  a.setAttribute("aria-disabled", String(!on));
}

export function enableDownloads(on) {
  document.querySelectorAll("#downloads a").forEach((a) => setEnabled(a, on));
}

// The JSON answer of an output kind for the current upload: stats as the page holds it, polygons as the page holds
// them or is reading them (one request, shared with the polygons toggle), any other JSON kind asked for now (at
// the detail the result was made with).
async function jsonAnswer(name) {
  if (name === "stats") return state.stats;
  if (name === "polygons") return readPolygons(true);
  return segment(state.file, name, state.detail);
}

// The download links whose download is under way: a second click (a double click) on one is ignored, instead of
// asking the service and saving the file twice.
const downloading = new Set();

export async function download(event) {
  const a = event.target.closest("a[data-output]");
  if (!a) return;
  event.preventDefault();
  const kind = (state.outputs || []).find((k) => k.name === a.dataset.output);
  if (!state.stats || !kind) return;
  const encoding = downloadEncoding(kind);
  const { file, stats, detail } = state;
  const base = (file.name || "image").replace(/\.[^.]+$/, "");
  // The overlay is drawn at the opacity the slider shows now (0..100 % -> alpha 0..1), as on the canvas.
  const alpha = Number($("alpha").value) / 100;
  if (downloading.has(a)) return;
  downloading.add(a);
  try {
    const blob = kind.json
      ? new Blob([JSON.stringify(await jsonAnswer(kind.name), null, 1)], { type: encoding.media_type })
      : await resultImage(file, stats.id, kind.name, alpha, undefined, detail);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${base}-${kind.name}${encoding.suffix}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (err) {
    showError(err);
  } finally {
    downloading.delete(a);
  }
}
