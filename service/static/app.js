// The web page of the segmentation service: plain browser JavaScript, no build step.
// One upload asks for `stats` (legend + result id); the colour mask is then fetched by id and blended here on
// a canvas, so the opacity slider is instant. An upload the browser cannot decode (TIFF) is shown as the service
// decodes it (one more request). Polygons are asked for only when their toggle is switched on.
// The download list and its file names come from the service's table of output kinds (`GET /outputs`).
// The "Detail" choice (`resolution`) is sent with every request that segments the upload; changing it segments
// the upload again.
import { $, state } from "./page_state.js";
import { api, authHeaders, segmentResponse, setStatus, showError } from "./api.js";
import { detailQuery, showDetailChoices, statsAtDetail, tileCount, tilesText } from "./detail.js";
import { download, enableDownloads, loadOutputs } from "./downloads.js";
import { acceptDroppedFiles } from "./drop.js";
import { readPolygons } from "./polygons.js";
import {
  clearResult, describeCanvas, fitToViewer, loadMask, render, renderClassList, renderLegend, renderPolygons,
  resultDescription, showModelNote,
} from "./view.js";

const KEY_STORAGE = "segment.apiKey";

// The model's classes and colours, its header line and demo note, from `GET /classes`; throws where it fails.
async function readClasses() {
  const info = await (await api("/classes")).json();
  // `sha256`: the model file's, which tells a file swapped in under the same name apart (null from older servers).
  Object.assign(state, { classes: info.classes, model: info.model, modelSha256: info.sha256 ?? null,
    inputSize: info.input_size ?? null });
  showDetailChoices();
  $("model").textContent = `model ${info.model} · ${info.arch} · ${info.precision} · ${info.classes.length} classes`;
  showModelNote(info);
  if (!state.stats) renderClassList();
}

async function loadClasses() {
  const keyless = !Object.keys(authHeaders()).length;
  try {
    await readClasses();
    showClassesLink(keyless);
  } catch (err) {
    if (err.status === 401) showClassesLink(false);
    $("model").textContent = "model info unavailable";
    showError(err);
  }
}

// The footer's link to `/classes` is a plain link, which cannot send the API key: it is shown only while the
// page reads /classes without a key, and hidden once the service asked for one (it would show a raw 401).
function showClassesLink(on) {
  $("classes-link").hidden = !on;
}

// Whether a JSON answer of `/segment` came from another model than the one /classes described (the server was
// restarted with another model, or another replica answered): by its model name, its model file's sha256 (a file
// swapped in place under the same name, with the same class names, may colour them otherwise), or a class the
// page names otherwise. An answer without the sha256 (an older server) is judged by the rest.
function fromAnotherModel(answer) {
  const named = (entry) => state.classes.find((c) => c.id === entry.class_id)?.name === entry.class_name;
  const otherFile = Boolean(answer.model_sha256) && answer.model_sha256 !== state.modelSha256;
  return answer.model !== state.model || otherFile || !answer.classes.every(named);
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
      const polygons = await readPolygons();
      if (run !== state.run) return;
      state.polygons = polygons;
      setStatus(`${polygons.features.length} polygons.`);
    } catch (err) {
      if (run !== state.run) return;
      // Nothing is drawn: the box unticked says so, and ticking it again asks again (a failed read is forgotten).
      $("polygons").checked = false;
      fill.checked = false;
      fill.disabled = true;
      showError(err);
    }
  }
  renderPolygons();
  $("stage").dataset.polygons = $("polygons").checked && state.polygons ? state.polygons.features.length : "";
}

// The upload decoded by the browser (EXIF orientation applied), or null where the browser cannot decode it
// (TIFF, which the service accepts).
async function decodeHere(file) {
  try {
    return await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (_) {
    return null;
  }
}

// The upload as the service decodes it: its overlay at opacity 0, as PNG, is the image itself, losslessly. Asked
// at model size whatever the detail: the picture is the same, and tiles would only cost model runs.
async function decodeOnServer(file, signal) {
  const blob = await (await segmentResponse(file, "overlay", "&alpha=0&format=png", signal)).blob();
  return createImageBitmap(blob);
}

// Every await is followed by a check that this upload is still the newest (`run`) before the state is touched,
// and each request sends `file` itself: a slow older upload never shows over, or asks about, a newer one. A newer
// upload aborts the older one's requests, so the service stops working on an answer nobody will see.
async function handleFile(file) {
  if (!file) return;
  const run = ++state.run;
  state.controller?.abort();
  const controller = new AbortController();
  const { signal } = controller;
  // The detail chosen now is this result's: its polygons and downloads are asked for with it too (lowered to the
  // most the service gives, where it gives less).
  let detail = detailQuery();
  // The previous upload's picture and result go at once: neither is this file's, whatever the service answers.
  // The same file segmented again (another detail) keeps its picture.
  Object.assign(state, { file, detail, image: file === state.file ? state.image : null, controller });
  clearResult();
  enableDownloads(false);
  $("stage").dataset.state = "busy";
  setStatus(`Segmenting ${file.name}…`);
  describeCanvas(`${file.name}, being segmented`);
  try {
    if (!state.classes.length) await loadClasses();
    await loadOutputs();
    let image = await decodeHere(file);
    if (run !== state.run) return;
    const decodedHere = Boolean(image);
    if (decodedHere) {
      state.image = image;
      render();
    }
    const { answer, detail: used, lowered } = await statsAtDetail(file, detail, signal);
    if (run !== state.run) return;
    state.detail = detail = used;
    const [stats, tiles] = [await answer.json(), tileCount(answer)];
    // The legend's colours, the mask's transparent background and the header must be this answer's model's.
    if (fromAnotherModel(stats)) await readClasses();
    const mask = await loadMask(file, stats.id, signal, detail);
    if (!decodedHere) image = await decodeOnServer(file, signal);
    if (run !== state.run) return;
    Object.assign(state, { image, stats, mask });
    render();
    renderLegend(stats, tiles);
    describeCanvas(resultDescription(file.name, stats));
    enableDownloads(true);
    $("stage").dataset.state = "ready";
    $("stage").dataset.resultId = stats.id ?? "";  // null: not kept (see resultImage)
    setStatus(`${file.name}: ${stats.classes_present.join(", ") || "nothing"} found` +
      (tiles ? ` in ${tilesText(tiles)}.` : ".") +
      (lowered ? ` (At ${lowered} px: the most detail this service gives for this image.)` : "") +
      (decodedHere ? "" : " (This browser cannot show the file: the picture is the service's decode of it.)"));
    await togglePolygons();
  } catch (err) {
    if (run !== state.run) return;
    clearResult();
    enableDownloads(false);
    $("stage").dataset.state = state.image ? "error" : "empty";
    describeCanvas(`${file.name}, not segmented`);
    showError(err);
  }
}

function setUp() {
  const key = $("api-key");
  key.value = localStorage.getItem(KEY_STORAGE) || "";
  // A key kept from an earlier visit: the service asked for one.
  if (key.value.trim()) showClassesLink(false);
  key.addEventListener("change", () => {
    localStorage.setItem(KEY_STORAGE, key.value.trim());
    loadOutputs();
    loadClasses().then(() => { if (state.file && !state.stats) handleFile(state.file); });
  });
  $("file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    // Emptied, so that choosing the same file again (after an error, or to run it again) is a change too.
    e.target.value = "";
    handleFile(file);
  });
  const drop = $("drop");
  drop.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" && e.key !== " ") return;
    e.preventDefault();  // Space would also scroll the page
    $("file").click();
  });
  acceptDroppedFiles(drop, handleFile);
  $("alpha").addEventListener("input", () => {
    $("alpha-value").textContent = `${$("alpha").value}%`;
    render();
  });
  $("view").addEventListener("change", render);
  $("detail").addEventListener("change", () => { if (state.file) handleFile(state.file); });
  window.addEventListener("resize", () => { if (state.image) fitToViewer($("canvas")); });
  $("polygons").addEventListener("change", togglePolygons);
  $("fill-polygons").addEventListener("change", renderPolygons);
  $("downloads").addEventListener("click", download);
  loadClasses();
  loadOutputs();
}

document.addEventListener("DOMContentLoaded", setUp);
