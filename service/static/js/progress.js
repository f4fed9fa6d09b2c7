// Following a job until it ends: the event stream (GET /v1/jobs/{id}/events) when the server has one,
// polling GET /v1/jobs/{id} otherwise or when the stream breaks off.
//
// The stream is read with fetch() and parsed here rather than with EventSource, because EventSource cannot
// send the Authorization header an API key needs; the parsing is the few lines of the SSE wire format below.
import { authHeaders, getJob } from "./api.js";

export const TERMINAL = ["succeeded", "failed", "canceled"];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Split an SSE byte stream into {event, data, id} messages (https://html.spec.whatwg.org/#event-stream). */
export async function* sseMessages(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let message = { event: "message", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (message.data.length) yield { ...message, data: message.data.join("\n") };
        message = { event: "message", data: [], id: null };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") message.data.push(val);
        else if (field === "event") message.event = val;
        else if (field === "id") message.id = val;
      }
    }
  }
}

/** An event's JSON as {status?, progress?}: a whole job document, or a progress record on its own. */
export function update(data) {
  let doc;
  try {
    doc = JSON.parse(data);
  } catch {
    return null;
  }
  if (!doc || typeof doc !== "object") return null;
  const progress = doc.progress ?? (doc.stage !== undefined || doc.step !== undefined ? doc : null);
  return { status: doc.status, progress };
}

async function followStream(id, onUpdate, signal) {
  let response;
  try {
    response = await fetch(`/v1/jobs/${encodeURIComponent(id)}/events`, {
      headers: authHeaders({ Accept: "text/event-stream" }),
      signal,
    });
  } catch {
    return false;
  }
  const type = response.headers.get("content-type") || "";
  if (!response.ok || !type.startsWith("text/event-stream")) return false;
  onUpdate({ via: "events" });
  try {
    for await (const message of sseMessages(response.body)) {
      const u = update(message.data);
      if (!u) continue;
      onUpdate(u);
      if (TERMINAL.includes(u.status)) return true;
    }
  } catch {
    /* the stream broke off: polling takes over */
  }
  return false;
}

/** Resolve with the final job document; `onUpdate` sees {status, progress} as they change. */
export async function follow(id, onUpdate, { signal } = {}) {
  const streamed = await followStream(id, onUpdate, signal);
  if (!streamed) onUpdate({ via: "polling" }); // after a complete stream, one GET fetches the final document
  let delay = 250;
  for (;;) {
    if (signal?.aborted) throw new DOMException("stopped", "AbortError");
    const doc = await getJob(id);
    onUpdate({ status: doc.status, progress: doc.progress });
    if (TERMINAL.includes(doc.status)) return doc;
    await sleep(delay);
    delay = Math.min(delay * 1.25, 1500);
  }
}
