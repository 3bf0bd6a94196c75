// The page's only way to the service: the public API, with the token pasted into the page (sessionStorage).
const TOKEN_KEY = "das-ui-token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value.trim());
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, detail, path) {
    super(`${status} from ${path}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

function detailOf(body) {
  if (!body || body.detail === undefined) return "";
  if (typeof body.detail === "string") return body.detail;
  return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
}

export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = null; }
  if (!response.ok) throw new ApiError(response.status, detailOf(parsed) || text || response.statusText, path);
  return { body: parsed, headers: response.headers };
}

export async function get(path) {
  return (await call("GET", path)).body;
}

// A whole listing: every page, following X-Next-Cursor (the cursor is opaque; the same query is sent with it).
export async function listAll(path, query = {}) {
  const items = [];
  let cursor = null;
  for (let pages = 0; pages < 1000; pages++) {
    const params = new URLSearchParams({ ...query, limit: "1000" });
    if (cursor) params.set("cursor", cursor);
    const { body, headers } = await call("GET", `${path}?${params}`);
    items.push(...body);
    cursor = headers.get("X-Next-Cursor");
    if (!cursor) break;
  }
  return items;
}
