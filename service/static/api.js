// Talking to the service: the API key, the JSON error envelope, the status line, and `POST /segment`.
import { $ } from "./page_state.js";

// Polygons as the page asks for them (1-pixel simplification).
export const POLYGON_QUERY = "&tolerance=1";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(`${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

export function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

export async function api(path, options = {}) {
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

export function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

export function showError(err) {
  setStatus(err instanceof ApiError ? `Error ${err.status} ${err.message}` : `Error: ${err.message}`, true);
  if (err instanceof ApiError && err.code === "unauthorized") $("api-key").focus();
}

// `POST /segment` of `file` (always passed in, never read from the state later: an older upload's request must
// not send a newer file). `segment` answers JSON kinds; `segmentResponse` any kind, as the raw response.
export function segmentResponse(file, output, query = "") {
  return api(`/segment?output=${output}${query}`, {
    method: "POST",
    headers: { "Content-Type": file.type || "application/octet-stream" },
    body: file,
  });
}

export async function segment(file, output, query = "") {
  return (await segmentResponse(file, output, query)).json();
}
