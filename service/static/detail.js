// The "Detail" choice: the resolution the image is segmented at. By default the service shrinks it to the model's
// input size (one model run); above that it runs in overlapping tiles of the input size (one run per tile), which
// keeps thin and small things a shrink would lose.
import { ApiError, segmentResponse } from "./api.js";
import { $, state } from "./page_state.js";

// The `resolution` query of the chosen detail ("" at model size: the service's default, no parameter). "2x" needs
// the model's input size (`input_size` of /classes): without it, that choice is greyed out (showDetailChoices).
export function detailQuery() {
  const detail = $("detail").value;
  if (detail === "native") return "&resolution=native";
  if (detail === "2x" && state.inputSize) return `&resolution=${2 * state.inputSize}`;
  return "";
}

// Offer "2x" only where the model's input size is known (a server too old to name it in /classes).
export function showDetailChoices() {
  const twice = $("detail").querySelector("option[value='2x']");
  twice.disabled = !state.inputSize;
  twice.title = state.inputSize ? `long side ${2 * state.inputSize} px` : "the model's input size is not known";
  if (twice.disabled && twice.selected) $("detail").value = "";
}

// The statistics of `file` segmented at `detail` (a resolution query), as the raw answer. Where that needs more
// tiles than the service runs for one image (422 too_many_tiles: full resolution of an ordinary photo), at the
// highest resolution the service names instead: the most detail it gives. Returns the answer, the query used, and
// that resolution when it was lowered (else null).
export async function statsAtDetail(file, detail, signal) {
  try {
    return { answer: await segmentResponse(file, "stats", detail, signal), detail, lowered: null };
  } catch (err) {
    const most = err instanceof ApiError && err.code === "too_many_tiles" ? err.details.max_resolution : null;
    if (!Number.isInteger(most)) throw err;
    const lowered = `&resolution=${most}`;
    return { answer: await segmentResponse(file, "stats", lowered, signal), detail: lowered, lowered: most };
  }
}

// The tiles an answer ran in (its X-Tiles header), or 0 for one that ran whole (at or below the input size).
export function tileCount(response) {
  return Number(response.headers.get("X-Tiles")) || 0;
}

// "6 tiles", "1 tile": for the status and timing lines.
export function tilesText(count) {
  return `${count} tile${count === 1 ? "" : "s"}`;
}
