// Talking to the service: the API key, the JSON error envelope, the status line, and `POST /segment`.
import { $ } from "./page_state.js";

// Polygons as the page asks for them (1-pixel simplification).
export const POLYGON_QUERY = "&tolerance=1";

// A 503 with Retry-After (queue full, model still warming up, every result render slot busy) is sent again once
// the wait the service asks for is over, as the Python client does: each wait at least MIN_RETRY_WAIT_S (a
// Retry-After of 0 or in the past must not become a busy loop), all of them together at most RETRY_BUDGET_S (a
// model warming up on a GPU can take tens of seconds). A wait longer than MAX_RETRY_WAIT_S is not retried sooner
// than asked: the error is shown, with the wait the service asked for, so the user knows when to try again.
const MIN_RETRY_WAIT_S = 0.5;
const MAX_RETRY_WAIT_S = 5;
const RETRY_BUDGET_S = 30;

export class ApiError extends Error {
  // `retryAfter`: the seconds the service asked to wait before trying again (its Retry-After), or null.
  // `details`: the error object of the answer (`max_resolution` of a too_many_tiles, for one), or {}.
  constructor(status, code, message, retryAfter = null, details = {}) {
    super(`${code}: ${message}`);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.details = details;
  }
}

// No answer came: the connection could not be made or broke before the answer (the service stopped or is
// restarting, the network is down). Not the service's refusal, so trying again later may work.
export class NetworkError extends Error {}

// The messages browsers give a fetch, or the read of its body, that failed on the network (Chromium, Firefox,
// Safari): a body cut off mid-way fails outside `api`.
const NETWORK_FAILURE = /failed to fetch|network ?error|load failed/i;

export function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

// Seconds the service asks to wait from a Retry-After header (delay-seconds or an HTTP date), or null: none.
function retryAfter(response) {
  const value = (response.headers.get("retry-after") || "").trim();
  if (!value) return null;
  const seconds = /^\d+(\.\d+)?$/.test(value) ? Number(value) : (Date.parse(value) - Date.now()) / 1000;
  return Number.isFinite(seconds) ? Math.max(0, seconds) : null;
}

// "30 s", "2 min": a wait as a person reads it, rounded up (sooner than asked would be refused again).
function duration(seconds) {
  return seconds < 90 ? `${Math.max(1, Math.ceil(seconds))} s` : `${Math.ceil(seconds / 60)} min`;
}

function sleep(seconds, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, seconds * 1000);
    signal?.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
  });
}

export async function api(path, options = {}) {
  let waited = 0;
  for (;;) {
    let response;
    try {
      response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
    } catch (err) {
      if (options.signal?.aborted) throw err;  // cancelled by a newer upload: not a failure
      throw new NetworkError(err.message);
    }
    const asked = response.status === 503 ? retryAfter(response) : null;
    const wait = asked !== null && asked <= MAX_RETRY_WAIT_S ? Math.max(MIN_RETRY_WAIT_S, asked) : null;
    if (wait !== null && waited + wait <= RETRY_BUDGET_S) {
      waited += wait;
      response.body?.cancel();  // the error body is not needed: let the connection go back to the pool
      await sleep(wait, options.signal);
      continue;
    }
    if (!response.ok) {
      let code = `http_${response.status}`, message = response.statusText, details = {};
      try {
        const body = await response.json();
        if (body && body.error) ({ code, message } = details = body.error);
      } catch (_) { /* not JSON: keep the status line */ }
      throw new ApiError(response.status, code, message, asked, details);
    }
    return response;
  }
}

export function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function errorText(err) {
  if (err instanceof ApiError && err.retryAfter !== null) {
    return `Error ${err.status} ${err.message}. The service asks to try again in about ${duration(err.retryAfter)}.`;
  }
  if (err instanceof ApiError) return `Error ${err.status} ${err.message}`;
  if (err instanceof NetworkError || (err instanceof TypeError && NETWORK_FAILURE.test(err.message))) {
    return `Error: the service could not be reached (${err.message}). It may be restarting: try again.`;
  }
  return `Error: ${err.message}`;
}

export function showError(err) {
  setStatus(errorText(err), true);
  if (err instanceof ApiError && err.code === "unauthorized") $("api-key").focus();
}

// `POST /segment` of `file` (always passed in, never read from the state later: an older upload's request must
// not send a newer file). `segment` answers JSON kinds; `segmentResponse` any kind, as the raw response.
// `signal` aborts it (a newer upload was chosen: the service stops working on a request whose client left).
export function segmentResponse(file, output, query = "", signal = undefined) {
  return api(`/segment?output=${output}${query}`, {
    method: "POST",
    headers: { "Content-Type": file.type || "application/octet-stream" },
    body: file,
    signal,
  });
}

export async function segment(file, output, query = "", signal = undefined) {
  return (await segmentResponse(file, output, query, signal)).json();
}

// An image kind of a result as PNG: rendered again by `GET /results/{id}/{name}.png` (the overlay at `alpha`),
// or, where the service did not keep that result (a null id: its result cache is off, or the result is larger
// than it) or no longer holds it (expired, evicted by newer ones), by segmenting `file` again, with `detail`, the
// resolution query the result was made with (the stored result needs none: it is re-rendered as it was made).
export async function resultImage(file, resultId, name, alpha = null, signal = undefined, detail = "") {
  const opacity = name === "overlay" && alpha !== null ? `alpha=${alpha}` : "";
  const query = `&format=png${opacity && "&" + opacity}${detail}`;
  const again = async () => (await segmentResponse(file, name, query, signal)).blob();
  if (resultId === null) return again();
  try {
    return await (await api(`/results/${resultId}/${name}.png${opacity && "?" + opacity}`, { signal })).blob();
  } catch (err) {
    if (!(err instanceof ApiError && err.code === "result_not_found")) throw err;
    return again();
  }
}
