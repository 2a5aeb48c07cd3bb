// The current upload's polygons, asked for at most once at a time: the polygons toggle and the polygons download
// share one request (switching the toggle on, off and on while they load, or downloading them then, sends no
// second `POST /segment?output=polygons`).
import { state } from "./page_state.js";
import { POLYGON_QUERY, segment } from "./api.js";

// The polygons answer for the upload shown now. It is kept only while that upload is still the one shown: a late
// answer must not land on a newer upload. A failed request is forgotten, so that asking again sends it again.
// A newer upload cancels the request (the service stops tracing polygons nobody will see) unless a download
// (`forDownload`) waits for it: that download still saves the polygons of the upload it was clicked for.
export function readPolygons(forDownload = false) {
  if (state.polygons) return Promise.resolve(state.polygons);
  if (!state.polygonsRead) {
    const run = state.run;
    const own = new AbortController();
    state.controller?.signal.addEventListener("abort", () => { if (!read.downloaded) own.abort(); }, { once: true });
    // At the detail the shown result was segmented with: its outlines then match the mask.
    const read = segment(state.file, "polygons", POLYGON_QUERY + state.detail, own.signal).then(
      (answer) => {
        if (run === state.run) state.polygons = answer;
        return answer;
      },
      (err) => {
        if (state.polygonsRead === read) state.polygonsRead = null;
        throw err;
      });
    state.polygonsRead = read;
  }
  if (forDownload) state.polygonsRead.downloaded = true;
  return state.polygonsRead;
}
