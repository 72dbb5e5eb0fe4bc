// The playground's HTTP client. The API key stays in this browser's localStorage and travels only
// as a bearer header: never in a URL (URLs end up in logs, history and Referer headers).

const KEY_STORAGE = "latentq.apiKey";
const TERMINAL_EVENTS = new Set(["succeeded", "failed", "canceled"]);
// An event stream that ends before its terminal event (a proxy's timeout, a restart) is resumed
// from the last event seen, this many times at most.
const MAX_RESUMES = 5;
const RESUME_PAUSE_MS = 1000;

export function savedKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function saveKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

/** An error answer of the API: its envelope's name, message, field and per-field errors. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.name || "error";
    this.field = error.field || null;
    this.errors = Array.isArray(error.errors) ? error.errors : [];
  }
}

function authHeaders(extra = {}) {
  const headers = { ...extra };
  const key = savedKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

async function errorOf(response) {
  let data = null;
  try {
    data = await response.json();
  } catch {
    // not JSON (a proxy's page): the status says enough
  }
  const error = data && typeof data.error === "object" ? data.error : null;
  return new ApiError(response.status, error || { name: "http_error", message: `HTTP ${response.status}` });
}

async function send(path, init) {
  try {
    return await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, { name: "network_error", message: `The API is unreachable (${error.message}).` });
  }
}

/** Call the API at ``path`` (same origin); return the parsed JSON answer or throw an ApiError. */
export async function callApi(method, path, body) {
  const init = { method, headers: authHeaders() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await send(path, init);
  if (!response.ok) throw await errorOf(response);
  return response.status === 204 ? null : response.json();
}

/** Parses a text/event-stream as it arrives (the WHATWG rules this API's streams need). */
export class EventParser {
  constructor() {
    this.pending = "";
    this.startEvent();
  }

  startEvent() {
    this.type = "";
    this.data = [];
    this.id = null;
  }

  /** Feed one decoded chunk; return the events it completed, as {type, data, id}. */
  feed(chunk) {
    const lines = (this.pending + chunk).split(/\r\n|\r|\n/);
    this.pending = lines.pop(); // an unfinished line waits for the next chunk
    const events = [];
    for (const line of lines) {
      if (line === "") {
        if (this.data.length) events.push({ type: this.type || "message", data: this.data.join("\n"), id: this.id });
        this.startEvent();
      } else if (!line.startsWith(":")) {
        this.takeField(line);
      }
    }
    return events;
  }

  takeField(line) {
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id") this.id = value;
  }
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Read one connection's events, handing each to ``onEvent`` and its id to ``onId``; return the
 * terminal event, or null if the stream ended before it. */
async function readEvents(reader, onEvent, onId) {
  const parser = new EventParser();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null;
    for (const event of parser.feed(value)) {
      if (event.id) onId(event.id);
      const parsed = { ...event, data: JSON.parse(event.data) };
      if (parsed.type === "error") throw new ApiError(401, parsed.data.error || {});
      if (parsed.type === "expired") {
        // The job's record is gone (past its retention): no terminal event will come.
        throw new ApiError(404, { name: "not_found", message: "The job expired (past its retention)." });
      }
      onEvent(parsed);
      if (TERMINAL_EVENTS.has(parsed.type)) return parsed;
    }
  }
}

/**
 * Follow job ``jobId``'s event stream, calling ``onEvent({type, data, id})`` (data parsed as JSON)
 * for each event; resolve with the terminal event. Read with fetch() rather than EventSource,
 * which cannot send the Authorization header.
 */
export async function followEvents(jobId, onEvent, signal) {
  let lastId = null;
  for (let resume = 0; resume <= MAX_RESUMES; resume += 1) {
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (lastId) headers["Last-Event-ID"] = lastId;
    const response = await send(`/v1/jobs/${encodeURIComponent(jobId)}/events`, { headers, signal });
    if (!response.ok) throw await errorOf(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      const ended = await readEvents(reader, onEvent, (id) => (lastId = id));
      if (ended) return ended;
    } catch (error) {
      // A dropped connection (a TypeError from the reader) is resumed like a stream that ended.
      if (!(error instanceof TypeError)) throw error;
    } finally {
      reader.cancel().catch(() => {});
    }
    await pause(RESUME_PAUSE_MS);
  }
  throw new ApiError(0, { name: "stream_lost", message: "The job's event stream kept ending early." });
}
