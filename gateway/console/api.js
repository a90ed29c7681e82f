// @ts-check
/**
 * The console's client of the native REST API (docs/browsers.md): calls with the key in a header (never in a
 * URL), errors made readable, and a room's ListenRoom stream read with fetch() so that the key travels as a
 * header too (EventSource cannot send one), resuming after a drop from the last SSE id (Last-Event-ID).
 */

/** An answer in the native error shape ({"error": {code, status, message}}), or a network failure. */
export class ApiError extends Error {
  /**
   * @param {number} httpStatus 0 when the gateway could not be reached
   * @param {string} status the gRPC status name (NOT_FOUND, …)
   * @param {string} message the gateway's message
   * @param {number | null} retryAfter seconds, from a 429's Retry-After
   */
  constructor(httpStatus, status, message, retryAfter = null) {
    super(message);
    this.httpStatus = httpStatus;
    this.status = status;
    this.retryAfter = retryAfter;
  }

  /** What the console shows: a plain sentence for the statuses a person can act on. */
  describe() {
    switch (this.httpStatus) {
      case 0:
        return `The gateway cannot be reached: ${this.message}`;
      case 401:
        return "Not signed in, or the key is not valid (401): sign in again with a key.";
      case 403:
        return `This key is not allowed to do that (403): ${this.message}`;
      case 429:
        return `Too many requests (429): try again in ${this.retryAfter ?? 1} s.`;
      case 503:
        return `The gateway is unavailable (503), perhaps its backend is down or it is shutting down: ${this.message}`;
      default:
        return `${this.message} (${this.httpStatus} ${this.status})`;
    }
  }
}

/**
 * @param {Response} response
 * @returns {Promise<ApiError>}
 */
async function errorOf(response) {
  const retry = response.headers.get("Retry-After");
  let status = response.statusText;
  let message = response.statusText;
  try {
    const body = await response.json();
    status = body.error?.status ?? status;
    message = body.error?.message ?? message;
  } catch {
    // not the native shape (a proxy's page): keep the status line
  }
  return new ApiError(response.status, status, message, retry === null ? null : Number(retry));
}

/** Percent-encodes one path segment (room ids may be URLs). */
export const seg = encodeURIComponent;

export class Api {
  /** @param {string} key an API key, sent as X-API-Key */
  constructor(key) {
    this.key = key;
  }

  /**
   * One call; resolves to the decoded JSON result.
   * @param {string} method
   * @param {string} path below the gateway's origin, e.g. /v1/rooms
   * @param {unknown} [body] sent as JSON
   * @returns {Promise<any>}
   */
  async call(method, path, body) {
    /** @type {Record<string, string>} */
    const headers = { "X-API-Key": this.key };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (error) {
      throw new ApiError(0, "UNAVAILABLE", String(error));
    }
    if (!response.ok) throw await errorOf(response);
    const text = await response.text();
    return text ? JSON.parse(text) : {};
  }
}

/**
 * @typedef {object} Frame one SSE message
 * @property {string} event "message", or "error" for the native error that ended the stream
 * @property {string | null} id
 * @property {string} data
 */

/**
 * The SSE messages of a response body (https://html.spec.whatwg.org/multipage/server-sent-events.html).
 * @param {ReadableStream<Uint8Array>} body
 * @returns {AsyncGenerator<Frame>}
 */
export async function* frames(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      /** @type {Frame} */
      const frame = { event: "message", id: null, data: "" };
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // a keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") data.push(text);
        else if (field === "id") frame.id = text;
        else if (field === "event") frame.event = text;
      }
      if (data.length) {
        frame.data = data.join("\n");
        yield frame;
      }
    }
  }
}

/**
 * A room's changes, live: ListenRoom from a position, reconnecting (with Last-Event-ID, so that nothing is
 * lost or repeated) whenever the gateway drops the stream, until stop() or the room is gone.
 */
export class RoomListener {
  /**
   * @param {Api} api
   * @param {string} roomId
   * @param {{seq: string, epoch: string}} from the position to resume after (a snapshot's)
   * @param {(change: any) => void} onChange
   * @param {(state: "live" | "reconnecting" | "ended", detail?: string) => void} onState
   */
  constructor(api, roomId, from, onChange, onState) {
    this.api = api;
    this.roomId = roomId;
    /** @type {string} the last SSE id seen, <epoch>:<seq> */
    this.lastId = `${from.epoch}:${from.seq}`;
    this.onChange = onChange;
    this.onState = onState;
    this.controller = new AbortController();
    this.stopped = false;
    void this.run();
  }

  stop() {
    this.stopped = true;
    this.controller.abort();
  }

  async run() {
    let delay = 500;
    while (!this.stopped) {
      try {
        const response = await fetch(`/v1/rooms/${seg(this.roomId)}:listen`, {
          headers: { "X-API-Key": this.api.key, "Last-Event-ID": this.lastId, Accept: "text/event-stream" },
          signal: this.controller.signal,
          cache: "no-store",
        });
        if (!response.ok || !response.body) {
          const error = await errorOf(response);
          if (response.status !== 429 && response.status !== 503) {
            this.onState("ended", error.describe());
            return;
          }
          throw error;
        }
        this.onState("live");
        delay = 500;
        for await (const frame of frames(response.body)) {
          if (frame.event === "error") {
            const error = JSON.parse(frame.data).error ?? {};
            if (error.status !== "UNAVAILABLE") {
              this.onState("ended", error.message ?? "the stream ended");
              return;
            }
            break; // invalidated or shutting down: reconnect
          }
          if (frame.id) this.lastId = frame.id;
          this.onChange(JSON.parse(frame.data));
        }
      } catch (error) {
        if (this.stopped) return;
        this.onState("reconnecting", error instanceof ApiError ? error.describe() : String(error));
      }
      if (this.stopped) return;
      this.onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 2000); // a restart is over in seconds: a console retries soon
    }
  }
}
