// Calls to the v1 API from the page: the API key, request bodies, and errors turned into words.
//
// The key lives in sessionStorage only (gone when the tab closes) and travels as
// `Authorization: Bearer KEY`. Every URL is relative to the page (/ui), so the page works under any
// root path. A failed call throws an ApiError whose `fields` name the inputs a 422 points at.

const KEY_ITEM = "lensing-serve-api-key";

export const apiKey = {
  get: () => sessionStorage.getItem(KEY_ITEM) || "",
  set: (key) => (key ? sessionStorage.setItem(KEY_ITEM, key) : sessionStorage.removeItem(KEY_ITEM)),
};

/** An API refusal: HTTP status, a sentence for people, and [{loc, msg}] for a 422. */
export class ApiError extends Error {
  constructor(status, message, fields = []) {
    super(message);
    this.status = status;
    this.fields = fields;
  }
}

/** pydantic's "Value error, z_source must be ..." reads better without its prefix. */
const plain = (msg) => String(msg).replace(/^(Value error|Assertion failed), /, "");
const sentence = (text) => `${text[0].toUpperCase()}${text.slice(1)}${/[.!?]$/.test(text) ? "" : "."}`;

async function errorOf(response) {
  let detail = null;
  try {
    detail = (await response.json()).detail;
  } catch {
    // not JSON (a proxy's page, say): the status line is all we show
  }
  const status = response.status;
  if (status === 422 && Array.isArray(detail)) {
    const fields = detail.map((e) => ({ loc: e.loc || [], msg: plain(e.msg) }));
    return new ApiError(status, "The API refused some inputs; see the messages beside them.", fields);
  }
  const text = typeof detail === "string" ? detail : "";
  if (status === 401) {
    window.dispatchEvent(new CustomEvent("api-key-needed", { detail: text }));
    return new ApiError(status, "The API needs a valid API key: enter one at the top of the page.");
  }
  if (status === 429) {
    const wait = response.headers.get("Retry-After");
    return new ApiError(status, `Too many requests; try again${wait ? ` in ${wait} s` : " shortly"}.`);
  }
  if (status >= 500) {  // never a traceback: the API sends none, and the page shows only the request id
    if (status === 503 && text) return new ApiError(status, `The service is not ready: ${sentence(text)}`);
    const id = response.headers.get("X-Request-Id");
    return new ApiError(status, `The service failed on this request${id ? ` (request id ${id})` : ""}; please try again.`);
  }
  return new ApiError(status, text ? sentence(text) : `The API answered ${status} ${response.statusText}.`);
}

/**
 * Call the API. `json` sends a JSON body; `body` + `contentType` send bytes (npy, FITS); `query` adds
 * parameters (null and "" are left out); `accept` picks the response format (a Blob unless JSON).
 */
export async function api(path, { method = "GET", json, body, contentType, query, accept = "application/json" } = {}) {
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: accept };
  const key = apiKey.get();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (contentType) {
    headers["Content-Type"] = contentType;
  }
  let response;
  try {
    response = await fetch(url, { method, headers, body });
  } catch {
    throw new ApiError(0, "The service did not answer; is it still running?");
  }
  if (!response.ok) throw await errorOf(response);
  return accept === "application/json" ? response.json() : response.blob();
}
