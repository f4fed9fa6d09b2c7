// Talking to the API: the caller's key (sessionStorage), JSON/problem+json answers, job and result fetches.
const KEY_STORE = "diffbir.apiKey";

export class ApiError extends Error {
  /** A non-2xx answer; `problem` is the RFC 9457 document when the server sent one. */
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || { status, title: `HTTP ${status}`, detail: "" };
  }
}

export const apiKey = {
  get: () => sessionStorage.getItem(KEY_STORE) || "",
  set: (value) => (value ? sessionStorage.setItem(KEY_STORE, value) : sessionStorage.removeItem(KEY_STORE)),
};

export function authHeaders(extra = {}) {
  const key = apiKey.get();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

async function problemOf(response) {
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) {
    try {
      return await response.json();
    } catch {
      /* fall through: a body that is not JSON */
    }
  }
  return { status: response.status, title: response.statusText || `HTTP ${response.status}`, detail: "" };
}

/** fetch() with the key; resolves to the Response when 2xx, throws ApiError otherwise. */
export async function call(path, init = {}) {
  const response = await fetch(path, { ...init, headers: authHeaders(init.headers) });
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  return response;
}

export const getJSON = async (path, init) => (await call(path, init)).json();

/** GET that tells "this endpoint does not exist here" (null) from real errors (thrown). */
export async function getOptional(path) {
  const response = await fetch(path, { headers: authHeaders({ Accept: "application/json" }) });
  if (response.status === 404 || response.status === 405) return null;
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  return response.json();
}

export async function submitRestore(file, fields) {
  const body = new FormData();
  body.append("image", file, file.name || "image");
  for (const [name, value] of Object.entries(fields)) body.append(name, String(value));
  return (await call("/v1/restore", { method: "POST", body })).json();
}

export const getJob = (id) => getJSON(`/v1/jobs/${encodeURIComponent(id)}`);

/** The result as a Blob (a 307 to object storage is followed by fetch itself). */
export async function getResult(id) {
  return (await call(`/v1/jobs/${encodeURIComponent(id)}/result`)).blob();
}
