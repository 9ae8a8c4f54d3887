// Calls to the router's own API. The session cookie authenticates them (same origin); every
// request carries the dashboard's CSRF header, which a page on another origin cannot send.

export const CSRF_HEADER = "X-Requested-With";
export const CSRF_VALUE = "event-router-dashboard";

/** A refused or failed request, with the API's `{error, code, field, errors}` body. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `Request failed (${status})`);
    this.status = status;
    this.code = body && body.code;
    this.field = body && body.field;
    // A validation error's every problem, `[{field, error}]` (`error` without the field).
    this.errors = (body && Array.isArray(body.errors)) ? body.errors : [];
  }
}

let onSignedOut = () => {};

/** What to do when a request finds the session gone (401). */
export function whenSignedOut(handler) {
  onSignedOut = handler;
}

export async function request(method, path, body) {
  const headers = { [CSRF_HEADER]: CSRF_VALUE, Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { error: "The router cannot be reached. Is it running?" });
  }
  const text = response.status === 204 ? "" : await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: text };
    }
  }
  if (!response.ok) {
    if (response.status === 401 && !path.startsWith("/dashboard/session")) {
      onSignedOut("Your session has ended. Sign in again.");
    }
    throw new ApiError(response.status, data);
  }
  return data;
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);
export const put = (path, body) => request("PUT", path, body);
export const del = (path) => request("DELETE", path);

/**
 * Whether the session is still live. When it is not, the sign-out handler runs (the page shows
 * the sign-in form). A server that cannot be reached counts as signed in: the caller retries.
 */
export async function checkSession() {
  try {
    const s = await get("/dashboard/session");
    if (!s.signedIn) onSignedOut("Your session has ended. Sign in again.");
    return Boolean(s.signedIn);
  } catch {
    return true;
  }
}

/** `path?k=v&…` with the empty values left out. */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}
